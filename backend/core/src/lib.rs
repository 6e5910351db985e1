//! # unike-core
//!
//! The editing core of UniKE Studio, an implementation of *Towards Unified Multimodal Editing with Enhanced Knowledge
//! Collaboration* (Pan et al., NeurIPS 2024).
//!
//! This first layer is the model: a LLaVA-1.5 style vision-language model ([`model::Llava`]) whose decoder exposes
//! exactly the seams UniKE needs ([`hooks`]): extra FFN key-value neurons, a shift of the self-attention output, and
//! capture of hidden states. It loads real checkpoints in the llava-hf layout ([`model::Checkpoint`]).

pub mod data;
pub mod edit;
pub mod error;
pub mod eval;
pub mod hooks;
pub mod model;
pub mod train;
pub mod world;

pub use error::{Error, Result};
