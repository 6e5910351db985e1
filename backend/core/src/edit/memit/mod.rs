//! Locate-then-edit: MEMIT (Meng et al., ICLR 2023, "Mass-Editing Memory in a Transformer") and ROME, its one-layer
//! case (Meng et al., NeurIPS 2022, "Locating and Editing Factual Associations in GPT"), as EasyEdit implements them,
//! on the language model of a vision-language model.
//!
//! An FFN's output projection `W (d, i)` is read as a key-value memory: the intermediate `k = u(q)` at a position is
//! the key, `W k` the value written into the residual stream. An edit (1) finds the target state `z` the last edited
//! layer `L` should leave at the edit's lookup position so that the model answers the target ([`target`]), then (2)
//! spreads the residual `z − h_L` over the edited layers, lowest first: layer `l` (the `j`-th of `m`) gets the share
//! `r = (z − h_L) / (m − j)`, with `h_L` and the key `k` recomputed after the layers below changed, and the closed-form
//! least-squares change that writes `r` at `k` while keeping `W k₀` for the keys of ordinary inputs, whose second
//! moment `C = E[k₀ k₀ᵀ]` the [`stats`] hold:
//!
//! ```text
//! MEMIT:  ΔW = r kᵀ (λ C + k kᵀ)⁻¹                 (λ = mom2_update_weight)
//! ROME:   ΔW = r (C⁻¹ k)ᵀ / (kᵀ C⁻¹ k)             (one layer: the change is exact at k, least change under C)
//! ```
//!
//! The patch holds each layer's `ΔW` (as `(i, d)`, a [`crate::hooks::DownProjDelta`]) and the edit's keys (AlphaEdit's
//! preserved-knowledge cache reads the keys of the edits below it). Departures from EasyEdit, for a multimodal model:
//! the lookup position is the prompt's last token (EasyEdit's `fact_token = "last"`; a VQA edit's subject is the
//! image), there are no random context prefixes and no KL term on an "essence" prompt (`kl_factor = 0`).

pub mod linalg;
pub mod stats;
pub mod target;

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use self::linalg::{solve, Mat};
use self::stats::KeyStats;
use self::target::{target_state, TargetParams};
use super::patch::down_delta;
use super::{EditContext, EditMethod, EditRequest, EditSequence, Patch, Provenance};
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, DownProjDelta};
use crate::model::VisionLanguageModel;

/// MEMIT's hyper-parameters (`hparams/memit/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemitParams {
    /// The edited decoder layers (ascending); the last one is where the target state is found.
    pub layers: Vec<usize>,
    /// `λ`: how much the keys of ordinary inputs weigh against the edit's key.
    pub mom2_update_weight: f64,
    pub v_num_grad_steps: usize,
    pub v_lr: f64,
    pub v_weight_decay: f64,
    pub clamp_norm_factor: f64,
}

impl Default for MemitParams {
    fn default() -> Self {
        Self {
            layers: vec![1, 2],
            mom2_update_weight: 15000.0,
            v_num_grad_steps: 25,
            v_lr: 0.5,
            v_weight_decay: 1e-3,
            clamp_norm_factor: 4.0,
        }
    }
}

impl MemitParams {
    pub fn target(&self) -> TargetParams {
        TargetParams {
            steps: self.v_num_grad_steps,
            lr: self.v_lr,
            weight_decay: self.v_weight_decay,
            clamp_norm_factor: self.clamp_norm_factor,
        }
    }
}

/// ROME's hyper-parameters (`hparams/rome/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RomeParams {
    /// The one edited decoder layer.
    pub layer: usize,
    pub v_num_grad_steps: usize,
    pub v_lr: f64,
    pub v_weight_decay: f64,
    pub clamp_norm_factor: f64,
}

impl Default for RomeParams {
    fn default() -> Self {
        Self { layer: 1, v_num_grad_steps: 25, v_lr: 0.5, v_weight_decay: 1e-3, clamp_norm_factor: 4.0 }
    }
}

impl RomeParams {
    pub fn target(&self) -> TargetParams {
        TargetParams {
            steps: self.v_num_grad_steps,
            lr: self.v_lr,
            weight_decay: self.v_weight_decay,
            clamp_norm_factor: self.clamp_norm_factor,
        }
    }
}

/// Checks that `layers` are ascending, distinct, not empty and inside the model.
pub fn check_layers(layers: &[usize], model: &dyn VisionLanguageModel) -> Result<()> {
    let n = model.num_layers();
    if layers.is_empty() {
        return Err(Error::Invalid("layers is empty: name the decoder layers to edit".into()));
    }
    if let Some(&l) = layers.iter().find(|&&l| l >= n) {
        return Err(Error::Invalid(format!("layer {l} is outside the model's {n} decoder layers (0..{n})")));
    }
    if layers.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::Invalid(format!("layers {layers:?} must be ascending and distinct")));
    }
    Ok(())
}

/// One layer's closed-form change: given the edit's keys `K (i, n)` and residuals `R (d, n)` at layer `layer`, the
/// change of the output projection as `(i, d)`.
pub(crate) trait UpdateRule {
    fn update(&self, ctx: &EditContext<'_>, layer: usize, keys: &Mat, resid: &Mat) -> Result<Mat>;
}

/// What a locate-then-edit edit produced: per layer, `ΔW (i, d)` and the edit's keys `(n, i)`.
pub(crate) struct Located {
    pub deltas: BTreeMap<usize, DownProjDelta>,
    pub keys: BTreeMap<usize, Tensor>,
}

/// Steps (1) and (2) of the module header for one request on top of the stack, with `rule` solving each layer.
pub(crate) fn locate_and_edit(
    ctx: &EditContext<'_>,
    request: &EditRequest,
    layers: &[usize],
    target: &TargetParams,
    eos: u32,
    rule: &dyn UpdateRule,
) -> Result<Located> {
    let model = ctx.model;
    check_layers(layers, model)?;
    let seq = EditSequence::new(ctx.processor, &request.question, request.image.as_ref(), &request.target, eos)?;
    let inputs = seq.inputs(model)?;
    let base = ctx.stack_hooks()?;
    let pos = seq.prompt_len - 1;
    let last = *layers.last().ok_or_else(|| Error::Invalid("no layers".into()))?;
    let z = target_state(model, &seq, &inputs, &base, last, pos, target)?;
    let mut out = Located { deltas: BTreeMap::new(), keys: BTreeMap::new() };
    for (j, &layer) in layers.iter().enumerate() {
        let mut hooks = base.clone();
        for (&l, d) in &out.deltas {
            hooks.add_ffn(l, Arc::new(d.clone()));
        }
        let mut cap = Capture::of([(layer, CapturePoint::FfnInput), (last, CapturePoint::LayerOutput)]);
        model.forward_inputs(&inputs, None, &hooks, &mut cap)?;
        let missing = || Error::Invalid(format!("layer {layer} not captured"));
        let q = cap.get(layer, CapturePoint::FfnInput).ok_or_else(missing)?.get(0)?.get(pos)?;
        let parts = model.ffn_parts(layer)?;
        let k = parts.intermediate(&q.unsqueeze(0)?)?.squeeze(0)?.to_dtype(DType::F32)?;
        let h = cap.get(last, CapturePoint::LayerOutput).ok_or_else(missing)?.get(0)?.get(pos)?.to_dtype(DType::F32)?;
        let resid = ((&z - h)? / (layers.len() - j) as f64)?;
        let delta = rule.update(ctx, layer, &Mat::column(&k)?, &Mat::column(&resid)?)?;
        if delta.data.iter().any(|x| !x.is_finite()) {
            return Err(Error::Invalid(format!("the update of layer {layer} is not finite")));
        }
        out.deltas.insert(layer, down_delta(model, layer, delta.to_tensor(model.device())?)?);
        out.keys.insert(layer, k.unsqueeze(0)?);
    }
    Ok(out)
}

/// The patch of a located edit.
pub(crate) fn patch_of(provenance: Provenance, located: Located) -> Patch {
    let mut patch = Patch::new(provenance, BTreeMap::new());
    patch.mlp_deltas = located.deltas;
    patch.keys = located.keys;
    patch
}

/// MEMIT.
pub struct Memit {
    pub params: MemitParams,
    pub stats: Arc<KeyStats>,
    pub eos: u32,
}

impl Memit {
    /// MEMIT with `stats` of the model; the layers must be in the model and the statistics.
    pub fn new(params: MemitParams, stats: Arc<KeyStats>, model: &dyn VisionLanguageModel, eos: u32) -> Result<Self> {
        check_layers(&params.layers, model)?;
        for &l in &params.layers {
            stats.layer(l)?;
        }
        if params.mom2_update_weight.is_nan() || params.mom2_update_weight < 0.0 {
            return Err(Error::Invalid("mom2_update_weight must be at least 0".into()));
        }
        Ok(Self { params, stats, eos })
    }
}

impl UpdateRule for Memit {
    fn update(&self, _ctx: &EditContext<'_>, layer: usize, keys: &Mat, resid: &Mat) -> Result<Mat> {
        let c = &self.stats.layer(layer)?.second_moment;
        let a = c.combine(self.params.mom2_update_weight, &keys.matmul(&keys.transpose())?, 1.0)?;
        // A vanishing ridge: a ReLU neuron that never fired (OPT) leaves a zero row, and it gets no change.
        let a = Mat::identity(c.rows).combine(1e-8 * a.mean_diagonal().max(1e-12), &a, 1.0)?;
        let adj = solve(&a, keys)?; // (i, n)
        adj.matmul(&resid.transpose())
    }
}

impl EditMethod for Memit {
    fn name(&self) -> &str {
        "memit"
    }

    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        let located = locate_and_edit(ctx, request, &self.params.layers, &self.params.target(), self.eos, self)?;
        Ok(patch_of(Provenance::new(self.name(), &self.params, request)?, located))
    }

    fn resident_bytes(&self) -> usize {
        self.stats.resident_bytes()
    }
}

/// ROME.
pub struct Rome {
    pub params: RomeParams,
    pub stats: Arc<KeyStats>,
    pub eos: u32,
}

impl Rome {
    pub fn new(params: RomeParams, stats: Arc<KeyStats>, model: &dyn VisionLanguageModel, eos: u32) -> Result<Self> {
        check_layers(&[params.layer], model)?;
        stats.layer(params.layer)?;
        Ok(Self { params, stats, eos })
    }
}

impl UpdateRule for Rome {
    fn update(&self, _ctx: &EditContext<'_>, layer: usize, keys: &Mat, resid: &Mat) -> Result<Mat> {
        if keys.cols != 1 {
            return Err(Error::Invalid("ROME writes one key at a time".into()));
        }
        let c = &self.stats.layer(layer)?.second_moment;
        // A vanishing ridge keeps C invertible where a key direction never occurred in the statistics.
        let ridge = Mat::identity(c.rows).combine(1e-8 * c.mean_diagonal().max(1e-12), c, 1.0)?;
        let cinv_k = solve(&ridge, keys)?; // (i, 1)
        let denom: f64 = cinv_k.data.iter().zip(&keys.data).map(|(a, b)| a * b).sum();
        if denom.abs() < 1e-20 {
            return Err(Error::Invalid(format!("layer {layer}: the edit's key is zero")));
        }
        let left = Mat { rows: cinv_k.rows, cols: 1, data: cinv_k.data.iter().map(|x| x / denom).collect() };
        left.matmul(&resid.transpose())
    }
}

impl EditMethod for Rome {
    fn name(&self) -> &str {
        "rome"
    }

    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        let located = locate_and_edit(ctx, request, &[self.params.layer], &self.params.target(), self.eos, self)?;
        Ok(patch_of(Provenance::new(self.name(), &self.params, request)?, located))
    }

    fn resident_bytes(&self) -> usize {
        self.stats.resident_bytes()
    }
}
