//! CLIP image preprocessing as transformers' `CLIPImageProcessor` (PIL backend) does it, from
//! `preprocessor_config.json`: convert to RGB, resize (shortest edge, or exact height/width) with PIL's resampling
//! filters, center crop, rescale, normalize. The resize reproduces Pillow's fixed-point two-pass convolution
//! byte for byte, so pixel values match transformers exactly.
//!
//! Any image fits any model: a processor that knows its vision tower's input size ([`ImageProcessor::with_tower`],
//! as every checkpoint's does) whose configured steps would not produce that size (e.g. `do_resize: false` with an
//! image of another size) resizes the shortest edge to the tower's size and center-crops a square instead, with the
//! configured filter, rather than hand the tower pixel values it cannot take. An image the configured steps already
//! bring to the tower's size is processed exactly as configured.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;
use serde_json::Value;

use crate::error::{Error, Result};

/// Resampling filters (PIL numbering: 2 = bilinear, 3 = bicubic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Bilinear,
    Bicubic,
}

impl Resample {
    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Bicubic => {
                // Keys cubic with a = -0.5, as Pillow.
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Target of the resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    /// Shortest edge to this length, aspect ratio kept (the long edge is floored).
    ShortestEdge(usize),
    /// Exactly `(height, width)`.
    Exact(usize, usize),
}

/// The image processor of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    pub resize: Option<ResizeTo>,
    pub resample: Resample,
    /// `(height, width)` of the center crop.
    pub crop: Option<(usize, usize)>,
    pub rescale: Option<f64>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub normalize: bool,
    /// The vision tower's (square) input size, when known: the size every output must have (see the module docs).
    pub tower: Option<usize>,
}

impl ImageProcessor {
    /// Reads `preprocessor_config.json`; missing fields take `CLIPImageProcessor`'s defaults.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text).map_err(|m| Error::config(path, m))
    }

    /// Parses the JSON text of a `preprocessor_config.json`.
    pub fn from_json_str(text: &str) -> std::result::Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let flag = |k: &str| -> std::result::Result<bool, String> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(true),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(format!("{k} must be true or false")),
            }
        };
        let dim = |x: &Value, k: &str| -> std::result::Result<Option<usize>, String> {
            match x.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(n) => n.as_u64().map(|n| Some(n as usize)).ok_or_else(|| format!("{k} must be an integer")),
            }
        };
        let resize = if flag("do_resize")? {
            Some(match v.get("size") {
                None | Some(Value::Null) => ResizeTo::ShortestEdge(224),
                Some(Value::Number(n)) => ResizeTo::ShortestEdge(n.as_u64().ok_or("size must be positive")? as usize),
                Some(s @ Value::Object(_)) => {
                    if dim(s, "longest_edge")?.is_some() {
                        return Err("size.longest_edge is not supported".into());
                    }
                    match (dim(s, "shortest_edge")?, dim(s, "height")?, dim(s, "width")?) {
                        (Some(e), _, _) => ResizeTo::ShortestEdge(e),
                        (None, Some(h), Some(w)) => ResizeTo::Exact(h, w),
                        _ => return Err("size needs shortest_edge, or height and width".into()),
                    }
                }
                Some(_) => return Err("size must be an integer or an object".into()),
            })
        } else {
            None
        };
        let resample = match v.get("resample").and_then(Value::as_u64) {
            None | Some(3) => Resample::Bicubic,
            Some(2) => Resample::Bilinear,
            Some(r) => return Err(format!("resample {r} is not supported (2 = bilinear, 3 = bicubic)")),
        };
        let crop = if flag("do_center_crop")? {
            Some(match v.get("crop_size") {
                None | Some(Value::Null) => (224, 224),
                Some(Value::Number(n)) => {
                    let n = n.as_u64().ok_or("crop_size must be positive")? as usize;
                    (n, n)
                }
                Some(c @ Value::Object(_)) => match (dim(c, "height")?, dim(c, "width")?) {
                    (Some(h), Some(w)) => (h, w),
                    _ => return Err("crop_size needs height and width".into()),
                },
                Some(_) => return Err("crop_size must be an integer or an object".into()),
            })
        } else {
            None
        };
        let rescale = if flag("do_rescale")? {
            Some(v.get("rescale_factor").and_then(Value::as_f64).unwrap_or(1.0 / 255.0))
        } else {
            None
        };
        let triple = |k: &str, default: [f32; 3]| -> std::result::Result<[f32; 3], String> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Array(a)) if a.len() == 3 => {
                    let mut out = [0f32; 3];
                    for (o, x) in out.iter_mut().zip(a) {
                        *o = x.as_f64().ok_or_else(|| format!("{k} must hold numbers"))? as f32;
                    }
                    Ok(out)
                }
                Some(Value::Number(n)) => Ok([n.as_f64().unwrap_or(0.0) as f32; 3]),
                Some(_) => Err(format!("{k} must be a list of 3 numbers")),
            }
        };
        let mean = triple("image_mean", [0.481_454_66, 0.457_827_5, 0.408_210_73])?;
        let std = triple("image_std", [0.268_629_54, 0.261_302_6, 0.275_777_1])?;
        if std.contains(&0.0) {
            return Err("image_std must not contain 0".into());
        }
        Ok(Self { resize, resample, crop, rescale, mean, std, normalize: flag("do_normalize")?, tower: None })
    }

    /// This processor for a vision tower taking `size`x`size` images.
    pub fn with_tower(mut self, size: usize) -> Self {
        self.tower = Some(size);
        self
    }

    /// The resize and crop applied to a `w`x`h` image: the configured ones, unless they would not give the tower's
    /// size; then shortest edge to the tower's size and a center crop of it.
    pub fn geometry(&self, w: usize, h: usize) -> (Option<ResizeTo>, Option<(usize, usize)>) {
        let (rw, rh) = match self.resize {
            None => (w, h),
            Some(ResizeTo::Exact(th, tw)) => (tw, th),
            Some(ResizeTo::ShortestEdge(s)) => shortest_edge(w, h, s),
        };
        let (ow, oh) = self.crop.map_or((rw, rh), |(ch, cw)| (cw, ch));
        match self.tower {
            Some(s) if (ow, oh) != (s, s) => (Some(ResizeTo::ShortestEdge(s)), Some((s, s))),
            _ => (self.resize, self.crop),
        }
    }

    /// Decodes an image file (PNG or JPEG) and preprocesses it: `(3, H, W)` f32.
    pub fn load_file(&self, path: &Path, device: &Device) -> Result<Tensor> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let img = image::load_from_memory(&bytes)
            .map_err(|e| Error::Image { path: path.to_path_buf(), msg: e.to_string() })?;
        self.preprocess(&img.to_rgb8(), device)
    }

    /// Preprocesses an RGB image: `(3, H, W)` f32 pixel values.
    pub fn preprocess(&self, img: &RgbImage, device: &Device) -> Result<Tensor> {
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::Invalid("image has zero size".into()));
        }
        let (w, h) = (w as usize, h as usize);
        let (resize, crop) = self.geometry(w, h);
        let resized = match resize {
            None => img.clone(),
            Some(ResizeTo::Exact(th, tw)) => pil_resize(img, tw, th, self.resample),
            Some(ResizeTo::ShortestEdge(s)) => {
                let (tw, th) = shortest_edge(w, h, s);
                pil_resize(img, tw, th, self.resample)
            }
        };
        let (mut chw, mut h, mut w) = to_chw(&resized);
        if let Some((ch, cw)) = crop {
            chw = center_crop(&chw, h, w, ch, cw);
            (h, w) = (ch, cw);
        }
        let mut out = Vec::with_capacity(chw.len());
        for (i, &px) in chw.iter().enumerate() {
            let c = i / (h * w);
            let mut x = match self.rescale {
                Some(f) => (px as f64 * f) as f32,
                None => px as f32,
            };
            if self.normalize {
                x = (x - self.mean[c]) / self.std[c];
            }
            out.push(x);
        }
        Ok(Tensor::from_vec(out, (3, h, w), device)?)
    }
}

/// transformers' `get_resize_output_image_size` for `{"shortest_edge": s}`: `(width, height)` with the short edge
/// `s` and the long edge scaled and floored.
fn shortest_edge(w: usize, h: usize, s: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (s as f64 * long as f64 / short as f64) as usize;
    if w <= h {
        (s, new_long)
    } else {
        (new_long, s)
    }
}

fn to_chw(img: &RgbImage) -> (Vec<u8>, usize, usize) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let mut out = vec![0u8; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                out[c * h * w + y * w + x] = raw[(y * w + x) * 3 + c];
            }
        }
    }
    (out, h, w)
}

/// transformers' `center_crop`: a `(ch, cw)` window around the center; where the image is smaller than the crop it
/// is zero-padded (image row of crop row `y` is `top + y` with `top = floor((h - ch) / 2)`, as in transformers).
fn center_crop(chw: &[u8], h: usize, w: usize, ch: usize, cw: usize) -> Vec<u8> {
    let top = (h as i64 - ch as i64).div_euclid(2);
    let left = (w as i64 - cw as i64).div_euclid(2);
    let mut out = vec![0u8; 3 * ch * cw];
    for c in 0..3 {
        for y in 0..ch {
            let iy = top + y as i64;
            if iy < 0 || iy >= h as i64 {
                continue;
            }
            for x in 0..cw {
                let ix = left + x as i64;
                if ix >= 0 && ix < w as i64 {
                    out[c * ch * cw + y * cw + x] = chw[c * h * w + iy as usize * w + ix as usize];
                }
            }
        }
    }
    out
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output pixel, the first source index, the number
/// of taps, and fixed-point weights.
fn coeffs(in_size: usize, out_size: usize, filter: Resample) -> (Vec<(usize, usize)>, Vec<i32>, usize) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let ss = 1.0 / filterscale;
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize; // C truncation, then clamp
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(xmax) {
            *wx = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        for x in 0..ksize {
            let v = if x < xmax && ww != 0.0 {
                w[x] / ww
            } else if x < xmax {
                w[x]
            } else {
                0.0
            };
            let fixed = v * (1u32 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if v < 0.0 { (-0.5 + fixed) as i32 } else { (0.5 + fixed) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    (bounds, kk, ksize)
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `Image.resize((w, h), filter)` on an RGB image: two passes, rounding to u8 in between. Pillow 13.0 (the
/// fixtures' transformers outputs were made with it) runs the vertical pass first when the height shrinks by more
/// than twice as many pixels as the width does, otherwise the horizontal one (the rule as measured against Pillow
/// 13.0.0 on 420 random shapes).
pub fn pil_resize(img: &RgbImage, out_w: usize, out_h: usize, filter: Resample) -> RgbImage {
    let (in_w, in_h) = (img.width() as i64, img.height() as i64);
    let (w, h) = (out_w as i64, out_h as i64);
    if h < in_h && in_h - h > 2 * (in_w - w) {
        // Vertical first = horizontal first on the transposed image, transposed back (same sums, same roundings).
        return transpose(&resize_horizontal_first(&transpose(img), out_h, out_w, filter));
    }
    resize_horizontal_first(img, out_w, out_h, filter)
}

fn transpose(img: &RgbImage) -> RgbImage {
    RgbImage::from_fn(img.height(), img.width(), |x, y| *img.get_pixel(y, x))
}

/// Horizontal pass (only the source rows the vertical pass reads), then vertical pass.
fn resize_horizontal_first(img: &RgbImage, out_w: usize, out_h: usize, filter: Resample) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    if (in_w, in_h) == (out_w, out_h) {
        return img.clone();
    }
    let src = img.as_raw();
    let (hb, hk, hks) = coeffs(in_w, out_w, filter);
    let (mut vb, vk, vks) = coeffs(in_h, out_h, filter);
    let half = 1i64 << (PRECISION_BITS - 1);
    // Horizontal pass over rows first..last of the source.
    let (mut cur, mut cw, mut chh) = (src.to_vec(), in_w, in_h);
    if out_w != in_w {
        let first = vb[0].0;
        let last = vb[out_h - 1].0 + vb[out_h - 1].1;
        if out_h != in_h {
            vb.iter_mut().for_each(|b| b.0 -= first);
        }
        let (r0, r1) = if out_h != in_h { (first, last) } else { (0, in_h) };
        let rows = r1 - r0;
        let mut tmp = vec![0u8; rows * out_w * 3];
        for y in 0..rows {
            let row = &src[(y + r0) * in_w * 3..(y + r0 + 1) * in_w * 3];
            for (xx, &(xmin, xmax)) in hb.iter().enumerate() {
                let k = &hk[xx * hks..xx * hks + xmax];
                for c in 0..3 {
                    let mut ss = half;
                    for (x, &kx) in k.iter().enumerate() {
                        ss += row[(x + xmin) * 3 + c] as i64 * kx as i64;
                    }
                    tmp[(y * out_w + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        (cur, cw, chh) = (tmp, out_w, rows);
    }
    if out_h != in_h {
        let mut out = vec![0u8; out_h * cw * 3];
        for (yy, &(ymin, ymax)) in vb.iter().enumerate() {
            let k = &vk[yy * vks..yy * vks + ymax];
            for x in 0..cw {
                for c in 0..3 {
                    let mut ss = half;
                    for (y, &ky) in k.iter().enumerate() {
                        ss += cur[((y + ymin) * cw + x) * 3 + c] as i64 * ky as i64;
                    }
                    out[(yy * cw + x) * 3 + c] = clip8(ss);
                }
            }
        }
        (cur, chh) = (out, out_h);
    }
    debug_assert_eq!(chh, out_h);
    RgbImage::from_raw(cw as u32, chh as u32, cur).expect("buffer size matches dimensions")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_weights_sum_to_one_in_fixed_point() {
        let (bounds, kk, ks) = coeffs(100, 37, Resample::Bicubic);
        for (i, (_, n)) in bounds.iter().enumerate() {
            let s: i64 = kk[i * ks..i * ks + n].iter().map(|&k| k as i64).sum();
            assert!((s - (1 << PRECISION_BITS)).abs() < 8, "row {i}: {s}");
        }
    }

    #[test]
    fn resize_of_a_constant_image_is_constant() {
        let img = RgbImage::from_pixel(40, 25, image::Rgb([10, 200, 77]));
        let out = pil_resize(&img, 13, 31, Resample::Bicubic);
        assert!(out.pixels().all(|p| p.0 == [10, 200, 77]));
    }

    #[test]
    fn center_crop_pads_small_images_with_zeros() {
        // 1 channel of a 3-channel 2x2 image [1,2;3,4], cropped to 4x4: image sits at rows 1..3, cols 1..3.
        let chw: Vec<u8> = [1, 2, 3, 4].repeat(3);
        let out = center_crop(&chw, 2, 2, 4, 4);
        assert_eq!(&out[..16], &[0, 0, 0, 0, 0, 1, 2, 0, 0, 3, 4, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn bad_preprocessor_configs_give_messages() {
        assert!(ImageProcessor::from_json_str(r#"{"resample": 0}"#).unwrap_err().contains("resample"));
        assert!(ImageProcessor::from_json_str(r#"{"image_std": [1, 0, 1]}"#).unwrap_err().contains("image_std"));
        let p = ImageProcessor::from_json_str(r#"{"size": {"shortest_edge": 336}, "crop_size": 336}"#).unwrap();
        assert_eq!(p.resize, Some(ResizeTo::ShortestEdge(336)));
        assert_eq!(p.crop, Some((336, 336)));
    }
}
