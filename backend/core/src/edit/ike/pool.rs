//! IKE's demonstration pool (Zheng et al. 2023, §3; EasyEdit's `encode_ike_facts_multimodal`): for every case of the
//! training split, three demonstrations that each open with the case's edit as a new fact, then a question answered
//! with it:
//!
//! - *copy*: the edit's own question and target,
//! - *update*: the rephrased question and the target,
//! - *retain*: the case's unrelated (text) question and its answer, which the new fact must not change.
//!
//! Retrieval is by cosine similarity of sentence embeddings of the demonstrations' text, the edit written as a copy
//! demonstration as the query. EasyEdit embeds with SentenceTransformer `all-MiniLM-L6-v2`; no sentence encoder is
//! available offline, so the embedding here is the unedited model's own mean-pooled last hidden state over the
//! demonstration's text (images left out, as EasyEdit's text-only embedding leaves them out). The pool is
//! independent of any edit, so it is embedded once per method.

use std::path::PathBuf;

use candle_core::Tensor;

use crate::data::EditCase;
use crate::edit::unit_rows;
use crate::error::{Error, Result};
use crate::hooks::{Capture, Hooks};
use crate::model::processor::{TurnForm, TurnText};
use crate::model::{ModelProcessor, VisionLanguageModel};

/// Which of IKE's three demonstration kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DemoKind {
    Copy,
    Update,
    Retain,
}

impl DemoKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Copy => "copy",
            Self::Update => "update",
            Self::Retain => "retain",
        }
    }
}

/// Where a demonstration's image comes from: a file of the data set, or an edit request's preprocessed image.
#[derive(Debug, Clone)]
pub enum DemoImage {
    File(PathBuf),
    Pixels(std::sync::Arc<crate::model::Pixels>),
}

/// One turn of a demonstration: its form, text and image (if any).
#[derive(Debug, Clone)]
pub struct DemoTurn {
    pub form: TurnForm,
    pub question: String,
    pub answer: String,
    pub image: Option<DemoImage>,
}

impl DemoTurn {
    /// The text parts; `with_image` false leaves the image out whatever the turn has.
    pub fn text(&self, with_image: bool) -> TurnText<'_> {
        TurnText {
            form: self.form,
            question: &self.question,
            answer: &self.answer,
            with_image: with_image && self.image.is_some(),
        }
    }
}

/// A demonstration: the new fact, then a question answered with it.
#[derive(Debug, Clone)]
pub struct Demonstration {
    pub kind: DemoKind,
    pub fact: DemoTurn,
    pub then: DemoTurn,
}

impl Demonstration {
    /// The three demonstrations of a training case (copy, update, retain).
    pub fn of_case(case: &EditCase) -> [Self; 3] {
        let fact = DemoTurn {
            form: TurnForm::Fact,
            question: case.prompt.clone(),
            answer: case.target.clone(),
            image: Some(DemoImage::File(case.image.clone())),
        };
        let qa = |question: &str, answer: &str, image: Option<DemoImage>| DemoTurn {
            form: TurnForm::Qa,
            question: question.into(),
            answer: answer.into(),
            image,
        };
        [
            Self {
                kind: DemoKind::Copy,
                fact: fact.clone(),
                then: qa(&case.prompt, &case.target, Some(DemoImage::File(case.image.clone()))),
            },
            Self {
                kind: DemoKind::Update,
                fact: fact.clone(),
                then: qa(&case.rephrase_prompt, &case.target, Some(DemoImage::File(case.image.clone()))),
            },
            Self { kind: DemoKind::Retain, fact, then: qa(&case.loc_question, &case.loc_answer, None) },
        ]
    }

    /// The copy demonstration of an edit (EasyEdit appends it after the retrieved ones, next to the query).
    pub fn copy(question: &str, target: &str, image: Option<DemoImage>) -> Self {
        let turn = |form| DemoTurn { form, question: question.into(), answer: target.into(), image: image.clone() };
        Self { kind: DemoKind::Copy, fact: turn(TurnForm::Fact), then: turn(TurnForm::Qa) }
    }

    /// Its text as the model reads it, without images (what is embedded for retrieval).
    pub fn text(&self, processor: &dyn ModelProcessor) -> String {
        let turns = [self.fact.text(false), self.then.text(false)];
        turns.iter().map(|t| processor.turn(t)).collect()
    }

    /// One line for provenance and the inspector: `copy: new fact: Q A → Q2 A2`.
    pub fn describe(&self) -> String {
        format!(
            "{}: new fact: {} {} → {} {}",
            self.kind.name(),
            self.fact.question,
            self.fact.answer,
            self.then.question,
            self.then.answer
        )
    }
}

/// The pool with its embeddings.
pub struct Pool {
    pub demos: Vec<Demonstration>,
    /// `(n, d)` L2-normalised embeddings, row `i` of `demos[i]`.
    embeddings: Tensor,
}

/// Strings embedded per forward pass.
const EMBED_BATCH: usize = 32;

impl Pool {
    /// The copy, update and retain demonstrations of every case, embedded with `model` (unedited).
    pub fn build(model: &dyn VisionLanguageModel, processor: &dyn ModelProcessor, cases: &[EditCase]) -> Result<Self> {
        let demos: Vec<Demonstration> = cases.iter().flat_map(Demonstration::of_case).collect();
        if demos.is_empty() {
            return Err(Error::Invalid("IKE's demonstration pool is empty: no training-split cases were given".into()));
        }
        let texts: Vec<String> = demos.iter().map(|d| d.text(processor)).collect();
        let embeddings = embed_texts(model, processor, &texts)?;
        Ok(Self { demos, embeddings })
    }

    pub fn len(&self) -> usize {
        self.demos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.demos.is_empty()
    }

    /// The `k` demonstrations most similar to `query` (an L2-normalised `(d)` embedding), most similar first, with
    /// their cosine similarity; ties go to the earlier demonstration.
    pub fn top_k(&self, query: &Tensor, k: usize) -> Result<Vec<(usize, f32)>> {
        let scores = self.embeddings.matmul(&query.unsqueeze(1)?)?.squeeze(1)?.to_vec1::<f32>()?;
        let mut order: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
        order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        order.truncate(k);
        Ok(order)
    }
}

/// L2-normalised mean of the unedited model's last hidden states over each text's tokens (the first, `<s>`, left
/// out): `(n, d)` f32. Texts are tokenized without images; right padding cannot reach earlier positions (causal
/// attention), so batching gives each row its own forward pass.
pub fn embed_texts(
    model: &dyn VisionLanguageModel,
    processor: &dyn ModelProcessor,
    texts: &[String],
) -> Result<Tensor> {
    // Right padding cannot reach earlier positions, so the padding id does not matter.
    let pad = 0;
    let mut rows = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(EMBED_BATCH) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|t| processor.encode(t, None)).collect::<Result<_>>()?;
        let s = ids.iter().map(Vec::len).max().unwrap_or(1).max(2);
        let flat: Vec<u32> = ids.iter().flat_map(|r| r.iter().copied().chain(std::iter::repeat(pad)).take(s)).collect();
        let input = Tensor::from_vec(flat, (chunk.len(), s), model.device())?;
        let inputs = model.embed(&input, None)?;
        let h = model.forward_inputs(&inputs, None, &Hooks::none(), &mut Capture::none())?;
        let h = h.to_dtype(candle_core::DType::F32)?;
        for (b, r) in ids.iter().enumerate() {
            let from = usize::from(r.len() > 1);
            let mean = h.get(b)?.narrow(0, from, r.len() - from)?.mean(0)?;
            rows.push(unit_rows(&mean)?);
        }
    }
    Ok(Tensor::stack(&rows, 0)?)
}
