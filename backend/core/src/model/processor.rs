//! Text side of LLaVA's processor: `tokenizer.json` through the `tokenizers` crate, `<image>` expansion as
//! transformers' `LlavaProcessor` does it (each `<image>` replaced by `image_seq_length` copies before tokenizing),
//! and the prompt template.
//!
//! The template is `USER: <image>\n{question} ASSISTANT:` (llava-1.5) unless the checkpoint directory has a
//! `prompt_template.txt` holding a template with a `{question}` placeholder.
//!
//! In-context demonstrations ([`TurnForm`]) are whole turns of the same conversation in front of the query, each
//! closed by `</s>` as llava-1.5 closes an assistant turn: a question and its answer, or a statement of a new fact
//! in EasyEdit's IKE form (`new fact: {question} {answer}`). The world's training mix, IKE and SERAC's
//! counterfactual model all write demonstrations this way, so the default model's tokenizer knows every word.

use std::path::Path;

use tokenizers::Tokenizer;

use super::config::LlavaConfig;
use super::preprocess::ImageProcessor;
use crate::error::{Error, Result};

/// The image placeholder in prompts.
pub const IMAGE_TOKEN: &str = "<image>";
/// llava-1.5's conversation template.
pub const LLAVA_15_TEMPLATE: &str = "USER: <image>\n{question} ASSISTANT:";

/// The words that open a new-fact demonstration.
pub const NEW_FACT: &str = "new fact:";
/// What closes every demonstration turn (llava-1.5's end of an assistant turn).
pub const TURN_END: &str = "</s>";

/// How an in-context demonstration is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnForm {
    /// A question and its answer in the template: `USER: <image>\n{question} ASSISTANT: {answer}</s>`.
    Qa,
    /// A statement of a new fact about the pictured entity (EasyEdit's IKE `New Fact:` line):
    /// `USER: <image>\nnew fact: {question} {answer}</s>`.
    Fact,
}

/// One demonstration as text: its form, question, answer and whether it shows an image.
#[derive(Debug, Clone, Copy)]
pub struct TurnText<'a> {
    pub form: TurnForm,
    pub question: &'a str,
    pub answer: &'a str,
    pub with_image: bool,
}

/// `template` around `question`, without the image placeholder (and the newline after it) when there is no image.
pub fn question_prompt_in(template: &str, question: &str, with_image: bool) -> String {
    let full = template.replace("{question}", question);
    if with_image {
        full
    } else {
        full.replace(&format!("{IMAGE_TOKEN}\n"), "").replace(IMAGE_TOKEN, "")
    }
}

/// A demonstration turn in `template` (see [`TurnForm`]).
pub fn turn_in(template: &str, turn: &TurnText<'_>) -> String {
    let (question, answer) = (turn.question.trim(), turn.answer.trim());
    match turn.form {
        TurnForm::Qa => format!("{} {answer}{TURN_END}", question_prompt_in(template, question, turn.with_image)),
        TurnForm::Fact => {
            // The user's half of the template: everything up to the question.
            let user = template.split("{question}").next().unwrap_or_default();
            let user = question_prompt_in(user, "", turn.with_image);
            format!("{user}{NEW_FACT} {question} {answer}{TURN_END}")
        }
    }
}

/// The demonstrations in order, then the query in `template`.
pub fn context_prompt_in(template: &str, turns: &[TurnText<'_>], question: &str, with_image: bool) -> String {
    let mut out: String = turns.iter().map(|t| turn_in(template, t)).collect();
    out.push_str(&question_prompt_in(template, question, with_image));
    out
}

/// Tokenizer, image processor and template of a checkpoint.
#[derive(Clone)]
pub struct Processor {
    tokenizer: Tokenizer,
    image: ImageProcessor,
    image_token_id: u32,
    image_seq_length: usize,
    template: String,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("image_token_id", &self.image_token_id)
            .field("image_seq_length", &self.image_seq_length)
            .field("template", &self.template)
            .finish()
    }
}

impl Processor {
    /// Loads `tokenizer.json` (and `prompt_template.txt` if present) from `dir`.
    pub fn load(dir: &Path, cfg: &LlavaConfig, image: ImageProcessor) -> Result<Self> {
        let tpath = dir.join("tokenizer.json");
        if !tpath.is_file() {
            return Err(Error::checkpoint(dir, "tokenizer.json is missing"));
        }
        let tokenizer = Tokenizer::from_file(&tpath)
            .map_err(|e| Error::Tokenizer(format!("cannot load {}: {e}", tpath.display())))?;
        let template_path = dir.join("prompt_template.txt");
        let template = if template_path.is_file() {
            let t = std::fs::read_to_string(&template_path).map_err(|e| Error::io(&template_path, e))?;
            let t = t.trim_end_matches('\n').to_string();
            if !t.contains("{question}") {
                return Err(Error::config(&template_path, "the template has no {question} placeholder"));
            }
            t
        } else {
            LLAVA_15_TEMPLATE.to_string()
        };
        Self::new(tokenizer, image, cfg, template)
    }

    /// Builds a processor from parts; checks that the tokenizer's `<image>` id is the config's.
    pub fn new(tokenizer: Tokenizer, image: ImageProcessor, cfg: &LlavaConfig, template: String) -> Result<Self> {
        let id = tokenizer
            .token_to_id(IMAGE_TOKEN)
            .ok_or_else(|| Error::Tokenizer(format!("the tokenizer has no {IMAGE_TOKEN} token")))?;
        if id != cfg.image_token_index {
            return Err(Error::Tokenizer(format!(
                "the tokenizer's {IMAGE_TOKEN} id {id} differs from config image_token_index {}",
                cfg.image_token_index
            )));
        }
        Ok(Self { tokenizer, image, image_token_id: id, image_seq_length: cfg.image_seq_length, template })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The image processor.
    pub fn image_processor(&self) -> &ImageProcessor {
        &self.image
    }

    /// The id of `<image>`.
    pub fn image_token_id(&self) -> u32 {
        self.image_token_id
    }

    /// The template with `{question}` filled in.
    pub fn apply_template(&self, question: &str) -> String {
        self.template.replace("{question}", question)
    }

    /// The template around `question`, with the image placeholder (and the newline after it) removed when the
    /// question comes without an image.
    pub fn question_prompt(&self, question: &str, with_image: bool) -> String {
        question_prompt_in(&self.template, question, with_image)
    }

    /// One demonstration turn in the checkpoint's template (see [`TurnForm`]).
    pub fn turn(&self, turn: &TurnText<'_>) -> String {
        turn_in(&self.template, turn)
    }

    /// Demonstration turns, then the query, in the checkpoint's template; `<image>` placeholders in reading order.
    pub fn context_prompt(&self, turns: &[TurnText<'_>], question: &str, with_image: bool) -> String {
        context_prompt_in(&self.template, turns, question, with_image)
    }

    /// Tokenizes a raw prompt: each `<image>` becomes `image_seq_length` image tokens; special tokens are added as
    /// the tokenizer's post-processor says. `n_images` must equal the number of `<image>` placeholders.
    pub fn encode(&self, prompt: &str, n_images: usize) -> Result<Vec<u32>> {
        let placeholders = prompt.matches(IMAGE_TOKEN).count();
        if placeholders != n_images {
            return Err(Error::Invalid(format!(
                "the prompt has {placeholders} {IMAGE_TOKEN} placeholder(s) but {n_images} image(s) were given"
            )));
        }
        let expanded = prompt.replace(IMAGE_TOKEN, &IMAGE_TOKEN.repeat(self.image_seq_length));
        let enc = self.tokenizer.encode(expanded, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokenizes text with no special tokens and no image (for answers and targets).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The id of the tokenizer's unknown token, if its model has one (word level, word piece, BPE with an unknown
    /// token). A byte-level tokenizer has none: it can represent any text.
    pub fn unk_id(&self) -> Option<u32> {
        use tokenizers::models::ModelWrapper;
        let unk = match self.tokenizer.get_model() {
            ModelWrapper::WordLevel(m) => Some(m.unk_token.clone()),
            ModelWrapper::WordPiece(m) => Some(m.unk_token.clone()),
            ModelWrapper::BPE(m) => m.unk_token.clone(),
            _ => None,
        }?;
        self.tokenizer.token_to_id(&unk)
    }

    /// The words of `text` that the tokenizer maps to its unknown token (each as written in `text`).
    pub fn unknown_words(&self, text: &str) -> Result<Vec<String>> {
        let Some(unk) = self.unk_id() else { return Ok(Vec::new()) };
        let enc = self.tokenizer.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc
            .get_ids()
            .iter()
            .zip(enc.get_offsets())
            .filter(|(&id, _)| id == unk)
            .map(|(_, &(a, b))| text.get(a..b).unwrap_or("<unk>").to_string())
            .collect())
    }

    /// Decodes ids, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }
}
