//! Training a [`GradientEditor`]: each step draws `batch` training cases, turns each case's gradient into `ΔW_down`
//! at the edited layers, and minimises the cross-entropy of the target on the edit and its two rephrasings plus
//! `loc_weight` times the KL divergence from the unedited model on two unrelated questions (MEND's `L_e + c_loc L_loc`,
//! KE's constrained objective in its Lagrangian form). Deterministic given the seed.

use std::sync::Arc;

use candle_core::{Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use super::data::{Probe, TrainCase};
use super::{GradientEditor, TrainParams};
use crate::edit::patch::{down_delta, up_delta};
use crate::error::{Error, Result};
use crate::hooks::{Capture, Hooks};
use crate::model::{kernels, VisionLanguageModel};
use crate::world::rng::Rng;

/// A point of the training curve (means over the steps since the previous point).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainStep {
    pub step: usize,
    pub edit_loss: f32,
    pub loc_loss: f32,
    /// Fraction of edits whose every answer token is the argmax after the change.
    pub edit_success: f32,
}

/// The hooks applying `net`'s change for `grad`.
pub fn delta_hooks(
    model: &dyn VisionLanguageModel,
    net: &dyn GradientEditor,
    grad: &crate::edit::gradient::EditGrad,
) -> Result<Hooks> {
    let mut hooks = Hooks::none();
    for (k, &l) in net.layers().iter().enumerate() {
        let down = net.delta(k, grad)?;
        if let Some(up) = net.up_delta(k, grad)? {
            hooks.add_ffn(l, Arc::new(up_delta(model, l, up, Some(down.clone()))?));
        }
        hooks.add_ffn(l, Arc::new(down_delta(model, l, down)?));
    }
    Ok(hooks)
}

/// Logits `(n, vocab)` of `probe`'s answer positions under `hooks`, from the first edited layer up.
fn probe_logits(model: &dyn VisionLanguageModel, probe: &Probe, first: usize, hooks: &Hooks) -> Result<Tensor> {
    let n = model.num_layers();
    let h = model.forward_layers(&probe.x0.embeds, &probe.x0.positions, first..n, None, hooks, &mut Capture::none())?;
    let h = model.final_norm(&h.narrow(1, probe.start, probe.targets.len())?)?;
    Ok(model.logits(&h)?.squeeze(0)?)
}

/// Editing loss, locality loss and success of one case under `hooks` (differentiable).
fn case_losses(
    model: &dyn VisionLanguageModel,
    case: &TrainCase,
    first: usize,
    hooks: &Hooks,
) -> Result<(Tensor, Tensor, bool)> {
    let mut edit = Vec::new();
    let mut success = false;
    for (i, p) in case.edit.iter().enumerate() {
        let logits = probe_logits(model, p, first, hooks)?;
        if i == 0 {
            success = logits.argmax(D::Minus1)?.to_vec1::<u32>()? == p.targets;
        }
        let targets = Tensor::new(p.targets.as_slice(), model.device())?;
        edit.push(candle_nn::loss::cross_entropy(&logits, &targets)?);
    }
    let mut loc = Vec::new();
    for p in &case.loc {
        let base = p.base_logp.as_ref().ok_or_else(|| Error::Invalid("locality probe without a base".into()))?;
        let logp = candle_nn::ops::log_softmax(&probe_logits(model, p, first, hooks)?, D::Minus1)?;
        loc.push((base.exp()? * (base - logp)?)?.sum(D::Minus1)?.mean_all()?);
    }
    let mean = |v: Vec<Tensor>| -> Result<Tensor> { Ok((Tensor::stack(&v, 0)?.mean_all())?) };
    Ok((mean(edit)?, mean(loc)?, success))
}

/// Trains `net` on `cases`; `progress(step, steps, last point)` after every step. Returns the curve.
pub fn train(
    model: &dyn VisionLanguageModel,
    net: &dyn GradientEditor,
    cases: &[TrainCase],
    params: &TrainParams,
    progress: &mut dyn FnMut(usize, usize, Option<&TrainStep>),
) -> Result<Vec<TrainStep>> {
    if cases.is_empty() || params.batch == 0 {
        return Err(Error::Invalid("training needs at least one case and a batch of one".into()));
    }
    let first = net.layers().first().copied().ok_or_else(|| Error::Invalid("no edited layers".into()))?;
    let (vars, step_vars) = net.params().trainable(&["mean", "std"]);
    let adam = |vars: Vec<candle_core::Var>, lr: f64| {
        AdamW::new(vars, ParamsAdamW { lr, weight_decay: 0.0, ..Default::default() })
    };
    let (mut opt, mut opt_step) = (adam(vars, params.lr)?, adam(step_vars, params.lr_step)?);
    let mut rng = Rng::derive(params.seed, "hypernet", 0);
    let mut curve = Vec::new();
    let (mut sum_e, mut sum_l, mut sum_s, mut count) = (0f32, 0f32, 0f32, 0usize);
    for step in 1..=params.steps {
        let _scope = kernels::differentiable();
        let mut total = Vec::with_capacity(params.batch);
        for _ in 0..params.batch {
            let case = &cases[rng.below(cases.len())];
            let hooks = delta_hooks(model, net, &case.grad)?;
            let (e, l, ok) = case_losses(model, case, first, &hooks)?;
            sum_e += e.to_scalar::<f32>()?;
            sum_l += l.to_scalar::<f32>()?;
            sum_s += f32::from(u8::from(ok));
            count += 1;
            total.push((e + (l * params.loc_weight)?)?);
        }
        let loss = Tensor::stack(&total, 0)?.mean_all()?;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        opt_step.step(&grads)?;
        let point = if step.is_multiple_of(50) || step == params.steps {
            let c = count.max(1) as f32;
            curve.push(TrainStep { step, edit_loss: sum_e / c, loc_loss: sum_l / c, edit_success: sum_s / c });
            (sum_e, sum_l, sum_s, count) = (0.0, 0.0, 0.0, 0);
            curve.last()
        } else {
            None
        };
        progress(step, params.steps, point);
    }
    Ok(curve)
}
