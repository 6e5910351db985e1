//! Edit methods on the shipped default model: the edit question answers the target afterwards, unrelated questions
//! keep their answers, and patches stack and undo.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use unike_core::edit::t_patcher::{TPatcher, TPatcherParams};
use unike_core::edit::{EditContext, EditMethod, EditRequest, EditSequence, PatchStack};
use unike_core::hooks::Hooks;
use unike_core::model::{Llava, LlavaCheckpoint, Pixels, Processor, VisionLanguageModel};
use unike_core::train::evaluate::answer_with;
use unike_core::world::rng::Rng;
use unike_core::world::samples::{eval_split, training_sample, Sample, Split};
use unike_core::world::World;

struct Fixture {
    model: Llava,
    processor: Processor,
    eos: Vec<u32>,
    world: World,
}

fn fixture() -> Result<Fixture> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
    let ckpt = LlavaCheckpoint::open(&dir)?;
    Ok(Fixture {
        model: ckpt.load_model(None, &Device::Cpu)?,
        processor: ckpt.processor()?,
        eos: ckpt.eos_token_ids()?,
        world: World::generate(0),
    })
}

fn pixels(f: &Fixture, s: &Sample) -> Result<Option<Pixels>> {
    Ok(match &s.image {
        Some(img) => Some(Pixels::fixed(f.processor.image_processor().preprocess(img, &Device::Cpu)?.unsqueeze(0)?)),
        None => None,
    })
}

fn say(f: &Fixture, s: &Sample, hooks: &Hooks) -> Result<String> {
    Ok(answer_with(&f.model, &f.processor, &f.eos, s, hooks)?.answer)
}

/// Unrelated training questions: T-Patcher's memory.
fn memory(f: &Fixture, n: usize) -> Result<Vec<EditSequence>> {
    let mut rng = Rng::new(11);
    (0..n)
        .map(|_| {
            let s = training_sample(&f.world, [4.0, 1.0, 2.0, 1.0, 1.0, 0.0], &mut rng);
            Ok(EditSequence::new(&f.processor, &s.question, pixels(f, &s)?.as_ref(), &s.answer, f.eos[0])?)
        })
        .collect()
}

#[test]
fn t_patcher_fixes_a_hallucination_and_keeps_other_answers() -> Result<()> {
    let f = fixture()?;
    let method = TPatcher::new(TPatcherParams::default(), memory(&f, 64)?, f.eos[0]);
    let none = Hooks::none();
    // Facts the model never learned: it answers them wrongly. Edit two of them, one after the other.
    let wrong: Vec<Sample> = eval_split(&f.world, Split::Unknown, 40)
        .into_iter()
        .filter(|s| say(&f, s, &none).map(|a| a != s.answer).unwrap_or(false))
        .take(2)
        .collect();
    assert_eq!(wrong.len(), 2);
    let probes: Vec<Sample> = eval_split(&f.world, Split::FactsSeen, 30)
        .into_iter()
        .chain(eval_split(&f.world, Split::TextFacts, 0).into_iter().take(20))
        .collect();
    let before: Vec<String> = probes.iter().map(|s| say(&f, s, &none)).collect::<Result<_>>()?;

    let mut stack = PatchStack::new();
    let mut ids = Vec::new();
    for (i, s) in wrong.iter().enumerate() {
        let request = EditRequest {
            question: s.question.clone(),
            image: pixels(&f, s)?,
            image_path: None,
            target: s.answer.clone(),
            seed: i as u64,
        };
        // One neuron per mistaken token (answer and end of sequence) under the stack, at most `neurons`.
        let seq = EditSequence::new(&f.processor, &s.question, request.image.as_ref(), &s.answer, f.eos[0])?;
        let pre = seq.argmax(&f.model, &stack.hooks()?)?;
        let mistakes = pre.iter().zip(seq.targets()).filter(|(a, b)| a != b).count();
        let patch = method.edit(&EditContext { model: &f.model, processor: &f.processor, stack: &stack }, &request)?;
        assert_eq!(patch.provenance.method, "t-patcher");
        let layer = f.model.text().num_layers() - 1;
        let added = patch.neurons.get(&layer).context("neurons in the last layer")?.w_k.dim(1)?;
        assert!(mistakes >= 1, "the edit {i} is of a wrong answer");
        assert_eq!(added, mistakes.min(method.params.0.neurons), "edit {i}: {mistakes} mistaken tokens");
        ids.push(stack.push(patch));
        assert_eq!(say(&f, s, &stack.hooks()?)?, s.answer, "edit {i} did not take");
    }
    // Both edits hold in the stack.
    for s in &wrong {
        assert_eq!(say(&f, s, &stack.hooks()?)?, s.answer);
    }
    let after: Vec<String> = probes.iter().map(|s| say(&f, s, &stack.hooks()?)).collect::<Result<_>>()?;
    let kept = before.iter().zip(&after).filter(|(a, b)| a == b).count();
    for ((s, a), b) in probes.iter().zip(&before).zip(&after) {
        if a != b {
            eprintln!("changed: {} {:?} -> {:?} (image: {})", s.question, a, b, s.image.is_some());
        }
    }
    // 95 % held on the model before issue 14; issue 14's full2 kept 46 of 50 (92 %), full4 (shipped 2026-12-06) keeps
    // 43 of 50 (86 %): the edited answer "honey" (and once "cake") replaces four other characters' food answers,
    // two profession answers and one text question's. Two stacked edits with T-Patcher's own settings and a
    // memory of 64 sequences; the benchmark's one-step T-Locality on the development slice is 100. The bar is 85 %.
    assert!(kept * 100 >= probes.len() * 85, "locality: {kept}/{} unrelated answers kept", probes.len());
    // Undo the first edit: the second still holds, and the first question is answered as under the second edit
    // alone (on the shipped model the second edit, "honey", leaks into the first, a food question too); undoing the
    // second as well gives back the pre-edit answers.
    let second = stack.iter().find(|(id, _)| *id == ids[1]).map(|(_, p)| p.clone()).context("the second patch")?;
    stack.remove(ids[0])?;
    assert_eq!(say(&f, &wrong[1], &stack.hooks()?)?, wrong[1].answer);
    let mut alone = PatchStack::new();
    alone.push(second);
    assert_eq!(say(&f, &wrong[0], &stack.hooks()?)?, say(&f, &wrong[0], &alone.hooks()?)?);
    stack.remove(ids[1])?;
    for s in &wrong {
        assert_eq!(say(&f, s, &stack.hooks()?)?, say(&f, s, &none)?);
    }
    Ok(())
}

#[test]
fn bad_edit_requests_are_clear_errors() -> Result<()> {
    let f = fixture()?;
    let method = TPatcher::new(TPatcherParams::default(), vec![], f.eos[0]);
    let stack = PatchStack::new();
    let ctx = EditContext { model: &f.model, processor: &f.processor, stack: &stack };
    let req =
        EditRequest { question: "who is this?".into(), image: None, image_path: None, target: "  ".into(), seed: 0 };
    let e = method.edit(&ctx, &req).err().context("empty target accepted")?;
    assert!(e.to_string().contains("target answer is empty"), "{e}");
    let mut params = TPatcherParams::default();
    params.0.last_layers = 99;
    let method = TPatcher::new(params, vec![], f.eos[0]);
    let req = EditRequest { target: "lebel".into(), ..req };
    let e = method.edit(&ctx, &req).err().context("99 layers accepted")?;
    assert!(e.to_string().contains("layers"), "{e}");
    Ok(())
}

#[test]
fn ft_fixes_a_hallucination_and_keeps_most_other_answers() -> Result<()> {
    use unike_core::edit::ft::{FineTune, FtParams};
    let f = fixture()?;
    let method = FineTune::new(FtParams::default(), f.eos[0]);
    let none = Hooks::none();
    let s = eval_split(&f.world, Split::Unknown, 40)
        .into_iter()
        .find(|s| say(&f, s, &none).map(|a| a != s.answer).unwrap_or(false))
        .context("a hallucination")?;
    let probes: Vec<Sample> = eval_split(&f.world, Split::FactsSeen, 30)
        .into_iter()
        .chain(eval_split(&f.world, Split::TextFacts, 0).into_iter().take(20))
        .collect();
    let mut stack = PatchStack::new();
    let request = EditRequest {
        question: s.question.clone(),
        image: pixels(&f, &s)?,
        image_path: None,
        target: s.answer.clone(),
        seed: 0,
    };
    let patch = method.edit(&EditContext { model: &f.model, processor: &f.processor, stack: &stack }, &request)?;
    assert_eq!(patch.provenance.method, "ft");
    assert!(patch.neurons.is_empty() && patch.mlp_deltas.len() == 1);
    stack.push(patch);
    assert_eq!(say(&f, &s, &stack.hooks()?)?, s.answer);
    let mut kept = 0;
    for p in &probes {
        kept += usize::from(say(&f, p, &none)? == say(&f, p, &stack.hooks()?)?);
    }
    // Fine-tuning is the least local baseline; on this model one edit still keeps at least 90% of other answers.
    assert!(kept * 100 >= probes.len() * 90, "locality: {kept}/{}", probes.len());
    stack.pop();
    assert_eq!(say(&f, &s, &stack.hooks()?)?, say(&f, &s, &none)?);
    Ok(())
}

/// A small UniKE memory and encoders, built the way `unike build-memory` / `train-encoders` do, in a temp dir.
fn unike_artifacts(f: &Fixture) -> Result<unike_core::edit::unike::Artifacts> {
    unike_artifacts_in(f, None)
}

/// As [`unike_artifacts`], kept in `model_dir`'s artifact directory when given.
fn unike_artifacts_in(f: &Fixture, keep_in: Option<&std::path::Path>) -> Result<unike_core::edit::unike::Artifacts> {
    use std::sync::Arc;
    use unike_core::edit::unike::encoders::{EncoderParams, Encoders};
    use unike_core::edit::unike::memory::{world_candidates, KnowledgeMemory};
    let layers: Vec<usize> = (0..f.model.text().num_layers()).collect();
    let memory = KnowledgeMemory::build(
        &f.model,
        &f.processor,
        &f.eos,
        world_candidates(&f.world, 100, 4),
        &layers,
        160,
        &mut |_, _| {},
    )?;
    assert_eq!(memory.len(), 160);
    let params = EncoderParams { steps: 60, batch: 64, ..EncoderParams::default() };
    let (encoders, curve) = Encoders::train(&memory, &params, &mut |_, _, _| {})?;
    // Contrastive training separates truthfulness: the loss falls.
    assert!(curve.last().map(|c| c.truthful) < curve.first().map(|c| c.truthful) || curve.len() == 1);
    let keep = std::env::temp_dir().join(format!("unike-artifacts-{}", std::process::id()));
    let dir = keep_in.map_or(keep.clone(), unike_core::edit::unike::Artifacts::dir);
    memory.save(&dir)?;
    encoders.save(&dir, &curve)?;
    let loaded = KnowledgeMemory::load(&dir, &Device::Cpu)?;
    assert_eq!(loaded.triplets, memory.triplets);
    let enc = Encoders::load(&dir, &Device::Cpu)?;
    assert_eq!(enc.layers.len(), layers.len());
    let _ = std::fs::remove_dir_all(&keep);
    Ok(unike_core::edit::unike::Artifacts { memory: loaded, encoders: Arc::new(enc) })
}

#[test]
fn unike_and_its_ablations_edit_and_keep_other_answers() -> Result<()> {
    use unike_core::edit::unike::{UniKe, UniKeParams};
    let f = fixture()?;
    let artifacts = unike_artifacts(&f)?;
    let none = Hooks::none();
    // A counterfactual edit of a fact the model knows (as the benchmark's edits are).
    let s = eval_split(&f.world, Split::FactsSeen, 10).into_iter().find(|s| s.image.is_some()).context("a fact")?;
    let target = if s.answer == "the iron otters" { "the stone lions" } else { "the iron otters" };
    let probes: Vec<Sample> = eval_split(&f.world, Split::FactsSeen, 40)
        .into_iter()
        .filter(|p| p.question != s.question || p.answer != s.answer)
        .take(30)
        .chain(eval_split(&f.world, Split::TextFacts, 0).into_iter().take(20))
        .collect();
    let before: Vec<String> = probes.iter().map(|p| say(&f, p, &none)).collect::<Result<_>>()?;
    let request = EditRequest {
        question: s.question.clone(),
        image: pixels(&f, &s)?,
        image_path: None,
        target: target.into(),
        seed: 5,
    };
    for variant in ["full", "only-intrinsic", "intrinsic+ike", "zeta-random", "intrinsic+latent"] {
        let mut params = UniKeParams::default();
        params.apply_variant(variant)?;
        let name = format!("unike:{variant}");
        let mem = memory(&f, 64)?;
        // What a cache of built methods weighs it by: the prepared memory of its two layers (centred semantic
        // states, keys, values, positive states of 160 entries, f32) and, from the start, the memory caches its
        // first edits fill: the memory's queries on an empty stack, the residuals entering the first edited layer
        // and, with latent editing, the base of `unchanged` (two f32 states and a score per position and layer).
        let d = artifacts.memory.h_sem[0].dim(1)?;
        let latent = !matches!(variant, "only-intrinsic" | "intrinsic+ike");
        let positions: usize = mem.iter().map(|s| s.ids.len()).sum();
        let prefix = unike_core::edit::memory_prefix::MemoryPrefix::expected_bytes(&mem, d);
        assert!(prefix >= positions * d * 4 && prefix < positions * d * 4 * 2, "{variant}: {prefix}");
        let unedited = 2 * positions * d * 4; // the memory's queries on an empty stack, at two layers
        let expected =
            unedited + prefix + if latent { 2 * 4 * 160 * d * 4 + 2 * positions * (2 * d * 4 + 4) } else { 0 };
        let method = UniKe::new(&name, params, &f.model, &artifacts, mem, f.eos[0])?;
        assert_eq!(method.resident_bytes(), expected, "{variant}");
        let mut stack = PatchStack::new();
        let patch = method.edit(&EditContext { model: &f.model, processor: &f.processor, stack: &stack }, &request)?;
        assert_eq!(patch.provenance.method, name);
        assert_eq!(patch.neurons.len(), 2, "{variant}: neurons in the last two layers");
        assert_eq!(!patch.latent.is_empty(), variant != "only-intrinsic" && variant != "intrinsic+ike", "{variant}");
        assert_eq!(patch.contexts.len(), usize::from(variant == "intrinsic+ike"), "{variant}");
        let id = stack.push(patch);
        let hooks = stack.hooks()?;
        let edited = Sample { answer: target.into(), ..s.clone() };
        assert_eq!(say(&f, &edited, &hooks)?, target, "{variant}: the edit did not take");
        let kept = probes.iter().zip(&before).filter(|(p, b)| say(&f, p, &hooks).ok().as_ref() == Some(*b)).count();
        // A demonstration in front of every prompt changes unrelated answers (the paper's point about vanilla IKE):
        // measured by the benchmark, not asserted here.
        // Other characters' facts of the same kinds are the hardest locality probes (the benchmark's are text facts
        // and scene questions); with this small memory 43-46 of 50 are kept (measured).
        if variant != "intrinsic+ike" {
            assert!(kept * 100 >= probes.len() * 84, "{variant}: locality {kept}/{}", probes.len());
        }
        stack.remove(id)?;
        assert_eq!(say(&f, &s, &stack.hooks()?)?, say(&f, &s, &none)?);
    }
    // Sequential editing: each edit is trained under the stack as it will be applied (one retrieval over the memory,
    // the stack's entries and its own), so both edits of a stack of two take.
    let method = UniKe::new("unike", UniKeParams::default(), &f.model, &artifacts, memory(&f, 64)?, f.eos[0])?;
    let second = eval_split(&f.world, Split::FactsSeen, 40)
        .into_iter()
        .find(|p| p.image.is_some() && p.question != s.question && p.answer != target)
        .context("a second fact")?;
    let mut stack = PatchStack::new();
    for (sample, goal) in [(&s, target), (&second, target)] {
        let req = EditRequest { image: pixels(&f, sample)?, question: sample.question.clone(), ..request.clone() };
        let patch = method.edit(&EditContext { model: &f.model, processor: &f.processor, stack: &stack }, &req)?;
        stack.push(patch);
        let edited = Sample { answer: goal.into(), ..sample.clone() };
        assert_eq!(say(&f, &edited, &stack.hooks()?)?, goal, "on a stack of {}", stack.len());
    }
    let first = Sample { answer: target.into(), ..s.clone() };
    assert_eq!(say(&f, &first, &stack.hooks()?)?, target, "the first edit still holds under the second");
    // Memory queries under the stack are the same with the memory's retrieval at the first edited layer pinned (what
    // an edit on a stack the doors of `unchanged` do not cover uses) as without (scored afresh), to the bit.
    {
        use unike_core::edit::memory_prefix::{memory_queries_fast, MemoryPrefix};
        let knowledge = method.patch_deps().knowledge.context("UniKE's knowledge")?;
        let n = f.model.text().num_layers();
        let layers = vec![n - 2, n - 1];
        let ctx = EditContext { model: &f.model, processor: &f.processor, stack: &stack };
        let mem = memory(&f, 20)?;
        let prefix = MemoryPrefix::default();
        let afresh = memory_queries_fast(&ctx, &mem, &prefix, &[], &layers, &Hooks::none())?;
        let inputs: Vec<_> = prefix.chunks(&f.model, &mem, n - 2)?.iter().map(|c| c.x.clone()).collect();
        knowledge.pin(n - 2, &inputs, UniKeParams::default().top_k)?;
        let hits = knowledge.pinned.hits();
        let pinned = memory_queries_fast(&ctx, &mem, &prefix, &[], &layers, &Hooks::none())?;
        assert!(knowledge.pinned.hits() > hits, "the pinned retrieval was not used");
        for l in &layers {
            let diff = (&afresh[l] - &pinned[l])?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "layer {l}");
        }
    }
    // Only latent IKE edits without neurons; its patch holds the edit's states only.
    let mut params = UniKeParams::default();
    params.apply_variant("only-latent")?;
    let method = UniKe::new("unike:only-latent", params, &f.model, &artifacts, vec![], f.eos[0])?;
    let stack = PatchStack::new();
    let patch = method.edit(&EditContext { model: &f.model, processor: &f.processor, stack: &stack }, &request)?;
    assert!(patch.neurons.is_empty() && patch.latent.len() == 2);
    Ok(())
}

/// The trained baselines (KE, MEND, SERAC) with the networks shipped in `models/default/<method>/`.
#[test]
fn trained_baselines_edit_keep_other_answers_stack_undo_and_round_trip() -> Result<()> {
    use unike_core::edit::registry::{self, MethodInputs};
    use unike_core::edit::serac::Serac;
    use unike_core::edit::{Patch, PatchDeps};
    let f = fixture()?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model_dir = root.join("models/default");
    let none = Hooks::none();
    // Counterfactual edits of facts the model knows (as the benchmark's are): each takes the answer another
    // character has to the same question.
    let pool: Vec<Sample> =
        eval_split(&f.world, Split::FactsSeen, 400).into_iter().filter(|s| s.image.is_some()).collect();
    let facts: Vec<Sample> = pool.iter().take(6).cloned().collect();
    let edits: Vec<(Sample, String)> = facts
        .iter()
        .filter_map(|s| {
            let other = pool.iter().find(|o| o.question == s.question && o.answer != s.answer)?;
            Some((s.clone(), other.answer.clone()))
        })
        .collect();
    assert_eq!(edits.len(), 6);
    let probes: Vec<Sample> = eval_split(&f.world, Split::FactsSeen, 80)
        .into_iter()
        .skip(60)
        .chain(eval_split(&f.world, Split::TextFacts, 0).into_iter().take(20))
        .collect();
    let before: Vec<String> = probes.iter().map(|p| say(&f, p, &none)).collect::<Result<_>>()?;
    let request = |s: &Sample, target: &str| -> Result<EditRequest> {
        Ok(EditRequest {
            question: s.question.clone(),
            image: pixels(&f, s)?,
            image_path: None,
            target: target.into(),
            seed: 1,
        })
    };
    for name in ["mend", "ke", "serac"] {
        let inputs = MethodInputs {
            root: &root,
            model: "default",
            memory: vec![],
            demonstrations: vec![],
            eos: f.eos[0],
            backbone: &f.model,
            model_dir: &model_dir,
        };
        let method = registry::build(name, inputs)?;
        assert!(method.resident_bytes() > 10_000, "{name}: its trained network weighs in the method cache");
        let mut took = 0;
        let mut kept = 0;
        for (s, target) in &edits {
            let mut stack = PatchStack::new();
            let ctx = EditContext { model: &f.model, processor: &f.processor, stack: &stack };
            let patch = method.edit(&ctx, &request(s, target)?)?;
            assert_eq!(patch.provenance.method, name);
            stack.push(patch);
            let hooks = stack.hooks()?;
            took += usize::from(say(&f, &Sample { answer: target.clone(), ..s.clone() }, &hooks)? == *target);
            kept += probes.iter().zip(&before).filter(|(p, b)| say(&f, p, &hooks).ok().as_ref() == Some(*b)).count();
        }
        // Other characters' facts of the same kinds are the hardest locality probes (the benchmark's are text facts and
        // scene questions). Measured (2026-12-06): mend 4/6 edits took and 223/240 answers kept (MEND as MEND and
        // VLKEB, up and down projections; 98 exact reliability on the VQA development slice), ke 6/6 and 208/240,
        // serac 6/6 and 238/240.
        eprintln!("{name}: {took}/6 edits took, {kept}/{} unrelated answers kept", edits.len() * probes.len());
        let floor = if name == "mend" { 4 } else { 5 };
        assert!(took >= floor, "{name}: {took}/6 edits took");
        assert!(
            kept * 100 >= edits.len() * probes.len() * 80,
            "{name}: locality {kept}/{}",
            edits.len() * probes.len()
        );

        // Same request, same patch; the patch round-trips through safetensors + JSON.
        let stack = PatchStack::new();
        let ctx = EditContext { model: &f.model, processor: &f.processor, stack: &stack };
        let (s, target) = &edits[0];
        let (a, b) = (method.edit(&ctx, &request(s, target)?)?, method.edit(&ctx, &request(s, target)?)?);
        let dir = std::env::temp_dir().join(format!("unike-trained-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        a.save(&dir.join("a"))?;
        b.save(&dir.join("b"))?;
        assert_eq!(std::fs::read(dir.join("a.safetensors"))?, std::fs::read(dir.join("b.safetensors"))?, "{name}");
        let deps = PatchDeps {
            serac: if name == "serac" {
                Some(Serac::load(&model_dir.join("serac"), &f.model, f.eos[0])?.net)
            } else {
                None
            },
            ..Default::default()
        };
        if name == "serac" {
            let e = Patch::load(&dir.join("a"), &f.model).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("SERAC"), "{e}");
        }
        let loaded = Patch::load_with(&dir.join("a"), &f.model, &deps)?;
        let q = &probes[0];
        assert_eq!(say(&f, q, &loaded.hooks()?)?, say(&f, q, &a.hooks()?)?);
        assert_eq!(
            say(&f, &Sample { answer: target.clone(), ..s.clone() }, &loaded.hooks()?)?,
            say(&f, s, &a.hooks()?)?
        );
        let _ = std::fs::remove_dir_all(&dir);

        // Two edits stacked, then the first undone: exactly the second patch is left; then nothing is.
        let mut stack = PatchStack::new();
        let mut ids = Vec::new();
        let mut patches = Vec::new();
        for (s, target) in &edits[..2] {
            let ctx = EditContext { model: &f.model, processor: &f.processor, stack: &stack };
            let p = method.edit(&ctx, &request(s, target)?)?;
            patches.push(p.clone());
            ids.push(stack.push(p));
        }
        let mut second = PatchStack::new();
        second.push(patches[1].clone());
        stack.remove(ids[0])?;
        for (s, _) in &edits[..2] {
            assert_eq!(say(&f, s, &stack.hooks()?)?, say(&f, s, &second.hooks()?)?, "{name}: undo");
        }
        stack.remove(ids[1])?;
        assert!(stack.is_empty());
        assert_eq!(say(&f, &edits[0].0, &stack.hooks()?)?, say(&f, &edits[0].0, &none)?, "{name}: undo all");
    }
    Ok(())
}

/// Memory queries under a stack (T-Patcher's and UniKE's locality terms) run only the patched layers on a cached
/// prefix, in padded batches, and give what the full forward pass gives sequence by sequence; a stack hooked lower
/// down takes the full pass.
#[test]
fn memory_queries_under_a_stack_run_only_the_patched_layers_and_match_the_full_pass() -> Result<()> {
    use std::collections::BTreeMap;
    use unike_core::edit::memory_prefix::{memory_queries_fast, MemoryPrefix};
    use unike_core::edit::neurons::memory_queries;
    use unike_core::edit::{Patch, Provenance};
    use unike_core::hooks::ExtraNeurons;
    use unike_core::model::config::Activation;
    let f = fixture()?;
    let all = memory(&f, 70)?; // more than one padded batch of 64
    let (mem, more) = all.split_at(66);
    let n = f.model.text().num_layers();
    let layers = vec![n - 2, n - 1];
    let d = f.model.config().text.hidden_size;
    let request = EditRequest { question: "q".into(), image: None, image_path: None, target: "t".into(), seed: 0 };
    // Random neurons at `layer`: they change the FFN inputs of the layers above.
    let patch = |layer: usize, seed: u64| -> Result<Patch> {
        let dev = &Device::Cpu;
        let mut rng = Rng::new(seed);
        let mut randn = |r: usize, c: usize| -> Result<candle_core::Tensor> {
            let v: Vec<f32> = (0..r * c).map(|_| rng.unit() - 0.5).collect();
            Ok(candle_core::Tensor::from_vec(v, (r, c), dev)?)
        };
        let (w_k, w_v) = (randn(d, 4)?, randn(4, d)?);
        let neurons =
            ExtraNeurons::new(w_k, candle_core::Tensor::ones(4, candle_core::DType::F32, dev)?, w_v, Activation::Relu)?;
        Ok(Patch::new(Provenance::new("test", &(), &request)?, BTreeMap::from([(layer, neurons)])))
    };
    let prefix = MemoryPrefix::default();
    for (hooked, what) in [(n - 2, "above the prefix"), (0, "below it: the full pass")] {
        let mut stack = PatchStack::new();
        stack.push(patch(hooked, 3)?);
        let ctx = EditContext { model: &f.model, processor: &f.processor, stack: &stack };
        let full = memory_queries(&ctx, &all, &layers, &Hooks::none())?;
        let fast = memory_queries_fast(&ctx, mem, &prefix, more, &layers, &Hooks::none())?;
        let unedited = memory_queries(
            &EditContext { model: &f.model, processor: &f.processor, stack: &PatchStack::new() },
            &all,
            &layers,
            &Hooks::none(),
        )?;
        for l in &layers {
            let diff = (&full[l] - &fast[l])?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "{what}: layer {l} differs by {diff}");
            assert_eq!(full[l].dims(), fast[l].dims());
        }
        // The stack matters: the last layer's queries are not the unedited model's.
        let moved = (&unedited[&(n - 1)] - &fast[&(n - 1)])?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(moved > 1e-3, "{what}: the stack changed nothing ({moved})");
    }
    Ok(())
}

/// UniKE's memory queries on a stack of UniKE edits recompute only the memory sequences the stack reaches (a stack
/// entry retrieved, a stack neuron firing below the last edited layer) and give what running every sequence under
/// the stack gives; each door, forced open, makes its sequences recomputed, and other kinds of stack take the full
/// path.
#[test]
fn unike_memory_queries_on_a_stack_recompute_only_what_the_stack_reaches() -> Result<()> {
    use std::collections::BTreeMap;
    use unike_core::edit::memory_prefix::{memory_queries_fast, MemoryPrefix};
    use unike_core::edit::neurons::stack_memory;
    use unike_core::edit::unike::unchanged::MemoryBase;
    use unike_core::edit::unike::{UniKe, UniKeParams};
    use unike_core::edit::{Patch, Provenance};
    let f = fixture()?;
    let artifacts = unike_artifacts(&f)?;
    // The test's memory holds 160 entries (the shipped one 6,000): with K = 40 the stack's entries are among every
    // position's best; with K = 4 they are retrieved where they belong.
    let mut params = UniKeParams::default();
    params.apply_variant("k=4")?;
    let settings = (params.top_k, params.alpha);
    let method = UniKe::new("unike:k=4", params, &f.model, &artifacts, memory(&f, 16)?, f.eos[0])?;
    let knowledge = method.patch_deps().knowledge.context("UniKE's knowledge")?;
    let n = f.model.text().num_layers();
    let layers = vec![n - 2, n - 1];
    let mem = memory(&f, 40)?;
    let facts: Vec<Sample> =
        eval_split(&f.world, Split::FactsSeen, 40).into_iter().filter(|s| s.image.is_some()).take(3).collect();
    let mut stack = PatchStack::new();
    for (i, s) in facts.iter().enumerate() {
        let target = if s.answer == "the iron otters" { "the stone lions" } else { "the iron otters" };
        let req = EditRequest {
            question: s.question.clone(),
            image: pixels(&f, s)?,
            image_path: None,
            target: target.into(),
            seed: i as u64,
        };
        let patch = method.edit(&EditContext { model: &f.model, processor: &f.processor, stack: &stack }, &req)?;
        stack.push(patch);
    }
    let (base, prefix) = (MemoryBase::default(), MemoryPrefix::default());
    let check = |stack: &PatchStack, what: &str| -> Result<usize> {
        let ctx = EditContext { model: &f.model, processor: &f.processor, stack };
        let more = stack_memory(&ctx, f.eos[0])?;
        let q = base.queries(&ctx, &knowledge, settings, &mem, &prefix, &more, &layers)?.context(what.to_string())?;
        let all = memory_queries_fast(&ctx, &mem, &MemoryPrefix::default(), &more, &layers, &Hooks::none())?;
        for l in &layers {
            assert_eq!(q.rows[l].dims(), all[l].dims(), "{what}: layer {l}");
            let diff = (&q.rows[l] - &all[l])?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{what}: layer {l} differs by {diff}");
        }
        Ok(q.recomputed)
    };
    // Three edits: the doors are exact (checked inside) but not selective on the shipped model: the second edit's
    // latent entry beats the K-th best at one position of every memory sequence (measured 2026-12-06 on issue 14's
    // full4; on the model before, the three edits left some sequences unopened), so every sequence is recomputed.
    check(&stack, "a stack of three UniKE edits")?;
    // One edit reaches only a few of the 40 sequences (2-3 measured): the others come from the base.
    let mut one = PatchStack::new();
    one.push(stack.iter().next().map(|(_, p)| p.clone()).context("a patch")?);
    let recomputed = check(&one, "a stack of one UniKE edit")?;
    assert!(recomputed < mem.len() / 2, "one edit reached {recomputed} of {} memory sequences", mem.len());
    assert!(base.bytes() > 0);
    // The neuron door: a neuron that fires everywhere below the last edited layer reaches every sequence.
    let loud = {
        let p = stack.iter().next().map(|(_, p)| p.clone()).context("a patch")?;
        let mut neurons = p.neurons.clone();
        let low = neurons.get_mut(&(n - 2)).context("neurons at the first edited layer")?;
        low.b_k = (&low.b_k + 100.0)?;
        Patch { neurons, ..p }
    };
    let mut with_loud = one.clone();
    with_loud.push(loud);
    assert_eq!(check(&with_loud, "a neuron firing everywhere")?, mem.len());
    // The retrieval door: an entry equal to one memory position's own state is retrieved there (and only a few
    // sequences share that state).
    let first = prefix.chunks(&f.model, &mem, n - 2)?[0].clone();
    let x = first.x.narrow(0, 0, 1)?.narrow(1, first.lens[0] - 1, 1)?.squeeze(0)?;
    let request = EditRequest { question: "q".into(), image: None, image_path: None, target: "t".into(), seed: 0 };
    let mut entry = Patch::new(Provenance::new("test", &(), &request)?, BTreeMap::new());
    entry.latent = layers.iter().map(|&l| (l, (x.clone(), x.clone()))).collect();
    entry.retrieval = stack.iter().next().and_then(|(_, p)| p.retrieval.clone());
    let mut with_entry = one.clone();
    with_entry.push(entry);
    assert!(check(&with_entry, "an entry some position retrieves")? > recomputed);
    // Kinds the doors do not cover take the full path.
    let mut with_delta = stack.clone();
    let mut p = stack.iter().next().map(|(_, p)| p.clone()).context("a patch")?;
    p.mlp_deltas = BTreeMap::from([(
        n - 1,
        unike_core::hooks::DownProjDelta {
            parts: unike_core::model::FfnParts::Gated {
                gate: candle_core::Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu)?,
                up: candle_core::Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu)?,
                down: candle_core::Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu)?,
                act: unike_core::model::config::Activation::Relu,
            },
            delta: candle_core::Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu)?,
        },
    )]);
    with_delta.push(p);
    let ctx = EditContext { model: &f.model, processor: &f.processor, stack: &with_delta };
    assert!(base.queries(&ctx, &knowledge, settings, &mem, &prefix, &[], &layers)?.is_none());
    Ok(())
}

/// Every UniKE variant built from a model directory shares one prepared knowledge, as long as one of them or a patch
/// of one holds it: a cache of built methods that drops variants frees their caches, and many variants cost one copy.
#[test]
fn unike_variants_built_from_a_directory_share_their_knowledge() -> Result<()> {
    use std::sync::Arc;
    use unike_core::edit::unike::{UniKe, UniKeParams};
    let f = fixture()?;
    let dir = std::env::temp_dir().join(format!("unike-shared-{}", std::process::id()));
    unike_artifacts_in(&f, Some(&dir))?;
    let build = |variant: &str| -> Result<UniKe> {
        let mut params = UniKeParams::default();
        params.apply_variant(variant)?;
        Ok(UniKe::from_dir(&format!("unike:{variant}"), params, &f.model, &dir, memory(&f, 8)?, f.eos[0])?)
    };
    let knowledge = |m: &UniKe| m.patch_deps().knowledge.context("knowledge");
    let (a, b) = (build("k=3")?, build("alpha=0.5/zeta-none")?);
    assert!(Arc::ptr_eq(&knowledge(&a)?, &knowledge(&b)?), "two variants, two copies");
    // A patch of a dropped variant keeps the knowledge alive, and the next variant shares it.
    let s = eval_split(&f.world, Split::FactsSeen, 10).into_iter().find(|s| s.image.is_some()).context("a fact")?;
    let request = EditRequest {
        question: s.question.clone(),
        image: pixels(&f, &s)?,
        image_path: None,
        target: "the stone lions".into(),
        seed: 0,
    };
    let stack = PatchStack::new();
    let patch = a.edit(&EditContext { model: &f.model, processor: &f.processor, stack: &stack }, &request)?;
    drop((a, b));
    let held = patch.retrieval.as_ref().map(|r| r.knowledge.clone()).context("the patch's retrieval")?;
    assert!(Arc::ptr_eq(&held, &knowledge(&build("k=8")?)?));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn unike_knowledge_share_is_captured_as_the_mixing_weight() -> Result<()> {
    use unike_core::edit::unike::{UniKe, UniKeParams};
    use unike_core::hooks::{Capture, CapturePoint};
    let f = fixture()?;
    let artifacts = unike_artifacts(&f)?;
    let s = eval_split(&f.world, Split::FactsSeen, 10).into_iter().find(|s| s.image.is_some()).context("a fact")?;
    let target = if s.answer == "the iron otters" { "the stone lions" } else { "the iron otters" };
    let px = pixels(&f, &s)?;
    let request = EditRequest {
        question: s.question.clone(),
        image: px.clone(),
        image_path: None,
        target: target.into(),
        seed: 3,
    };
    let seq = EditSequence::new(&f.processor, &s.question, px.as_ref(), target, f.eos[0])?;
    let n = f.model.text().num_layers();
    for (variant, fixed) in [("only-latent/alpha=0.3", Some(0.3f32)), ("only-latent/adaptive", None)] {
        let mut params = UniKeParams::default();
        params.apply_variant(variant)?;
        let method = UniKe::new(variant, params, &f.model, &artifacts, vec![], f.eos[0])?;
        let mut stack = PatchStack::new();
        let patch = method.edit(&EditContext { model: &f.model, processor: &f.processor, stack: &stack }, &request)?;
        stack.push(patch.clone());
        let hooks = stack.hooks()?;
        // The inspector's retrieval: at the top edited layer, best first, the edit's own entry on top for its own
        // question; the memory's indices name memory entries.
        let got = unike_core::edit::inspect::latent_retrieval(&f.model, &seq, &hooks, &patch, 5)?;
        assert_eq!(got.len(), 5, "{got:?}");
        assert!(got.windows(2).all(|w| w[0].score >= w[1].score), "{got:?}");
        assert!(got.iter().all(|r| r.layer == n - 1 && (r.own || r.index < artifacts.memory.len())), "{got:?}");
        assert!(got[0].own && got[0].score > 0.9, "{variant}: the edit's own question retrieves it first: {got:?}");
        let inputs = seq.inputs(&f.model)?;
        let mut cap = Capture::at_layers(0..n, CapturePoint::KnowledgeShare);
        let traced = f.model.forward_inputs(&inputs, None, &hooks, &mut cap)?;
        let plain = f.model.forward_inputs(&inputs, None, &hooks, &mut Capture::none())?;
        let diff = (traced - plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "{variant}: tracing the share changed the output");
        let layers: Vec<usize> = cap.captured().keys().map(|(l, _)| *l).collect();
        assert_eq!(layers, vec![n - 2, n - 1], "{variant}: the share of the edited layers only");
        for l in layers {
            let share = cap.get(l, CapturePoint::KnowledgeShare).context("share")?;
            assert_eq!(share.dims(), [1, seq.ids.len(), 1]);
            let v = share.flatten_all()?.to_vec1::<f32>()?;
            match fixed {
                // Fixed α = 0.3 is the knowledge's share everywhere (the paper's meaning: larger = more knowledge).
                Some(x) => assert!(v.iter().all(|s| (s - x).abs() < 1e-6), "{variant}: {v:?}"),
                // Adaptive α: a share in [0, 1] that depends on the position's relevance.
                None => {
                    assert!(v.iter().all(|s| (0.0..=1.0).contains(s)), "{v:?}");
                    let (lo, hi) = v.iter().fold((1f32, 0f32), |(a, b), s| (a.min(*s), b.max(*s)));
                    assert!(hi - lo > 0.05, "adaptive shares do not vary: {v:?}");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn t_patcher_adds_a_neuron_per_mistake_and_its_relative_term_acts() -> Result<()> {
    use unike_core::edit::neurons::memory_queries;
    use unike_core::hooks::{Capture, CapturePoint};
    let f = fixture()?;
    let none = Hooks::none();
    // A counterfactual team (three words, "the <adjective> <animals>") for a character whose team the model knows.
    let facts = eval_split(&f.world, Split::FactsSeen, 200);
    let s = facts
        .iter()
        .find(|s| s.image.is_some() && s.answer.starts_with("the ") && s.answer.split(' ').count() == 3)
        .context("a team fact")?;
    let target = facts
        .iter()
        .map(|o| o.answer.as_str())
        .find(|a| {
            a.starts_with("the ") && a.split(' ').count() == 3 && a.split(' ').skip(1).all(|w| !s.answer.contains(w))
        })
        .context("another team")?;
    let px = pixels(&f, s)?;
    let request = EditRequest {
        question: s.question.clone(),
        image: px.clone(),
        image_path: None,
        target: target.into(),
        seed: 0,
    };
    let seq = EditSequence::new(&f.processor, &s.question, px.as_ref(), target, f.eos[0])?;
    let wrong: Vec<usize> = seq
        .argmax(&f.model, &none)?
        .iter()
        .zip(seq.targets())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect();
    let mistakes = wrong.len();
    assert!(mistakes >= 2, "{mistakes} mistaken tokens");
    // The memory holds hard negatives: the same question about other characters (their own teams).
    let mut mem = memory(&f, 32)?;
    for o in facts.iter().filter(|o| o.question == s.question && o.image.is_some() && o.answer != s.answer).take(24) {
        mem.push(EditSequence::new(&f.processor, &o.question, pixels(&f, o)?.as_ref(), &o.answer, f.eos[0])?);
    }
    let layer = f.model.text().num_layers() - 1;
    let stack = PatchStack::new();
    let ctx = EditContext { model: &f.model, processor: &f.processor, stack: &stack };
    let queries = memory_queries(&ctx, &mem, &[layer], &none)?.remove(&layer).context("memory queries")?;
    let mut cap = Capture::at_layers([layer], CapturePoint::FfnInput);
    f.model.forward_inputs(&seq.inputs(&f.model)?, None, &none, &mut cap)?;
    let edit_q = cap.get(layer, CapturePoint::FfnInput).context("ffn input")?.squeeze(0)?;
    let edit_q = edit_q.narrow(0, seq.prompt_len - 1, seq.targets().len())?;
    // Per neuron, its pre-activation at its own mistake minus its highest on the memory; the smallest.
    let gap = |relative: Option<f32>| -> Result<(usize, f32)> {
        let mut params = TPatcherParams::default();
        params.0.relative_margin = relative;
        let method = TPatcher::new(params, mem.clone(), f.eos[0]);
        let patch = method.edit(&ctx, &request)?;
        let n = patch.neurons.get(&layer).context("neurons")?;
        let pre =
            |q: &candle_core::Tensor| -> Result<candle_core::Tensor> { Ok(q.matmul(&n.w_k)?.broadcast_add(&n.b_k)?) };
        let at_edit = pre(&edit_q)?.to_vec2::<f32>()?;
        let at_mem = pre(&queries)?.max(0)?.to_vec1::<f32>()?;
        let g = (0..at_mem.len()).map(|j| at_edit[wrong[j]][j] - at_mem[j]).fold(f32::INFINITY, f32::min);
        Ok((at_mem.len(), g))
    };
    let (count, without) = gap(None)?;
    assert_eq!(count, mistakes.min(5), "one neuron per mistaken token");
    // T-Patcher's margin (3) already holds through the absolute terms here; a relative margin beyond what they give
    // must widen the gap to it.
    let (_, with3) = gap(Some(3.0))?;
    let want = without.max(3.0) + 2.0;
    let (_, with) = gap(Some(want))?;
    eprintln!("{mistakes} mistakes; smallest own-mistake gap: none {without:.3}, margin 3 {with3:.3}, margin {want:.3} {with:.3}");
    assert!(with3 >= 3.0 - 1e-3, "margin 3 does not hold: {with3}");
    assert!(with >= want - 0.05, "the relative term did not widen the gap to {want}: {with}");
    Ok(())
}
