//! RMSNorm and LayerNorm whose kernels follow [`super::kernels`] (fused, or differentiable inside a scope).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::kernels;
use crate::error::Result;

/// `x / rms(x) * weight` over the last dimension; weight named `weight`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
        Ok(Self { weight, eps: eps as f32 })
    }

    /// `(.., d)` → `(.., d)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(kernels::rms_norm(x, &self.weight, self.eps)?)
    }
}

/// `(x - mean) / std * weight + bias` over the last dimension; tensors named `weight` and `bias`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self { weight, bias, eps: eps as f32 })
    }

    /// `(.., d)` → `(.., d)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(kernels::layer_norm(x, &self.weight, &self.bias, self.eps)?)
    }
}
