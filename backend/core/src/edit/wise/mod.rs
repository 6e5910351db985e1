//! WISE (Wang et al., NeurIPS 2024, "WISE: Rethinking the Knowledge Memory for Lifelong Model Editing of Large
//! Language Models") as EasyEdit implements it, in retrieve mode: a side copy of one layer's FFN output projection
//! takes the edits while the main memory (the model's own) stays; a router sends an input to a side memory when its
//! activation score reaches a threshold ([`memory`]).
//!
//! An edit trains its change `δ` of the current shard's side memory `W₀ + Δ` (`Δ` the shard's earlier edits) for at
//! most `n_iter` SGD steps at `edit_lr`: the edit's cross-entropy with the side memory in place, plus WISE's routing
//! margins on the activation scores of the edit (`d_in`) and of an unrelated input (`d_out`: one question of the
//! memory of unrelated inputs, drawn by the edit's seed), `relu(d_out − d_in + γ) + relu(d_out − α) + relu(β − d_in)`;
//! the gradient is masked by the shard's random mask (a `mask_ratio` share of the weights: knowledge sharding), the
//! weight decay acts on the whole side memory, and `W₀ + Δ + δ` is clamped to `W₀ ± norm_constraint`; training stops
//! early once the loss is at most 0.02 and moved by at most 1e-4. The edit's record is its final `d_in`. Every
//! `save_freq` edits a new shard (side memory, with a new mask) starts.
//!
//! Departures from EasyEdit: routing reads the prompt's positions (decided once per input, so that generation with a
//! KV cache answers from one memory; EasyEdit averages over every position it is given, the answer's included when it
//! teacher-forces); the unrelated input comes from the memory of unrelated inputs (EasyEdit's request carries one);
//! no random context prefixes; shards are kept side by side and retrieved, never merged (EasyEdit merges by TIES every
//! `merge_freq` = 1,000 edits); a multimodal BLIP-2 config of EasyEdit edits OPT's `fc1`, this its `fc2`.

pub mod memory;

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use self::memory::{activation_score, WiseEntry};
use super::{EditContext, EditMethod, EditRequest, EditSequence, Patch, Provenance};
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, DownProjDelta, Hooks};
use crate::model::{kernels, FfnParts, VisionLanguageModel};
use crate::world::rng::Rng;

/// WISE's hyper-parameters (`hparams/wise/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WiseParams {
    /// The decoder layer whose FFN output projection has side memories.
    pub layer: usize,
    pub edit_lr: f64,
    pub n_iter: usize,
    /// The share of the side memory's weights a shard trains.
    pub mask_ratio: f64,
    /// `|W' − W₀| ≤ norm_constraint` elementwise.
    pub norm_constraint: f64,
    /// Margins of the routing terms.
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
    /// An input goes to a side memory when its score reaches `act_ratio` × the side memory's smallest edit record.
    pub act_ratio: f64,
    /// Edits per shard.
    pub save_freq: usize,
    pub weight_decay: f64,
}

impl Default for WiseParams {
    fn default() -> Self {
        Self {
            layer: 2,
            edit_lr: 1.0,
            n_iter: 10,
            mask_ratio: 0.2,
            norm_constraint: 1.0,
            alpha: 5.0,
            beta: 20.0,
            gamma: 10.0,
            act_ratio: 0.4,
            save_freq: 500,
            weight_decay: 1e-5,
        }
    }
}

/// The WISE editor.
pub struct Wise {
    pub params: WiseParams,
    /// Unrelated inputs (the memory of unrelated inputs): one per edit is the routing terms' `d_out`.
    memory: Vec<EditSequence>,
    pub eos: u32,
}

impl Wise {
    pub fn new(
        params: WiseParams,
        model: &dyn VisionLanguageModel,
        memory: Vec<EditSequence>,
        eos: u32,
    ) -> Result<Self> {
        let n = model.num_layers();
        if params.layer >= n {
            return Err(Error::Invalid(format!("layer {} is outside the model's {n} decoder layers", params.layer)));
        }
        if !(0.0..=1.0).contains(&params.mask_ratio) || params.save_freq == 0 {
            return Err(Error::Invalid("mask_ratio must be in 0..=1 and save_freq at least 1".into()));
        }
        if memory.is_empty() {
            return Err(Error::Invalid("WISE needs the memory of unrelated inputs (its routing terms' d_out)".into()));
        }
        Ok(Self { params, memory, eos })
    }

    /// The shard's gradient mask `(i, d)`, the same for every edit of the shard.
    fn mask(&self, shard: usize, shape: (usize, usize), device: &candle_core::Device) -> Result<Tensor> {
        let mut rng = Rng::derive(shard as u64, "wise-mask", 0);
        let m: Vec<f32> =
            (0..shape.0 * shape.1).map(|_| f32::from(rng.unit() < self.params.mask_ratio as f32)).collect();
        Ok(Tensor::from_vec(m, shape, device)?)
    }
}

/// The FFN intermediates `(p, i)` f32 of `seq`'s positions at `layer` under `hooks`.
fn intermediates(
    model: &dyn VisionLanguageModel,
    seq: &EditSequence,
    hooks: &Hooks,
    parts: &FfnParts,
    layer: usize,
) -> Result<Tensor> {
    let mut cap = Capture::of([(layer, CapturePoint::FfnInput)]);
    model.forward_inputs(&seq.inputs_hooked(model, hooks)?, None, hooks, &mut cap)?;
    let q = cap.get(layer, CapturePoint::FfnInput).ok_or_else(|| Error::Invalid("FFN input not captured".into()))?;
    Ok(parts.intermediate(&q.squeeze(0)?)?.to_dtype(DType::F32)?)
}

impl EditMethod for Wise {
    fn name(&self) -> &str {
        "wise"
    }

    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        let (model, p, layer) = (ctx.model, &self.params, self.params.layer);
        let seq =
            EditSequence::new(ctx.processor, &request.question, request.image.as_ref(), &request.target, self.eos)?;
        let base = ctx.stack.hooks_without_memories()?.without_routers();
        let parts = model.ffn_parts(layer)?;
        let earlier: Vec<&WiseEntry> =
            ctx.stack.iter().filter_map(|(_, p)| p.wise.as_ref()).filter(|e| e.layer == layer).collect();
        let shard = earlier.len() / p.save_freq;
        let device = model.device();
        let shape = (parts.width()?, model.hidden_size());
        let mut current = Tensor::zeros(shape, DType::F32, device)?;
        for e in earlier.iter().filter(|e| e.shard == shard) {
            current = (current + &e.delta)?;
        }
        let mask = self.mask(shard, shape, device)?;
        let loc = &self.memory[(request.seed as usize) % self.memory.len()];
        let (a_in, a_out) =
            (intermediates(model, &seq, &base, &parts, layer)?, intermediates(model, loc, &base, &parts, layer)?);
        let w0 = parts.down().t()?.to_dtype(DType::F32)?;
        let delta = Var::zeros(shape, DType::F32, device)?;
        let inputs = seq.inputs_hooked(model, &base)?;
        let n_t = seq.targets().len();
        let targets = Tensor::new(seq.targets(), device)?;
        let c = p.norm_constraint;
        let mut prev: Option<f32> = None;
        for _ in 0..p.n_iter {
            let total = (&current + delta.as_tensor())?;
            let mut hooks = base.clone();
            hooks.add_ffn(layer, Arc::new(DownProjDelta { parts: parts.clone(), delta: total.clone() }));
            let _scope = kernels::differentiable();
            let h = model.forward_inputs(&inputs, None, &hooks, &mut Capture::none())?;
            let logits = model.logits(&h.narrow(1, seq.prompt_len - 1, n_t)?)?.squeeze(0)?;
            let ce = candle_nn::loss::cross_entropy(&logits, &targets)?;
            let d_in = activation_score(&parts, &a_in, &total)?;
            let d_out = activation_score(&parts, &a_out, &total)?;
            let act = ((((&d_out - &d_in)? + p.gamma)?.relu()? + (&d_out - p.alpha)?.relu()?)?
                + (p.beta - &d_in)?.relu()?)?;
            let loss = (ce + act)?;
            let l = loss.to_scalar::<f32>()?;
            if !l.is_finite() {
                return Err(Error::Invalid("WISE diverged (the loss is not finite)".into()));
            }
            if prev.is_some_and(|q| q <= 0.02 && (q - l).abs() <= 1e-4) {
                break;
            }
            prev = Some(l);
            let grads = loss.backward()?;
            let g = grads
                .get(delta.as_tensor())
                .ok_or_else(|| Error::Invalid("no gradient for WISE's side memory".into()))?;
            // SGD: the masked gradient, the weight decay on the whole side memory W₀ + Δ + δ.
            let decay = ((&w0 + &total)? * p.weight_decay)?;
            let step = ((g * &mask)? + decay)?;
            let next = (&total - (step * p.edit_lr)?)?.clamp(-c as f32, c as f32)?;
            delta.set(&(next - &current)?)?;
        }
        let total = (&current + delta.as_tensor())?;
        let record = activation_score(&parts, &a_in, &total)?.to_scalar::<f32>()? as f64;
        let mut patch = Patch::new(Provenance::new(self.name(), &self.params, request)?, BTreeMap::new());
        patch.wise = Some(WiseEntry {
            layer,
            delta: delta.as_tensor().detach(),
            shard,
            act: record,
            act_ratio: p.act_ratio,
            parts,
        });
        Ok(patch)
    }
}
