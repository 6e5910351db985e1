//! A benchmark: edit methods on MMEdit / VLKEB-format data (by default the evaluation split of the model's own
//! synthetic world; see [`crate::data`]), one-step, sequential or cross-task, with the protocol's metrics, telling
//! an observer how it goes and letting it cancel. The CLI's `unike bench`, the studio's runs and its workers call it.

use std::path::Path;

use crate::error::{input, Error, Result};
use unike_core::data::{load_cases, EditCase, Task};
use unike_core::edit::registry::{self, MethodInputs};
use unike_core::edit::EditSequence;
use unike_core::eval::{self, Evaluator, Mode, PreparedCase};
use unike_shared::BenchResult;

use crate::data::{self, DataSource, Split};

#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchTask {
    Vqa,
    Caption,
    /// Sequences mixing VQA and caption edits half and half (cross-task editing).
    Cross,
}

#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchMode {
    OneStep,
    Sequential,
    /// VLKEB's protocol: one stream of edits; each case scored right after exactly `--gap` later edits.
    SequentialGap,
}

/// The first `n` cases of `dir`'s `{task}_{split}.json` (the studio's gallery).
pub fn cases(dir: &Path, task: Task, split: &str, n: usize) -> Result<Vec<EditCase>> {
    let name = data::task_name(task);
    let path = dir.join(format!("{name}_{split}.json"));
    if !path.is_file() {
        input!("{} is missing (expected MMEdit-format {name}_{split}.json in --data)", path.display());
    }
    let mut all = load_cases(&path, task, None)?;
    all.truncate(n);
    Ok(all)
}

/// The model's name for `hparams/<method>/<model>.toml`: `default` for the shipped model, else its directory's name.
pub fn model_name(loaded: &crate::load::Loaded) -> String {
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
    pub task: BenchTask,
    pub mode: BenchMode,
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
    let eos0 = *ev.eos.first().ok_or_else(|| Error::State("the checkpoint has no end-of-sequence id".into()))?;
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
fn tasks(task: BenchTask) -> Vec<Task> {
    match task {
        BenchTask::Vqa => vec![Task::Vqa],
        BenchTask::Caption => vec![Task::Caption],
        BenchTask::Cross => vec![Task::Vqa, Task::Caption],
    }
}

/// IKE's demonstration pool: the training split's front of `task` (cross-task: both, interleaved), in file order.
pub fn demonstration_cases(data: &DataSource, task: BenchTask) -> Result<Vec<EditCase>> {
    Ok(match task {
        BenchTask::Vqa => data.front(Task::Vqa)?.unwrap_or_default(),
        BenchTask::Caption => data.front(Task::Caption)?.unwrap_or_default(),
        BenchTask::Cross => data.training_cases(usize::MAX)?,
    })
}

/// The task whose training split gives the memory of unrelated inputs (cross-task: VQA's).
fn memory_task(task: BenchTask) -> Task {
    if task == BenchTask::Caption {
        Task::Caption
    } else {
        Task::Vqa
    }
}

/// Where everything a benchmark of `cfg` uses comes from, one line each: cases, training split and memory, trained
/// networks, in-context knowledge.
pub fn provenance(loaded: &crate::load::Loaded, data: &DataSource, cfg: &Config) -> Result<Vec<String>> {
    let per_task = if cfg.task == BenchTask::Cross { cfg.n / 2 } else { cfg.n };
    let mut out = Vec::new();
    for (i, task) in tasks(cfg.task).into_iter().enumerate() {
        out.push(data.describe_cases(task, cfg.split, per_task, cfg.seed)?);
        if i == 0 {
            let mem = data.memory_cases(memory_task(cfg.task), cfg.memory)?.len();
            out.push(format!(
                "training split: {}; memory of unrelated inputs: the first {mem} {} cases of its front; its last {} \
                 cases per file are the development slice (--split dev)",
                data.train_label,
                data::task_name(memory_task(cfg.task)),
                unike_core::data::DEV_CASES
            ));
        }
    }
    for m in &cfg.methods {
        if let Some(t) = crate::trained::Trained::of(m) {
            out.push(crate::trained::provenance(loaded, t, data));
        }
        match registry::split_name(m).0 {
            "ike" => {
                let p: unike_core::edit::ike::IkeParams = crate::trained::method_params(loaded, "ike")?;
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

/// The `n` cases of `task` that `cfg.seed` draws from `data`'s split, after checking the model (where given) can read
/// the split.
fn draw(
    loaded: Option<&crate::load::Loaded>,
    data: &DataSource,
    cfg: &Config,
    task: Task,
    n: usize,
) -> Result<Vec<EditCase>> {
    let (pool, _) = data.pool(task, cfg.split)?;
    if let Some(loaded) = loaded {
        data.check_vocabulary(&*loaded.processor, &format!("the {} cases", data::task_name(task)), &pool)?;
    }
    Ok(data::draw(&pool, task, n, cfg.seed))
}

/// The cases a benchmark of `cfg` edits, in order, and the task's name: `cfg.n` drawn by `cfg.seed` from the split
/// (cross-task: n/2 of each task, in groups of 5 + 5).
pub fn select_cases(
    loaded: &crate::load::Loaded,
    data: &DataSource,
    cfg: &Config,
) -> Result<(&'static str, Vec<EditCase>)> {
    drawn_cases(Some(loaded), data, cfg)
}

/// [`select_cases`], without the model's vocabulary check where `loaded` is `None` (what a run's page lists: the
/// cases a run of `cfg` edits, in order).
pub fn drawn_cases(
    loaded: Option<&crate::load::Loaded>,
    data: &DataSource,
    cfg: &Config,
) -> Result<(&'static str, Vec<EditCase>)> {
    // The gap protocol's stream edits `gap` cases more than it scores.
    let n = cfg.n + if cfg.mode == BenchMode::SequentialGap && cfg.task != BenchTask::Cross { cfg.k } else { 0 };
    let (task_name, list) = match cfg.task {
        BenchTask::Vqa => ("vqa", draw(loaded, data, cfg, Task::Vqa, n)?),
        BenchTask::Caption => ("caption", draw(loaded, data, cfg, Task::Caption, n)?),
        BenchTask::Cross => {
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
        input!("no edit cases in {}", data.label);
    }
    Ok((task_name, list))
}

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
    pub fn new(loaded: &crate::load::Loaded, data: &DataSource, cfg: &Config) -> Result<Self> {
        for m in &cfg.methods {
            registry::check_name(m)?;
        }
        // The cases are drawn before anything is built or trained, so data the model cannot read is refused at once.
        let (task_name, cases) = select_cases(loaded, data, cfg)?;
        let memory_cases = data.memory_cases(memory_task(cfg.task), cfg.memory)?;
        data.check_vocabulary(&*loaded.processor, "the memory cases", &memory_cases)?;
        if cfg.methods.iter().any(|m| registry::split_name(m).0 == "unike") {
            crate::unike_artifacts::ensure(loaded)?;
        }
        crate::trained::ensure(loaded, &cfg.methods, data)?;
        let demonstrations =
            if cfg.methods.iter().any(|m| m == "ike") { demonstration_cases(data, cfg.task)? } else { vec![] };
        Ok(Self { task_name, cases, memory_cases, demonstrations })
    }

    /// Builds method `name` (`memory`: [`memory_sequences`] of the memory cases).
    pub fn method(
        &self,
        loaded: &crate::load::Loaded,
        name: &str,
        memory: &[EditSequence],
    ) -> Result<Box<dyn unike_core::edit::EditMethod>> {
        let eos = loaded.ckpt.eos_token_ids()?;
        let inputs = MethodInputs {
            root: &crate::model_dir::repo_root(),
            model: &model_name(loaded),
            memory: memory.to_vec(),
            demonstrations: if name == "ike" { self.demonstrations.clone() } else { vec![] },
            eos: *eos.first().ok_or_else(|| Error::State("the checkpoint has no end-of-sequence id".into()))?,
            backbone: &*loaded.model,
            model_dir: &loaded.dir,
        };
        Ok(registry::build(name, inputs)?)
    }
}

/// The harness's mode of a configuration (cross-task: sequences of 10, 5 + 5).
pub fn eval_mode(cfg: &Config) -> Mode {
    match (cfg.task, cfg.mode) {
        (BenchTask::Cross, _) => Mode::Sequential(10),
        (_, BenchMode::OneStep) => Mode::OneStep,
        (_, BenchMode::Sequential) => Mode::Sequential(cfg.k),
        (_, BenchMode::SequentialGap) => Mode::SequentialGap(cfg.k),
    }
}

/// Checks the figures of a configuration that no data can make right.
pub fn check_config(cfg: &Config) -> Result<()> {
    if cfg.n == 0 {
        input!("--n must be at least 1");
    }
    if cfg.mode == BenchMode::Sequential && cfg.k == 0 {
        input!("--k must be at least 1");
    }
    Ok(())
}

/// Runs every method of `cfg` on `loaded` over the cases of `data`, telling `observer` how it goes (and letting it
/// cancel: the error is then [`unike_core::Error::Cancelled`]).
pub fn bench_observed(
    loaded: &crate::load::Loaded,
    data: &DataSource,
    cfg: &Config,
    observer: &mut dyn BenchObserver,
) -> Result<Vec<BenchResult>> {
    check_config(cfg)?;
    let setup = Setup::new(loaded, data, cfg)?;
    let (task_name, list) = (setup.task_name, &setup.cases);
    let eos = loaded.ckpt.eos_token_ids()?;
    let mut ev = Evaluator::new(&*loaded.model, &*loaded.processor, eos.clone());
    let mode = eval_mode(cfg);
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

/// `--threads`: 0 means one per core.
pub fn worker_threads(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

/// The task of a run: `--task`, else the task of a single `--data` file, else VQA.
pub fn resolve_task(given: Option<BenchTask>, data: &DataSource) -> Result<BenchTask> {
    let file_task = data.single_file.then(|| data.eval.first().map(|f| f.task)).flatten();
    match (given, file_task) {
        (Some(BenchTask::Cross), Some(_)) => {
            input!("--task cross edits VQA and caption cases together: give --data a directory with both")
        }
        (Some(t), _) => Ok(t),
        (None, Some(Task::Caption)) => Ok(BenchTask::Caption),
        (None, _) => Ok(BenchTask::Vqa),
    }
}

/// `--task` as a data task (`None` for cross or absent).
pub fn given_task(task: Option<BenchTask>) -> Option<Task> {
    match task {
        Some(BenchTask::Vqa) => Some(Task::Vqa),
        Some(BenchTask::Caption) => Some(Task::Caption),
        _ => None,
    }
}
