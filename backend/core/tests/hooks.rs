//! The hook seams: no hooks means the plain path; each seam does exactly what it says, at the layer it names;
//! hooks survive KV-cache decoding; bad hooks are refused.

mod common;

use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use common::{expected, fixture, load};
use unike_core::hooks::{Capture, CapturePoint, ConstantShift, ExtraNeurons, Hooks};
use unike_core::model::config::Activation;
use unike_core::model::{GenerateOptions, Llava, Pixels, Processor, VisionLanguageModel};

fn image_case(model: &Llava, processor: &Processor) -> Result<(Tensor, Tensor)> {
    let case = expected("f32", "image_question")?;
    let ids = Tensor::new(case.input_ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let px = processor.image_processor().load_file(&fixture(case.image.as_deref().unwrap_or("")), &Device::Cpu)?;
    let feats = model.image_features(&px.unsqueeze(0)?)?;
    Ok((ids.clone(), model.embed_inputs(&ids, Some(&feats))?))
}

fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
    // Small deterministic pseudo-random values (xorshift), independent of candle's RNG.
    let n: usize = shape.iter().product();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

fn neurons(d: usize, n: usize, seed: u64, zero_values: bool) -> Result<ExtraNeurons> {
    let w_v = if zero_values { Tensor::zeros((n, d), DType::F32, &Device::Cpu)? } else { randn(&[n, d], seed + 2)? };
    Ok(ExtraNeurons::new(randn(&[d, n], seed)?, randn(&[n], seed + 1)?, w_v, Activation::Relu)?)
}

fn diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn no_hooks_and_no_op_hooks_give_identical_logits() -> Result<()> {
    let (_, model, processor) = load("tiny-llava", None)?;
    let (_, embeds) = image_case(&model, &processor)?;
    let plain = model.forward_embeds(&embeds, 0, None, &Hooks::none(), &mut Capture::none())?;
    // Capturing everything does not change the result.
    let mut all = Capture::of((0..3).flat_map(|l| {
        [CapturePoint::LayerInput, CapturePoint::AttnOutput, CapturePoint::PostAttention, CapturePoint::FfnInput]
            .map(|p| (l, p))
    }));
    let captured = model.forward_embeds(&embeds, 0, None, &Hooks::none(), &mut all)?;
    assert_eq!(plain.flatten_all()?.to_vec1::<f32>()?, captured.flatten_all()?.to_vec1::<f32>()?);
    // Neurons whose values are zero and a zero shift leave every logit bit-identical.
    let d = model.config().text.hidden_size;
    let mut hooks = Hooks::none();
    for l in 0..3 {
        hooks.add_ffn(l, Arc::new(neurons(d, 4, l as u64, true)?));
        hooks.add_attn(l, Arc::new(ConstantShift { vector: Tensor::zeros(d, DType::F32, &Device::Cpu)? }));
    }
    let noop = model.forward_embeds(&embeds, 0, None, &hooks, &mut Capture::none())?;
    assert_eq!(plain.flatten_all()?.to_vec1::<f32>()?, noop.flatten_all()?.to_vec1::<f32>()?);
    Ok(())
}

#[test]
fn ffn_hook_adds_exactly_its_neurons_at_its_layer() -> Result<()> {
    let (_, model, processor) = load("tiny-llava", None)?;
    let (_, embeds) = image_case(&model, &processor)?;
    let d = model.config().text.hidden_size;
    let layer = 2;
    let patch = neurons(d, 6, 7, false)?;
    let points = [(1, CapturePoint::LayerOutput), (layer, CapturePoint::FfnInput), (layer, CapturePoint::LayerOutput)];
    let mut plain = Capture::of(points);
    model.forward_embeds(&embeds, 0, None, &Hooks::none(), &mut plain)?;
    let mut hooks = Hooks::none();
    hooks.add_ffn(layer, Arc::new(patch.clone()));
    let mut hooked = Capture::of(points);
    model.forward_embeds(&embeds, 0, None, &hooks, &mut hooked)?;
    let get = |c: &Capture, l, p| c.get(l, p).cloned().expect("captured");
    // Layers below are untouched.
    assert_eq!(diff(&get(&plain, 1, CapturePoint::LayerOutput), &get(&hooked, 1, CapturePoint::LayerOutput))?, 0.0);
    // The hooked layer's output moves by act(q W_K + b_K) W_V of its FFN query q.
    let q = get(&plain, layer, CapturePoint::FfnInput);
    let want = patch.activations(&q)?.broadcast_matmul(&patch.w_v)?;
    let moved = (get(&hooked, layer, CapturePoint::LayerOutput) - get(&plain, layer, CapturePoint::LayerOutput))?;
    assert!(diff(&moved, &want)? < 1e-5);
    assert!(want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? > 1e-2, "the patch must do something");
    Ok(())
}

#[test]
fn attention_shift_moves_the_attention_output_of_its_layer() -> Result<()> {
    let (_, model, processor) = load("tiny-llava", None)?;
    let (_, embeds) = image_case(&model, &processor)?;
    let d = model.config().text.hidden_size;
    let shift = randn(&[d], 11)?;
    let points = [(0, CapturePoint::LayerOutput), (1, CapturePoint::AttnOutput), (1, CapturePoint::LayerOutput)];
    let mut plain = Capture::of(points);
    let base = model.forward_embeds(&embeds, 0, None, &Hooks::none(), &mut plain)?;
    let mut hooks = Hooks::none();
    hooks.add_attn(1, Arc::new(ConstantShift { vector: shift.clone() }));
    let mut hooked = Capture::of(points);
    let out = model.forward_embeds(&embeds, 0, None, &hooks, &mut hooked)?;
    let get = |c: &Capture, l, p| c.get(l, p).cloned().expect("captured");
    assert_eq!(diff(&get(&plain, 0, CapturePoint::LayerOutput), &get(&hooked, 0, CapturePoint::LayerOutput))?, 0.0);
    let moved = (get(&hooked, 1, CapturePoint::AttnOutput) - get(&plain, 1, CapturePoint::AttnOutput))?;
    assert!(diff(&moved, &shift.unsqueeze(0)?.unsqueeze(0)?.broadcast_as(moved.shape())?)? < 1e-6);
    assert!(diff(&base, &out)? > 1e-3, "a shift in layer 1 changes the output");
    Ok(())
}

#[test]
fn hooks_apply_during_cached_decoding() -> Result<()> {
    // Greedy decoding with a KV cache and hooks must equal re-running the whole sequence with the same hooks.
    let (_, model, processor) = load("tiny-llava", None)?;
    let d = model.config().text.hidden_size;
    let mut hooks = Hooks::none();
    hooks.add_ffn(2, Arc::new(neurons(d, 5, 3, false)?));
    hooks.add_attn(1, Arc::new(ConstantShift { vector: randn(&[d], 5)? }));
    let case = expected("f32", "image_question")?;
    let px = processor.image_processor().load_file(&fixture(case.image.as_deref().unwrap_or("")), &Device::Cpu)?;
    let px = px.unsqueeze(0)?;
    let opts = GenerateOptions { max_new_tokens: 6, eos_token_ids: vec![] };
    let gen = model.generate(&case.input_ids, Some(&Pixels::fixed(px.clone())), &hooks, &opts)?;
    let plain = model.generate(&case.input_ids, Some(&Pixels::fixed(px.clone())), &Hooks::none(), &opts)?;
    assert_ne!(gen.tokens, plain.tokens, "the hooks must change the answer for this test to mean anything");
    let mut seq = case.input_ids.clone();
    for &t in &gen.tokens {
        let ids = Tensor::new(seq.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let logits = model.forward(&ids, Some(&px), &hooks)?;
        let next = logits.get(0)?.get(seq.len() - 1)?.argmax(0)?.to_scalar::<u32>()?;
        assert_eq!(next, t);
        seq.push(t);
    }
    Ok(())
}

#[test]
fn hooks_and_captures_outside_the_model_are_refused() -> Result<()> {
    let (_, model, processor) = load("tiny-llava", None)?;
    let (_, embeds) = image_case(&model, &processor)?;
    let d = model.config().text.hidden_size;
    let mut hooks = Hooks::none();
    hooks.add_ffn(7, Arc::new(neurons(d, 2, 1, false)?));
    let err = model.forward_embeds(&embeds, 0, None, &hooks, &mut Capture::none()).unwrap_err();
    assert!(err.to_string().contains("layer 7"), "{err}");
    let err = model
        .forward_embeds(&embeds, 0, None, &Hooks::none(), &mut Capture::of([(9, CapturePoint::LayerOutput)]))
        .unwrap_err();
    assert!(err.to_string().contains("layer 9"), "{err}");
    let bad = ExtraNeurons::new(randn(&[d, 3], 1)?, randn(&[4], 2)?, randn(&[3, d], 3)?, Activation::Relu);
    assert!(bad.is_err());
    Ok(())
}
