//! The invariance term of `train-base` (issue 14): a demonstration that does not give the query's answer should
//! leave the query's answer where it would be without it. Activation patching of the trained models
//! (`train::disturbance`) shows where such a demonstration disturbs the recall: the self-attention of the positions
//! that predict the query's answer, at decoder layers 1 and 2 (the clean run's attention output there restores
//! 0.7–0.96 of the disturbed answers; the query's image and question positions, almost none). So, for every sample
//! whose demonstrations do not give its answer ([`crate::world::samples::Sample::copied`] false: irrelevant and hard
//! contexts, distracted plain samples), the hidden states at those positions at the outputs of the decoder layers
//! from a given one up to the last are pulled toward the same positions' states in a pass of the query alone (no
//! demonstrations; detached: the model without the context is the target, not a moving part). The term is the mean
//! over positions and layers of the squared distance relative to the clean state's squared norm, times its weight.
//! (On a model trained with stronger binding terms the disturbance enters at layers 2 and 3, hence every layer from
//! the first one named.)

use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint::LayerOutput, Hooks};
use crate::model::{ImageProcessor, Llava};
use crate::world::samples::Sample;

use super::batch::{make_batch, Batch};
use super::question::rows_at;

/// Where the term reads (the outputs of these decoder layers), how much it weighs, and which pairs it counts.
pub struct Invariance {
    pub layers: Vec<usize>,
    pub weight: f32,
    /// `None`: every pair counts. `Some(margin)`: a pair counts only where the demonstrations make the answer id
    /// less likely than the query alone does by more than `margin` nats (the pull stops where the recall is not
    /// disturbed, so the positions stay free to read demonstrations elsewhere); the term is still the mean over
    /// all pairs, so it fades as the disturbances do.
    pub gate: Option<f32>,
}

impl Invariance {
    /// The term at the outputs of decoder layers `from..n_layers`, every pair counted.
    pub fn from_layer(from: usize, n_layers: usize, weight: f32) -> Self {
        Self { layers: (from..n_layers).collect(), weight, gate: None }
    }

    /// The same term counting only the pairs `gate` selects (see [`Invariance::gate`]).
    pub fn gated(self, gate: Option<f32>) -> Self {
        Self { gate, ..self }
    }
}

/// The queries of a batch's samples whose demonstrations do not give their answer, alone, and the pairs of positions
/// that predict the same answer id in both: flat `(b · s)` indices into the batch and into `batch`.
#[derive(Debug)]
pub struct CleanPass {
    pub batch: Batch,
    pub positions: Vec<u32>,
    pub clean_positions: Vec<u32>,
}

/// The clean pass of `samples`, the samples `batch` was made of (in order, `make_batch` with any `lm_weight`);
/// `None` when no sample has demonstrations that do not give its answer.
pub fn clean_pass(
    samples: &[Sample],
    batch: &Batch,
    tokenizer: &Tokenizer,
    images: &ImageProcessor,
    image_seq_length: usize,
    device: &Device,
) -> Result<Option<CleanPass>> {
    // The batch's decision positions are the answer-predicting positions of every sample with demonstrations, in
    // sample order, labelled 1 when a demonstration gives the answer.
    let ignoring: Vec<&Sample> = samples.iter().filter(|s| !s.context.is_empty() && !s.copied).collect();
    if ignoring.is_empty() {
        return Ok(None);
    }
    let positions: Vec<u32> =
        batch.decision_positions.iter().zip(&batch.decision_labels).filter(|(_, &l)| l == 0).map(|(&p, _)| p).collect();
    let alone: Vec<Sample> = ignoring.iter().map(|s| s.alone()).collect();
    let clean = make_batch(&alone, tokenizer, images, image_seq_length, 0.0, device)?;
    // Without demonstrations and without the language-model term, the supervised positions are exactly the query's.
    let clean_positions = clean.positions.to_vec1::<u32>()?;
    if clean_positions.len() != positions.len() {
        return Err(Error::Invalid(format!(
            "invariance: {} answer positions behind demonstrations, {} alone",
            positions.len(),
            clean_positions.len()
        )));
    }
    Ok(Some(CleanPass { batch: clean, positions, clean_positions }))
}

/// The term: `hs[k] (b, s, d)` the output of decoder layer `t.layers[k]` in the pass with demonstrations, `logits
/// (b, s, v)` that pass's logits (read only when the term is gated), `clean` that batch's clean pass. Returns a
/// scalar.
pub fn loss(t: &Invariance, model: &Llava, hs: &[&Tensor], logits: &Tensor, clean: &CleanPass) -> Result<Tensor> {
    let mut cap = Capture::of(t.layers.iter().map(|&l| (l, LayerOutput)));
    let last = clean_states(model, &clean.batch, &mut cap)?;
    let mask = match t.gate {
        Some(margin) => {
            let alone = model.logits(&rows_at(&last, &clean.clean_positions)?)?;
            Some(disturbed(logits, &alone, clean, margin)?)
        }
        None => None,
    };
    let mut total: Option<Tensor> = None;
    for (&l, h) in t.layers.iter().zip(hs) {
        let target = cap.get(l, LayerOutput).ok_or_else(|| Error::Invalid(format!("layer {l}")))?;
        let target = rows_at(target, &clean.clean_positions)?.detach();
        let dist = (rows_at(h, &clean.positions)? - &target)?.sqr()?.sum(1)?;
        let norm = (target.sqr()?.sum(1)? + 1e-6)?;
        let rel = (dist / norm)?;
        let part = match &mask {
            Some(m) => (rel * m)?.mean_all()?,
            None => rel.mean_all()?,
        };
        total = Some(match total {
            Some(s) => (s + part)?,
            None => part,
        });
    }
    let total = total.ok_or_else(|| Error::Invalid("the invariance term reads no layer".into()))?;
    Ok((total * (t.weight as f64 / t.layers.len() as f64))?)
}

/// The clean pass forward into `capture`: a target, so the inference kernels (outside any differentiable scope)
/// and the vision features detached. `batch.ids (b, s)`, pixels `(n_images, 3, h, w)`; returns the final normed
/// states `(b, s, d)`, detached.
fn clean_states(model: &Llava, batch: &Batch, capture: &mut Capture) -> Result<Tensor> {
    let feats = batch.pixels.as_ref().map(|p| model.vision_features(p).map(|f| f.detach())).transpose()?;
    let image = feats.map(|f| model.project(&f)).transpose()?;
    let embeds = model.embed_inputs(&batch.ids, image.as_ref())?;
    Ok(model.forward_embeds(&embeds, 0, None, &Hooks::none(), capture)?.detach())
}

/// `(m)` f32 mask of the pairs whose answer id the demonstrations make less likely than the query alone does by
/// more than `margin` nats: `logits (b, s, v)` with demonstrations, `alone (m, v)` the clean pass's at its pairs.
fn disturbed(logits: &Tensor, alone: &Tensor, clean: &CleanPass, margin: f32) -> Result<Tensor> {
    let with = super::nll(&rows_at(logits, &clean.positions)?.detach(), &clean.batch.targets)?;
    let without = super::nll(alone, &clean.batch.targets)?;
    Ok((with - without)?.gt(margin as f64)?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::train::test_support::smoke_weights;
    use crate::train::{loss_with, world_config_json, Terms, Trainable, WORLD_PREPROCESSOR};
    use crate::world::context::{follow_split, ignore_split, ContextShares};
    use crate::world::rng::Rng;
    use crate::world::samples::training_sample_eased;
    use crate::world::{tokenizer, World};

    #[test]
    fn pairs_are_the_ignoring_queries_answer_positions() -> Result<()> {
        let w = World::generate(0);
        let tok = tokenizer::build(&w).map_err(|e| Error::Invalid(e.to_string()))?;
        let images = ImageProcessor::from_json_str(WORLD_PREPROCESSOR).map_err(Error::Invalid)?;
        let mut rng = Rng::new(9);
        let mut samples: Vec<Sample> = follow_split(&w, 2).into_iter().chain(ignore_split(&w, 3)).collect();
        samples.extend((0..12).map(|_| {
            training_sample_eased(&w, [1.0, 0.0, 1.0, 0.0, 0.0, 2.0], 0.0, &ContextShares::shipped(), &mut rng)
        }));
        let b = make_batch(&samples, &tok, &images, 3, 0.3, &Device::Cpu)?;
        let c = clean_pass(&samples, &b, &tok, &images, 3, &Device::Cpu)?.ok_or(Error::Invalid("none".into()))?;
        let want: usize = samples
            .iter()
            .filter(|s| !s.context.is_empty() && !s.copied)
            .map(|s| tok.encode(s.answer.as_str(), false).map(|e| e.len() + 1).unwrap_or(0))
            .sum();
        assert!(want > 0);
        assert_eq!((c.positions.len(), c.clean_positions.len()), (want, want));
        // Each pair predicts the same id: the next ids agree, and so do the ids before the answer.
        let (ids, clean) = (b.ids.flatten_all()?.to_vec1::<u32>()?, c.batch.ids.flatten_all()?.to_vec1::<u32>()?);
        for (&p, &q) in c.positions.iter().zip(&c.clean_positions) {
            assert_eq!((ids[p as usize], ids[p as usize + 1]), (clean[q as usize], clean[q as usize + 1]));
        }
        // Only relevant demonstrations: nothing to pull.
        let follow = follow_split(&w, 3);
        let b = make_batch(&follow, &tok, &images, 3, 0.0, &Device::Cpu)?;
        assert!(clean_pass(&follow, &b, &tok, &images, 3, &Device::Cpu)?.is_none());
        Ok(())
    }

    /// A fresh 2-layer model and a batch of `n` ignore-split queries carrying its clean pass.
    fn ignoring_batch(n: usize) -> Result<(Trainable, Batch)> {
        let w = World::generate(0);
        let tok = tokenizer::build(&w).map_err(|e| Error::Invalid(e.to_string()))?;
        let images = ImageProcessor::from_json_str(WORLD_PREPROCESSOR).map_err(Error::Invalid)?;
        let cfg = world_config_json(tok.get_vocab_size(true), 32, 1, 48, 2, 4);
        let t = Trainable::new(&cfg, 0, &Device::Cpu)?;
        let samples = ignore_split(&w, n);
        let mut b = make_batch(&samples, &tok, &images, t.config.image_seq_length, 0.0, &Device::Cpu)?;
        b.clean = clean_pass(&samples, &b, &tok, &images, t.config.image_seq_length, &Device::Cpu)?.map(Box::new);
        Ok((t, b))
    }

    #[test]
    fn the_term_adds_to_the_loss_and_training_lowers_it() -> Result<()> {
        let (t, b) = ignoring_batch(4)?;
        let inv = Invariance::from_layer(1, 2, 1.0);
        let terms = Terms { invariance: Some(&inv), ..Terms::default() };
        let term = || -> Result<f32> {
            let plain = loss_with(&t.model, &b, true, Terms::default())?.to_scalar::<f32>()?;
            Ok(loss_with(&t.model, &b, true, terms)?.to_scalar::<f32>()? - plain)
        };
        let before = term()?;
        assert!(before > 1e-3, "{before}");
        // Trained on the term alone, the model moves the states behind the demonstrations toward the clean ones.
        let vars = t.varmap.all_vars();
        let mut opt = candle_nn::AdamW::new_lr(vars, 3e-3)?;
        for _ in 0..30 {
            let mut cap = Capture::of([(1, LayerOutput)]);
            let (logits, _) = super::super::forward_parts(&t.model, &b, true, &mut cap)?;
            let h = cap.get(1, LayerOutput).ok_or(Error::Invalid("h".into()))?;
            let c = b.clean.as_deref().ok_or(Error::Invalid("clean".into()))?;
            candle_nn::Optimizer::backward_step(&mut opt, &loss(&inv, &t.model, &[h], &logits, c)?)?;
        }
        let after = term()?;
        assert!(after < before * 0.7, "{before} {after}");
        Ok(())
    }

    #[test]
    fn the_trainer_uses_the_term() -> Result<()> {
        let weights = |w: f32, from: usize| {
            smoke_weights(|r| (r.invariance_weight, r.invariance_layer, r.invariance_from) = (w, 0, from))
        };
        let off = weights(0.0, 0)?;
        let diff = (weights(1.0, 0)? - &off)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff > 1e-6, "the invariance term changed no weight ({diff})");
        // From a step after the run's last, the term never applies.
        let late = (weights(1.0, 1000)? - &off)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(late, 0.0);
        // The gate reaches the trainer: a margin no pair exceeds leaves the run as without the term; margin 0 not.
        let gated = |gate: f32| {
            smoke_weights(|r| {
                (r.invariance_weight, r.invariance_layer, r.invariance_gate) = (1.0, 0, Some(gate));
            })
        };
        let shut = (gated(1e9)? - &off)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(shut, 0.0);
        let open = (gated(0.0)? - &off)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(open > 1e-6, "the gated term changed no weight ({open})");
        Ok(())
    }

    #[test]
    fn the_gate_counts_only_the_pairs_the_demonstrations_make_worse() -> Result<()> {
        let (t, b) = ignoring_batch(8)?;
        let c = b.clean.as_deref().ok_or(Error::Invalid("clean".into()))?;
        let mut cap = Capture::of([(1, LayerOutput)]);
        let (logits, _) = super::super::forward_parts(&t.model, &b, true, &mut cap)?;
        let h = cap.get(1, LayerOutput).ok_or(Error::Invalid("h".into()))?;
        let term = |gate: Option<f32>| -> Result<f32> {
            let inv = Invariance::from_layer(1, 2, 1.0).gated(gate);
            Ok(loss(&inv, &t.model, &[h], &logits, c)?.to_scalar::<f32>()?)
        };
        let all = term(None)?;
        assert!(all > 1e-4, "{all}");
        assert!((term(Some(-1e9))? - all).abs() < 1e-6 * all.max(1.0));
        assert_eq!(term(Some(1e9))?, 0.0);
        // By hand: the pairs whose answer id is less likely with the demonstrations than alone.
        let mut alone = Capture::of([(1, LayerOutput)]);
        let (alone_logits, _) = super::super::forward_parts(&t.model, &c.batch, true, &mut alone)?;
        let nll = |l: &Tensor, at: &[u32]| -> Result<Vec<f32>> {
            Ok(super::super::nll(&rows_at(l, at)?, &c.batch.targets)?.to_vec1::<f32>()?)
        };
        let (with, without) = (nll(&logits, &c.positions)?, nll(&alone_logits, &c.clean_positions)?);
        let worse: Vec<bool> = with.iter().zip(&without).map(|(a, b)| a > b).collect();
        let n_worse = worse.iter().filter(|&&x| x).count();
        assert!(n_worse > 0 && n_worse < worse.len(), "{n_worse} of {}", worse.len());
        let target = rows_at(alone.get(1, LayerOutput).ok_or(Error::Invalid("alone".into()))?, &c.clean_positions)?;
        let rel = ((rows_at(h, &c.positions)? - &target)?.sqr()?.sum(1)? / (target.sqr()?.sum(1)? + 1e-6)?)?;
        let rel = rel.to_vec1::<f32>()?;
        let want = rel.iter().zip(&worse).filter(|(_, &x)| x).map(|(r, _)| r).sum::<f32>() / rel.len() as f32;
        let got = term(Some(0.0))?;
        assert!((got - want).abs() < 1e-3 * want.max(1e-3), "{got} {want}");
        assert!(got > 0.0 && got < all);
        Ok(())
    }
}
