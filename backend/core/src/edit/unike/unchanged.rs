//! Memory sequences a stack leaves unchanged (issue 16, "fast on a stack"). UniKE keeps its new neurons silent on a
//! memory of unrelated inputs, so each edit needs that memory's FFN inputs at the edited layers under the stack it
//! edits on. A stack of UniKE (and T-Patcher) edits changes them only through two doors: a stack entry retrieved by
//! one of the sequence's positions (it beats the memory's K-th best entry), or a stack neuron that fires on one of
//! its positions below the last edited layer (ReLU, so a silent neuron adds exact zeros). Every other sequence has,
//! to the bit, the FFN inputs it has under the shared knowledge alone; those are computed once per method
//! ([`MemoryBase`]) and each edit recomputes only the sequences a door lets the stack into.
//!
//! The test for a door is conservative (a margin of [`MARGIN`] on scores and pre-activations, against rounding
//! differences between batch shapes), so a sequence in doubt is recomputed. Stacks with any other kind of patch (weight
//! deltas, in-context prefixes, SERAC, a retrieval over other knowledge or with other settings) take the full path.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor};

use super::latent::{Alpha, Knowledge};
use super::retrieve::with_rows;
use crate::edit::memory_prefix::{assemble, chunks, ffn_inputs, residual_at, Chunk, MemoryPrefix};
use crate::edit::PatchStack;
use crate::edit::{EditContext, EditSequence};
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, Hooks};
use crate::model::config::Activation;
use crate::model::{Inputs, VisionLanguageModel};

/// Scores within this of the memory's K-th best, and pre-activations above minus this, open the door.
pub const MARGIN: f32 = 1e-4;

/// The memory's states under the shared knowledge alone, computed on first use and kept for the method's life.
#[derive(Default)]
pub struct MemoryBase {
    cached: Mutex<Option<Arc<Base>>>,
}

impl std::fmt::Debug for MemoryBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryBase")
    }
}

/// One edited layer of the base, rows of every memory position in sequence order.
struct LayerBase {
    /// Unit, centred states entering the layer: what positions retrieve with, `(N, d)` f32.
    unit: Tensor,
    /// The memory's K-th best score per position (`-∞` when the memory holds fewer than K entries), `(N)`.
    kth: Vec<f32>,
    /// FFN inputs, `(N, d)` f32.
    ffn_in: Tensor,
}

struct Base {
    /// Layers, size of the memory, K and α it was computed for.
    key: (Vec<usize>, usize, usize, Alpha),
    /// Each memory sequence's first row and length.
    spans: Vec<(usize, usize)>,
    layers: BTreeMap<usize, LayerBase>,
}

impl Base {
    fn bytes(&self) -> usize {
        self.layers
            .values()
            .map(|l| crate::edit::tensor_bytes(&l.unit) + crate::edit::tensor_bytes(&l.ffn_in) + 4 * l.kth.len())
            .sum()
    }
}

/// What an edit's memory queries came to.
#[derive(Debug)]
pub struct Queries {
    /// FFN inputs per layer, `(m, d)` f32: the memory's positions, then `more`'s (as `memory_queries_fast`).
    pub rows: BTreeMap<usize, Tensor>,
    /// Memory sequences recomputed under the stack (the others came from the base).
    pub recomputed: usize,
}

/// A stack of the kinds the doors cover, as the doors need it.
struct StackView {
    /// Per edited layer, the stack's entries' unit, centred semantic states `(e, d)`.
    entries: BTreeMap<usize, Tensor>,
    /// Per layer below the last edited one, the stack's neurons: keys `(d, n)` and biases `(n)`, f32.
    neurons: BTreeMap<usize, Vec<(Tensor, Tensor)>>,
}

impl StackView {
    /// The view of `stack` when every patch is made of ReLU neurons at or above `layers`' lowest and latent entries
    /// retrieved from `knowledge` with `top_k` and `alpha`; `None` otherwise.
    fn of(
        stack: &PatchStack,
        knowledge: &Arc<Knowledge>,
        top_k: usize,
        alpha: Alpha,
        layers: &[usize],
    ) -> Result<Option<Self>> {
        let (Some(&lo), Some(&hi)) = (layers.iter().min(), layers.iter().max()) else {
            return Ok(None);
        };
        let mut sems: BTreeMap<usize, Vec<Tensor>> = BTreeMap::new();
        let mut neurons: BTreeMap<usize, Vec<(Tensor, Tensor)>> = BTreeMap::new();
        let mut retrieval_checked = false;
        for (_, p) in stack.iter() {
            if !p.mlp_deltas.is_empty() || !p.up_deltas.is_empty() || !p.contexts.is_empty() || p.serac.is_some() {
                return Ok(None);
            }
            for (&l, n) in &p.neurons {
                if l < lo || n.act != Activation::Relu {
                    return Ok(None);
                }
                if l < hi {
                    neurons.entry(l).or_default().push((n.w_k.to_dtype(DType::F32)?, n.b_k.to_dtype(DType::F32)?));
                }
            }
            if p.latent.is_empty() {
                continue;
            }
            // The stack retrieves as its first latent patch says (`patch::stack_hooks`).
            if !retrieval_checked {
                let Some(r) = &p.retrieval else { return Ok(None) };
                if !Arc::ptr_eq(&r.knowledge, knowledge) || r.top_k != top_k || r.alpha != alpha {
                    return Ok(None);
                }
                retrieval_checked = true;
            }
            for (&l, (sem, _)) in &p.latent {
                if !layers.contains(&l) {
                    return Ok(None);
                }
                sems.entry(l).or_default().push(sem.clone());
            }
        }
        let entries = sems
            .into_iter()
            .map(|(l, s)| Ok((l, knowledge.entry_sem(l, &Tensor::cat(&s, 0)?)?)))
            .collect::<Result<_>>()?;
        Ok(Some(Self { entries, neurons }))
    }

    /// Which memory sequences a door lets the stack into.
    fn opened(&self, base: &Base) -> Result<Vec<bool>> {
        let mut row_seq = Vec::new();
        for (s, &(_, len)) in base.spans.iter().enumerate() {
            row_seq.extend(std::iter::repeat_n(s, len));
        }
        let mut open = vec![false; base.spans.len()];
        let mut mark = |scores: &Tensor, floor: &dyn Fn(usize) -> f32| -> Result<()> {
            let cols = scores.dim(1)?;
            with_rows(scores, |flat| {
                for (r, row) in flat.chunks_exact(cols.max(1)).enumerate() {
                    if row.iter().any(|&v| v > floor(r)) {
                        open[row_seq[r]] = true;
                    }
                }
            })
        };
        for (l, layer) in &base.layers {
            // A stack entry that beats the memory's K-th best at one of the positions is retrieved there.
            if let Some(sem) = self.entries.get(l) {
                mark(&layer.unit.matmul(&sem.t()?)?.contiguous()?, &|r| layer.kth[r] - MARGIN)?;
            }
            // A stack neuron below the last edited layer that fires changes the next layer's input.
            for (w_k, b_k) in self.neurons.get(l).into_iter().flatten() {
                mark(&layer.ffn_in.matmul(w_k)?.broadcast_add(b_k)?.contiguous()?, &|_| -MARGIN)?;
            }
        }
        Ok(open)
    }
}

impl MemoryBase {
    /// Bytes the base of `memory` takes once computed for `layers` edited layers of width `d` (two f32 states and a
    /// score per position and layer).
    pub fn expected_bytes(memory: &[EditSequence], layers: usize, d: usize) -> usize {
        let positions: usize = memory.iter().map(|s| s.ids.len()).sum();
        layers * positions * (2 * d * 4 + 4)
    }

    /// Bytes held (the per-position states of every edited layer).
    pub fn bytes(&self) -> usize {
        self.cached.lock().ok().and_then(|g| g.as_ref().map(|b| b.bytes())).unwrap_or(0)
    }

    /// The memory's FFN inputs at `layers` followed by `more`'s, under `ctx.stack` with retrieval over `knowledge`
    /// (`top_k`, `alpha`): what `memory_queries_fast` computes with the knowledge's hooks as `extra` when the stack has
    /// no retrieval of its own. `None` when the stack holds a kind of patch the doors do not cover (module docs).
    #[allow(clippy::too_many_arguments)]
    pub fn queries(
        &self,
        ctx: &EditContext<'_>,
        knowledge: &Arc<Knowledge>,
        (top_k, alpha): (usize, Alpha),
        memory: &[EditSequence],
        prefix: &MemoryPrefix,
        more: &[EditSequence],
        layers: &[usize],
    ) -> Result<Option<Queries>> {
        let Some(view) = StackView::of(ctx.stack, knowledge, top_k, alpha, layers)? else {
            return Ok(None);
        };
        let Some(&lo) = layers.iter().min() else {
            return Ok(None);
        };
        let model = ctx.model;
        let cached = prefix.chunks(model, memory, lo)?;
        let base = self.base(model, knowledge, (top_k, alpha), &cached, memory.len(), layers)?;
        let open = view.opened(&base)?;
        // The opened sequences' residuals (sliced from the cached batches) and `more`'s, run under the whole stack.
        let mut residuals: Vec<Option<Inputs>> = vec![None; memory.len()];
        for Chunk { x, positions, lens, seqs } in cached.iter() {
            for (i, (&n, &s)) in lens.iter().zip(seqs).enumerate() {
                if open[s] {
                    let positions = positions.row(i)?.narrow(n)?;
                    residuals[s] = Some(Inputs { embeds: x.narrow(0, i, 1)?.narrow(1, 0, n)?, positions });
                }
            }
        }
        let opened: Vec<usize> = (0..memory.len()).filter(|&s| open[s]).collect();
        let mut rerun = opened
            .iter()
            .map(|&s| residuals[s].clone())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Invalid("a memory sequence is missing from its batches".into()))?;
        for s in more {
            rerun.push(residual_at(model, s, lo)?);
        }
        let mut hooks = ctx.stack_hooks()?;
        if ctx.stack.iter().all(|(_, p)| p.latent.is_empty()) {
            hooks.extend(&knowledge.hooks(top_k, alpha, &BTreeMap::new())?);
        }
        let batches = chunks(&rerun)?;
        let total = memory.len() + more.len();
        let ran = ffn_inputs(model, &batches.iter().map(|c| (c, 0)).collect::<Vec<_>>(), rerun.len(), layers, &hooks)?;
        // Back in place: opened sequences and `more` from the run, the others from the base.
        let mut rows = BTreeMap::new();
        for &l in layers {
            let mut got = ran.get(&l).cloned().ok_or_else(|| Error::Invalid(format!("layer {l} not run")))?;
            let layer = base.layers.get(&l).ok_or_else(|| Error::Invalid(format!("layer {l} not in the base")))?;
            let mut out: Vec<Option<Tensor>> = vec![None; total];
            for (j, &s) in opened.iter().enumerate() {
                out[s] = got[j].take();
            }
            for (j, slot) in out.iter_mut().enumerate().skip(memory.len()) {
                *slot = got[opened.len() + j - memory.len()].take();
            }
            for (s, &(start, len)) in base.spans.iter().enumerate() {
                if !open[s] {
                    out[s] = Some(layer.ffn_in.narrow(0, start, len)?);
                }
            }
            rows.insert(l, out);
        }
        Ok(Some(Queries { rows: assemble(rows)?, recomputed: opened.len() }))
    }

    /// The base for these settings (computed now unless cached for the same ones).
    fn base(
        &self,
        model: &dyn VisionLanguageModel,
        knowledge: &Arc<Knowledge>,
        (top_k, alpha): (usize, Alpha),
        cached: &[Chunk],
        n: usize,
        layers: &[usize],
    ) -> Result<Arc<Base>> {
        let key = (layers.to_vec(), n, top_k, alpha);
        let mut guard = self.cached.lock().map_err(|_| Error::Invalid("memory base poisoned".into()))?;
        if let Some(b) = guard.as_ref().filter(|b| b.key == key) {
            return Ok(b.clone());
        }
        let b = Arc::new(compute(model, knowledge, (top_k, alpha), cached, n, layers, key)?);
        *guard = Some(b.clone());
        Ok(b)
    }
}

/// Runs the cached batches through the edited layers under the knowledge alone, keeping per position what the
/// doors test and the FFN inputs.
fn compute(
    model: &dyn VisionLanguageModel,
    knowledge: &Arc<Knowledge>,
    (top_k, alpha): (usize, Alpha),
    cached: &[Chunk],
    n: usize,
    layers: &[usize],
    key: (Vec<usize>, usize, usize, Alpha),
) -> Result<Base> {
    let (Some(&lo), Some(&hi)) = (layers.iter().min(), layers.iter().max()) else {
        return Err(Error::Invalid("memory queries need at least one layer".into()));
    };
    let hooks: Hooks = knowledge.hooks(top_k, alpha, &BTreeMap::new())?;
    let k = top_k.max(1);
    // Per layer and sequence: unit states, K-th scores, FFN inputs.
    type Parts = (Option<Tensor>, Vec<f32>, Option<Tensor>);
    let mut per: BTreeMap<usize, Vec<Parts>> = layers.iter().map(|&l| (l, vec![(None, Vec::new(), None); n])).collect();
    for Chunk { x, positions, lens, seqs } in cached {
        let points = layers.iter().flat_map(|&l| [(l, CapturePoint::LayerInput), (l, CapturePoint::FfnInput)]);
        let mut cap = Capture::of(points);
        model.forward_layers(x, positions, lo..hi + 1, None, &hooks, &mut cap)?;
        let s_len = x.dim(1)?;
        for &l in layers {
            let missing = || Error::Invalid(format!("layer {l} not captured"));
            let input = cap.get(l, CapturePoint::LayerInput).ok_or_else(missing)?;
            let ffn = cap.get(l, CapturePoint::FfnInput).ok_or_else(missing)?;
            let unit = knowledge.unit_states(l, input)?;
            let scored = knowledge.retrieve(l, &unit, k)?;
            let out = per.get_mut(&l).ok_or_else(missing)?;
            for (i, (&len, &s)) in lens.iter().zip(seqs).enumerate() {
                let kth = (0..len)
                    .map(|p| {
                        let r = i * s_len + p;
                        if scored.k < k {
                            f32::NEG_INFINITY
                        } else {
                            scored.score[r * scored.k + scored.k - 1]
                        }
                    })
                    .collect();
                let ffn_rows = ffn.narrow(0, i, 1)?.narrow(1, 0, len)?.squeeze(0)?.to_dtype(DType::F32)?;
                out[s] = (Some(unit.narrow(0, i * s_len, len)?), kth, Some(ffn_rows));
            }
        }
    }
    let mut spans = Vec::with_capacity(n);
    let mut layer_bases = BTreeMap::new();
    for (l, parts) in per {
        let missing = || Error::Invalid(format!("a memory sequence is missing at layer {l}"));
        let mut units = Vec::with_capacity(n);
        let mut ffns = Vec::with_capacity(n);
        let mut kth = Vec::new();
        let record = spans.is_empty();
        for (u, k, f) in parts {
            let (u, f) = (u.ok_or_else(missing)?, f.ok_or_else(missing)?);
            if record {
                spans.push((kth.len(), k.len()));
            }
            kth.extend(k);
            units.push(u);
            ffns.push(f);
        }
        let unit = Tensor::cat(&units, 0)?.contiguous()?;
        let ffn_in = Tensor::cat(&ffns, 0)?.contiguous()?;
        layer_bases.insert(l, LayerBase { unit, kth, ffn_in });
    }
    Ok(Base { key, spans, layers: layer_bases })
}
