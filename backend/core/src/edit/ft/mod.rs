//! FT, the fine-tuning baseline of the UniKE paper (Appendix D.2, "tuning the last layer"): the down projection of
//! the last decoder layer's MLP is tuned on the edit with cross-entropy (as EasyEdit's FT-L tunes `mlp.down_proj`).
//! The change is a patch (`ΔW_down`) applied through an FFN hook; the base weight is never touched. The layers below
//! run once per edit.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use super::patch::down_delta;
use super::{EditContext, EditMethod, EditRequest, EditSequence, Patch, Provenance};
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, DownProjDelta};
use crate::model::kernels;

/// Hyper-parameters (`hparams/ft/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FtParams {
    /// Which layer, counted from the last (0 = the last layer).
    pub layer_from_end: usize,
    /// Optimisation steps at most (stops once the target is the argmax at every position).
    pub steps: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Largest allowed Frobenius norm of `ΔW_down` (0 = unconstrained), as FT-L's norm constraint.
    pub max_norm: f64,
}

impl Default for FtParams {
    fn default() -> Self {
        Self { layer_from_end: 0, steps: 40, lr: 5e-3, max_norm: 0.0 }
    }
}

/// The fine-tuning method.
pub struct FineTune {
    pub params: FtParams,
    pub eos: u32,
}

impl FineTune {
    pub fn new(params: FtParams, eos: u32) -> Self {
        Self { params, eos }
    }
}

impl EditMethod for FineTune {
    fn name(&self) -> &str {
        "ft"
    }

    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        let model = ctx.model;
        let seq =
            EditSequence::new(ctx.processor, &request.question, request.image.as_ref(), &request.target, self.eos)?;
        let n_layers = model.num_layers();
        let layer = n_layers.checked_sub(1 + self.params.layer_from_end).ok_or_else(|| {
            Error::Invalid(format!("layer_from_end {} exceeds the {n_layers} layers", self.params.layer_from_end))
        })?;
        let base = ctx.stack_hooks()?;
        // The frozen part once: the input of the tuned layer.
        let mut cap = Capture::of([(layer, CapturePoint::LayerInput)]);
        let inputs = seq.inputs(model)?;
        model.forward_inputs(&inputs, None, &base, &mut cap)?;
        let x0 = cap
            .get(layer, CapturePoint::LayerInput)
            .ok_or_else(|| Error::Invalid("layer input not captured".into()))?
            .detach();
        let parts = model.ffn_parts(layer)?;
        let delta = Var::zeros((parts.width()?, model.hidden_size()), DType::F32, model.device())?;
        let mut opt = AdamW::new(
            vec![delta.clone()],
            ParamsAdamW { lr: self.params.lr, weight_decay: 0.0, ..Default::default() },
        )?;
        let n_t = seq.targets().len();
        let targets = Tensor::new(seq.targets(), model.device())?;
        for _ in 0..self.params.steps {
            let hook = DownProjDelta { parts: parts.clone(), delta: delta.as_tensor().clone() };
            let mut hooks = base.clone();
            hooks.add_ffn(layer, std::sync::Arc::new(hook));
            let _scope = kernels::differentiable();
            let h =
                model.forward_layers(&x0, &inputs.positions, layer..n_layers, None, &hooks, &mut Capture::none())?;
            let h = model.final_norm(&h.narrow(1, seq.prompt_len - 1, n_t)?)?;
            let logits = model.logits(&h)?.squeeze(0)?;
            if logits.argmax(D::Minus1)?.to_vec1::<u32>()? == seq.targets() {
                break;
            }
            opt.backward_step(&candle_nn::loss::cross_entropy(&logits, &targets)?)?;
            if self.params.max_norm > 0.0 {
                let norm = delta.as_tensor().sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
                if norm > self.params.max_norm {
                    delta.set(&(delta.as_tensor() * (self.params.max_norm / norm))?)?;
                }
            }
        }
        let provenance = Provenance::new(self.name(), &self.params, request)?;
        let mut patch = Patch::new(provenance, BTreeMap::new());
        patch.mlp_deltas.insert(layer, down_delta(model, layer, delta.as_tensor().detach())?);
        Ok(patch)
    }
}
