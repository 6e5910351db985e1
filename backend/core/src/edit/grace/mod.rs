//! GRACE (Hartvigsen et al., NeurIPS 2023, "Aging with GRACE: Lifelong Model Editing with Discrete Key-Value
//! Adaptors") as EasyEdit implements it: a codebook at one decoder layer's FFN output projection ([`codebook`]). An
//! edit's key is the projection's input (the FFN intermediate) at the prompt's last token (after the image tokens);
//! its value replaces the projection's output there and is trained on the edit's cross-entropy (Adam at `edit_lr` for
//! `n_iter` steps, no early stop; a new key's value starts uniform in `[0, 1)`, EasyEdit's `cold` init, seeded); keys
//! carry deferral radii (`eps`), split when two labels meet and grown when the same label comes again (`coverage`).
//! Lifelong by design: the model changes only where an input's key falls inside a radius.
//!
//! Departures from EasyEdit: every position is checked against the codebook (EasyEdit checks one token `t`: at
//! inference the last prompt token, or with a KV cache each new token; with teacher forcing the key position of the
//! last edit, a leftover); labels are compared as target strings (EasyEdit compares the mean of the label tensors, and
//! its label list gets out of step with its keys after two edits).

pub mod codebook;

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use self::codebook::{Codebook, GraceEntry};
use super::{EditContext, EditMethod, EditRequest, EditSequence, Patch, Provenance};
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint};
use crate::model::{kernels, VisionLanguageModel};
use crate::world::rng::Rng;

/// GRACE's hyper-parameters (`hparams/grace/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraceParams {
    /// The decoder layer whose FFN output projection holds the codebook.
    pub layer: usize,
    /// The starting deferral radius of a new key (Euclidean, in the intermediate's units).
    pub eps: f64,
    pub n_iter: usize,
    pub edit_lr: f64,
}

impl Default for GraceParams {
    fn default() -> Self {
        Self { layer: 2, eps: 1.0, n_iter: 20, edit_lr: 1.0 }
    }
}

/// The GRACE editor.
pub struct Grace {
    pub params: GraceParams,
    pub eos: u32,
}

impl Grace {
    pub fn new(params: GraceParams, model: &dyn VisionLanguageModel, eos: u32) -> Result<Self> {
        let n = model.num_layers();
        if params.layer >= n {
            return Err(Error::Invalid(format!("layer {} is outside the model's {n} decoder layers", params.layer)));
        }
        if params.eps.is_nan() || params.eps <= 0.0 {
            return Err(Error::Invalid("eps must be above 0".into()));
        }
        Ok(Self { params, eos })
    }
}

impl EditMethod for Grace {
    fn name(&self) -> &str {
        "grace"
    }

    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        let (model, layer) = (ctx.model, self.params.layer);
        let seq =
            EditSequence::new(ctx.processor, &request.question, request.image.as_ref(), &request.target, self.eos)?;
        let inputs = seq.inputs(model)?;
        // The stack's other hooks, without its GRACE codebooks: this edit's codebook is rebuilt with it below.
        let base = ctx.stack.hooks_without_memories()?.without_routers();
        let parts = model.ffn_parts(layer)?;
        let mut cap = Capture::of([(layer, CapturePoint::FfnInput)]);
        model.forward_inputs(&inputs, None, &base, &mut cap)?;
        let q =
            cap.get(layer, CapturePoint::FfnInput).ok_or_else(|| Error::Invalid("FFN input not captured".into()))?;
        let key =
            parts.intermediate(&q.get(0)?.get(seq.prompt_len - 1)?.unsqueeze(0)?)?.squeeze(0)?.to_dtype(DType::F32)?;
        let key_v = key.to_vec1::<f32>()?;
        let earlier: Vec<&GraceEntry> =
            ctx.stack.iter().filter_map(|(_, p)| p.grace.as_ref()).filter(|e| e.layer == layer).collect();
        let mut book = Codebook::replay(earlier.iter().copied())?;
        let start = match book.joins(&key_v, &request.target, self.params.eps) {
            Some(k) => book.value(k).cloned().ok_or_else(|| Error::Invalid("codebook value missing".into()))?,
            None => {
                let mut rng = Rng::derive(request.seed, "grace", 0);
                let v: Vec<f32> = (0..model.hidden_size()).map(|_| rng.unit()).collect();
                Tensor::from_vec(v, model.hidden_size(), model.device())?
            }
        };
        let at = book.insert(&key_v, start.clone(), &request.target, self.params.eps);
        let value = Var::from_tensor(&start)?;
        let mut opt = AdamW::new(
            vec![value.clone()],
            ParamsAdamW { lr: self.params.edit_lr, weight_decay: 0.0, ..Default::default() },
        )?;
        let n_t = seq.targets().len();
        let targets = Tensor::new(seq.targets(), model.device())?;
        for _ in 0..self.params.n_iter {
            let mut hooks = base.clone();
            hooks.add_ffn(layer, Arc::new(book.hook(&parts, Some((at, value.as_tensor())))?));
            let _scope = kernels::differentiable();
            let h = model.forward_inputs(&inputs, None, &hooks, &mut Capture::none())?;
            let logits = model.logits(&h.narrow(1, seq.prompt_len - 1, n_t)?)?.squeeze(0)?;
            opt.backward_step(&candle_nn::loss::cross_entropy(&logits, &targets)?)?;
        }
        let mut patch = Patch::new(Provenance::new(self.name(), &self.params, request)?, BTreeMap::new());
        patch.grace = Some(GraceEntry {
            layer,
            key,
            value: value.as_tensor().detach(),
            label: request.target.clone(),
            eps: self.params.eps,
            parts,
        });
        Ok(patch)
    }
}

/// The hooks of the GRACE entries of a stack, in stack order: one codebook per layer.
pub fn codebook_hooks<'a>(entries: impl IntoIterator<Item = &'a GraceEntry>) -> Result<crate::hooks::Hooks> {
    let mut by_layer: BTreeMap<usize, Vec<&GraceEntry>> = BTreeMap::new();
    for e in entries {
        by_layer.entry(e.layer).or_default().push(e);
    }
    let mut h = crate::hooks::Hooks::none();
    for (layer, es) in by_layer {
        let book = Codebook::replay(es.iter().copied())?;
        h.add_ffn(layer, Arc::new(book.hook(&es[0].parts, None)?));
    }
    Ok(h)
}
