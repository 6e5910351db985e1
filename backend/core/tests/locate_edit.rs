//! The locate-then-edit methods (issue 19): ROME, MEMIT and AlphaEdit on the tiny random LLaVA of `tests/fixtures`,
//! checked on what their closed forms promise rather than on a random model's answers:
//! - ROME writes the target state exactly: after the edit, the edited layer leaves the state that the target
//!   optimisation found at the lookup position (and without the patch's hook it does not);
//! - MEMIT with a vanishing λ reaches the target state at its last layer; with a huge λ it changes (almost) nothing;
//! - AlphaEdit's change is confined to the null space of the key statistics (no change along any eigenvector above
//!   the threshold), and its second edit reads the first's keys from the stack: it disturbs the first edit's key less
//!   than the same edit made without them, and undoing the first gives the edit made on an empty stack;
//! - the patches (deltas and keys) round-trip; the statistics round-trip, and a mismatched or missing file is a clear
//!   error.

mod common;

use std::sync::Arc;

use anyhow::{anyhow, ensure, Result};
use candle_core::{Device, Tensor};
use common::fixture;
use unike_core::edit::alphaedit::{AlphaEdit, AlphaEditParams};
use unike_core::edit::memit::linalg::Mat;
use unike_core::edit::memit::stats::KeyStats;
use unike_core::edit::memit::target::target_state;
use unike_core::edit::memit::{Memit, MemitParams, Rome, RomeParams};
use unike_core::edit::{EditContext, EditMethod, EditRequest, EditSequence, Patch, PatchStack};
use unike_core::hooks::{Capture, CapturePoint, Hooks};
use unike_core::model::{Checkpoint, ModelProcessor, VisionLanguageModel};

struct Fx {
    model: Arc<dyn VisionLanguageModel>,
    processor: Arc<dyn ModelProcessor>,
    eos: u32,
    stats: Arc<KeyStats>,
}

const ORDINARY: [(&str, &str); 8] = [
    ("who wrote the book", "a man"),
    ("what is two and two", "four"),
    ("where is paris", "in france"),
    ("what do cows eat", "grass"),
    ("how many legs has a cat", "four"),
    ("what colour is snow", "white"),
    ("what is ice", "water"),
    ("what is a rose", "a flower"),
];

fn fx() -> Result<Fx> {
    let ckpt = Checkpoint::open(fixture("tiny-llava"))?;
    let eos = *ckpt.eos_token_ids()?.first().ok_or_else(|| anyhow!("no eos"))?;
    let (model, processor) = (ckpt.load_model(None, &Device::Cpu)?, ckpt.processor()?);
    let img = processor.load_image(&fixture("images/wide.png"), &Device::Cpu)?;
    let seqs: Vec<_> = ORDINARY
        .iter()
        .enumerate()
        .map(|(i, (q, a))| EditSequence::new(&*processor, q, (i % 2 == 0).then_some(&img), a, eos))
        .collect();
    let stats = Arc::new(KeyStats::collect(&*model, seqs, "test", &mut |_| {})?);
    Ok(Fx { model, processor, eos, stats })
}

fn request(fx: &Fx, question: &str, target: &str) -> Result<EditRequest> {
    let image = fx.processor.load_image(&fixture("images/narrow.png"), &Device::Cpu)?;
    Ok(EditRequest { question: question.into(), image: Some(image), image_path: None, target: target.into(), seed: 0 })
}

fn sequence(fx: &Fx, r: &EditRequest) -> Result<EditSequence> {
    Ok(EditSequence::new(&*fx.processor, &r.question, r.image.as_ref(), &r.target, fx.eos)?)
}

/// Layer `layer`'s output at the last prompt position under `hooks`, `(d)`.
fn state(fx: &Fx, seq: &EditSequence, hooks: &Hooks, layer: usize) -> Result<Vec<f32>> {
    let m = &*fx.model;
    let mut cap = Capture::of([(layer, CapturePoint::LayerOutput)]);
    m.forward_inputs(&seq.inputs(m)?, None, hooks, &mut cap)?;
    let h = cap.get(layer, CapturePoint::LayerOutput).ok_or_else(|| anyhow!("not captured"))?;
    Ok(h.get(0)?.get(seq.prompt_len - 1)?.to_vec1::<f32>()?)
}

fn dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>().sqrt()
}

fn edit(fx: &Fx, method: &dyn EditMethod, stack: &PatchStack, r: &EditRequest) -> Result<Patch> {
    Ok(method.edit(&EditContext { model: &*fx.model, processor: &*fx.processor, stack }, r)?)
}

#[test]
fn rome_and_memit_write_the_target_state() -> Result<()> {
    let fx = fx()?;
    let m = &*fx.model;
    let r = request(&fx, "what colour is the car", "red")?;
    let seq = sequence(&fx, &r)?;
    for layer in [0, 1] {
        let params = RomeParams { layer, ..RomeParams::default() };
        let z = target_state(m, &seq, &seq.inputs(m)?, &Hooks::none(), layer, seq.prompt_len - 1, &params.target())?;
        let z = z.to_vec1::<f32>()?;
        let before = state(&fx, &seq, &Hooks::none(), layer)?;
        let rome = Rome::new(params, fx.stats.clone(), m, fx.eos)?;
        let patch = edit(&fx, &rome, &PatchStack::new(), &r)?;
        let after = state(&fx, &seq, &patch.hooks()?, layer)?;
        let scale = z.iter().map(|x| x * x).sum::<f32>().sqrt();
        eprintln!(
            "rome layer {layer}: |z - h| {:.4} before, {:.2e} after (|z| {scale:.2})",
            dist(&z, &before),
            dist(&z, &after)
        );
        ensure!(dist(&z, &before) > 1e-2 * scale, "the target state is the state already");
        ensure!(dist(&z, &after) < 1e-3 * scale, "ROME did not write the target state exactly");
        // Disconnected: the same patch without its deltas leaves the state as it was.
        let mut bare = patch.clone();
        bare.mlp_deltas.clear();
        ensure!(
            dist(&state(&fx, &seq, &bare.hooks()?, layer)?, &before) < 1e-6,
            "a patch without deltas changed the state"
        );
        ensure!(patch.keys.get(&layer).map(|k| k.dims().to_vec()) == Some(vec![1, m.ffn_parts(layer)?.width()?]));
    }
    // MEMIT: λ → 0 reaches the target state at its last layer; a huge λ barely moves it.
    let target = MemitParams::default().target();
    let z = target_state(m, &seq, &seq.inputs(m)?, &Hooks::none(), 1, seq.prompt_len - 1, &target)?.to_vec1::<f32>()?;
    let before = state(&fx, &seq, &Hooks::none(), 1)?;
    let mut got = Vec::new();
    for lambda in [1e-9, 1e9] {
        let p = MemitParams { layers: vec![0, 1], mom2_update_weight: lambda, ..MemitParams::default() };
        let patch = edit(&fx, &Memit::new(p, fx.stats.clone(), m, fx.eos)?, &PatchStack::new(), &r)?;
        ensure!(patch.mlp_deltas.keys().copied().collect::<Vec<_>>() == vec![0, 1]);
        got.push(dist(&z, &state(&fx, &seq, &patch.hooks()?, 1)?));
    }
    let scale = z.iter().map(|x| x * x).sum::<f32>().sqrt();
    eprintln!("memit: |z - h| {:.4} unedited, {:.2e} at λ = 1e-9, {:.4} at λ = 1e9", dist(&z, &before), got[0], got[1]);
    ensure!(got[0] < 1e-3 * scale, "MEMIT with λ → 0 missed the target state by {}", got[0]);
    ensure!((got[1] - dist(&z, &before)).abs() < 1e-2 * dist(&z, &before), "MEMIT with a huge λ moved the state");
    Ok(())
}

/// `k (1, i)` · `delta (i, d)`: the change an edit writes at key `k`.
fn written(k: &Tensor, delta: &Tensor) -> Result<f32> {
    Ok(k.matmul(delta)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?)
}

#[test]
fn alphaedit_stays_in_the_null_space_and_reads_the_stack() -> Result<()> {
    let fx = fx()?;
    let m = &*fx.model;
    let layers = vec![0, 1];
    let threshold = fx.stats.layer(0)?.eigenvalues[fx.stats.layer(0)?.eigenvalues.len() * 3 / 4];
    let params =
        AlphaEditParams { layers: layers.clone(), nullspace_threshold: threshold, l2: 1.0, ..Default::default() };
    let alpha = AlphaEdit::new(params.clone(), fx.stats.clone(), m, fx.eos)?;
    eprintln!("null space dimensions {:?} (threshold {threshold:.3e})", alpha.null_space_dims());
    let (r1, r2) = (request(&fx, "what colour is the car", "red")?, request(&fx, "what animal is this", "a horse")?);
    let first = edit(&fx, &alpha, &PatchStack::new(), &r1)?;
    // (1) No change along the preserved directions.
    for (&l, d) in &first.mlp_deltas {
        let s = fx.stats.layer(l)?;
        let delta = Mat::from_tensor(&d.delta)?;
        let norm = delta.data.iter().map(|x| x * x).sum::<f64>().sqrt();
        ensure!(norm > 1e-6, "layer {l}: AlphaEdit changed nothing");
        let mut worst = 0f64;
        for (j, &ev) in s.eigenvalues.iter().enumerate() {
            if ev >= threshold {
                let v: Vec<f64> = (0..s.eigenvectors.rows).map(|r| s.eigenvectors.at(r, j)).collect();
                let proj = Mat { rows: 1, cols: v.len(), data: v }.matmul(&delta)?;
                worst = worst.max(proj.data.iter().map(|x| x * x).sum::<f64>().sqrt() / norm);
            }
        }
        eprintln!("layer {l}: largest change along a preserved direction {worst:.2e} of |ΔW|");
        ensure!(worst < 1e-4, "layer {l}: AlphaEdit changed a preserved direction ({worst})");
    }
    // (2) The second edit reads the first's keys: on top of it, it writes less at the first's key.
    let mut stack = PatchStack::new();
    let id = stack.push(first.clone());
    let on_top = edit(&fx, &alpha, &stack, &r2)?;
    let alone = edit(&fx, &alpha, &PatchStack::new(), &r2)?;
    for &l in &layers {
        let k1 = &first.keys[&l];
        let (with, without) = (written(k1, &on_top.mlp_deltas[&l].delta)?, written(k1, &alone.mlp_deltas[&l].delta)?);
        eprintln!("layer {l}: the second edit writes {with:.4} at the first's key on top of it, {without:.4} alone");
        ensure!(with < without, "layer {l}: the cache of the first edit's keys did not protect it");
    }
    // (3) Undoing the first edit removes its keys from the cache.
    stack.remove(id)?;
    let after_undo = edit(&fx, &alpha, &stack, &r2)?;
    for &l in &layers {
        let d =
            (&after_undo.mlp_deltas[&l].delta - &alone.mlp_deltas[&l].delta)?.abs()?.max_all()?.to_scalar::<f32>()?;
        ensure!(d == 0.0, "layer {l}: after undo the edit differs from the one on an empty stack by {d}");
    }
    // (4) The patch round-trips with its keys.
    let dir = std::env::temp_dir().join(format!("unike-locate-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    first.save(&dir.join("p"))?;
    let loaded = Patch::load(&dir.join("p"), m);
    let _ = std::fs::remove_dir_all(&dir);
    let loaded = loaded?;
    for &l in &layers {
        let dk = (&loaded.keys[&l] - &first.keys[&l])?.abs()?.max_all()?.to_scalar::<f32>()?;
        let dd = (&loaded.mlp_deltas[&l].delta - &first.mlp_deltas[&l].delta)?.abs()?.max_all()?.to_scalar::<f32>()?;
        ensure!(dk == 0.0 && dd == 0.0, "layer {l}: keys {dk}, deltas {dd}");
    }
    ensure!(loaded.provenance.method == "alphaedit");
    // An empty null space is refused.
    let e = AlphaEdit::new(AlphaEditParams { nullspace_threshold: 0.0, ..params }, fx.stats.clone(), m, fx.eos);
    ensure!(e.err().map(|e| e.to_string()).unwrap_or_default().contains("null space is empty"));
    Ok(())
}

#[test]
fn key_statistics_round_trip_and_refuse_what_does_not_fit() -> Result<()> {
    let fx = fx()?;
    let m = &*fx.model;
    let width = m.ffn_parts(0)?.width()?;
    let s = fx.stats.layer(0)?;
    // E[u uᵀ] is symmetric positive semi-definite, and its decomposition gives it back.
    ensure!(s.eigenvalues.iter().all(|&v| v > -1e-9) && s.eigenvalues.windows(2).all(|w| w[0] <= w[1]));
    ensure!(fx.stats.info.tokens > 8 && fx.stats.info.sequences == 8);
    let dir = std::env::temp_dir().join(format!("unike-keystats-{}", std::process::id()));
    let missing = KeyStats::load(&dir, width).err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(missing.contains("build-stats"), "{missing}");
    fx.stats.save(&dir)?;
    let back = KeyStats::load(&dir, width);
    let wrong = KeyStats::load(&dir, width + 1).err().map(|e| e.to_string()).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let back = back?;
    ensure!(back.info == fx.stats.info);
    let d = back.layers[&1]
        .second_moment
        .data
        .iter()
        .zip(&fx.stats.layers[&1].second_moment.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    ensure!(d < 1e-5, "second moments differ by {d} (saved as f32)");
    ensure!(wrong.contains("wide"), "{wrong}");
    // Layers outside the model are refused with the count.
    let e = Memit::new(MemitParams { layers: vec![0, 9], ..Default::default() }, fx.stats.clone(), m, fx.eos);
    ensure!(e.err().map(|e| e.to_string()).unwrap_or_default().contains("outside the model"));
    let e = Memit::new(MemitParams { layers: vec![1, 0], ..Default::default() }, fx.stats.clone(), m, fx.eos);
    ensure!(e.err().map(|e| e.to_string()).unwrap_or_default().contains("ascending"));
    Ok(())
}
