//! The processor of Qwen2-VL (Wang et al., "Qwen2-VL: Enhancing Vision-Language Model's Perception of the World at
//! Any Resolution", 2024) as transformers' `Qwen2VLProcessor` with the PIL image processor works.
//!
//! Text: the prompt (already in the chat format, e.g. from [`Qwen2VlProcessor::user_prompt`]) is tokenized by
//! `tokenizer.json` (byte-level BPE, no BOS), and each `<|image_pad|>` is expanded to `t·h·w / merge²` copies for
//! its image, in order.
//!
//! Images: convert to RGB; [`smart_resize`] picks a size that is a multiple of `patch · merge` within
//! `[min_pixels, max_pixels]`; Pillow-exact bicubic resize ([`pil_resize`]); rescale (`x · 1/255` in f64, then f32);
//! normalize `(x − mean) / std` in f32; then flatten into `[t·h·w, C·T·P·P]` patch rows in merge-window-major order,
//! each row channel-major `(c, t, py, px)` with the frame repeated `temporal_patch_size` times.
//!
//! Settings come from `preprocessor_config.json` (`min_pixels` / `max_pixels`, the hub's spelling), or from the
//! `image_processor` object of `processor_config.json` (transformers 5: `size: {shortest_edge, longest_edge}`).

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;
use serde_json::Value;
use tokenizers::Tokenizer;

use super::preprocess::{pil_resize, Resample};
use super::qwen2vl_config::Qwen2VlConfig;
use crate::error::{Error, Result};

/// The image placeholder token the processor expands.
pub const IMAGE_PAD: &str = "<|image_pad|>";

/// `Qwen2VLImageProcessor` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlImageProcessor {
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub rescale_factor: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// transformers' `smart_resize`: `(h_bar, w_bar)`, multiples of `factor`, close to `(h, w)` in aspect ratio, with
/// `h_bar · w_bar` brought into `[min_pixels, max_pixels]` (rounding ties to even, as Python's `round`).
pub fn smart_resize(h: usize, w: usize, factor: usize, min_pixels: usize, max_pixels: usize) -> Result<(usize, usize)> {
    if h == 0 || w == 0 {
        return Err(Error::Invalid("image has zero size".into()));
    }
    if h.max(w) as f64 / h.min(w) as f64 > 200.0 {
        return Err(Error::Invalid(format!("aspect ratio of a {h}x{w} image exceeds 200")));
    }
    let (hf, wf, f) = (h as f64, w as f64, factor as f64);
    let mut hb = ((hf / f).round_ties_even() * f) as usize;
    let mut wb = ((wf / f).round_ties_even() * f) as usize;
    if hb * wb > max_pixels {
        let beta = (hf * wf / max_pixels as f64).sqrt();
        hb = factor.max(((hf / beta / f).floor() * f) as usize);
        wb = factor.max(((wf / beta / f).floor() * f) as usize);
    } else if hb * wb < min_pixels {
        let beta = (min_pixels as f64 / (hf * wf)).sqrt();
        hb = ((hf * beta / f).ceil() * f) as usize;
        wb = ((wf * beta / f).ceil() * f) as usize;
    }
    Ok((hb, wb))
}

impl Qwen2VlImageProcessor {
    /// Parses the settings object (either spelling); missing fields take `Qwen2VLImageProcessor`'s defaults.
    pub fn from_value(v: &Value) -> std::result::Result<Self, String> {
        let o = v.as_object().ok_or("the image processor settings must be a JSON object")?;
        if let Some(t) = o.get("image_processor_type").and_then(Value::as_str) {
            if !t.starts_with("Qwen2VLImageProcessor") {
                return Err(format!("image_processor_type {t:?} is not Qwen2VLImageProcessor"));
            }
        }
        let num = |k: &str| o.get(k).and_then(Value::as_u64).map(|x| x as usize);
        let size = o.get("size").and_then(Value::as_object);
        let size_num = |k: &str| size.and_then(|s| s.get(k)).and_then(Value::as_u64).map(|x| x as usize);
        let triple = |k: &str, default: [f32; 3]| -> std::result::Result<[f32; 3], String> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Array(a)) if a.len() == 3 => {
                    let mut out = [0f32; 3];
                    for (i, x) in a.iter().enumerate() {
                        out[i] = x.as_f64().ok_or(format!("{k} must hold numbers"))? as f32;
                    }
                    Ok(out)
                }
                Some(_) => Err(format!("{k} must be three numbers")),
            }
        };
        for (k, want) in [("do_resize", true), ("do_rescale", true), ("do_normalize", true)] {
            if o.get(k).and_then(Value::as_bool).is_some_and(|b| b != want) {
                return Err(format!("{k}: {} is not supported on Qwen2-VL yet", !want));
            }
        }
        if o.get("resample").and_then(Value::as_u64).is_some_and(|r| r != 3) {
            return Err("only bicubic resampling (resample 3) is supported on Qwen2-VL yet".into());
        }
        let p = Self {
            min_pixels: num("min_pixels").or(size_num("shortest_edge")).unwrap_or(56 * 56),
            max_pixels: num("max_pixels").or(size_num("longest_edge")).unwrap_or(28 * 28 * 1280),
            patch_size: num("patch_size").unwrap_or(14),
            temporal_patch_size: num("temporal_patch_size").unwrap_or(2),
            merge_size: num("merge_size").unwrap_or(2),
            rescale_factor: o.get("rescale_factor").and_then(Value::as_f64).unwrap_or(1.0 / 255.0),
            mean: triple("image_mean", [0.481_454_66, 0.457_827_5, 0.408_210_73])?,
            std: triple("image_std", [0.268_629_54, 0.261_302_6, 0.275_777_1])?,
        };
        if p.patch_size == 0 || p.merge_size == 0 || p.temporal_patch_size == 0 || p.min_pixels > p.max_pixels {
            return Err(
                "patch_size, merge_size, temporal_patch_size must be positive and min_pixels <= max_pixels".into()
            );
        }
        Ok(p)
    }

    /// Preprocesses an RGB image: pixel values `(t·h·w, 3·T·P·P)` f32 and its patch grid `[t, h, w]`.
    pub fn preprocess(&self, img: &RgbImage, device: &Device) -> Result<(Tensor, [usize; 3])> {
        let (p, m, tp) = (self.patch_size, self.merge_size, self.temporal_patch_size);
        let (w, h) = (img.width() as usize, img.height() as usize);
        let (hb, wb) = smart_resize(h, w, p * m, self.min_pixels, self.max_pixels)?;
        let resized = pil_resize(img, wb, hb, Resample::Bicubic);
        let raw = resized.as_raw();
        // Normalized (c, y, x).
        let mut chw = vec![0f32; 3 * hb * wb];
        for y in 0..hb {
            for x in 0..wb {
                for c in 0..3 {
                    let v = (raw[(y * wb + x) * 3 + c] as f64 * self.rescale_factor) as f32;
                    chw[c * hb * wb + y * wb + x] = (v - self.mean[c]) / self.std[c];
                }
            }
        }
        let (gh, gw) = (hb / p, wb / p);
        let row_len = 3 * tp * p * p;
        let mut out = Vec::with_capacity(gh * gw * row_len);
        for br in 0..gh / m {
            for bc in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let (row, col) = (br * m + mh, bc * m + mw);
                        for c in 0..3 {
                            for _ in 0..tp {
                                for py in 0..p {
                                    let base = c * hb * wb + (row * p + py) * wb + col * p;
                                    out.extend_from_slice(&chw[base..base + p]);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok((Tensor::from_vec(out, (gh * gw, row_len), device)?, [1, gh, gw]))
    }

    /// Decodes an image file (PNG or JPEG) and preprocesses it, as [`Qwen2VlImageProcessor::preprocess`].
    pub fn load_file(&self, path: &Path, device: &Device) -> Result<(Tensor, [usize; 3])> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let img = image::load_from_memory(&bytes)
            .map_err(|e| Error::Image { path: path.to_path_buf(), msg: e.to_string() })?;
        self.preprocess(&img.to_rgb8(), device)
    }
}

/// Tokenizer and image processor of a Qwen2-VL checkpoint.
#[derive(Clone)]
pub struct Qwen2VlProcessor {
    tokenizer: Tokenizer,
    image: Qwen2VlImageProcessor,
    image_token_id: u32,
}

impl std::fmt::Debug for Qwen2VlProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qwen2VlProcessor")
            .field("image_token_id", &self.image_token_id)
            .field("image", &self.image)
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v = serde_json::from_str(&text).map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
    Ok(Some(v))
}

impl Qwen2VlProcessor {
    /// Loads `tokenizer.json` and the image processor settings from `dir`.
    pub fn load(dir: &Path, cfg: &Qwen2VlConfig) -> Result<Self> {
        let tpath = dir.join("tokenizer.json");
        if !tpath.is_file() {
            return Err(Error::checkpoint(dir, "tokenizer.json is missing"));
        }
        let tokenizer = Tokenizer::from_file(&tpath)
            .map_err(|e| Error::Tokenizer(format!("cannot load {}: {e}", tpath.display())))?;
        let pre = dir.join("preprocessor_config.json");
        let proc = dir.join("processor_config.json");
        let (path, settings) = match read_json(&pre)? {
            Some(v) => (pre, v),
            None => match read_json(&proc)?.and_then(|v| v.get("image_processor").cloned()) {
                Some(v) => (proc, v),
                None => {
                    return Err(Error::checkpoint(
                        dir,
                        "no image processor settings (preprocessor_config.json, or image_processor in \
                         processor_config.json)",
                    ))
                }
            },
        };
        let image = Qwen2VlImageProcessor::from_value(&settings).map_err(|m| Error::config(&path, m))?;
        let v = &cfg.vision;
        if (image.patch_size, image.merge_size, image.temporal_patch_size)
            != (v.patch_size, v.spatial_merge_size, v.temporal_patch_size)
        {
            return Err(Error::config(&path, "patch_size / merge_size / temporal_patch_size differ from config.json"));
        }
        Self::new(tokenizer, image, cfg)
    }

    /// Builds a processor from parts; the tokenizer's `<|image_pad|>` must have the config's id.
    pub fn new(tokenizer: Tokenizer, image: Qwen2VlImageProcessor, cfg: &Qwen2VlConfig) -> Result<Self> {
        match tokenizer.token_to_id(IMAGE_PAD) {
            Some(id) if id == cfg.image_token_id => {}
            other => {
                return Err(Error::Tokenizer(format!(
                    "the tokenizer's {IMAGE_PAD} id {other:?} differs from config image_token_id {}",
                    cfg.image_token_id
                )))
            }
        }
        Ok(Self { tokenizer, image, image_token_id: cfg.image_token_id })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The image processor.
    pub fn image_processor(&self) -> &Qwen2VlImageProcessor {
        &self.image
    }

    /// The id of `<|image_pad|>`.
    pub fn image_token_id(&self) -> u32 {
        self.image_token_id
    }

    /// One user turn in the chat format, without the template's default system turn, ending with the assistant's
    /// header: `<|im_start|>user\n[<|vision_start|><|image_pad|><|vision_end|>]text<|im_end|>\n<|im_start|>assistant\n`.
    pub fn user_prompt(text: &str, with_image: bool) -> String {
        let vision = if with_image { "<|vision_start|><|image_pad|><|vision_end|>" } else { "" };
        format!("<|im_start|>user\n{vision}{text}<|im_end|>\n<|im_start|>assistant\n")
    }

    /// The ids of `prompt`, each `<|image_pad|>` expanded to its image's `t·h·w / merge²` tokens (`grids`: one
    /// `[t, h, w]` per `<|image_pad|>`, in order).
    pub fn encode(&self, prompt: &str, grids: &[[usize; 3]]) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(prompt, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let m2 = self.image.merge_size * self.image.merge_size;
        let mut grids_left = grids.iter();
        let mut ids = Vec::with_capacity(enc.get_ids().len());
        for &t in enc.get_ids() {
            if t != self.image_token_id {
                ids.push(t);
                continue;
            }
            let g = grids_left.next().ok_or_else(|| {
                Error::Invalid(format!("the prompt has more {IMAGE_PAD} tokens than images ({})", grids.len()))
            })?;
            ids.extend(std::iter::repeat_n(t, g[0] * g[1] * g[2] / m2));
        }
        if grids_left.next().is_some() {
            return Err(Error::Invalid(format!("{} images but fewer {IMAGE_PAD} tokens in the prompt", grids.len())));
        }
        Ok(ids)
    }

    /// Decodes ids, skipping special tokens (ids past the tokenizer, such as vocabulary padding rows, decode to
    /// nothing).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }
}
