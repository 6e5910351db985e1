//! `unike train-method <ke|mend|serac>`: trains a baseline's network on the front of the training split
//! (`vqa_train.json` and `caption_train.json`, half each; never their development slice, see
//! [`unike_core::data::select`]) and writes it into `MODEL/<method>/`. `unike bench` trains whatever a requested
//! method is missing on demand, with the same code.

use std::path::PathBuf;

use crate::error::{input, Error, Result};
use unike_core::edit::hypernet::last_layers;
use unike_core::edit::hypernet::{self, GradientEditor, TrainParams};
use unike_core::edit::ke::{KeNet, KeParams};
use unike_core::edit::mend::{MendNet, MendParams};
use unike_core::edit::serac::{Serac, SeracParams};

use crate::data::{self, DataSource, TaskFile};
use crate::load::Loaded;
use crate::progress::bar;

#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trained {
    Ke,
    Mend,
    Serac,
}

impl Trained {
    pub fn name(self) -> &'static str {
        match self {
            Trained::Ke => "ke",
            Trained::Mend => "mend",
            Trained::Serac => "serac",
        }
    }

    /// The method of a CLI name, if it is trained.
    pub fn of(name: &str) -> Option<Self> {
        match unike_core::edit::registry::split_name(name).0 {
            "ke" => Some(Trained::Ke),
            "mend" => Some(Trained::Mend),
            "serac" => Some(Trained::Serac),
            _ => None,
        }
    }
}

#[cfg_attr(feature = "clap", derive(clap::Args))]
#[derive(Debug)]
pub struct TrainMethodArgs {
    /// The method to train.
    #[cfg_attr(feature = "clap", arg(value_enum))]
    pub method: Trained,
    #[cfg_attr(feature = "clap", command(flatten))]
    pub model: crate::load::ModelArgs,
    /// Directory with `vqa_train.json` and `caption_train.json`, or one MMEdit / VLKEB training file (default: the
    /// world the model was trained on). Only the front is used: each file's last cases are the development slice.
    #[cfg_attr(feature = "clap", arg(long))]
    pub data: Option<PathBuf>,
    /// Training steps (default from hparams/<method>/<model>.toml).
    #[cfg_attr(feature = "clap", arg(long))]
    pub steps: Option<usize>,
    /// Training cases (default from the hyper-parameter file).
    #[cfg_attr(feature = "clap", arg(long))]
    pub cases: Option<usize>,
    /// Seed of initialisation and sampling (default from the hyper-parameter file).
    #[cfg_attr(feature = "clap", arg(long))]
    pub seed: Option<u64>,
}

/// `hparams/<method>/<model>.toml` of the loaded model, else its family's, else the defaults.
pub fn method_params<T: serde::de::DeserializeOwned + Default>(loaded: &Loaded, method: &str) -> Result<T> {
    let root = crate::model_dir::repo_root();
    let name = crate::bench::model_name(loaded);
    Ok(match unike_core::edit::hparams::resolve(&root, method, &name, loaded.model.family()) {
        Some(path) => unike_core::edit::hparams::load(&path)?,
        None => T::default(),
    })
}

/// The training data of `train-method --data` (a directory or one file), else the model's own world.
pub fn training_data(loaded: &Loaded, data: Option<&std::path::Path>) -> Result<DataSource> {
    match data {
        Some(d) if d.is_dir() => Ok(DataSource::from_dir(d, d.display().to_string())),
        Some(f) if f.is_file() => {
            let records = unike_core::data::read_records(f)?;
            let (task, _) = unike_core::data::select::detect_task(&records, f)
                .map_err(|why| Error::Input(format!("cannot tell whether {} is E-VQA or E-IC ({why})", f.display())))?;
            let mut s = DataSource::from_dir(std::path::Path::new(""), f.display().to_string());
            s.train = vec![TaskFile { task, path: f.to_path_buf(), images: None }];
            s.train_label = f.display().to_string();
            Ok(s)
        }
        Some(p) => input!("--data {}: no such file or directory", p.display()),
        None => match data::model_world(loaded)? {
            Some(seed) => DataSource::world(seed, Some(seed)),
            None => {
                input!("the model {} has no training.json (no world of its own): pass --data", loaded.dir.display())
            }
        },
    }
}

fn apply_overrides(t: &mut TrainParams, args: &TrainMethodArgs) -> Result<()> {
    if let Some(s) = args.steps {
        if s == 0 {
            input!("--steps must be at least 1");
        }
        t.steps = s;
    }
    if let Some(c) = args.cases {
        if c == 0 {
            input!("--cases must be at least 1");
        }
        t.cases = c;
    }
    if let Some(s) = args.seed {
        t.seed = s;
    }
    Ok(())
}

/// Trains a gradient editor on prepared `cases` and writes it into `dir`.
fn fit(
    loaded: &Loaded,
    net: &dyn GradientEditor,
    cases: &[hypernet::TrainCase],
    params: &TrainParams,
    name: &str,
    save: impl FnOnce(&[hypernet::TrainStep]) -> unike_core::Result<()>,
) -> Result<()> {
    let b = bar(params.steps as u64, name)?;
    let mut tick = |step: usize, steps: usize, p: Option<&hypernet::TrainStep>| {
        b.set_position(step as u64);
        if let Some(p) = p {
            b.set_message(format!("edit {:.3} loc {:.3} success {:.2}", p.edit_loss, p.loc_loss, p.edit_success));
            if b.is_hidden() && step.is_multiple_of(200) {
                eprintln!(
                    "{name}: step {step}/{steps}: edit loss {:.3}, locality KL {:.4}, edit success {:.2}",
                    p.edit_loss, p.loc_loss, p.edit_success
                );
            }
        }
    };
    let curve = hypernet::train(&*loaded.model, net, cases, params, &mut tick)?;
    b.finish_and_clear();
    save(&curve)?;
    if let Some(p) = curve.last() {
        // The curve averages every 50 steps (the last point: the steps since the one before).
        let over = match p.step % 50 {
            0 => p.step.min(50),
            r => r,
        };
        eprintln!(
            "{name} trained into {} (last {over} steps: edit loss {:.3}, locality KL {:.4}, edit success {:.2})",
            loaded.dir.join(name).display(),
            p.edit_loss,
            p.loc_loss,
            p.edit_success
        );
    }
    Ok(())
}

/// Trains `method` for `loaded` on the front of `data`'s training split into `MODEL/<method>/`.
pub fn train(loaded: &Loaded, method: Trained, data: &DataSource, args: Option<&TrainMethodArgs>) -> Result<()> {
    let eos = *loaded
        .ckpt
        .eos_token_ids()?
        .first()
        .ok_or_else(|| Error::State("the checkpoint has no end-of-sequence id".into()))?;
    let dir = loaded.dir.join(method.name());
    let (model, processor) = (&*loaded.model, &*loaded.processor);
    let prepare = |n: usize, layers: &[usize]| -> Result<Vec<hypernet::TrainCase>> {
        let cases = data.training_cases(n)?;
        let b = bar(cases.len() as u64, "prepare")?;
        let mut tick = |done: usize, _: usize| b.set_position(done as u64);
        let out = hypernet::prepare(model, processor, eos, &cases, layers, &mut tick)?;
        b.finish_and_clear();
        Ok(out)
    };
    let source = data.train_label.clone();
    match method {
        Trained::Mend => {
            let mut p: MendParams = method_params(loaded, "mend")?;
            if let Some(a) = args {
                apply_overrides(&mut p.train, a)?;
            }
            let cases = prepare(p.train.cases, &last_layers(model, p.layers)?)?;
            let net = MendNet::init(model, p.clone(), &cases)?;
            fit(loaded, &net, &cases, &p.train, "mend", |curve| net.save(&dir, curve, &source))?;
        }
        Trained::Ke => {
            let mut p: KeParams = method_params(loaded, "ke")?;
            if let Some(a) = args {
                apply_overrides(&mut p.train, a)?;
            }
            let cases = prepare(p.train.cases, &last_layers(model, p.layers)?)?;
            let net = KeNet::init(model, p.clone(), &cases)?;
            fit(loaded, &net, &cases, &p.train, "ke", |curve| net.save(&dir, curve, &source))?;
        }
        Trained::Serac => {
            let mut p: SeracParams = method_params(loaded, "serac")?;
            if let Some(a) = args {
                apply_overrides(&mut p.train, a)?;
            }
            let cases = data.training_cases(p.train.cases)?;
            let b = bar(p.train.steps as u64, "serac")?;
            let mut tick = |step: usize, _: usize, msg: &str| {
                b.set_position(step as u64);
                b.set_message(msg.to_string());
                if b.is_hidden() && step.is_multiple_of(200) {
                    eprintln!("serac: step {step}: {msg}");
                }
            };
            let serac = Serac::train(model, processor, eos, &cases, p, &mut tick)?;
            b.finish_and_clear();
            serac.save(&dir, &source)?;
            eprintln!("serac trained into {}", dir.display());
        }
    }
    Ok(())
}

/// Where `method`'s network comes from, for a benchmark's output.
pub fn provenance(loaded: &Loaded, method: Trained, data: &DataSource) -> String {
    let dir = loaded.dir.join(method.name());
    let header = std::fs::read_to_string(dir.join("net.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    match header {
        Some(h) => format!(
            "{}: trained network {} (trained on {})",
            method.name(),
            dir.display(),
            h["data"].as_str().unwrap_or("an unrecorded training split")
        ),
        None => format!("{}: network trained for this run on the training split ({})", method.name(), data.train_label),
    }
}

/// Trains every requested method whose network is missing (on `data`'s training split), with a message saying so; the
/// key statistics of the locate-then-edit methods too ([`crate::key_stats::ensure`]).
pub fn ensure(loaded: &Loaded, methods: &[String], data: &DataSource) -> Result<()> {
    crate::key_stats::ensure(loaded, methods, data)?;
    for m in methods.iter().filter_map(|m| Trained::of(m)) {
        let dir = loaded.dir.join(m.name());
        if dir.join("net.json").is_file() {
            continue;
        }
        if !data.has_training_split() {
            input!(
                "{} has no trained network in {} and there is no training split to train one on ({}): pass --train \
                 FILE",
                m.name(),
                dir.display(),
                data.train_label
            );
        }
        eprintln!(
            "{}'s trained network is missing from {}: training it now on {} (`unike train-method {}` does this alone)",
            m.name(),
            dir.display(),
            data.train_label,
            m.name()
        );
        train(loaded, m, data, None)?;
    }
    Ok(())
}

/// `unike train-method`: loads the model and trains `args.method` on `--data` (default: the model's own world).
pub fn train_method(args: TrainMethodArgs) -> Result<()> {
    crate::load::single_thread_pools();
    let loaded = args.model.load()?;
    let data = training_data(&loaded, args.data.as_deref())?;
    train(&loaded, args.method, &data, Some(&args))
}
