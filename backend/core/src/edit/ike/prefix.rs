//! Demonstrations as an in-context prefix: the keys and values every decoder layer's attention would see if the
//! demonstrations were prepended to the prompt ([`ContextKv`]).
//!
//! Each turn is tokenized on its own, so each opens with the tokenizer's `<s>` and closes with `</s>`, as llava-1.5
//! writes a conversation's turns and as the world model is trained (`bos_per_turn` samples); the query that follows
//! brings its own `<s>`.

use candle_core::{DType, Tensor};
use std::sync::Arc;

use super::pool::{DemoImage, Demonstration};
use crate::edit::EditSequence;
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, ContextKv, Hooks};
use crate::model::{Inputs, ModelProcessor, Pixels, VisionLanguageModel};

/// Encodes `seq` (prompt, answer, end of sequence) as an in-context prefix under `hooks`: the keys (before rotary
/// embedding) and values every layer's attention would see, `(kv_heads, n, head_dim)`.
pub fn demonstration(model: &dyn VisionLanguageModel, seq: &EditSequence, hooks: &Hooks) -> Result<ContextKv> {
    prefix_from_inputs(model, &seq.inputs(model)?, hooks)
}

/// The token ids of `demos` in order (each turn tokenized on its own, so with its own special tokens), and the
/// images they show in order (loaded onto `device`).
pub fn prefix_ids(
    processor: &dyn ModelProcessor,
    demos: &[Demonstration],
    with_image: bool,
    device: &candle_core::Device,
) -> Result<(Vec<u32>, Option<Pixels>)> {
    let mut ids = Vec::new();
    let mut images = Vec::new();
    for turn in demos.iter().flat_map(|d| [&d.fact, &d.then]) {
        let text = turn.text(with_image);
        let pixels = match (&turn.image, text.with_image) {
            (Some(DemoImage::File(path)), true) => Some(Arc::new(processor.load_image(path, device)?)),
            (Some(DemoImage::Pixels(p)), true) => Some(p.clone()),
            _ => None,
        };
        ids.extend(processor.encode(&processor.turn(&text), pixels.as_deref())?);
        images.extend(pixels);
    }
    let images: Vec<&Pixels> = images.iter().map(|p| p.as_ref()).collect();
    Ok((ids, Pixels::cat(&images)?))
}

/// Encodes `demos` (in order) under `hooks` as one prefix; each turn shows its image when `with_image`.
pub fn encode(
    model: &dyn VisionLanguageModel,
    processor: &dyn ModelProcessor,
    demos: &[Demonstration],
    with_image: bool,
    hooks: &Hooks,
) -> Result<ContextKv> {
    let (ids, pixels) = prefix_ids(processor, demos, with_image, model.device())?;
    let input = Tensor::new(ids.as_slice(), model.device())?.unsqueeze(0)?;
    prefix_from_inputs(model, &model.embed_hooked(&input, pixels.as_ref(), hooks)?, hooks)
}

/// The prefix of `inputs` (one sequence, embeddings `(1, n, d)`) under `hooks`.
pub fn prefix_from_inputs(model: &dyn VisionLanguageModel, inputs: &Inputs, hooks: &Hooks) -> Result<ContextKv> {
    let n_layers = model.num_layers();
    let mut cap = Capture::at_layers(0..n_layers, CapturePoint::LayerInput);
    model.forward_inputs(inputs, None, hooks, &mut cap)?;
    let layers = (0..n_layers)
        .map(|l| {
            let x = cap
                .get(l, CapturePoint::LayerInput)
                .ok_or_else(|| Error::Invalid(format!("layer {l} not captured")))?
                .squeeze(0)?;
            let (k, v) = model.attention_parts(l)?.keys_values(&x)?;
            Ok((
                k.transpose(0, 1)?.contiguous()?.to_dtype(DType::F32)?,
                v.transpose(0, 1)?.contiguous()?.to_dtype(DType::F32)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let positions = match &inputs.positions {
        crate::model::Positions::Mrope { ids, .. } => Some(ids.squeeze(1)?),
        crate::model::Positions::Offset(_) => None,
    };
    Ok(ContextKv { layers, positions })
}
