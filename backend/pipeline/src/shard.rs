//! A benchmark in shards: each method's cases cut into ranges of whole chunks ([`unike_core::eval::shard`]) that
//! other processes or machines compute (`unike bench --shard I/N`, the studio's workers), and the results assembled
//! from them equal a one-process run of the same configuration bit for bit (edit times aside).
//!
//! A shard re-derives everything from the configuration: the same cases drawn by the same seed, each case prepared
//! with its own seed (`seed + index`, as in one process), the method built from the same hyper-parameters and
//! memory. Nothing but the shard's range travels.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use unike_core::eval::shard::{self as core_shard, ShardOutcome};
use unike_core::eval::{CaseScore, Evaluator};
use unike_shared::BenchResult;

use crate::bench::{check_config, eval_mode, memory_sequences, Config, Setup};
use crate::data::DataSource;
use crate::error::{input, Result};
use crate::load::Loaded;

/// One shard of a benchmark: a method and a range of its cases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    pub method: String,
    pub cases: Range<usize>,
}

/// A computed shard: what it was and what it found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardResult {
    pub spec: ShardSpec,
    /// The method's own name (its variant spelled as the method spells it) and the run's task, as a result names them.
    pub name: String,
    pub task: String,
    /// How many cases the run edits (a gap stream: its `n` and the `k` edits after them).
    pub run_cases: usize,
    pub outcome: ShardOutcome,
}

/// The cases a run of `cfg` scores when the data holds enough (cross-task: n/2 of each task).
pub fn planned_cases(cfg: &Config) -> usize {
    if cfg.task == crate::bench::BenchTask::Cross {
        cfg.n / 2 * 2
    } else {
        cfg.n
    }
}

/// The shards of `cfg`: each method's [`planned_cases`] in at most `per_method` ranges of whole chunks (a gap
/// stream: one).
pub fn plan(cfg: &Config, per_method: usize) -> Vec<ShardSpec> {
    let ranges = core_shard::plan(planned_cases(cfg), eval_mode(cfg), per_method);
    cfg.methods
        .iter()
        .flat_map(|m| ranges.iter().map(move |r| ShardSpec { method: m.clone(), cases: r.clone() }))
        .collect()
}

/// Shard `index` of `count` of every method of `cfg` (`unike bench --shard I/N`): the ranges [`plan`] gives for
/// `count` shards per method, the `index`-th of each (a method with fewer chunks than shards has nothing there).
pub fn nth(cfg: &Config, index: usize, count: usize) -> Result<Vec<ShardSpec>> {
    if count == 0 || index >= count {
        input!("--shard {index}/{count}: expected I/N with 0 <= I < N");
    }
    let ranges = core_shard::plan(planned_cases(cfg), eval_mode(cfg), count);
    Ok(match ranges.get(index) {
        Some(r) => cfg.methods.iter().map(|m| ShardSpec { method: m.clone(), cases: r.clone() }).collect(),
        None => vec![],
    })
}

/// Computes `specs` (shards of `cfg` on `data`); `progress(done, total)` after each chunk of each shard, `false`
/// cancels. Returns one result per spec, in order.
pub fn run(
    loaded: &Loaded,
    data: &DataSource,
    cfg: &Config,
    specs: &[ShardSpec],
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Vec<ShardResult>> {
    check_config(cfg)?;
    let setup = Setup::new(loaded, data, cfg)?;
    let eos = loaded.ckpt.eos_token_ids()?;
    let mut ev = Evaluator::new(&*loaded.model, &*loaded.processor, eos);
    let memory = memory_sequences(&mut ev, &setup.memory_cases)?;
    let mode = eval_mode(cfg);
    let mut out = Vec::with_capacity(specs.len());
    let gap = matches!(mode, unike_core::eval::Mode::SequentialGap(_));
    for spec in specs {
        // A gap stream edits every case of the run (its n and the k after them) in its one shard.
        let range = if gap { 0..setup.cases.len() } else { spec.cases.clone() };
        if range.end > setup.cases.len() || range.is_empty() || (gap && spec.cases.start != 0) {
            input!(
                "shard {}..{} of {}: the run has {} cases",
                spec.cases.start,
                spec.cases.end,
                spec.method,
                setup.cases.len()
            );
        }
        if !cfg.methods.contains(&spec.method) {
            input!("shard of {}: not a method of the run ({})", spec.method, cfg.methods.join(", "));
        }
        let prepared = range
            .map(|i| ev.prepare(&setup.cases[i], cfg.seed.wrapping_add(i as u64)))
            .collect::<unike_core::Result<Vec<_>>>()?;
        let method = setup.method(loaded, &spec.method, &memory)?;
        let outcome =
            core_shard::run_shard(&ev, method.as_ref(), &prepared, spec.cases.start, mode, cfg.threads, progress)?;
        out.push(ShardResult {
            spec: spec.clone(),
            name: method.name().to_string(),
            task: setup.task_name.to_string(),
            run_cases: setup.cases.len(),
            outcome,
        });
    }
    Ok(out)
}

/// The result of one method of `cfg` from its shards (any order; together they must cover every case once, and come
/// from that one method of one run).
pub fn assemble(cfg: &Config, shards: Vec<ShardResult>) -> Result<(BenchResult, Vec<CaseScore>)> {
    let Some(first) = shards.first() else { input!("no shards to assemble") };
    let (name, task, n) = (first.name.clone(), first.task.clone(), first.run_cases);
    if let Some(other) = shards.iter().find(|s| s.name != name || s.task != task || s.run_cases != n) {
        input!("shards of {} ({}) and {} ({}) are not one method's", name, task, other.name, other.task);
    }
    let outcomes = shards.into_iter().map(|s| s.outcome).collect();
    Ok(core_shard::assemble(&name, &task, eval_mode(cfg), n, outcomes)?)
}
