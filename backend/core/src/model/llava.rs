//! LLaVA-1.5 (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023): a CLIP ViT, a two-layer GELU
//! projector, and a LLaMA decoder whose `<image>` token positions take the projected vision features.
//!
//! Weight names mirror transformers' `LlavaForConditionalGeneration` in either of its layouts ([`KeyLayout`]).

use std::ops::Range;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use super::cache::KvCache;
use super::clip::{ClipVision, Projector};
use super::config::{LlavaConfig, SelectStrategy};
use super::ffn::FfnParts;
use super::llama::Llama;
use super::merge::merge_image_rows;
use super::vlm::{decoder_delegation, Family, Inputs, Pixels, Positions, VisionLanguageModel};
use crate::error::Result;
use crate::hooks::{Capture, Hooks};

/// Where each part of LLaVA sits in a checkpoint's tensor names (prefixes without the trailing dot).
///
/// Published llava-hf checkpoints (transformers < 4.52, and what transformers 5 writes again) use
/// `language_model.model`, `language_model.lm_head`, `vision_tower.vision_model`, `multi_modal_projector`;
/// transformers 4.52-4.57 wrote `model.language_model`, `lm_head`, `model.vision_tower.vision_model`,
/// `model.multi_modal_projector`; transformers 5 drops the `vision_model` level of the vision tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLayout {
    pub text: &'static str,
    pub lm_head: &'static str,
    pub vision: &'static str,
    pub projector: &'static str,
}

impl KeyLayout {
    /// The names of the published llava-1.5-7b-hf checkpoint; what this project writes.
    pub const LLAVA_HF: KeyLayout = KeyLayout {
        text: "language_model.model",
        lm_head: "language_model.lm_head",
        vision: "vision_tower.vision_model",
        projector: "multi_modal_projector",
    };

    /// Finds each part's prefix among the names `has` knows; `None` names the part that was not found.
    pub fn detect(has: impl Fn(&str) -> bool) -> std::result::Result<Self, &'static str> {
        let pick = |cands: &[&'static str], probe: &str, part: &'static str| {
            cands.iter().copied().find(|p| has(&format!("{p}.{probe}"))).ok_or(part)
        };
        let text = pick(&["language_model.model", "model.language_model"], "embed_tokens.weight", "language model")?;
        let lm_head = pick(&["language_model.lm_head", "lm_head"], "weight", "lm_head")
            .unwrap_or(if text == "language_model.model" { "language_model.lm_head" } else { "lm_head" });
        let vision = pick(
            &["vision_tower.vision_model", "model.vision_tower.vision_model", "vision_tower", "model.vision_tower"],
            "embeddings.patch_embedding.weight",
            "vision tower",
        )?;
        let projector = pick(
            &["multi_modal_projector", "model.multi_modal_projector"],
            "linear_1.weight",
            "multi_modal_projector",
        )?;
        Ok(Self { text, lm_head, vision, projector })
    }
}

/// The LLaVA vision-language model.
#[derive(Debug, Clone)]
pub struct Llava {
    vision: ClipVision,
    projector: Projector,
    text: Llama,
    cfg: LlavaConfig,
    /// Resolved (non-negative) vision hidden-state indices fed to the projector.
    feature_layers: Vec<usize>,
    dtype: DType,
    device: Device,
}

impl Llava {
    /// Loads every part from `vb` (the checkpoint root) named as `layout` says.
    pub fn load(vb: VarBuilder, layout: KeyLayout, cfg: &LlavaConfig) -> Result<Self> {
        let (text_vb, head_vb, vision_vb, proj_vb) =
            (vb.pp(layout.text), vb.pp(layout.lm_head), vb.pp(layout.vision), vb.pp(layout.projector));
        let n_states = cfg.vision.num_hidden_layers as i64 + 1;
        let feature_layers: Vec<usize> = cfg
            .vision_feature_layers
            .iter()
            .map(|&l| if l < 0 { (n_states + l) as usize } else { l as usize })
            .collect();
        let deepest = feature_layers.iter().copied().max().unwrap_or(0);
        let vision = ClipVision::load(vision_vb, &cfg.vision, deepest)?;
        let projector = Projector::load(
            proj_vb,
            cfg.vision.hidden_size * feature_layers.len(),
            cfg.text.hidden_size,
            cfg.projector_hidden_act,
            cfg.projector_bias,
        )?;
        let text = Llama::load(text_vb, head_vb, &cfg.text)?;
        Ok(Self {
            vision,
            projector,
            text,
            cfg: cfg.clone(),
            feature_layers,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &LlavaConfig {
        &self.cfg
    }

    /// The decoder (for layer-range forwards and hooks).
    pub fn text(&self) -> &Llama {
        &self.text
    }

    /// The dtype the weights run in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Projected image features: `pixel_values (n, 3, H, W)` → `(n, image_seq_length, d_text)`.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.project(&self.vision_features(pixel_values)?)
    }

    /// The multimodal projector: vision features `(n, t, d_vision · k)` → `(n, t, d_text)`.
    pub fn project(&self, vision_features: &Tensor) -> Result<Tensor> {
        self.projector.forward(vision_features)
    }

    /// Selected vision-tower features before the projector: `pixel_values (n, 3, H, W)` → `(n, t, d_vision · k)`
    /// (`t` = patches, plus the class token under the `full` strategy; `k` feature layers concatenated).
    pub fn vision_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let deepest = self.feature_layers.iter().copied().max().unwrap_or(0);
        let states = self.vision.hidden_states(pixel_values, deepest)?;
        let picked = self
            .feature_layers
            .iter()
            .map(|&l| {
                let s = &states[l];
                Ok(match self.cfg.vision_feature_select_strategy {
                    SelectStrategy::Default => s.narrow(1, 1, s.dim(1)? - 1)?,
                    SelectStrategy::Full => s.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Several feature layers are concatenated on the feature axis: (n, t, d·k).
        Ok(Tensor::cat(&picked, D::Minus1)?)
    }

    /// Input embeddings: token embeddings of `ids (b, s)` with the `<image>` positions replaced, in reading order,
    /// by the rows of `image_features (n, t, d)`. The number of `<image>` ids must equal `n · t`. Returns `(b, s, d)`.
    pub fn embed_inputs(&self, ids: &Tensor, image_features: Option<&Tensor>) -> Result<Tensor> {
        let rows = image_features.map(|f| -> Result<Tensor> { Ok(f.flatten_to(1)?) }).transpose()?;
        let per_image = self.cfg.image_seq_length;
        merge_image_rows(
            ids,
            self.cfg.image_token_index,
            self.cfg.text.vocab_size as u32,
            rows.as_ref(),
            (self.dtype, &self.device),
            |t| self.text.embed(t),
            |n, f| {
                format!(
                    "the input has {n} image tokens but the images give {f} features (expected {per_image} per image)"
                )
            },
        )
    }

    /// Runs every decoder layer and the final norm on `embeds (b, s, d)` at positions `start..start + s`.
    /// Returns the normed last hidden states `(b, s, d)`; [`Llava::logits`] maps them to the vocabulary.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        start: usize,
        cache: Option<&mut KvCache>,
        hooks: &Hooks,
        capture: &mut Capture,
    ) -> Result<Tensor> {
        let n = self.text.num_layers();
        let h = self.text.forward_layers(embeds, start, 0..n, cache, hooks, capture)?;
        self.text.final_norm(&h)
    }

    /// Vocabulary logits, `(b, s, d)` → `(b, s, vocab)` f32.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.text.lm_head(hidden)
    }

    /// Teacher-forced forward of a (right-padded) batch: `ids (b, s)`, optional `pixel_values (n, 3, H, W)` whose
    /// images fill the `<image>` runs in reading order. Returns logits `(b, s, vocab)` f32.
    pub fn forward(&self, ids: &Tensor, pixel_values: Option<&Tensor>, hooks: &Hooks) -> Result<Tensor> {
        let feats = pixel_values.map(|p| self.image_features(p)).transpose()?;
        let embeds = self.embed_inputs(ids, feats.as_ref())?;
        let h = self.forward_embeds(&embeds, 0, None, hooks, &mut Capture::none())?;
        self.logits(&h)
    }
}

impl VisionLanguageModel for Llava {
    fn family(&self) -> Family {
        Family::Llava
    }
    decoder_delegation!();
    fn image_token_id(&self) -> u32 {
        self.cfg.image_token_index
    }
    fn image_features(&self, pixels: &Pixels) -> Result<Tensor> {
        Llava::image_features(self, &pixels.values)
    }
    fn embed(&self, ids: &Tensor, pixels: Option<&Pixels>) -> Result<Inputs> {
        let feats = pixels.map(|p| Llava::image_features(self, &p.values)).transpose()?;
        Ok(Inputs { embeds: self.embed_inputs(ids, feats.as_ref())?, positions: Positions::Offset(0) })
    }
    fn projector_input(&self, pixels: &Pixels) -> Result<Tensor> {
        self.vision_features(&pixels.values)
    }
    fn projector_parts(&self) -> Result<super::ProjectorParts> {
        Ok(self.projector.parts())
    }
    fn embed_projected(&self, ids: &Tensor, features: Option<&Tensor>, _pixels: Option<&Pixels>) -> Result<Inputs> {
        Ok(Inputs { embeds: self.embed_inputs(ids, features)?, positions: Positions::Offset(0) })
    }
    fn embed_next(&self, ids: &Tensor, _prompt: &Positions, cache_len: usize) -> Result<Inputs> {
        Ok(Inputs { embeds: self.text.embed(ids)?, positions: Positions::Offset(cache_len) })
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
        self.text.forward_layers(x, positions.offset()?, layers, cache, hooks, capture)
    }
    fn forward_from_ffn(
        &self,
        x: &Tensor,
        positions: &Positions,
        layer: usize,
        hooks: &Hooks,
        capture: &mut Capture,
    ) -> Result<Tensor> {
        positions.offset()?;
        self.text.forward_from_ffn(x, layer, hooks, capture)
    }
    fn ffn_parts(&self, layer: usize) -> Result<FfnParts> {
        let (gate, up, act) = self.text.mlp_gate_up(layer)?;
        Ok(FfnParts::Gated { gate, up, down: self.text.mlp_down(layer)?, act })
    }
}
