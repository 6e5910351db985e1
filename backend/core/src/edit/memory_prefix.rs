//! Fast memory queries under a stack (issue 16, "fast on a stack"). T-Patcher and UniKE keep their new neurons silent
//! on a memory of unrelated inputs, so every edit needs that memory's FFN inputs at the patched layers *under the
//! stack it edits on*. Patches act only through hooks, and the hooks of T-Patcher, UniKE, FT, KE, MEND and SERAC sit
//! in the last layers: below the lowest hooked layer every stack computes what the unedited model does. So the
//! memory's residual stream entering the first patched layer is computed once per method ([`MemoryPrefix`]), and each
//! edit runs only the patched layers, on the whole memory as one right-padded batch. A stack with a hook lower down,
//! or an in-context prefix (which every layer attends to), takes the full forward pass, sequence by sequence.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor};

use super::{EditContext, EditSequence};
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, Hooks};
use crate::model::{Inputs, Positions, VisionLanguageModel};

/// Sequences per batched forward pass of the patched layers. Measured on the default model (stack of 10): T-Patcher
/// the same with 8 or 64; UniKE, whose retrieval compares every position with its whole memory, 3.3 s with 8 and
/// 5.3 s with 64 (bigger padded batches cost more than they save).
const CHUNK: usize = 8;

/// The residual stream entering one decoder layer for a fixed memory on the unedited model, as the right-padded
/// batches the patched layers run on: computed on first use, kept for the method's life. The batches keep their
/// identity from edit to edit, so what depends only on them can be pinned ([`super::unike::latent::Knowledge::pin`]).
#[derive(Default)]
pub struct MemoryPrefix {
    cached: Mutex<Option<Cached>>,
}

/// The layer, the memory's size, and its batches.
type Cached = (usize, usize, Arc<Vec<Chunk>>);

/// One padded batch: the residuals `(b, longest, d)` and their positions, each sequence's length and its index among
/// the inputs.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub x: Tensor,
    pub positions: Positions,
    pub lens: Vec<usize>,
    pub seqs: Vec<usize>,
}

/// `residuals` (`(1, s_i, d)` each, with positions) as right-padded batches of [`CHUNK`] sequences of similar lengths (sorted by
/// length, so that little of a batch is padding).
pub(crate) fn chunks(residuals: &[Inputs]) -> Result<Vec<Chunk>> {
    let lens = residuals.iter().map(|t| t.embeds.dim(1)).collect::<candle_core::Result<Vec<_>>>()?;
    let mut order: Vec<usize> = (0..residuals.len()).collect();
    order.sort_by_key(|&i| (lens[i], i));
    order
        .chunks(CHUNK)
        .map(|group| {
            let longest = group.iter().map(|&i| lens[i]).max().unwrap_or(0);
            // Right padding: the causal mask keeps every real position from seeing the pads.
            let padded = group
                .iter()
                .map(|&i| {
                    let t = &residuals[i].embeds;
                    if lens[i] == longest {
                        Ok(t.clone())
                    } else {
                        t.pad_with_zeros(1, 0, longest - lens[i])
                    }
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let positions: Vec<&Positions> = group.iter().map(|&i| &residuals[i].positions).collect();
            Ok(Chunk {
                x: Tensor::cat(&padded, 0)?,
                positions: Positions::right_padded(&positions, longest)?,
                lens: group.iter().map(|&i| lens[i]).collect(),
                seqs: group.to_vec(),
            })
        })
        .collect()
}

impl std::fmt::Debug for MemoryPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryPrefix")
    }
}

/// The residual stream of `seq` entering layer `layer` on the unedited model, `(1, s, d)`, and its positions.
pub(crate) fn residual_at(model: &dyn VisionLanguageModel, seq: &EditSequence, layer: usize) -> Result<Inputs> {
    let inputs = seq.inputs(model)?;
    let x = model.forward_layers(
        &inputs.embeds,
        &inputs.positions,
        0..layer,
        None,
        &Hooks::none(),
        &mut Capture::none(),
    )?;
    Ok(Inputs { embeds: x, positions: inputs.positions })
}

impl MemoryPrefix {
    /// Bytes the batches of `memory` take once cached (f32 residuals of width `d`, padding included): what a method
    /// holding this cache weighs once it has edited on a stack, known before it has.
    pub fn expected_bytes(memory: &[EditSequence], d: usize) -> usize {
        let mut lens: Vec<usize> = memory.iter().map(|s| s.ids.len()).collect();
        lens.sort_unstable();
        lens.chunks(CHUNK).map(|g| g.len() * g.last().copied().unwrap_or(0) * d * 4).sum()
    }

    /// The batches of `memory`'s residuals entering `layer` (computed now unless cached for the same layer).
    pub fn chunks(
        &self,
        model: &dyn VisionLanguageModel,
        memory: &[EditSequence],
        layer: usize,
    ) -> Result<Arc<Vec<Chunk>>> {
        let mut guard = self.cached.lock().map_err(|_| Error::Invalid("memory prefix cache poisoned".into()))?;
        if let Some((l, n, c)) = guard.as_ref() {
            if *l == layer && *n == memory.len() {
                return Ok(c.clone());
            }
        }
        let residuals = memory.iter().map(|s| residual_at(model, s, layer)).collect::<Result<Vec<_>>>()?;
        let c = Arc::new(chunks(&residuals)?);
        *guard = Some((layer, memory.len(), c.clone()));
        Ok(c)
    }
}

/// FFN inputs of `memory` followed by `more` at each of `layers` under `ctx.stack` and `extra`, `(m, d)` f32 per
/// layer with the sequences' positions in order: what [`super::neurons::memory_queries`] computes on the same
/// sequences, but running only the patched layers when the hooks allow it (module note). `prefix` caches `memory`'s
/// residuals (never `more`'s, which change with the stack).
pub fn memory_queries_fast(
    ctx: &EditContext<'_>,
    memory: &[EditSequence],
    prefix: &MemoryPrefix,
    more: &[EditSequence],
    layers: &[usize],
    extra: &Hooks,
) -> Result<BTreeMap<usize, Tensor>> {
    let Some(&lo) = layers.iter().min() else {
        return Err(Error::Invalid("memory queries need at least one layer".into()));
    };
    let mut hooks = ctx.stack_hooks()?;
    hooks.extend(extra);
    if hooks.first_layer().is_some_and(|f| f < lo) {
        let all: Vec<EditSequence> = memory.iter().chain(more).cloned().collect();
        return super::neurons::memory_queries(ctx, &all, layers, extra);
    }
    let model = ctx.model;
    let cached = prefix.chunks(model, memory, lo)?;
    let fresh = chunks(&more.iter().map(|s| residual_at(model, s, lo)).collect::<Result<Vec<_>>>()?)?;
    let batches: Vec<(&Chunk, usize)> =
        cached.iter().map(|c| (c, 0)).chain(fresh.iter().map(|c| (c, memory.len()))).collect();
    let rows = ffn_inputs(model, &batches, memory.len() + more.len(), layers, &hooks)?;
    assemble(rows)
}

/// Rows per layer and sequence: `(s_i, d)` f32, `None` where not computed.
pub(crate) type Rows = BTreeMap<usize, Vec<Option<Tensor>>>;

/// FFN inputs at `layers` of the sequences of `batches` (each batch with the offset of its sequence indices) under
/// `hooks`, running the layers from the lowest of `layers` on the batches' residuals: `total` slots per layer, filled
/// where a batch has the sequence.
pub(crate) fn ffn_inputs(
    model: &dyn VisionLanguageModel,
    batches: &[(&Chunk, usize)],
    total: usize,
    layers: &[usize],
    hooks: &Hooks,
) -> Result<Rows> {
    let (Some(&lo), Some(&hi)) = (layers.iter().min(), layers.iter().max()) else {
        return Err(Error::Invalid("memory queries need at least one layer".into()));
    };
    let mut rows: Rows = layers.iter().map(|&l| (l, vec![None; total])).collect();
    for &(Chunk { x, positions, lens, seqs }, offset) in batches {
        let mut cap = Capture::at_layers(layers.iter().copied(), CapturePoint::FfnInput);
        model.forward_layers(x, positions, lo..hi + 1, None, hooks, &mut cap)?;
        for &l in layers {
            let q =
                cap.get(l, CapturePoint::FfnInput).ok_or_else(|| Error::Invalid(format!("layer {l} not captured")))?;
            let out = rows.get_mut(&l).ok_or_else(|| Error::Invalid(format!("layer {l} not expected")))?;
            for (i, (&n, &seq)) in lens.iter().zip(seqs).enumerate() {
                out[offset + seq] = Some(q.narrow(0, i, 1)?.narrow(1, 0, n)?.squeeze(0)?.to_dtype(DType::F32)?);
            }
        }
    }
    Ok(rows)
}

/// Every layer's rows concatenated in sequence order, `(m, d)`; an error if one is missing.
pub(crate) fn assemble(rows: Rows) -> Result<BTreeMap<usize, Tensor>> {
    rows.into_iter()
        .map(|(l, r)| {
            let r = r
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| Error::Invalid("a memory row is missing".into()))?;
            Ok((l, Tensor::cat(&r, 0)?))
        })
        .collect()
}
