//! The training split in the form the editors train on: per case, the edit's gradient on the unedited model, the
//! frozen part's output (the first edited layer's input) for the edit and its rephrasings, and for two unrelated
//! questions also the unedited model's answer distribution (locality is a KL term against it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Tensor, D};

use crate::data::EditCase;
use crate::edit::gradient::{edit_gradient, layer_input, EditGrad};
use crate::edit::EditSequence;
use crate::error::Result;
use crate::hooks::{Capture, Hooks};
use crate::model::{Inputs, ModelProcessor, Pixels, VisionLanguageModel};

/// One supervised sequence, from the first edited layer up.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Input of the first edited layer, `(1, s, d)`, detached, and the sequence's positions.
    pub x0: Inputs,
    /// Position predicting the first answer token.
    pub start: usize,
    pub targets: Vec<u32>,
    /// Unedited log-probabilities at the answer positions, `(n, vocab)` (locality probes only).
    pub base_logp: Option<Tensor>,
}

/// A training case.
#[derive(Debug, Clone)]
pub struct TrainCase {
    pub grad: EditGrad,
    /// The edit, its rephrased question, and the question on the rephrased image, all answered with the target.
    pub edit: Vec<Probe>,
    /// An unrelated text question and an unrelated image question.
    pub loc: Vec<Probe>,
}

/// Preprocessed images, by path.
pub struct Images<'a> {
    model: &'a dyn VisionLanguageModel,
    processor: &'a dyn ModelProcessor,
    cache: HashMap<PathBuf, Pixels>,
}

impl<'a> Images<'a> {
    pub fn new(model: &'a dyn VisionLanguageModel, processor: &'a dyn ModelProcessor) -> Self {
        Self { model, processor, cache: HashMap::new() }
    }

    /// The preprocessed image of `path`.
    pub fn get(&mut self, path: &Path) -> Result<Pixels> {
        if let Some(t) = self.cache.get(path) {
            return Ok(t.clone());
        }
        let t = self.processor.load_image(path, self.model.device())?;
        self.cache.insert(path.to_path_buf(), t.clone());
        Ok(t)
    }
}

/// The probe of `seq` from layer `first` up (with the unedited answer distribution when `with_base`).
pub fn probe(model: &dyn VisionLanguageModel, seq: &EditSequence, first: usize, with_base: bool) -> Result<Probe> {
    let x0 = layer_input(model, seq, first, &Hooks::none())?;
    let n_t = seq.targets().len();
    let start = seq.prompt_len - 1;
    let base_logp = if with_base {
        let n = model.num_layers();
        let h =
            model.forward_layers(&x0.embeds, &x0.positions, first..n, None, &Hooks::none(), &mut Capture::none())?;
        let logits = model.logits(&model.final_norm(&h.narrow(1, start, n_t)?)?)?.squeeze(0)?;
        Some(candle_nn::ops::log_softmax(&logits, D::Minus1)?.detach())
    } else {
        None
    };
    Ok(Probe { x0, start, targets: seq.targets().to_vec(), base_logp })
}

/// Prepares `cases` for training editors of `layers`; `progress(done, total)` after each case.
pub fn prepare(
    model: &dyn VisionLanguageModel,
    processor: &dyn ModelProcessor,
    eos: u32,
    cases: &[EditCase],
    layers: &[usize],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<TrainCase>> {
    let first = layers.first().copied().unwrap_or(0);
    let mut images = Images::new(model, processor);
    let mut out = Vec::with_capacity(cases.len());
    for (i, c) in cases.iter().enumerate() {
        let (img, re_img, loc_img) =
            (images.get(&c.image)?, images.get(&c.rephrase_image)?, images.get(&c.m_loc_image)?);
        let edit = EditSequence::new(processor, &c.prompt, Some(&img), &c.target, eos)?;
        let rephrase = EditSequence::new(processor, &c.rephrase_prompt, Some(&img), &c.target, eos)?;
        let m_rephrase = EditSequence::new(processor, &c.prompt, Some(&re_img), &c.target, eos)?;
        let loc = EditSequence::new(processor, &c.loc_question, None, &c.loc_answer, eos)?;
        let m_loc = EditSequence::new(processor, &c.m_loc_question, Some(&loc_img), &c.m_loc_answer, eos)?;
        out.push(TrainCase {
            grad: edit_gradient(model, &edit, layers, &Hooks::none())?,
            edit: vec![
                probe(model, &edit, first, false)?,
                probe(model, &rephrase, first, false)?,
                probe(model, &m_rephrase, first, false)?,
            ],
            loc: vec![probe(model, &loc, first, true)?, probe(model, &m_loc, first, true)?],
        });
        progress(i + 1, cases.len());
    }
    Ok(out)
}
