//! MEND as MEND and VLKEB apply it: the gradient factors cover only positions that carry a gradient (MEND's mask), an
//! edit changes the up and the down projections of the last layers, and the two changes together are exactly the
//! edited MLP.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use unike_core::edit::gradient::edit_gradient;
use unike_core::edit::mend::{Mend, MendNet};
use unike_core::edit::patch::{down_delta, up_delta};
use unike_core::edit::{EditContext, EditMethod, EditRequest, EditSequence, PatchStack};
use unike_core::hooks::{FfnHook, Hooks};
use unike_core::model::LlavaCheckpoint;

fn randn(shape: (usize, usize), seed: u64, scale: f64) -> Result<Tensor> {
    let mut rng = unike_core::world::rng::Rng::new(seed);
    let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.normal()).collect();
    Ok((Tensor::from_vec(v, shape, &Device::Cpu)? * scale)?)
}

#[test]
fn mend_masks_positions_without_gradient_and_edits_up_and_down_projections_exactly() -> Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
    let ckpt = LlavaCheckpoint::open(&dir)?;
    let model = ckpt.load_model(None, &Device::Cpu)?;
    let processor = ckpt.processor()?;
    let eos = ckpt.eos_token_ids()?[0];
    let n = model.text().num_layers();

    // The mask: the last position predicts nothing, so no layer keeps it; at the last layer only the positions that
    // predict the answer have a gradient.
    let seq = EditSequence::new(&processor, "which team does this character play for?", None, "the red sharks", eos)?;
    let grad = edit_gradient(&model, &seq, &[n - 2, n - 1], &Hooks::none())?;
    let s = seq.ids.len();
    for g in &grad.layers {
        let rows = g.delta.dim(0)?;
        assert!(rows < s, "layer {}: {rows} of {s} positions kept", g.layer);
        assert_eq!((g.u.dim(0)?, g.q.dim(0)?, g.delta_up.dim(0)?), (rows, rows, rows));
        let norms = g.delta.abs()?.sum(1)?.to_vec1::<f32>()?;
        assert!(norms.iter().all(|v| *v > 0.0), "a kept position without gradient");
    }
    assert_eq!(grad.layers[1].delta.dim(0)?, seq.targets().len());
    // The full gradients are unchanged by the mask (the positions left out add nothing).
    let full = grad.layers[0].full()?;
    assert_eq!(full.dims(), [model.text().mlp_gate_up(n - 2)?.0.dim(0)?, model.config().text.hidden_size]);

    // Up and down changes together are exactly the edited MLP: act(q G^T) ⊙ q(U^T + ΔU), then (W_down^T + ΔD).
    let l = n - 1;
    let (gate, up, act) = model.text().mlp_gate_up(l)?;
    let down = model.text().mlp_down(l)?;
    let (i, d) = gate.dims2()?;
    let (dd, du) = (randn((i, d), 1, 0.05)?, randn((d, i), 2, 0.05)?);
    let q = randn((5, d), 3, 1.0)?.unsqueeze(0)?;
    let mlp = |u: &Tensor, w: &Tensor| -> Result<Tensor> {
        let g = act.apply(&q.broadcast_matmul(&gate.t()?)?)?;
        Ok((g * q.broadcast_matmul(u)?)?.broadcast_matmul(w)?)
    };
    let before = mlp(&up.t()?, &down.t()?)?;
    let after = mlp(&(up.t()? + &du)?, &(down.t()? + &dd)?)?;
    let extra = (down_delta(&model, l, dd.clone())?.ffn_extra(l, &q)?
        + up_delta(&model, l, du.clone(), Some(dd.clone()))?.ffn_extra(l, &q)?)?;
    let err = ((&before + &extra)? - &after)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(err < 1e-4, "the hooks differ from the edited MLP by {err}");
    // Without the up change's hook the output is different (the up change acts).
    let down_only = (&before + down_delta(&model, l, dd)?.ffn_extra(l, &q)?)?;
    assert!((down_only - &after)?.abs()?.max_all()?.to_scalar::<f32>()? > 1e-3);

    // The trained networks: one per weight shape, a scale and shift per layer; an edit changes both projections of
    // both edited layers.
    let net = MendNet::load(&dir.join("mend"), &model)?;
    for name in ["down.w1", "up.w1", "down.l0.scale", "down.l1.shift", "up.l1.scale", "up.l0.log_lr"] {
        net.set().get(name)?;
    }
    assert!(net.set().get("l0.w1").is_err(), "no network per layer");
    let method = Mend { net: std::sync::Arc::new(net), eos };
    let stack = PatchStack::new();
    let request = EditRequest {
        question: "which team does this character play for?".into(),
        image: None,
        image_path: None,
        target: "the stone lions".into(),
        seed: 0,
    };
    let patch = method.edit(&EditContext { model: &model, processor: &processor, stack: &stack }, &request)?;
    assert_eq!(patch.mlp_deltas.keys().copied().collect::<Vec<_>>(), [n - 2, n - 1]);
    assert_eq!(patch.up_deltas.keys().copied().collect::<Vec<_>>(), [n - 2, n - 1]);
    for u in patch.up_deltas.values() {
        assert!(u.delta.abs()?.max_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()? > 0.0);
    }
    Ok(())
}

/// The parameters that make MEND and KE their papers' methods act where they should: MEND's network is shared by the
/// layers of a shape while each layer's scale is its own; KE's additive term has its own softmax vector.
#[test]
fn shared_networks_per_layer_modes_and_ke_terms_each_act() -> Result<()> {
    use unike_core::edit::hypernet::GradientEditor;
    use unike_core::edit::ke::KeNet;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
    let ckpt = LlavaCheckpoint::open(&dir)?;
    let model = ckpt.load_model(None, &Device::Cpu)?;
    let processor = ckpt.processor()?;
    let seq = EditSequence::new(&processor, "which team does this character play for?", None, "the red sharks", 2)?;
    let n = model.text().num_layers();
    let grad = edit_gradient(&model, &seq, &[n - 2, n - 1], &Hooks::none())?;
    let diff = |a: &Tensor, b: &Tensor| -> Result<f32> { Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?) };

    let mend = MendNet::load(&dir.join("mend"), &model)?;
    let before = [mend.delta(0, &grad)?, mend.delta(1, &grad)?];
    // Layer 1's own scale moves layer 1's change only.
    let scale = mend.set().get("down.l1.scale")?.copy()?;
    mend.set().set("down.l1.scale", &(&scale * 2.0)?)?;
    assert_eq!(diff(&mend.delta(0, &grad)?, &before[0])?, 0.0);
    assert!(diff(&mend.delta(1, &grad)?, &before[1])? > 0.0);
    mend.set().set("down.l1.scale", &scale)?;
    // The down network is shared: changing it moves both layers' changes.
    let b2 = mend.set().get("down.b2")?.copy()?;
    mend.set().set("down.b2", &(&b2 + 0.5)?)?;
    assert!(diff(&mend.delta(0, &grad)?, &before[0])? > 0.0 && diff(&mend.delta(1, &grad)?, &before[1])? > 0.0);

    // KE: the additive term's softmax vector is its own (moving it changes the change, the gating one stays put).
    let ke = KeNet::load(&dir.join("ke"), &model)?;
    let base = ke.delta(0, &grad)?;
    let b_a2 = ke.set().get("l0.b_a2")?.copy()?;
    let bump: Vec<f32> = (0..b_a2.dim(0)?).map(|i| if i % 7 == 0 { 3.0 } else { 0.0 }).collect();
    ke.set().set("l0.b_a2", &(&b_a2 + Tensor::from_vec(bump, b_a2.dim(0)?, &Device::Cpu)?)?)?;
    assert!(diff(&ke.delta(0, &grad)?, &base)? > 0.0, "the additive term's own vector acts");
    assert!(ke.set().get("l0.w_a")?.dims() == ke.set().get("l0.w_a2")?.dims());
    Ok(())
}
