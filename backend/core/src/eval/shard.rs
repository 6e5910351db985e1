//! A run in shards: contiguous ranges of its chunks (one edit in one-step mode, `k` in sequential mode), computed
//! apart (other threads, processes or machines) and assembled into the result one process would give, bit for bit
//! (only the edit times differ). Each shard keeps its metric updates in order and its cases' portability baselines;
//! [`assemble`] replays them in case order, as [`super::run_detailed`] does with its chunks. VLKEB's gap protocol is
//! one stream of edits and is not split: it is one shard.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use unike_shared::BenchResult;

use super::harness::{finish, run_chunks, run_stream, CaseMeta, Sums};
use super::{CaseScore, Evaluator, Mode, PreparedCase};
use crate::edit::EditMethod;
use crate::error::{Error, Result};

/// What one shard computed: its first case (an index into the run's cases), its metric updates and edit times in
/// case order, and what the result needs of each case it scored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardOutcome {
    pub first: usize,
    pub edit_ms: Vec<f64>,
    sums: Sums,
    cases: Vec<CaseMeta>,
}

impl ShardOutcome {
    /// How many cases the shard scored.
    pub fn scored(&self) -> usize {
        self.cases.len()
    }
}

/// The case ranges of a run of `n` cases in `mode` cut into at most `shards` shards of whole chunks, as even as the
/// chunks allow (a gap stream: one).
pub fn plan(n: usize, mode: Mode, shards: usize) -> Vec<Range<usize>> {
    if n == 0 {
        return vec![];
    }
    if matches!(mode, Mode::SequentialGap(_)) {
        return std::iter::once(0..n).collect();
    }
    let k = mode.k().max(1);
    let chunks = n.div_ceil(k);
    let shards = shards.clamp(1, chunks);
    (0..shards)
        .map(|s| {
            let (a, b) = (chunks * s / shards, chunks * (s + 1) / shards);
            (a * k).min(n)..(b * k).min(n)
        })
        .filter(|r| !r.is_empty())
        .collect()
}

/// Runs `method` over `cases`, the run's cases from index `first` (whole chunks: `first` a multiple of `mode.k()`),
/// with `threads` worker threads; `progress(done, total)` as in [`super::run_detailed`].
pub fn run_shard(
    ev: &Evaluator<'_>,
    method: &dyn EditMethod,
    cases: &[PreparedCase],
    first: usize,
    mode: Mode,
    threads: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<ShardOutcome> {
    let (sums, edit_ms, scored) = match mode {
        Mode::SequentialGap(g) => {
            if first != 0 {
                return Err(Error::Invalid("the gap protocol is one stream of edits: it runs as one shard".into()));
            }
            run_stream(ev, method, cases, g, progress)?
        }
        _ => {
            if !first.is_multiple_of(mode.k().max(1)) {
                return Err(Error::Invalid(format!(
                    "a shard starts at a chunk: {first} is not a multiple of {}",
                    mode.k()
                )));
            }
            let (sums, edit_ms) = run_chunks(ev, method, cases, first, mode, threads, progress)?;
            (sums, edit_ms, cases.len())
        }
    };
    let cases = cases[..scored].iter().map(PreparedCase::meta).collect();
    Ok(ShardOutcome { first, edit_ms, sums, cases })
}

/// The result of `method`'s run of `n` cases from all its shards (in any order): they must cover the cases from 0
/// without gaps or overlaps (a gap stream: its one shard).
pub fn assemble(
    method: &str,
    task: &str,
    mode: Mode,
    n: usize,
    mut shards: Vec<ShardOutcome>,
) -> Result<(BenchResult, Vec<CaseScore>)> {
    shards.sort_by_key(|s| s.first);
    let (mut sums, mut edit_ms, mut cases) = (Sums::default(), Vec::new(), Vec::new());
    for s in shards {
        if s.first != cases.len() {
            return Err(Error::Invalid(format!(
                "the shards of {method} do not cover its cases: one starts at case {} after {} cases",
                s.first,
                cases.len()
            )));
        }
        sums.merge(s.sums);
        edit_ms.extend(s.edit_ms);
        cases.extend(s.cases);
    }
    let expected = match mode {
        Mode::SequentialGap(g) => n.saturating_sub(g),
        _ => n,
    };
    if cases.is_empty() || cases.len() != expected {
        return Err(Error::Invalid(format!(
            "the shards of {method} score {} cases, not the run's {expected}",
            cases.len()
        )));
    }
    Ok(finish(method, task, mode, &sums, edit_ms, &cases))
}
