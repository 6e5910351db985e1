//! WISE's side memories as a stack holds them: each edit contributes a [`WiseEntry`] (its change of the side copy of
//! one layer's FFN output projection, the shard it was trained into, and its activation record); the entries of one
//! shard add up to that shard's side memory `W₀ + ΣΔ`. Routing is decided once per input on its prompt, before its
//! forward pass (a [`Router`] reading the unedited model's FFN inputs at the layer): the activation score of a side
//! memory is the mean over the prompt positions of `‖act(W' a) − act(W₀ a)‖₂` (`a` the FFN intermediate, `act` the
//! FFN's activation, as WISE computes it); the current shard answers when its score reaches `act_ratio` times its
//! smallest edit record, an older shard when its score is above the best so far and its own threshold (WISE's
//! retrieval), else the main memory.

use candle_core::{DType, Tensor, D};

use crate::error::{Error, Result};
use crate::hooks::{DownProjDelta, Hooks, Router, RouterReads};
use crate::model::FfnParts;

/// One edit's contribution.
#[derive(Debug, Clone)]
pub struct WiseEntry {
    pub layer: usize,
    /// The change of the side memory, `ΔW (i, d)` f32.
    pub delta: Tensor,
    /// The shard (side memory) it belongs to.
    pub shard: usize,
    /// Its activation record: the edit's activation score when training ended.
    pub act: f64,
    /// The routing ratio it was made with.
    pub act_ratio: f64,
    /// The layer's FFN (shared with the model).
    pub parts: FfnParts,
}

/// `mean_p ‖act(a W₀ᵀ + a Δ) − act(a W₀ᵀ)‖₂` of intermediates `a (p, i)` f32 for the side change `delta (i, d)`:
/// WISE's activation score (differentiable in `delta`), a scalar.
pub fn activation_score(parts: &FfnParts, a: &Tensor, delta: &Tensor) -> Result<Tensor> {
    let act = parts.activation();
    let main = a.matmul(&parts.down().t()?.to_dtype(DType::F32)?)?;
    let side = (&main + a.matmul(delta)?)?;
    let diff = (act.apply(&side)? - act.apply(&main)?)?;
    // A vanishing offset keeps the norm's gradient finite where the side memory equals the main one (δ = 0).
    Ok((diff.sqr()?.sum(D::Minus1)? + 1e-12)?.sqrt()?.mean_all()?)
}

/// The side memories of one layer, from a stack's entries in order.
#[derive(Debug, Clone)]
pub struct WiseRouter {
    layer: usize,
    parts: FfnParts,
    /// By shard: the summed change and the threshold (`act_ratio` × the smallest record).
    shards: Vec<(usize, Tensor, f64)>,
}

impl WiseRouter {
    /// The router of `entries` (all of one layer, in stack order).
    pub fn new(entries: &[&WiseEntry]) -> Result<Self> {
        let first = entries.first().ok_or_else(|| Error::Invalid("no WISE entries".into()))?;
        let mut shards: Vec<(usize, Tensor, f64)> = Vec::new();
        for e in entries {
            match shards.iter_mut().find(|(s, _, _)| *s == e.shard) {
                Some((_, d, t)) => {
                    *d = (&*d + &e.delta)?;
                    *t = t.min(e.act * e.act_ratio);
                }
                None => shards.push((e.shard, e.delta.clone(), e.act * e.act_ratio)),
            }
        }
        // The current (newest) shard is consulted first.
        shards.sort_by_key(|s| std::cmp::Reverse(s.0));
        Ok(Self { layer: first.layer, parts: first.parts.clone(), shards })
    }

    /// Each shard's score for one input's intermediates `a (p, i)`.
    pub fn scores(&self, a: &Tensor) -> Result<Vec<f64>> {
        self.shards
            .iter()
            .map(|(_, d, _)| Ok(activation_score(&self.parts, a, d)?.to_scalar::<f32>()? as f64))
            .collect()
    }

    /// The shard an input with these scores goes to (an index into the shards, newest first), if any: the current
    /// shard when its score reaches its threshold; an older one when its score beats every score before it (the
    /// current shard's included, reached or not) and its own threshold.
    pub fn pick(&self, scores: &[f64]) -> Option<usize> {
        let (&first, rest) = scores.split_first()?;
        let mut chosen = (first >= self.shards[0].2).then_some(0);
        let mut best = first;
        for (k, &score) in rest.iter().enumerate() {
            if score > best && score > self.shards[k + 1].2 {
                chosen = Some(k + 1);
                best = score;
            }
        }
        chosen
    }
}

impl Router for WiseRouter {
    fn layer(&self) -> usize {
        self.layer
    }

    fn reads(&self) -> RouterReads {
        RouterReads::PromptFfnInputs
    }

    fn decide(&self, _states: &Tensor) -> Result<Vec<Option<usize>>> {
        Err(Error::Invalid("WISE routes on the prompt's FFN inputs".into()))
    }

    fn decide_prompt(&self, ffn_inputs: &Tensor, last: &[usize]) -> Result<Vec<Option<usize>>> {
        last.iter()
            .enumerate()
            .map(|(row, &l)| {
                let q = ffn_inputs.get(row)?.narrow(0, 0, l + 1)?;
                let a = self.parts.intermediate(&q)?.to_dtype(DType::F32)?;
                Ok(self.pick(&self.scores(&a)?))
            })
            .collect()
    }

    fn route_hooks(&self, route: usize) -> Result<Hooks> {
        let (_, delta, _) =
            self.shards.get(route).ok_or_else(|| Error::Invalid(format!("no WISE side memory {route}")))?;
        let mut h = Hooks::none();
        h.add_ffn(self.layer, std::sync::Arc::new(DownProjDelta { parts: self.parts.clone(), delta: delta.clone() }));
        Ok(h)
    }
}

/// The routers of a stack's WISE entries, one per layer.
pub fn wise_hooks<'a>(entries: impl IntoIterator<Item = &'a WiseEntry>) -> Result<Hooks> {
    let mut by_layer: std::collections::BTreeMap<usize, Vec<&WiseEntry>> = Default::default();
    for e in entries {
        by_layer.entry(e.layer).or_default().push(e);
    }
    let mut h = Hooks::none();
    for es in by_layer.values() {
        h.add_router(std::sync::Arc::new(WiseRouter::new(es)?));
    }
    Ok(h)
}
