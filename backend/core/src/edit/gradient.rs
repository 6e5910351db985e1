//! The gradient of an edit at the MLP down projections, in the factored form the gradient-based editors read (MEND,
//! Mitchell et al. ICLR 2022, §3.1; KE, De Cao et al. EMNLP 2021): for a linear layer `W (i → d)`, the gradient of the
//! edit loss is `∇W = Σ_t u_t δ_t^T`, with `u_t` the layer's input (the MLP's intermediate activation) and `δ_t` the
//! gradient of the loss with respect to its output at position `t`. The layers below the first edited one run once,
//! without gradients.

use std::sync::Arc;

use candle_core::{DType, Tensor, Var};

use super::EditSequence;
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, FfnHook, Hooks};
use crate::model::{kernels, Inputs, VisionLanguageModel};

/// The factors of one layer's down- and up-projection gradients, at the positions that carry a gradient (MEND's mask:
/// positions whose output gradient is zero, such as the last one, which predicts nothing, are left out).
#[derive(Debug, Clone)]
pub struct LayerGrad {
    pub layer: usize,
    /// Intermediate activations `u` (the down projection's input), `(s, i)`.
    pub u: Tensor,
    /// Output gradients `δ` (of the down projection's output), `(s, d)`.
    pub delta: Tensor,
    /// FFN inputs `q` (the up projection's input), `(s, d)`.
    pub q: Tensor,
    /// Gradients of the up projection's output, `(s, i)`.
    pub delta_up: Tensor,
}

impl LayerGrad {
    /// The full gradient `∇W_down = u^T δ`, `(i, d)`.
    pub fn full(&self) -> Result<Tensor> {
        Ok(self.u.t()?.matmul(&self.delta)?)
    }

    /// The full up-projection gradient `∇W_up = q^T δ_up`, `(d, i)`.
    pub fn full_up(&self) -> Result<Tensor> {
        Ok(self.q.t()?.matmul(&self.delta_up)?)
    }
}

/// An edit's gradients at every edited layer, and its representation (the last layer's output averaged over the
/// positions that predict the answer, `(d)`: what KE conditions on).
#[derive(Debug, Clone)]
pub struct EditGrad {
    pub layers: Vec<LayerGrad>,
    pub condition: Tensor,
}

/// Adds a variable to the FFN output, so that its gradient is the gradient with respect to the FFN output.
#[derive(Debug)]
struct OutputProbe(Tensor);

impl FfnHook for OutputProbe {
    fn ffn_extra(&self, _layer: usize, ffn_input: &Tensor) -> Result<Tensor> {
        Ok(self.0.to_dtype(ffn_input.dtype())?.broadcast_as(ffn_input.shape())?)
    }
}

/// The input of decoder layer `layer` for `seq` under `hooks`, detached (the frozen part of the model): the
/// residual `(1, s, d)` and the sequence's positions.
pub fn layer_input(model: &dyn VisionLanguageModel, seq: &EditSequence, layer: usize, hooks: &Hooks) -> Result<Inputs> {
    let inputs = seq.inputs(model)?;
    let x = model.forward_layers(&inputs.embeds, &inputs.positions, 0..layer, None, hooks, &mut Capture::none())?;
    Ok(Inputs { embeds: x.detach(), positions: inputs.positions })
}

/// The gradient of `seq`'s answer cross-entropy at the down projections of `layers` (ascending), under `hooks`.
pub fn edit_gradient(
    model: &dyn VisionLanguageModel,
    seq: &EditSequence,
    layers: &[usize],
    hooks: &Hooks,
) -> Result<EditGrad> {
    let n = model.num_layers();
    let first = *layers.first().ok_or_else(|| Error::Invalid("no edited layers".into()))?;
    if layers.iter().any(|&l| l >= n) || layers.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::Invalid(format!("edited layers {layers:?} must be ascending and below {n}")));
    }
    let x0 = layer_input(model, seq, first, hooks)?;
    let (_, s, d) = x0.embeds.dims3()?;
    let probes = layers
        .iter()
        .map(|_| Var::zeros((1, s, d), DType::F32, model.device()))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mut with = hooks.clone();
    for (&l, p) in layers.iter().zip(&probes) {
        with.add_ffn(l, Arc::new(OutputProbe(p.as_tensor().clone())));
    }
    let last = n - 1;
    let points = layers.iter().map(|&l| (l, CapturePoint::FfnInput)).chain([(last, CapturePoint::LayerOutput)]);
    let mut cap = Capture::of(points);
    let loss = {
        let _scope = kernels::differentiable();
        let h = model.forward_layers(&x0.embeds, &x0.positions, first..n, None, &with, &mut cap)?;
        let n_t = seq.targets().len();
        let h = model.final_norm(&h.narrow(1, seq.prompt_len - 1, n_t)?)?;
        let logits = model.logits(&h)?.squeeze(0)?;
        let targets = Tensor::new(seq.targets(), model.device())?;
        candle_nn::loss::cross_entropy(&logits, &targets)?
    };
    let grads = loss.backward()?;
    let mut out = Vec::with_capacity(layers.len());
    for (&l, p) in layers.iter().zip(&probes) {
        let delta = grads.get(p.as_tensor()).cloned().unwrap_or(p.as_tensor().zeros_like()?).squeeze(0)?;
        let q = cap.get(l, CapturePoint::FfnInput).ok_or_else(|| Error::Invalid(format!("layer {l} not captured")))?;
        let parts = model.ffn_parts(l)?;
        let q = q.detach().squeeze(0)?.to_dtype(DType::F32)?;
        // u: the down projection's input; δ_up = (δ W_down) ⊙ ∂u/∂(q W_upᵀ) (gated: act(q Gᵀ); plain: act'(pre)).
        let u = parts.intermediate(&q)?.to_dtype(DType::F32)?;
        let g = parts.up_factor(&q)?.to_dtype(DType::F32)?;
        let down = parts.down().to_dtype(DType::F32)?;
        let delta = delta.detach();
        let delta_up = (delta.matmul(&down)? * g)?;
        // MEND's mask: only positions with a gradient.
        let norms = delta.abs()?.sum(1)?.to_vec1::<f32>()?;
        let keep: Vec<u32> = (0..norms.len() as u32).filter(|&t| norms[t as usize] > 0.0).collect();
        let keep = Tensor::new(keep.as_slice(), model.device())?;
        let pick = |t: &Tensor| -> Result<Tensor> { Ok(t.index_select(&keep, 0)?) };
        out.push(LayerGrad { layer: l, u: pick(&u)?, delta: pick(&delta)?, q: pick(&q)?, delta_up: pick(&delta_up)? });
    }
    // The representation of the edit (the probes are zero, so this is the plain output).
    let h = cap.get(last, CapturePoint::LayerOutput).ok_or_else(|| Error::Invalid("output not captured".into()))?;
    let condition =
        h.narrow(1, seq.prompt_len - 1, seq.targets().len())?.squeeze(0)?.mean(0)?.to_dtype(DType::F32)?.detach();
    Ok(EditGrad { layers: out, condition })
}
