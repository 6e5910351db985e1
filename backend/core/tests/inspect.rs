//! The edit inspector's readings on the tiny random LLaVA of `tests/fixtures`: a patch's extra neurons' pre-activations
//! are the FFN input (under the stack with the patch) times the keys plus the bias, at their largest over the input's
//! positions; a neuron read as fired changes the output, one read as silent does not; the target's probabilities are
//! the softmax of the logits at the target positions and move with the patch.

mod common;

use std::collections::BTreeMap;

use anyhow::{anyhow, ensure, Result};
use candle_core::{Device, Tensor, D};
use common::fixture;
use unike_core::edit::inspect::neuron_readings;
use unike_core::edit::{EditRequest, EditSequence, Patch, Provenance};
use unike_core::hooks::{Capture, CapturePoint, ExtraNeurons, Hooks};
use unike_core::model::config::Activation;
use unike_core::model::Checkpoint;

const LAYER: usize = 1;

#[test]
fn neuron_readings_are_the_keys_on_the_edited_ffn_input_and_say_which_neurons_act() -> Result<()> {
    let ckpt = Checkpoint::open(fixture("tiny-llava"))?;
    let eos = *ckpt.eos_token_ids()?.first().ok_or_else(|| anyhow!("no eos"))?;
    let (model, processor) = (ckpt.load_model(None, &Device::Cpu)?, ckpt.processor()?);
    let image = processor.load_image(&fixture("images/narrow.png"), &Device::Cpu)?;
    let seq = EditSequence::new(&*processor, "what colour is the car", Some(&image), "red", eos)?;
    // The FFN input at LAYER without any patch (the patch's neurons sit in LAYER's FFN, after its input).
    let mut cap = Capture::of([(LAYER, CapturePoint::FfnInput)]);
    model.forward_inputs(&seq.inputs(&*model)?, None, &Hooks::none(), &mut cap)?;
    let x = cap.get(LAYER, CapturePoint::FfnInput).ok_or_else(|| anyhow!("not captured"))?.squeeze(0)?;
    let (s, d) = x.dims2()?;
    // Neuron 0 points along the last prompt position's input (fires there), neuron 1 the same with a bias far below
    // zero (silent everywhere); both carry a large value.
    let last = x.get(seq.prompt_len - 1)?;
    let unit = (&last / last.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64)?;
    let w_k = Tensor::stack(&[&unit, &unit], 1)?; // (d, 2)
    let b_k = Tensor::new(&[0.0f32, -1e6], &Device::Cpu)?;
    let w_v = (Tensor::ones((2, d), candle_core::DType::F32, &Device::Cpu)? * 5.0)?;
    let neurons = ExtraNeurons::new(w_k.clone(), b_k.clone(), w_v, Activation::Relu)?;
    let request = EditRequest { question: "q".into(), image: None, image_path: None, target: "red".into(), seed: 0 };
    let provenance = Provenance::new("t-patcher", &serde_json::json!({}), &request)?;
    let patch = Patch::new(provenance.clone(), BTreeMap::from([(LAYER, neurons)]));
    let hooks = patch.hooks()?;

    let r = neuron_readings(&*model, &seq, &hooks, &patch)?;
    ensure!(r.len() == 2, "{r:?}");
    // By hand: the keys on the FFN input (unchanged by the patch, whose neurons act after it), largest over positions.
    let pre: Vec<f32> = x.matmul(&w_k)?.broadcast_add(&b_k)?.max(D::Minus2)?.to_vec1()?;
    for (i, reading) in r.iter().enumerate() {
        ensure!((reading.layer, reading.neuron) == (LAYER, i), "{reading:?}");
        ensure!((reading.pre_activation - pre[i]).abs() <= 1e-3 * pre[i].abs().max(1.0), "{reading:?} vs {}", pre[i]);
    }
    ensure!(r[0].fired && r[0].pre_activation > 0.0, "{:?}", r[0]);
    ensure!(!r[1].fired && r[1].pre_activation < -1e5, "{:?}", r[1]);
    ensure!(s > seq.prompt_len, "the reading covers the answer positions too");

    // What "fired" means: the silent neuron alone changes nothing; the firing one alone changes the logits.
    let logits = |h: &Hooks| -> Result<Tensor> { Ok(seq.target_logits(&*model, h)?) };
    let base = logits(&Hooks::none())?;
    let only = |keep: usize| -> Result<Patch> {
        let pick = |t: &Tensor, dim: usize| t.narrow(dim, keep, 1);
        let n = ExtraNeurons::new(
            pick(&w_k, 1)?,
            pick(&b_k, 0)?,
            (Tensor::ones((1, d), candle_core::DType::F32, &Device::Cpu)? * 5.0)?,
            Activation::Relu,
        )?;
        Ok(Patch::new(provenance.clone(), BTreeMap::from([(LAYER, n)])))
    };
    let diff = |p: &Patch| -> Result<f32> { Ok((logits(&p.hooks()?)? - &base)?.abs()?.max_all()?.to_scalar()?) };
    ensure!(diff(&only(1)?)? == 0.0, "a silent neuron changes nothing");
    ensure!(diff(&only(0)?)? > 1e-3, "a firing neuron changes the output");

    // The target's probabilities: softmax of the target logits at the targets, moved by the patch.
    let probs = seq.target_probabilities(&*model, &Hooks::none())?;
    let soft = candle_nn::ops::softmax_last_dim(&base)?;
    for (i, &t) in seq.targets().iter().enumerate() {
        let want = soft.get(i)?.get(t as usize)?.to_scalar::<f32>()?;
        ensure!((probs[i] - want).abs() < 1e-6, "target {i}: {} vs {want}", probs[i]);
    }
    ensure!(seq.target_probabilities(&*model, &hooks)? != probs, "the patch moves the target's probabilities");
    // A patch without neurons reads nothing.
    ensure!(neuron_readings(&*model, &seq, &Hooks::none(), &Patch::new(provenance, BTreeMap::new()))?.is_empty());
    Ok(())
}
