//! FT on the vision side (issue 19) on the tiny random LLaVA, BLIP-2 and Qwen2-VL checkpoints: the edit changes only
//! the image path, so a text-only question keeps the unedited model's logits to the bit while the edited question and
//! another image question move; without the patch's vision hook the edited question is the unedited model's again;
//! a projector change of zero gives the unedited embeddings (to rounding); a text-only edit is refused.

mod common;

use anyhow::{anyhow, ensure, Result};
use candle_core::{Device, Tensor};
use common::fixture;
use unike_core::edit::ft_vision::{FtVision, FtVisionParams};
use unike_core::edit::{EditContext, EditMethod, EditRequest, EditSequence, PatchStack};
use unike_core::hooks::Hooks;
use unike_core::model::{Checkpoint, ProjectorDelta};

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

#[test]
fn the_vision_side_edit_moves_image_inputs_only() -> Result<()> {
    for name in ["tiny-llava", "tiny-blip2", "tiny-qwen2vl"] {
        let ckpt = Checkpoint::open(fixture(name))?;
        let eos = *ckpt.eos_token_ids()?.first().ok_or_else(|| anyhow!("no eos"))?;
        let (model, processor) = (ckpt.load_model(None, &Device::Cpu)?, ckpt.processor()?);
        let (m, p) = (&*model, &*processor);
        let image = p.load_image(&fixture("images/narrow.png"), &Device::Cpu)?;
        let other = p.load_image(&fixture("images/wide.png"), &Device::Cpu)?;
        let request = EditRequest {
            question: "what colour is the car".into(),
            image: Some(image.clone()),
            image_path: None,
            target: "red".into(),
            seed: 0,
        };
        let method = FtVision { params: FtVisionParams { steps: 20, lr: 1e-2 }, eos };
        let stack = PatchStack::new();
        let patch = method.edit(&EditContext { model: m, processor: p, stack: &stack }, &request)?;
        let hooks = patch.hooks()?;
        let edited = EditSequence::new(p, &request.question, Some(&image), &request.target, eos)?;
        let text = EditSequence::new(p, "who wrote the book", None, "a man", eos)?;
        let picture = EditSequence::new(p, "how many birds are there", Some(&other), "three", eos)?;
        let none = Hooks::none();
        let moved = |s: &EditSequence, h: &Hooks| -> Result<f32> {
            max_diff(&s.target_logits(m, h)?, &s.target_logits(m, &none)?)
        };
        let (e, t, i) = (moved(&edited, &hooks)?, moved(&text, &hooks)?, moved(&picture, &hooks)?);
        eprintln!("{name}: edited question moved {e:.3}, text question {t}, other image question {i:.3}");
        ensure!(e > 0.5 && i > 0.0, "{name}: the image path did not change");
        ensure!(t == 0.0, "{name}: a text-only question changed by {t}");
        // Disconnected: the same patch without its projector change is the unedited model.
        let mut bare = patch.clone();
        bare.vision = None;
        ensure!(moved(&edited, &bare.hooks()?)? == 0.0, "{name}: a patch without its vision change moved the edit");
        // A zero change gives the unedited embeddings (to rounding: the changed projector runs in f32).
        let parts = m.projector_parts()?;
        let zero = parts
            .shapes()?
            .into_iter()
            .map(|(o, i)| {
                Ok((
                    Tensor::zeros((o, i), candle_core::DType::F32, &Device::Cpu)?,
                    Tensor::zeros(o, candle_core::DType::F32, &Device::Cpu)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut zh = Hooks::none();
        zh.add_vision(std::sync::Arc::new(ProjectorDelta::new(parts, zero)?));
        ensure!(moved(&edited, &zh)? < 1e-4, "{name}: a zero projector change moved the logits");
        // A text-only edit is refused.
        let text_only = EditRequest { image: None, ..request.clone() };
        let e = method.edit(&EditContext { model: m, processor: p, stack: &stack }, &text_only);
        ensure!(e.err().map(|e| e.to_string()).unwrap_or_default().contains("needs an image"));
    }
    Ok(())
}
