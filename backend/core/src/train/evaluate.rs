//! Evaluation of a world model: exact match of greedy answers per split (`unike eval-base`), the behaviour on facts
//! it never learned, and the cheap teacher-forced version the training curve uses.

use std::collections::BTreeMap;

use candle_core::{Device, D};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::batch::make_batch;
use crate::error::Result;
use crate::hooks::Hooks;
use crate::model::{GenerateOptions, ImageProcessor, Llava, Pixels, Processor, VisionLanguageModel};
use crate::world::samples::{eval_split, Sample, Split};
use crate::world::World;

/// Score of one split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitScore {
    /// Samples evaluated.
    pub n: usize,
    /// Fraction answered exactly (the whole answer, then end of sequence).
    pub exact_match: f32,
    /// Mean fraction of reference words reproduced at their position (`/ max(len_ref, len_answer)`).
    pub token_accuracy: f32,
}

/// How the model answers facts it was never taught.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnknownReport {
    pub n: usize,
    /// Fraction with a non-empty answer.
    pub answered: f32,
    /// Fraction answered with the world's (never trained) answer: chance level is expected.
    pub exact_match: f32,
    /// Mean probability of the first answer token (confidence).
    pub mean_confidence: f32,
    /// A few (question, world answer, model answer) triplets.
    pub examples: Vec<[String; 3]>,
}

/// What `unike eval-base` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub splits: BTreeMap<String, SplitScore>,
    pub unknown_facts: UnknownReport,
}

/// Quality floors of the shipped default model (issues Substrate II and Fidelity I), per split name, on the exact
/// match of greedy answers.
pub const FLOORS: [(&str, f32); 7] = [
    ("facts_seen", 0.95),
    ("renderings_unseen", 0.90),
    ("paraphrases_heldout", 0.90),
    ("text_facts", 0.95),
    ("captions", 0.90),
    ("context_follow", 0.90),
    ("context_ignore", 0.90),
];

/// Floors of [`FLOORS`] the shipped default model does not meet yet (issue 14 stays open on them; the README's
/// "The default model" gives the measured figures and what was tried). `unike eval-base --check` still fails on
/// them; only the repository's own test of the shipped model lists them as known.
pub const KNOWN_SHORTFALLS: [&str; 1] = ["context_ignore"];

fn word_accuracy(reference: &str, answer: &str) -> f32 {
    let (r, a): (Vec<&str>, Vec<&str>) = (reference.split_whitespace().collect(), answer.split_whitespace().collect());
    let n = r.len().max(a.len()).max(1);
    r.iter().zip(&a).filter(|(x, y)| x == y).count() as f32 / n as f32
}

/// One greedy answer with the probability of its first token.
pub struct Answered {
    pub answer: String,
    pub first_prob: f32,
}

/// Greedy answer to `sample` through the checkpoint's own processor and template.
pub fn answer(model: &Llava, processor: &Processor, eos: &[u32], sample: &Sample) -> Result<Answered> {
    answer_with(model, processor, eos, sample, &Hooks::none())
}

/// Greedy answer to `sample` with `hooks` applied (an edited model).
pub fn answer_with(
    model: &Llava,
    processor: &Processor,
    eos: &[u32],
    sample: &Sample,
    hooks: &Hooks,
) -> Result<Answered> {
    let device = model.device();
    let turns: Vec<_> = sample.context.iter().map(|t| t.text()).collect();
    let prompt = processor.context_prompt(&turns, &sample.question, sample.image.is_some());
    let pixels: Vec<_> =
        sample.images().map(|img| processor.image_processor().preprocess(img, device)).collect::<Result<_>>()?;
    let n_images = pixels.len();
    let pixels = if pixels.is_empty() { None } else { Some(candle_core::Tensor::stack(&pixels, 0)?) };
    let ids = processor.encode(&prompt, n_images)?;
    let opts = GenerateOptions { max_new_tokens: 24, eos_token_ids: eos.to_vec() };
    let pixels = pixels.map(Pixels::fixed);
    let gen = model.generate(&ids, pixels.as_ref(), hooks, &opts)?;
    let logits = &gen.first_logits;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    Ok(Answered { answer: processor.decode(&gen.tokens)?.trim().to_string(), first_prob: 1.0 / z })
}

/// Greedy evaluation of every split (`n` samples each; text facts: all of them) and of the unknown facts.
pub fn eval_base(model: &Llava, processor: &Processor, eos: &[u32], world: &World, n: usize) -> Result<EvalReport> {
    let mut splits = BTreeMap::new();
    for split in Split::ALL.into_iter().filter(|s| *s != Split::Unknown) {
        let samples = eval_split(world, split, n);
        let (mut exact, mut words) = (0usize, 0f32);
        for s in &samples {
            let a = answer(model, processor, eos, s)?;
            exact += usize::from(a.answer == s.answer);
            words += word_accuracy(&s.answer, &a.answer);
        }
        let m = samples.len().max(1) as f32;
        splits.insert(
            split.name().to_string(),
            SplitScore { n: samples.len(), exact_match: exact as f32 / m, token_accuracy: words / m },
        );
    }
    let samples = eval_split(world, Split::Unknown, n);
    let (mut answered, mut exact, mut conf, mut examples) = (0usize, 0usize, 0f32, Vec::new());
    for s in &samples {
        let a = answer(model, processor, eos, s)?;
        answered += usize::from(!a.answer.is_empty());
        exact += usize::from(a.answer == s.answer);
        conf += a.first_prob;
        if examples.len() < 5 {
            examples.push([s.question.clone(), s.answer.clone(), a.answer]);
        }
    }
    let m = samples.len().max(1) as f32;
    let unknown_facts = UnknownReport {
        n: samples.len(),
        answered: answered as f32 / m,
        exact_match: exact as f32 / m,
        mean_confidence: conf / m,
        examples,
    };
    Ok(EvalReport { splits, unknown_facts })
}

/// Teacher-forced exact match and token accuracy of `samples` (batched, `chunk` at a time). A sample counts as exact
/// when every answer token and the final `</s>` is the argmax, which is when greedy decoding reproduces it.
pub fn teacher_forced(
    model: &Llava,
    tokenizer: &Tokenizer,
    images: &ImageProcessor,
    samples: &[Sample],
    chunk: usize,
    device: &Device,
) -> Result<SplitScore> {
    let (mut exact, mut right, mut total) = (0usize, 0usize, 0usize);
    for part in samples.chunks(chunk.max(1)) {
        let batch = make_batch(part, tokenizer, images, model.config().image_seq_length, 0.0, device)?;
        let logits = model.forward(&batch.ids, batch.pixels.as_ref(), &Hooks::none())?;
        let (b, s, v) = logits.dims3()?;
        let pred = logits.reshape((b * s, v))?.index_select(&batch.positions, 0)?.argmax(D::Minus1)?;
        let (pred, want) = (pred.to_vec1::<u32>()?, batch.targets.to_vec1::<u32>()?);
        let mut at = 0;
        for &len in &batch.lengths {
            let ok = (at..at + len).filter(|&i| pred[i] == want[i]).count();
            exact += usize::from(ok == len);
            right += ok;
            total += len;
            at += len;
        }
    }
    Ok(SplitScore {
        n: samples.len(),
        exact_match: exact as f32 / samples.len().max(1) as f32,
        token_accuracy: right as f32 / total.max(1) as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_accuracy_counts_positions() {
        assert_eq!(word_accuracy("a red circle", "a red circle"), 1.0);
        assert!((word_accuracy("a red circle", "a blue circle") - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(word_accuracy("top left", ""), 0.0);
        assert!((word_accuracy("a", "a b") - 0.5).abs() < 1e-6);
    }
}
