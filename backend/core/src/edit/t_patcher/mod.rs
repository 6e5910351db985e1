//! T-Patcher (Huang et al., ICLR 2023, "Transformer-Patcher: One Mistake Worth One Neuron"), the intrinsic-editing
//! baseline of the UniKE paper (Appendix D.2): one extra key-value neuron in the FFN of the last layer per mistaken
//! token of the edit (at most `neurons`), keys and values trained on the edit with T-Patcher's three terms: an
//! activation term (each neuron fires at its mistake), an absolute memory term (it stays below a margin on a memory of
//! unrelated questions) and a relative one (its activation at the mistake exceeds any memory query's by a margin).
//! Hinge terms replace T-Patcher's top-k exponentials (the same targets; no tail of tiny gradients).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::memory_prefix::{memory_queries_fast, MemoryPrefix};
use super::neurons::{memory_queries, stack_memory, train_neurons, NeuronParams, NeuronSetting};
use super::{EditContext, EditMethod, EditRequest, EditSequence, Patch, Provenance};
use crate::error::Result;
use crate::hooks::Hooks;

/// Hyper-parameters (`hparams/t-patcher/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TPatcherParams(pub NeuronParams);

impl Default for TPatcherParams {
    fn default() -> Self {
        // T-Patcher's own settings where they carry over: one neuron per mistaken token (at most 5), keys and values
        // trained, both memory terms.
        Self(NeuronParams {
            last_layers: 1,
            neurons: 5,
            per_mistake: true,
            steps: 60,
            lr: 0.05,
            key_lr: None,
            edit_margin: 2.0,
            memory_margin: 0.5,
            edit_weight: 1.0,
            memory_weight: 1.0,
            relative_margin: Some(3.0),
            train_keys: true,
            stop_loss: 0.0,
        })
    }
}

/// The method, with its memory of unrelated questions (from the training split, never the evaluation probes).
pub struct TPatcher {
    pub params: TPatcherParams,
    pub memory: Vec<EditSequence>,
    pub eos: u32,
    /// Memory queries on the unedited model (an empty stack), computed once.
    unedited: OnceLock<BTreeMap<usize, Tensor>>,
    /// `memory`'s residual stream below the patched layers (the same under every stack whose hooks sit above).
    prefix: MemoryPrefix,
}

impl TPatcher {
    pub fn new(params: TPatcherParams, memory: Vec<EditSequence>, eos: u32) -> Self {
        Self { params, memory, eos, unedited: OnceLock::new(), prefix: MemoryPrefix::default() }
    }
}

impl EditMethod for TPatcher {
    fn name(&self) -> &str {
        "t-patcher"
    }

    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        let seq =
            EditSequence::new(ctx.processor, &request.question, request.image.as_ref(), &request.target, self.eos)?;
        let n = ctx.model.num_layers();
        let layers: Vec<usize> = (n.saturating_sub(self.params.0.last_layers)..n).collect();
        // On the unedited model the memory's queries never change: compute them once. Under a stack they depend on
        // the patches below, so they are recomputed (running only the patched layers where the stack allows).
        let fresh;
        let memory = if ctx.stack.is_empty() {
            match self.unedited.get() {
                Some(m) => m,
                None => {
                    let m = memory_queries(ctx, &self.memory, &layers, &Hooks::none())?;
                    self.unedited.get_or_init(|| m)
                }
            }
        } else {
            let earlier = stack_memory(ctx, self.eos)?;
            fresh = memory_queries_fast(ctx, &self.memory, &self.prefix, &earlier, &layers, &Hooks::none())?;
            &fresh
        };
        let neurons = train_neurons(ctx, &seq, memory, &self.params.0, request.seed, &NeuronSetting::default())?;
        let provenance = Provenance::new(self.name(), &self.params, request)?;
        Ok(Patch::new(provenance, neurons))
    }
}
