//! One decoder layer's self-attention projections and input norm as edit methods see them (shared with the model,
//! never copied): what latent in-context editing (UniKE) attends with and what an in-context prefix (IKE) is encoded
//! with. LLaMA and Qwen2 read an RMSNorm, OPT a LayerNorm; Qwen2 and OPT projections carry biases (a [`Linear`]
//! applies them). Queries are returned as projected, before any `head_dim^-0.5` scaling (OPT scales after the
//! projection, which is the same as scaling the scores).

use candle_core::{DType, Module, Tensor};
use candle_nn::Linear;

use super::norm::{LayerNorm, RmsNorm};
use crate::error::Result;

/// A layer's input norm.
#[derive(Debug, Clone)]
pub enum InputNorm {
    Rms(RmsNorm),
    Layer(LayerNorm),
}

impl InputNorm {
    /// `(.., d)` → `(.., d)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            InputNorm::Rms(n) => n.forward(x),
            InputNorm::Layer(n) => n.forward(x),
        }
    }
}

/// One layer's self-attention projections and input norm.
#[derive(Debug, Clone)]
pub struct AttnParts {
    norm: InputNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnParts {
    /// The parts of one layer (`q (h·hd, d)`, `k`, `v (kvh·hd, d)`, `o (d, h·hd)`).
    pub(crate) fn new(
        norm: InputNorm,
        [q_proj, k_proj, v_proj, o_proj]: [Linear; 4],
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        Self { norm, q_proj, k_proj, v_proj, o_proj, n_heads, n_kv_heads, head_dim }
    }

    /// The layer's input norm, `(.., d)` → `(.., d)`.
    pub fn norm(&self, x: &Tensor) -> Result<Tensor> {
        self.norm.forward(x)
    }

    /// Queries of normed states, `(n, d)` → `(n, n_heads, head_dim)`, without rotary embedding or scaling.
    pub fn queries(&self, normed: &Tensor) -> Result<Tensor> {
        let n = normed.dim(0)?;
        Ok(self.q_proj.forward(normed)?.reshape((n, self.n_heads, self.head_dim))?)
    }

    /// Keys and values of *residual* states (the norm is applied here), `(n, d)` → two `(n, n_kv_heads, head_dim)`,
    /// keys without rotary embedding.
    pub fn keys_values(&self, residual: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = residual.dim(0)?;
        let x = self.norm.forward(residual)?;
        let k = self.k_proj.forward(&x)?.reshape((n, self.n_kv_heads, self.head_dim))?;
        let v = self.v_proj.forward(&x)?.reshape((n, self.n_kv_heads, self.head_dim))?;
        Ok((k, v))
    }

    /// Dtype of the projections.
    pub fn dtype(&self) -> DType {
        self.q_proj.weight().dtype()
    }

    /// The output projection, `(.., n_heads * head_dim)` → `(.., d)`.
    pub fn output(&self, y: &Tensor) -> Result<Tensor> {
        Ok(self.o_proj.forward(y)?)
    }
}
