//! Parity with HF transformers on the tiny random BLIP-2 (OPT) fixtures written by
//! `tests/fixtures/make_tiny_blip2.py`: same input ids and pixel values; vision, Q-Former, projection and decoder
//! hidden states and last-position logits within 1e-4; identical greedy tokens and answers; and the hook seams of
//! the OPT decoder.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use common::{fixture, max_abs_diff};
use serde::Deserialize;
use unike_core::hooks::{Capture, CapturePoint, ConstantShift, ContextKv, ExtraNeurons, Hooks};
use unike_core::model::config::Activation;
use unike_core::model::{Blip2, Blip2Checkpoint, Blip2Processor, GenerateOptions, Pixels, VisionLanguageModel};

const TOL: f32 = 1e-4;
const CASES: [&str; 3] = ["image_question", "image_caption", "image_only"];

/// One case of `expected-blip2/expected.json` (`prompt` is null for the image alone).
#[derive(Debug, Clone, Deserialize)]
struct Case {
    prompt: Option<String>,
    image: String,
    input_ids: Vec<u32>,
    last_logits: Vec<f32>,
    answer_ids: Vec<u32>,
    answer: String,
}

fn expected(variant: &str, name: &str) -> Result<Case> {
    let path = fixture("expected-blip2/expected.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    serde_json::from_value(v["variants"][variant][name].clone()).with_context(|| format!("case {variant}/{name}"))
}

fn tensors() -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(fixture("expected-blip2/expected.safetensors"), &Device::Cpu)?)
}

fn load(dir: &str, dtype: Option<DType>) -> Result<(Blip2Checkpoint, Blip2, Blip2Processor)> {
    let ckpt = Blip2Checkpoint::open(fixture(dir))?;
    let model = ckpt.load_model(dtype, &Device::Cpu)?;
    let processor = ckpt.processor()?;
    Ok((ckpt, model, processor))
}

/// Largest absolute difference of two tensors of the same shape (compared in f32).
fn diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn pixels(processor: &Blip2Processor, case: &Case) -> Result<Tensor> {
    Ok(processor.image_processor().load_file(&fixture(&case.image), &Device::Cpu)?.unsqueeze(0)?)
}

/// Ids, generation, logits and answer of every case against `variant`; with `stages`, every intermediate tensor
/// against the f32 reference too. Returns the largest difference per stage.
fn check_variant(dir: &str, dtype: Option<DType>, variant: &str, stages: bool) -> Result<Vec<(String, f32)>> {
    let (ckpt, model, processor) = load(dir, dtype)?;
    let want = tensors()?;
    let mut worst: Vec<(String, f32)> = Vec::new();
    let mut note = |stage: &str, d: f32| match worst.iter_mut().find(|(s, _)| s == stage) {
        Some((_, w)) => *w = w.max(d),
        None => worst.push((stage.to_string(), d)),
    };
    for name in CASES {
        let case = expected(variant, name)?;
        let ids = processor.encode(case.prompt.as_deref().unwrap_or(""))?;
        assert_eq!(ids, case.input_ids, "{variant}/{name}: input ids");
        let px = pixels(&processor, &case)?;
        let w = |k: &str| -> Result<&Tensor> {
            want.get(&format!("{name}.{k}")).with_context(|| format!("expected tensor {name}.{k}"))
        };
        note("pixel_values", diff(&px.squeeze(0)?, w("pixel_values")?)?);
        if stages {
            let vision = model.vision_features(&px)?;
            note("vision", diff(&vision.squeeze(0)?, w("vision_last_hidden_state")?)?);
            let queries = model.query_features(&vision)?;
            note("qformer", diff(&queries.squeeze(0)?, w("qformer_last_hidden_state")?)?);
            let projected = model.project(&queries)?;
            note("projection", diff(&projected.squeeze(0)?, w("language_projection")?)?);
            let ids_t = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
            let embeds = model.embed_inputs(&ids_t, Some(&projected))?;
            let n = model.text().num_layers();
            let mut cap = Capture::of(
                std::iter::once((0, CapturePoint::LayerInput))
                    .chain((0..n - 1).map(|l| (l, CapturePoint::LayerOutput))),
            );
            let last = model.forward_embeds(&embeds, 0, None, &Hooks::none(), &mut cap)?;
            let mut states = vec![cap.get(0, CapturePoint::LayerInput).context("layer 0 input")?.clone()];
            for l in 0..n - 1 {
                states.push(cap.get(l, CapturePoint::LayerOutput).context("layer output")?.clone());
            }
            states.push(last);
            for (i, s) in states.iter().enumerate() {
                note(&format!("hidden_states.{i}"), diff(&s.squeeze(0)?, w(&format!("hidden_states.{i}"))?)?);
            }
        }
        let opts =
            GenerateOptions { max_new_tokens: case.answer_ids.len().max(1), eos_token_ids: ckpt.eos_token_ids() };
        let gen = model.generate(&ids, Some(&Pixels::fixed(px.clone())), &Hooks::none(), &opts)?;
        note("last_logits", max_abs_diff(&gen.first_logits, &case.last_logits));
        assert_eq!(gen.tokens, case.answer_ids, "{variant}/{name}: greedy tokens");
        assert_eq!(processor.decode(&gen.tokens)?, case.answer, "{variant}/{name}: decoded answer");
    }
    eprintln!("{variant} ({dir}, {:?}): {worst:?}", model.dtype());
    Ok(worst)
}

fn assert_within(variant: &str, worst: &[(String, f32)], pixel_tol: f32, tol: f32) {
    for (stage, d) in worst {
        let t = if stage == "pixel_values" { pixel_tol } else { tol };
        assert!(*d <= t, "{variant}: {stage} differs by {d} (> {t})");
    }
}

#[test]
fn sharded_f32_checkpoint_matches_transformers() -> Result<()> {
    let ckpt = Blip2Checkpoint::open(fixture("tiny-blip2"))?;
    assert_eq!(ckpt.weight_files.len(), 2, "the fixture is sharded with an index");
    assert!(ckpt.has_lm_head, "the hub layout carries the tied head");
    assert_eq!(ckpt.config.stored_dtype, Some(DType::F32));
    assert_eq!(ckpt.config.num_query_tokens, 4);
    let worst = check_variant("tiny-blip2", None, "f32", true)?;
    assert_within("f32", &worst, 1e-6, TOL);
    Ok(())
}

#[test]
fn transformers5_bf16_checkpoint_loaded_as_f32_matches_transformers() -> Result<()> {
    let ckpt = Blip2Checkpoint::open(fixture("tiny-blip2-bf16"))?;
    assert!(!ckpt.has_lm_head, "save_pretrained leaves the tied head out");
    assert_eq!(ckpt.config.stored_dtype, Some(DType::BF16));
    let f32_ckpt = Blip2Checkpoint::open(fixture("tiny-blip2"))?;
    assert_eq!(ckpt.config.text, f32_ckpt.config.text, "both config spellings resolve alike");
    assert_eq!(ckpt.config.vision, f32_ckpt.config.vision);
    assert_eq!(ckpt.config.qformer, f32_ckpt.config.qformer);
    // Logits and greedy answers against the bf16_as_f32 reference (the intermediate tensors are the f32 weights').
    let worst = check_variant("tiny-blip2-bf16", Some(DType::F32), "bf16_as_f32", false)?;
    assert_within("bf16_as_f32", &worst, 1e-6, TOL);
    Ok(())
}

#[test]
fn native_bf16_runs_close_to_transformers() -> Result<()> {
    // transformers runs every part in bf16 here, and so do we, with other kernels (f32 softmax, fused LayerNorm):
    // rounding differs, so the logits are compared loosely; the greedy answers are asserted equal (their f32 margins
    // are at least 0.078, and both sides produce the same answers).
    let (ckpt, model, processor) = load("tiny-blip2-bf16", None)?;
    assert_eq!(model.dtype(), DType::BF16);
    for name in CASES {
        let case = expected("bf16", name)?;
        let ids = processor.encode(case.prompt.as_deref().unwrap_or(""))?;
        assert_eq!(ids, case.input_ids);
        let px = pixels(&processor, &case)?;
        let opts = GenerateOptions { max_new_tokens: case.answer_ids.len(), eos_token_ids: ckpt.eos_token_ids() };
        let gen = model.generate(&ids, Some(&Pixels::fixed(px.clone())), &Hooks::none(), &opts)?;
        let d = max_abs_diff(&gen.first_logits, &case.last_logits);
        eprintln!("bf16/{name}: last logits differ by {d}; tokens {:?}", gen.tokens);
        assert!(d < 0.1, "bf16/{name}: logits differ by {d}");
        assert_eq!(gen.tokens[0], case.answer_ids[0], "bf16/{name}: first greedy token");
        assert_eq!(gen.tokens, case.answer_ids, "bf16/{name}: greedy tokens");
    }
    Ok(())
}

#[test]
fn a_right_padded_batch_gives_each_row_its_single_logits() -> Result<()> {
    let (ckpt, model, processor) = load("tiny-blip2", None)?;
    let pad = ckpt.config.text.pad_token_id.unwrap_or(1);
    let cases = [expected("f32", "image_question")?, expected("f32", "image_caption")?];
    let len = cases.iter().map(|c| c.input_ids.len()).max().unwrap_or(0);
    let mut rows = Vec::new();
    let mut px = Vec::new();
    for c in &cases {
        let mut ids = c.input_ids.clone();
        ids.resize(len, pad);
        rows.push(Tensor::new(ids.as_slice(), &Device::Cpu)?);
        px.push(pixels(&processor, c)?);
    }
    let batch = model.forward(&Tensor::stack(&rows, 0)?, Some(&Tensor::cat(&px, 0)?), &Hooks::none())?;
    for (i, c) in cases.iter().enumerate() {
        let ids = Tensor::new(c.input_ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let single = model.forward(&ids, Some(&px[i]), &Hooks::none())?;
        let n = c.input_ids.len();
        let d = diff(&batch.get(i)?.narrow(0, 0, n)?, &single.squeeze(0)?)?;
        assert!(d < 1e-5, "row {i}: batched logits differ from single by {d}");
    }
    Ok(())
}

/// Deterministic pseudo-random values in [-0.25, 0.25) (xorshift), scaled.
fn randn(shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5 * scale
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

#[test]
fn hooks_act_on_the_opt_decoder() -> Result<()> {
    let (_, model, processor) = load("tiny-blip2", None)?;
    let case = expected("f32", "image_question")?;
    let ids = Tensor::new(case.input_ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let feats = model.image_features(&pixels(&processor, &case)?)?;
    let embeds = model.embed_inputs(&ids, Some(&feats))?;
    let run = |hooks: &Hooks, cap: &mut Capture| -> Result<Vec<f32>> {
        let h = model.forward_embeds(&embeds, 0, None, hooks, cap)?;
        Ok(model.logits(&h)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let plain = run(&Hooks::none(), &mut Capture::none())?;
    let d = model.config().text.hidden_size;
    let n_layers = model.text().num_layers();

    // Capturing every point, extra neurons whose values are zero, and a zero shift change no logit at all.
    let points = [
        CapturePoint::LayerInput,
        CapturePoint::AttnOutput,
        CapturePoint::PostAttention,
        CapturePoint::FfnInput,
        CapturePoint::LayerOutput,
    ];
    let mut all = Capture::of((0..n_layers).flat_map(|l| points.map(|p| (l, p))));
    assert_eq!(run(&Hooks::none(), &mut all)?, plain, "capturing changed the logits");
    assert_eq!(all.captured().len(), n_layers * points.len());
    let zero = ExtraNeurons::new(
        randn(&[d, 8], 1, 1.0)?,
        randn(&[8], 2, 1.0)?,
        Tensor::zeros((8, d), DType::F32, &Device::Cpu)?,
        Activation::Relu,
    )?;
    let mut noop = Hooks::none();
    noop.add_ffn(1, Arc::new(zero));
    noop.add_attn(2, Arc::new(ConstantShift { vector: Tensor::zeros(d, DType::F32, &Device::Cpu)? }));
    assert_eq!(run(&noop, &mut Capture::none())?, plain, "no-op hooks changed the logits");

    // Large extra FFN neurons on the last layer change the logits; layers below it compute what they did.
    let big =
        ExtraNeurons::new(randn(&[d, 8], 3, 8.0)?, randn(&[8], 4, 8.0)?, randn(&[8, d], 5, 40.0)?, Activation::Relu)?;
    let last = n_layers - 1;
    let mut ffn = Hooks::none();
    ffn.add_ffn(last, Arc::new(big));
    let mut cap = Capture::of([(last, CapturePoint::FfnInput), (last, CapturePoint::LayerOutput)]);
    let mut cap_plain = cap.clone();
    let hooked = run(&ffn, &mut cap)?;
    run(&Hooks::none(), &mut cap_plain)?;
    let change = max_abs_diff(&hooked, &plain);
    assert!(change > 1.0, "extra neurons changed the logits by only {change}");
    let fin = |c: &Capture, p| -> Result<Tensor> { Ok(c.get(last, p).context("captured")?.clone()) };
    assert_eq!(
        diff(&fin(&cap, CapturePoint::FfnInput)?, &fin(&cap_plain, CapturePoint::FfnInput)?)?,
        0.0,
        "the FFN input is read before the hook"
    );
    assert!(diff(&fin(&cap, CapturePoint::LayerOutput)?, &fin(&cap_plain, CapturePoint::LayerOutput)?)? > 1.0);

    // An attention shift acts too, and survives KV-cache decoding (generation differs from the plain one's).
    let mut attn = Hooks::none();
    attn.add_attn(0, Arc::new(ConstantShift { vector: randn(&[d], 6, 40.0)? }));
    assert!(max_abs_diff(&run(&attn, &mut Capture::none())?, &plain) > 1.0, "the attention shift did nothing");
    let opts = GenerateOptions { max_new_tokens: 4, eos_token_ids: vec![] };
    let px = pixels(&processor, &case)?;
    let g_plain = model.generate(&case.input_ids, Some(&Pixels::fixed(px.clone())), &Hooks::none(), &opts)?;
    let g_ffn = model.generate(&case.input_ids, Some(&Pixels::fixed(px.clone())), &ffn, &opts)?;
    let last_plain = &plain[plain.len() - g_plain.first_logits.len()..];
    assert!(max_abs_diff(&g_plain.first_logits, last_plain) < 1e-5, "cached prefill differs from the forward");
    assert_ne!(g_ffn.tokens, g_plain.tokens, "the FFN hook did not change the greedy answer");

    // Hooks that do not fit the model are refused, not skipped.
    let mut ctx = Hooks::none();
    ctx.add_context(Arc::new(ContextKv::new(Vec::new())));
    let e = model.forward_embeds(&embeds, 0, None, &ctx, &mut Capture::none()).unwrap_err().to_string();
    assert!(e.contains("in-context prefix has 0 layers"), "{e}");
    let mut far = Hooks::none();
    far.add_attn(n_layers, Arc::new(ConstantShift { vector: Tensor::zeros(d, DType::F32, &Device::Cpu)? }));
    assert!(model.forward_embeds(&embeds, 0, None, &far, &mut Capture::none()).is_err());
    Ok(())
}

#[test]
fn wrong_inputs_are_refused_with_messages() -> Result<()> {
    let (_, model, processor) = load("tiny-blip2", None)?;
    let case = expected("f32", "image_caption")?;
    let feats = model.image_features(&pixels(&processor, &case)?)?;
    // One image token too few for the 4 query outputs.
    let ids = Tensor::new(&case.input_ids[1..], &Device::Cpu)?.unsqueeze(0)?;
    let e = model.embed_inputs(&ids, Some(&feats)).unwrap_err().to_string();
    assert!(e.contains("3 image tokens") && e.contains("4 query outputs"), "{e}");
    let e = processor.encode("<image> what is it?").unwrap_err().to_string();
    assert!(e.contains("<image>"), "{e}");
    let e = model.image_features(&Tensor::zeros((1, 3, 24, 24), DType::F32, &Device::Cpu)?).unwrap_err().to_string();
    assert!(e.contains("30x30"), "{e}");
    Ok(())
}
