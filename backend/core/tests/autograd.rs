//! Differentiable forwards: inside `kernels::differentiable()` the model gives the same outputs as with the fused
//! kernels, and gradients reach every weight (base-model training and the optimising edit methods rely on it).

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::{expected, fixture, load};
use unike_core::hooks::Hooks;
use unike_core::model::{kernels, KeyLayout, Llava};

#[test]
fn differentiable_kernels_match_fused_ones() -> Result<()> {
    let (_, model, processor) = load("tiny-llava", None)?;
    let case = expected("f32", "image_question")?;
    let ids = Tensor::new(case.input_ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let px = processor.image_processor().load_file(&fixture(case.image.as_deref().unwrap_or("")), &Device::Cpu)?;
    let px = px.unsqueeze(0)?;
    let fused = model.forward(&ids, Some(&px), &Hooks::none())?;
    let slow = {
        let _scope = kernels::differentiable();
        model.forward(&ids, Some(&px), &Hooks::none())?
    };
    let d = (fused - slow)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    assert!(d < 1e-4, "differentiable forward differs by {d}");
    Ok(())
}

#[test]
fn gradients_reach_every_weight() -> Result<()> {
    let (ckpt, _, processor) = load("tiny-llava", None)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Llava::load(vb, KeyLayout::LLAVA_HF, &ckpt.config)?;
    // Small random weights and unit norms, as an initialisation would give: no saturated softmax, no dead path.
    for (name, var) in varmap.data().lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter() {
        let unit = if name.contains("norm") && name.ends_with("weight") { 1.0 } else { 0.0 };
        var.set(&(Tensor::randn(0f32, 0.2, var.shape(), &Device::Cpu)? + unit)?)?;
    }
    let case = expected("f32", "image_question")?;
    let ids = Tensor::new(case.input_ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let px = processor.image_processor().load_file(&fixture(case.image.as_deref().unwrap_or("")), &Device::Cpu)?;
    let _scope = kernels::differentiable();
    let logits = model.forward(&ids, Some(&px.unsqueeze(0)?), &Hooks::none())?;
    let loss = logits.sqr()?.mean_all()?;
    let grads = loss.backward()?;
    let data = varmap.data().lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut missing = vec![];
    for (name, var) in data.iter() {
        let ok =
            grads.get(var.as_tensor()).map(|g| g.abs().and_then(|a| a.sum_all()).and_then(|s| s.to_scalar::<f32>()));
        match ok {
            Some(Ok(s)) if s > 0.0 => {}
            _ => missing.push(name.clone()),
        }
    }
    assert!(missing.is_empty(), "no gradient for {missing:?}");
    assert!(data.len() > 50);
    Ok(())
}
