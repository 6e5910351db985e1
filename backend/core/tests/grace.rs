//! GRACE (issue 19) on the tiny random LLaVA of `tests/fixtures`: the codebook replaces the layer's FFN output with
//! the trained value exactly at the positions whose key falls within a radius (the edit's last prompt token) and
//! nowhere else; a second edit of the same question with another answer splits the key and wins; undoing it brings
//! the first value back; an edit of a rephrased question with the same answer within reach joins the first key; the
//! patch round-trips.

mod common;

use std::sync::Arc;

use anyhow::{anyhow, ensure, Result};
use candle_core::{Device, Tensor};
use common::fixture;
use unike_core::edit::grace::{Grace, GraceParams};
use unike_core::edit::{EditContext, EditMethod, EditRequest, EditSequence, Patch, PatchStack};
use unike_core::hooks::{Capture, CapturePoint, Hooks};
use unike_core::model::{Checkpoint, ModelProcessor, VisionLanguageModel};

const LAYER: usize = 1;

struct Fx {
    model: Arc<dyn VisionLanguageModel>,
    processor: Arc<dyn ModelProcessor>,
    eos: u32,
}

fn fx() -> Result<Fx> {
    let ckpt = Checkpoint::open(fixture("tiny-llava"))?;
    let eos = *ckpt.eos_token_ids()?.first().ok_or_else(|| anyhow!("no eos"))?;
    Ok(Fx { model: ckpt.load_model(None, &Device::Cpu)?, processor: ckpt.processor()?, eos })
}

fn request(fx: &Fx, question: &str, target: &str) -> Result<EditRequest> {
    let image = fx.processor.load_image(&fixture("images/narrow.png"), &Device::Cpu)?;
    Ok(EditRequest { question: question.into(), image: Some(image), image_path: None, target: target.into(), seed: 0 })
}

/// The FFN output of layer [`LAYER`] at every position of `r`'s prompt and target under `hooks`, `(s, d)`.
fn ffn_out(fx: &Fx, r: &EditRequest, hooks: &Hooks) -> Result<(Tensor, usize)> {
    let m = &*fx.model;
    let seq = EditSequence::new(&*fx.processor, &r.question, r.image.as_ref(), &r.target, fx.eos)?;
    let mut cap = Capture::of([(LAYER, CapturePoint::PostAttention), (LAYER, CapturePoint::LayerOutput)]);
    m.forward_inputs(&seq.inputs(m)?, None, hooks, &mut cap)?;
    let get = |p| cap.get(LAYER, p).cloned().ok_or_else(|| anyhow!("not captured"));
    Ok(((get(CapturePoint::LayerOutput)? - get(CapturePoint::PostAttention)?)?.squeeze(0)?, seq.prompt_len - 1))
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

fn edit(fx: &Fx, g: &Grace, stack: &PatchStack, r: &EditRequest) -> Result<Patch> {
    Ok(g.edit(&EditContext { model: &*fx.model, processor: &*fx.processor, stack }, r)?)
}

#[test]
fn the_codebook_replaces_exactly_where_a_key_matches() -> Result<()> {
    let fx = fx()?;
    let grace = Grace::new(GraceParams { layer: LAYER, ..GraceParams::default() }, &*fx.model, fx.eos)?;
    let r1 = request(&fx, "what colour is the car", "red")?;
    let mut stack = PatchStack::new();
    let p1 = edit(&fx, &grace, &stack, &r1)?;
    let value1 = p1.grace.as_ref().ok_or_else(|| anyhow!("no entry"))?.value.clone();
    let (base, pos) = ffn_out(&fx, &r1, &Hooks::none())?;
    let id1 = stack.push(p1.clone());
    let (after, _) = ffn_out(&fx, &r1, &stack.hooks()?)?;
    ensure!(max_diff(&after.get(pos)?, &value1)? < 1e-4, "the edit's last prompt token does not carry the value");
    for i in (0..after.dim(0)?).filter(|&i| i != pos) {
        ensure!(max_diff(&after.get(i)?, &base.get(i)?)? == 0.0, "position {i} changed");
    }
    // An unrelated question keeps its FFN output everywhere.
    let other = request(&fx, "how many birds are there", "three")?;
    let (o0, _) = ffn_out(&fx, &other, &Hooks::none())?;
    ensure!(max_diff(&ffn_out(&fx, &other, &stack.hooks()?)?.0, &o0)? == 0.0, "an unrelated question changed");
    // The same question with another answer: a split key whose newer value wins; undo brings the first back.
    let r2 = request(&fx, "what colour is the car", "blue")?;
    let p2 = edit(&fx, &grace, &stack, &r2)?;
    let value2 = p2.grace.as_ref().ok_or_else(|| anyhow!("no entry"))?.value.clone();
    ensure!(max_diff(&value1, &value2)? > 1e-3, "the second value equals the first");
    let id2 = stack.push(p2.clone());
    ensure!(max_diff(&ffn_out(&fx, &r1, &stack.hooks()?)?.0.get(pos)?, &value2)? < 1e-4, "the newer value lost");
    stack.remove(id2)?;
    ensure!(max_diff(&ffn_out(&fx, &r1, &stack.hooks()?)?.0.get(pos)?, &value1)? < 1e-4, "undo lost the first value");
    // A rephrased question with the same answer, within a wide reach, joins the first key: its value is trained from
    // the first's and then answers both.
    stack.remove(id1)?;
    let wide = Grace::new(GraceParams { layer: LAYER, eps: 1e6, ..GraceParams::default() }, &*fx.model, fx.eos)?;
    let q1 = edit(&fx, &wide, &stack, &r1)?;
    stack.push(q1);
    let r3 = request(&fx, "which colour is the car", "red")?;
    let q3 = edit(&fx, &wide, &stack, &r3)?;
    let value3 = q3.grace.as_ref().ok_or_else(|| anyhow!("no entry"))?.value.clone();
    stack.push(q3.clone());
    ensure!(max_diff(&ffn_out(&fx, &r1, &stack.hooks()?)?.0.get(pos)?, &value3)? < 1e-4, "the joined key's value");
    // The patch round-trips.
    let dir = std::env::temp_dir().join(format!("unike-grace-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    q3.save(&dir.join("p"))?;
    let back = Patch::load(&dir.join("p"), &*fx.model);
    let _ = std::fs::remove_dir_all(&dir);
    let back = back?.grace.ok_or_else(|| anyhow!("no entry after loading"))?;
    ensure!(max_diff(&back.value, &value3)? == 0.0 && back.label == "red" && back.layer == LAYER && back.eps == 1e6);
    Ok(())
}
