//! The question binding term of `train-base` (issue 14): a demonstration about the query's own character with
//! *another* question must not move the query's answer, so the positions the copy circuit reads must say which
//! question their turn answers. At the output of one decoder layer, every position that predicts a turn's answer
//! (the id before the answer through its last id; `train::batch::Encoded::relations`) classifies the relation its
//! turn's question asks, through a linear read-out trained alongside and discarded (not part of the checkpoint);
//! the term is the mean cross-entropy, times its weight. The image binding term ([`super::binding`]) does the same
//! for the turn's image.

use candle_core::{Device, Tensor, Var};

use crate::error::Result;
use crate::world::Relation;

/// The read-out `(d, relations)` and where it reads.
pub struct QuestionBinding {
    pub layer: usize,
    pub weight: f32,
    pub head: Var,
}

impl QuestionBinding {
    pub fn new(layer: usize, weight: f32, d: usize, seed: u64, device: &Device) -> Result<Self> {
        let head = super::binding::read_out(seed, "question-binding", d, Relation::ALL.len(), device)?;
        Ok(Self { layer, weight, head })
    }
}

/// The term: `h (b, s, d)` at the read-out's layer; `positions` flat `(b · s)` indices and `labels` their relation
/// indices (`Batch::relation_positions` / `relation_labels`). `None` when no position is labelled.
pub fn loss(q: &QuestionBinding, h: &Tensor, positions: &[u32], labels: &[u32]) -> Result<Option<Tensor>> {
    classify(&q.head, q.weight, h, positions, labels)
}

/// A classifying read-out's term: the rows of `h (b, s, d)` at the flat `(b · s)` `positions` go through
/// `head (d, k)`; mean cross-entropy against `labels` (each below k), times `weight`. `None` without positions.
pub(crate) fn classify(
    head: &Var,
    weight: f32,
    h: &Tensor,
    positions: &[u32],
    labels: &[u32],
) -> Result<Option<Tensor>> {
    if positions.is_empty() {
        return Ok(None);
    }
    let logits = read_out_logits(head, h, positions)?;
    let nll = super::nll(&logits, &Tensor::from_vec(labels.to_vec(), labels.len(), h.device())?)?;
    Ok(Some((nll.mean_all()? * weight as f64)?))
}

/// The read-out's logits `(m, k)`: the rows of `h (b, s, d)` at the `m` flat `(b · s)` `positions`, through
/// `head (d, k)`.
pub(crate) fn read_out_logits(head: &Var, h: &Tensor, positions: &[u32]) -> Result<Tensor> {
    Ok(rows_at(h, positions)?.matmul(head.as_tensor())?)
}

/// The rows `(m, d)` of `h (b, s, d)` at the `m` flat `(b · s)` `positions`.
pub(crate) fn rows_at(h: &Tensor, positions: &[u32]) -> Result<Tensor> {
    let (b, s, d) = h.dims3()?;
    let idx = Tensor::from_vec(positions.to_vec(), positions.len(), h.device())?;
    Ok(h.reshape((b * s, d))?.index_select(&idx, 0)?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use candle_nn::Optimizer;

    use super::*;
    use crate::model::ImageProcessor;
    use crate::train::batch::{encode_sample, make_batch};
    use crate::train::test_support::{smoke_weights, Probed};
    use crate::train::{loss, loss_with, world_config_json, Terms, Trainable, WORLD_PREPROCESSOR};
    use crate::world::context::ContextShares;
    use crate::world::rng::Rng;
    use crate::world::samples::training_sample_eased;
    use crate::world::{tokenizer, World};

    #[test]
    fn labels_cover_each_relation_turn_from_the_id_before_its_answer() {
        let w = World::generate(0);
        let tok = tokenizer::build(&w).unwrap();
        let mut rng = Rng::new(4);
        let (mut demo_labels, mut queries) = (0, 0);
        for _ in 0..200 {
            let s = training_sample_eased(&w, [1.0, 0.0, 0.0, 0.0, 0.0, 2.0], 0.0, &ContextShares::shipped(), &mut rng);
            let e = encode_sample(&s, &tok, 3).unwrap();
            let len = |t: &str| tok.encode(t, false).unwrap().len();
            // The query: the id before its answer through its last answer id, labelled with its relation.
            let n = e.ids.len();
            let a = len(&s.answer);
            let query: Vec<(usize, u32)> = e.relations.iter().copied().filter(|&(i, _)| i >= n - a - 2).collect();
            match Relation::of_paraphrase(&s.question) {
                Some(r) => {
                    assert_eq!(query, (n - a - 2..n - 1).map(|i| (i, r.index() as u32)).collect::<Vec<_>>());
                    queries += 1;
                }
                None => assert!(query.is_empty()),
            }
            // Each demonstration asking a relation: its answer ids and `</s>` are predicted from labelled ids.
            let want: usize =
                s.context.iter().filter_map(|t| Relation::of_paraphrase(&t.question).map(|_| len(&t.answer) + 1)).sum();
            assert_eq!(e.relations.len() - query.len(), want);
            for (t, end) in s.context.iter().zip((0..n).filter(|&i| e.ids[i] == tokenizer::EOS)) {
                if let Some(r) = Relation::of_paraphrase(&t.question) {
                    assert!(e.relations.contains(&(end - 1, r.index() as u32)));
                    assert!(e.relations.contains(&(end - len(&t.answer) - 1, r.index() as u32)));
                }
            }
            demo_labels += want;
        }
        assert!(demo_labels > 200 && queries > 50, "{demo_labels} {queries}");
    }

    #[test]
    fn the_term_adds_to_the_loss_and_its_read_out_learns() -> crate::error::Result<()> {
        let w = World::generate(0);
        let tok = tokenizer::build(&w).unwrap();
        let images = ImageProcessor::from_json_str(WORLD_PREPROCESSOR).unwrap();
        let cfg = world_config_json(tok.get_vocab_size(true), 32, 1, 48, 2, 4);
        let t = Trainable::new(&cfg, 0, &Device::Cpu)?;
        let mut rng = Rng::new(9);
        let samples: Vec<_> = (0..6)
            .map(|_| {
                training_sample_eased(&w, [1.0, 0.0, 0.0, 0.0, 0.0, 1.0], 0.0, &ContextShares::shipped(), &mut rng)
            })
            .collect();
        let seq = t.config.image_seq_length;
        let batch = make_batch(&samples, &tok, &images, seq, 0.0, &Device::Cpu)?;
        assert!(!batch.relation_positions.is_empty());
        let q = QuestionBinding::new(1, 1.0, 48, 0, &Device::Cpu)?;
        let terms = Terms { question: Some(&q), ..Terms::default() };
        let plain = loss(&t.model, &batch, true)?.to_scalar::<f32>()?;
        let with = loss_with(&t.model, &batch, true, terms)?.to_scalar::<f32>()?;
        // Five relations: an untrained read-out costs about ln 5.
        assert!(with - plain > 0.5, "{plain} {with}");
        // The read-out alone learns to name the relations from the layer's output.
        let mut opt = candle_nn::AdamW::new_lr(vec![q.head.clone()], 0.05)?;
        let term = |_: ()| -> crate::error::Result<f32> {
            Ok(loss_with(&t.model, &batch, true, terms)?.to_scalar::<f32>()? - plain)
        };
        let before = term(())?;
        for _ in 0..60 {
            opt.backward_step(&loss_with(&t.model, &batch, true, terms)?)?;
        }
        let after = term(())?;
        assert!(after < before * 0.7, "{before} {after}");
        assert_eq!(batch.relation_labels.len(), batch.relation_positions.len());
        Ok(())
    }

    #[test]
    fn the_trainer_uses_the_term() -> crate::error::Result<()> {
        let weights = |w: f32| smoke_weights(|r| (r.question_binding_weight, r.question_binding_layer) = (w, 0));
        let diff = (weights(1.0)? - weights(0.0)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff > 1e-6, "the question binding term changed no weight ({diff})");
        Ok(())
    }

    /// How well a linear read-out names the relation of a turn at each decoder layer of the shipped model (a
    /// diagnostic for issue 14; `cargo test -p unike-core --release -- --ignored --nocapture probe_shipped`; another
    /// checkpoint of the world of seed 0 with `UNIKE_PROBE_MODEL=DIR`).
    #[test]
    #[ignore]
    fn probe_shipped_model() -> crate::error::Result<()> {
        let probed = Probed::load()?;
        let (w, tok, images, t) = (&probed.world, &probed.tok, &probed.images, &probed.t);
        let layers = t.config.text.num_hidden_layers;
        let d = t.config.text.hidden_size;
        let mut rng = Rng::new(21);
        let batch = |rng: &mut Rng| {
            let s: Vec<_> = (0..16)
                .map(|_| training_sample_eased(w, [1.0, 0.0, 0.0, 0.0, 0.0, 3.0], 0.0, &ContextShares::shipped(), rng))
                .collect();
            make_batch(&s, tok, images, t.config.image_seq_length, 0.0, &Device::Cpu)
        };
        let heads: Vec<QuestionBinding> =
            (0..layers).map(|l| QuestionBinding::new(l, 1.0, d, l as u64, &Device::Cpu)).collect::<Result<_>>()?;
        let mut opts: Vec<_> = heads
            .iter()
            .map(|h| candle_nn::AdamW::new_lr(vec![h.head.clone()], 0.01))
            .collect::<candle_core::Result<_>>()?;
        for _ in 0..150 {
            let b = batch(&mut rng)?;
            for (l, h) in probed.hidden(&b)?.iter().enumerate() {
                if let Some(term) = super::loss(&heads[l], h, &b.relation_positions, &b.relation_labels)? {
                    opts[l].backward_step(&term)?;
                }
            }
        }
        let b = batch(&mut rng)?;
        for (l, h) in probed.hidden(&b)?.iter().enumerate() {
            let m = b.relation_positions.len();
            let pred = read_out_logits(&heads[l].head, h, &b.relation_positions)?.argmax(1)?.to_vec1::<u32>()?;
            let acc = pred.iter().zip(&b.relation_labels).filter(|(p, l)| p == l).count() as f32 / m as f32;
            let ce =
                super::loss(&heads[l], h, &b.relation_positions, &b.relation_labels)?.unwrap().to_scalar::<f32>()?;
            println!("layer {l}: accuracy {acc:.3} cross-entropy {ce:.3} over {m} positions");
        }
        Ok(())
    }
}
