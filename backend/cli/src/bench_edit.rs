//! `unike bench`: edit methods on MMEdit / VLKEB-format data (by default the synthetic world's eval split), one-step,
//! sequential or cross-task, with the protocol's metrics.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use unike_core::data::{load_cases, EditCase, Task};
use unike_core::edit::registry::{self, MethodInputs};
use unike_core::edit::EditSequence;
use unike_core::eval::{self, Evaluator, Mode, PreparedCase};
use unike_core::world::{export, World};
use unike_shared::{BenchReport, BenchResult, MetricSet};

use crate::device;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TaskArg {
    Vqa,
    Caption,
    /// Sequences mixing VQA and caption edits half and half (cross-task editing).
    Cross,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    OneStep,
    Sequential,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: device::ModelArgs,
    /// Comma-separated methods (none, ft, ke, t-patcher, mend, ike, serac, unike; `none` is the unedited model).
    #[arg(long, default_value = "t-patcher", value_delimiter = ',')]
    pub methods: Vec<String>,
    #[arg(long, value_enum, default_value = "vqa")]
    pub task: TaskArg,
    #[arg(long, value_enum, default_value = "one-step")]
    pub mode: ModeArg,
    /// Edits per sequence in sequential mode (cross-task: always 10, 5 + 5).
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Edit cases to evaluate.
    #[arg(long, default_value_t = 100)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory with `vqa_{train,eval}.json` / `caption_{train,eval}.json` (MMEdit / VLKEB format; images relative to
    /// it). Default: the synthetic world of `--seed`, generated once into the system's temporary directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Training-split cases whose questions (edit, text and image question: three each) form the memory of unrelated
    /// inputs of the methods that keep one (T-Patcher, UniKE).
    #[arg(long, default_value_t = 64)]
    pub memory: usize,
    /// Print one JSON object instead of the Markdown table.
    #[arg(long)]
    pub json: bool,
    /// Worker threads editing independent chunks (one-step edits, sequences) side by side; 0 = one per core. The
    /// metrics do not depend on it, only the edit times (the workers share the memory bandwidth).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

fn world_data(seed: u64) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("unike-world-{seed}"));
    if !dir.join("vqa_eval.json").is_file() || !dir.join("caption_eval.json").is_file() {
        eprintln!("generating the world's edit sets (seed {seed}) into {}", dir.display());
        export::write(&World::generate(seed), &dir)?;
    }
    Ok(dir)
}

pub fn cases(dir: &Path, task: Task, split: &str, n: usize) -> Result<Vec<EditCase>> {
    let name = match task {
        Task::Vqa => "vqa",
        Task::Caption => "caption",
    };
    let path = dir.join(format!("{name}_{split}.json"));
    if !path.is_file() {
        bail!("{} is missing (expected MMEdit-format {name}_{split}.json in --data)", path.display());
    }
    let mut all = load_cases(&path, task, None)?;
    all.truncate(n);
    Ok(all)
}

/// `12.3`, or `-` for a figure the result does not have.
pub fn opt_pct(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |p| format!("{p:.1}"))
}

fn row(r: &BenchResult, m: &MetricSet, kind: &str) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {kind} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.0} / {:.0} |",
        r.method,
        r.task,
        r.mode,
        r.k,
        r.n,
        m.reliability,
        m.t_generality,
        m.m_generality,
        m.t_locality,
        m.m_locality,
        opt_pct(m.m_locality_top1),
        opt_pct(m.portability),
        opt_pct(m.portability_base),
        r.timing.edit_ms_median,
        r.timing.edit_ms_p90
    )
}

/// The model's name for `hparams/<method>/<model>.toml`: `default` for the shipped model, else its directory's name.
pub fn model_name(loaded: &crate::device::Loaded) -> String {
    if loaded.dir.ends_with("models/default") {
        "default".to_string()
    } else {
        loaded.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
    }
}

/// One benchmark configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub methods: Vec<String>,
    pub task: TaskArg,
    pub mode: ModeArg,
    pub k: usize,
    pub n: usize,
    pub seed: u64,
    pub memory: usize,
    /// Worker threads (resolved: at least 1).
    pub threads: usize,
}

/// The world's data of `--seed` (generated once) or `--data`.
pub fn data_dir(data: Option<&Path>, seed: u64) -> Result<PathBuf> {
    match data {
        Some(d) if !d.is_dir() => bail!("--data {} is not a directory", d.display()),
        Some(d) => Ok(d.to_path_buf()),
        None => world_data(seed),
    }
}

/// T-Patcher's and UniKE's memory of unrelated inputs: for `n` training-split cases of `task`, the edit question
/// with its pre-edit answer, the text and the image locality questions.
pub fn memory_sequences(ev: &mut Evaluator<'_>, data: &Path, task: Task, n: usize) -> Result<Vec<EditSequence>> {
    let eos0 = *ev.eos.first().context("the checkpoint has no end-of-sequence id")?;
    let mut memory: Vec<EditSequence> = Vec::new();
    for c in cases(data, task, "train", n).unwrap_or_default() {
        let (px, mpx) = (ev.pixels(&c.image)?, ev.pixels(&c.m_loc_image)?);
        let answer = c.pre_edit.as_deref().unwrap_or(&c.target);
        memory.push(EditSequence::new(ev.processor, &c.prompt, Some(&px), answer, eos0)?);
        memory.push(EditSequence::new(ev.processor, &c.loc_question, None, &c.loc_answer, eos0)?);
        memory.push(EditSequence::new(ev.processor, &c.m_loc_question, Some(&mpx), &c.m_loc_answer, eos0)?);
    }
    Ok(memory)
}

/// What a benchmark tells its caller as it goes: the progress bar of the CLI, the studio's run jobs.
pub trait BenchObserver {
    /// A stage starts (`pre-edit vqa`, `unike vqa`) with `total` cases.
    fn stage(&mut self, name: &str, total: usize);
    /// `done` cases of the stage are finished; `false` cancels the benchmark.
    fn progress(&mut self, done: usize) -> bool;
    /// A method's result is complete, with its per-case scores.
    fn result(&mut self, _result: &BenchResult, _cases: &[eval::CaseScore]) {}
}

/// The CLI's progress bar on stderr.
pub struct Bar(ProgressBar);

impl Bar {
    pub fn new() -> Result<Self> {
        let bar = ProgressBar::new(0);
        bar.set_style(ProgressStyle::with_template(
            "{prefix:>24} [{elapsed_precise}] {wide_bar} {pos}/{len} eta {eta}",
        )?);
        Ok(Self(bar))
    }
}

impl BenchObserver for Bar {
    fn stage(&mut self, name: &str, total: usize) {
        self.0.reset();
        self.0.set_length(total as u64);
        self.0.set_prefix(name.to_string());
    }

    fn progress(&mut self, done: usize) -> bool {
        self.0.set_position(done as u64);
        true
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Runs every method of `cfg` on `loaded` over the cases of `data`, with a progress bar on stderr.
pub fn bench(loaded: &crate::device::Loaded, data: &Path, cfg: &Config) -> Result<Vec<BenchResult>> {
    bench_observed(loaded, data, cfg, &mut Bar::new()?)
}

/// [`bench`], telling `observer` how it goes (and letting it cancel: the error is then [`unike_core::Error::Cancelled`]).
pub fn bench_observed(
    loaded: &crate::device::Loaded,
    data: &Path,
    cfg: &Config,
    observer: &mut dyn BenchObserver,
) -> Result<Vec<BenchResult>> {
    if cfg.n == 0 {
        bail!("--n must be at least 1");
    }
    if cfg.mode == ModeArg::Sequential && cfg.k == 0 {
        bail!("--k must be at least 1");
    }
    for m in &cfg.methods {
        registry::check_name(m)?;
    }
    if cfg.methods.iter().any(|m| registry::split_name(m).0 == "unike") {
        crate::unike_artifacts::ensure(loaded)?;
    }
    crate::train_method::ensure(loaded, &cfg.methods)?;
    let eos = loaded.ckpt.eos_token_ids()?;
    let eos0 = *eos.first().context("the checkpoint has no end-of-sequence id")?;
    let mut ev = Evaluator::new(&loaded.model, &loaded.processor, eos.clone());

    // The cases, in the order they are edited.
    let (task_name, list) = match cfg.task {
        TaskArg::Vqa => ("vqa", cases(data, Task::Vqa, "eval", cfg.n)?),
        TaskArg::Caption => ("caption", cases(data, Task::Caption, "eval", cfg.n)?),
        TaskArg::Cross => {
            let (v, c) = (cases(data, Task::Vqa, "eval", cfg.n / 2)?, cases(data, Task::Caption, "eval", cfg.n / 2)?);
            let mut mixed = Vec::new();
            for (a, b) in v.chunks(5).zip(c.chunks(5)) {
                mixed.extend_from_slice(a);
                mixed.extend_from_slice(b);
            }
            ("cross", mixed)
        }
    };
    let mode = match (cfg.task, cfg.mode) {
        (TaskArg::Cross, _) => Mode::Sequential(10),
        (_, ModeArg::OneStep) => Mode::OneStep,
        (_, ModeArg::Sequential) => Mode::Sequential(cfg.k),
    };
    if list.is_empty() {
        bail!("no edit cases in {}", data.display());
    }
    // Memory of unrelated inputs, from the training split: its edit questions (with their original answers), its text
    // questions and its image questions. Never the evaluation probes.
    let train_task = if cfg.task == TaskArg::Caption { Task::Caption } else { Task::Vqa };
    let memory = memory_sequences(&mut ev, data, train_task, cfg.memory)?;

    observer.stage(&format!("pre-edit {task_name}"), list.len());
    let mut prepared: Vec<PreparedCase> = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        prepared.push(ev.prepare(c, cfg.seed.wrapping_add(i as u64))?);
        if !observer.progress(i + 1) {
            return Err(unike_core::Error::Cancelled.into());
        }
    }
    let root = crate::model_dir::repo_root();
    let model_name = model_name(loaded);
    let mut results = Vec::new();
    for name in &cfg.methods {
        let inputs = MethodInputs {
            root: &root,
            model: &model_name,
            memory: memory.clone(),
            eos: eos0,
            llava: &loaded.model,
            model_dir: &loaded.dir,
        };
        let method = registry::build(name, inputs)?;
        observer.stage(&format!("{name} {task_name}"), prepared.len());
        let mut tick = |done: usize, _: usize| observer.progress(done);
        let (result, per_case) =
            eval::run_detailed(&ev, method.as_ref(), &prepared, mode, task_name, cfg.threads, &mut tick)?;
        observer.result(&result, &per_case);
        results.push(result);
    }
    Ok(results)
}

/// The Markdown table of `results`: both scores per method, then what the columns are.
pub fn markdown(results: &[BenchResult]) -> String {
    let mut out = String::from(
        "| method | task | mode | k | n | score | Rel. | T-Gen. | M-Gen. | T-Loc. | M-Loc. | M-Loc. top-1 | Port. | \
         Port. base | edit ms (median / p90) |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        out.push_str(&row(r, &r.metrics, "token acc."));
        out.push('\n');
        out.push_str(&row(r, &r.exact_match, "exact match"));
        out.push('\n');
    }
    out.push_str(&format!("\n{}\n", CONVENTION_NOTE));
    out
}

/// What the token scores of the current convention are, under a table.
pub const CONVENTION_NOTE: &str = "Token scores, convention v2 (EasyEdit's multimodal evaluation): Rel. / Gen. / \
    Port. = teacher-forced token accuracy over the answer tokens (end of sequence not scored); T-Loc. = top-1 \
    agreement with the unedited model at each answer position; M-Loc. = its top-10 lists compared slot by slot at \
    each answer position (M-Loc. top-1: top-1 agreement there); Port. base = the unedited model on the same \
    portability questions. Exact match: greedy answer (answer tokens and end of sequence) equals the reference \
    (locality: the unedited model's greedy answer).";

/// `--threads`: 0 means one per core.
pub fn worker_threads(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    crate::device::single_thread_pools();
    let cfg = Config {
        methods: args.methods.clone(),
        task: args.task,
        mode: args.mode,
        k: args.k,
        n: args.n,
        seed: args.seed,
        memory: args.memory,
        threads: worker_threads(args.threads),
    };
    // Cheap checks before anything is loaded.
    if cfg.n == 0 {
        bail!("--n must be at least 1");
    }
    for m in &cfg.methods {
        registry::check_name(m)?;
    }
    let data = data_dir(args.data.as_deref(), args.seed)?;
    let loaded = args.model.load()?;
    let results = bench(&loaded, &data, &cfg)?;
    if args.json {
        println!("{}", serde_json::to_string(&BenchReport { results })?);
    } else {
        print!("{}", markdown(&results));
    }
    Ok(())
}
