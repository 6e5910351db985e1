//! The tokenized form of a question and an answer, as edit methods optimise and metrics score it: the prompt in the
//! model's template (image tokens expanded), then the answer tokens and end of sequence, teacher-forced. Methods
//! train on every target (answer and end of sequence); the token metrics score the answer tokens only.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};
use crate::hooks::{Capture, Hooks};
use crate::model::route::Routes;
use crate::model::{kernels, Inputs, ModelProcessor, Pixels, VisionLanguageModel};

/// What [`EditSequence::predict_batch`] reads off one sequence's logits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prediction {
    /// Argmax at each target position (answer and end of sequence).
    pub argmax: Vec<u32>,
    /// The requested top-k ids at each answer position (empty when none were requested).
    pub top: Vec<Vec<u32>>,
}

/// A prompt followed by a supervised answer.
#[derive(Debug, Clone)]
pub struct EditSequence {
    /// Prompt ids then answer ids then the end-of-sequence id.
    pub ids: Vec<u32>,
    /// Number of prompt ids.
    pub prompt_len: usize,
    /// The prompt's image, when it has one.
    pub pixels: Option<Pixels>,
}

impl EditSequence {
    /// Tokenizes `question` (in the template, with the image placeholder only when `pixels` is given) and `answer`.
    pub fn new(
        processor: &dyn ModelProcessor,
        question: &str,
        pixels: Option<&Pixels>,
        answer: &str,
        eos: u32,
    ) -> Result<Self> {
        if answer.trim().is_empty() {
            return Err(Error::Invalid("the target answer is empty".into()));
        }
        let prompt = processor.question_prompt(question, pixels.is_some());
        let mut ids = processor.encode(&prompt, pixels)?;
        let prompt_len = ids.len();
        ids.extend(processor.encode_plain(answer.trim())?);
        ids.push(eos);
        Ok(Self { ids, prompt_len, pixels: pixels.cloned() })
    }

    /// Supervised targets: the answer ids and end of sequence.
    pub fn targets(&self) -> &[u32] {
        &self.ids[self.prompt_len..]
    }

    /// The answer ids: the targets without the final end-of-sequence id (for a sequence [`EditSequence::new`] built).
    pub fn answer(&self) -> &[u32] {
        let t = self.targets();
        &t[..t.len().saturating_sub(1)]
    }

    /// Inputs of the whole sequence, image features merged: embeddings `(1, s, d)` and positions.
    pub fn inputs(&self, model: &dyn VisionLanguageModel) -> Result<Inputs> {
        self.inputs_hooked(model, &Hooks::none())
    }

    /// [`EditSequence::inputs`] with `hooks`' changes of the image features (FT on the vision side).
    pub fn inputs_hooked(&self, model: &dyn VisionLanguageModel, hooks: &Hooks) -> Result<Inputs> {
        let input = Tensor::new(self.ids.as_slice(), model.device())?.unsqueeze(0)?;
        model.embed_hooked(&input, self.pixels.as_ref(), hooks)
    }

    /// Logits `(n_targets, vocab)` f32 at the positions predicting each target, with `hooks` applied. Inside a
    /// [`kernels::differentiable`] scope this is differentiable with respect to hook parameters.
    pub fn target_logits(&self, model: &dyn VisionLanguageModel, hooks: &Hooks) -> Result<Tensor> {
        let inputs = self.inputs_hooked(model, hooks)?;
        let hooks = model.routed(hooks, &inputs, self.prompt_len - 1)?;
        let h = model.forward_inputs(&inputs, None, &hooks, &mut Capture::none())?;
        let n = self.ids.len() - self.prompt_len;
        let picked = h.narrow(1, self.prompt_len - 1, n)?;
        Ok(model.logits(&picked)?.squeeze(0)?)
    }

    /// The probability the model gives each target (the answer tokens, then the end of sequence) under `hooks`,
    /// teacher-forced: `softmax(logits)[target]` at each target position (what an edit inspector shows).
    pub fn target_probabilities(&self, model: &dyn VisionLanguageModel, hooks: &Hooks) -> Result<Vec<f32>> {
        let logits = self.target_logits(model, hooks)?.to_dtype(DType::F32)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        let targets = Tensor::new(self.targets(), &Device::Cpu)?.to_device(probs.device())?.unsqueeze(1)?;
        Ok(probs.gather(&targets, 1)?.squeeze(1)?.to_vec1::<f32>()?)
    }

    /// Mean cross-entropy of the answer under `hooks`, differentiable (scalar).
    pub fn loss(&self, model: &dyn VisionLanguageModel, hooks: &Hooks) -> Result<Tensor> {
        let _scope = kernels::differentiable();
        let logits = self.target_logits(model, hooks)?;
        let targets = Tensor::new(self.targets(), &Device::Cpu)?.to_device(logits.device())?;
        Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
    }

    /// Greedy answer to the prompt alone (the answer part of `ids` is ignored) under `hooks`, decoded and trimmed.
    pub fn greedy(
        &self,
        model: &dyn VisionLanguageModel,
        processor: &dyn ModelProcessor,
        hooks: &Hooks,
        eos: &[u32],
    ) -> Result<String> {
        let opts = crate::model::GenerateOptions { max_new_tokens: 24, eos_token_ids: eos.to_vec() };
        let gen = model.generate(&self.ids[..self.prompt_len], self.pixels.as_ref(), hooks, &opts)?;
        Ok(processor.decode(&gen.tokens)?.trim().to_string())
    }

    /// Argmax token at each target position under `hooks` (teacher-forced), `n_targets` ids.
    pub fn argmax(&self, model: &dyn VisionLanguageModel, hooks: &Hooks) -> Result<Vec<u32>> {
        Ok(self.target_logits(model, hooks)?.argmax(D::Minus1)?.to_vec1::<u32>()?)
    }

    /// [`EditSequence::argmax`] of many sequences, `chunk` per forward pass (right-padded batches; a causal mask keeps
    /// real tokens from seeing the padding, so each row equals its own forward pass).
    pub fn argmax_batch(
        model: &dyn VisionLanguageModel,
        seqs: &[&EditSequence],
        hooks: &Hooks,
        chunk: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let asks: Vec<(&EditSequence, usize)> = seqs.iter().map(|s| (*s, 0)).collect();
        Ok(Self::predict_batch(model, &asks, hooks, chunk)?.into_iter().map(|p| p.argmax).collect())
    }

    /// For each `(sequence, k)`: the argmax at each target position and, when `k > 0`, the `k` highest-logit ids
    /// (highest first, [`crate::eval::top_k_ids`]) at each answer position (the end-of-sequence position excluded).
    /// Batched as [`EditSequence::argmax_batch`]: logits `(chunk, s, vocab)` per forward pass. Hooks with a router
    /// are resolved per sequence on its prompt first, and each route's sequences are batched together.
    pub fn predict_batch(
        model: &dyn VisionLanguageModel,
        seqs: &[(&EditSequence, usize)],
        hooks: &Hooks,
        chunk: usize,
    ) -> Result<Vec<Prediction>> {
        if !hooks.routers().is_empty() {
            let mut groups: BTreeMap<Routes, Vec<usize>> = BTreeMap::new();
            for (part, start) in seqs.chunks(chunk.max(1)).zip((0..).step_by(chunk.max(1))) {
                let prompts: Vec<&EditSequence> = part.iter().map(|(s, _)| *s).collect();
                let last: Vec<usize> = prompts.iter().map(|s| s.prompt_len - 1).collect();
                let routes = model.route(hooks, &Self::batch_inputs(model, &prompts, hooks)?, &last)?;
                for (i, r) in routes.into_iter().enumerate() {
                    groups.entry(r).or_default().push(start + i);
                }
            }
            let mut out: Vec<Option<Prediction>> = vec![None; seqs.len()];
            for (routes, idx) in groups {
                let part: Vec<(&EditSequence, usize)> = idx.iter().map(|&i| seqs[i]).collect();
                let preds = Self::predict_batch(model, &part, &hooks.resolve(&routes)?, chunk)?;
                for (i, p) in idx.into_iter().zip(preds) {
                    out[i] = Some(p);
                }
            }
            return out
                .into_iter()
                .map(|p| p.ok_or_else(|| Error::Invalid("a sequence was not routed".into())))
                .collect();
        }
        let mut out = Vec::with_capacity(seqs.len());
        for part in seqs.chunks(chunk.max(1)) {
            let seqs_only: Vec<&EditSequence> = part.iter().map(|(s, _)| *s).collect();
            let inputs = Self::batch_inputs(model, &seqs_only, hooks)?;
            let h = model.forward_inputs(&inputs, None, hooks, &mut Capture::none())?;
            let logits = model.logits(&h)?;
            let top = logits.argmax(D::Minus1)?.to_vec2::<u32>()?;
            for (row, (i, (s, k))) in top.into_iter().zip(part.iter().enumerate()) {
                let argmax = row[s.prompt_len - 1..s.ids.len() - 1].to_vec();
                let n = s.answer().len();
                let top = if *k > 0 && n > 0 {
                    let rows = logits.get(i)?.narrow(0, s.prompt_len - 1, n)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                    rows.iter().map(|r| crate::eval::top_k_ids(r, *k)).collect()
                } else {
                    vec![]
                };
                out.push(Prediction { argmax, top });
            }
        }
        Ok(out)
    }

    /// Inputs of right-padded sequences (padded with the first one's last id), embeddings `(b, s, d)`, with `hooks`'
    /// changes of the image features.
    fn batch_inputs(model: &dyn VisionLanguageModel, seqs: &[&EditSequence], hooks: &Hooks) -> Result<Inputs> {
        let len = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        let pad = seqs.iter().find_map(|s| s.ids.last().copied()).unwrap_or(0);
        let ids: Vec<u32> = seqs
            .iter()
            .flat_map(|s| s.ids.iter().copied().chain(std::iter::repeat_n(pad, len - s.ids.len())))
            .collect();
        let ids = Tensor::from_vec(ids, (seqs.len(), len), model.device())?;
        let pixels: Vec<&Pixels> = seqs.iter().filter_map(|s| s.pixels.as_ref()).collect();
        model.embed_hooked(&ids, Pixels::cat(&pixels)?.as_ref(), hooks)
    }

    /// The prompt of this sequence followed by `answer` ids (e.g. a greedy answer, its end of sequence included).
    pub fn with_answer(&self, answer: &[u32]) -> Self {
        let mut ids = self.ids[..self.prompt_len].to_vec();
        ids.extend_from_slice(answer);
        Self { ids, prompt_len: self.prompt_len, pixels: self.pixels.clone() }
    }
}
