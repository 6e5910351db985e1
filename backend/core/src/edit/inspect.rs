//! What an edit's patch does on one input, for the studio's edit inspector: how strongly each of its extra FFN
//! neurons (T-Patcher, UniKE's intrinsic editing) responds to the input. A neuron adds its value only when its
//! pre-activation `x·W_K + b_K` is above zero (ReLU); T-Patcher trains it to reach the edit margin on the edit and to
//! stay below minus the memory margin on unrelated inputs, so the reading says which neurons fire on a probe and how
//! far from those margins they are. For SERAC, the scope classifier's score of the input for the stored edit. For
//! UniKE's latent in-context editing, the knowledge the input retrieves.

use candle_core::{DType, D};

use super::{EditSequence, Patch};
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, Hooks};
use crate::model::VisionLanguageModel;

/// One extra neuron's strongest response to an input.
#[derive(Debug, Clone, PartialEq)]
pub struct NeuronReading {
    /// Decoder layer of the neuron's FFN.
    pub layer: usize,
    /// The neuron's index among the patch's neurons of that layer.
    pub neuron: usize,
    /// The largest pre-activation over the input's positions (prompt, answer and end of sequence).
    pub pre_activation: f32,
    /// Whether it adds its value anywhere (pre-activation above zero).
    pub fired: bool,
}

/// The pre-activations of `patch`'s extra neurons on `seq` (teacher-forced, every position), under `hooks`: the
/// stack with the patch applied, so that each layer's FFN input is what the edited model computes. Empty for a patch
/// without neurons.
pub fn neuron_readings(
    model: &dyn VisionLanguageModel,
    seq: &EditSequence,
    hooks: &Hooks,
    patch: &Patch,
) -> Result<Vec<NeuronReading>> {
    if patch.neurons.is_empty() {
        return Ok(Vec::new());
    }
    let inputs = seq.inputs_hooked(model, hooks)?;
    let routed = model.routed(hooks, &inputs, seq.prompt_len - 1)?;
    let mut capture = Capture::at_layers(patch.neurons.keys().copied(), CapturePoint::FfnInput);
    model.forward_inputs(&inputs, None, &routed, &mut capture)?;
    let mut out = Vec::new();
    for (&layer, n) in &patch.neurons {
        let x = capture
            .get(layer, CapturePoint::FfnInput)
            .ok_or_else(|| Error::Invalid(format!("layer {layer}'s FFN input was not captured")))?;
        // (1, s, d) → (s, d); pre-activations (s, n), the largest over the positions.
        let x = x.squeeze(0)?.to_dtype(DType::F32)?;
        let w_k = n.w_k.to_dtype(DType::F32)?.to_device(x.device())?;
        let b_k = n.b_k.to_dtype(DType::F32)?.to_device(x.device())?;
        let pre = x.matmul(&w_k)?.broadcast_add(&b_k)?;
        let best: Vec<f32> = pre.max(D::Minus2)?.to_vec1()?;
        out.extend(best.into_iter().enumerate().map(|(neuron, p)| NeuronReading {
            layer,
            neuron,
            pre_activation: p,
            fired: p > 0.0,
        }));
    }
    Ok(out)
}

/// SERAC's scope score of an input for `patch`'s stored edit: the classifier's probability that `seq`'s prompt is
/// about the edit (read on the unedited model's state at the last prompt position, as the router reads it), and the
/// threshold from which the counterfactual model answers. `None` for a patch that is not a SERAC edit.
pub fn serac_scope(model: &dyn VisionLanguageModel, seq: &EditSequence, patch: &Patch) -> Result<Option<(f32, f32)>> {
    let Some(entry) = &patch.serac else { return Ok(None) };
    let x = super::serac::prompt_state(model, seq, entry.net.layer)?.unsqueeze(0)?;
    let key = entry.key.unsqueeze(0)?;
    let p = entry.net.scores(&x, &key)?.flatten_all()?.to_vec1::<f32>()?;
    let score = *p.first().ok_or_else(|| Error::Invalid("SERAC scored nothing".into()))?;
    Ok(Some((score, entry.net.threshold)))
}

/// One entry latent in-context editing retrieves for an input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retrieved {
    /// Decoder layer whose attention it shifts.
    pub layer: usize,
    /// Index among the shared memory's entries, or among the patch's own entries (`own`).
    pub index: usize,
    pub own: bool,
    /// Cosine of the centred states it is ranked by.
    pub score: f32,
}

/// The best `show` entries that the state predicting `seq`'s first answer token (the last prompt position) retrieves
/// at the patch's top latent layer under `hooks` (the stack with the patch), over the shared memory and the patch's
/// own entries, best first, ranked as [`crate::edit::unike::latent`] ranks them. Empty for a patch without latent
/// knowledge.
pub fn latent_retrieval(
    model: &dyn VisionLanguageModel,
    seq: &EditSequence,
    hooks: &Hooks,
    patch: &Patch,
    show: usize,
) -> Result<Vec<Retrieved>> {
    let (Some(r), Some((&layer, (own_sem, _)))) = (&patch.retrieval, patch.latent.iter().next_back()) else {
        return Ok(Vec::new());
    };
    let inputs = seq.inputs_hooked(model, hooks)?;
    let routed = model.routed(hooks, &inputs, seq.prompt_len - 1)?;
    let mut capture = Capture::at_layers([layer], CapturePoint::LayerInput);
    model.forward_inputs(&inputs, None, &routed, &mut capture)?;
    let x = capture
        .get(layer, CapturePoint::LayerInput)
        .ok_or_else(|| Error::Invalid(format!("layer {layer}'s input was not captured")))?
        .narrow(1, seq.prompt_len - 1, 1)?; // (1, 1, d)
    let unit = r.knowledge.unit_states(layer, &x)?; // (1, d)
    let base = r.knowledge.retrieve(layer, &unit, show.max(1))?;
    let mut all: Vec<Retrieved> = base
        .idx
        .iter()
        .zip(&base.score)
        .take(base.k)
        .map(|(&i, &score)| Retrieved { layer, index: i as usize, own: false, score })
        .collect();
    let own = r.knowledge.entry_sem(layer, own_sem)?; // (e, d)
    let scores: Vec<f32> = unit.matmul(&own.t()?)?.flatten_all()?.to_vec1()?;
    all.extend(scores.into_iter().enumerate().map(|(index, score)| Retrieved { layer, index, own: true, score }));
    all.sort_by(|a, b| b.score.total_cmp(&a.score));
    all.truncate(show);
    Ok(all)
}
