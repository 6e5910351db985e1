//! WISE (issue 19) on the shipped default model: after an edit its question routes to the side memory and answers
//! the target; unrelated questions route to the main memory and keep the unedited logits to the bit; the side
//! memory stays within `W₀ ± norm_constraint`; the edit's record sets its threshold; edits past `save_freq` open a
//! new shard; undo and the saved patch give the same routes.

use std::path::PathBuf;

use anyhow::{anyhow, ensure, Result};
use candle_core::{Device, Tensor};
use unike_core::edit::wise::{Wise, WiseParams};
use unike_core::edit::{EditContext, EditMethod, EditRequest, EditSequence, Patch, PatchStack};
use unike_core::hooks::Hooks;
use unike_core::model::{Llava, LlavaCheckpoint, Pixels, Processor, VisionLanguageModel};
use unike_core::world::samples::{eval_split, Sample, Split};
use unike_core::world::World;

struct Fixture {
    model: Llava,
    processor: Processor,
    eos: u32,
}

fn fixture() -> Result<Fixture> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
    let ckpt = LlavaCheckpoint::open(&dir)?;
    Ok(Fixture {
        model: ckpt.load_model(None, &Device::Cpu)?,
        processor: ckpt.processor()?,
        eos: ckpt.eos_token_ids()?[0],
    })
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

#[test]
fn wise_routes_edits_to_the_side_memory_and_the_rest_to_the_main_one() -> Result<()> {
    let f = fixture()?;
    let world = World::generate(0);
    let pool: Vec<Sample> =
        eval_split(&world, Split::FactsSeen, 400).into_iter().filter(|s| s.image.is_some()).collect();
    // Counterfactual edits: another character's answer to the same question.
    let edits: Vec<(Sample, String)> = pool
        .iter()
        .filter_map(|s| {
            let o = pool.iter().find(|o| o.question == s.question && o.answer != s.answer)?;
            Some((s.clone(), o.answer.clone()))
        })
        .take(3)
        .collect();
    ensure!(edits.len() == 3);
    // The memory of unrelated inputs: text questions of the world.
    let text = eval_split(&world, Split::TextFacts, 40);
    let memory: Vec<EditSequence> = text.iter().take(8).map(|s| seq(&f, s, &s.answer)).collect::<Result<_>>()?;
    let params = WiseParams { save_freq: 2, ..WiseParams::default() };
    let wise = Wise::new(params.clone(), &f.model, memory, f.eos)?;
    let request = |s: &Sample, t: &str| -> Result<EditRequest> {
        Ok(EditRequest {
            question: s.question.clone(),
            image: pixels(&f, s)?,
            image_path: None,
            target: t.into(),
            seed: 0,
        })
    };
    let mut stack = PatchStack::new();
    let mut ids = Vec::new();
    for (s, t) in &edits {
        let p = wise.edit(&EditContext { model: &f.model, processor: &f.processor, stack: &stack }, &request(s, t)?)?;
        let e = p.wise.as_ref().ok_or_else(|| anyhow!("no WISE entry"))?;
        let bound = e.delta.abs()?.max_all()?.to_scalar::<f32>()?;
        eprintln!("edit {}: shard {}, record {:.3}, largest change {bound:.3}", ids.len(), e.shard, e.act);
        ensure!(bound <= params.norm_constraint as f32 + 1e-5, "the side memory left W0 ± {}", params.norm_constraint);
        ensure!(e.shard == ids.len() / params.save_freq, "edit {} in shard {}", ids.len(), e.shard);
        ids.push(stack.push(p));
    }
    let hooks = stack.hooks()?;
    ensure!(hooks.routers().len() == 1, "one router for the layer");
    let route = |h: &Hooks, s: &EditSequence| -> Result<Option<usize>> {
        Ok(f.model.route(h, &s.inputs(&f.model)?, &[s.prompt_len - 1])?.remove(0).remove(0))
    };
    // The edits route to a side memory and answer their targets.
    for (s, t) in &edits {
        let e = seq(&f, s, t)?;
        ensure!(route(&hooks, &e)?.is_some(), "the edit {:?} went to the main memory", s.question);
        let got = e.argmax(&f.model, &hooks)?;
        ensure!(got == e.targets(), "the edit {:?} does not answer {t:?}", s.question);
    }
    // Unrelated questions go to the main memory with exactly its logits.
    let mut kept = 0;
    for s in text.iter().skip(8).take(10) {
        let u = seq(&f, s, &s.answer)?;
        if route(&hooks, &u)?.is_none() {
            let d = (u.target_logits(&f.model, &hooks)? - u.target_logits(&f.model, &Hooks::none())?)?;
            ensure!(d.abs()?.max_all()?.to_scalar::<f32>()? == 0.0, "a main-memory input's logits changed");
            kept += 1;
        }
    }
    eprintln!("unrelated text questions kept in the main memory: {kept}/10");
    ensure!(kept >= 8, "only {kept} of 10 unrelated questions stayed in the main memory");
    // Undo of the last edit (the second shard's only one): its question no longer routes to its shard, the first
    // two still answer; the saved patches give the same routes.
    let last = seq(&f, &edits[2].0, &edits[2].1)?;
    stack.remove(ids[2])?;
    let after = stack.hooks()?;
    ensure!(last.argmax(&f.model, &after)? != last.targets(), "undo left the third edit in place");
    let dir = std::env::temp_dir().join(format!("unike-wise-{}", std::process::id()));
    let saved = stack.save(&dir)?;
    let mut again = PatchStack::new();
    for base in &saved {
        again.push(Patch::load(base, &f.model)?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    for (s, t) in edits.iter().take(2) {
        let e = seq(&f, s, t)?;
        ensure!(route(&again.hooks()?, &e)? == route(&after, &e)?, "the loaded stack routes differently");
        let d: Tensor = (e.target_logits(&f.model, &again.hooks()?)? - e.target_logits(&f.model, &after)?)?;
        ensure!(d.abs()?.max_all()?.to_scalar::<f32>()? == 0.0);
    }
    Ok(())
}
