//! `unike bench`: edit methods on MMEdit / VLKEB-format data (by default the evaluation split of the model's own
//! synthetic world; see [`crate::dataset`]), one-step, sequential or cross-task, with the protocol's metrics.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use unike_core::data::{load_cases, EditCase, Task};
use unike_core::edit::registry::{self, MethodInputs};
use unike_core::edit::EditSequence;
use unike_core::eval::{self, Evaluator, Mode, PreparedCase};
use unike_shared::{BenchResult, MetricSet};

use crate::dataset::{self, DataArgs, DataSource, Split};
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
    /// VLKEB's protocol: one stream of edits; each case scored right after exactly `--gap` later edits.
    SequentialGap,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: device::ModelArgs,
    /// Comma-separated methods (none, ft, ke, t-patcher, mend, ike, serac, unike; `none` is the unedited model).
    #[arg(long, default_value = "t-patcher", value_delimiter = ',')]
    pub methods: Vec<String>,
    /// vqa, caption or cross (default: vqa, or the task of a single --data file).
    #[arg(long, value_enum)]
    pub task: Option<TaskArg>,
    #[arg(long, value_enum, default_value = "one-step")]
    pub mode: ModeArg,
    /// Edits per sequence in sequential mode (cross-task: always 10, 5 + 5).
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// In sequential-gap mode: edits made after a case's own before it is scored (VLKEB: 10, 20, 50, 100); the stream
    /// edits `--n` + gap cases and scores the first `--n`.
    #[arg(long, default_value_t = 10)]
    pub gap: usize,
    /// Edit cases to evaluate: a sample drawn by --seed from the split.
    #[arg(long, default_value_t = 100)]
    pub n: usize,
    /// Draws the cases and every random choice of the run (same seed, same cases, same numbers). It does not change
    /// the data: that stays the model's own world unless --world or --data says otherwise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub data: DataArgs,
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

/// The first `n` cases of `dir`'s `{task}_{split}.json` (the studio's gallery).
pub fn cases(dir: &Path, task: Task, split: &str, n: usize) -> Result<Vec<EditCase>> {
    let name = dataset::task_name(task);
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
    /// Edits per sequence (sequential) or the gap (sequential-gap).
    pub k: usize,
    /// Cases scored.
    pub n: usize,
    pub seed: u64,
    pub memory: usize,
    /// Worker threads (resolved: at least 1).
    pub threads: usize,
    /// The split the cases are drawn from.
    pub split: Split,
}

/// T-Patcher's and UniKE's memory of unrelated inputs: for each of `cases` (from the front of the training split),
/// the edit question with its pre-edit answer, the text and the image locality questions.
pub fn memory_sequences(ev: &mut Evaluator<'_>, cases: &[EditCase]) -> Result<Vec<EditSequence>> {
    let eos0 = *ev.eos.first().context("the checkpoint has no end-of-sequence id")?;
    let mut memory: Vec<EditSequence> = Vec::new();
    for c in cases {
        let (px, mpx) = (ev.pixels(&c.image)?, ev.pixels(&c.m_loc_image)?);
        let answer = c.pre_edit.as_deref().unwrap_or(&c.target);
        memory.push(EditSequence::new(ev.processor, &c.prompt, Some(&px), answer, eos0)?);
        memory.push(EditSequence::new(ev.processor, &c.loc_question, None, &c.loc_answer, eos0)?);
        memory.push(EditSequence::new(ev.processor, &c.m_loc_question, Some(&mpx), &c.m_loc_answer, eos0)?);
    }
    Ok(memory)
}

/// The tasks whose cases a configuration edits.
fn tasks(task: TaskArg) -> Vec<Task> {
    match task {
        TaskArg::Vqa => vec![Task::Vqa],
        TaskArg::Caption => vec![Task::Caption],
        TaskArg::Cross => vec![Task::Vqa, Task::Caption],
    }
}

/// IKE's demonstration pool: the training split's front of `task` (cross-task: both, interleaved), in file order.
pub fn demonstration_cases(data: &DataSource, task: TaskArg) -> Result<Vec<EditCase>> {
    Ok(match task {
        TaskArg::Vqa => data.front(Task::Vqa)?.unwrap_or_default(),
        TaskArg::Caption => data.front(Task::Caption)?.unwrap_or_default(),
        TaskArg::Cross => data.training_cases(usize::MAX)?,
    })
}

/// The task whose training split gives the memory of unrelated inputs (cross-task: VQA's).
fn memory_task(task: TaskArg) -> Task {
    if task == TaskArg::Caption {
        Task::Caption
    } else {
        Task::Vqa
    }
}

/// Where everything a benchmark of `cfg` uses comes from, one line each: cases, training split and memory, trained
/// networks, in-context knowledge.
pub fn provenance(loaded: &crate::device::Loaded, data: &DataSource, cfg: &Config) -> Result<Vec<String>> {
    let per_task = if cfg.task == TaskArg::Cross { cfg.n / 2 } else { cfg.n };
    let mut out = Vec::new();
    for (i, task) in tasks(cfg.task).into_iter().enumerate() {
        out.push(data.describe_cases(task, cfg.split, per_task, cfg.seed)?);
        if i == 0 {
            let mem = data.memory_cases(memory_task(cfg.task), cfg.memory)?.len();
            out.push(format!(
                "training split: {}; memory of unrelated inputs: the first {mem} {} cases of its front; its last {} \
                 cases per file are the development slice (--split dev)",
                data.train_label,
                dataset::task_name(memory_task(cfg.task)),
                unike_core::data::DEV_CASES
            ));
        }
    }
    for m in &cfg.methods {
        if let Some(t) = crate::train_method::Trained::of(m) {
            out.push(crate::train_method::provenance(loaded, t, data));
        }
        match registry::split_name(m).0 {
            "ike" => {
                let p: unike_core::edit::ike::IkeParams = crate::train_method::method_params(loaded, "ike")?;
                let pool = demonstration_cases(data, cfg.task)?.len().min(p.pool);
                out.push(if p.k == 0 {
                    format!("{m}: k = 0, the edit's own copy demonstration only (hparams/ike)")
                } else {
                    format!(
                        "{m}: the edit's copy demonstration after the {} most similar of {} demonstrations (copy, \
                         update, retain) of the first {pool} cases of the training split's front",
                        p.k,
                        3 * pool
                    )
                });
            }
            "unike" => out.push(format!(
                "{m}: in-context knowledge from {} (built from the model's own world)",
                unike_core::edit::unike::Artifacts::dir(&loaded.dir).display()
            )),
            _ => {}
        }
    }
    out.dedup();
    Ok(out)
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
pub fn bench(loaded: &crate::device::Loaded, data: &DataSource, cfg: &Config) -> Result<Vec<BenchResult>> {
    bench_observed(loaded, data, cfg, &mut Bar::new()?)
}

/// The `n` cases of `task` that `cfg.seed` draws from `data`'s split, after checking the model can read the split.
fn draw(
    loaded: &crate::device::Loaded,
    data: &DataSource,
    cfg: &Config,
    task: Task,
    n: usize,
) -> Result<Vec<EditCase>> {
    let (pool, _) = data.pool(task, cfg.split)?;
    data.check_vocabulary(&loaded.processor, &format!("the {} cases", dataset::task_name(task)), &pool)?;
    Ok(dataset::draw(&pool, task, n, cfg.seed))
}

/// The cases a benchmark of `cfg` edits, in order, and the task's name: `cfg.n` drawn by `cfg.seed` from the split
/// (cross-task: n/2 of each task, in groups of 5 + 5).
pub fn select_cases(
    loaded: &crate::device::Loaded,
    data: &DataSource,
    cfg: &Config,
) -> Result<(&'static str, Vec<EditCase>)> {
    // The gap protocol's stream edits `gap` cases more than it scores.
    let n = cfg.n + if cfg.mode == ModeArg::SequentialGap && cfg.task != TaskArg::Cross { cfg.k } else { 0 };
    let (task_name, list) = match cfg.task {
        TaskArg::Vqa => ("vqa", draw(loaded, data, cfg, Task::Vqa, n)?),
        TaskArg::Caption => ("caption", draw(loaded, data, cfg, Task::Caption, n)?),
        TaskArg::Cross => {
            let v = draw(loaded, data, cfg, Task::Vqa, cfg.n / 2)?;
            let c = draw(loaded, data, cfg, Task::Caption, cfg.n / 2)?;
            let mut mixed = Vec::new();
            for (a, b) in v.chunks(5).zip(c.chunks(5)) {
                mixed.extend_from_slice(a);
                mixed.extend_from_slice(b);
            }
            ("cross", mixed)
        }
    };
    if list.is_empty() {
        bail!("no edit cases in {}", data.label);
    }
    Ok((task_name, list))
}

/// [`bench`], telling `observer` how it goes (and letting it cancel: the error is then [`unike_core::Error::Cancelled`]).
/// What every method of a configuration shares: its cases (in the order they are edited), the memory of unrelated
/// inputs and IKE's demonstration pool; trained artifacts the methods need exist once it is made.
pub struct Setup {
    pub task_name: &'static str,
    pub cases: Vec<EditCase>,
    /// Memory of unrelated inputs, from the front of the training split: its edit questions (with their original
    /// answers), its text questions and its image questions. Never the evaluation probes, never the dev slice.
    pub memory_cases: Vec<EditCase>,
    /// IKE's demonstration pool: the front of the task's training split (both tasks' for cross-task).
    pub demonstrations: Vec<EditCase>,
}

impl Setup {
    pub fn new(loaded: &crate::device::Loaded, data: &DataSource, cfg: &Config) -> Result<Self> {
        for m in &cfg.methods {
            registry::check_name(m)?;
        }
        // The cases are drawn before anything is built or trained, so data the model cannot read is refused at once.
        let (task_name, cases) = select_cases(loaded, data, cfg)?;
        let memory_cases = data.memory_cases(memory_task(cfg.task), cfg.memory)?;
        data.check_vocabulary(&loaded.processor, "the memory cases", &memory_cases)?;
        if cfg.methods.iter().any(|m| registry::split_name(m).0 == "unike") {
            crate::unike_artifacts::ensure(loaded)?;
        }
        crate::train_method::ensure(loaded, &cfg.methods, data)?;
        let demonstrations =
            if cfg.methods.iter().any(|m| m == "ike") { demonstration_cases(data, cfg.task)? } else { vec![] };
        Ok(Self { task_name, cases, memory_cases, demonstrations })
    }

    /// Builds method `name` (`memory`: [`memory_sequences`] of the memory cases).
    pub fn method(
        &self,
        loaded: &crate::device::Loaded,
        name: &str,
        memory: &[EditSequence],
    ) -> Result<Box<dyn unike_core::edit::EditMethod>> {
        let eos = loaded.ckpt.eos_token_ids()?;
        let inputs = MethodInputs {
            root: &crate::model_dir::repo_root(),
            model: &model_name(loaded),
            memory: memory.to_vec(),
            demonstrations: if name == "ike" { self.demonstrations.clone() } else { vec![] },
            eos: *eos.first().context("the checkpoint has no end-of-sequence id")?,
            llava: &loaded.model,
            model_dir: &loaded.dir,
        };
        Ok(registry::build(name, inputs)?)
    }
}

pub fn bench_observed(
    loaded: &crate::device::Loaded,
    data: &DataSource,
    cfg: &Config,
    observer: &mut dyn BenchObserver,
) -> Result<Vec<BenchResult>> {
    if cfg.n == 0 {
        bail!("--n must be at least 1");
    }
    if cfg.mode == ModeArg::Sequential && cfg.k == 0 {
        bail!("--k must be at least 1");
    }
    let setup = Setup::new(loaded, data, cfg)?;
    let (task_name, list) = (setup.task_name, &setup.cases);
    let eos = loaded.ckpt.eos_token_ids()?;
    let mut ev = Evaluator::new(&loaded.model, &loaded.processor, eos.clone());
    let mode = match (cfg.task, cfg.mode) {
        (TaskArg::Cross, _) => Mode::Sequential(10),
        (_, ModeArg::OneStep) => Mode::OneStep,
        (_, ModeArg::Sequential) => Mode::Sequential(cfg.k),
        (_, ModeArg::SequentialGap) => Mode::SequentialGap(cfg.k),
    };
    let memory = memory_sequences(&mut ev, &setup.memory_cases)?;

    observer.stage(&format!("pre-edit {task_name}"), list.len());
    let mut prepared: Vec<PreparedCase> = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        prepared.push(ev.prepare(c, cfg.seed.wrapping_add(i as u64))?);
        if !observer.progress(i + 1) {
            return Err(unike_core::Error::Cancelled.into());
        }
    }
    let mut results = Vec::new();
    for name in &cfg.methods {
        let method = setup.method(loaded, name, &memory)?;
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
        if let Some(v1) = &r.metrics_v1 {
            out.push_str(&row(r, v1, "old v1 token acc."));
            out.push('\n');
        }
    }
    out.push_str(&hops_table(results));
    out.push_str(&format!("\n{}\n", CONVENTION_NOTE));
    out
}

/// Portability per number of hops (VLKEB's multi-hop questions) of the results that have it: token accuracy and
/// exact match after the edit, each beside the unedited model's on the same questions.
pub fn hops_table(results: &[BenchResult]) -> String {
    let with: Vec<&BenchResult> = results.iter().filter(|r| !r.portability_hops.is_empty()).collect();
    if with.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\nPortability by hops (token acc. / base; exact match / base; questions):\n\n| method | task | mode | k | hops | \
         token | token base | exact | exact base | questions |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in with {
        for h in &r.portability_hops {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n",
                r.method, r.task, r.mode, r.k, h.hop, h.token, h.token_base, h.exact, h.exact_base, h.questions
            ));
        }
    }
    out
}

/// What the token scores of the current convention are, under a table.
pub const CONVENTION_NOTE: &str = "Token scores, convention v2 (EasyEdit's multimodal evaluation): Rel. / Gen. / \
    Port. = teacher-forced token accuracy over the answer tokens (end of sequence not scored); T-Loc. = top-1 \
    agreement with the unedited model at each answer position; M-Loc. = its top-10 lists compared slot by slot at \
    each answer position (M-Loc. top-1: top-1 agreement there); Port. base = the unedited model on the same \
    portability questions. Exact match: greedy answer (answer tokens and end of sequence) equals the reference \
    (locality: the unedited model's greedy answer). Old v1 token acc.: the same edits under the convention used before \
    issue 14 (the end of sequence scored; T- and M-Loc. as top-1 agreement at the answer and end-of-sequence \
    positions), for comparison with older tables only.";

/// `--threads`: 0 means one per core.
pub fn worker_threads(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

/// The task of a run: `--task`, else the task of a single `--data` file, else VQA.
pub fn resolve_task(given: Option<TaskArg>, data: &DataSource) -> Result<TaskArg> {
    let file_task = data.single_file.then(|| data.eval.first().map(|f| f.task)).flatten();
    match (given, file_task) {
        (Some(TaskArg::Cross), Some(_)) => {
            bail!("--task cross edits VQA and caption cases together: give --data a directory with both")
        }
        (Some(t), _) => Ok(t),
        (None, Some(Task::Caption)) => Ok(TaskArg::Caption),
        (None, _) => Ok(TaskArg::Vqa),
    }
}

/// `--task` as a data task (`None` for cross or absent).
pub fn given_task(task: Option<TaskArg>) -> Option<Task> {
    match task {
        Some(TaskArg::Vqa) => Some(Task::Vqa),
        Some(TaskArg::Caption) => Some(Task::Caption),
        _ => None,
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    crate::device::single_thread_pools();
    // Cheap checks before anything is loaded.
    if args.n == 0 {
        bail!("--n must be at least 1");
    }
    for m in &args.methods {
        registry::check_name(m)?;
    }
    let loaded = args.model.load()?;
    let data = DataSource::resolve(&args.data, &loaded, given_task(args.task))?;
    let cfg = Config {
        methods: args.methods.clone(),
        task: resolve_task(args.task, &data)?,
        mode: args.mode,
        k: if args.mode == ModeArg::SequentialGap { args.gap } else { args.k },
        n: args.n,
        seed: args.seed,
        memory: args.memory,
        threads: worker_threads(args.threads),
        split: args.data.split,
    };
    let results = bench(&loaded, &data, &cfg)?;
    let notes = provenance(&loaded, &data, &cfg)?;
    if args.json {
        // The results, where the data came from, and the cases drawn (in edit order).
        let (_, list) = select_cases(&loaded, &data, &cfg)?;
        let cases: Vec<serde_json::Value> = list
            .iter()
            .map(|c| {
                serde_json::json!({"task": dataset::task_name(c.task), "prompt": c.prompt, "target": c.target,
                    "image": c.image.display().to_string()})
            })
            .collect();
        println!("{}", serde_json::to_string(&serde_json::json!({"results": results, "data": notes, "cases": cases}))?);
    } else {
        for line in &notes {
            println!("{line}  ");
        }
        println!();
        print!("{}", markdown(&results));
    }
    Ok(())
}
