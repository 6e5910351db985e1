//! IKE as EasyEdit applies it to multimodal models, on the shipped default model and its world's training split:
//! retrieval follows the query, the prefix is exactly the demonstrations prepended to the prompt, the window bound
//! leaves out the least similar demonstrations, and the edit takes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use unike_core::data::{load_cases, split_train, EditCase, Task};
use unike_core::edit::ike::pool::embed_texts;
use unike_core::edit::ike::{prefix, DemoKind, Demonstration, Ike, IkeParams};
use unike_core::edit::{EditContext, EditMethod, EditRequest, EditSequence, PatchStack};
use unike_core::hooks::{Capture, Hooks};
use unike_core::model::{Llava, LlavaCheckpoint, Pixels, Processor, VisionLanguageModel};
use unike_core::world::World;

struct Fixture {
    model: Llava,
    processor: Processor,
    eos: u32,
    /// The training split's front (VQA) and evaluation cases of world 0, images in a temporary directory.
    train: Vec<EditCase>,
    eval: Vec<EditCase>,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture() -> Result<Fixture> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
    let ckpt = LlavaCheckpoint::open(&dir)?;
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let data = std::env::temp_dir().join(format!("unike-ike-test-{}-{n}", std::process::id()));
    unike_core::world::export::write(&World::generate(0), &data)?;
    let tmp = TempDir(data.clone());
    let train = split_train(load_cases(&data.join("vqa_train.json"), Task::Vqa, None)?).0;
    let eval = load_cases(&data.join("vqa_eval.json"), Task::Vqa, None)?;
    Ok(Fixture {
        model: ckpt.load_model(None, &Device::Cpu)?,
        processor: ckpt.processor()?,
        eos: *ckpt.eos_token_ids()?.first().context("eos")?,
        train,
        eval,
        _dir: tmp,
    })
}

fn request(f: &Fixture, c: &EditCase) -> Result<EditRequest> {
    Ok(EditRequest {
        question: c.prompt.clone(),
        image: Some(pixels(f, &c.image)?),
        image_path: None,
        target: c.target.clone(),
        seed: 0,
    })
}

fn pixels(f: &Fixture, path: &Path) -> Result<Pixels> {
    Ok(Pixels::fixed(f.processor.image_processor().load_file(path, &Device::Cpu)?.unsqueeze(0)?))
}

fn ike(f: &Fixture, k: usize, pool: usize) -> Ike {
    Ike::new(IkeParams { with_image: true, k, pool }, f.train.clone(), &f.model)
}

#[test]
fn ike_retrieves_the_demonstrations_nearest_to_each_edit() -> Result<()> {
    let f = fixture()?;
    let method = ike(&f, 3, 200);
    let pool = method.pool(&f.model, &f.processor)?;
    assert_eq!(pool.len(), 600, "three demonstrations per case");
    // An edit that is a pool case's own edit retrieves that case's copy demonstration first, at similarity 1.
    let c = &f.train[17];
    let (demos, scores) = method.demonstrations(&f.model, &f.processor, &request(&f, c)?)?;
    assert_eq!(demos.len(), 4, "k retrieved, then the edit's own");
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "most similar first: {scores:?}");
    assert_eq!(demos[0].kind, DemoKind::Copy);
    assert_eq!(
        (demos[0].fact.question.as_str(), demos[0].fact.answer.as_str()),
        (c.prompt.as_str(), c.target.as_str())
    );
    assert!(scores[0] > 0.9999, "{scores:?}");
    // The edit's own copy demonstration comes last, next to the query.
    let last = demos.last().context("demos")?;
    assert_eq!((last.kind, last.then.question.as_str()), (DemoKind::Copy, c.prompt.as_str()));
    // Retrieval follows the query: edits of different relations retrieve different demonstrations, each closer to
    // its own edit than to the other's.
    let (a, b) = (&f.eval[0], f.eval.iter().find(|e| e.prompt != f.eval[0].prompt).context("another relation")?);
    let (da, _) = method.demonstrations(&f.model, &f.processor, &request(&f, a)?)?;
    let (db, _) = method.demonstrations(&f.model, &f.processor, &request(&f, b)?)?;
    let lines = |d: &[Demonstration]| d[..3].iter().map(|x| x.describe()).collect::<Vec<_>>();
    assert_ne!(lines(&da), lines(&db));
    let texts: Vec<String> = [&da[0], &db[0], &da[3], &db[3]].iter().map(|d| d.text(&f.processor)).collect::<Vec<_>>();
    let e = embed_texts(&f.model, &f.processor, &texts)?.to_vec2::<f32>()?;
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
    assert!(dot(&e[2], &e[0]) > dot(&e[2], &e[1]), "a's nearest demonstration is nearer to a than b's");
    assert!(dot(&e[3], &e[1]) > dot(&e[3], &e[0]), "b's nearest demonstration is nearer to b than a's");
    Ok(())
}

#[test]
fn ike_prefix_is_its_demonstrations_prepended_and_fits_the_window() -> Result<()> {
    let f = fixture()?;
    let method = ike(&f, 2, 100);
    let c = &f.eval[3];
    let req = request(&f, c)?;
    let (demos, _) = method.demonstrations(&f.model, &f.processor, &req)?;
    // The prefix under no hooks, then the query, equals one forward pass over the demonstrations' turns (each its
    // own <s> … </s>) followed by the query.
    let ctx = prefix::encode(&f.model, &f.processor, &demos, true, &Hooks::none())?;
    let (ids, shown) = prefix::prefix_ids(&f.processor, &demos, true, &Device::Cpu)?;
    let n_images = shown.as_ref().map_or(0, Pixels::count);
    let retains = demos.iter().filter(|d| d.kind == DemoKind::Retain).count();
    assert_eq!((ctx.len(), n_images), (ids.len(), 2 * demos.len() - retains), "a retain turn shows no image");
    let query = EditSequence::new(&f.processor, &c.rephrase_prompt, req.image.as_ref(), &c.target, f.eos)?;
    let mut hooks = Hooks::none();
    hooks.add_context(std::sync::Arc::new(ctx));
    let prefixed = f.model.forward_inputs(&query.inputs(&f.model)?, None, &hooks, &mut Capture::none())?;
    let mut all_pixels = Vec::new();
    for d in &demos {
        for t in [&d.fact, &d.then] {
            match &t.image {
                Some(unike_core::edit::ike::DemoImage::File(p)) => all_pixels.push(pixels(&f, p)?),
                Some(unike_core::edit::ike::DemoImage::Pixels(t)) => all_pixels.push((**t).clone()),
                None => {}
            }
        }
    }
    all_pixels.push(req.image.clone().context("image")?);
    let joined: Vec<u32> = ids.iter().chain(&query.ids).copied().collect();
    let input = Tensor::new(joined.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let all_pixels = Pixels::cat(&all_pixels.iter().collect::<Vec<_>>())?;
    let embeds = f.model.embed(&input, all_pixels.as_ref())?;
    let whole = f.model.forward_inputs(&embeds, None, &Hooks::none(), &mut Capture::none())?;
    let whole = whole.narrow(1, ids.len(), query.ids.len())?;
    let diff = (whole - &prefixed)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-4, "prefix and prepending differ by {diff}");
    // Asked for more than the window holds, the least similar are left out and the edit's own stays last.
    let many = ike(&f, 12, 100);
    let (kept, scores) = many.demonstrations(&f.model, &f.processor, &req)?;
    let window = f.model.text().context_budget();
    let len = prefix::prefix_ids(&f.processor, &kept, true, &Device::Cpu)?.0.len();
    assert!(kept.len() < 13 && kept.len() >= 2 && len <= window, "{} demonstrations, {len} positions", kept.len());
    let (all, all_scores) = ike(&f, kept.len() - 1, 100).demonstrations(&f.model, &f.processor, &req)?;
    assert_eq!(scores, all_scores, "the kept ones are the most similar");
    assert_eq!(
        kept.iter().map(Demonstration::describe).collect::<Vec<_>>(),
        all.iter().map(Demonstration::describe).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn ike_edits_take_and_record_their_demonstrations() -> Result<()> {
    let f = fixture()?;
    let none = Hooks::none();
    for k in [0, 2] {
        let method = ike(&f, k, 200);
        let (mut took, mut before) = (0, 0);
        for c in f.eval.iter().step_by(7).take(10) {
            let req = request(&f, c)?;
            let seq = EditSequence::new(&f.processor, &c.prompt, req.image.as_ref(), &c.target, f.eos)?;
            before += usize::from(seq.greedy(&f.model, &f.processor, &none, &[f.eos])? == c.target);
            let stack = PatchStack::new();
            let ctx = EditContext { model: &f.model, processor: &f.processor, stack: &stack };
            let patch = method.edit(&ctx, &req)?;
            assert_eq!(patch.provenance.demonstrations.len(), k + 1);
            assert!(patch.provenance.demonstrations[k].ends_with("(the edit)"));
            assert_eq!(patch.contexts.len(), 1);
            let mut stack = PatchStack::new();
            stack.push(patch);
            took += usize::from(seq.greedy(&f.model, &f.processor, &stack.hooks()?, &[f.eos])? == c.target);
        }
        // The default model follows an in-context edit of its own question (VQA dev on the shipped model, issue 14's
        // full4: 99 % at k = 0, 65 % at k = 2; on these ten cases 3 of 10 at k = 2, where retrieved demonstrations
        // about the same character with another relation draw the answer away: issue 14's `context_ignore`).
        assert_eq!(before, 0, "the targets are counterfactual");
        assert!(took >= if k == 0 { 9 } else { 3 }, "k = {k}: {took} of 10 edits take");
    }
    // Without a training split, retrieval is a clear error; k = 0 needs none.
    let lone = Ike::new(IkeParams { with_image: true, k: 2, pool: 10 }, vec![], &f.model);
    let stack = PatchStack::new();
    let ctx = EditContext { model: &f.model, processor: &f.processor, stack: &stack };
    let err = lone.edit(&ctx, &request(&f, &f.eval[0])?).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("training split"), "{err}");
    Ok(())
}
