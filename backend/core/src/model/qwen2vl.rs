//! Qwen2-VL (Wang et al., "Qwen2-VL: Enhancing Vision-Language Model's Perception of the World at Any Resolution",
//! 2024), as transformers' `Qwen2VLForConditionalGeneration` runs it: the vision transformer and patch merger
//! ([`Qwen2Vision`]) turn each image (any resolution, `[t, h, w]` patch grid) into `t·h·w / merge²` embeddings that
//! replace the `<|image_pad|>` token embeddings in order; the Qwen2 decoder ([`Qwen2`]) runs with M-RoPE positions
//! from [`Qwen2Vl::rope_index`] (transformers' `get_rope_index` for text and images).
//!
//! Weight names mirror the published checkpoints (Qwen/Qwen2-VL-*-Instruct; transformers 5's `save_pretrained`
//! writes the same): `visual.*`, `model.*`, `lm_head.*`; transformers 5's in-memory names
//! (`model.visual.*`, `model.language_model.*`) are read too ([`Qwen2VlNames`]).
//!
//! The public shape mirrors [`super::blip2::Blip2`]: `image_features` → `embed_inputs` → `forward_embeds` (hooks and
//! captures act in the decoder, see [`super::qwen2`]) → `logits`; `forward` chains them; greedy decoding is in
//! [`super::generate_qwen2vl`]. Unlike BLIP-2, positions are not a start offset but a `(3, b, s)` tensor, and left
//! padding is supported (a key mask hides the pads; pad positions are 0, as in transformers 5).

use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::cache::KvCache;
use super::ffn::FfnParts;
use super::merge::merge_image_rows;
use super::qwen2::Qwen2;
use super::qwen2vl_config::Qwen2VlConfig;
use super::qwen2vl_vision::Qwen2Vision;
use super::vlm::{decoder_delegation, Family, Inputs, Pixels, Positions, VisionLanguageModel};
use crate::error::{Error, Result};
use crate::hooks::{Capture, Hooks};

/// Where each part of Qwen2-VL sits in a checkpoint's tensor names (prefixes without the trailing dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qwen2VlNames {
    pub visual: &'static str,
    pub decoder: &'static str,
    pub lm_head: &'static str,
}

impl Qwen2VlNames {
    /// The published layout: `visual`, `model`, `lm_head`.
    pub const PUBLISHED: Self = Self { visual: "visual", decoder: "model", lm_head: "lm_head" };
    /// transformers 5's module names: `model.visual`, `model.language_model`, `lm_head`.
    pub const TRANSFORMERS5: Self =
        Self { visual: "model.visual", decoder: "model.language_model", lm_head: "lm_head" };
}

/// M-RoPE positions of a prompt batch: `positions (3, b, s)` u32 and, per row, `rope_delta` (max position + 1 −
/// unpadded length), which decoding adds to the cache length.
#[derive(Debug, Clone)]
pub struct RopeIndex {
    pub positions: Tensor,
    pub deltas: Vec<i64>,
}

/// The Qwen2-VL vision-language model.
#[derive(Debug, Clone)]
pub struct Qwen2Vl {
    vision: Qwen2Vision,
    text: Qwen2,
    cfg: Qwen2VlConfig,
    dtype: DType,
    device: Device,
}

impl Qwen2Vl {
    /// Loads every part from `vb` (the checkpoint root), named as `names` says.
    pub fn load(vb: VarBuilder, cfg: &Qwen2VlConfig, names: &Qwen2VlNames) -> Result<Self> {
        let vision = Qwen2Vision::load(vb.pp(names.visual), &cfg.vision)?;
        let text = Qwen2::load(vb.pp(names.decoder), vb.pp(names.lm_head), &cfg.text)?;
        if cfg.vision.hidden_size != cfg.text.hidden_size {
            return Err(Error::Invalid(format!(
                "the merger outputs {} wide embeddings but the decoder is {} wide",
                cfg.vision.hidden_size, cfg.text.hidden_size
            )));
        }
        Ok(Self { vision, text, cfg: cfg.clone(), dtype: vb.dtype(), device: vb.device().clone() })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &Qwen2VlConfig {
        &self.cfg
    }

    /// The decoder (for layer-range forwards and hooks).
    pub fn text(&self) -> &Qwen2 {
        &self.text
    }

    /// The vision transformer and merger.
    pub fn vision(&self) -> &Qwen2Vision {
        &self.vision
    }

    /// The dtype the weights run in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The last vision block's output: `pixel_values (n_patches, patch_dim)`, one `[t, h, w]` grid per image →
    /// `(n_patches, embed_dim)`.
    pub fn vision_features(&self, pixel_values: &Tensor, grid_thw: &[[usize; 3]]) -> Result<Tensor> {
        self.vision.encode(pixel_values, grid_thw)
    }

    /// Merged image embeddings, what replaces the `<|image_pad|>` embeddings: `(n_patches, patch_dim)` →
    /// `(n_patches / merge², d_text)`.
    pub fn image_features(&self, pixel_values: &Tensor, grid_thw: &[[usize; 3]]) -> Result<Tensor> {
        self.vision.forward(pixel_values, grid_thw)
    }

    /// Input embeddings: `ids (b, s)` with the `<|image_pad|>` positions replaced, in reading order, by the rows of
    /// `image_features (n, d)`; their counts must agree. Returns `(b, s, d)`.
    pub fn embed_inputs(&self, ids: &Tensor, image_features: Option<&Tensor>) -> Result<Tensor> {
        merge_image_rows(
            ids,
            self.cfg.image_token_id,
            self.cfg.text.vocab_size as u32,
            image_features,
            (self.dtype, &self.device),
            |t| self.text.embed(t),
            |n, f| format!("the input has {n} image tokens but the images give {f} embeddings"),
        )
    }

    /// transformers' `get_rope_index` for text and images: `ids` rows (left padding allowed, `attention_mask` rows
    /// 1 for real tokens), `grid_thw` the images in reading order over the batch. Text takes consecutive positions
    /// (equal rows); an image run starting at `p` takes `t = p + ti`, `h = p + i`, `w = p + j` over its merged
    /// grid, and the text after it continues at the run's largest position + 1. Pads take position 0.
    pub fn rope_index(
        &self,
        ids: &[Vec<u32>],
        attention_mask: Option<&[Vec<u32>]>,
        grid_thw: &[[usize; 3]],
    ) -> Result<RopeIndex> {
        let b = ids.len();
        let s = ids.first().map(Vec::len).unwrap_or(0);
        let m = self.cfg.vision.spatial_merge_size;
        let mut pos = vec![vec![vec![0u32; s]; b]; 3];
        let mut deltas = Vec::with_capacity(b);
        let mut images = grid_thw.iter();
        for (r, row) in ids.iter().enumerate() {
            if row.len() != s {
                return Err(Error::Invalid("rope_index: rows of different lengths".into()));
            }
            let real: Vec<usize> = match attention_mask {
                Some(mask) => {
                    let mr = mask.get(r).filter(|mr| mr.len() == s).ok_or_else(|| {
                        Error::Invalid("rope_index: the attention mask does not match the ids".into())
                    })?;
                    (0..s).filter(|&i| mr[i] != 0).collect()
                }
                None => (0..s).collect(),
            };
            let (mut next, mut k) = (0usize, 0usize);
            while k < real.len() {
                if row[real[k]] != self.cfg.image_token_id {
                    for p in pos.iter_mut() {
                        p[r][real[k]] = next as u32;
                    }
                    next += 1;
                    k += 1;
                    continue;
                }
                let g = images
                    .next()
                    .ok_or_else(|| Error::Invalid("rope_index: more image runs in the ids than image grids".into()))?;
                let (gt, gh, gw) = (g[0], g[1] / m, g[2] / m);
                if k + gt * gh * gw > real.len() {
                    return Err(Error::Invalid(format!("rope_index: an image run is shorter than its grid {g:?}")));
                }
                for ti in 0..gt {
                    for i in 0..gh {
                        for j in 0..gw {
                            let at = real[k];
                            if row[at] != self.cfg.image_token_id {
                                return Err(Error::Invalid(format!(
                                    "rope_index: an image run is shorter than its grid {g:?}"
                                )));
                            }
                            pos[0][r][at] = (next + ti) as u32;
                            pos[1][r][at] = (next + i) as u32;
                            pos[2][r][at] = (next + j) as u32;
                            k += 1;
                        }
                    }
                }
                next += gt.max(gh).max(gw);
            }
            deltas.push(next as i64 - real.len() as i64);
        }
        if images.next().is_some() {
            return Err(Error::Invalid("rope_index: more image grids than image runs in the ids".into()));
        }
        let flat: Vec<u32> = pos.into_iter().flatten().flatten().collect();
        Ok(RopeIndex { positions: Tensor::from_vec(flat, (3, b, s), &self.device)?, deltas })
    }

    /// Positions of `s` decoding steps after `cache_len` cached ones: `cache_len + i + delta` in all three rows,
    /// `(3, b, s)` u32, one delta per row.
    pub fn decode_positions(&self, cache_len: usize, s: usize, deltas: &[i64]) -> Result<Tensor> {
        let mut v = Vec::with_capacity(3 * deltas.len() * s);
        for _ in 0..3 {
            for d in deltas {
                for i in 0..s {
                    let p = (cache_len + i) as i64 + d;
                    v.push(u32::try_from(p).map_err(|_| Error::Invalid(format!("negative position {p}")))?);
                }
            }
        }
        Ok(Tensor::from_vec(v, (3, deltas.len(), s), &self.device)?)
    }

    /// Runs every decoder layer and the final RMSNorm on `embeds (b, s, d)` (from [`Qwen2Vl::embed_inputs`]) at
    /// M-RoPE `positions (3, b, s)`, after the cached ones. `key_mask (b, cached + s)`: 1 for real tokens, 0 for
    /// left padding (`None`: nothing padded). Returns the normed last hidden states `(b, s, d)`;
    /// [`crate::hooks::CapturePoint::LayerInput`] of layer 0 is the input embeddings (transformers'
    /// `hidden_states[0]`).
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        key_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        hooks: &Hooks,
        capture: &mut Capture,
    ) -> Result<Tensor> {
        let n = self.text.num_layers();
        let h = self.text.forward_layers(embeds, positions, key_mask, 0..n, cache, hooks, capture)?;
        self.text.final_norm(&h)
    }

    /// Vocabulary logits, `(b, s, d)` → `(b, s, vocab)` f32.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.text.lm_head(hidden)
    }

    /// Teacher-forced forward of a batch: `ids (b, s)` (left padding marked by `attention_mask (b, s)`), optional
    /// `pixel_values (n_patches, patch_dim)` with one grid per image, filling the `<|image_pad|>` runs in reading
    /// order. Returns logits `(b, s, vocab)` f32.
    pub fn forward(
        &self,
        ids: &Tensor,
        attention_mask: Option<&Tensor>,
        pixel_values: Option<(&Tensor, &[[usize; 3]])>,
        hooks: &Hooks,
    ) -> Result<Tensor> {
        let feats = pixel_values.map(|(p, g)| self.image_features(p, g)).transpose()?;
        let embeds = self.embed_inputs(ids, feats.as_ref())?;
        let rows = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let mask = attention_mask.map(|m| m.to_dtype(DType::U32)?.to_vec2::<u32>()).transpose()?;
        let grids = pixel_values.map(|(_, g)| g).unwrap_or(&[]);
        let index = self.rope_index(&rows, mask.as_deref(), grids)?;
        let h = self.forward_embeds(&embeds, &index.positions, attention_mask, None, hooks, &mut Capture::none())?;
        self.logits(&h)
    }
}

impl VisionLanguageModel for Qwen2Vl {
    fn family(&self) -> Family {
        Family::Qwen2Vl
    }
    decoder_delegation!();
    fn image_token_id(&self) -> u32 {
        self.cfg.image_token_id
    }
    fn image_features(&self, pixels: &Pixels) -> Result<Tensor> {
        let grids = pixels.grids.as_deref().ok_or_else(|| Error::Invalid("Qwen2-VL images need their grids".into()))?;
        Qwen2Vl::image_features(self, &pixels.values, grids)
    }
    /// Positions as transformers' `get_rope_index` (right-padded rows: the padding continues each row's text).
    fn embed(&self, ids: &Tensor, pixels: Option<&Pixels>) -> Result<Inputs> {
        let feats = pixels.map(|p| VisionLanguageModel::image_features(self, p)).transpose()?;
        self.embed_projected(ids, feats.as_ref(), pixels)
    }
    fn projector_input(&self, pixels: &Pixels) -> Result<Tensor> {
        let grids = pixels.grids.as_deref().ok_or_else(|| Error::Invalid("Qwen2-VL images need their grids".into()))?;
        self.vision.merge_input(&self.vision.encode(&pixels.values, grids)?)
    }
    fn projector_parts(&self) -> Result<super::ProjectorParts> {
        Ok(self.vision.merger_parts())
    }
    fn embed_projected(&self, ids: &Tensor, features: Option<&Tensor>, pixels: Option<&Pixels>) -> Result<Inputs> {
        let embeds = self.embed_inputs(ids, features)?;
        let rows = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let grids = pixels.and_then(|p| p.grids.as_deref()).unwrap_or(&[]);
        let index = self.rope_index(&rows, None, grids)?;
        Ok(Inputs { embeds, positions: Positions::Mrope { ids: index.positions, deltas: index.deltas } })
    }
    fn embed_next(&self, ids: &Tensor, prompt: &Positions, cache_len: usize) -> Result<Inputs> {
        let Positions::Mrope { deltas, .. } = prompt else {
            return Err(Error::Invalid("Qwen2-VL decodes after multimodal rotary positions".into()));
        };
        let s = ids.dim(1)?;
        let positions = Positions::Mrope { ids: self.decode_positions(cache_len, s, deltas)?, deltas: deltas.clone() };
        Ok(Inputs { embeds: self.text.embed(ids)?, positions })
    }
    fn forward_layers(
        &self,
        x: &Tensor,
        positions: &Positions,
        layers: Range<usize>,
        cache: Option<&mut KvCache>,
        hooks: &Hooks,
        capture: &mut Capture,
    ) -> Result<Tensor> {
        self.text.forward_layers(x, mrope(positions)?, None, layers, cache, hooks, capture)
    }
    fn forward_from_ffn(
        &self,
        x: &Tensor,
        positions: &Positions,
        layer: usize,
        hooks: &Hooks,
        capture: &mut Capture,
    ) -> Result<Tensor> {
        self.text.forward_from_ffn(x, mrope(positions)?, layer, hooks, capture)
    }
    fn ffn_parts(&self, layer: usize) -> Result<FfnParts> {
        let (gate, up, act) = self.text.mlp_gate_up(layer)?;
        Ok(FfnParts::Gated { gate, up, down: self.text.mlp_down(layer)?, act })
    }
}

/// The `(3, b, s)` ids of multimodal rotary positions.
fn mrope(positions: &Positions) -> Result<&Tensor> {
    match positions {
        Positions::Mrope { ids, .. } => Ok(ids),
        Positions::Offset(_) => Err(Error::Invalid("Qwen2-VL takes multimodal rotary positions".into())),
    }
}
