//! Every model family behind the one interface (issue 18 §1, §3): the tiny random LLaVA, BLIP-2 (OPT) and Qwen2-VL
//! checkpoints of `tests/fixtures`, opened by `Checkpoint::open` and used only through `&dyn VisionLanguageModel` and
//! `&dyn ModelProcessor`, as every method is.

mod common;

use std::sync::Arc;

use anyhow::Result;
use candle_core::{Device, Tensor};
use common::{fixture, max_abs_diff};
use unike_core::edit::ike::prefix;
use unike_core::edit::EditSequence;
use unike_core::hooks::{Capture, Hooks};
use unike_core::model::{Checkpoint, Family, ModelProcessor, Pixels, VisionLanguageModel};

/// A family's tiny checkpoint, loaded.
struct Tiny {
    name: &'static str,
    model: Arc<dyn VisionLanguageModel>,
    processor: Arc<dyn ModelProcessor>,
    eos: u32,
}

const FAMILIES: [(&str, Family); 3] =
    [("tiny-llava", Family::Llava), ("tiny-blip2", Family::Blip2), ("tiny-qwen2vl", Family::Qwen2Vl)];

fn each_family() -> Result<Vec<Tiny>> {
    FAMILIES
        .iter()
        .map(|&(name, family)| {
            let ckpt = Checkpoint::open(fixture(name))?;
            assert_eq!(ckpt.family(), family, "{name}");
            let eos = *ckpt.eos_token_ids()?.first().ok_or_else(|| anyhow::anyhow!("{name}: no eos"))?;
            Ok(Tiny { name, model: ckpt.load_model(None, &Device::Cpu)?, processor: ckpt.processor()?, eos })
        })
        .collect()
}

fn image(t: &Tiny, file: &str) -> Result<Pixels> {
    Ok(t.processor.load_image(&fixture(&format!("images/{file}")), &Device::Cpu)?)
}

/// A demonstration's prefix, then the query, equals one forward pass over the demonstration followed by the query
/// (at the query's positions): IKE's and SERAC's in-context mechanism on every family, with and without an image.
#[test]
fn an_in_context_prefix_is_exactly_prepending_it_on_every_family() -> Result<()> {
    for t in each_family()? {
        let (m, p) = (&*t.model, &*t.processor);
        for with_image in [false, true] {
            // BLIP-2 takes one image, in front: its demonstration is text, the query shows the image.
            let demo_px = if with_image && m.family() != Family::Blip2 { Some(image(&t, "narrow.png")?) } else { None };
            let query_px = if with_image { Some(image(&t, "wide.png")?) } else { None };
            let demo = EditSequence::new(p, "what colour is the sky", demo_px.as_ref(), "green", t.eos)?;
            let query = EditSequence::new(p, "what is in the picture", query_px.as_ref(), "a cat", t.eos)?;
            let mut hooks = Hooks::none();
            hooks.add_context(Arc::new(prefix::demonstration(m, &demo, &Hooks::none())?));
            let prefixed = m.forward_inputs(&query.inputs(m)?, None, &hooks, &mut Capture::none())?;

            let joined: Vec<u32> = demo.ids.iter().chain(&query.ids).copied().collect();
            let pixels: Vec<&Pixels> = demo_px.iter().chain(query_px.iter()).collect();
            let input = Tensor::new(joined.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
            let inputs = m.embed(&input, Pixels::cat(&pixels)?.as_ref())?;
            let whole = m.forward_inputs(&inputs, None, &Hooks::none(), &mut Capture::none())?;
            let whole = whole.narrow(1, demo.ids.len(), query.ids.len())?;
            let flat = |x: &Tensor| -> Result<Vec<f32>> { Ok(x.flatten_all()?.to_vec1::<f32>()?) };
            let diff = max_abs_diff(&flat(&whole)?, &flat(&prefixed)?);
            assert!(diff < 1e-4, "{} (image {with_image}): prefix and prepending differ by {diff}", t.name);
            // Without the prefix the output differs (the check can fail).
            let plain = m.forward_inputs(&query.inputs(m)?, None, &Hooks::none(), &mut Capture::none())?;
            assert!(max_abs_diff(&flat(&plain)?, &flat(&prefixed)?) > 1e-3, "{}: the prefix did nothing", t.name);

            // Greedy decoding under the prefix continues from the same place (the cache holds the query only).
            let opts = unike_core::model::GenerateOptions { max_new_tokens: 3, eos_token_ids: vec![] };
            let gen = m.generate(&query.ids[..query.prompt_len], query_px.as_ref(), &hooks, &opts)?;
            let full = m.generate(
                &joined[..demo.ids.len() + query.prompt_len],
                Pixels::cat(&pixels)?.as_ref(),
                &Hooks::none(),
                &opts,
            )?;
            assert_eq!(gen.tokens, full.tokens, "{}: greedy decoding under the prefix", t.name);
        }
    }
    Ok(())
}
