//! Turning world samples into teacher-forced training batches of the LLaVA model.

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::model::processor::{context_prompt_in, LLAVA_15_TEMPLATE, TURN_END};
use crate::model::ImageProcessor;
use crate::world::rng::Rng;
use crate::world::samples::Sample;
use crate::world::tokenizer::{BOS, EOS, IMAGE, PAD, SPECIALS};
use crate::world::Relation;

/// A right-padded batch with the positions whose next token is supervised.
#[derive(Debug)]
pub struct Batch {
    /// `(b, s)` u32 token ids (`<image>` runs expanded).
    pub ids: Tensor,
    /// `(n, 3, H, W)` pixel values of the samples that have an image, in sample order.
    pub pixels: Option<Tensor>,
    /// `(m)` u32 indices into the flattened `(b · s)` positions whose logits predict a target.
    pub positions: Tensor,
    /// `(m)` u32 target ids (the answer tokens and `</s>`).
    pub targets: Tensor,
    /// `(m)` f32 weight of each target (answers 1, the language-model term `lm_weight`).
    pub weights: Tensor,
    /// Sum of `weights`.
    pub weight_sum: f64,
    /// Number of supervised positions of each sample, in order (they sum to `m`); with `lm_weight = 0` they are
    /// the answers', the query's last.
    pub lengths: Vec<usize>,
    /// Flat `(b · s)` positions of the question binding term ([`Encoded::relations`]) and the relation index of
    /// each (`world::Relation::index`); empty when no turn asks an entity relation.
    pub relation_positions: Vec<u32>,
    pub relation_labels: Vec<u32>,
    /// Flat `(b · s)` positions of the decision term ([`Encoded::decisions`]) and their labels (1: a demonstration
    /// gives the query's answer); empty when no sample has demonstrations.
    pub decision_positions: Vec<u32>,
    pub decision_labels: Vec<u32>,
    /// The invariance term's pass of the queries alone ([`super::invariance`]); set by [`make_grouped`] when asked.
    pub clean: Option<Box<super::invariance::CleanPass>>,
}

/// Token ids of `sample` in the llava-1.5 template (its demonstrations first, `<image>` runs expanded), and the
/// indices of the supervised ids: the query's answer ids and `</s>` (the last ids), preceded by the answer ids and
/// `</s>` of every demonstration marked [`Turn::supervised`](crate::world::context::Turn) (in order).
pub fn encode_sample(sample: &Sample, tokenizer: &Tokenizer, image_seq_length: usize) -> Result<Encoded> {
    let turns: Vec<_> = sample.context.iter().map(|t| t.text()).collect();
    let mut prompt = context_prompt_in(LLAVA_15_TEMPLATE, &turns, &sample.question, sample.image.is_some());
    if sample.bos_per_turn {
        prompt = prompt.replace(TURN_END, &format!("{TURN_END}<s>"));
    }
    let prompt = prompt.replace("<image>", &"<image>".repeat(image_seq_length));
    let p = tokenizer.encode(prompt.as_str(), true).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let a = tokenizer.encode(sample.answer.as_str(), false).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut ids = p.get_ids().to_vec();
    let mut targets = Vec::new();
    let mut lm = Vec::new();
    let mut relations = Vec::new();
    if !sample.context.is_empty() {
        // Turn k ends at the k-th `</s>` of the prompt; its answer ids are the ones just before it.
        let ends: Vec<usize> = ids.iter().enumerate().filter(|(_, &id)| id == EOS).map(|(i, _)| i).collect();
        let mut answers = vec![false; ids.len()];
        for (turn, &end) in sample.context.iter().zip(&ends) {
            let n = tokenizer.encode(turn.answer.trim(), false).map_err(|e| Error::Tokenizer(e.to_string()))?.len();
            let span = end.saturating_sub(n).max(1)..=end;
            for i in span.clone() {
                answers[i] = true;
            }
            if let Some(r) = Relation::of_paraphrase(&turn.question) {
                relations.extend(span.clone().map(|t| (t - 1, r.index() as u32)));
            }
            if turn.supervised {
                targets.extend(span);
            }
        }
        // The language-model term: every other text id of the prompt (never an image id, never an answer).
        lm = (1..ids.len()).filter(|&i| !answers[i] && ids[i] != IMAGE).collect();
    }
    let query = ids.len()..ids.len() + a.len() + 1;
    if let Some(r) = Relation::of_paraphrase(&sample.question) {
        relations.extend(query.clone().map(|t| (t - 1, r.index() as u32)));
    }
    let decisions = match sample.context.is_empty() {
        true => vec![],
        false => query.clone().map(|t| (t - 1, u32::from(sample.copied))).collect(),
    };
    targets.extend(query);
    ids.extend_from_slice(a.get_ids());
    ids.push(EOS);
    Ok(Encoded { ids, targets, lm, relations, decisions })
}

/// A sample's ids and what training predicts of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Indices of the supervised ids: answers (the query's last), see [`encode_sample`].
    pub targets: Vec<usize>,
    /// Indices of the prompt's other text ids (in-context samples only): the language-model term of training,
    /// weighted by [`make_batch`]'s `lm_weight`. The answers of demonstrations that are not supervised (a
    /// counterfactual is not predictable) and the image ids are never among them.
    pub lm: Vec<usize>,
    /// `(index, relation)`: the ids whose hidden states predict a turn's answer ids and `</s>` (the id before the
    /// answer through its last id), for every turn whose question is an entity relation's paraphrase (a
    /// demonstration's, in either form, and the query's), with that relation's index. The question binding term
    /// (`train::question`) reads them.
    pub relations: Vec<(usize, u32)>,
    /// `(index, copied)`: for a sample with demonstrations, the ids whose hidden states predict the query's answer ids
    /// and `</s>`, with 1 when a demonstration gives that answer ([`Sample::copied`]). The decision term
    /// (`train::decision`) reads them.
    pub decisions: Vec<(usize, u32)>,
}

/// Builds a batch: prompt ids, then answer ids and `</s>`; the answer and `</s>` are supervised (and those of
/// supervised demonstrations, see [`encode_sample`]).
/// With `lm_weight > 0`, the prompt ids of in-context samples ([`Encoded::lm`]) are predicted too, each weighing
/// `lm_weight` against an answer id's 1 (as a language model is trained on text; repeated questions and answers in
/// a context are what teach it to copy). Evaluation uses 0.
pub fn make_batch(
    samples: &[Sample],
    tokenizer: &Tokenizer,
    images: &ImageProcessor,
    image_seq_length: usize,
    lm_weight: f32,
    device: &Device,
) -> Result<Batch> {
    let mut rows = Vec::with_capacity(samples.len());
    let mut pixels = Vec::new();
    for s in samples {
        for img in s.images() {
            pixels.push(images.preprocess(img, device)?);
        }
        rows.push(encode_sample(s, tokenizer, image_seq_length)?);
    }
    let len = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
    let mut flat = Vec::with_capacity(rows.len() * len);
    let (mut positions, mut targets, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    let mut lengths = Vec::with_capacity(rows.len());
    let (mut relation_positions, mut relation_labels) = (Vec::new(), Vec::new());
    let (mut decision_positions, mut decision_labels) = (Vec::new(), Vec::new());
    for (b, r) in rows.iter().enumerate() {
        for &(i, label) in &r.relations {
            relation_positions.push((b * len + i) as u32);
            relation_labels.push(label);
        }
        for &(i, label) in &r.decisions {
            decision_positions.push((b * len + i) as u32);
            decision_labels.push(label);
        }
        let lm: &[usize] = if lm_weight > 0.0 { &r.lm } else { &[] };
        for (&t, w) in r.targets.iter().map(|t| (t, 1.0)).chain(lm.iter().map(|t| (t, lm_weight))) {
            positions.push((b * len + t - 1) as u32);
            targets.push(r.ids[t]);
            weights.push(w);
        }
        lengths.push(r.targets.len() + lm.len());
        flat.extend_from_slice(&r.ids);
        flat.extend(std::iter::repeat_n(PAD, len - r.ids.len()));
    }
    let weight_sum = weights.iter().map(|&w| w as f64).sum();
    let pixels = if pixels.is_empty() { None } else { Some(Tensor::stack(&pixels, 0)?) };
    Ok(Batch {
        ids: Tensor::from_vec(flat, (rows.len(), len), device)?,
        pixels,
        positions: Tensor::new(positions.as_slice(), device)?,
        targets: Tensor::new(targets.as_slice(), device)?,
        weights: Tensor::new(weights.as_slice(), device)?,
        weight_sum,
        lengths,
        relation_positions,
        relation_labels,
        decision_positions,
        decision_labels,
        clean: None,
    })
}

/// A batch of the induction stage: `b` rows of `<s>`, a string of `half` random word ids (never a special token),
/// and the same string again; the repetition's ids are the targets (a language model learning to copy, as in the
/// induction-head experiments of Olsson et al., 2022).
pub fn induction_batch(tokenizer: &Tokenizer, b: usize, half: usize, rng: &mut Rng, device: &Device) -> Result<Batch> {
    let vocab = tokenizer.get_vocab_size(true) as u32;
    let first = SPECIALS.len() as u32;
    if vocab <= first {
        return Err(Error::Invalid("the tokenizer has no words".into()));
    }
    let len = 2 * half + 1;
    let (mut ids, mut positions, mut targets) = (Vec::with_capacity(b * len), Vec::new(), Vec::new());
    for row in 0..b {
        let seq: Vec<u32> = (0..half).map(|_| first + rng.below((vocab - first) as usize) as u32).collect();
        ids.push(BOS);
        ids.extend_from_slice(&seq);
        ids.extend_from_slice(&seq);
        for t in half + 2..len {
            positions.push((row * len + t - 1) as u32);
            targets.push(ids[row * len + t]);
        }
    }
    let m = targets.len();
    Ok(Batch {
        ids: Tensor::from_vec(ids, (b, len), device)?,
        pixels: None,
        positions: Tensor::new(positions.as_slice(), device)?,
        targets: Tensor::new(targets.as_slice(), device)?,
        weights: Tensor::ones(m, candle_core::DType::F32, device)?,
        weight_sum: m as f64,
        lengths: vec![half - 1; b],
        relation_positions: vec![],
        relation_labels: vec![],
        decision_positions: vec![],
        decision_labels: vec![],
        clean: None,
    })
}

/// The samples split into at most `groups` batches of similar length (sorted by token count, stable), so that short
/// questions are not padded to the length of a long in-context sample. Deterministic. With `clean`, each batch
/// carries the invariance term's pass of its ignoring queries alone ([`Batch::clean`]).
#[allow(clippy::too_many_arguments)]
pub fn make_grouped(
    samples: &[Sample],
    tokenizer: &Tokenizer,
    images: &ImageProcessor,
    image_seq_length: usize,
    groups: usize,
    lm_weight: f32,
    clean: bool,
    device: &Device,
) -> Result<Vec<Batch>> {
    let mut order: Vec<(usize, usize)> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| Ok((encode_sample(s, tokenizer, image_seq_length)?.ids.len(), i)))
        .collect::<Result<_>>()?;
    order.sort();
    let size = samples.len().div_ceil(groups.max(1)).max(1);
    order
        .chunks(size)
        .map(|part| {
            let picked: Vec<Sample> = part.iter().map(|&(_, i)| samples[i].clone()).collect();
            let mut batch = make_batch(&picked, tokenizer, images, image_seq_length, lm_weight, device)?;
            if clean {
                batch.clean =
                    super::invariance::clean_pass(&picked, &batch, tokenizer, images, image_seq_length, device)?
                        .map(Box::new);
            }
            Ok(batch)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::samples::training_sample_eased;
    use crate::world::{tokenizer, World};

    #[test]
    fn supervision_covers_answers_and_the_language_model_term_skips_counterfactuals() {
        let w = World::generate(0);
        let tok = tokenizer::build(&w).unwrap();
        let mut rng = Rng::new(11);
        let (mut demo_targets, mut lm_total) = (0, 0);
        for _ in 0..200 {
            let s = training_sample_eased(&w, [0.0, 0.0, 0.0, 0.0, 0.0, 1.0], 0.0, &Default::default(), &mut rng);
            let e = encode_sample(&s, &tok, 3).unwrap();
            let answer = tok.encode(s.answer.as_str(), false).unwrap().len();
            // The query's answer and `</s>` are the last targets, and they end the ids.
            let n = e.targets.len();
            assert_eq!(e.targets[n - answer - 1..], (e.ids.len() - answer - 1..e.ids.len()).collect::<Vec<_>>()[..]);
            // Every supervised demonstration contributes its answer ids and its `</s>`.
            let want: usize = s
                .context
                .iter()
                .filter(|t| t.supervised)
                .map(|t| tok.encode(t.answer.as_str(), false).unwrap().len() + 1)
                .sum();
            assert_eq!(n - answer - 1, want);
            demo_targets += want;
            // The language-model term never predicts an image id or a demonstration's answer.
            assert!(e.lm.iter().all(|&i| e.ids[i] != IMAGE && !e.targets.contains(&i)));
            let cf: Vec<u32> = s
                .context
                .iter()
                .filter(|t| !t.supervised)
                .flat_map(|t| tok.encode(t.answer.as_str(), false).unwrap().get_ids().to_vec())
                .collect();
            let ends: Vec<usize> = (0..e.ids.len()).filter(|&i| e.ids[i] == EOS).collect();
            for (t, &end) in s.context.iter().zip(&ends) {
                if !t.supervised {
                    let k = tok.encode(t.answer.as_str(), false).unwrap().len();
                    assert!((end - k..=end).all(|i| !e.lm.contains(&i)), "an unsupervised answer is in the lm term");
                }
            }
            assert!(cf.len() <= e.ids.len());
            lm_total += e.lm.len();
        }
        assert!(demo_targets > 100 && lm_total > 1000, "{demo_targets} {lm_total}");
        // Without the language-model term a batch supervises only the answers.
        let s = training_sample_eased(&w, [0.0, 0.0, 0.0, 0.0, 0.0, 1.0], 0.0, &Default::default(), &mut rng);
        let images = crate::model::ImageProcessor::from_json_str(crate::train::WORLD_PREPROCESSOR).unwrap();
        let e = encode_sample(&s, &tok, 16).unwrap();
        let b0 = make_batch(std::slice::from_ref(&s), &tok, &images, 16, 0.0, &Device::Cpu).unwrap();
        let b1 = make_batch(std::slice::from_ref(&s), &tok, &images, 16, 0.5, &Device::Cpu).unwrap();
        assert_eq!(b0.lengths, vec![e.targets.len()]);
        assert_eq!(b1.lengths, vec![e.targets.len() + e.lm.len()]);
        assert!((b1.weight_sum - (e.targets.len() as f64 + 0.5 * e.lm.len() as f64)).abs() < 1e-6);
    }

    #[test]
    #[ignore]
    fn dump_context_samples() {
        let w = World::generate(0);
        let tok = tokenizer::build(&w).unwrap();
        let mut rng = Rng::new(5);
        for _ in 0..12 {
            let s = training_sample_eased(
                &w,
                [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                0.6,
                &crate::world::context::ContextShares::shipped(),
                &mut rng,
            );
            let e = encode_sample(&s, &tok, 2).unwrap();
            let text = tok.decode(&e.ids, false).unwrap();
            let sup: Vec<String> = e.targets.iter().map(|&i| tok.id_to_token(e.ids[i]).unwrap()).collect();
            let lm: Vec<String> = e.lm.iter().map(|&i| tok.id_to_token(e.ids[i]).unwrap()).collect();
            println!("{text}\n   -> {sup:?}\n   lm {lm:?}\n");
        }
    }
}
