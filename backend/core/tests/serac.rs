//! SERAC routes per input (issue 15 §5): out of scope the base model answers with exactly its own logits; in scope
//! the counterfactual model of the right stored edit answers; a batch mixing both is scored as each input alone.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use unike_core::edit::serac::Serac;
use unike_core::edit::{EditContext, EditMethod, EditRequest, EditSequence, Patch, PatchStack};
use unike_core::hooks::Hooks;
use unike_core::model::{Llava, LlavaCheckpoint, Pixels, Processor, VisionLanguageModel};
use unike_core::world::samples::{eval_split, Sample, Split};
use unike_core::world::World;

struct Fixture {
    model: Llava,
    processor: Processor,
    eos: u32,
    serac: Serac,
}

fn fixture() -> Result<Fixture> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
    let ckpt = LlavaCheckpoint::open(&dir)?;
    let model = ckpt.load_model(None, &Device::Cpu)?;
    let eos = ckpt.eos_token_ids()?[0];
    let serac = Serac::load(&dir.join("serac"), &model, eos)?;
    Ok(Fixture { model, processor: ckpt.processor()?, eos, serac })
}

fn pixels(f: &Fixture, s: &Sample) -> Result<Option<Pixels>> {
    Ok(match &s.image {
        Some(img) => Some(Pixels::fixed(f.processor.image_processor().preprocess(img, &Device::Cpu)?.unsqueeze(0)?)),
        None => None,
    })
}

fn seq(f: &Fixture, s: &Sample, answer: &str) -> Result<EditSequence> {
    Ok(EditSequence::new(&f.processor, &s.question, pixels(f, s)?.as_ref(), answer, f.eos)?)
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

#[test]
fn serac_routes_each_input_to_its_edit_or_to_the_base_model_exactly() -> Result<()> {
    let f = fixture()?;
    let world = World::generate(0);
    // Two counterfactual edits (another character's answer to the same question).
    let pool: Vec<Sample> =
        eval_split(&world, Split::FactsSeen, 400).into_iter().filter(|s| s.image.is_some()).collect();
    let edits: Vec<(Sample, String)> = pool
        .iter()
        .filter_map(|s| {
            let o = pool.iter().find(|o| o.question == s.question && o.answer != s.answer)?;
            Some((s.clone(), o.answer.clone()))
        })
        .take(2)
        .collect();
    assert_eq!(edits.len(), 2);
    let mut stack = PatchStack::new();
    for (s, target) in &edits {
        let request = EditRequest {
            question: s.question.clone(),
            image: pixels(&f, s)?,
            image_path: None,
            target: target.clone(),
            seed: 0,
        };
        let patch = f.serac.edit(&EditContext { model: &f.model, processor: &f.processor, stack: &stack }, &request)?;
        stack.push(patch);
    }
    let hooks = stack.hooks()?;
    assert_eq!(hooks.routers().len(), 1);
    let route = |s: &EditSequence| -> Result<Vec<Option<usize>>> {
        Ok(f.model.route(&hooks, &s.inputs(&f.model)?, &[s.prompt_len - 1])?.remove(0))
    };

    // Out of scope: an unrelated text question and a scene caption. No route, and the logits are the base model's,
    // to the bit.
    let unrelated: Vec<Sample> = eval_split(&world, Split::TextFacts, 0)
        .into_iter()
        .take(2)
        .chain(eval_split(&world, Split::Captions, 20).into_iter().filter(|s| s.image.is_some()).take(2))
        .collect();
    assert_eq!(unrelated.len(), 4);
    for s in &unrelated {
        let q = seq(&f, s, &s.answer)?;
        assert_eq!(route(&q)?, vec![None], "{:?} is not about either edit", s.question);
        let d = max_diff(&q.target_logits(&f.model, &hooks)?, &q.target_logits(&f.model, &Hooks::none())?)?;
        assert_eq!(d, 0.0, "out of scope, {:?} differs from the base model by {d}", s.question);
    }

    // In scope: each edit's question goes to its own counterfactual model (the base model with that edit in its
    // context), which answers with the target; the logits are exactly that model's and differ from the base's.
    for (i, (s, target)) in edits.iter().enumerate() {
        let q = seq(&f, s, target)?;
        assert_eq!(route(&q)?, vec![Some(i)], "edit {i}");
        let routed = q.target_logits(&f.model, &hooks)?;
        let counterfactual = q.target_logits(&f.model, &hooks.resolve(&[Some(i)])?)?;
        assert_eq!(max_diff(&routed, &counterfactual)?, 0.0);
        assert!(max_diff(&routed, &q.target_logits(&f.model, &Hooks::none())?)? > 1.0);
        let said = q.greedy(&f.model, &f.processor, &hooks, &[f.eos])?;
        assert_eq!(&said, target, "edit {i} answered through generation");
    }

    // A batch mixing in-scope and out-of-scope inputs predicts what each input alone does.
    let mut all: Vec<EditSequence> = edits.iter().map(|(s, t)| seq(&f, s, t)).collect::<Result<_>>()?;
    all.extend(unrelated.iter().map(|s| seq(&f, s, &s.answer)).collect::<Result<Vec<_>>>()?);
    all.swap(1, 4);
    let asks: Vec<(&EditSequence, usize)> = all.iter().map(|s| (s, 10)).collect();
    let batched = EditSequence::predict_batch(&f.model, &asks, &hooks, 4)?;
    for (s, p) in all.iter().zip(&batched) {
        let alone = EditSequence::predict_batch(&f.model, &[(s, 10)], &hooks, 1)?.remove(0);
        assert_eq!(p.argmax, alone.argmax);
        assert_eq!(p.top, alone.top);
    }
    // A saved edit round-trips; one stored by the former per-position reader is reported as outdated (its holder
    // makes it again from its provenance, which still reads).
    let dir = std::env::temp_dir().join(format!("unike-serac-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (_, first) = stack.iter().next().ok_or_else(|| anyhow::anyhow!("empty stack"))?;
    first.save(&dir.join("new"))?;
    let deps = f.serac.patch_deps();
    let back = Patch::load_with(&dir.join("new"), &f.model, &deps)?;
    let q = seq(&f, &edits[0].0, &edits[0].1)?;
    assert_eq!(
        max_diff(&q.target_logits(&f.model, &back.hooks()?)?, &q.target_logits(&f.model, &first.hooks()?)?)?,
        0.0
    );
    let old: std::collections::HashMap<String, Tensor> = [
        ("serac.0.states".to_string(), Tensor::zeros((3, 4), candle_core::DType::F32, &Device::Cpu)?),
        ("serac.0.next".to_string(), Tensor::zeros((3, 4), candle_core::DType::F32, &Device::Cpu)?),
        ("serac.0.key".to_string(), Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu)?),
    ]
    .into_iter()
    .collect();
    candle_core::safetensors::save(&old, dir.join("old.safetensors"))?;
    let json = std::fs::read_to_string(dir.join("new.json"))?;
    std::fs::write(dir.join("old.json"), json)?;
    match Patch::load_with(&dir.join("old"), &f.model, &deps) {
        Err(unike_core::Error::Outdated { msg, .. }) => assert!(msg.contains("make the edit again"), "{msg}"),
        other => panic!("an old SERAC patch loaded as {:?}", other.map(|p| p.provenance)),
    }
    assert_eq!(Patch::provenance_of(&dir.join("old"))?.target, edits[0].1);
    let _ = std::fs::remove_dir_all(&dir);

    // A plain forward pass refuses hooks that decide per input instead of skipping the decision.
    let e = f.model.forward_inputs(&all[0].inputs(&f.model)?, None, &hooks, &mut Default::default());
    assert!(e.err().map(|e| e.to_string()).unwrap_or_default().contains("per input"));
    Ok(())
}
