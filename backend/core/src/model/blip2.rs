//! BLIP-2 with an OPT decoder (Li et al., "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image
//! Encoders and Large Language Models", ICML 2023; Zhang et al., "OPT: Open Pre-trained Transformer Language Models",
//! 2022), as transformers' `Blip2ForConditionalGeneration` runs it: the EVA ViT ([`Blip2Vision`]), the Q-Former over
//! the learned `query_tokens` ([`QFormer`]), `language_projection` (a Linear from the Q-Former width to OPT's), and
//! the OPT decoder ([`Opt`]) whose `<image>` token positions take the projected query outputs, in order.
//!
//! Weight names mirror the published checkpoints (Salesforce/blip2-opt-*; transformers 4 and 5 use the same names):
//! `vision_model.*`, `query_tokens`, `qformer.*`, `language_projection.*`, `language_model.model.decoder.*`,
//! `language_model.lm_head.*` (optional: the head is tied).
//!
//! The public shape mirrors [`super::llava::Llava`]: `image_features` → `embed_inputs` → `forward_embeds` (hooks and
//! captures act in the decoder, see [`super::opt`]) → `logits`; `forward` chains them; greedy decoding is in
//! [`super::generate_blip2`].

use std::ops::Range;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::blip2_config::Blip2Config;
use super::blip2_vision::Blip2Vision;
use super::cache::KvCache;
use super::ffn::FfnParts;
use super::merge::merge_image_rows;
use super::opt::Opt;
use super::qformer::QFormer;
use super::vlm::{decoder_delegation, Family, Inputs, Pixels, Positions, VisionLanguageModel};
use crate::error::Result;
use crate::hooks::{Capture, Hooks};

/// Where each part of BLIP-2 sits in a checkpoint's tensor names (prefixes without the trailing dot).
pub mod names {
    pub const VISION: &str = "vision_model";
    pub const QUERY_TOKENS: &str = "query_tokens";
    pub const QFORMER: &str = "qformer";
    pub const LANGUAGE_PROJECTION: &str = "language_projection";
    pub const DECODER: &str = "language_model.model.decoder";
    pub const LM_HEAD: &str = "language_model.lm_head";
}

/// The BLIP-2 (OPT) vision-language model.
#[derive(Debug, Clone)]
pub struct Blip2 {
    vision: Blip2Vision,
    /// `(1, num_query_tokens, d_qformer)`.
    query_tokens: Tensor,
    qformer: QFormer,
    language_projection: Linear,
    text: Opt,
    cfg: Blip2Config,
    dtype: DType,
    device: Device,
}

impl Blip2 {
    /// Loads every part from `vb` (the checkpoint root), named as [`names`] says.
    pub fn load(vb: VarBuilder, cfg: &Blip2Config) -> Result<Self> {
        let vision = Blip2Vision::load(vb.pp(names::VISION), &cfg.vision)?;
        let dq = cfg.qformer.hidden_size;
        let query_tokens = vb.get((1, cfg.num_query_tokens, dq), names::QUERY_TOKENS)?;
        let qformer = QFormer::load(vb.pp(names::QFORMER), &cfg.qformer)?;
        let language_projection = candle_nn::linear(dq, cfg.text.hidden_size, vb.pp(names::LANGUAGE_PROJECTION))?;
        let text = Opt::load(vb.pp(names::DECODER), vb.pp(names::LM_HEAD), &cfg.text)?;
        Ok(Self {
            vision,
            query_tokens,
            qformer,
            language_projection,
            text,
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &Blip2Config {
        &self.cfg
    }

    /// The decoder (for layer-range forwards and hooks).
    pub fn text(&self) -> &Opt {
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

    /// The vision model's last hidden state after `post_layernorm`: `pixel_values (n, 3, H, W)` →
    /// `(n, 1 + patches, d_vision)`.
    pub fn vision_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.vision.forward(pixel_values)
    }

    /// The Q-Former's query outputs for vision features `(n, 1 + patches, d_vision)` → `(n, num_query_tokens,
    /// d_qformer)`.
    pub fn query_features(&self, vision_features: &Tensor) -> Result<Tensor> {
        let n = vision_features.dim(0)?;
        let (_, q, d) = self.query_tokens.dims3()?;
        self.qformer.forward(&self.query_tokens.expand((n, q, d))?, vision_features)
    }

    /// `language_projection`: `(n, q, d_qformer)` → `(n, q, d_text)`.
    pub fn project(&self, query_features: &Tensor) -> Result<Tensor> {
        Ok(self.language_projection.forward(query_features)?)
    }

    /// Projected image features: `pixel_values (n, 3, H, W)` → `(n, num_query_tokens, d_text)`, what replaces the
    /// `<image>` embeddings.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.project(&self.query_features(&self.vision_features(pixel_values)?)?)
    }

    /// Input embeddings (token embeddings, without positions): `ids (b, s)` with the `<image>` positions replaced,
    /// in reading order, by the rows of `image_features (n, t, d)`. The number of `<image>` ids must equal `n · t`.
    /// Returns `(b, s, d)`.
    pub fn embed_inputs(&self, ids: &Tensor, image_features: Option<&Tensor>) -> Result<Tensor> {
        let rows = image_features.map(|f| -> Result<Tensor> { Ok(f.flatten_to(1)?) }).transpose()?;
        let per_image = self.cfg.num_query_tokens;
        merge_image_rows(
            ids,
            self.cfg.image_token_index,
            self.cfg.text.vocab_size as u32,
            rows.as_ref(),
            (self.dtype, &self.device),
            |t| self.text.embed(t),
            |n, f| {
                format!("the input has {n} image tokens but the images give {f} query outputs (expected {per_image} per image)")
            },
        )
    }

    /// Adds OPT's learned positions for `start..start + s` to `embeds (b, s, d)` (from [`Blip2::embed_inputs`]),
    /// then runs every decoder layer and the final LayerNorm. Returns the normed last hidden states `(b, s, d)`;
    /// [`Blip2::logits`] maps them to the vocabulary. [`crate::hooks::CapturePoint::LayerInput`] of layer 0 is the
    /// embeddings with positions (transformers' `hidden_states[0]`).
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        start: usize,
        cache: Option<&mut KvCache>,
        hooks: &Hooks,
        capture: &mut Capture,
    ) -> Result<Tensor> {
        let n = self.text.num_layers();
        let x = self.text.add_positions(embeds, start)?;
        let h = self.text.forward_layers(&x, start, 0..n, cache, hooks, capture)?;
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

impl VisionLanguageModel for Blip2 {
    fn family(&self) -> Family {
        Family::Blip2
    }
    decoder_delegation!();
    fn image_token_id(&self) -> u32 {
        self.cfg.image_token_index
    }
    fn image_features(&self, pixels: &Pixels) -> Result<Tensor> {
        Blip2::image_features(self, &pixels.values)
    }
    /// OPT's learned positions `0..s` are added here: the result is what layer 0 reads.
    fn embed(&self, ids: &Tensor, pixels: Option<&Pixels>) -> Result<Inputs> {
        let feats = pixels.map(|p| Blip2::image_features(self, &p.values)).transpose()?;
        self.embed_projected(ids, feats.as_ref(), pixels)
    }
    fn projector_input(&self, pixels: &Pixels) -> Result<Tensor> {
        self.query_features(&self.vision_features(&pixels.values)?)
    }
    fn projector_parts(&self) -> Result<super::ProjectorParts> {
        Ok(super::ProjectorParts::Linear(self.language_projection.clone()))
    }
    fn embed_projected(&self, ids: &Tensor, features: Option<&Tensor>, _pixels: Option<&Pixels>) -> Result<Inputs> {
        let embeds = self.text.add_positions(&self.embed_inputs(ids, features)?, 0)?;
        Ok(Inputs { embeds, positions: Positions::Offset(0) })
    }
    fn embed_next(&self, ids: &Tensor, _prompt: &Positions, cache_len: usize) -> Result<Inputs> {
        let embeds = self.text.add_positions(&self.text.embed(ids)?, cache_len)?;
        Ok(Inputs { embeds, positions: Positions::Offset(cache_len) })
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
        let start = positions.offset()?;
        // Layer 0 reads the learned positions of `start..`; after in-context prefixes they move past them.
        let span = self.text.prefix_span(hooks)?;
        if layers.start == 0 && span > 0 {
            let x = self.text.move_positions(x, start, start + span)?;
            return self.text.forward_layers(&x, start, layers, cache, hooks, capture);
        }
        self.text.forward_layers(x, start, layers, cache, hooks, capture)
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
        let (fc1, b1, fc2, act) = self.text.ffn_weights(layer)?;
        Ok(FfnParts::Plain { fc1, b1, fc2, act })
    }
}
