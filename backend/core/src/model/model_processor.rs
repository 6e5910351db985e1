//! One interface over every family's processor (issue 18 §1): the prompt template, the tokenizer with the family's
//! image-token expansion, and the image preprocessing, as transformers' processor of each family does them.
//!
//! | family | question prompt | image tokens |
//! |---|---|---|
//! | LLaVA | the checkpoint's template (`USER: <image>\n{question} ASSISTANT:`) | each `<image>` → `image_seq_length` |
//! | BLIP-2 | `Question: {question} Answer:` (the BLIP-2 paper's VQA prompt) | `num_query_tokens` in front |
//! | Qwen2-VL | one chat user turn, `<|vision_start|><|image_pad|><|vision_end|>` before the text | each pad → `t·h·w / merge²` |

use std::fmt;
use std::path::Path;

use candle_core::Device;
use image::RgbImage;

use super::blip2_processor::Blip2Processor;
use super::processor::{Processor, TurnForm, TurnText, NEW_FACT};
use super::qwen2vl_processor::Qwen2VlProcessor;
use super::vlm::{Family, Pixels};
use crate::error::{Error, Result};

/// The BLIP-2 paper's zero-shot VQA prompt (VLKEB and EasyEdit prompt BLIP-2 OPT the same way).
pub const BLIP2_TEMPLATE: &str = "Question: {question} Answer:";

/// A family's processor: templates, tokenization and images.
pub trait ModelProcessor: Send + Sync + fmt::Debug {
    fn family(&self) -> Family;
    /// The concrete processor.
    fn as_any(&self) -> &dyn std::any::Any;

    /// The template around `question`; `with_image` marks where the image goes (if the family writes it in text).
    fn question_prompt(&self, question: &str, with_image: bool) -> String;

    /// One in-context demonstration turn, closed as the family closes an answer.
    fn turn(&self, turn: &TurnText<'_>) -> String;

    /// Demonstrations in order, then the query.
    fn context_prompt(&self, turns: &[TurnText<'_>], question: &str, with_image: bool) -> String {
        let mut out: String = turns.iter().map(|t| self.turn(t)).collect();
        out.push_str(&self.question_prompt(question, with_image));
        out
    }

    /// The ids of `prompt` with `pixels`' images, as the family's transformers processor gives them for
    /// `text=prompt` and the images (image placeholders expanded; special tokens as the tokenizer adds them).
    fn encode(&self, prompt: &str, pixels: Option<&Pixels>) -> Result<Vec<u32>>;

    /// Text without special tokens or images (answers and targets).
    fn encode_plain(&self, text: &str) -> Result<Vec<u32>>;

    /// Decodes ids, skipping special tokens.
    fn decode(&self, ids: &[u32]) -> Result<String>;

    /// Words of `text` the tokenizer maps to its unknown token (none for byte-level tokenizers).
    fn unknown_words(&self, _text: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// One image, preprocessed as the family's image processor does it.
    fn preprocess(&self, image: &RgbImage, device: &Device) -> Result<Pixels>;

    /// One image file, decoded and preprocessed.
    fn load_image(&self, path: &Path, device: &Device) -> Result<Pixels> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let img = image::load_from_memory(&bytes)
            .map_err(|e| Error::Image { path: path.to_path_buf(), msg: e.to_string() })?;
        self.preprocess(&img.to_rgb8(), device)
    }
}

impl ModelProcessor for Processor {
    fn family(&self) -> Family {
        Family::Llava
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn question_prompt(&self, question: &str, with_image: bool) -> String {
        Processor::question_prompt(self, question, with_image)
    }
    fn turn(&self, turn: &TurnText<'_>) -> String {
        Processor::turn(self, turn)
    }
    fn context_prompt(&self, turns: &[TurnText<'_>], question: &str, with_image: bool) -> String {
        Processor::context_prompt(self, turns, question, with_image)
    }
    fn encode(&self, prompt: &str, pixels: Option<&Pixels>) -> Result<Vec<u32>> {
        Processor::encode(self, prompt, pixels.map_or(0, Pixels::count))
    }
    fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        Processor::encode_plain(self, text)
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        Processor::decode(self, ids)
    }
    fn unknown_words(&self, text: &str) -> Result<Vec<String>> {
        Processor::unknown_words(self, text)
    }
    fn preprocess(&self, image: &RgbImage, device: &Device) -> Result<Pixels> {
        Ok(Pixels::fixed(self.image_processor().preprocess(image, device)?.unsqueeze(0)?))
    }
    fn load_image(&self, path: &Path, device: &Device) -> Result<Pixels> {
        Ok(Pixels::fixed(self.image_processor().load_file(path, device)?.unsqueeze(0)?))
    }
}

impl ModelProcessor for Blip2Processor {
    fn family(&self) -> Family {
        Family::Blip2
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn question_prompt(&self, question: &str, _with_image: bool) -> String {
        BLIP2_TEMPLATE.replace("{question}", question)
    }
    /// `Question: q Answer: a\n` (or `new fact: q a\n`): OPT has no turn markup; a newline ends an answer.
    fn turn(&self, turn: &TurnText<'_>) -> String {
        let (q, a) = (turn.question.trim(), turn.answer.trim());
        match turn.form {
            TurnForm::Qa => format!("{} {a}\n", self.question_prompt(q, turn.with_image)),
            TurnForm::Fact => format!("{NEW_FACT} {q} {a}\n"),
        }
    }
    /// BLIP-2 takes one image, its query tokens in front of the text; a prompt with a text image placeholder or
    /// more than one image is refused.
    fn encode(&self, prompt: &str, pixels: Option<&Pixels>) -> Result<Vec<u32>> {
        match pixels.map_or(0, Pixels::count) {
            0 => {
                if prompt.contains(super::blip2_processor::IMAGE_TOKEN) {
                    return Err(Error::Invalid("the prompt has an image placeholder but no image was given".into()));
                }
                let enc = self.tokenizer().encode(prompt, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
                Ok(enc.get_ids().to_vec())
            }
            1 => Blip2Processor::encode(self, prompt),
            n => Err(Error::Invalid(format!("BLIP-2 takes one image per input, {n} were given"))),
        }
    }
    fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        Blip2Processor::encode_plain(self, text)
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        Blip2Processor::decode(self, ids)
    }
    fn preprocess(&self, image: &RgbImage, device: &Device) -> Result<Pixels> {
        Ok(Pixels::fixed(self.image_processor().preprocess(image, device)?.unsqueeze(0)?))
    }
    fn load_image(&self, path: &Path, device: &Device) -> Result<Pixels> {
        Ok(Pixels::fixed(self.image_processor().load_file(path, device)?.unsqueeze(0)?))
    }
}

impl ModelProcessor for Qwen2VlProcessor {
    fn family(&self) -> Family {
        Family::Qwen2Vl
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn question_prompt(&self, question: &str, with_image: bool) -> String {
        Qwen2VlProcessor::user_prompt(question, with_image)
    }
    /// A user turn and the assistant's answer closed by `<|im_end|>` (a fact: the user states it, the assistant
    /// says nothing more).
    fn turn(&self, turn: &TurnText<'_>) -> String {
        let (q, a) = (turn.question.trim(), turn.answer.trim());
        match turn.form {
            TurnForm::Qa => format!("{}{a}<|im_end|>\n", self.question_prompt(q, turn.with_image)),
            TurnForm::Fact => {
                format!("{}<|im_end|>\n", self.question_prompt(&format!("{NEW_FACT} {q} {a}"), turn.with_image))
            }
        }
    }
    fn encode(&self, prompt: &str, pixels: Option<&Pixels>) -> Result<Vec<u32>> {
        let grids = match pixels {
            Some(p) => p.grids.clone().ok_or_else(|| Error::Invalid("Qwen2-VL images need their grids".into()))?,
            None => Vec::new(),
        };
        Qwen2VlProcessor::encode(self, prompt, &grids)
    }
    fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer().encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        Qwen2VlProcessor::decode(self, ids)
    }
    fn preprocess(&self, image: &RgbImage, device: &Device) -> Result<Pixels> {
        let (values, grid) = self.image_processor().preprocess(image, device)?;
        Ok(Pixels::patches(values, vec![grid]))
    }
    fn load_image(&self, path: &Path, device: &Device) -> Result<Pixels> {
        let (values, grid) = self.image_processor().load_file(path, device)?;
        Ok(Pixels::patches(values, vec![grid]))
    }
}
