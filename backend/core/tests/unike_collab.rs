//! UniKE's collaboration, measured on fixed development-slice cases of the shipped default model (issue 15 §5): the
//! truthful editing direction ζ moves multimodal generality against `zeta-none` in the direction the development
//! sweep measured, and the adaptive knowledge share is higher on an edit's own and rephrased questions than on
//! unrelated text questions. Both fail when the mechanism is disconnected (ζ not added: identical patches; α not
//! adaptive: equal shares).

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use unike_core::data::{load_cases, split_train, EditCase, Task};
use unike_core::edit::registry::{self, MethodInputs};
use unike_core::edit::{EditContext, EditMethod, EditSequence, PatchStack};
use unike_core::eval::share::knowledge_shares;
use unike_core::eval::{Evaluator, PreparedCase};
use unike_core::model::{Llava, LlavaCheckpoint, Processor};
use unike_core::world::World;

struct Fixture {
    model: Llava,
    processor: Processor,
    eos: Vec<u32>,
    /// The training split's front and its development slice, for `task`.
    front: Vec<EditCase>,
    dev: Vec<EditCase>,
    data: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// UniKE's knowledge memory of the default model (not in git, 55 MB): built once as `unike build-memory` builds it
/// (world 0, 3,000 scenes, 64 renderings, 6,000 triplets; deterministic), when a fresh clone lacks it.
fn ensure_memory(model: &Llava, processor: &Processor, eos: &[u32]) -> Result<()> {
    use unike_core::edit::unike::memory::{world_candidates, KnowledgeMemory};
    use unike_core::edit::unike::Artifacts;
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONCE.lock().map_err(|_| anyhow::anyhow!("memory lock poisoned"))?;
    let dir = Artifacts::dir(&root().join("models/default"));
    if dir.join("memory.safetensors").is_file() && dir.join("memory.json").is_file() {
        return Ok(());
    }
    eprintln!("building UniKE's knowledge memory of the default model into {} (once)", dir.display());
    let world = World::generate(0);
    let layers: Vec<usize> = (0..model.text().num_layers()).collect();
    let memory = KnowledgeMemory::build(
        model,
        processor,
        eos,
        world_candidates(&world, 3000, 64),
        &layers,
        6000,
        &mut |_, _| {},
    )?;
    memory.save(&dir)?;
    Ok(())
}

fn fixture(task: Task) -> Result<Fixture> {
    let ckpt = LlavaCheckpoint::open(root().join("models/default"))?;
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let data = std::env::temp_dir().join(format!("unike-collab-test-{}-{n}", std::process::id()));
    unike_core::world::export::write(&World::generate(0), &data)?;
    let file = match task {
        Task::Vqa => "vqa_train.json",
        Task::Caption => "caption_train.json",
    };
    let (front, dev) = split_train(load_cases(&data.join(file), task, None)?);
    let (model, processor, eos) = (ckpt.load_model(None, &Device::Cpu)?, ckpt.processor()?, ckpt.eos_token_ids()?);
    ensure_memory(&model, &processor, &eos)?;
    Ok(Fixture { model, processor, eos, front, dev, data })
}

/// UniKE (or a variant) as `unike bench` builds it: memory of unrelated inputs from the first 64 front cases.
fn unike(f: &Fixture, ev: &mut Evaluator<'_>, name: &str) -> Result<Box<dyn EditMethod>> {
    let eos = *f.eos.first().context("eos")?;
    let mut memory = Vec::new();
    for c in f.front.iter().take(64) {
        let (px, mpx) = (ev.pixels(&c.image)?, ev.pixels(&c.m_loc_image)?);
        let answer = c.pre_edit.as_deref().unwrap_or(&c.target);
        memory.push(EditSequence::new(&f.processor, &c.prompt, Some(&px), answer, eos)?);
        memory.push(EditSequence::new(&f.processor, &c.loc_question, None, &c.loc_answer, eos)?);
        memory.push(EditSequence::new(&f.processor, &c.m_loc_question, Some(&mpx), &c.m_loc_answer, eos)?);
    }
    let inputs = MethodInputs {
        root: &root(),
        model: "default",
        memory,
        demonstrations: vec![],
        eos,
        backbone: &f.model,
        model_dir: &root().join("models/default"),
    };
    Ok(registry::build(name, inputs)?)
}

/// Exact matches on the question asked about another image of the entity (M-Generality), one-step edits.
fn m_generality_exact(f: &Fixture, method: &dyn EditMethod, cases: &[PreparedCase]) -> Result<usize> {
    let mut hits = 0;
    for c in cases {
        let mut stack = PatchStack::new();
        stack.push(method.edit(&EditContext { model: &f.model, processor: &f.processor, stack: &stack }, c.request())?);
        let seq = c.probes()[2];
        hits += usize::from(seq.argmax(&f.model, &stack.hooks()?)? == seq.targets());
    }
    Ok(hits)
}

/// The first `n` development-slice cases, prepared (case `i` with seed `i`).
fn dev_cases(f: &Fixture, ev: &mut Evaluator<'_>, n: usize) -> Result<Vec<PreparedCase>> {
    Ok(f.dev.iter().take(n).enumerate().map(|(i, c)| ev.prepare(c, i as u64)).collect::<Result<_, _>>()?)
}

#[test]
fn the_truthful_direction_raises_caption_m_generality_against_none() -> Result<()> {
    let f = fixture(Task::Caption)?;
    let mut ev = Evaluator::new(&f.model, &f.processor, f.eos.clone());
    let cases = dev_cases(&f, &mut ev, N_ZETA)?;
    let truthful = m_generality_exact(&f, unike(&f, &mut ev, "unike")?.as_ref(), &cases)?;
    let none = m_generality_exact(&f, unike(&f, &mut ev, "unike:zeta-none")?.as_ref(), &cases)?;
    eprintln!("M-Generality exact on {N_ZETA} caption dev cases: truthful {truthful}, zeta-none {none}");
    assert!(truthful >= none + ZETA_MARGIN, "truthful {truthful} vs zeta-none {none} of {N_ZETA}");
    Ok(())
}

#[test]
fn the_knowledge_share_is_higher_on_related_questions_than_on_unrelated_text() -> Result<()> {
    let f = fixture(Task::Vqa)?;
    let mut ev = Evaluator::new(&f.model, &f.processor, f.eos.clone());
    let cases = dev_cases(&f, &mut ev, N_SHARE)?;
    let method = unike(&f, &mut ev, "unike")?;
    let s = knowledge_shares(&ev, method.as_ref(), &cases)?.context("UniKE mixes knowledge in")?;
    eprintln!("knowledge share on {N_SHARE} VQA dev cases (edit, rephrase, other image, text, image): {s:?}");
    let related = s[0].min(s[1]);
    assert!(related >= s[3] + SHARE_MARGIN, "related {related} vs unrelated text {} ({s:?})", s[3]);
    Ok(())
}

/// Fixed development-slice cases of each check, and the margins. Measured on the model before (issue 14's full2,
/// 2026-12-06, keys and values, 10 steps, values lr 1.0): M-Generality exact on the first 30 caption dev cases,
/// truthful 23, zeta-none 20 (on the whole slice, n = 100: 74 against 69); knowledge share on the first 20 VQA dev
/// cases, edit 0.56, rephrased 0.57, other image 0.57, unrelated text 0.33, unrelated image 0.50 (so unrelated
/// *image* questions get nearly as much: the README says so; no margin is claimed for them). On the shipped model
/// (full4, values lr 0.1 chosen on the slice) ζ's lead shrank to one: 24 against 23 on the 30 cases, 63 against 62 on
/// the whole slice; the margin is 1, which a disconnected ζ (identical patches, equal counts) still fails.
const N_ZETA: usize = 30;
const ZETA_MARGIN: usize = 1;
const N_SHARE: usize = 20;
const SHARE_MARGIN: f32 = 0.15;
