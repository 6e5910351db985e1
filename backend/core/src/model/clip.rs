//! The CLIP ViT vision tower of LLaVA (Radford et al., 2021) and LLaVA's two-layer projector (Liu et al., 2023).
//!
//! Weight names mirror transformers' `CLIPVisionModel` (`vision_model.embeddings.patch_embedding`,
//! `vision_model.encoder.layers.{i}.self_attn.q_proj`, ...) and `LlavaMultiModalProjector` (`linear_1`, `linear_2`).
//! Only the encoder layers up to the deepest feature layer LLaVA reads are run.

use candle_core::{DType, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::{Activation, VisionConfig};
use super::kernels;
use super::norm::LayerNorm;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl ClipAttention {
    fn load(vb: VarBuilder, cfg: &VisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            q_proj: candle_nn::linear(d, d, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(d, d, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(d, d, vb.pp("v_proj"))?,
            out_proj: candle_nn::linear(d, d, vb.pp("out_proj"))?,
            heads: cfg.num_attention_heads,
            head_dim: d / cfg.num_attention_heads,
        })
    }

    /// Bidirectional attention, `(b, n, d)` → `(b, n, d)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, n, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let q = split((self.q_proj.forward(x)? * scale)?)?;
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        let att = q.matmul(&k.t()?)?;
        let att = kernels::softmax_last_dim(&att.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?;
        Ok(self.out_proj.forward(&y)?)
    }
}

#[derive(Debug, Clone)]
struct ClipLayer {
    layer_norm1: LayerNorm,
    self_attn: ClipAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl ClipLayer {
    fn load(vb: VarBuilder, cfg: &VisionConfig) -> Result<Self> {
        let (d, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        Ok(Self {
            layer_norm1: LayerNorm::load(d, eps, vb.pp("layer_norm1"))?,
            self_attn: ClipAttention::load(vb.pp("self_attn"), cfg)?,
            layer_norm2: LayerNorm::load(d, eps, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(d, i, vb.pp("mlp").pp("fc1"))?,
            fc2: candle_nn::linear(i, d, vb.pp("mlp").pp("fc2"))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.self_attn.forward(&self.layer_norm1.forward(x)?)?)?;
        let h = self.fc2.forward(&self.act.apply(&self.fc1.forward(&self.layer_norm2.forward(&x)?)?)?)?;
        Ok((x + h)?)
    }
}

/// CLIP ViT (`CLIPVisionModel.vision_model`).
#[derive(Debug, Clone)]
pub struct ClipVision {
    /// Patch embedding as a matrix, `(d, 3·p·p)` (the conv kernel flattened; a view of the weight, never a copy, so
    /// training updates of the weight are seen).
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<ClipLayer>,
    cfg: VisionConfig,
}

impl ClipVision {
    /// Loads `vision_model.*`, keeping only the first `keep_layers` encoder layers.
    pub fn load(vb: VarBuilder, cfg: &VisionConfig, keep_layers: usize) -> Result<Self> {
        let (d, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let emb = vb.pp("embeddings");
        let conv = emb.get((d, c, p, p), "patch_embedding.weight")?;
        let patch_weight = conv.reshape((d, c * p * p))?;
        let class_embedding = emb.get(d, "class_embedding")?;
        let position_embedding = emb.get((cfg.num_positions(), d), "position_embedding.weight")?;
        let pre_layrnorm = LayerNorm::load(d, cfg.layer_norm_eps, vb.pp("pre_layrnorm"))?;
        let layers = (0..keep_layers.min(cfg.num_hidden_layers))
            .map(|i| ClipLayer::load(vb.pp("encoder").pp("layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { patch_weight, class_embedding, position_embedding, pre_layrnorm, layers, cfg: cfg.clone() })
    }

    /// Hidden states `0..=last` (0 = embeddings after `pre_layrnorm`, `i` = output of encoder layer `i - 1`),
    /// each `(b, 1 + patches, d)`, for `pixel_values` of shape `(b, 3, H, W)` with `H = W = image_size`.
    pub fn hidden_states(&self, pixel_values: &Tensor, last: usize) -> Result<Vec<Tensor>> {
        let (b, c, h, w) = pixel_values.dims4()?;
        let (p, s) = (self.cfg.patch_size, self.cfg.image_size);
        if c != self.cfg.num_channels || h != s || w != s {
            return Err(Error::Invalid(format!(
                "pixel_values {:?} do not match the vision tower ({} channels, {s}x{s})",
                pixel_values.dims(),
                self.cfg.num_channels
            )));
        }
        if last > self.layers.len() {
            return Err(Error::Invalid(format!("vision hidden state {last} was not loaded")));
        }
        let g = s / p;
        // (b, c, g, p, g, p) → (b, g, g, c, p, p) → (b, g·g, c·p·p): patches in row-major order, as the conv yields.
        let patches = pixel_values
            .to_dtype(self.patch_weight.dtype())?
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, g * g, c * p * p))?;
        let patch_emb = patches.broadcast_matmul(&self.patch_weight.t()?)?;
        let d = self.cfg.hidden_size;
        let cls = self.class_embedding.reshape((1, 1, d))?.expand((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &patch_emb], 1)?.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        let mut x = self.pre_layrnorm.forward(&x)?;
        let mut states = Vec::with_capacity(last + 1);
        states.push(x.clone());
        for layer in &self.layers[..last] {
            x = layer.forward(&x)?;
            states.push(x.clone());
        }
        Ok(states)
    }

    /// The configuration.
    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }
}

/// `LlavaMultiModalProjector`: `linear_2(act(linear_1(x)))`.
#[derive(Debug, Clone)]
pub struct Projector {
    linear_1: Linear,
    linear_2: Linear,
    act: Activation,
}

impl Projector {
    /// Loads `multi_modal_projector.*`.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, act: Activation, bias: bool) -> Result<Self> {
        let lin = |vb: VarBuilder, i, o| -> Result<Linear> {
            Ok(if bias { candle_nn::linear(i, o, vb)? } else { candle_nn::linear_no_bias(i, o, vb)? })
        };
        Ok(Self {
            linear_1: lin(vb.pp("linear_1"), in_dim, out_dim)?,
            linear_2: lin(vb.pp("linear_2"), out_dim, out_dim)?,
            act,
        })
    }

    /// `(n, t, d_vision·layers)` → `(n, t, d_text)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.linear_2.forward(&self.act.apply(&self.linear_1.forward(x)?)?)?)
    }

    /// The two linears and the activation, shared.
    pub fn parts(&self) -> super::ProjectorParts {
        super::ProjectorParts::Mlp { l1: self.linear_1.clone(), l2: self.linear_2.clone(), act: self.act }
    }
}
