//! The harness on the shipped default model with `none` (the unedited model): its scores are the unedited model's,
//! its locality is 100, a failed one-token edit scores 0, and the portability base equals its portability.

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::harness::{run, run_detailed, Evaluator, Mode, PreparedCase};
use crate::data::{EditCase, Portability, Task};
use crate::edit::none::NoEdit;
use crate::edit::EditSequence;
use crate::error::{Error, Result};
use crate::hooks::Hooks;
use crate::model::{Llava, LlavaCheckpoint as Checkpoint, Processor};
use crate::world::{Pool, World};
use unike_shared::MetricConvention;

struct Fixture {
    model: Llava,
    processor: Processor,
    eos: Vec<u32>,
    dir: PathBuf,
}

fn fixture(tag: &str) -> Result<Fixture> {
    let ckpt = Checkpoint::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default"))?;
    let dir = std::env::temp_dir().join(format!("unike-eval-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(Fixture {
        model: ckpt.load_model(None, &Device::Cpu)?,
        processor: ckpt.processor()?,
        eos: ckpt.eos_token_ids()?,
        dir,
    })
}

/// A world entity's rendering saved as a PNG.
fn image(f: &Fixture, world: &World, e: usize, index: u64) -> Result<PathBuf> {
    let path = f.dir.join(format!("e{e}-{index}.png"));
    world.render_entity(e, Pool::Eval, index).save(&path).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(path)
}

/// Case `e`: edit the name of entity `e` to `target`; locality on other entities; portability asking the name.
fn case(f: &Fixture, world: &World, e: usize, target: &str) -> Result<EditCase> {
    let name = |i: usize| world.entities[i].name.clone();
    let ask = "what is the name of this character?";
    Ok(EditCase {
        task: Task::Vqa,
        prompt: ask.into(),
        target: target.into(),
        pre_edit: Some(name(e)),
        image: image(f, world, e, 0)?,
        rephrase_prompt: "who is this character?".into(),
        rephrase_image: image(f, world, e, 1)?,
        loc_question: format!("who is {}?", name(e + 20)),
        loc_answer: name(e + 20),
        m_loc_image: image(f, world, e + 10, 0)?,
        m_loc_question: ask.into(),
        m_loc_answer: name(e + 10),
        portability: vec![
            Portability { hop: "1-hop".into(), question: ask.into(), answer: name(e) },
            Portability { hop: "1-hop".into(), question: "who is this?".into(), answer: target.into() },
        ],
    })
}

/// The unedited model's mean token accuracy over the answer tokens of `(question, image, answer)`, in percent.
fn unedited(f: &Fixture, probes: &[(&str, &Path, &str)]) -> Result<f64> {
    let mut sum = 0.0;
    for (q, img, a) in probes {
        let px = crate::model::Pixels::fixed(f.processor.image_processor().load_file(img, &Device::Cpu)?.unsqueeze(0)?);
        let seq = EditSequence::new(&f.processor, q, Some(&px), a, f.eos[0])?;
        let top = seq.argmax(&f.model, &Hooks::none())?;
        let answer = seq.answer();
        sum += answer.iter().zip(&top).filter(|(a, b)| a == b).count() as f64 / answer.len() as f64;
    }
    Ok(sum / probes.len() as f64 * 100.0)
}

#[test]
fn none_scores_as_the_unedited_model_with_full_locality() -> Result<()> {
    let f = fixture("none")?;
    let world = World::generate(0);
    let cases: Vec<EditCase> =
        (0..3).map(|e| case(&f, &world, e, &world.entities[e + 5].name)).collect::<Result<_>>()?;
    let mut ev = Evaluator::new(&f.model, &f.processor, f.eos.clone());
    let prepared: Vec<PreparedCase> =
        cases.iter().enumerate().map(|(i, c)| ev.prepare(c, i as u64)).collect::<Result<_>>()?;
    let r = run(&ev, &NoEdit, &prepared, Mode::OneStep, "vqa", 2, &mut |_, _| true)?;
    assert_eq!((r.method.as_str(), r.convention), ("none", MetricConvention::V2));
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    let m = &r.metrics;
    let rel: Vec<(&str, &Path, &str)> =
        cases.iter().map(|c| (c.prompt.as_str(), c.image.as_path(), c.target.as_str())).collect();
    assert!(close(m.reliability, unedited(&f, &rel)?), "{m:?}");
    let m_gen: Vec<(&str, &Path, &str)> =
        cases.iter().map(|c| (c.prompt.as_str(), c.rephrase_image.as_path(), c.target.as_str())).collect();
    assert!(close(m.m_generality, unedited(&f, &m_gen)?), "{m:?}");
    // Nothing changed: locality is 100 by every computation.
    assert_eq!((m.t_locality, m.m_locality, m.m_locality_top1), (100.0, 100.0, Some(100.0)), "{m:?}");
    assert_eq!((r.exact_match.t_locality, r.exact_match.m_locality), (100.0, 100.0));
    assert_eq!(r.exact_match.m_locality_top1, None);
    // The old convention v1 beside it: locality 100 too, portability its own base.
    let v1 = r.metrics_v1.as_ref().ok_or_else(|| Error::Invalid("no v1 figures".into()))?;
    assert_eq!((v1.t_locality, v1.m_locality, v1.m_locality_top1), (100.0, 100.0, None), "{v1:?}");
    assert!(v1.portability.is_some() && v1.portability == v1.portability_base, "{v1:?}");
    // Portability of the unedited model is its own base (VLKEB's), for both conventions.
    assert!(m.portability.is_some() && m.portability == m.portability_base, "{m:?}");
    assert_eq!(r.exact_match.portability, r.exact_match.portability_base);
    let port: Vec<(&str, &Path, &str)> = cases
        .iter()
        .flat_map(|c| c.portability.iter().map(|p| (p.question.as_str(), c.image.as_path(), p.answer.as_str())))
        .collect();
    assert!(close(m.portability_base.unwrap_or(-1.0), unedited(&f, &port)?), "{m:?}");
    // Portability per number of hops: the cases' questions are all 1-hop, so it is the whole portability.
    assert_eq!(r.portability_hops.len(), 1, "{:?}", r.portability_hops);
    let hop = &r.portability_hops[0];
    assert_eq!((hop.hop.as_str(), hop.questions), ("1-hop", 6));
    assert!(close(hop.token, m.portability.unwrap_or(-1.0)) && close(hop.token, hop.token_base), "{hop:?}");
    // Sequential editing of nothing is the same.
    let s = run(&ev, &NoEdit, &prepared, Mode::Sequential(3), "vqa", 1, &mut |_, _| true)?;
    assert_eq!((s.metrics, s.exact_match), (r.metrics, r.exact_match));
    // VLKEB's gap protocol: with a gap of 1, the stream of three edits scores the first two cases (each after one
    // more edit), as one-step scoring of those two does when nothing is edited; a gap of 3 leaves nothing to score.
    let mut seen = Vec::new();
    let g = run(&ev, &NoEdit, &prepared, Mode::SequentialGap(1), "vqa", 2, &mut |done, total| {
        seen.push((done, total));
        true
    })?;
    let two = run(&ev, &NoEdit, &prepared[..2], Mode::OneStep, "vqa", 1, &mut |_, _| true)?;
    assert_eq!((g.mode.as_str(), g.k, g.n), ("sequential-gap", 1, 2));
    assert_eq!((g.metrics, g.exact_match), (two.metrics, two.exact_match));
    assert_eq!(seen, vec![(1, 2), (2, 2)]);
    let none = run(&ev, &NoEdit, &prepared, Mode::SequentialGap(3), "vqa", 1, &mut |_, _| true);
    assert!(none.is_err_and(|e| e.to_string().contains("more than 3 cases")));
    let _ = std::fs::remove_dir_all(&f.dir);
    Ok(())
}

/// A one-token target the unedited model does not answer: `none` is an edit that fails, so its reliability token
/// accuracy is 0 (v1, which scored the end of sequence too, gave 50 when the model then ends the answer).
#[test]
fn a_failed_one_token_edit_scores_zero() -> Result<()> {
    let f = fixture("one-token")?;
    let world = World::generate(0);
    let mut ev = Evaluator::new(&f.model, &f.processor, f.eos.clone());
    let first = case(&f, &world, 0, "x")?;
    let px = ev.pixels(&first.image)?;
    let target = ["red", "blue", "green", "yes", "no", "cat", "a"]
        .into_iter()
        .find(|w| {
            EditSequence::new(&f.processor, &first.prompt, Some(&px), w, f.eos[0])
                .and_then(|s| Ok((s.answer().len() == 1, s.argmax(&f.model, &Hooks::none())?[0] != s.answer()[0])))
                .is_ok_and(|(one, wrong)| one && wrong)
        })
        .ok_or_else(|| Error::Invalid("no one-token wrong target".into()))?;
    let prepared = vec![ev.prepare(&case(&f, &world, 0, target)?, 0)?];
    let (r, per_case) = run_detailed(&ev, &NoEdit, &prepared, Mode::OneStep, "vqa", 1, &mut |_, _| true)?;
    assert_eq!((r.metrics.reliability, r.exact_match.reliability), (0.0, 0.0), "{r:?}");
    assert_eq!(per_case[0].token[0], Some(0.0));
    // The case's answer as reliability reads it: the model's own top-1 token at the target's position, not the
    // target, the same before and after an edit that changes nothing.
    let own = f.processor.decode(&[seq_argmax0(&f, &first.prompt, &px, target)?])?.trim().to_string();
    assert_eq!(per_case[0].answer_before.as_deref(), Some(own.as_str()), "{:?}", per_case[0]);
    assert_eq!(per_case[0].answer_after, per_case[0].answer_before);
    assert_ne!(per_case[0].answer_after.as_deref(), Some(target));
    // The old convention v1, kept beside it, scores the end of sequence too: 0 or 50 on a one-token answer, by
    // whether the model's argmax after the (wrong-to-it) answer token is the end of sequence.
    let seq = EditSequence::new(&f.processor, &first.prompt, Some(&px), target, f.eos[0])?;
    let eos_right = seq.argmax(&f.model, &Hooks::none())?[1] == f.eos[0];
    let v1 = r.metrics_v1.as_ref().map(|m| m.reliability);
    assert_eq!(v1, Some(if eos_right { 50.0 } else { 0.0 }), "{r:?}");
    let _ = std::fs::remove_dir_all(&f.dir);
    Ok(())
}

/// An edit method that records the size of the stack each edit is made on.
struct Recorder(std::sync::Mutex<Vec<usize>>);

impl crate::edit::EditMethod for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    fn edit(
        &self,
        ctx: &crate::edit::EditContext<'_>,
        request: &crate::edit::EditRequest,
    ) -> Result<crate::edit::Patch> {
        self.0.lock().map_err(|_| Error::Invalid("poisoned".into()))?.push(ctx.stack.len());
        NoEdit.edit(ctx, request)
    }
}

/// The gap protocol is one stream, never reset (each edit on the stack of all earlier ones), where sequential
/// editing starts every K edits on a fresh stack.
#[test]
fn the_gap_protocol_is_one_stream_of_edits() -> Result<()> {
    let f = fixture("gap")?;
    let world = World::generate(0);
    let mut ev = Evaluator::new(&f.model, &f.processor, f.eos.clone());
    let prepared: Vec<PreparedCase> = (0..5)
        .map(|e| ev.prepare(&case(&f, &world, e, &world.entities[e + 5].name)?, e as u64))
        .collect::<Result<_>>()?;
    let stacks = |mode: Mode| -> Result<Vec<usize>> {
        let rec = Recorder(std::sync::Mutex::new(Vec::new()));
        run(&ev, &rec, &prepared, mode, "vqa", 1, &mut |_, _| true)?;
        rec.0.into_inner().map_err(|_| Error::Invalid("poisoned".into()))
    };
    assert_eq!(stacks(Mode::SequentialGap(2))?, vec![0, 1, 2, 3, 4]);
    assert_eq!(stacks(Mode::Sequential(2))?, vec![0, 1, 0, 1, 0]);
    let _ = std::fs::remove_dir_all(&f.dir);
    Ok(())
}

/// A run cut into shards and assembled gives what one process gives, to the bit (edit times aside), in one-step and
/// sequential mode, whatever the cut; shards that leave a gap are refused.
#[test]
fn shards_assemble_into_the_one_process_result() -> Result<()> {
    use super::shard::{assemble, plan, run_shard};
    let f = fixture("shards")?;
    let world = World::generate(0);
    let mut ev = Evaluator::new(&f.model, &f.processor, f.eos.clone());
    let prepared: Vec<PreparedCase> = (0..5)
        .map(|e| ev.prepare(&case(&f, &world, e, &world.entities[e + 5].name)?, e as u64))
        .collect::<Result<_>>()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let method = crate::edit::registry::build(
        "ft",
        crate::edit::registry::MethodInputs {
            root: &root,
            model: "default",
            memory: vec![],
            demonstrations: vec![],
            eos: f.eos[0],
            backbone: &f.model,
            model_dir: &root.join("models/default"),
        },
    )?;
    let strip = |mut r: unike_shared::BenchResult| {
        r.timing = unike_shared::Timing { edit_ms_median: 0.0, edit_ms_p90: 0.0 };
        r
    };
    for (mode, shards) in [(Mode::OneStep, 3), (Mode::Sequential(2), 2), (Mode::Sequential(2), 9)] {
        let (whole, whole_cases) = run_detailed(&ev, method.as_ref(), &prepared, mode, "vqa", 1, &mut |_, _| true)?;
        let ranges = plan(prepared.len(), mode, shards);
        assert!(ranges.len() > 1, "{ranges:?}");
        let mut outcomes = Vec::new();
        for r in ranges.iter().rev() {
            let cases = &prepared[r.clone()];
            outcomes.push(run_shard(&ev, method.as_ref(), cases, r.start, mode, 1, &mut |_, _| true)?);
        }
        let (parts, parts_cases) = assemble(method.name(), "vqa", mode, prepared.len(), outcomes.clone())?;
        assert_eq!(strip(parts), strip(whole.clone()), "{mode:?} in {} shards", ranges.len());
        let tokens = |c: &[super::CaseScore]| c.iter().map(|c| c.token).collect::<Vec<_>>();
        assert_eq!(tokens(&parts_cases), tokens(&whole_cases));
        assert!(whole.metrics.reliability > 50.0, "FT edits take: {whole:?}");
        let last = outcomes.remove(0);
        assert!(assemble(method.name(), "vqa", mode, prepared.len(), outcomes.clone()).is_err(), "the last is missing");
        outcomes.insert(0, last);
        outcomes.pop();
        assert!(assemble(method.name(), "vqa", mode, prepared.len(), outcomes).is_err(), "the first is missing");
    }
    let _ = std::fs::remove_dir_all(&f.dir);
    Ok(())
}

/// The unedited model's top-1 id at the first answer position of `question` + `target`.
fn seq_argmax0(f: &Fixture, question: &str, px: &crate::model::Pixels, target: &str) -> Result<u32> {
    let s = EditSequence::new(&f.processor, question, Some(px), target, f.eos[0])?;
    Ok(s.argmax(&f.model, &Hooks::none())?[0])
}
