//! SERAC (Mitchell et al., ICML 2022, "Memory-Based Model Editing at Scale"), a baseline of the UniKE paper
//! (Appendix D.2): edits are stored, not trained in. A scope classifier decides whether an input falls in the scope of
//! a stored edit; if it does, a counterfactual model answers given that edit, otherwise the base model answers.
//!
//! Here both parts live inside the decoder, at the last `layers` layers, and decide per position (which works the same
//! for teacher forcing and for cached decoding): the classifier is an embedding model (SERAC's "embedding" variant:
//! cosine between projected states of the input and of each stored edit's question, through a sigmoid), and the
//! counterfactual model is the base model plus a trained reader that attends over the chosen edit's states and adds
//! the output direction of the token that followed the matching position in the edit (a copy mechanism, as in
//! pointer networks), weighted by the scope probability. Out of scope the probability is near zero and the base model answers unchanged. Both are
//! trained on the training split (`unike train-method serac`): the target's cross-entropy on the edit and its
//! rephrasings, a KL term on unrelated questions, and a binary cross-entropy on the classifier, with a second, unrelated
//! edit in memory so that the classifier learns to pick the right one.

pub mod net;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

pub use net::{SeracHook, SeracNet, StoredEdit};

use super::hypernet::data::{Images, Probe};
use super::hypernet::{self, TrainParams};
use super::{EditContext, EditMethod, EditRequest, EditSequence, Patch, Provenance};
use crate::data::EditCase;
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, Hooks};
use crate::model::{kernels, Llava, Processor};
use crate::world::rng::Rng;

/// Hyper-parameters (`hparams/serac/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeracParams {
    /// Classifier and reader in the last `layers` decoder layers.
    pub layers: usize,
    /// Width of the scope embedding and of the reader's attention.
    pub rank: usize,
    /// Weight of the classifier's binary cross-entropy.
    pub gate_weight: f64,
    pub train: TrainParams,
}

impl Default for SeracParams {
    fn default() -> Self {
        Self { layers: 2, rank: 64, gate_weight: 1.0, train: TrainParams::default() }
    }
}

const FORMAT: &str = "unike-serac/1";

/// An edit as SERAC stores it: per edited layer (by index into the network's layers).
#[derive(Debug, Clone)]
pub struct SeracEntry {
    pub net: Arc<SeracNet>,
    pub edits: Vec<StoredEdit>,
}

/// The stored form of `seq` at `layers` (normed layer inputs of the unedited model).
pub fn store(model: &Llava, seq: &EditSequence, layers: &[usize]) -> Result<Vec<StoredEdit>> {
    stored(model, seq, Pass::run(model, seq, layers)?.states)
}

/// The stored form of `seq` from its normed states at the edited layers.
fn stored(model: &Llava, seq: &EditSequence, states: Vec<Tensor>) -> Result<Vec<StoredEdit>> {
    let n = seq.ids.len() - 1;
    let next = model.text().unembedding(&Tensor::new(&seq.ids[1..], model.device())?)?;
    states
        .into_iter()
        .map(|x| Ok(StoredEdit { states: x.narrow(0, 0, n)?, next: next.clone(), key: x.get(seq.prompt_len - 1)? }))
        .collect()
}

/// One unedited forward pass of a sequence, as SERAC reads it.
struct Pass {
    /// Input of the first edited layer, `(1, s, d)`.
    first_input: Tensor,
    /// Final (normed) hidden states, `(1, s, d)`.
    output: Tensor,
    /// Normed inputs of each edited layer, `(s, d)` each.
    states: Vec<Tensor>,
}

impl Pass {
    fn run(model: &Llava, seq: &EditSequence, layers: &[usize]) -> Result<Self> {
        let mut cap = Capture::at_layers(layers.iter().copied(), CapturePoint::LayerInput);
        let output = model.forward_embeds(&seq.embeds(model)?, 0, None, &Hooks::none(), &mut cap)?;
        let input = |l: usize| cap.get(l, CapturePoint::LayerInput).ok_or_else(|| Error::Invalid(format!("layer {l}")));
        let states = layers
            .iter()
            .map(|&l| Ok(model.text().attention_parts(l)?.norm(&input(l)?.squeeze(0)?)?.to_dtype(DType::F32)?))
            .collect::<Result<Vec<_>>>()?;
        let first = *layers.first().ok_or_else(|| Error::Invalid("no edited layers".into()))?;
        Ok(Self { first_input: input(first)?.detach(), output, states })
    }

    /// The training probe of `seq` from the first edited layer up (with the unedited answer distribution when
    /// `with_base`), and the normed states for the classifier.
    fn probe(self, model: &Llava, seq: &EditSequence, with_base: bool) -> Result<(Probe, Vec<Tensor>)> {
        let (start, n_t) = (seq.prompt_len - 1, seq.targets().len());
        let base_logp = if with_base {
            let logits = model.logits(&self.output.narrow(1, start, n_t)?)?.squeeze(0)?;
            Some(candle_nn::ops::log_softmax(&logits, D::Minus1)?.detach())
        } else {
            None
        };
        let probe = Probe { x0: self.first_input, start, targets: seq.targets().to_vec(), base_logp };
        Ok((probe, self.states))
    }
}

/// The hooks of the SERAC entries of a stack: one attention hook per layer over every stored edit.
pub fn stack_hooks(entries: &[&SeracEntry]) -> Hooks {
    let mut h = Hooks::none();
    let Some(first) = entries.first() else { return h };
    for (k, &l) in first.net.layers.iter().enumerate() {
        let edits = entries.iter().filter_map(|e| e.edits.get(k).cloned()).collect();
        h.add_attn(l, Arc::new(SeracHook { net: first.net.clone(), k, edits }));
    }
    h
}

/// A training case: the stored edit, the in-scope probes and the unrelated ones, with base states for the classifier.
struct Case {
    stored: Vec<StoredEdit>,
    edit: Vec<(Probe, Vec<Tensor>)>,
    loc: Vec<(Probe, Vec<Tensor>)>,
}

fn bce(p: &Tensor, target: f64) -> Result<Tensor> {
    let p = p.clamp(1e-6, 1.0 - 1e-6)?;
    let l = ((p.log()? * target)? + ((p.neg()? + 1.0)?.log()? * (1.0 - target))?)?;
    Ok(l.neg()?.mean_all()?)
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
    /// Trains the classifier and the reader on `cases`; `progress(step, steps, message)`.
    pub fn train(
        model: &Llava,
        processor: &Processor,
        eos: u32,
        cases: &[EditCase],
        params: SeracParams,
        progress: &mut dyn FnMut(usize, usize, &str),
    ) -> Result<Self> {
        let layers = hypernet::last_layers(model, params.layers)?;
        let first = layers[0];
        let n_layers = model.text().num_layers();
        let d = model.text().config().hidden_size;
        let mut images = Images::new(model, processor);
        let mut prepared = Vec::with_capacity(cases.len());
        for (i, c) in cases.iter().enumerate() {
            let (img, re, li) = (images.get(&c.image)?, images.get(&c.rephrase_image)?, images.get(&c.m_loc_image)?);
            let seq = |q: &str, px: &Tensor, a: &str| EditSequence::new(processor, q, Some(px), a, eos);
            let edit = seq(&c.prompt, &img, &c.target)?;
            let with_states = |s: &EditSequence, base: bool| -> Result<(Probe, Vec<Tensor>)> {
                Pass::run(model, s, &layers)?.probe(model, s, base)
            };
            let loc = EditSequence::new(processor, &c.loc_question, None, &c.loc_answer, eos)?;
            let edit_probe = with_states(&edit, false)?;
            prepared.push(Case {
                stored: stored(model, &edit, edit_probe.1.clone())?,
                edit: vec![
                    edit_probe,
                    with_states(&seq(&c.rephrase_prompt, &img, &c.target)?, false)?,
                    with_states(&seq(&c.prompt, &re, &c.target)?, false)?,
                ],
                loc: vec![with_states(&loc, true)?, with_states(&seq(&c.m_loc_question, &li, &c.m_loc_answer)?, true)?],
            });
            if (i + 1) % 50 == 0 {
                progress(0, params.train.steps, &format!("prepared {}/{}", i + 1, cases.len()));
            }
        }
        if prepared.len() < 2 {
            return Err(Error::Invalid("SERAC training needs at least two cases".into()));
        }
        // The reader starts adding twice the size of the residual stream along the copied token's direction.
        let mut sizes = (0f32, 0f32);
        for c in &prepared {
            let x = &c.edit[0].0.x0;
            sizes.0 += x.sqr()?.sum(D::Minus1)?.sqrt()?.mean_all()?.to_scalar::<f32>()?;
            sizes.1 += c.stored[0].next.sqr()?.sum(D::Minus1)?.sqrt()?.mean_all()?.to_scalar::<f32>()?;
        }
        let scale = 2.0 * sizes.0 / sizes.1.max(1e-6);
        let net = Arc::new(SeracNet::init(layers.clone(), d, params.rank, scale, params.train.seed, model.device())?);
        let (vars, _) = net.set.trainable(&[]);
        let mut opt = AdamW::new(vars, ParamsAdamW { lr: params.train.lr, weight_decay: 0.0, ..Default::default() })?;
        let mut rng = Rng::derive(params.train.seed, "serac-train", 0);
        let mut curve = Vec::new();
        let (mut se, mut sl, mut sg, mut ok, mut cnt) = (0f32, 0f32, 0f32, 0f32, 0usize);
        for step in 1..=params.train.steps {
            let _scope = kernels::differentiable();
            let mut total = Vec::new();
            for _ in 0..params.train.batch.max(1) {
                let i = rng.below(prepared.len());
                let j = (i + 1 + rng.below(prepared.len() - 1)) % prepared.len();
                let (case, other) = (&prepared[i], &prepared[j]);
                let entry = |c: &Case| SeracEntry { net: net.clone(), edits: c.stored.clone() };
                let (a, b) = (entry(case), entry(other));
                let hooks = stack_hooks(&[&a, &b]);
                let keys: Vec<Tensor> = (0..layers.len())
                    .map(|k| Ok(Tensor::stack(&[&case.stored[k].key, &other.stored[k].key], 0)?))
                    .collect::<Result<_>>()?;
                let logits = |p: &Probe| -> Result<Tensor> {
                    let h =
                        model.text().forward_layers(&p.x0, 0, first..n_layers, None, &hooks, &mut Capture::none())?;
                    let h = model.text().final_norm(&h.narrow(1, p.start, p.targets.len())?)?;
                    Ok(model.logits(&h)?.squeeze(0)?)
                };
                let mut parts = Vec::new();
                let mut gate = Vec::new();
                for (n, (p, states)) in case.edit.iter().enumerate() {
                    let lg = logits(p)?;
                    if n == 0 {
                        ok += f32::from(u8::from(lg.argmax(D::Minus1)?.to_vec1::<u32>()? == p.targets));
                    }
                    let t = Tensor::new(p.targets.as_slice(), model.device())?;
                    parts.push(candle_nn::loss::cross_entropy(&lg, &t)?);
                    for (k, s) in states.iter().enumerate() {
                        let g = net.gates(k, &s.narrow(0, p.start, s.dim(0)? - p.start)?, &keys[k])?;
                        gate.push(bce(&g.narrow(1, 0, 1)?, 1.0)?);
                        gate.push(bce(&g.narrow(1, 1, 1)?, 0.0)?);
                    }
                }
                let edit_loss = Tensor::stack(&parts, 0)?.mean_all()?;
                let mut kl = Vec::new();
                for (p, states) in &case.loc {
                    let base = p.base_logp.as_ref().ok_or_else(|| Error::Invalid("no base".into()))?;
                    let logp = candle_nn::ops::log_softmax(&logits(p)?, D::Minus1)?;
                    kl.push((base.exp()? * (base - logp)?)?.sum(D::Minus1)?.mean_all()?);
                    for (k, s) in states.iter().enumerate() {
                        gate.push(bce(&net.gates(k, s, &keys[k])?, 0.0)?);
                    }
                }
                let loc_loss = Tensor::stack(&kl, 0)?.mean_all()?;
                let gate_loss = Tensor::stack(&gate, 0)?.mean_all()?;
                se += edit_loss.to_scalar::<f32>()?;
                sl += loc_loss.to_scalar::<f32>()?;
                sg += gate_loss.to_scalar::<f32>()?;
                cnt += 1;
                total.push(((edit_loss + (loc_loss * params.train.loc_weight)?)? + (gate_loss * params.gate_weight)?)?);
            }
            opt.backward_step(&Tensor::stack(&total, 0)?.mean_all()?)?;
            if step.is_multiple_of(50) || step == params.train.steps {
                let c = cnt.max(1) as f32;
                let point = serde_json::json!({
                    "step": step, "edit_loss": se / c, "loc_loss": sl / c, "gate_loss": sg / c, "edit_success": ok / c,
                });
                progress(
                    step,
                    params.train.steps,
                    &format!("edit {:.3} loc {:.4} gate {:.3} success {:.2}", se / c, sl / c, sg / c, ok / c),
                );
                curve.push(point);
                (se, sl, sg, ok, cnt) = (0.0, 0.0, 0.0, 0.0, 0);
            } else {
                progress(step, params.train.steps, "");
            }
        }
        Ok(Self { net, params, eos, curve })
    }

    /// Writes `dir/net.{safetensors,json}` with the training curve.
    pub fn save(&self, dir: &Path, data: &str) -> Result<()> {
        hypernet::save_net(&self.net.set, dir, FORMAT, &self.net.layers, &self.params, &self.curve, data)
    }

    /// Reads a network written by [`Serac::save`] for `model`.
    pub fn load(dir: &Path, model: &Llava, eos: u32) -> Result<Self> {
        let (params, layers, set) = hypernet::load_net(dir, model, "serac", FORMAT, |p: &SeracParams| p.layers)?;
        let net = SeracNet { layers, set };
        net::check(&net, model.text().config().hidden_size)?;
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
        let mut patch = Patch::new(Provenance::new(self.name(), &self.params, request)?, BTreeMap::new());
        patch.serac = Some(SeracEntry { net: self.net.clone(), edits: store(ctx.model, &seq, &self.net.layers)? });
        Ok(patch)
    }
}
