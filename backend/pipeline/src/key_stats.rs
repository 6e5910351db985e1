//! `unike build-stats`: the key statistics of the locate-then-edit methods (ROME, MEMIT, AlphaEdit; see
//! [`unike_core::edit::memit::stats`]) over the front of the training split (its edit questions with their pre-edit
//! answers where the file has them, its text and image locality questions with their answers; never the development
//! slice), written into `MODEL/memit/`. `unike bench` and the studio build them on demand when such a method asks.

use std::path::PathBuf;

use crate::data::DataSource;
use crate::error::{input, Error, Result};
use crate::load::Loaded;
use crate::progress::bar;
use unike_core::data::EditCase;
use unike_core::edit::memit::stats::KeyStats;
use unike_core::edit::registry::{split_name, USES_KEY_STATS};
use unike_core::edit::EditSequence;
use unike_core::eval::harness::Evaluator;

/// Training cases the statistics are estimated on unless `--cases` says otherwise.
pub const DEFAULT_CASES: usize = 1000;

#[cfg_attr(feature = "clap", derive(clap::Args))]
#[derive(Debug)]
pub struct StatsArgs {
    #[cfg_attr(feature = "clap", command(flatten))]
    pub model: crate::load::ModelArgs,
    /// Directory with `vqa_train.json` and `caption_train.json`, or one MMEdit / VLKEB training file (default: the
    /// world the model was trained on). Only the front is used: each file's last cases are the development slice.
    #[cfg_attr(feature = "clap", arg(long))]
    pub data: Option<PathBuf>,
    /// Training cases to estimate on (three sequences each).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT_CASES))]
    pub cases: usize,
}

/// The directory of a model's key statistics.
pub fn dir(loaded: &Loaded) -> PathBuf {
    loaded.dir.join("memit")
}

/// Each case's sequences, made as the statistics consume them (images decoded lazily).
fn sequences<'a, 'm>(
    ev: &'a mut Evaluator<'m>,
    cases: &'a [EditCase],
    eos: u32,
) -> impl Iterator<Item = unike_core::Result<EditSequence>> + use<'a, 'm> {
    cases.iter().flat_map(move |c| {
        let mut one = || -> unike_core::Result<Vec<EditSequence>> {
            let (px, mpx) = (ev.pixels(&c.image)?, ev.pixels(&c.m_loc_image)?);
            let mut v = Vec::with_capacity(3);
            if let Some(pre) = c.pre_edit.as_deref().filter(|p| !p.trim().is_empty()) {
                v.push(EditSequence::new(ev.processor, &c.prompt, Some(&px), pre, eos)?);
            }
            v.push(EditSequence::new(ev.processor, &c.loc_question, None, &c.loc_answer, eos)?);
            v.push(EditSequence::new(ev.processor, &c.m_loc_question, Some(&mpx), &c.m_loc_answer, eos)?);
            Ok(v)
        };
        match one() {
            Ok(v) => v.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        }
    })
}

/// Estimates the statistics of `loaded` on `cases` front cases of `data` and writes them.
pub fn build_into(loaded: &Loaded, data: &DataSource, cases: usize) -> Result<()> {
    if cases == 0 {
        input!("--cases must be at least 1");
    }
    let chosen = data.training_cases(cases)?;
    if chosen.is_empty() {
        input!("no training cases to estimate the key statistics on ({}): pass --data", data.train_label);
    }
    let eos = loaded.ckpt.eos_token_ids()?;
    let eos0 = *eos.first().ok_or_else(|| Error::State("the checkpoint has no end-of-sequence id".into()))?;
    let mut ev = Evaluator::new(&*loaded.model, &*loaded.processor, eos.clone());
    let b = bar(chosen.len() as u64 * 3, "key stats")?;
    let mut tick = |n: usize| b.set_position(n as u64);
    let source = format!("{}: {} front cases of the training split", data.train_label, chosen.len());
    let seqs = sequences(&mut ev, &chosen, eos0);
    let stats = KeyStats::collect(&*loaded.model, seqs, &source, &mut tick)?;
    b.finish_and_clear();
    stats.save(&dir(loaded))?;
    eprintln!(
        "wrote key statistics of {} layers ({} positions of {} sequences; {source}) to {}",
        stats.layers.len(),
        stats.info.tokens,
        stats.info.sequences,
        dir(loaded).display()
    );
    Ok(())
}

/// Builds the key statistics when one of `methods` reads them and they are missing. Threads of one process build
/// them one at a time.
pub fn ensure(loaded: &Loaded, methods: &[String], data: &DataSource) -> Result<()> {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if !methods.iter().any(|m| USES_KEY_STATS.contains(&split_name(m).0)) || KeyStats::exist(&dir(loaded)) {
        return Ok(());
    }
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if KeyStats::exist(&dir(loaded)) {
        return Ok(());
    }
    if !data.has_training_split() {
        input!(
            "the locate-then-edit methods need key statistics ({} has none) and there is no training split to \
             estimate them on ({}): pass --train FILE",
            dir(loaded).display(),
            data.train_label
        );
    }
    eprintln!(
        "the key statistics are missing from {}: estimating them now on {} (`unike build-stats` does this alone)",
        dir(loaded).display(),
        data.train_label
    );
    build_into(loaded, data, DEFAULT_CASES)
}

/// `unike build-stats`.
pub fn build_stats(args: StatsArgs) -> Result<()> {
    crate::load::single_thread_pools();
    let loaded = args.model.load()?;
    let data = crate::trained::training_data(&loaded, args.data.as_deref())?;
    build_into(&loaded, &data, args.cases)
}
