//! SERAC (Mitchell et al., ICML 2022, "Memory-Based Model Editing at Scale"), a baseline of the UniKE paper
//! (Appendix D.2): edits are stored, not trained in. A scope classifier decides, per input, whether the input falls in
//! the scope of a stored edit; if it does (probability at least the threshold, 0.5), the counterfactual model answers
//! given that edit, otherwise the base model answers, unchanged (hard routing).
//!
//! - The classifier is SERAC's embedding variant: cosine between learned embeddings of the input and of each stored
//!   edit, through a sigmoid with a learned scale and offset, the most likely edit chosen. What it embeds is the
//!   unedited model's state at the last prompt position of a decoder layer (image and question; never the answer),
//!   so it needs no second encoder offline. It is trained (`unike train-method serac`) on the front of the training
//!   split with a binary cross-entropy: in scope are the edit's question, its rephrasing and the question on another
//!   image of the same entity; out of scope are an unrelated text question, an unrelated image question and every
//!   other case's in-scope inputs in the batch.
//! - The counterfactual model is the base model with the stored edit in its context, as IKE's copy demonstration (a
//!   new fact, then the question answered with it): SERAC's counterfactual model reads the edit concatenated with the
//!   input; sharing the base model's weights is the shared-backbone form the issue allows (README lists it: SERAC and
//!   EasyEdit train a separate smaller model).
//!
//! Routing is a [`crate::hooks::Router`]: scoring and generation decide once per input on its prompt, and an
//! out-of-scope input runs the plain forward pass (its logits are the base model's, exactly).

pub mod net;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

pub use net::{prompt_state, SeracNet, SeracRouter};

use super::hypernet::data::Images;
use super::hypernet::{self, TrainParams};
use super::ike::{prefix, DemoImage, Demonstration};
use super::{EditContext, EditMethod, EditRequest, EditSequence, Patch, Provenance};
use crate::data::EditCase;
use crate::error::{Error, Result};
use crate::hooks::{ContextKv, Hooks};
use crate::model::{kernels, ModelProcessor, VisionLanguageModel};
use crate::world::rng::Rng;

/// Hyper-parameters (`hparams/serac/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeracParams {
    /// The classifier reads the input of this decoder layer counted from the end (1: the last layer's input).
    pub layer_from_end: usize,
    /// Width of the scope embedding.
    pub rank: usize,
    /// Scope probability from which an input goes to the counterfactual model (SERAC: 0.5).
    pub threshold: f32,
    /// `cases`, `steps`, `batch` (cases per step; each brings five inputs), `lr`, `seed`; SERAC has no step size and
    /// no locality term (`lr_step`, `loc_weight` are unused).
    pub train: TrainParams,
}

impl Default for SeracParams {
    fn default() -> Self {
        Self {
            layer_from_end: 1,
            rank: 64,
            threshold: 0.5,
            train: TrainParams { steps: 1000, batch: 32, ..TrainParams::default() },
        }
    }
}

const FORMAT: &str = "unike-serac/2";

/// An edit as SERAC stores it: the classifier's key of the edit and its counterfactual model's context.
#[derive(Debug, Clone)]
pub struct SeracEntry {
    pub net: Arc<SeracNet>,
    /// The edit's scope key, `(d)` ([`prompt_state`] of its question).
    pub key: Tensor,
    /// The edit as the counterfactual model's context (IKE's copy demonstration, encoded).
    pub context: Arc<ContextKv>,
}

/// The hooks of the SERAC entries of a stack: one router over every stored edit (the first entry's classifier).
pub fn stack_hooks(entries: &[&SeracEntry]) -> Result<Hooks> {
    let mut h = Hooks::none();
    let Some(first) = entries.first() else { return Ok(h) };
    let keys = Tensor::stack(&entries.iter().map(|e| e.key.clone()).collect::<Vec<_>>(), 0)?;
    let contexts = entries.iter().map(|e| e.context.clone()).collect();
    h.add_router(Arc::new(SeracRouter { net: first.net.clone(), keys, contexts }));
    Ok(h)
}

/// The inputs of a training case, as the classifier reads them, `(5, d)`: the edit's question, its rephrasing, the
/// question on another image of the entity (in scope), an unrelated text question, an unrelated image question.
const IN_SCOPE: usize = 3;
const KINDS: usize = 5;

fn case_states(
    model: &dyn VisionLanguageModel,
    processor: &dyn ModelProcessor,
    images: &mut Images<'_>,
    eos: u32,
    layer: usize,
    c: &EditCase,
) -> Result<Tensor> {
    let (img, re, li) = (images.get(&c.image)?, images.get(&c.rephrase_image)?, images.get(&c.m_loc_image)?);
    let seqs = [
        EditSequence::new(processor, &c.prompt, Some(&img), &c.target, eos)?,
        EditSequence::new(processor, &c.rephrase_prompt, Some(&img), &c.target, eos)?,
        EditSequence::new(processor, &c.prompt, Some(&re), &c.target, eos)?,
        EditSequence::new(processor, &c.loc_question, None, &c.loc_answer, eos)?,
        EditSequence::new(processor, &c.m_loc_question, Some(&li), &c.m_loc_answer, eos)?,
    ];
    let states = seqs.iter().map(|s| prompt_state(model, s, layer)).collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&states, 0)?)
}

/// The trained method.
pub struct Serac {
    pub net: Arc<SeracNet>,
    pub params: SeracParams,
    pub eos: u32,
    /// Training curve (empty when loaded).
    pub curve: Vec<serde_json::Value>,
}

impl Serac {
    /// The decoder layer the classifier reads on `model`.
    fn layer(model: &dyn VisionLanguageModel, params: &SeracParams) -> Result<usize> {
        let n = model.num_layers();
        if params.layer_from_end == 0 || params.layer_from_end > n {
            return Err(Error::Invalid(format!("SERAC: layer_from_end {} of {n} layers", params.layer_from_end)));
        }
        Ok(n - params.layer_from_end)
    }

    /// Trains the scope classifier on `cases`; `progress(step, steps, message)`.
    pub fn train(
        model: &dyn VisionLanguageModel,
        processor: &dyn ModelProcessor,
        eos: u32,
        cases: &[EditCase],
        params: SeracParams,
        progress: &mut dyn FnMut(usize, usize, &str),
    ) -> Result<Self> {
        let layer = Self::layer(model, &params)?;
        let d = model.hidden_size();
        if cases.len() < 2 {
            return Err(Error::Invalid("SERAC training needs at least two cases".into()));
        }
        let mut images = Images::new(model, processor);
        let mut states = Vec::with_capacity(cases.len());
        for (i, c) in cases.iter().enumerate() {
            states.push(case_states(model, processor, &mut images, eos, layer, c)?);
            if (i + 1) % 50 == 0 {
                progress(0, params.train.steps, &format!("prepared {}/{}", i + 1, cases.len()));
            }
        }
        let states = Tensor::stack(&states, 0)?.detach(); // (N, 5, d)
        let net = SeracNet::init(layer, params.threshold, d, params.rank, params.train.seed, model.device())?;
        let (vars, _) = net.set.trainable(&[]);
        let mut opt = AdamW::new(vars, ParamsAdamW { lr: params.train.lr, weight_decay: 0.0, ..Default::default() })?;
        let mut rng = Rng::derive(params.train.seed, "serac-train", 0);
        let batch = params.train.batch.clamp(2, cases.len());
        let mut curve = Vec::new();
        let (mut sum_loss, mut sum_acc, mut cnt) = (0f32, 0f32, 0usize);
        for step in 1..=params.train.steps {
            let _scope = kernels::differentiable();
            // `batch` distinct cases: each one's key against every input of the batch.
            let mut idx: Vec<u32> = Vec::with_capacity(batch);
            while idx.len() < batch {
                let i = rng.below(cases.len()) as u32;
                if !idx.contains(&i) {
                    idx.push(i);
                }
            }
            let picked = states.index_select(&Tensor::new(idx.as_slice(), model.device())?, 0)?;
            let keys = picked.narrow(1, 0, 1)?.squeeze(1)?;
            let inputs = picked.reshape((batch * KINDS, d))?;
            let p = net.scores(&inputs, &keys)?.clamp(1e-6, 1.0 - 1e-6)?; // (5b, b)
            let mut label = vec![0f32; batch * KINDS * batch];
            for j in 0..batch {
                for kind in 0..IN_SCOPE {
                    label[(j * KINDS + kind) * batch + j] = 1.0;
                }
            }
            let pos = Tensor::from_vec(label, (batch * KINDS, batch), model.device())?;
            let neg = (pos.neg()? + 1.0)?;
            let (n_pos, n_neg) = ((batch * IN_SCOPE) as f64, (batch * KINDS * batch - batch * IN_SCOPE) as f64);
            // Positives and negatives weigh the same in total.
            let loss_pos = ((p.log()? * &pos)?.sum_all()? / n_pos)?;
            let loss_neg = ((((p.neg()? + 1.0)?.log()? * &neg)?.sum_all()?) / n_neg)?;
            let loss = ((loss_pos + loss_neg)?.neg()? * 0.5)?;
            sum_loss += loss.to_scalar::<f32>()?;
            // Hard routing on the batch: the own case for in-scope inputs, none for the unrelated ones.
            let best = p.argmax(D::Minus1)?.to_vec1::<u32>()?;
            let top = p.max(D::Minus1)?.to_vec1::<f32>()?;
            let right = (0..batch * KINDS)
                .filter(|&q| {
                    let routed = (top[q] >= params.threshold).then_some(best[q] as usize);
                    routed == (q % KINDS < IN_SCOPE).then_some(q / KINDS)
                })
                .count();
            sum_acc += right as f32 / (batch * KINDS) as f32;
            cnt += 1;
            opt.backward_step(&loss)?;
            if step.is_multiple_of(50) || step == params.train.steps {
                let c = cnt.max(1) as f32;
                curve.push(serde_json::json!({"step": step, "loss": sum_loss / c, "routing_accuracy": sum_acc / c}));
                progress(step, params.train.steps, &format!("loss {:.4} routing {:.3}", sum_loss / c, sum_acc / c));
                (sum_loss, sum_acc, cnt) = (0.0, 0.0, 0);
            } else {
                progress(step, params.train.steps, "");
            }
        }
        Ok(Self { net: Arc::new(net), params, eos, curve })
    }

    /// Writes `dir/net.{safetensors,json}` with the training curve.
    pub fn save(&self, dir: &Path, data: &str) -> Result<()> {
        hypernet::save_net(&self.net.set, dir, FORMAT, &[self.net.layer], &self.params, &self.curve, data)
    }

    /// Reads a classifier written by [`Serac::save`] for `model`.
    pub fn load(dir: &Path, model: &dyn VisionLanguageModel, eos: u32) -> Result<Self> {
        let (params, _, set) = hypernet::load_net(dir, model, "serac", FORMAT, |p: &SeracParams| p.layer_from_end)?;
        let net = SeracNet { layer: Self::layer(model, &params)?, threshold: params.threshold, set };
        net::check(&net, model.hidden_size(), model.num_layers())?;
        Ok(Self { net: Arc::new(net), params, eos, curve: vec![] })
    }
}

impl EditMethod for Serac {
    fn name(&self) -> &str {
        "serac"
    }

    fn resident_bytes(&self) -> usize {
        self.net.set.num_parameters() * 4
    }

    fn patch_deps(&self) -> crate::edit::PatchDeps {
        crate::edit::PatchDeps { knowledge: None, serac: Some(self.net.clone()) }
    }

    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        let seq =
            EditSequence::new(ctx.processor, &request.question, request.image.as_ref(), &request.target, self.eos)?;
        let demo = Demonstration::copy(
            &request.question,
            &request.target,
            request.image.clone().map(|p| DemoImage::Pixels(std::sync::Arc::new(p))),
        );
        let demos = [demo];
        let len = prefix::prefix_ids(ctx.processor, &demos, true, ctx.model.device())?.0.len();
        let window = ctx.model.context_budget();
        if len > window {
            return Err(Error::Invalid(format!(
                "SERAC: the edit as context needs {len} positions, more than the {window} the model keeps for it"
            )));
        }
        let mut provenance = Provenance::new(self.name(), &self.params, request)?;
        provenance.demonstrations = vec![format!("{} (the counterfactual model's context)", demos[0].describe())];
        let mut patch = Patch::new(provenance, BTreeMap::new());
        patch.serac = Some(SeracEntry {
            net: self.net.clone(),
            key: prompt_state(ctx.model, &seq, self.net.layer)?,
            context: Arc::new(prefix::encode(ctx.model, ctx.processor, &demos, true, &Hooks::none())?),
        });
        Ok(patch)
    }
}
