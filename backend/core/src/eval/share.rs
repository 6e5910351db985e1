//! The knowledge share an edit's latent in-context knowledge takes on each kind of probe (UniKE §3.3, Eq. 7: the
//! semantic space should make retrieved knowledge count on inputs related to the edit and not on unrelated ones).
//!
//! For each case, the method edits on a fresh stack; each probe is run teacher-forced with the share captured at
//! every layer whose attention hooks mix knowledge in ([`CapturePoint::KnowledgeShare`]: α, the knowledge's weight); the
//! figure is its mean over those layers and over the positions that predict the answer (the prompt's last position
//! and the answer's), then over cases.

use crate::edit::{EditContext, EditMethod, EditSequence, PatchStack};
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, Hooks};
use crate::model::VisionLanguageModel;

use super::harness::{Evaluator, PreparedCase};

/// The probe kinds, in [`PreparedCase::probes`] order.
pub const PROBE_KINDS: [&str; 5] = ["edit", "rephrased question", "other image", "unrelated text", "unrelated image"];

/// Mean knowledge share per probe kind (in [`PROBE_KINDS`] order) over `cases`, each edited one-step by `method`;
/// `None` when the method mixes no knowledge in (no latent shift on any layer).
pub fn knowledge_shares(
    ev: &Evaluator<'_>,
    method: &dyn EditMethod,
    cases: &[PreparedCase],
) -> Result<Option<[f32; 5]>> {
    let mut sums = [0f64; 5];
    let mut any = false;
    for case in cases {
        let mut stack = PatchStack::new();
        let patch =
            method.edit(&EditContext { model: ev.model, processor: ev.processor, stack: &stack }, case.request())?;
        stack.push(patch);
        let hooks = stack.hooks()?;
        for (kind, seq) in case.probes().into_iter().enumerate() {
            if let Some(m) = knowledge_share(ev.model, seq, &hooks)? {
                sums[kind] += m as f64;
                any = true;
            }
        }
    }
    if !any {
        return Ok(None);
    }
    let n = cases.len().max(1) as f64;
    Ok(Some(sums.map(|s| (s / n) as f32)))
}

/// The knowledge share `hooks` give `seq` (teacher-forced): its mean over the layers that mix knowledge in and the
/// positions predicting the answer; `None` when no layer does (what the edit inspector shows per probe).
pub fn knowledge_share(model: &dyn VisionLanguageModel, seq: &EditSequence, hooks: &Hooks) -> Result<Option<f32>> {
    let mut cap = Capture::at_layers(0..model.num_layers(), CapturePoint::KnowledgeShare);
    // Hooks that decide per input (a SERAC edit below on the stack) are resolved on the prompt first, as scoring does.
    let inputs = seq.inputs_hooked(model, hooks)?;
    let routed = model.routed(hooks, &inputs, seq.prompt_len - 1)?;
    model.forward_inputs(&inputs, None, &routed, &mut cap)?;
    answer_mean(seq, &cap)
}

/// Mean of the captured shares over layers and the positions predicting `seq`'s answer; `None` without any.
fn answer_mean(seq: &EditSequence, cap: &Capture) -> Result<Option<f32>> {
    let from = seq.prompt_len.checked_sub(1).ok_or_else(|| Error::Invalid("a probe without a prompt".into()))?;
    let len = seq.ids.len() - 1 - from;
    let mut total = 0f32;
    let mut layers = 0usize;
    for ((_, point), t) in cap.captured() {
        if *point != CapturePoint::KnowledgeShare {
            continue;
        }
        total += t.narrow(1, from, len)?.mean_all()?.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        layers += 1;
    }
    Ok((layers > 0).then(|| total / layers as f32))
}
