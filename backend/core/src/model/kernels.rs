//! Which kernels the forward pass uses on the current thread.
//!
//! candle's fused CPU kernels for softmax, RMSNorm, LayerNorm and RoPE have no backward pass. Inside a
//! [`differentiable`] scope the model uses compositions of basic ops instead (same maths, differences of about
//! 1e-7), so gradients flow to every weight and to every hook parameter: base-model training and the edit methods
//! that optimise (FT, T-Patcher, UniKE's neurons) run their forwards in such a scope. Outside it the fused kernels
//! run. The flag is per thread, so evaluation on one thread and training on another do not interfere.

use std::cell::Cell;

use candle_core::{Result, Tensor, D};

thread_local! {
    static DIFFERENTIABLE: Cell<u32> = const { Cell::new(0) };
}

/// While the returned guard lives, this thread's forwards are differentiable. Scopes nest.
#[must_use = "the scope ends when the guard is dropped"]
pub fn differentiable() -> DifferentiableScope {
    DIFFERENTIABLE.with(|c| c.set(c.get() + 1));
    DifferentiableScope(())
}

/// Guard of [`differentiable`].
pub struct DifferentiableScope(());

impl Drop for DifferentiableScope {
    fn drop(&mut self) {
        DIFFERENTIABLE.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

fn on() -> bool {
    DIFFERENTIABLE.with(|c| c.get() > 0)
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if on() {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// RMSNorm of the last dimension with weight `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if on() || !x.is_contiguous() {
        candle_nn::ops::rms_norm_slow(x, w, eps)
    } else {
        candle_nn::ops::rms_norm(x, w, eps)
    }
}

/// LayerNorm of the last dimension with weight `w` and bias `b`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    if on() || !x.is_contiguous() {
        candle_nn::ops::layer_norm_slow(x, w, b, eps)
    } else {
        candle_nn::ops::layer_norm(x, w, b, eps)
    }
}

/// Non-interleaved rotary embedding of `x (b, h, s, d)` with `cos`/`sin` of `(s, d / 2)`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if on() {
        candle_nn::rotary_emb::rope_slow(x, cos, sin)
    } else {
        candle_nn::rotary_emb::rope(x, cos, sin)
    }
}
