//! The target hidden state of a locate-then-edit method (ROME's `compute_v`, MEMIT's and AlphaEdit's `compute_z`): a
//! vector `δ` added to the residual stream leaving layer `L` at the edit's lookup position (the last prompt token,
//! EasyEdit's `fact_token = "last"`) is optimised so that the model, run on from there, answers the target; the
//! target state is `z = h_L + δ`. Loss: the target tokens' cross-entropy (answer and end of sequence) plus
//! `weight_decay · |δ|² / |h_L|²`; `|δ|` is clamped to `clamp_norm_factor · |h_L|`; Adam at `lr`, stopping once the
//! loss is below 0.05 (as the reference code).

use std::sync::Arc;

use candle_core::{DType, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use crate::edit::EditSequence;
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, FfnHook, Hooks};
use crate::model::{kernels, Inputs, VisionLanguageModel};

/// How the target state is optimised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TargetParams {
    /// Adam steps at most (`v_num_grad_steps`).
    pub steps: usize,
    /// Adam learning rate (`v_lr`).
    pub lr: f64,
    /// Weight of `|δ|² / |h_L|²` (`v_weight_decay`).
    pub weight_decay: f64,
    /// `|δ| ≤ clamp_norm_factor · |h_L|`.
    pub clamp_norm_factor: f64,
}

/// Adds `delta (d)` to the FFN output (so to the layer's output) at one position of a full sequence; the
/// optimisation's probe, never part of a patch.
#[derive(Debug)]
pub(crate) struct PositionShift {
    pub pos: usize,
    pub delta: Tensor,
}

impl FfnHook for PositionShift {
    fn ffn_extra(&self, _layer: usize, ffn_input: &Tensor) -> Result<Tensor> {
        let (_, s, d) = ffn_input.dims3()?;
        if self.pos >= s {
            return Err(Error::Invalid(format!("lookup position {} outside a sequence of {s}", self.pos)));
        }
        let mut mask = vec![0f32; s];
        mask[self.pos] = 1.0;
        let mask = Tensor::from_vec(mask, (1, s, 1), ffn_input.device())?;
        let delta = self.delta.reshape((1, 1, d))?;
        Ok(mask.broadcast_mul(&delta)?.to_dtype(ffn_input.dtype())?)
    }
}

/// The target state `z (d)` f32 of `seq` at layer `layer`'s output and position `pos`, on top of `base`.
pub fn target_state(
    model: &dyn VisionLanguageModel,
    seq: &EditSequence,
    inputs: &Inputs,
    base: &Hooks,
    layer: usize,
    pos: usize,
    p: &TargetParams,
) -> Result<Tensor> {
    let n_layers = model.num_layers();
    let mut cap = Capture::of([(layer, CapturePoint::LayerInput), (layer, CapturePoint::LayerOutput)]);
    model.forward_inputs(inputs, None, base, &mut cap)?;
    let missing = || Error::Invalid(format!("layer {layer} not captured"));
    let x0 = cap.get(layer, CapturePoint::LayerInput).ok_or_else(missing)?.detach();
    let h = cap.get(layer, CapturePoint::LayerOutput).ok_or_else(missing)?.get(0)?.get(pos)?.to_dtype(DType::F32)?;
    let h_norm2 = h.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    let max_norm = p.clamp_norm_factor * h_norm2.sqrt();
    let delta = Var::zeros(model.hidden_size(), DType::F32, model.device())?;
    let mut opt = AdamW::new(vec![delta.clone()], ParamsAdamW { lr: p.lr, weight_decay: 0.0, ..Default::default() })?;
    let n_t = seq.targets().len();
    let targets = Tensor::new(seq.targets(), model.device())?;
    for _ in 0..p.steps {
        let mut hooks = base.clone();
        hooks.add_ffn(layer, Arc::new(PositionShift { pos, delta: delta.as_tensor().clone() }));
        let _scope = kernels::differentiable();
        let out = model.forward_layers(&x0, &inputs.positions, layer..n_layers, None, &hooks, &mut Capture::none())?;
        let out = model.final_norm(&out.narrow(1, seq.prompt_len - 1, n_t)?)?;
        let logits = model.logits(&out)?.squeeze(0)?;
        let nll = candle_nn::loss::cross_entropy(&logits, &targets)?;
        let decay = (delta.as_tensor().sqr()?.sum_all()? * (p.weight_decay / h_norm2.max(1e-12)))?;
        let loss = (nll + decay)?;
        if loss.to_scalar::<f32>()? < 5e-2 {
            break;
        }
        opt.backward_step(&loss)?;
        let norm = delta.as_tensor().sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
        if norm > max_norm {
            delta.set(&(delta.as_tensor() * (max_norm / norm))?)?;
        }
    }
    Ok((h + delta.as_tensor().detach())?)
}
