//! Tests of `edit::patch`: save and load, stacking, undo.

use super::*;

use crate::edit::PatchStack;
use candle_core::Device;

fn neurons(seed: f32, d: usize, n: usize) -> Result<ExtraNeurons> {
    let dev = Device::Cpu;
    let v = |k: usize, s: f32| (0..k).map(|i| ((i as f32 + s) * 0.37).sin()).collect::<Vec<f32>>();
    ExtraNeurons::new(
        Tensor::from_vec(v(d * n, seed), (d, n), &dev)?,
        Tensor::from_vec(v(n, seed + 1.0), n, &dev)?,
        Tensor::from_vec(v(n * d, seed + 2.0), (n, d), &dev)?,
        Activation::Relu,
    )
}

fn patch(seed: f32) -> Result<Patch> {
    let prov = Provenance {
        method: "t-patcher".into(),
        hparams: serde_json::json!({"lr": 0.01}),
        prompt: "who?".into(),
        target: format!("x{seed}"),
        image: None,
        seed: 7,
        author: Some("ana".into()),
        demonstrations: vec!["copy: new fact: who? x → who? x (the edit)".into()],
    };
    Ok(Patch::new(prov, BTreeMap::from([(2, neurons(seed, 8, 3)?), (3, neurons(seed + 5.0, 8, 1)?)])))
}

#[test]
fn patches_round_trip_through_safetensors_and_json() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("unike-patch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|err| Error::Io { path: dir.clone(), err })?;
    // A small model with 4 decoder layers of width 8 (its MLPs have 21 intermediate units).
    let world_cfg = crate::train::world_config_json(40, 8, 1, 8, 4, 4);
    let model = crate::train::Trainable::new(&world_cfg, 0, &Device::Cpu)?.model;
    let mut p = patch(1.0)?;
    let delta = Tensor::ones((21, 8), candle_core::DType::F32, &Device::Cpu)?;
    p.mlp_deltas.insert(3, down_delta(&model, 3, delta)?);
    assert!(down_delta(&model, 3, Tensor::ones((8, 8), candle_core::DType::F32, &Device::Cpu)?).is_err());
    p.save(&dir.join("p"))?;
    let q = Patch::load(&dir.join("p"), &model)?;
    assert_eq!(q.mlp_deltas[&3].delta.to_vec2::<f32>()?, p.mlp_deltas[&3].delta.to_vec2::<f32>()?);
    assert_eq!(q.hooks()?.layer(3).map(|l| l.ffn.len()), Some(2));
    assert_eq!(p.provenance, q.provenance);
    assert_eq!(p.num_parameters(), q.num_parameters());
    for (l, n) in &p.neurons {
        let m = &q.neurons[l];
        assert_eq!(n.w_k.to_vec2::<f32>()?, m.w_k.to_vec2::<f32>()?);
        assert_eq!(n.b_k.to_vec1::<f32>()?, m.b_k.to_vec1::<f32>()?);
        assert_eq!(n.w_v.to_vec2::<f32>()?, m.w_v.to_vec2::<f32>()?);
        assert_eq!(n.act, m.act);
    }
    // A patch written when a fixed α weighted the input (format 1) reads in today's meaning.
    let mut old = patch(3.0)?;
    old.provenance.method = "unike:alpha=0.8/k=5".into();
    old.provenance.hparams = serde_json::json!({"alpha": {"fixed": 0.8}, "top_k": 5});
    old.save(&dir.join("old"))?;
    let js = dir.join("old.json");
    let text = std::fs::read_to_string(&js).map_err(|err| Error::Io { path: js.clone(), err })?;
    std::fs::write(&js, text.replace("unike-patch/2", "unike-patch/1")).map_err(|err| Error::Io { path: js, err })?;
    let read = Patch::load(&dir.join("old"), &model)?;
    assert_eq!(read.provenance.method, "unike:alpha=0.2/k=5");
    assert_eq!(read.provenance.hparams, serde_json::json!({"alpha": {"fixed": 0.2}, "top_k": 5}));
    assert_eq!(
        super::super::unike::latent::Alpha::Fixed(0.8).from_input_weight(),
        super::super::unike::latent::Alpha::Fixed(0.2)
    );
    // A corrupted JSON half is a clear error naming the file.
    std::fs::write(dir.join("bad.json"), "{\"format\": \"other\"}")
        .map_err(|err| Error::Io { path: dir.clone(), err })?;
    let e = Patch::load(&dir.join("bad"), &model).unwrap_err().to_string();
    assert!(e.contains("bad.json"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn stacks_add_up_and_any_patch_can_be_dropped() -> Result<()> {
    let mut stack = PatchStack::new();
    assert!(stack.hooks()?.is_empty());
    let a = stack.push(patch(1.0)?);
    let b = stack.push(patch(2.0)?);
    let c = stack.push(patch(3.0)?);
    assert_eq!(stack.len(), 3);
    assert_eq!(stack.hooks()?.layer(2).map(|l| l.ffn.len()), Some(3));
    // Undo from the middle keeps the others, in order.
    let removed = stack.remove(b)?;
    assert_eq!(removed.provenance.target, "x2");
    assert_eq!(stack.iter().map(|(id, _)| id).collect::<Vec<_>>(), [a, c]);
    assert_eq!(stack.hooks()?.layer(3).map(|l| l.ffn.len()), Some(2));
    assert!(stack.remove(b).is_err());
    // Ids are never reused.
    let d = stack.push(patch(4.0)?);
    assert!(d > c);
    assert_eq!(stack.pop().map(|p| p.provenance.target.clone()), Some("x4".into()));
    Ok(())
}
