//! Demonstrations as an in-context prefix: the keys and values every decoder layer's attention would see if the
//! demonstrations were prepended to the prompt ([`ContextKv`]).
//!
//! Each turn is tokenized on its own, so each opens with the tokenizer's `<s>` and closes with `</s>`, as llava-1.5
//! writes a conversation's turns and as the world model is trained (`bos_per_turn` samples); the query that follows
//! brings its own `<s>`.

use candle_core::{DType, Tensor};

use super::pool::{DemoImage, Demonstration};
use crate::edit::EditSequence;
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, ContextKv, Hooks};
use crate::model::{Llava, Processor};

/// Encodes `seq` (prompt, answer, end of sequence) as an in-context prefix under `hooks`: the keys (before rotary
/// embedding) and values every layer's attention would see, `(kv_heads, n, head_dim)`.
pub fn demonstration(model: &Llava, seq: &EditSequence, hooks: &Hooks) -> Result<ContextKv> {
    prefix_from_embeds(model, &seq.embeds(model)?, hooks)
}

/// The token ids of `demos` in order (each turn its own `<s> … </s>`), and how many images they show.
pub fn prefix_ids(processor: &Processor, demos: &[Demonstration], with_image: bool) -> Result<(Vec<u32>, usize)> {
    let mut ids = Vec::new();
    let mut images = 0;
    for turn in demos.iter().flat_map(|d| [&d.fact, &d.then]) {
        let text = turn.text(with_image);
        let n = usize::from(text.with_image);
        ids.extend(processor.encode(&processor.turn(&text), n)?);
        images += n;
    }
    Ok((ids, images))
}

/// Encodes `demos` (in order) under `hooks` as one prefix; each turn shows its image when `with_image`.
pub fn encode(
    model: &Llava,
    processor: &Processor,
    demos: &[Demonstration],
    with_image: bool,
    hooks: &Hooks,
) -> Result<ContextKv> {
    let (ids, n_images) = prefix_ids(processor, demos, with_image)?;
    let mut pixels = Vec::with_capacity(n_images);
    if with_image {
        for image in demos.iter().flat_map(|d| [&d.fact.image, &d.then.image]).flatten() {
            pixels.push(match image {
                DemoImage::File(path) => processor.image_processor().load_file(path, model.device())?.unsqueeze(0)?,
                DemoImage::Pixels(t) => t.clone(),
            });
        }
    }
    let feats = if pixels.is_empty() { None } else { Some(model.image_features(&Tensor::cat(&pixels, 0)?)?) };
    let input = Tensor::new(ids.as_slice(), model.device())?.unsqueeze(0)?;
    prefix_from_embeds(model, &model.embed_inputs(&input, feats.as_ref())?, hooks)
}

/// The prefix of input embeddings `(1, n, d)` under `hooks`.
pub fn prefix_from_embeds(model: &Llava, embeds: &Tensor, hooks: &Hooks) -> Result<ContextKv> {
    let n_layers = model.text().num_layers();
    let mut cap = Capture::at_layers(0..n_layers, CapturePoint::LayerInput);
    model.forward_embeds(embeds, 0, None, hooks, &mut cap)?;
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
