//! Turning world samples into teacher-forced training batches of the LLaVA model.

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::model::ImageProcessor;
use crate::world::samples::Sample;
use crate::world::tokenizer::{EOS, PAD};

/// Prompt around a question with an image, and without one.
pub const TEMPLATE_IMAGE: &str = "USER: <image>\n{question} ASSISTANT:";
pub const TEMPLATE_TEXT: &str = "USER: {question} ASSISTANT:";

/// A right-padded batch with the positions whose next token is supervised.
#[derive(Debug)]
pub struct Batch {
    /// `(b, s)` u32 token ids (`<image>` runs expanded).
    pub ids: Tensor,
    /// `(n, 3, H, W)` pixel values of the samples that have an image, in sample order.
    pub pixels: Option<Tensor>,
    /// `(m)` u32 indices into the flattened `(b · s)` positions whose logits predict a target.
    pub positions: Tensor,
    /// `(m)` u32 target ids (the answer tokens and `</s>`).
    pub targets: Tensor,
    /// Number of supervised positions of each sample, in order (they sum to `m`).
    pub lengths: Vec<usize>,
}

/// Builds a batch: prompt ids, then answer ids and `</s>`; only the answer and `</s>` are supervised.
pub fn make_batch(
    samples: &[Sample],
    tokenizer: &Tokenizer,
    images: &ImageProcessor,
    image_seq_length: usize,
    device: &Device,
) -> Result<Batch> {
    let mut rows = Vec::with_capacity(samples.len());
    let mut pixels = Vec::new();
    for s in samples {
        let prompt = match &s.image {
            Some(img) => {
                pixels.push(images.preprocess(img, device)?);
                TEMPLATE_IMAGE
                    .replace("{question}", &s.question)
                    .replace("<image>", &"<image>".repeat(image_seq_length))
            }
            None => TEMPLATE_TEXT.replace("{question}", &s.question),
        };
        let p = tokenizer.encode(prompt.as_str(), true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let a = tokenizer.encode(s.answer.as_str(), false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = p.get_ids().to_vec();
        let first_target = ids.len();
        ids.extend_from_slice(a.get_ids());
        ids.push(EOS);
        rows.push((ids, first_target));
    }
    let len = rows.iter().map(|(r, _)| r.len()).max().unwrap_or(0);
    let mut flat = Vec::with_capacity(rows.len() * len);
    let (mut positions, mut targets) = (Vec::new(), Vec::new());
    let lengths = rows.iter().map(|(ids, first)| ids.len() - first).collect();
    for (b, (ids, first)) in rows.iter().enumerate() {
        for (t, &id) in ids.iter().enumerate().skip(*first) {
            positions.push((b * len + t - 1) as u32);
            targets.push(id);
        }
        flat.extend_from_slice(ids);
        flat.extend(std::iter::repeat_n(PAD, len - ids.len()));
    }
    let pixels = if pixels.is_empty() { None } else { Some(Tensor::stack(&pixels, 0)?) };
    Ok(Batch {
        ids: Tensor::from_vec(flat, (rows.len(), len), device)?,
        pixels,
        positions: Tensor::new(positions.as_slice(), device)?,
        targets: Tensor::new(targets.as_slice(), device)?,
        lengths,
    })
}
