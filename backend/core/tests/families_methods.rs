//! Every method on every backbone (issue 18 §3): FT, KE, T-Patcher, MEND, IKE, SERAC and UniKE (the method and its
//! `only-intrinsic` and `only-latent` ablations) edit the tiny random LLaVA, BLIP-2 (OPT) and Qwen2-VL checkpoints of
//! `tests/fixtures`, opened by `Checkpoint::open` and used only through `&dyn VisionLanguageModel` and
//! `&dyn ModelProcessor`. The checkpoints are random (their answers are gibberish) and tiny, so the trained parts (KE's
//! and MEND's networks, SERAC's scope classifier, UniKE's memory and encoders) are trained on a dozen synthetic MMEdit
//! cases with a few steps. Per (family, method), as far as the method promises on such a model (see [`METHODS`] for
//! what is asserted and what was measured): (a) the edit takes, (b) an unrelated text question and an unrelated image
//! question keep their answers, (c) the patch round-trips through `Patch::save` / `Patch::load_with` (the same logits).
//! A failing (family, method) is reported with its error; the others still run.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, ensure, Result};
use candle_core::{Device, Tensor, D};
use common::{fixture, max_abs_diff};
use unike_core::data::{EditCase, Task};
use unike_core::edit::alphaedit::{AlphaEdit, AlphaEditParams};
use unike_core::edit::ft::{FineTune, FtParams};
use unike_core::edit::ft_vision::{FtVision, FtVisionParams};
use unike_core::edit::grace::{Grace, GraceParams};
use unike_core::edit::hypernet::{self, TrainCase, TrainParams};
use unike_core::edit::ike::{Ike, IkeParams};
use unike_core::edit::ke::{Ke, KeNet, KeParams};
use unike_core::edit::lora::{Lora, LoraParams};
use unike_core::edit::memit::stats::KeyStats;
use unike_core::edit::memit::{Memit, MemitParams, Rome, RomeParams};
use unike_core::edit::mend::{Mend, MendNet, MendParams};
use unike_core::edit::serac::{prompt_state, Serac, SeracParams};
use unike_core::edit::t_patcher::{TPatcher, TPatcherParams};
use unike_core::edit::unike::encoders::{EncoderParams, Encoders};
use unike_core::edit::unike::memory::{Candidate, KnowledgeMemory};
use unike_core::edit::unike::{Artifacts, UniKe, UniKeParams};
use unike_core::edit::wise::{Wise, WiseParams};
use unike_core::edit::{EditContext, EditMethod, EditRequest, EditSequence, Patch, PatchStack};
use unike_core::hooks::Hooks;
use unike_core::model::{Checkpoint, Family, ModelProcessor, VisionLanguageModel};

/// (question, rephrased question, target) of each synthetic case: the first is the edit, the others train the networks.
const EDITS: [(&str, &str, &str); 12] = [
    ("what colour is the car", "which colour is the car", "red"),
    ("what animal is this", "which animal is it", "a horse"),
    ("where is this place", "what place is this", "a beach"),
    ("what is he holding", "what does he hold", "a cup"),
    ("what sport is this", "which sport is played", "golf"),
    ("how is the weather", "what is the weather", "sunny"),
    ("what food is this", "which food is it", "bread"),
    ("what is the dog doing", "what does the dog do", "running"),
    ("what time is it", "which time is it", "night"),
    ("what is she wearing", "what does she wear", "a hat"),
    ("what room is this", "which room is it", "a kitchen"),
    ("what is on the wall", "what hangs on the wall", "a clock"),
];
/// Unrelated text questions and their answers (T-Locality), one per case.
const TEXT: [(&str, &str); 12] = [
    ("who wrote the book", "a man"),
    ("what is two and two", "four"),
    ("where is paris", "in france"),
    ("what do cows eat", "grass"),
    ("how many legs has a cat", "four"),
    ("what colour is snow", "white"),
    ("who sings the song", "a girl"),
    ("what is ice", "water"),
    ("when do owls hunt", "at night"),
    ("what is a rose", "a flower"),
    ("where do fish live", "in water"),
    ("what is the sun", "a star"),
];
/// Unrelated image questions and their answers (M-Locality), one per case.
const IMAGE: [(&str, &str); 12] = [
    ("how many birds are there", "three"),
    ("is there a tree", "yes"),
    ("what shape is it", "a square"),
    ("is it dark", "no"),
    ("how many people are here", "two"),
    ("what is in the sky", "a cloud"),
    ("is the door open", "yes"),
    ("what is on the road", "a bus"),
    ("what is the boy eating", "cake"),
    ("is there water", "no"),
    ("what is near the house", "a tree"),
    ("what is under the table", "a cat"),
];
const IMAGES: [&str; 2] = ["wide.png", "narrow.png"];
/// KE and MEND edit the last two decoder layers (of three).
const HYPERNET_LAYERS: usize = 2;

fn image_path(i: usize) -> PathBuf {
    fixture(&format!("images/{}", IMAGES[i % 2]))
}

/// The synthetic cases: case `i` shows image `i % 2`, its rephrasing and its unrelated image question the other one.
fn cases() -> Vec<EditCase> {
    (0..EDITS.len())
        .map(|i| EditCase {
            task: Task::Vqa,
            prompt: EDITS[i].0.into(),
            target: EDITS[i].2.into(),
            pre_edit: None,
            image: image_path(i),
            rephrase_prompt: EDITS[i].1.into(),
            rephrase_image: image_path(i + 1),
            loc_question: TEXT[i].0.into(),
            loc_answer: TEXT[i].1.into(),
            m_loc_image: image_path(i + 1),
            m_loc_question: IMAGE[i].0.into(),
            m_loc_answer: IMAGE[i].1.into(),
            portability: vec![],
        })
        .collect()
}

/// One family's tiny checkpoint with the edit of case 0, its two unrelated probes and their unedited outputs.
struct Bench {
    name: &'static str,
    model: Arc<dyn VisionLanguageModel>,
    processor: Arc<dyn ModelProcessor>,
    eos: u32,
    /// Cases 1.. (the training split of the trained methods).
    train: Vec<EditCase>,
    request: EditRequest,
    edit: EditSequence,
    /// The unrelated text question and the unrelated image question of case 0, and their unedited greedy answers.
    probes: Vec<EditSequence>,
    before: Vec<String>,
    /// The probes followed by their unedited greedy answers (teacher-forced: which answer positions are kept).
    answered: Vec<EditSequence>,
    /// The edit's target logits on the unedited model.
    base: Tensor,
}

fn bench(name: &'static str, family: Family) -> Result<Bench> {
    let ckpt = Checkpoint::open(fixture(name))?;
    ensure!(ckpt.family() == family, "{name} is not {family}");
    let eos = *ckpt.eos_token_ids()?.first().ok_or_else(|| anyhow!("{name}: no eos"))?;
    let (model, processor) = (ckpt.load_model(None, &Device::Cpu)?, ckpt.processor()?);
    let (m, p) = (&*model, &*processor);
    let mut all = cases();
    let case = all.remove(0);
    let image = p.load_image(&case.image, &Device::Cpu)?;
    let m_loc = p.load_image(&case.m_loc_image, &Device::Cpu)?;
    let edit = EditSequence::new(p, &case.prompt, Some(&image), &case.target, eos)?;
    let probes = vec![
        EditSequence::new(p, &case.loc_question, None, &case.loc_answer, eos)?,
        EditSequence::new(p, &case.m_loc_question, Some(&m_loc), &case.m_loc_answer, eos)?,
    ];
    let none = Hooks::none();
    let before = probes.iter().map(|s| Ok(s.greedy(m, p, &none, &[eos])?)).collect::<Result<Vec<_>>>()?;
    let base = edit.target_logits(m, &none)?;
    ensure!(edit.argmax(m, &none)? != edit.targets(), "{name} answers the edit's target unedited");
    let opts = unike_core::model::GenerateOptions { max_new_tokens: 24, eos_token_ids: vec![eos] };
    let answered = probes
        .iter()
        .map(|s| Ok(s.with_answer(&m.generate(&s.ids[..s.prompt_len], s.pixels.as_ref(), &none, &opts)?.tokens)))
        .collect::<Result<Vec<_>>>()?;
    let request =
        EditRequest { question: case.prompt, image: Some(image), image_path: None, target: case.target, seed: 0 };
    Ok(Bench { name, model, processor, eos, train: all, request, edit, probes, before, answered, base })
}

/// Unrelated questions of the training cases (T-Patcher's and UniKE's memory).
fn memory(b: &Bench) -> Result<Vec<EditSequence>> {
    let p = &*b.processor;
    let mut out = Vec::new();
    for c in &b.train {
        out.push(EditSequence::new(p, &c.loc_question, None, &c.loc_answer, b.eos)?);
        let img = p.load_image(&c.m_loc_image, &Device::Cpu)?;
        out.push(EditSequence::new(p, &c.m_loc_question, Some(&img), &c.m_loc_answer, b.eos)?);
    }
    Ok(out)
}

/// UniKE's knowledge memory (16 wrong answers of the model to the training cases' questions) and encoders (20 steps).
fn unike_artifacts(b: &Bench) -> Result<Artifacts> {
    let m = &*b.model;
    let mut candidates = Vec::new();
    for c in &b.train {
        for (q, img, truth) in [(&c.prompt, &c.image, &c.target), (&c.m_loc_question, &c.m_loc_image, &c.m_loc_answer)]
        {
            let image = image::open(img)?.to_rgb8();
            let image_label = img.display().to_string();
            candidates.push(Candidate {
                question: q.clone(),
                image,
                image_label,
                level: "vision",
                truth: truth.clone(),
            });
        }
    }
    let layers: Vec<usize> = (0..m.num_layers()).collect();
    let memory =
        KnowledgeMemory::build(m, &*b.processor, &[b.eos], candidates.into_iter(), &layers, 16, &mut |_, _| {})?;
    let params = EncoderParams { hidden: 32, steps: 20, batch: 16, lr: 1e-3, ..EncoderParams::default() };
    ensure!(memory.len() == 16, "{} triplets", memory.len());
    let (encoders, _) = Encoders::train(&memory, &params, &mut |_, _, _| {})?;
    Ok(Artifacts { memory, encoders: Arc::new(encoders) })
}

/// Few steps of the trained methods' own training.
fn train_params(steps: usize, batch: usize, lr: f64) -> TrainParams {
    TrainParams { cases: EDITS.len(), steps, batch, lr, ..TrainParams::default() }
}

/// Log-probability of the edit's targets (answer and end of sequence) in `logits (n, vocab)`.
fn target_logp(seq: &EditSequence, logits: &Tensor) -> Result<f32> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let idx = Tensor::new(seq.targets(), logits.device())?.unsqueeze(1)?;
    Ok(logp.gather(&idx, 1)?.sum_all()?.to_scalar::<f32>()?)
}

fn diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok(max_abs_diff(&a.flatten_all()?.to_vec1::<f32>()?, &b.flatten_all()?.to_vec1::<f32>()?))
}

/// What one edit did.
struct Outcome {
    patch: Patch,
    hooks: Hooks,
    /// The teacher-forced argmax of the edited prompt is the target (answer and end of sequence).
    took: bool,
    greedy: String,
    /// The target's log-probability before and after.
    logp: (f32, f32),
    /// Largest change of the edit's target logits.
    moved: f32,
    /// Unrelated probes whose greedy answer is unchanged, and the largest change of their own answers' logits.
    kept: usize,
    probe_moved: f32,
    /// Positions of the probes' unedited greedy answers (teacher-forced) whose argmax is kept, of all; and the probes
    /// whose first answer token is kept.
    positions: (usize, usize),
    first: usize,
    /// Largest difference of the edit's target logits under the saved-and-loaded patch and under the patch.
    round_trip: f32,
}

/// Edits `b`'s case with `method` and measures (a), (b) and (c).
fn run(b: &Bench, method: &dyn EditMethod) -> Result<Outcome> {
    let (m, p, none) = (&*b.model, &*b.processor, &Hooks::none());
    let mut stack = PatchStack::new();
    let patch = method.edit(&EditContext { model: m, processor: p, stack: &stack }, &b.request)?;
    ensure!(patch.provenance.method == method.name(), "provenance {}", patch.provenance.method);
    stack.push(patch.clone());
    let hooks = stack.hooks()?;
    let after = b.edit.target_logits(m, &hooks)?;
    let took = after.argmax(D::Minus1)?.to_vec1::<u32>()? == b.edit.targets();
    let greedy = b.edit.greedy(m, p, &hooks, &[b.eos])?;
    let (mut kept, mut probe_moved, mut positions, mut first) = (0, 0f32, (0, 0), 0);
    for ((s, before), answered) in b.probes.iter().zip(&b.before).zip(&b.answered) {
        kept += usize::from(s.greedy(m, p, &hooks, &[b.eos])? == *before);
        probe_moved = probe_moved.max(diff(&s.target_logits(m, &hooks)?, &s.target_logits(m, none)?)?);
        let (x, y) = (answered.argmax(m, &hooks)?, answered.argmax(m, none)?);
        positions.0 += x.iter().zip(&y).filter(|(a, b)| a == b).count();
        positions.1 += x.len();
        first += usize::from(x.first() == y.first());
    }
    let name = method.name().replace(':', "-");
    let dir = std::env::temp_dir().join(format!("unike-families-methods-{}-{}-{name}", std::process::id(), b.name));
    let base = dir.join("patch");
    std::fs::create_dir_all(&dir)?;
    let loaded = patch.save(&base).and_then(|_| Patch::load_with(&base, m, &method.patch_deps()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut again = PatchStack::new();
    again.push(loaded?);
    let round_trip = diff(&after, &b.edit.target_logits(m, &again.hooks()?)?)?;
    let logp = (target_logp(&b.edit, &b.base)?, target_logp(&b.edit, &after)?);
    let moved = diff(&after, &b.base)?;
    Ok(Outcome { patch, hooks, took, greedy, logp, moved, kept, probe_moved, positions, first, round_trip })
}

/// SERAC's routing: the edited prompt goes to the counterfactual model, the unrelated probes to the base model with
/// exactly its logits. Returns the scope probabilities of the edit and of the two probes.
fn serac_routes(b: &Bench, o: &Outcome) -> Result<Vec<f32>> {
    let m = &*b.model;
    let entry = o.patch.serac.as_ref().ok_or_else(|| anyhow!("no SERAC entry"))?;
    let mut probs = Vec::new();
    for (i, s) in std::iter::once(&b.edit).chain(&b.probes).enumerate() {
        let state = prompt_state(m, s, entry.net.layer)?.unsqueeze(0)?;
        probs.push(entry.net.scores(&state, &entry.key.unsqueeze(0)?)?.flatten_all()?.to_vec1::<f32>()?[0]);
        let routes = m.route(&o.hooks, &s.inputs(m)?, &[s.prompt_len - 1])?;
        let want = if i == 0 { Some(0) } else { None };
        ensure!(routes == vec![vec![want]], "input {i} routed {routes:?}, scope probabilities {probs:?}");
        if i > 0 {
            let d = diff(&s.target_logits(m, &o.hooks)?, &s.target_logits(m, &Hooks::none())?)?;
            ensure!(d == 0.0, "an unrelated input's logits differ from the base model's by {d}");
        }
    }
    Ok(probs)
}

/// Builds method `name` for `b` (hyper-parameters: the methods' defaults; training: a few steps).
fn build(
    b: &Bench,
    name: &str,
    grads: &Result<Vec<TrainCase>, String>,
    artifacts: &Result<Artifacts, String>,
) -> Result<Box<dyn EditMethod>> {
    let m = &*b.model;
    let grads = || grads.as_ref().map_err(|e| anyhow!("preparing the hypernetwork cases: {e}"));
    Ok(match name {
        "ft" => Box::new(FineTune::new(FtParams::default(), b.eos)),
        "t-patcher" => Box::new(TPatcher::new(TPatcherParams::default(), memory(b)?, b.eos)),
        "ike" => Box::new(Ike::new(IkeParams::default(), b.train.clone(), m)),
        "ke" => {
            let params = KeParams { layers: HYPERNET_LAYERS, train: train_params(20, 2, 1e-3) };
            let net = KeNet::init(m, params.clone(), grads()?)?;
            hypernet::train(m, &net, grads()?, &params.train, &mut |_, _, _| {})?;
            Box::new(Ke { net: Arc::new(net), eos: b.eos })
        }
        "mend" => {
            let params = MendParams { layers: HYPERNET_LAYERS, rank: 16, train: train_params(20, 2, 1e-3) };
            let net = MendNet::init(m, params.clone(), grads()?)?;
            hypernet::train(m, &net, grads()?, &params.train, &mut |_, _, _| {})?;
            Box::new(Mend { net: Arc::new(net), eos: b.eos })
        }
        "serac" => {
            let params = SeracParams { rank: 16, train: train_params(100, 4, 1e-2), ..SeracParams::default() };
            Box::new(Serac::train(m, &*b.processor, b.eos, &b.train, params, &mut |_, _, _| {})?)
        }
        // EasyEdit's text setting (70 Adam steps at 5e-3): its multimodal one (5 SGD steps) does not reach a random
        // model's target.
        "lora" => {
            let params = LoraParams {
                optimizer: "adam".into(),
                num_steps: 70,
                lr: 5e-3,
                lr_decay: 1.0,
                ..LoraParams::default()
            };
            Box::new(Lora::new(params, m, b.eos)?)
        }
        // A random model needs a larger step than VLKEB's 1e-4 to move in 20 steps.
        "ft-vision" => Box::new(FtVision { params: FtVisionParams { steps: 20, lr: 1e-2 }, eos: b.eos }),
        "wise" => Box::new(Wise::new(WiseParams { layer: 1, ..WiseParams::default() }, m, memory(b)?, b.eos)?),
        "grace" => Box::new(Grace::new(GraceParams { layer: 1, ..GraceParams::default() }, m, b.eos)?),
        "rome" | "memit" | "alphaedit" => {
            // Key statistics of the training cases' unrelated questions; the first two layers are edited.
            let stats = Arc::new(KeyStats::collect(m, memory(b)?.into_iter().map(Ok), "test", &mut |_| {})?);
            match name {
                "rome" => Box::new(Rome::new(RomeParams { layer: 0, ..RomeParams::default() }, stats, m, b.eos)?),
                "memit" => {
                    let params =
                        MemitParams { layers: vec![0, 1], mom2_update_weight: 100.0, ..MemitParams::default() };
                    Box::new(Memit::new(params, stats, m, b.eos)?)
                }
                _ => {
                    // The null space: the directions below each layer's upper-quartile eigenvalue.
                    let threshold = [0, 1]
                        .iter()
                        .map(|&l| Ok(stats.layer(l)?.eigenvalues[stats.layer(l)?.eigenvalues.len() * 3 / 4]))
                        .collect::<Result<Vec<f64>>>()?
                        .into_iter()
                        .fold(f64::INFINITY, f64::min);
                    let params = AlphaEditParams {
                        layers: vec![0, 1],
                        nullspace_threshold: threshold,
                        ..AlphaEditParams::default()
                    };
                    Box::new(AlphaEdit::new(params, stats, m, b.eos)?)
                }
            }
        }
        unike => {
            let artifacts = artifacts.as_ref().map_err(|e| anyhow!("building UniKE's memory: {e}"))?;
            let mut params = UniKeParams::default();
            if let Some(v) = unike.strip_prefix("unike:") {
                params.apply_variant(v)?;
            }
            Box::new(UniKe::new(unike, params, m, artifacts, memory(b)?, b.eos)?)
        }
    })
}

/// What an edit must do on a random model (a).
#[derive(Clone, Copy, PartialEq)]
enum Takes {
    /// Optimised until the target is the argmax (FT, T-Patcher, UniKE's new neurons): the greedy answer is the target.
    Target,
    /// The target's log-probability rises by more than this many nats: a hypernetwork's change (KE, MEND: 20 training
    /// steps on random weights promise no more), and a locate-then-edit write at the last prompt position (ROME,
    /// MEMIT, AlphaEdit: one position's state cannot carry a random model's multi-token answer; AlphaEdit's change is
    /// further confined to the keys' null space, so its bar is lower).
    Raises(f32),
    /// In context (IKE, SERAC, UniKE's latent editing): a random model has learnt no in-context use, so the output
    /// on the edited prompt changes (its largest target logit change above 0.05); the target's log-probability is
    /// reported.
    Changes,
}

/// What an edit must keep of the unrelated probes (b).
#[derive(Clone, Copy, PartialEq)]
enum Keeps {
    /// SERAC: the probes are out of scope, so the base model answers them with exactly its logits.
    Exactly,
    /// T-Patcher: its neurons are trained to stay silent on unrelated questions: both probes' first answer tokens and
    /// at least 90% of their answer positions are kept.
    Mostly,
    /// Reported, not asserted: FT has no locality term; KE's and MEND's is 20 steps old; IKE has no scope (its
    /// demonstration is in front of every prompt); UniKE's keys are not trained (values only) and its retrieval shifts
    /// every position, and on random weights every prompt's hidden states are alike.
    Reported,
}

/// The methods with what each must do. Measured (release and dev alike), greedy answers kept of 2 and answer positions
/// kept of
/// 48 / 48 / 37 (LLaVA / BLIP-2 / Qwen2-VL), log-probability of the target (-26.65 / -19.87 / -22.25 unedited):
/// - ft: the target, kept 0 0 0, positions 26 2 19;
/// - ke: logp -3.53 -6.91 -8.29, kept 0 0 0, positions 5 0 2; mend: logp -6.01 -5.96 -6.51, kept 0, positions 19 0 8;
/// - t-patcher: the target, kept 1 1 2, positions 46 47 37, first tokens 2 2 2;
/// - ike: logp -25.08 -18.23 -21.32, moved 4.12 2.60 2.27, kept 0 0 0, positions 3 13 8 (LLaVA and BLIP-2 keep only
///   the edit's own demonstration, their context budgets being 128 and 64 positions; Qwen2-VL two retrieved ones too);
/// - serac: logp -25.08 -18.23 -22.05, moved 4.12 2.60 2.64, kept 2 2 2 exactly, scope probability of the edit
///   0.986 0.985 0.988 and of the probes at most 0.013;
/// - unike: the target, kept 0 0 0, positions 38 39 28; unike:only-intrinsic: the target, kept 1 0 0, positions
///   42 39 29;
/// - unike:only-latent: logp -26.71 -19.66 -21.97, moved 0.94 0.26 0.52, kept 0 0 1, positions 32 40 34;
/// - every patch: the loaded one gives exactly the same logits (difference 0).
const METHODS: [(&str, Takes, Keeps); 16] = [
    ("ft", Takes::Target, Keeps::Reported),
    ("ke", Takes::Raises(5.0), Keeps::Reported),
    ("t-patcher", Takes::Target, Keeps::Mostly),
    ("mend", Takes::Raises(5.0), Keeps::Reported),
    ("ike", Takes::Changes, Keeps::Reported),
    ("serac", Takes::Changes, Keeps::Exactly),
    ("unike", Takes::Target, Keeps::Reported),
    ("unike:only-intrinsic", Takes::Target, Keeps::Reported),
    ("unike:only-latent", Takes::Changes, Keeps::Reported),
    ("ft-vision", Takes::Raises(2.0), Keeps::Reported),
    ("lora", Takes::Target, Keeps::Reported),
    ("wise", Takes::Raises(5.0), Keeps::Reported),
    ("grace", Takes::Raises(5.0), Keeps::Exactly),
    ("rome", Takes::Raises(5.0), Keeps::Reported),
    ("memit", Takes::Raises(5.0), Keeps::Reported),
    ("alphaedit", Takes::Raises(1.0), Keeps::Reported),
];

/// One method on one family: builds it, edits, checks (a), (b), (c); the measured line.
fn check(b: &Bench, method: &str, takes: Takes, keeps: Keeps, prepared: &Prepared) -> Result<String> {
    let built = build(b, method, &prepared.0, &prepared.1)?;
    let o = run(b, built.as_ref())?;
    let mut line = format!(
        "greedy {:?} logp {:.2} -> {:.2} moved {:.2} | kept {}/2, positions {}/{}, first tokens {}/2, probe logits \
         moved {:.2} | round trip {:.1e}",
        o.greedy,
        o.logp.0,
        o.logp.1,
        o.moved,
        o.kept,
        o.positions.0,
        o.positions.1,
        o.first,
        o.probe_moved,
        o.round_trip
    );
    match method {
        "serac" => line += &format!(" | scope probabilities {:?}", serac_routes(b, &o)?),
        "ike" => line += &format!(" | {} demonstrations", o.patch.provenance.demonstrations.len()),
        _ => {}
    }
    eprintln!("{} {method}: {line}", b.name);
    // (a)
    match takes {
        Takes::Target => ensure!(o.took && o.greedy == b.request.target, "the edit did not take: {line}"),
        Takes::Raises(nats) => {
            ensure!(o.logp.1 > o.logp.0 + nats, "the target's log-probability did not rise by {nats}: {line}")
        }
        Takes::Changes => ensure!(o.moved > 0.05, "the edited prompt's output did not change: {line}"),
    }
    // (b)
    match keeps {
        Keeps::Exactly => ensure!(o.kept == 2 && o.probe_moved == 0.0, "unrelated answers changed: {line}"),
        Keeps::Mostly => ensure!(o.first == 2 && o.positions.0 * 10 >= o.positions.1 * 9, "locality: {line}"),
        Keeps::Reported => {}
    }
    // (c)
    ensure!(o.round_trip < 1e-6, "the loaded patch differs by {}", o.round_trip);
    Ok(line)
}

/// What the trained methods share on a family: the hypernetworks' training cases, UniKE's artifacts.
type Prepared = (Result<Vec<TrainCase>, String>, Result<Artifacts, String>);

/// Every method on the family's tiny checkpoint; each (family, method) that fails is reported, then the test fails.
fn every_method(name: &'static str, family: Family) -> Result<()> {
    let start = std::time::Instant::now();
    let b = bench(name, family)?;
    let (m, p) = (&*b.model, &*b.processor);
    let layers = hypernet::last_layers(m, HYPERNET_LAYERS)?;
    let grads = hypernet::prepare(m, p, b.eos, &b.train, &layers, &mut |_, _| {}).map_err(|e| format!("{e:#}"));
    let prepared = (grads, unike_artifacts(&b).map_err(|e| format!("{e:#}")));
    eprintln!("{name}: prepared in {:.2?}", start.elapsed());
    let mut failures = Vec::new();
    for (method, takes, keeps) in METHODS {
        if let Err(e) = check(&b, method, takes, keeps, &prepared) {
            eprintln!("{name} {method}: FAILED: {e:#}");
            failures.push(format!("({name}, {method}): {e:#}"));
        }
    }
    eprintln!("{name}: every method in {:.2?}", start.elapsed());
    ensure!(failures.is_empty(), "{} of {} methods failed:\n{}", failures.len(), METHODS.len(), failures.join("\n"));
    Ok(())
}

#[test]
fn every_method_edits_tiny_llava() -> Result<()> {
    every_method("tiny-llava", Family::Llava)
}

#[test]
fn every_method_edits_tiny_blip2() -> Result<()> {
    every_method("tiny-blip2", Family::Blip2)
}

#[test]
fn every_method_edits_tiny_qwen2vl() -> Result<()> {
    every_method("tiny-qwen2vl", Family::Qwen2Vl)
}
