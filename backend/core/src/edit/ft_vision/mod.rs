//! FT on the vision side (MMEdit's "FT (vision)"; VLKEB's `hparams/FT/llava_mmproj.yaml`): the vision-to-language
//! projector is fine-tuned on the edit, every weight and bias of it (LLaVA's `mm_projector`; the same part of the other
//! families: BLIP-2's `language_projection`, Qwen2-VL's merger MLP), by Adam at `lr` for `steps` steps on the
//! target's cross-entropy (answer and end of sequence), without early stopping, as VLKEB's trainer runs it. The change
//! is a patch (a [`ProjectorDelta`] applied through a vision hook); the base weights are never touched. It compares
//! editing the image path with editing the language model (`ft`).
//!
//! Departures from VLKEB: its AdamW's default weight decay (0.01, which shrinks the whole projector by
//! `lr · 0.01` per step: 1e-5 over its 10 steps) is left out, as the patch holds only the change; on BLIP-2 VLKEB tunes
//! the Q-Former, here its output projection.

use candle_core::{DType, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use super::{EditContext, EditMethod, EditRequest, EditSequence, Patch, Provenance};
use crate::error::{Error, Result};
use crate::hooks::Capture;
use crate::model::{kernels, ProjectorDelta};

/// Hyper-parameters (`hparams/ft-vision/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FtVisionParams {
    pub steps: usize,
    pub lr: f64,
}

impl Default for FtVisionParams {
    fn default() -> Self {
        Self { steps: 10, lr: 1e-4 }
    }
}

/// FT on the vision side.
pub struct FtVision {
    pub params: FtVisionParams,
    pub eos: u32,
}

impl EditMethod for FtVision {
    fn name(&self) -> &str {
        "ft-vision"
    }

    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        let model = ctx.model;
        let pixels = request.image.as_ref().ok_or_else(|| {
            Error::Invalid("FT on the vision side edits the image path: the edit needs an image".into())
        })?;
        let seq = EditSequence::new(ctx.processor, &request.question, Some(pixels), &request.target, self.eos)?;
        let base = ctx.stack_hooks()?;
        let x = model.projector_input(pixels)?.detach();
        let parts = model.projector_parts()?;
        // The stack's earlier changes of the image features, fixed while this one trains.
        let mut earlier: Option<Tensor> = None;
        for h in base.vision() {
            let a = h.adapt(&x)?;
            earlier = Some(match earlier {
                Some(e) => (e + a)?,
                None => a,
            });
        }
        let device = model.device();
        let vars = parts
            .shapes()?
            .into_iter()
            .map(|(o, i)| Ok((Var::zeros((o, i), DType::F32, device)?, Var::zeros(o, DType::F32, device)?)))
            .collect::<Result<Vec<_>>>()?;
        let all: Vec<Var> = vars.iter().flat_map(|(w, b)| [w.clone(), b.clone()]).collect();
        let mut opt = AdamW::new(all, ParamsAdamW { lr: self.params.lr, weight_decay: 0.0, ..Default::default() })?;
        let ids = Tensor::new(seq.ids.as_slice(), device)?.unsqueeze(0)?;
        let n_t = seq.targets().len();
        let targets = Tensor::new(seq.targets(), device)?;
        let deltas = |vars: &[(Var, Var)]| -> Vec<(Tensor, Tensor)> {
            vars.iter().map(|(w, b)| (w.as_tensor().clone(), b.as_tensor().clone())).collect()
        };
        for _ in 0..self.params.steps {
            let _scope = kernels::differentiable();
            let mut feats = parts.forward_with(&x, Some(&deltas(&vars)))?;
            if let Some(e) = &earlier {
                let e = e.to_dtype(feats.dtype())?;
                feats = (feats + e)?;
            }
            let inputs = model.embed_projected(&ids, Some(&feats), Some(pixels))?;
            let h = model.forward_inputs(&inputs, None, &base, &mut Capture::none())?;
            let logits = model.logits(&h.narrow(1, seq.prompt_len - 1, n_t)?)?.squeeze(0)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
            if !loss.to_scalar::<f32>()?.is_finite() {
                return Err(Error::Invalid("FT on the vision side diverged (the loss is not finite)".into()));
            }
            opt.backward_step(&loss)?;
        }
        let trained = vars.iter().map(|(w, b)| (w.as_tensor().detach(), b.as_tensor().detach())).collect();
        let mut patch = Patch::new(Provenance::new(self.name(), &self.params, request)?, Default::default());
        patch.vision = Some(ProjectorDelta::new(parts, trained)?);
        Ok(patch)
    }
}
