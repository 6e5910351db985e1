//! IKE (Zheng et al., EMNLP 2023, "Can We Edit Factual Knowledge by In-Context Learning?"), the in-context baseline of
//! the UniKE paper (Appendix D.2): the edit becomes a demonstration in front of every prompt. A patch holds the
//! demonstration's keys and values at every layer (exactly what prepending it to the prompt gives the attention);
//! several edits sit side by side, each encoded on its own. The base weights are untouched.

use candle_core::DType;
use serde::{Deserialize, Serialize};

use super::{EditContext, EditMethod, EditRequest, EditSequence, Patch, Provenance};
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, ContextKv, Hooks};
use crate::model::Llava;

/// Hyper-parameters (`hparams/ike/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IkeParams {
    /// Show the edit's image in the demonstration (else the question and answer as text only).
    pub with_image: bool,
}

impl Default for IkeParams {
    fn default() -> Self {
        Self { with_image: true }
    }
}

/// Encodes `seq` (prompt, answer, end of sequence) as an in-context prefix under `hooks`: the keys (before rotary
/// embedding) and values every layer's attention would see, `(kv_heads, n, head_dim)`.
pub fn demonstration(model: &Llava, seq: &EditSequence, hooks: &Hooks) -> Result<ContextKv> {
    let n_layers = model.text().num_layers();
    let mut cap = Capture::at_layers(0..n_layers, CapturePoint::LayerInput);
    model.forward_embeds(&seq.embeds(model)?, 0, None, hooks, &mut cap)?;
    let layers = (0..n_layers)
        .map(|l| {
            let x = cap
                .get(l, CapturePoint::LayerInput)
                .ok_or_else(|| Error::Invalid(format!("layer {l} not captured")))?
                .squeeze(0)?;
            let (k, v) = model.text().attention_parts(l)?.keys_values(&x)?;
            Ok((
                k.transpose(0, 1)?.contiguous()?.to_dtype(DType::F32)?,
                v.transpose(0, 1)?.contiguous()?.to_dtype(DType::F32)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ContextKv { layers })
}

/// The method.
pub struct Ike {
    pub params: IkeParams,
    pub eos: u32,
}

impl EditMethod for Ike {
    fn name(&self) -> &str {
        "ike"
    }

    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        let image = if self.params.with_image { request.image.as_ref() } else { None };
        let seq = EditSequence::new(ctx.processor, &request.question, image, &request.target, self.eos)?;
        let mut patch = Patch::new(Provenance::new(self.name(), &self.params, request)?, Default::default());
        patch.contexts.push(std::sync::Arc::new(demonstration(ctx.model, &seq, &ctx.stack.hooks()?)?));
        Ok(patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use candle_core::{Device, Tensor};

    #[test]
    fn a_demonstration_prefix_is_exactly_prepending_it() -> Result<()> {
        let cfg = crate::train::world_config_json(40, 16, 1, 32, 3);
        let model = crate::train::Trainable::new(&cfg, 3, &Device::Cpu)?.model;
        let demo = EditSequence { ids: vec![1, 5, 6, 7, 8, 2], prompt_len: 4, pixels: None };
        let input = [1u32, 9, 10, 11, 12];
        let embed =
            |ids: &[u32]| -> Result<Tensor> { model.text().embed(&Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?) };
        let mut cap = Capture::none();
        let joined: Vec<u32> = demo.ids.iter().chain(&input).copied().collect();
        let whole = model.forward_embeds(&embed(&joined)?, 0, None, &Hooks::none(), &mut cap)?;
        let whole = whole.narrow(1, demo.ids.len(), input.len())?;
        let mut hooks = Hooks::none();
        hooks.add_context(std::sync::Arc::new(demonstration(&model, &demo, &Hooks::none())?));
        let prefixed = model.forward_embeds(&embed(&input)?, 0, None, &hooks, &mut cap)?;
        let diff = (whole - &prefixed)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "prefix and prepending differ by {diff}");
        // Without the prefix the output is different (the test can fail).
        let plain = model.forward_embeds(&embed(&input)?, 0, None, &Hooks::none(), &mut cap)?;
        assert!((plain - prefixed)?.abs()?.max_all()?.to_scalar::<f32>()? > 1e-3);
        Ok(())
    }
}
