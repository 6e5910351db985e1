//! `unike build-memory` and `unike train-encoders`: UniKE's in-context knowledge for a world model (its wrong answers
//! to the world's questions, with hidden states at every decoder layer) and the encoders that disentangle it. Both
//! write into `MODEL/unike/`; `unike bench` builds them on demand when a UniKE method asks and they are missing.

use crate::error::{input, Error, Result};
use unike_core::edit::unike::encoders::{EncoderParams, Encoders};
use unike_core::edit::unike::memory::{case_candidates, world_candidates, Candidate, KnowledgeMemory};
use unike_core::edit::unike::{Artifacts, UniKeParams};
use unike_core::train::save::TrainingRecord;
use unike_core::world::World;

use crate::load::Loaded;
use crate::progress::bar;

#[cfg_attr(feature = "clap", derive(clap::Args))]
#[derive(Debug)]
pub struct MemoryArgs {
    #[cfg_attr(feature = "clap", command(flatten))]
    pub model: crate::load::ModelArgs,
    /// Triplets to collect (default: `memory_size` of hparams/unike/<model>.toml; the paper collects over 15K).
    #[cfg_attr(feature = "clap", arg(long))]
    pub n: Option<usize>,
    /// World seed (default: the seed the model was trained with, from its training.json).
    #[cfg_attr(feature = "clap", arg(long))]
    pub seed: Option<u64>,
    /// MMEdit / VLKEB training data instead of the model's world (a directory with `vqa_train.json` and
    /// `caption_train.json`, or one file): the cases' multimodal locality questions with their ground-truth answers
    /// are asked (any model family).
    #[cfg_attr(feature = "clap", arg(long, conflicts_with = "seed"))]
    pub data: Option<std::path::PathBuf>,
}

#[cfg_attr(feature = "clap", derive(clap::Args))]
#[derive(Debug)]
pub struct EncoderArgs {
    #[cfg_attr(feature = "clap", command(flatten))]
    pub model: crate::load::ModelArgs,
    /// Training steps (default from hparams/unike/<model>.toml).
    #[cfg_attr(feature = "clap", arg(long))]
    pub steps: Option<usize>,
    #[cfg_attr(feature = "clap", arg(long))]
    pub seed: Option<u64>,
}

/// The UniKE hyper-parameters of the loaded model (file if present, else defaults).
pub fn unike_params(loaded: &Loaded) -> Result<UniKeParams> {
    crate::trained::method_params(loaded, "unike")
}

fn build_memory_into(
    loaded: &Loaded,
    n: usize,
    seed: Option<u64>,
    data: Option<&std::path::Path>,
) -> Result<KnowledgeMemory> {
    let world: World;
    let cases_held: Vec<unike_core::data::EditCase>;
    let unreadable = std::cell::Cell::new(None);
    let candidates: Box<dyn Iterator<Item = Candidate> + '_> = match data {
        Some(d) => {
            let cases = crate::trained::training_data(loaded, Some(d))?.training_cases(usize::MAX)?;
            cases_held = cases;
            // The first unreadable image ends the candidates; it is reported once the memory is built.
            Box::new(case_candidates(&cases_held).map_while(|c| match c {
                Ok(c) => Some(c),
                Err(e) => {
                    unreadable.set(Some(e));
                    None
                }
            }))
        }
        None => {
            let seed = match seed {
                Some(s) => s,
                None => TrainingRecord::read(&loaded.dir)?.map(|r| r.recipe.seed).ok_or_else(|| {
                    Error::Input(
                        "the model has no training.json (not a world model): pass --data with MMEdit training \
                         cases, or --seed"
                            .into(),
                    )
                })?,
            };
            world = World::generate(seed);
            Box::new(world_candidates(&world, 3000, 64))
        }
    };
    let eos = loaded.ckpt.eos_token_ids()?;
    let layers: Vec<usize> = (0..loaded.model.num_layers()).collect();
    let b = bar(n as u64, "memory")?;
    let mut last = 0;
    let mut tick = |got: usize, asked: usize| {
        b.set_position(got as u64);
        b.set_message(format!("{asked} asked"));
        if b.is_hidden() && got >= last + n.div_ceil(10) {
            last = got;
            eprintln!("memory: {got}/{n} wrong answers collected ({asked} asked)");
        }
    };
    let built = KnowledgeMemory::build(&*loaded.model, &*loaded.processor, &eos, candidates, &layers, n, &mut tick);
    if let Some(e) = unreadable.take() {
        return Err(e.into());
    }
    let memory = built?;
    b.finish_and_clear();
    if memory.len() < n {
        eprintln!("note: only {} wrong answers found (asked for {n})", memory.len());
    }
    memory.save(&Artifacts::dir(&loaded.dir))?;
    eprintln!("wrote {} triplets to {}", memory.len(), Artifacts::dir(&loaded.dir).display());
    Ok(memory)
}

fn train_into(loaded: &Loaded, memory: &KnowledgeMemory, params: &EncoderParams) -> Result<()> {
    let b = bar(params.steps as u64, "encoders")?;
    let mut tick = |step: usize, _: usize, p: unike_core::edit::unike::encoders::EncoderStep| {
        b.set_position(step as u64);
        b.set_message(format!("L_tru {:.3} L_sem {:.3}", p.truthful, p.semantic));
        if b.is_hidden() && step.is_multiple_of(200) {
            eprintln!("encoders: step {step}/{}: L_tru {:.3} L_sem {:.3}", params.steps, p.truthful, p.semantic);
        }
    };
    let (enc, curve) = Encoders::train(memory, params, &mut tick)?;
    b.finish_and_clear();
    enc.save(&Artifacts::dir(&loaded.dir), &curve)?;
    if let Some(last) = curve.last() {
        eprintln!(
            "encoders trained ({} steps, final L_tru {:.3}, L_sem {:.3}) into {}",
            params.steps,
            last.truthful,
            last.semantic,
            Artifacts::dir(&loaded.dir).display()
        );
    }
    Ok(())
}

pub fn build_memory(args: MemoryArgs) -> Result<()> {
    crate::load::single_thread_pools();
    let loaded = args.model.load()?;
    let n = args.n.unwrap_or(unike_params(&loaded)?.memory_size);
    if n == 0 {
        input!("--n must be at least 1");
    }
    build_memory_into(&loaded, n, args.seed, args.data.as_deref())?;
    Ok(())
}

pub fn train_encoders(args: EncoderArgs) -> Result<()> {
    crate::load::single_thread_pools();
    let loaded = args.model.load()?;
    let mut params = unike_params(&loaded)?.encoders;
    if let Some(s) = args.steps {
        if s == 0 {
            input!("--steps must be at least 1");
        }
        params.steps = s;
    }
    if let Some(s) = args.seed {
        params.seed = s;
    }
    let dir = Artifacts::dir(&loaded.dir);
    if !dir.join("memory.safetensors").is_file() {
        input!("no knowledge memory in {}: run `unike build-memory` first", dir.display());
    }
    let memory = KnowledgeMemory::load(&dir, loaded.model.device())?;
    train_into(&loaded, &memory, &params)
}

/// Builds whatever of the memory and encoders is missing for `loaded` (with progress bars and a message).
/// Threads of one process (the studio's model and run workers) build them one at a time: a second caller waits for
/// the first and finds them present.
pub fn ensure(loaded: &Loaded) -> Result<()> {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if Artifacts::present(&loaded.dir) {
        return Ok(());
    }
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if Artifacts::present(&loaded.dir) {
        return Ok(());
    }
    let dir = Artifacts::dir(&loaded.dir);
    let params = unike_params(loaded)?;
    let memory = if dir.join("memory.safetensors").is_file() {
        KnowledgeMemory::load(&dir, loaded.model.device())?
    } else {
        eprintln!(
            "UniKE's knowledge memory is missing from {}: building it now ({} triplets; `unike build-memory` does this \
             alone)",
            dir.display(),
            params.memory_size
        );
        build_memory_into(loaded, params.memory_size, None, None)?
    };
    if dir.join("encoders.safetensors").is_file() {
        return Ok(());
    }
    eprintln!("UniKE's encoders are missing: training them now (`unike train-encoders` does this alone)");
    train_into(loaded, &memory, &params.encoders)
}
