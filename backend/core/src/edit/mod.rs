//! Knowledge editing: the [`EditMethod`] capability, the [`Patch`] an edit produces, and the tokenized form of an edit
//! that the methods optimise. One folder per method.

pub mod alphaedit;
pub mod ft;
pub mod ft_vision;
pub mod grace;
pub mod gradient;
pub mod hparams;
pub mod hypernet;
pub mod ike;
pub mod inspect;
pub mod ke;
pub mod lora;
pub mod memit;
pub mod memory_prefix;
pub mod mend;
pub mod neurons;
pub mod none;
pub mod patch;
pub mod registry;
pub mod sequence;
pub mod serac;
pub mod stack;
pub mod t_patcher;
pub mod unike;
pub mod wise;

pub use patch::{Patch, PatchDeps, Provenance};
pub use sequence::{EditSequence, Prediction};
pub use stack::PatchStack;

use crate::error::Result;
use crate::model::{ModelProcessor, VisionLanguageModel};

/// What an edit method sees of the model: the base weights (never mutated), its processor, and the patches already
/// applied (sequential editing optimises on top of them).
pub struct EditContext<'a> {
    pub model: &'a dyn VisionLanguageModel,
    pub processor: &'a dyn ModelProcessor,
    pub stack: &'a PatchStack,
}

impl EditContext<'_> {
    /// The hooks of the stack that an edit optimises on top of: every patch's, without per-input routers (a SERAC
    /// edit's counterfactual model is consulted when the stack answers, not while another method trains its edit).
    pub fn stack_hooks(&self) -> Result<crate::hooks::Hooks> {
        Ok(self.stack.hooks()?.without_routers())
    }
}

/// An edit request: make the model answer `question` (about `image`, if any) with `target`.
#[derive(Debug, Clone)]
pub struct EditRequest {
    pub question: String,
    /// The edit image, already preprocessed.
    pub image: Option<crate::model::Pixels>,
    pub image_path: Option<String>,
    pub target: String,
    /// Seed of any randomness of the method.
    pub seed: u64,
}

/// A knowledge-editing method: turns one request into a patch.
pub trait EditMethod: Send + Sync {
    /// The name the CLI uses (`ft`, `t-patcher`, `unike`, ...).
    fn name(&self) -> &str;

    /// Computes the patch of `request` on top of `ctx.stack`.
    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch>;

    /// What loading this method's saved patches needs besides the model ([`Patch::load_with`]).
    fn patch_deps(&self) -> PatchDeps {
        PatchDeps::default()
    }

    /// Bytes of the tensors this built method holds beyond the model (trained networks, prepared memories), so that a
    /// cache of built methods can be bounded by memory. A part shared with another holder counts in full here.
    fn resident_bytes(&self) -> usize {
        0
    }
}

/// Each row of `x` (the last axis) scaled to unit length, `x / (|x| + 1e-6)`; any shape.
pub fn unit_rows(x: &candle_core::Tensor) -> Result<candle_core::Tensor> {
    Ok(x.broadcast_div(&(x.sqr()?.sum_keepdim(candle_core::D::Minus1)?.sqrt()? + 1e-6)?)?)
}

/// Bytes of `t`'s elements.
pub fn tensor_bytes(t: &candle_core::Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}
