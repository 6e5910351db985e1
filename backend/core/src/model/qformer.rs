//! The Querying Transformer of BLIP-2 (Li et al., "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen
//! Image Encoders and Large Language Models", ICML 2023, §3.1), on the query path that
//! `Blip2ForConditionalGeneration` runs: the learned query tokens alone (no text input, no masks).
//!
//! The queries go through `qformer.layernorm` first (there are no word or position embeddings on this path), then
//! BERT-style post-LayerNorm layers: self-attention over the queries; every `cross_attention_frequency` layers
//! (layer `i` with `i % f == 0`) a cross-attention whose keys and values come from the image features; then the
//! query FFN (`intermediate_query` → GELU → `output_query`). Each sublayer is `LayerNorm(dense(y) + residual)`.
//! There is no final norm: the last layer's output is the Q-Former's `last_hidden_state`.
//!
//! Weight names mirror transformers' `Blip2QFormerModel` (`layernorm`, `encoder.layer.{i}.attention.attention.query`,
//! `encoder.layer.{i}.crossattention.output.dense`, `encoder.layer.{i}.output_query.LayerNorm`, ...).

use candle_core::{DType, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::blip2_config::QFormerConfig;
use super::config::Activation;
use super::kernels;
use super::norm::LayerNorm;
use crate::error::Result;

/// `BertAttention`-style block: multi-head attention (`attention.{query,key,value}`) and its output
/// (`output.dense`, `output.LayerNorm` over `dense(y) + residual`).
#[derive(Debug, Clone)]
struct AttentionBlock {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    norm: LayerNorm,
    heads: usize,
    head_dim: usize,
}

impl AttentionBlock {
    /// `kv_width`: the width of what keys and values read (the hidden size, or the vision width for cross-attention).
    fn load(vb: VarBuilder, cfg: &QFormerConfig, kv_width: usize) -> Result<Self> {
        let d = cfg.hidden_size;
        let att = vb.pp("attention");
        let out = vb.pp("output");
        Ok(Self {
            query: candle_nn::linear(d, d, att.pp("query"))?,
            key: candle_nn::linear(kv_width, d, att.pp("key"))?,
            value: candle_nn::linear(kv_width, d, att.pp("value"))?,
            dense: candle_nn::linear(d, d, out.pp("dense"))?,
            norm: LayerNorm::load(d, cfg.layer_norm_eps, out.pp("LayerNorm"))?,
            heads: cfg.num_attention_heads,
            head_dim: d / cfg.num_attention_heads,
        })
    }

    /// `x (b, q, d)` attends to `context (b, n, kv_width)` (itself for self-attention) without a mask; returns
    /// `LayerNorm(dense(attention) + x)`, `(b, q, d)`.
    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, q_len, d) = x.dims3()?;
        let n = context.dim(1)?;
        let split = |t: Tensor, len: usize| -> Result<Tensor> {
            Ok(t.reshape((b, len, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let q = split(self.query.forward(x)?, q_len)?;
        let k = split(self.key.forward(context)?, n)?;
        let v = split(self.value.forward(context)?, n)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let att = (q.matmul(&k.t()?)? * scale)?;
        let att = kernels::softmax_last_dim(&att.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, q_len, d))?;
        self.norm.forward(&(self.dense.forward(&y)? + x)?)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    attention: AttentionBlock,
    crossattention: Option<AttentionBlock>,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    act: Activation,
}

impl Layer {
    fn load(vb: VarBuilder, cfg: &QFormerConfig, cross: bool) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        let crossattention = if cross {
            Some(AttentionBlock::load(vb.pp("crossattention"), cfg, cfg.encoder_hidden_size)?)
        } else {
            None
        };
        Ok(Self {
            attention: AttentionBlock::load(vb.pp("attention"), cfg, d)?,
            crossattention,
            intermediate: candle_nn::linear(d, i, vb.pp("intermediate_query").pp("dense"))?,
            output: candle_nn::linear(i, d, vb.pp("output_query").pp("dense"))?,
            output_norm: LayerNorm::load(d, cfg.layer_norm_eps, vb.pp("output_query").pp("LayerNorm"))?,
            act: cfg.hidden_act,
        })
    }

    /// `x (b, q, d)`, `image (b, n, d_vision)` → `(b, q, d)`.
    fn forward(&self, x: &Tensor, image: &Tensor) -> Result<Tensor> {
        let mut x = self.attention.forward(x, x)?;
        if let Some(cross) = &self.crossattention {
            x = cross.forward(&x, image)?;
        }
        let h = self.act.apply(&self.intermediate.forward(&x)?)?;
        self.output_norm.forward(&(self.output.forward(&h)? + x)?)
    }
}

/// `Blip2QFormerModel` on the query path.
#[derive(Debug, Clone)]
pub struct QFormer {
    layernorm: LayerNorm,
    layers: Vec<Layer>,
    cfg: QFormerConfig,
}

impl QFormer {
    /// Loads `qformer.*`.
    pub fn load(vb: VarBuilder, cfg: &QFormerConfig) -> Result<Self> {
        let layernorm = LayerNorm::load(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layernorm"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(vb.pp("encoder").pp("layer").pp(i), cfg, i % cfg.cross_attention_frequency == 0))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layernorm, layers, cfg: cfg.clone() })
    }

    /// The configuration.
    pub fn config(&self) -> &QFormerConfig {
        &self.cfg
    }

    /// The query outputs (`last_hidden_state`): `queries (b, q, d)` and `image (b, n, d_vision)` (the vision
    /// model's post-LayerNorm states) → `(b, q, d)`.
    pub fn forward(&self, queries: &Tensor, image: &Tensor) -> Result<Tensor> {
        let image = image.to_dtype(queries.dtype())?;
        let mut x = self.layernorm.forward(&queries.contiguous()?)?;
        for layer in &self.layers {
            x = layer.forward(&x, &image)?;
        }
        Ok(x)
    }
}
