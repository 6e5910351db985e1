//! Training extra FFN key-value neurons on one edit (T-Patcher, Huang et al. 2023; UniKE's intrinsic editing, §3.1):
//! the new neurons must make the model answer the target (cross-entropy), fire on the edit's positions (activation
//! above a margin) and stay silent on unrelated inputs (pre-activation below minus a margin on a memory of other
//! questions). The layers below the first edited one, and that layer's attention half, are frozen, so they run once
//! per edit; only the rest runs at each optimisation step.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use super::{EditContext, EditSequence};
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, ExtraNeurons, Hooks};
use crate::model::config::Activation;
use crate::model::kernels;
use crate::world::rng::Rng;

/// Hyper-parameters of neuron training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeuronParams {
    /// Patch the FFN of the last `last_layers` decoder layers.
    pub last_layers: usize,
    /// New neurons per patched layer; with `per_mistake`, at most this many (T-Patcher: 5).
    pub neurons: usize,
    /// One neuron per mistaken token (T-Patcher: "one mistake worth one neuron"): the answer positions (answer and
    /// end of sequence) whose pre-edit argmax is not the target, each neuron aimed at its own; at least one.
    #[serde(default)]
    pub per_mistake: bool,
    /// Optimisation steps at most (stops early once the target is the argmax everywhere and the margins hold).
    pub steps: usize,
    /// Adam learning rate (of the values, and of the keys unless `key_lr` is set).
    pub lr: f64,
    /// Adam learning rate of the keys and biases when they are trained, if other than `lr` (a step of `lr` on each of
    /// a key's `d` entries moves its pre-activations by about `lr·√d·|q|`, far more than the margins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_lr: Option<f64>,
    /// Pre-activation the neurons should reach on the edit positions.
    pub edit_margin: f32,
    /// Pre-activation the neurons should stay below, negated, on unrelated inputs.
    pub memory_margin: f32,
    /// Weights of the activation and memory terms.
    pub edit_weight: f32,
    pub memory_weight: f32,
    /// T-Patcher's relative memory term: each neuron's pre-activation at its mistake must exceed its pre-activation on
    /// every memory query by this margin (part of the memory term, same weight). `None`: no relative term.
    #[serde(default)]
    pub relative_margin: Option<f32>,
    /// Optimise keys and biases too (T-Patcher). When false, the keys keep their initialisation (which already puts
    /// most memory queries below the memory margin and the edit at the edit margin), only the values are trained, and
    /// training stops once the target is the argmax everywhere and the mean excess cross-entropy is at most
    /// `stop_loss` (excess: at a mistake its cross-entropy, elsewhere what exceeds the pre-edit cross-entropy).
    #[serde(default = "yes")]
    pub train_keys: bool,
    #[serde(default)]
    pub stop_loss: f32,
}

fn yes() -> bool {
    true
}

/// FFN inputs of unrelated questions at each patched layer, `(m, d)`: T-Patcher's memory, under the current stack
/// and `extra` hooks (what the edit adds besides its neurons).
pub fn memory_queries(
    ctx: &EditContext<'_>,
    memory: &[EditSequence],
    layers: &[usize],
    extra: &Hooks,
) -> Result<BTreeMap<usize, Tensor>> {
    let mut hooks = ctx.stack_hooks()?;
    hooks.extend(extra);
    let mut rows: BTreeMap<usize, Vec<Tensor>> = BTreeMap::new();
    for seq in memory {
        let mut cap = Capture::at_layers(layers.iter().copied(), CapturePoint::FfnInput);
        ctx.model.forward_inputs(&seq.inputs(ctx.model)?, None, &hooks, &mut cap)?;
        for &l in layers {
            let q =
                cap.get(l, CapturePoint::FfnInput).ok_or_else(|| Error::Invalid(format!("layer {l} not captured")))?;
            rows.entry(l).or_default().push(q.squeeze(0)?.to_dtype(DType::F32)?);
        }
    }
    rows.into_iter().map(|(l, r)| Ok((l, Tensor::cat(&r, 0)?))).collect()
}

/// The earlier edits of the stack as memory sequences (T-Patcher keeps previously edited inputs in its memory, so a new
/// neuron does not fire on them): each patch's question, image (from its provenance path, when readable) and target.
pub fn stack_memory(ctx: &EditContext<'_>, eos: u32) -> Result<Vec<EditSequence>> {
    let mut out = Vec::new();
    for (_, p) in ctx.stack.iter() {
        let pv = &p.provenance;
        let pixels = match pv.image.as_deref().map(std::path::Path::new) {
            Some(path) if path.is_file() => Some(ctx.processor.load_image(path, ctx.model.device())?),
            Some(_) => continue,
            None => None,
        };
        out.push(EditSequence::new(ctx.processor, &pv.prompt, pixels.as_ref(), &pv.target, eos)?);
    }
    Ok(out)
}

/// What else shapes neuron training besides the hyper-parameters.
#[derive(Default)]
pub struct NeuronSetting {
    /// Hooks the edit adds besides its neurons (applied on top of the stack while training).
    pub extra: Hooks,
    /// Per layer, a fixed vector `(d)` added to every new neuron's value (UniKE's `β·ζ'`, Eq. 6).
    pub value_offset: BTreeMap<usize, Tensor>,
}

/// Trains the neurons of one edit. `memory` maps each patched layer to its unrelated queries (see
/// [`memory_queries`]).
pub fn train_neurons(
    ctx: &EditContext<'_>,
    seq: &EditSequence,
    memory: &BTreeMap<usize, Tensor>,
    params: &NeuronParams,
    seed: u64,
    setting: &NeuronSetting,
) -> Result<BTreeMap<usize, ExtraNeurons>> {
    let model = ctx.model;
    let n_layers = model.num_layers();
    if params.last_layers == 0 || params.last_layers > n_layers || params.neurons == 0 {
        return Err(Error::Invalid(format!(
            "neuron training needs 1..={n_layers} layers and at least one neuron (got {} layers, {} neurons)",
            params.last_layers, params.neurons
        )));
    }
    let first = n_layers - params.last_layers;
    let layers: Vec<usize> = (first..n_layers).collect();
    let device = model.device();
    let mut base = ctx.stack_hooks()?;
    base.extend(&setting.extra);
    let offset = |l: usize, v: &Tensor| -> Result<Tensor> {
        Ok(match setting.value_offset.get(&l) {
            Some(o) => v.broadcast_add(o)?,
            None => v.clone(),
        })
    };

    // Run the frozen part once: the input of the first patched layer and the FFN inputs at the edit positions.
    let mut cap = Capture::of(
        std::iter::once((first, CapturePoint::PostAttention))
            .chain(layers.iter().map(|&l| (l, CapturePoint::FfnInput))),
    );
    // Its output (the model before the edit, under the stack) also tells where the mistakes are.
    let inputs = seq.inputs(model)?;
    let pre_edit = model.forward_inputs(&inputs, None, &base, &mut cap)?;
    // The attention half of the first patched layer (with any shift the edit adds) does not depend on the neurons:
    // steps start at its FFN.
    let x0 = cap
        .get(first, CapturePoint::PostAttention)
        .ok_or_else(|| Error::Invalid("post-attention state not captured".into()))?
        .detach();
    let n_t = seq.targets().len();
    let targets = Tensor::new(seq.targets(), device)?;

    // Where the mistakes are: the answer positions whose pre-edit argmax is not the target (T-Patcher: one mistake,
    // one neuron). Neuron `j` answers mistake `j mod m`.
    let pre_logits = model.logits(&pre_edit.narrow(1, seq.prompt_len - 1, n_t)?)?.squeeze(0)?;
    let mistakes: Vec<usize> = {
        let top = pre_logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let m: Vec<usize> = (0..n_t).filter(|&i| top[i] != seq.targets()[i]).collect();
        if m.is_empty() {
            vec![0]
        } else {
            m
        }
    };
    let n_neurons = if params.per_mistake { mistakes.len().min(params.neurons) } else { params.neurons };
    // The stopping rule's allowance per answer position: nothing at a mistake, the pre-edit cross-entropy elsewhere
    // (a token the model already answered is not held to more confidence than it had: no neuron is aimed at it).
    let allowance = {
        let pre_ce = token_ce(&pre_logits, &targets)?;
        let is_mistake: Vec<f32> = (0..n_t).map(|i| f32::from(u8::from(!mistakes.contains(&i)))).collect();
        (pre_ce * Tensor::from_vec(is_mistake, n_t, device)?)?
    };
    // Initialise: each key points from the memory's mean to the query at its neuron's mistake, scaled so most memory
    // queries start below the memory margin; the bias puts the mistake's query at the edit margin; values start at 0.
    let mut rng = Rng::derive(seed, "neurons", 0);
    let mut vars: BTreeMap<usize, (Var, Var, Var)> = BTreeMap::new();
    for &l in &layers {
        let qs = cap.get(l, CapturePoint::FfnInput).ok_or_else(|| Error::Invalid("ffn input not captured".into()))?;
        let qs = qs.narrow(1, seq.prompt_len - 1, n_t)?.squeeze(0)?.to_dtype(DType::F32)?;
        let d = qs.dim(1)?;
        let mem = memory.get(&l).filter(|m| m.dim(0).map(|n| n > 0).unwrap_or(false));
        let mut keys = Vec::with_capacity(n_neurons);
        let mut biases = Vec::with_capacity(n_neurons);
        for j in 0..n_neurons {
            let q = qs.get(mistakes[j % mistakes.len()])?;
            // Hidden states share a large common component: point the key away from the memory's mean, so the neuron
            // tells the edit apart from unrelated inputs from the first step.
            let centred = match mem {
                Some(m) => (&q - m.mean(0)?)?,
                None => q.clone(),
            };
            let norm = centred.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?.max(1e-6);
            let noise: Vec<f32> = (0..d).map(|_| if j < mistakes.len() { 0.0 } else { 0.01 * rng.normal() }).collect();
            let dir = ((&centred / f64::from(norm))? + Tensor::from_vec(noise, d, device)?)?;
            // The gap `(q − m)·dir` of the 10th-percentile memory query must cover both margins.
            let scale = match mem {
                Some(m) => {
                    let gaps = m.broadcast_sub(&q)?.affine(-1.0, 0.0)?.matmul(&dir.unsqueeze(1)?)?;
                    let mut gaps = gaps.flatten_all()?.to_vec1::<f32>()?;
                    gaps.sort_by(f32::total_cmp);
                    let p10 = gaps[gaps.len() / 10];
                    if p10 > 0.0 {
                        ((params.edit_margin + params.memory_margin) / p10).clamp(1.0, 20.0)
                    } else {
                        1.0
                    }
                }
                None => 1.0,
            };
            let key = (dir * f64::from(scale))?;
            biases.push(params.edit_margin - (&q * &key)?.sum_all()?.to_scalar::<f32>()?);
            keys.push(key);
        }
        let w_k = Tensor::stack(&keys, 1)?; // (d, n)
        let b_k = Tensor::from_vec(biases, n_neurons, device)?;
        let w_v = Tensor::zeros((n_neurons, d), DType::F32, device)?;
        vars.insert(l, (Var::from_tensor(&w_k)?, Var::from_tensor(&b_k)?, Var::from_tensor(&w_v)?));
    }
    // Each neuron's mistake position, `(n_t, n)` with one 1 per column.
    let own: Vec<f32> = (0..n_t)
        .flat_map(|p| {
            let mistakes = &mistakes;
            (0..n_neurons).map(move |j| f32::from(u8::from(mistakes[j % mistakes.len()] == p)))
        })
        .collect();
    let own = Tensor::from_vec(own, (n_t, n_neurons), device)?;
    let values: Vec<Var> = vars.values().map(|(_, _, v)| v.clone()).collect();
    let keys: Vec<Var> = vars.values().flat_map(|(k, b, _)| [k.clone(), b.clone()]).collect();
    let adam = |vars: Vec<Var>, lr: f64| AdamW::new(vars, ParamsAdamW { lr, weight_decay: 0.0, ..Default::default() });
    let mut opt = adam(values, params.lr)?;
    let mut key_opt = if params.train_keys { Some(adam(keys, params.key_lr.unwrap_or(params.lr))?) } else { None };
    let neurons_of = |vars: &BTreeMap<usize, (Var, Var, Var)>| -> Result<BTreeMap<usize, ExtraNeurons>> {
        vars.iter()
            .map(|(&l, (k, b, v))| {
                let n = ExtraNeurons::new(
                    k.as_tensor().clone(),
                    b.as_tensor().clone(),
                    offset(l, v.as_tensor())?,
                    Activation::Relu,
                )?;
                Ok((l, n))
            })
            .collect()
    };

    for _ in 0..params.steps {
        let neurons = neurons_of(&vars)?;
        let mut hooks = base.clone();
        for (&l, n) in &neurons {
            hooks.add_ffn(l, std::sync::Arc::new(n.clone()));
        }
        let _scope = kernels::differentiable();
        let mut cap = Capture::at_layers(layers.iter().copied(), CapturePoint::FfnInput);
        let h = model.forward_from_ffn(&x0, &inputs.positions, first, &hooks, &mut cap)?;
        let h = model.final_norm(&h.narrow(1, seq.prompt_len - 1, n_t)?)?;
        let logits = model.logits(&h)?.squeeze(0)?;
        let ce_pos = token_ce(&logits, &targets)?;
        let ce = ce_pos.mean_all()?;
        let correct = logits.argmax(D::Minus1)?.to_vec1::<u32>()? == seq.targets();
        let (mut act_loss, mut mem_loss) =
            (Tensor::zeros((), DType::F32, device)?, Tensor::zeros((), DType::F32, device)?);
        let mut margins_hold = true;
        for (&l, n) in &neurons {
            let q =
                cap.get(l, CapturePoint::FfnInput).ok_or_else(|| Error::Invalid("ffn input not captured".into()))?;
            let q = q.narrow(1, seq.prompt_len - 1, n_t)?.squeeze(0)?.to_dtype(DType::F32)?;
            // The activation term holds at each neuron's mistake; cross-entropy decides whether it should also fire
            // elsewhere in the answer.
            let pre = q.matmul(&n.w_k)?.broadcast_add(&n.b_k)?;
            let a = ((pre.affine(-1.0, params.edit_margin as f64)?.relu()? * &own)?.sum_all()? / n_neurons as f64)?;
            margins_hold &= a.to_scalar::<f32>()? <= 0.0;
            act_loss = (act_loss + a)?;
            if let Some(m) = memory.get(&l) {
                let pre_mem = m.matmul(&n.w_k)?.broadcast_add(&n.b_k)?; // (m, n)
                let a = pre_mem.affine(1.0, params.memory_margin as f64)?.relu()?.mean_all()?;
                margins_hold &= a.to_scalar::<f32>()? <= 0.0;
                mem_loss = (mem_loss + a)?;
                if let Some(gap) = params.relative_margin {
                    // Each neuron's pre-activation at its own mistake, `(1, n)`, above every memory query's by `gap`.
                    let at_edit = (&pre * &own)?.sum_keepdim(0)?;
                    let r = pre_mem.broadcast_sub(&at_edit)?.affine(1.0, gap as f64)?.relu()?.mean_all()?;
                    margins_hold &= r.to_scalar::<f32>()? <= 0.0;
                    mem_loss = (mem_loss + r)?;
                }
            }
        }
        let done = if params.train_keys {
            margins_hold
        } else {
            (ce_pos.detach() - &allowance)?.relu()?.mean_all()?.to_scalar::<f32>()? <= params.stop_loss
        };
        if correct && done {
            break;
        }
        let loss = ((ce + (act_loss * params.edit_weight as f64)?)? + (mem_loss * params.memory_weight as f64)?)?;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        if let Some(k) = key_opt.as_mut() {
            k.step(&grads)?;
        }
    }
    // Detach the trained values from the optimiser's graph.
    vars.iter()
        .map(|(&l, (k, b, v))| {
            Ok((
                l,
                ExtraNeurons::new(
                    k.as_tensor().detach(),
                    b.as_tensor().detach(),
                    offset(l, &v.as_tensor().detach())?,
                    Activation::Relu,
                )?,
            ))
        })
        .collect()
}

/// Cross-entropy of each row of `logits` `(n, vocab)` against `targets` `(n)`, `(n)`.
fn token_ce(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let lp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(lp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?)
}
