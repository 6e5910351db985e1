//! The decision term of `train-base` (issue 14): what `context_ignore` measures is a decision the query's answer
//! makes, whether a demonstration states the query's own fact (then its answer is copied) or not (then the world's
//! answer is recalled, undisturbed). At the output of one decoder layer, every position that predicts the answer of
//! a query with demonstrations (the id before the answer through its last id; `train::batch::Encoded::decisions`)
//! says which of the two holds ([`crate::world::samples::Sample::copied`]) through a linear read-out trained
//! alongside and discarded (not part of the checkpoint); the term is the mean cross-entropy, times its weight. So
//! the decision is made, explicitly, before the last layers write the answer. The question binding term
//! ([`super::question`]) does the same for the relation a turn asks.

use candle_core::{Device, Tensor, Var};

use crate::error::Result;

/// The read-out `(d, 2)` and where it reads.
pub struct Decision {
    pub layer: usize,
    pub weight: f32,
    pub head: Var,
}

impl Decision {
    pub fn new(layer: usize, weight: f32, d: usize, seed: u64, device: &Device) -> Result<Self> {
        let head = super::binding::read_out(seed, "decision", d, 2, device)?;
        Ok(Self { layer, weight, head })
    }
}

/// The term: `h (b, s, d)` at the read-out's layer; `positions` flat `(b · s)` indices and `labels` 1 where a
/// demonstration gives the answer (`Batch::decision_positions` / `decision_labels`). `None` when no sample has
/// demonstrations.
pub fn loss(t: &Decision, h: &Tensor, positions: &[u32], labels: &[u32]) -> Result<Option<Tensor>> {
    super::question::classify(&t.head, t.weight, h, positions, labels)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use candle_nn::Optimizer;

    use super::*;
    use crate::model::ImageProcessor;
    use crate::train::batch::{encode_sample, make_batch};
    use crate::train::question::read_out_logits;
    use crate::train::test_support::{smoke_weights, Probed};
    use crate::train::{loss, loss_with, world_config_json, Terms, Trainable, WORLD_PREPROCESSOR};
    use crate::world::context::{follow_split, ignore_split, ContextShares};
    use crate::world::rng::Rng;
    use crate::world::samples::training_sample_eased;
    use crate::world::{tokenizer, World};

    #[test]
    fn labels_say_whether_a_demonstration_gives_the_answer() {
        let w = World::generate(0);
        let tok = tokenizer::build(&w).unwrap();
        // The evaluation splits know their answer: followed, or the world's.
        for (s, copied) in
            follow_split(&w, 20).into_iter().map(|s| (s, 1)).chain(ignore_split(&w, 20).into_iter().map(|s| (s, 0)))
        {
            let e = encode_sample(&s, &tok, 3).unwrap();
            let (n, a) = (e.ids.len(), tok.encode(s.answer.as_str(), false).unwrap().len());
            assert_eq!(e.decisions, (n - a - 2..n - 1).map(|i| (i, copied)).collect::<Vec<_>>());
        }
        // Training samples: only those with demonstrations are labelled, and both labels occur.
        let mut rng = Rng::new(5);
        let mut seen = [0usize; 2];
        for _ in 0..300 {
            let s = training_sample_eased(&w, [1.0, 0.0, 1.0, 0.0, 0.0, 2.0], 0.0, &ContextShares::shipped(), &mut rng);
            let e = encode_sample(&s, &tok, 3).unwrap();
            assert_eq!(e.decisions.is_empty(), s.context.is_empty());
            if s.copied {
                assert!(s.context.iter().any(|t| t.answer == s.answer), "{s:?}");
            }
            for &(_, l) in &e.decisions {
                seen[l as usize] += 1;
            }
        }
        assert!(seen[0] > 100 && seen[1] > 100, "{seen:?}");
    }

    #[test]
    fn the_term_adds_to_the_loss_and_its_read_out_learns() -> crate::error::Result<()> {
        let w = World::generate(0);
        let tok = tokenizer::build(&w).unwrap();
        let images = ImageProcessor::from_json_str(WORLD_PREPROCESSOR).unwrap();
        let cfg = world_config_json(tok.get_vocab_size(true), 32, 1, 48, 2, 4);
        let t = Trainable::new(&cfg, 0, &Device::Cpu)?;
        let samples: Vec<_> = follow_split(&w, 3).into_iter().chain(ignore_split(&w, 3)).collect();
        let batch = make_batch(&samples, &tok, &images, t.config.image_seq_length, 0.0, &Device::Cpu)?;
        assert!(batch.decision_labels.contains(&0) && batch.decision_labels.contains(&1));
        let d = Decision::new(1, 1.0, 48, 0, &Device::Cpu)?;
        let terms = Terms { decision: Some(&d), ..Terms::default() };
        let plain = loss(&t.model, &batch, true)?.to_scalar::<f32>()?;
        let term = || -> crate::error::Result<f32> {
            Ok(loss_with(&t.model, &batch, true, terms)?.to_scalar::<f32>()? - plain)
        };
        let before = term()?;
        // Two classes: an untrained read-out costs about ln 2.
        assert!(before > 0.3, "{plain} {before}");
        let mut opt = candle_nn::AdamW::new_lr(vec![d.head.clone()], 0.05)?;
        for _ in 0..60 {
            opt.backward_step(&loss_with(&t.model, &batch, true, terms)?)?;
        }
        let after = term()?;
        assert!(after < before * 0.7, "{before} {after}");
        Ok(())
    }

    #[test]
    fn the_trainer_uses_the_term() -> crate::error::Result<()> {
        let weights = |w: f32| smoke_weights(|r| (r.decision_weight, r.decision_layer) = (w, 0));
        let diff = (weights(1.0)? - weights(0.0)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff > 1e-6, "the decision term changed no weight ({diff})");
        Ok(())
    }

    /// How well a linear read-out tells, at the id before the query's answer, whether a demonstration gives the
    /// answer (copied) or the world does (a diagnostic for issue 14's `context_ignore`; ignored like
    /// `train::question`'s probe: `cargo test -p unike-core --release --lib -- --ignored --nocapture probe_relevance`,
    /// `UNIKE_PROBE_MODEL=DIR`). Samples without demonstrations are left out.
    #[test]
    #[ignore]
    fn probe_relevance() -> crate::error::Result<()> {
        let probed = Probed::load()?;
        let (w, tok, images, t) = (&probed.world, &probed.tok, &probed.images, &probed.t);
        let layers = t.config.text.num_hidden_layers;
        let d = t.config.text.hidden_size;
        let mut rng = Rng::new(22);
        // A batch of 16 in-context samples, the flat position of the id before each query's answer and its label
        // (1: the answer is a demonstration's).
        let batch = |rng: &mut Rng| -> crate::error::Result<(crate::train::batch::Batch, Vec<u32>, Vec<u32>)> {
            let mut s = Vec::new();
            while s.len() < 16 {
                let x = training_sample_eased(w, [1.0, 0.0, 0.0, 0.0, 0.0, 3.0], 0.0, &ContextShares::shipped(), rng);
                if !x.context.is_empty() {
                    s.push(x);
                }
            }
            let b = make_batch(&s, tok, images, t.config.image_seq_length, 0.0, &Device::Cpu)?;
            // Each query's labelled positions are consecutive: keep the first of each run.
            let (mut pos, mut lab) = (Vec::new(), Vec::new());
            for (i, (&p, &y)) in b.decision_positions.iter().zip(&b.decision_labels).enumerate() {
                if i == 0 || b.decision_positions[i - 1] + 1 != p {
                    pos.push(p);
                    lab.push(y);
                }
            }
            Ok((b, pos, lab))
        };
        let heads: Vec<Var> = (0..layers)
            .map(|l| crate::train::binding::read_out(l as u64, "relevance-probe", d, 2, &Device::Cpu))
            .collect::<Result<_>>()?;
        let mut opts: Vec<_> = heads
            .iter()
            .map(|h| candle_nn::AdamW::new_lr(vec![h.clone()], 0.01))
            .collect::<candle_core::Result<_>>()?;
        for _ in 0..200 {
            let (b, pos, lab) = batch(&mut rng)?;
            for (l, h) in probed.hidden(&b)?.iter().enumerate() {
                if let Some(term) = crate::train::question::classify(&heads[l], 1.0, h, &pos, &lab)? {
                    opts[l].backward_step(&term)?;
                }
            }
        }
        let (mut right, mut count) = (vec![[0usize; 2]; layers], [0usize; 2]);
        for _ in 0..8 {
            let (b, pos, lab) = batch(&mut rng)?;
            for &y in &lab {
                count[y as usize] += 1;
            }
            for (l, h) in probed.hidden(&b)?.iter().enumerate() {
                let pred = read_out_logits(&heads[l], h, &pos)?.argmax(1)?.to_vec1::<u32>()?;
                for (p, y) in pred.iter().zip(&lab) {
                    right[l][*y as usize] += (p == y) as usize;
                }
            }
        }
        for (l, r) in right.iter().enumerate() {
            let acc = |k: usize| r[k] as f32 / count[k].max(1) as f32;
            println!(
                "layer {l}: world's answer {:.3} ({}), a demonstration's {:.3} ({})",
                acc(0),
                count[0],
                acc(1),
                count[1]
            );
        }
        Ok(())
    }
}
