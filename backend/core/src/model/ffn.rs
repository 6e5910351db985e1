//! One decoder layer's FFN weights as edit methods see them (shared with the model, never copied): gated (LLaMA,
//! Qwen2: `down(act(q Gᵀ) ⊙ q Uᵀ)`) or plain (OPT: `fc2(act(q W1ᵀ + b1)) + b2`). The *intermediate* `u(q)`, `(b, s, i)`,
//! is what the output projection `(d, i)` reads; FT, KE and MEND change that projection (`u · ΔW_down`) and MEND the
//! input side too (an *up* change, [`FfnParts::up_change`]).

use candle_core::{DType, Tensor};

use super::config::Activation;
use crate::error::{Error, Result};

/// A layer's FFN weights.
#[derive(Debug, Clone)]
pub enum FfnParts {
    /// `gate`, `up` `(i, d)`, `down` `(d, i)`.
    Gated { gate: Tensor, up: Tensor, down: Tensor, act: Activation },
    /// `fc1` `(i, d)` and its bias `(i)`, `fc2` `(d, i)` (its bias is the model's, unchanged by edits).
    Plain { fc1: Tensor, b1: Option<Tensor>, fc2: Tensor, act: Activation },
}

impl FfnParts {
    /// The intermediate width `i`.
    pub fn width(&self) -> Result<usize> {
        Ok(self.down().dim(1)?)
    }

    /// The output projection `(d, i)`.
    pub fn down(&self) -> &Tensor {
        match self {
            FfnParts::Gated { down, .. } => down,
            FfnParts::Plain { fc2, .. } => fc2,
        }
    }

    /// The hidden activation (SiLU for LLaMA and Qwen2, ReLU for OPT).
    pub fn activation(&self) -> Activation {
        match self {
            FfnParts::Gated { act, .. } | FfnParts::Plain { act, .. } => *act,
        }
    }

    fn dtype(&self) -> DType {
        self.down().dtype()
    }

    /// The input side's pre-activation `q W1ᵀ + b1` (plain) or the gate's `q Gᵀ` (gated), `(.., i)`.
    fn pre(&self, q: &Tensor) -> Result<Tensor> {
        let q = q.to_dtype(self.dtype())?;
        Ok(match self {
            FfnParts::Gated { gate, .. } => q.broadcast_matmul(&gate.t()?)?,
            FfnParts::Plain { fc1, b1, .. } => {
                let pre = q.broadcast_matmul(&fc1.t()?)?;
                match b1 {
                    Some(b) => pre.broadcast_add(b)?,
                    None => pre,
                }
            }
        })
    }

    /// The intermediate `u(q)`, `(.., i)` for `q (.., d)`: what the output projection reads.
    pub fn intermediate(&self, q: &Tensor) -> Result<Tensor> {
        let pre = self.pre(q)?;
        Ok(match self {
            FfnParts::Gated { up, act, .. } => {
                let q = q.to_dtype(self.dtype())?;
                (act.apply(&pre)? * q.broadcast_matmul(&up.t()?)?)?
            }
            FfnParts::Plain { act, .. } => act.apply(&pre)?,
        })
    }

    /// `∂u/∂(q W_upᵀ)` elementwise, `(.., i)`: gated `act(q Gᵀ)`, plain `act'(q W1ᵀ + b1)` (ReLU only). The gradient
    /// at the up projection's output is `(δ W_down) ⊙` this.
    pub fn up_factor(&self, q: &Tensor) -> Result<Tensor> {
        let pre = self.pre(q)?;
        match self {
            FfnParts::Gated { act, .. } => Ok(act.apply(&pre)?),
            FfnParts::Plain { act: Activation::Relu, .. } => Ok(pre.gt(0.0)?.to_dtype(pre.dtype())?),
            FfnParts::Plain { act, .. } => {
                Err(Error::Invalid(format!("up-projection changes of a plain FFN need ReLU, not {act:?}")))
            }
        }
    }

    /// The change of the intermediate when the up projection changes by `ΔW_up (d, i)` (as `q ΔW_up` is added to
    /// its output), `(.., i)` in `delta`'s dtype: gated `act(q Gᵀ) ⊙ q ΔW_up` (exact, linear), plain
    /// `act(pre + q ΔW_up) − act(pre)` (exact).
    pub fn up_change(&self, q: &Tensor, delta: &Tensor) -> Result<Tensor> {
        let pre = self.pre(q)?.to_dtype(delta.dtype())?;
        let qd = q.to_dtype(delta.dtype())?.broadcast_matmul(delta)?;
        Ok(match self {
            FfnParts::Gated { act, .. } => (act.apply(&pre)? * qd)?,
            FfnParts::Plain { act, .. } => (act.apply(&(&pre + qd)?)? - act.apply(&pre)?)?,
        })
    }
}
