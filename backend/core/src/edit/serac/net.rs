//! SERAC's scope classifier (the embedding variant: cosine of learned embeddings of an input and of a stored edit,
//! through a sigmoid) and the [`Router`] that sends each input, once, on its prompt, to the counterfactual model of
//! the stored edit it is most likely about, or to the base model.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};

use crate::edit::hypernet::ParamSet;
use crate::edit::EditSequence;
use crate::error::{Error, Result};
use crate::hooks::{ContextKv, Hooks, Router};
use crate::model::VisionLanguageModel;
use crate::world::rng::Rng;

/// The trained classifier.
#[derive(Debug)]
pub struct SeracNet {
    /// Decoder layer whose (normed) input at the last prompt position the classifier reads.
    pub layer: usize,
    /// Scope probability at or above which an input goes to the counterfactual model (SERAC: 0.5).
    pub threshold: f32,
    pub set: ParamSet,
}

impl SeracNet {
    /// Fresh parameters: the scope projection `(d, r)` with a bias, the gate's scale and offset.
    pub fn init(layer: usize, threshold: f32, d: usize, rank: usize, seed: u64, dev: &Device) -> Result<Self> {
        let mut rng = Rng::derive(seed, "serac-classifier", 0);
        let mut set = ParamSet::default();
        set.normal("scope", (d, rank), &mut rng, dev)?;
        set.insert("scope_bias", Tensor::zeros(rank, DType::F32, dev)?)?;
        set.insert("gate_scale", Tensor::new(10f32, dev)?)?;
        set.insert("gate_offset", Tensor::new(-5f32, dev)?)?;
        Ok(Self { layer, threshold, set })
    }

    /// Unit scope embeddings of states, `(n, d)` → `(n, r)`.
    pub fn embed(&self, x: &Tensor) -> Result<Tensor> {
        let e = x.matmul(&self.set.get("scope")?)?.broadcast_add(&self.set.get("scope_bias")?)?;
        crate::edit::unit_rows(&e)
    }

    /// Scope probabilities of inputs for stored edits: `x (n, d)`, `keys (e, d)` → `(n, e)`.
    pub fn scores(&self, x: &Tensor, keys: &Tensor) -> Result<Tensor> {
        let cos = self.embed(x)?.matmul(&self.embed(keys)?.t()?)?;
        let logits = cos.broadcast_mul(&self.set.get("gate_scale")?)?.broadcast_add(&self.set.get("gate_offset")?)?;
        Ok(candle_nn::ops::sigmoid(&logits)?)
    }
}

/// What the classifier reads of one sequence: [`VisionLanguageModel::prompt_states`] at its last prompt position, `(d)` f32 (the
/// answer is never seen); the state [`VisionLanguageModel::route`] computes for it.
pub fn prompt_state(model: &dyn VisionLanguageModel, seq: &EditSequence, layer: usize) -> Result<Tensor> {
    Ok(model.prompt_states(&seq.inputs(model)?, &[seq.prompt_len - 1], layer)?.squeeze(0)?)
}

/// The stored edits of a stack behind one classifier: their scope keys and counterfactual prefixes.
#[derive(Debug)]
pub struct SeracRouter {
    pub net: Arc<SeracNet>,
    /// Scope keys `(e, d)`.
    pub keys: Tensor,
    /// The counterfactual model of each stored edit: the base model with the edit in its context.
    pub contexts: Vec<Arc<ContextKv>>,
}

impl Router for SeracRouter {
    fn layer(&self) -> usize {
        self.net.layer
    }

    /// Hard routing: the stored edit of highest scope probability when it reaches the threshold, else none.
    fn decide(&self, states: &Tensor) -> Result<Vec<Option<usize>>> {
        let p = self.net.scores(states, &self.keys)?;
        let best = p.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let top = p.max(D::Minus1)?.to_vec1::<f32>()?;
        Ok(best.into_iter().zip(top).map(|(i, s)| (s >= self.net.threshold).then_some(i as usize)).collect())
    }

    fn route_hooks(&self, route: usize) -> Result<Hooks> {
        let c = self
            .contexts
            .get(route)
            .ok_or_else(|| Error::Invalid(format!("SERAC route {route} of {} stored edits", self.contexts.len())))?;
        let mut h = Hooks::none();
        h.add_context(c.clone());
        Ok(h)
    }
}

/// Checks that a classifier fits a model of hidden size `d` and `layers` decoder layers.
pub fn check(net: &SeracNet, d: usize, layers: usize) -> Result<()> {
    let got = net.set.get("scope")?.dim(0)?;
    if got != d {
        return Err(Error::Invalid(format!("the SERAC classifier is for hidden size {got}, the model has {d}")));
    }
    if net.layer >= layers {
        return Err(Error::Invalid(format!("the SERAC classifier reads layer {}, the model has {layers}", net.layer)));
    }
    Ok(())
}
