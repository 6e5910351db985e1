//! T-Patcher (Huang et al., ICLR 2023, "Transformer-Patcher: One Mistake Worth One Neuron"), the intrinsic-editing
//! baseline of the UniKE paper (Appendix D.2): a few extra key-value neurons in the FFN of the last layer, trained on
//! the edit with an activation term (fire on the edit) and a memory term (stay silent on unrelated questions).

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::neurons::{memory_queries, train_neurons, NeuronParams};
use super::{EditContext, EditMethod, EditRequest, EditSequence, Patch, Provenance};
use crate::error::{Error, Result};

/// Hyper-parameters (`hparams/t-patcher/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TPatcherParams {
    #[serde(flatten)]
    pub neurons: NeuronParams,
}

impl Default for TPatcherParams {
    fn default() -> Self {
        Self {
            neurons: NeuronParams {
                last_layers: 1,
                neurons: 1,
                steps: 60,
                lr: 0.05,
                edit_margin: 2.0,
                memory_margin: 0.5,
                edit_weight: 1.0,
                memory_weight: 1.0,
            },
        }
    }
}

/// The method, with its memory of unrelated questions (from the training split, never the evaluation probes).
pub struct TPatcher {
    pub params: TPatcherParams,
    pub memory: Vec<EditSequence>,
    pub eos: u32,
}

impl TPatcher {
    pub fn new(params: TPatcherParams, memory: Vec<EditSequence>, eos: u32) -> Self {
        Self { params, memory, eos }
    }
}

impl EditMethod for TPatcher {
    fn name(&self) -> &str {
        "t-patcher"
    }

    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        let seq =
            EditSequence::new(ctx.processor, &request.question, request.image.as_ref(), &request.target, self.eos)?;
        let n = ctx.model.text().num_layers();
        let layers: Vec<usize> = (n.saturating_sub(self.params.neurons.last_layers)..n).collect();
        let memory: BTreeMap<usize, Tensor> = memory_queries(ctx, &self.memory, &layers)?;
        let neurons = train_neurons(ctx, &seq, &memory, &self.params.neurons, request.seed)?;
        let hparams = serde_json::to_value(&self.params).map_err(|e| Error::Invalid(e.to_string()))?;
        let provenance = Provenance {
            method: self.name().into(),
            hparams,
            prompt: request.question.clone(),
            target: request.target.clone(),
            image: request.image_path.clone(),
            seed: request.seed,
            author: None,
        };
        Ok(Patch::new(provenance, neurons))
    }
}
