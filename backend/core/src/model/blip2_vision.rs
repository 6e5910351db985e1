//! The image encoder of BLIP-2 (Li et al., "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image
//! Encoders and Large Language Models", ICML 2023): an EVA-style ViT (Fang et al., 2023) as transformers'
//! `Blip2VisionModel` runs it.
//!
//! Patch embedding (a conv with bias, run as a matmul), the class token, learned position embeddings added after
//! the concat, no pre-LayerNorm; pre-LayerNorm blocks (`layer_norm1` → attention → residual, `layer_norm2` → `fc1`
//! → GELU → `fc2` → residual) whose attention has one fused `qkv` projection (bias `cat(q_bias, 0, v_bias)`: EVA has
//! no key bias) and an output `projection`; then `post_layernorm` over every token.
//!
//! Weight names mirror the checkpoint (`vision_model.embeddings.patch_embedding`,
//! `vision_model.encoder.layers.{i}.self_attn.qkv`, ...). The qkv bias is read fused (`self_attn.qkv.bias`, as the
//! fixtures and transformers 5 store it) or as transformers 4's separate `self_attn.q_bias` / `self_attn.v_bias`.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::blip2_config::Blip2VisionConfig;
use super::config::Activation;
use super::kernels;
use super::norm::LayerNorm;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    projection: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &Blip2VisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let weight = vb.get((3 * d, d), "qkv.weight")?;
        let bias = if !cfg.qkv_bias {
            None
        } else if vb.contains_tensor("qkv.bias") {
            Some(vb.get(3 * d, "qkv.bias")?)
        } else {
            let q = vb.get(d, "q_bias")?;
            let v = vb.get(d, "v_bias")?;
            Some(Tensor::cat(&[&q, &q.zeros_like()?, &v], 0)?)
        };
        Ok(Self {
            qkv: Linear::new(weight, bias),
            projection: candle_nn::linear(d, d, vb.pp("projection"))?,
            heads: cfg.num_attention_heads,
            head_dim: d / cfg.num_attention_heads,
        })
    }

    /// Bidirectional attention, `(b, n, d)` → `(b, n, d)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        // qkv output (b, n, 3·d) is laid out as [q | k | v], each split into heads.
        let qkv = self.qkv.forward(x)?.reshape((b, n, 3, self.heads, self.head_dim))?.permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (qkv.get(0)?.contiguous()?, qkv.get(1)?.contiguous()?, qkv.get(2)?.contiguous()?);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let att = (q.matmul(&k.t()?)? * scale)?;
        let att = kernels::softmax_last_dim(&att.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?;
        Ok(self.projection.forward(&y)?)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &Blip2VisionConfig) -> Result<Self> {
        let (d, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        Ok(Self {
            layer_norm1: LayerNorm::load(d, eps, vb.pp("layer_norm1"))?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            layer_norm2: LayerNorm::load(d, eps, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(d, i, vb.pp("mlp").pp("fc1"))?,
            fc2: candle_nn::linear(i, d, vb.pp("mlp").pp("fc2"))?,
            act: cfg.hidden_act,
        })
    }

    /// `(b, n, d)` → `(b, n, d)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.self_attn.forward(&self.layer_norm1.forward(x)?)?)?;
        let h = self.fc2.forward(&self.act.apply(&self.fc1.forward(&self.layer_norm2.forward(&x)?)?)?)?;
        Ok((x + h)?)
    }
}

/// `Blip2VisionModel`.
#[derive(Debug, Clone)]
pub struct Blip2Vision {
    /// Patch embedding as a matrix, `(d, 3·p·p)` (the conv kernel flattened; a view of the weight).
    patch_weight: Tensor,
    /// `(d)`.
    patch_bias: Tensor,
    /// `(1, 1, d)`.
    class_embedding: Tensor,
    /// `(1, 1 + patches, d)`.
    position_embedding: Tensor,
    layers: Vec<Layer>,
    post_layernorm: LayerNorm,
    cfg: Blip2VisionConfig,
}

impl Blip2Vision {
    /// Loads `vision_model.*`.
    pub fn load(vb: VarBuilder, cfg: &Blip2VisionConfig) -> Result<Self> {
        let (d, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let emb = vb.pp("embeddings");
        let patch_weight = emb.get((d, c, p, p), "patch_embedding.weight")?.reshape((d, c * p * p))?;
        let patch_bias = emb.get(d, "patch_embedding.bias")?;
        let class_embedding = emb.get((1, 1, d), "class_embedding")?;
        let position_embedding = emb.get((1, cfg.num_positions(), d), "position_embedding")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(vb.pp("encoder").pp("layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        let post_layernorm = LayerNorm::load(d, cfg.layer_norm_eps, vb.pp("post_layernorm"))?;
        Ok(Self {
            patch_weight,
            patch_bias,
            class_embedding,
            position_embedding,
            layers,
            post_layernorm,
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Blip2VisionConfig {
        &self.cfg
    }

    /// `last_hidden_state` after `post_layernorm`: `pixel_values (b, 3, H, W)` with `H = W = image_size` →
    /// `(b, 1 + patches, d)` (class token first, patches in row-major order); what the Q-Former cross-attends to.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixel_values.dims4()?;
        let (p, s) = (self.cfg.patch_size, self.cfg.image_size);
        if c != self.cfg.num_channels || h != s || w != s {
            return Err(Error::Invalid(format!(
                "pixel_values {:?} do not match the BLIP-2 vision model ({} channels, {s}x{s})",
                pixel_values.dims(),
                self.cfg.num_channels
            )));
        }
        let g = s / p;
        // (b, c, g, p, g, p) → (b, g, g, c, p, p) → (b, g·g, c·p·p): patches in row-major order, as the conv yields.
        let patches = pixel_values
            .to_dtype(self.patch_weight.dtype())?
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, g * g, c * p * p))?;
        let patch_emb = patches.broadcast_matmul(&self.patch_weight.t()?)?.broadcast_add(&self.patch_bias)?;
        let d = self.cfg.hidden_size;
        let cls = self.class_embedding.expand((b, 1, d))?;
        let mut x = Tensor::cat(&[&cls, &patch_emb], D::Minus2)?.broadcast_add(&self.position_embedding)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        self.post_layernorm.forward(&x.contiguous()?)
    }
}
