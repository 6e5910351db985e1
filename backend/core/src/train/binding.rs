//! The binding term of `train-base` (a pilot of issue 14): demonstrations are told apart by their images only if the
//! text after each image carries it, early enough for later layers to compare. At the output of one decoder layer,
//! every text position after an image predicts, through a linear read-out (trained alongside, not part of the
//! checkpoint), the mean projected features of the latest image before it, centred over the batch's images; the loss
//! is one minus the cosine.

use candle_core::{DType, Device, Tensor, Var};

use crate::error::Result;
use crate::world::tokenizer::{IMAGE, PAD};

/// The read-out `(d, d)` and where it reads.
pub struct Binding {
    pub layer: usize,
    pub weight: f32,
    pub head: Var,
}

impl Binding {
    pub fn new(layer: usize, weight: f32, d: usize, seed: u64, device: &Device) -> Result<Self> {
        Ok(Self { layer, weight, head: read_out(seed, "binding", d, d, device)? })
    }
}

/// A discarded linear read-out `(d, k)` of an auxiliary term: normal entries scaled by `1/√d`, drawn from the random
/// stream `name` of `seed`.
pub(crate) fn read_out(seed: u64, name: &str, d: usize, k: usize, device: &Device) -> Result<Var> {
    let mut rng = crate::world::rng::Rng::derive(seed, name, 0);
    let scale = 1.0 / (d as f32).sqrt();
    let v: Vec<f32> = (0..d * k).map(|_| rng.normal() * scale).collect();
    Ok(Var::from_tensor(&Tensor::from_vec(v, (d, k), device)?)?)
}

/// Flat positions `(b · s)` of text tokens that follow an image in their row, and the index (over the batch's images
/// in reading order) of the latest image before each.
pub fn positions(ids: &Tensor) -> Result<(Vec<u32>, Vec<u32>)> {
    let rows = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    let s = rows.first().map_or(0, Vec::len);
    let (mut pos, mut img) = (Vec::new(), Vec::new());
    let mut seen = 0u32; // images started so far in the batch
    for (r, row) in rows.iter().enumerate() {
        let mut latest: Option<u32> = None;
        let mut prev_image = false;
        for (c, &t) in row.iter().enumerate() {
            if t == IMAGE {
                if !prev_image {
                    latest = Some(seen);
                    seen += 1;
                }
                prev_image = true;
                continue;
            }
            prev_image = false;
            if t == PAD {
                continue;
            }
            if let Some(i) = latest {
                pos.push((r * s + c) as u32);
                img.push(i);
            }
        }
    }
    Ok((pos, img))
}

/// The term: `h (b, s, d)` at the binding layer, `image (n, t, d)` the projected image features of the batch.
pub fn loss(binding: &Binding, ids: &Tensor, h: &Tensor, image: &Tensor) -> Result<Option<Tensor>> {
    let (pos, img) = positions(ids)?;
    if pos.is_empty() {
        return Ok(None);
    }
    let (b, s, d) = h.dims3()?;
    let dev = h.device();
    let m = pos.len();
    let picked = h.reshape((b * s, d))?.index_select(&Tensor::from_vec(pos, m, dev)?, 0)?;
    let pred = picked.matmul(binding.head.as_tensor())?;
    // Centred over the batch's images: what tells this image apart from the others, not what all images share
    // (uncentred, a constant prediction already scores a cosine near 1).
    let means = image.mean(1)?.detach();
    let centred = means.broadcast_sub(&means.mean_keepdim(0)?)?;
    let target = centred.index_select(&Tensor::from_vec(img, m, dev)?, 0)?;
    let dot = (&pred * &target)?.sum(1)?;
    let norms = (pred.sqr()?.sum(1)?.sqrt()? * target.sqr()?.sum(1)?.sqrt()?)?;
    let cos = (dot / (norms + 1e-6)?)?;
    Ok(Some(((1.0 - cos)?.mean_all()? * binding.weight as f64)?))
}
