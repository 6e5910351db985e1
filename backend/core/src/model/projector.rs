//! The vision-to-language projector of each family as edit methods see it (shared with the model, never copied):
//! what fine-tuning on the vision side tunes (VLKEB's `mm_projector`). LLaVA's `multi_modal_projector`
//! (`linear_2(act(linear_1(x)))`) and Qwen2-VL's merger MLP (`mlp.2(gelu(mlp.0(x)))`, after its norm and 2×2
//! window merge) are two linears around an activation; BLIP-2's `language_projection` is one linear (after the
//! Q-Former). A change is a delta of every linear's weight and bias, applied through a [`crate::hooks::VisionHook`].

use candle_core::{DType, Module, Tensor};
use candle_nn::Linear;

use super::config::Activation;
use crate::error::{Error, Result};
use crate::hooks::VisionHook;

/// A family's projector.
#[derive(Debug, Clone)]
pub enum ProjectorParts {
    /// `l2(act(l1(x)))`.
    Mlp { l1: Linear, l2: Linear, act: Activation },
    /// One linear.
    Linear(Linear),
}

/// A change of one linear: `ΔW (out, in)` and `Δb (out)` f32.
pub type LinearDelta = (Tensor, Tensor);

fn linear_with(l: &Linear, x: &Tensor, delta: Option<&LinearDelta>) -> Result<Tensor> {
    let Some((dw, db)) = delta else {
        return Ok(l.forward(x)?);
    };
    let x32 = x.to_dtype(DType::F32)?;
    let w = (l.weight().to_dtype(DType::F32)? + dw)?;
    let mut y = x32.broadcast_matmul(&w.t()?)?;
    y = match l.bias() {
        Some(b) => y.broadcast_add(&(b.to_dtype(DType::F32)? + db)?)?,
        None => y.broadcast_add(db)?,
    };
    Ok(y.to_dtype(x.dtype())?)
}

impl ProjectorParts {
    /// The linears, input side first.
    pub fn linears(&self) -> Vec<&Linear> {
        match self {
            ProjectorParts::Mlp { l1, l2, .. } => vec![l1, l2],
            ProjectorParts::Linear(l) => vec![l],
        }
    }

    /// `(out, in)` of each linear.
    pub fn shapes(&self) -> Result<Vec<(usize, usize)>> {
        self.linears().iter().map(|l| Ok(l.weight().dims2()?)).collect()
    }

    /// The projector on `x (.., in)` → `(.., out)`, each linear changed by its delta when `deltas` are given (one
    /// per linear, in order); differentiable with respect to the deltas.
    pub fn forward_with(&self, x: &Tensor, deltas: Option<&[LinearDelta]>) -> Result<Tensor> {
        if let Some(d) = deltas {
            if d.len() != self.linears().len() {
                return Err(Error::Invalid(format!("{} deltas for {} linears", d.len(), self.linears().len())));
            }
        }
        let at = |i: usize| deltas.map(|d| &d[i]);
        match self {
            ProjectorParts::Mlp { l1, l2, act } => {
                let h = act.apply(&linear_with(l1, x, at(0))?)?;
                linear_with(l2, &h, at(1))
            }
            ProjectorParts::Linear(l) => linear_with(l, x, at(0)),
        }
    }
}

/// A change of the projector (FT on the vision side's patch): adds `P'(x) − P(x)` to the projected image features.
#[derive(Debug, Clone)]
pub struct ProjectorDelta {
    pub parts: ProjectorParts,
    pub deltas: Vec<LinearDelta>,
}

impl ProjectorDelta {
    /// Checks the deltas' shapes against `parts`.
    pub fn new(parts: ProjectorParts, deltas: Vec<LinearDelta>) -> Result<Self> {
        let shapes = parts.shapes()?;
        if shapes.len() != deltas.len()
            || shapes.iter().zip(&deltas).any(|(&(o, i), (w, b))| w.dims() != [o, i] || b.dims() != [o])
        {
            return Err(Error::Invalid(format!("projector deltas do not fit the projector's linears {shapes:?}")));
        }
        Ok(Self { parts, deltas })
    }
}

impl VisionHook for ProjectorDelta {
    fn adapt(&self, projector_input: &Tensor) -> Result<Tensor> {
        let changed = self.parts.forward_with(projector_input, Some(&self.deltas))?.to_dtype(DType::F32)?;
        let base = self.parts.forward_with(projector_input, None)?.to_dtype(DType::F32)?;
        Ok((changed - base)?)
    }
}
