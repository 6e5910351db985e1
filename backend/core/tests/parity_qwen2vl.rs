//! Parity with HF transformers on the tiny random Qwen2-VL fixtures written by `tests/fixtures/make_tiny_qwen2vl.py`:
//! same input ids, pixel values, image grids, M-RoPE positions and rope deltas; vision, merger and decoder hidden
//! states and last-position logits within 1e-4; identical greedy tokens and answers; a left-padded batch that gives
//! each row its single logits; and the hook seams of the Qwen2 decoder.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use common::{fixture, max_abs_diff};
use serde::Deserialize;
use unike_core::hooks::{Capture, CapturePoint, ConstantShift, ContextKv, ExtraNeurons, Hooks};
use unike_core::model::config::Activation;
use unike_core::model::{GenerateOptions, Pixels, Qwen2Vl, Qwen2VlCheckpoint, Qwen2VlProcessor, VisionLanguageModel};

const TOL: f32 = 1e-4;
const CASES: [&str; 3] = ["image_question", "image_caption", "text_only"];

/// One case of `expected-qwen2vl/expected.json`.
#[derive(Debug, Clone, Deserialize)]
struct Case {
    prompt: String,
    image: Option<String>,
    input_ids: Vec<u32>,
    image_grid_thw: Option<Vec<[usize; 3]>>,
    position_ids: Vec<Vec<u32>>,
    rope_deltas: Vec<i64>,
    last_logits: Vec<f32>,
    answer_ids: Vec<u32>,
    answer: String,
}

/// The left-padded batch of the two image cases.
#[derive(Debug, Clone, Deserialize)]
struct Batched {
    input_ids: Vec<Vec<u32>>,
    attention_mask: Vec<Vec<u32>>,
    image_grid_thw: Vec<[usize; 3]>,
    position_ids: Vec<Vec<Vec<u32>>>,
    rope_deltas: Vec<i64>,
    last_logits: Vec<Vec<f32>>,
}

fn json() -> Result<serde_json::Value> {
    let path = fixture("expected-qwen2vl/expected.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn expected(variant: &str, name: &str) -> Result<Case> {
    serde_json::from_value(json()?["variants"][variant][name].clone()).with_context(|| format!("case {variant}/{name}"))
}

fn tensors() -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(fixture("expected-qwen2vl/expected.safetensors"), &Device::Cpu)?)
}

fn load(dir: &str, dtype: Option<DType>) -> Result<(Qwen2VlCheckpoint, Qwen2Vl, Qwen2VlProcessor)> {
    let ckpt = Qwen2VlCheckpoint::open(fixture(dir))?;
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

/// Pixel values and grid of a case's image, if any.
fn image(processor: &Qwen2VlProcessor, case: &Case) -> Result<Option<(Tensor, [usize; 3])>> {
    case.image.as_ref().map(|p| Ok(processor.image_processor().load_file(&fixture(p), &Device::Cpu)?)).transpose()
}

/// Ids, positions, generation, logits and answer of every case against `variant`; with `stages`, every
/// intermediate tensor against the f32 reference too. Returns the largest difference per stage.
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
        let img = image(&processor, &case)?;
        let grids: Vec<[usize; 3]> = img.iter().map(|(_, g)| *g).collect();
        assert_eq!(grids, case.image_grid_thw.clone().unwrap_or_default(), "{variant}/{name}: image grid");
        let ids = processor.encode(&case.prompt, &grids)?;
        assert_eq!(ids, case.input_ids, "{variant}/{name}: input ids");
        assert_eq!(Qwen2VlProcessor::user_prompt("x", img.is_some()).contains("<|image_pad|>"), img.is_some());
        let index = model.rope_index(std::slice::from_ref(&ids), None, &grids)?;
        let pos = index.positions.squeeze(1)?.to_vec2::<u32>()?;
        assert_eq!(pos, case.position_ids, "{variant}/{name}: M-RoPE positions");
        assert_eq!(index.deltas, case.rope_deltas, "{variant}/{name}: rope deltas");
        let w = |k: &str| -> Result<&Tensor> {
            want.get(&format!("{name}.{k}")).with_context(|| format!("expected tensor {name}.{k}"))
        };
        if let Some((px, _)) = &img {
            note("pixel_values", diff(px, w("pixel_values")?)?);
        }
        if stages {
            let feats = match &img {
                Some((px, _)) => {
                    let vision = model.vision_features(px, &grids)?;
                    note("vision", diff(&vision, w("vision_last_hidden_state")?)?);
                    let merged = model.vision().merge(&vision)?;
                    note("merger", diff(&merged, w("image_embeds")?)?);
                    Some(merged)
                }
                None => None,
            };
            let ids_t = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
            let embeds = model.embed_inputs(&ids_t, feats.as_ref())?;
            let n = model.text().num_layers();
            let mut cap = Capture::of(
                std::iter::once((0, CapturePoint::LayerInput))
                    .chain((0..n - 1).map(|l| (l, CapturePoint::LayerOutput))),
            );
            let last = model.forward_embeds(&embeds, &index.positions, None, None, &Hooks::none(), &mut cap)?;
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
            GenerateOptions { max_new_tokens: case.answer_ids.len().max(1), eos_token_ids: ckpt.eos_token_ids()? };
        let images = img.as_ref().map(|(p, _)| Pixels::patches(p.clone(), grids.clone()));
        let gen = model.generate(&ids, images.as_ref(), &Hooks::none(), &opts)?;
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
    let ckpt = Qwen2VlCheckpoint::open(fixture("tiny-qwen2vl"))?;
    assert_eq!(ckpt.weight_files.len(), 2, "the fixture is sharded with an index");
    assert_eq!(ckpt.config.stored_dtype, Some(DType::F32));
    assert_eq!(ckpt.config.text.mrope_section, vec![2, 2, 2]);
    assert_eq!(ckpt.eos_token_ids()?, vec![322, 320]);
    let worst = check_variant("tiny-qwen2vl", None, "f32", true)?;
    assert_within("f32", &worst, 1e-5, TOL);
    Ok(())
}

#[test]
fn transformers5_bf16_checkpoint_loaded_as_f32_matches_transformers() -> Result<()> {
    let ckpt = Qwen2VlCheckpoint::open(fixture("tiny-qwen2vl-bf16"))?;
    assert_eq!(ckpt.config.stored_dtype, Some(DType::BF16));
    let f32_ckpt = Qwen2VlCheckpoint::open(fixture("tiny-qwen2vl"))?;
    let (mut a, mut b) = (ckpt.config.clone(), f32_ckpt.config.clone());
    (a.stored_dtype, b.stored_dtype) = (None, None);
    assert_eq!(a, b, "both config spellings resolve alike");
    assert_eq!(ckpt.processor()?.image_processor(), f32_ckpt.processor()?.image_processor());
    // Logits and greedy answers against the bf16_as_f32 reference (the intermediate tensors are the f32 weights').
    let worst = check_variant("tiny-qwen2vl-bf16", Some(DType::F32), "bf16_as_f32", false)?;
    assert_within("bf16_as_f32", &worst, 1e-5, TOL);
    Ok(())
}

#[test]
fn native_bf16_runs_close_to_transformers() -> Result<()> {
    // Both sides run in bf16 with different kernels: logits are compared loosely, and the first greedy token exactly.
    let (ckpt, model, processor) = load("tiny-qwen2vl-bf16", None)?;
    assert_eq!(model.dtype(), DType::BF16);
    for name in CASES {
        let case = expected("bf16", name)?;
        let img = image(&processor, &case)?;
        let grids: Vec<[usize; 3]> = img.iter().map(|(_, g)| *g).collect();
        let ids = processor.encode(&case.prompt, &grids)?;
        assert_eq!(ids, case.input_ids);
        let opts = GenerateOptions { max_new_tokens: case.answer_ids.len(), eos_token_ids: ckpt.eos_token_ids()? };
        let images = img.as_ref().map(|(p, _)| Pixels::patches(p.clone(), grids.clone()));
        let gen = model.generate(&ids, images.as_ref(), &Hooks::none(), &opts)?;
        let d = max_abs_diff(&gen.first_logits, &case.last_logits);
        let same = gen.tokens.iter().zip(&case.answer_ids).take_while(|(a, b)| a == b).count();
        eprintln!("bf16/{name}: last logits differ by {d}; {same}/{} greedy tokens agree", case.answer_ids.len());
        assert!(d < 0.25, "bf16/{name}: logits differ by {d}");
        assert_eq!(gen.tokens[0], case.answer_ids[0], "bf16/{name}: first greedy token");
    }
    Ok(())
}

#[test]
fn a_left_padded_batch_matches_transformers_and_single_rows() -> Result<()> {
    let (_, model, processor) = load("tiny-qwen2vl", None)?;
    let batched: Batched = serde_json::from_value(json()?["batched"]["f32"].clone())?;
    let cases = [expected("f32", "image_question")?, expected("f32", "image_caption")?];
    let mut px = Vec::new();
    for c in &cases {
        px.push(image(&processor, c)?.context("image case")?.0);
    }
    let px = Tensor::cat(&px, 0)?;
    let want = tensors()?;
    assert!(diff(&px, want.get("batched.pixel_values").context("batched pixels")?)? <= 1e-5);
    let index = model.rope_index(&batched.input_ids, Some(&batched.attention_mask), &batched.image_grid_thw)?;
    let pos = index.positions.to_vec3::<u32>()?;
    for (r, want_rows) in batched.position_ids.iter().enumerate() {
        let got: Vec<Vec<u32>> = (0..3).map(|k| pos[k][r].clone()).collect();
        assert_eq!(&got, want_rows, "row {r}: M-RoPE positions");
    }
    assert_eq!(index.deltas, batched.rope_deltas);
    let ids = Tensor::new(batched.input_ids.clone(), &Device::Cpu)?;
    let mask = Tensor::new(batched.attention_mask.clone(), &Device::Cpu)?;
    let logits = model.forward(&ids, Some(&mask), Some((&px, &batched.image_grid_thw)), &Hooks::none())?;
    let s = ids.dim(1)?;
    for (r, c) in cases.iter().enumerate() {
        let last = logits.get(r)?.get(s - 1)?.to_vec1::<f32>()?;
        let d = max_abs_diff(&last, &batched.last_logits[r]);
        assert!(d < TOL, "row {r}: batched logits differ from transformers' by {d}");
        let d = max_abs_diff(&last, &c.last_logits);
        assert!(d < TOL, "row {r}: batched logits differ from the single row's by {d}");
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
fn hooks_act_on_the_qwen2_decoder() -> Result<()> {
    let (_, model, processor) = load("tiny-qwen2vl", None)?;
    let case = expected("f32", "image_question")?;
    let (px, grid) = image(&processor, &case)?.context("image case")?;
    let ids = Tensor::new(case.input_ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let feats = model.image_features(&px, &[grid])?;
    let embeds = model.embed_inputs(&ids, Some(&feats))?;
    let index = model.rope_index(std::slice::from_ref(&case.input_ids), None, &[grid])?;
    let run = |hooks: &Hooks, cap: &mut Capture| -> Result<Vec<f32>> {
        let h = model.forward_embeds(&embeds, &index.positions, None, None, hooks, cap)?;
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

    // Large extra FFN neurons on the last layer change the logits; the FFN input is read before the hook.
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
    assert_eq!(diff(&fin(&cap, CapturePoint::FfnInput)?, &fin(&cap_plain, CapturePoint::FfnInput)?)?, 0.0);
    assert!(diff(&fin(&cap, CapturePoint::LayerOutput)?, &fin(&cap_plain, CapturePoint::LayerOutput)?)? > 1.0);

    // An attention shift acts too; cached prefill equals the forward, and the FFN hook changes the greedy answer.
    let mut attn = Hooks::none();
    attn.add_attn(0, Arc::new(ConstantShift { vector: randn(&[d], 6, 40.0)? }));
    assert!(max_abs_diff(&run(&attn, &mut Capture::none())?, &plain) > 1.0, "the attention shift did nothing");
    let opts = GenerateOptions { max_new_tokens: 4, eos_token_ids: vec![] };
    let grids = [grid];
    let images = Pixels::patches(px.clone(), grids.to_vec());
    let g_plain = model.generate(&case.input_ids, Some(&images), &Hooks::none(), &opts)?;
    let g_ffn = model.generate(&case.input_ids, Some(&images), &ffn, &opts)?;
    let last_plain = &plain[plain.len() - g_plain.first_logits.len()..];
    assert!(max_abs_diff(&g_plain.first_logits, last_plain) < 1e-5, "cached prefill differs from the forward");
    assert_ne!(g_ffn.tokens, g_plain.tokens, "the FFN hook did not change the greedy answer");

    // Hooks that do not fit the model are refused, not skipped.
    let mut ctx = Hooks::none();
    ctx.add_context(Arc::new(ContextKv::new(Vec::new())));
    let e = model.forward_embeds(&embeds, &index.positions, None, None, &ctx, &mut Capture::none()).unwrap_err();
    assert!(e.to_string().contains("in-context prefix has 0 layers"), "{e}");
    let mut far = Hooks::none();
    far.add_attn(n_layers, Arc::new(ConstantShift { vector: Tensor::zeros(d, DType::F32, &Device::Cpu)? }));
    assert!(model.forward_embeds(&embeds, &index.positions, None, None, &far, &mut Capture::none()).is_err());
    Ok(())
}

#[test]
fn wrong_inputs_and_configs_are_refused_with_messages() -> Result<()> {
    let (_, model, processor) = load("tiny-qwen2vl", None)?;
    let case = expected("f32", "image_caption")?;
    let (px, grid) = image(&processor, &case)?.context("image case")?;
    let feats = model.image_features(&px, &[grid])?;
    // The image's 18 embeddings against a prompt whose image tokens were dropped.
    let short: Vec<u32> = case.input_ids.iter().copied().filter(|&t| t != processor.image_token_id()).collect();
    let e = model.embed_inputs(&Tensor::new(short.as_slice(), &Device::Cpu)?.unsqueeze(0)?, Some(&feats));
    let e = e.unwrap_err().to_string();
    assert!(e.contains("0 image tokens") && e.contains("18 embeddings"), "{e}");
    let e = processor.encode(&case.prompt, &[]).unwrap_err().to_string();
    assert!(e.contains("<|image_pad|>"), "{e}");
    let e = model.image_features(&px, &[[1, 6, 6]]).unwrap_err().to_string();
    assert!(e.contains("patches"), "{e}");
    let cfg = std::fs::read_to_string(fixture("tiny-qwen2vl/config.json"))?;
    let e = unike_core::model::Qwen2VlConfig::from_json_str(&cfg.replace("\"qwen2_vl\"", "\"qwen2_5_vl\""));
    assert!(e.unwrap_err().contains("qwen2_5_vl"));
    let e = unike_core::model::Qwen2VlConfig::from_json_str(
        &cfg.replace("\"use_sliding_window\": false", "\"use_sliding_window\": true"),
    );
    assert!(e.unwrap_err().contains("sliding-window"));
    Ok(())
}
