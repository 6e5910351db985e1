//! Where a benchmark's cases and its training split come from (`--world`, `--data`, `--images`, `--train`,
//! `--split`), and the words a model cannot read.
//!
//! - Default: the model's own world, the one whose seed its `training.json` records (a model without one, e.g. a
//!   real llava-hf checkpoint, must be given `--data`). `--seed` draws the cases and nothing else: every seed reads
//!   the same world.
//! - `--world S`: another synthetic world, asked for explicitly; refused when its words are outside the model's
//!   tokenizer.
//! - `--data DIR` (`vqa_{train,eval}.json`, `caption_{train,eval}.json`) or `--data FILE` (one E-VQA, E-IC or VLKEB
//!   file as downloaded; its task from `--task` or its records), images relative to each file's directory or to
//!   `--images DIR`. A file brings no training split: `--train FILE` gives one, else the model's own world's is used
//!   (and the output says so).
//! - `--split eval` (default) draws from the evaluation split; `--split dev` from the development slice of the
//!   training split (its last cases, see [`unike_core::data::select`]), never touched by the trained editors or the
//!   memory of unrelated inputs, which take from the front.

use std::path::{Path, PathBuf};

use crate::error::{input, Error, Result};
use unike_core::data::select::{self, detect_task, out_of_vocabulary};
use unike_core::data::{load_cases, read_records, split_train, EditCase, Task, DEV_CASES, DEV_MIN_FILE};
use unike_core::model::ModelProcessor;
use unike_core::train::save::TrainingRecord;
use unike_core::world::{export, World};

use crate::load::Loaded;

/// Which split the evaluated cases come from.
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Split {
    /// The evaluation split (`*_eval.json`, or the `--data` file).
    #[default]
    Eval,
    /// The development slice: the last 100 cases of each training file (tune hyper-parameters here).
    Dev,
}

/// The data flags of `bench` and `reproduce`.
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[derive(Debug, Clone, Default)]
pub struct DataArgs {
    /// Another synthetic world than the model's own (default: the world of the seed in the model's training.json).
    /// Refused when its words are outside the model's tokenizer.
    #[cfg_attr(feature = "clap", arg(long, conflicts_with = "data"))]
    pub world: Option<u64>,
    /// MMEdit / VLKEB data: a directory with `vqa_{train,eval}.json` / `caption_{train,eval}.json`, or one JSON file
    /// (E-VQA, E-IC or VLKEB; its task from --task or from its records).
    #[cfg_attr(feature = "clap", arg(long))]
    pub data: Option<PathBuf>,
    /// Image root of the data's (and --train's) image paths (default: each JSON file's directory).
    #[cfg_attr(feature = "clap", arg(long))]
    pub images: Option<PathBuf>,
    /// A training split file (MMEdit / VLKEB): the memory of unrelated inputs, trained editors that are missing, and
    /// --split dev take from it (default: the data directory's `*_train.json`, or the model's own world's).
    #[cfg_attr(feature = "clap", arg(long))]
    pub train: Option<PathBuf>,
    /// `eval`: the evaluation split; `dev`: the development slice of the training split (its last 100 cases per file).
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value = "eval"))]
    pub split: Split,
}

/// One MMEdit / VLKEB file, its task, and the root of its image paths (`None`: the file's directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFile {
    pub task: Task,
    pub path: PathBuf,
    pub images: Option<PathBuf>,
}

/// Resolved data: evaluation and training files, their image root, and what they are (for messages and output).
#[derive(Clone, Debug)]
pub struct DataSource {
    /// Evaluation files, at most one per task (they may not exist: asking for their cases says so).
    pub eval: Vec<TaskFile>,
    /// Training files, at most one per task.
    pub train: Vec<TaskFile>,
    /// What the evaluation data is: `world 0 (the model's own)`, a path.
    pub label: String,
    /// Where the training split comes from.
    pub train_label: String,
    /// The model's own world, when it has one (the vocabulary it knows).
    pub model_world: Option<u64>,
    /// Whether `--data` was a single file (its task is the only one).
    pub single_file: bool,
}

/// The name of a task's files (`vqa`, `caption`).
pub fn task_name(task: Task) -> &'static str {
    match task {
        Task::Vqa => "vqa",
        Task::Caption => "caption",
    }
}

/// The seed of the world a model was trained on (its `training.json`), if it is a world model.
pub fn model_world(loaded: &Loaded) -> Result<Option<u64>> {
    Ok(TrainingRecord::read(&loaded.dir)?.map(|r| r.recipe.seed))
}

/// The edit sets of world `seed`, generated once under `base` (written to a fresh folder and renamed into place, so
/// concurrent runs never read a half-written world). The CLI uses the system's temporary directory; the studio its
/// own data folder (not a predictable path of the shared temporary directory).
pub fn world_dir_in(base: &Path, seed: u64) -> Result<PathBuf> {
    let dir = base.join(format!("unike-world-{seed}"));
    let complete = |d: &Path| {
        ["vqa_train.json", "vqa_eval.json", "caption_train.json", "caption_eval.json"]
            .iter()
            .all(|f| d.join(f).is_file())
    };
    if complete(&dir) {
        return Ok(dir);
    }
    eprintln!("generating world {seed}'s edit sets into {}", dir.display());
    let tmp = base.join(format!("unike-world-{seed}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    export::write(&World::generate(seed), &tmp)?;
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another process finished first (or a stale partial folder is in the way).
        if complete(&dir) {
            let _ = std::fs::remove_dir_all(&tmp);
        } else {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir)
                .map_err(|source| Error::Io { what: format!("moving the world into {}", dir.display()), source })?;
        }
    }
    Ok(dir)
}

fn dir_files(dir: &Path, split: &str) -> Vec<TaskFile> {
    [Task::Vqa, Task::Caption]
        .into_iter()
        .map(|task| TaskFile { task, path: dir.join(format!("{}_{split}.json", task_name(task))), images: None })
        .collect()
}

/// The task of a single data file and why: `given`, else detected from its records.
fn file_task(path: &Path, given: Option<Task>) -> Result<(Task, String)> {
    let records = read_records(path)?;
    match (given, detect_task(&records, path)) {
        (Some(t), _) => Ok((t, "--task".into())),
        (None, Ok((t, why))) => Ok((t, format!("detected: {why}"))),
        (None, Err(why)) => {
            input!("cannot tell whether --data {} is E-VQA or E-IC ({why}): pass --task vqa|caption", path.display())
        }
    }
}

impl DataSource {
    /// A directory of MMEdit / VLKEB files with the fixed names.
    pub fn from_dir(dir: &Path, label: String) -> Self {
        Self {
            eval: dir_files(dir, "eval"),
            train: dir_files(dir, "train"),
            train_label: format!("{label}'s *_train.json"),
            label,
            model_world: None,
            single_file: false,
        }
    }

    /// The synthetic world `seed` (generated once).
    pub fn world(seed: u64, model_world: Option<u64>) -> Result<Self> {
        Self::world_in(&std::env::temp_dir(), seed, model_world)
    }

    /// [`DataSource::world`] generated under `base`.
    pub fn world_in(base: &Path, seed: u64, model_world: Option<u64>) -> Result<Self> {
        let own = if model_world == Some(seed) { " (the model's own)" } else { "" };
        let dir = world_dir_in(base, seed)?;
        let mut s = Self::from_dir(&dir, format!("world {seed}{own}"));
        s.train_label = format!("world {seed}{own}, {}", dir.display());
        s.model_world = model_world;
        Ok(s)
    }

    /// The data of `args` for `loaded` (`task`: an explicit `--task`, which a single `--data` file takes as its own).
    pub fn resolve(args: &DataArgs, loaded: &Loaded, task: Option<Task>) -> Result<Self> {
        let own = model_world(loaded)?;
        if let Some(i) = &args.images {
            if !i.is_dir() {
                input!("--images {}: not a directory", i.display());
            }
        }
        let images = args.images.clone();
        let mut src = match (&args.data, args.world) {
            (Some(d), _) if d.is_dir() => {
                let mut s = Self::from_dir(d, d.display().to_string());
                s.model_world = own;
                for f in s.eval.iter_mut().chain(s.train.iter_mut()) {
                    f.images = images.clone();
                }
                s
            }
            (Some(f), _) if f.is_file() => {
                let (t, why) = file_task(f, task)?;
                let mut s = match own {
                    Some(seed) => {
                        let w = Self::world(seed, own)?;
                        Self { train_label: format!("not in --data: {}", w.train_label), ..w }
                    }
                    None => Self::from_dir(Path::new(""), String::new()),
                };
                if own.is_none() {
                    s.train.clear();
                    s.train_label =
                        "none (--data is one file and the model has no world of its own: pass --train FILE)".into();
                }
                s.eval = vec![TaskFile { task: t, path: f.clone(), images: images.clone() }];
                s.label = format!("{} ({} by {why})", f.display(), task_name(t));
                s.single_file = true;
                s
            }
            (Some(p), _) => input!("--data {}: no such file or directory", p.display()),
            (None, Some(seed)) => Self::world(seed, own)?,
            (None, None) => match own {
                Some(seed) => Self::world(seed, own)?,
                None => input!(
                    "the model {} has no training.json, so no synthetic world of its own: pass --data FILE|DIR \
                     (MMEdit / VLKEB data) or --world S",
                    loaded.dir.display()
                ),
            },
        };
        if let Some(t) = &args.train {
            if !t.is_file() {
                input!("--train {}: no such file", t.display());
            }
            let fallback = if src.single_file { src.eval.first().map(|f| f.task) } else { None };
            let task = match detect_task(&read_records(t)?, t) {
                Ok((task, _)) => task,
                Err(why) => fallback.ok_or_else(|| {
                    Error::Input(format!("cannot tell whether --train {} is E-VQA or E-IC ({why})", t.display()))
                })?,
            };
            src.train = vec![TaskFile { task, path: t.clone(), images }];
            src.train_label = format!("--train {}", t.display());
        }
        Ok(src)
    }

    fn load(&self, f: &TaskFile) -> Result<Vec<EditCase>> {
        Ok(load_cases(&f.path, f.task, f.images.as_deref())?)
    }

    fn file(files: &[TaskFile], task: Task) -> Option<&TaskFile> {
        files.iter().find(|f| f.task == task && f.path.is_file())
    }

    /// Every case `split` offers for `task`, and the file they come from.
    pub fn pool(&self, task: Task, split: Split) -> Result<(Vec<EditCase>, PathBuf)> {
        let name = task_name(task);
        match split {
            Split::Eval => {
                let Some(f) = self.eval.iter().find(|f| f.task == task) else {
                    let have = self.eval.first().map_or("", |f| task_name(f.task));
                    input!("--data {} holds {have} cases, not {name} cases (--task {name})", self.label)
                };
                if !f.path.is_file() {
                    input!("{} is missing (expected MMEdit-format {name}_eval.json in --data)", f.path.display());
                }
                Ok((self.load(f)?, f.path.clone()))
            }
            Split::Dev => {
                let Some(f) = Self::file(&self.train, task) else {
                    input!("--split dev needs a {name} training split ({}): none found", self.train_label)
                };
                let all = self.load(f)?;
                let len = all.len();
                let (_, dev) = split_train(all);
                if dev.is_empty() {
                    input!(
                        "--split dev: {} has {len} cases, fewer than {DEV_MIN_FILE}, so no development slice (its last \
                         {DEV_CASES})",
                        f.path.display()
                    );
                }
                Ok((dev, f.path.clone()))
            }
        }
    }

    /// The training split's front (all but the development slice) for `task`, in file order; `None` without one.
    pub fn front(&self, task: Task) -> Result<Option<Vec<EditCase>>> {
        match Self::file(&self.train, task) {
            Some(f) => Ok(Some(split_train(self.load(f)?).0)),
            None => Ok(None),
        }
    }

    /// The first `n` front cases of `task`'s training split (the memory of unrelated inputs); empty without one.
    pub fn memory_cases(&self, task: Task, n: usize) -> Result<Vec<EditCase>> {
        let mut front = self.front(task)?.unwrap_or_default();
        front.truncate(n);
        Ok(front)
    }

    /// `n` cases for the trained editors, from the front of the training split: VQA and caption interleaved, half
    /// each (only one task's when the split has only one).
    pub fn training_cases(&self, n: usize) -> Result<Vec<EditCase>> {
        let v = self.front(Task::Vqa)?.unwrap_or_default();
        let c = self.front(Task::Caption)?.unwrap_or_default();
        let mut out = Vec::with_capacity(n.min(v.len() + c.len()));
        if v.is_empty() || c.is_empty() {
            out.extend(v.into_iter().chain(c).take(n));
        } else {
            let mut it = v.into_iter().zip(c);
            while out.len() < n {
                let Some((a, b)) = it.next() else { break };
                out.push(a);
                if out.len() < n {
                    out.push(b);
                }
            }
        }
        if out.is_empty() {
            input!("no training cases: {} (pass --train FILE)", self.train_label);
        }
        Ok(out)
    }

    /// Whether there is any training split.
    pub fn has_training_split(&self) -> bool {
        self.train.iter().any(|f| f.path.is_file())
    }

    /// Refuses `cases` when their words are outside `processor`'s tokenizer, naming a few and the count.
    pub fn check_vocabulary<'a>(
        &self,
        processor: &dyn ModelProcessor,
        what: &str,
        cases: impl IntoIterator<Item = &'a EditCase>,
    ) -> Result<()> {
        let oov = out_of_vocabulary(processor, cases)?;
        if oov.is_empty() {
            return Ok(());
        }
        let hint = match self.model_world {
            Some(s) => format!(
                "the model only knows the words of world {s}, the world it was trained on (drop --world / --data to \
                 use it)"
            ),
            None => "the model cannot read them".into(),
        };
        input!("{what} of {} use {}: {hint}", self.label, oov.summary(5))
    }

    /// Where a run's cases come from (printed with its results).
    pub fn describe_cases(&self, task: Task, split: Split, n: usize, seed: u64) -> Result<String> {
        let (pool, file) = self.pool(task, split)?;
        let which = match split {
            Split::Eval => "evaluation split",
            Split::Dev => "development slice of the training split",
        };
        Ok(format!(
            "cases: {} of the {} {} cases of {} ({which}, {}), drawn by seed {seed}",
            n.min(pool.len()),
            pool.len(),
            task_name(task),
            self.label,
            file.display()
        ))
    }
}

/// The sample of `n` cases drawn by `seed` from `pool` (see [`select::sample`]).
pub fn draw(pool: &[EditCase], task: Task, n: usize, seed: u64) -> Vec<EditCase> {
    select::sample(pool, n, seed, task_name(task))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Identity of a case (what a trainer, the memory or an evaluation would see).
    fn key(c: &EditCase) -> String {
        format!("{}|{}|{}|{}", c.prompt, c.image.display(), c.target, c.m_loc_image.display())
    }

    #[test]
    fn the_dev_slice_is_disjoint_from_trainer_and_memory_cases() -> Result<()> {
        let src = DataSource::world(0, Some(0))?;
        // The most the trained editors ask for (hparams/{ke,mend,serac}/default.toml), and more.
        let root = crate::model_dir::repo_root();
        let path = |m: &str| unike_core::edit::hparams::hparams_path(&root, m, "default");
        let ke: unike_core::edit::ke::KeParams = unike_core::edit::hparams::load(&path("ke"))?;
        let mend: unike_core::edit::mend::MendParams = unike_core::edit::hparams::load(&path("mend"))?;
        let serac: unike_core::edit::serac::SeracParams = unike_core::edit::hparams::load(&path("serac"))?;
        let asked = ke.train.cases.max(mend.train.cases).max(serac.train.cases);
        let train = src.training_cases(asked)?;
        assert_eq!(train.len(), asked, "the front holds every case a trainer asks for");
        let everything = src.training_cases(usize::MAX / 2)?;
        for task in [Task::Vqa, Task::Caption] {
            let (dev, _) = src.pool(task, Split::Dev)?;
            assert_eq!(dev.len(), DEV_CASES);
            let dev: std::collections::HashSet<String> = dev.iter().map(key).collect();
            let memory = src.memory_cases(task, 10_000)?;
            for c in train.iter().chain(&memory).chain(&everything) {
                assert!(!dev.contains(&key(c)), "{} is in the dev slice and in training use", key(c));
            }
            // Dev cases are training cases, never evaluation cases.
            let (eval, _) = src.pool(task, Split::Eval)?;
            assert!(eval.iter().all(|c| !dev.contains(&key(c))));
        }
        Ok(())
    }
}
