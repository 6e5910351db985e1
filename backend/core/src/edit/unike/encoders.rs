//! Knowledge disentangling (paper §3.3, Eq. 4 and 5): a truthfulness encoder and a semantic encoder per edited layer
//! (two-layer MLPs, `d → hidden → d`), trained contrastively on the memory's `(h_sem, h_pos, h_neg)` with Adam, and the
//! editing direction `ζ = mean Enc_tru(h_pos) − mean Enc_tru(h_neg)` mapped back to the representation space by
//! `W_ζ` (Eq. 6).
//!
//! Choices the paper leaves open, made here: hidden states are centred by the memory's mean `h_sem` before encoding
//! and comparing (they share a large common component); the similarity is cosine over a temperature; `W_ζ` is the
//! linear map that sends a pair's truthfulness difference `Enc_tru(h_pos) − Enc_tru(h_neg)` to its representation
//! difference `h_pos − h_neg` (least squares, fitted alongside the encoders on detached encodings). The same map is
//! fitted for the semantic space, for the "ζ from the semantic space" ablation.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, Optimizer, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::memory::KnowledgeMemory;
use crate::edit::unit_rows;
use crate::error::{Error, Result};
use crate::world::rng::Rng;

/// Hyper-parameters of `unike train-encoders`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderParams {
    pub hidden: usize,
    pub steps: usize,
    pub batch: usize,
    /// Adam learning rate (paper: 1e-4).
    pub lr: f64,
    /// Temperature of the cosine similarity.
    pub temperature: f64,
    pub seed: u64,
}

impl Default for EncoderParams {
    fn default() -> Self {
        Self { hidden: 256, steps: 2000, batch: 256, lr: 1e-4, temperature: 0.1, seed: 0 }
    }
}

/// A two-layer MLP encoder, `(n, d)` → `(n, d)`.
#[derive(Debug, Clone)]
pub struct Encoder {
    fc1: Linear,
    fc2: Linear,
}

impl Encoder {
    fn load(vb: VarBuilder, d: usize, hidden: usize) -> Result<Self> {
        Ok(Self { fc1: candle_nn::linear(d, hidden, vb.pp("fc1"))?, fc2: candle_nn::linear(hidden, d, vb.pp("fc2"))? })
    }

    /// `(n, d)` → `(n, d)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.fc2.forward(&self.fc1.forward(x)?.gelu()?)?)
    }
}

/// The encoders and editing directions of one layer.
#[derive(Debug, Clone)]
pub struct LayerEncoders {
    pub truthful: Encoder,
    pub semantic: Encoder,
    /// Mean `h_sem` of the memory, `(d)`: subtracted before encoding and comparing.
    pub centre: Tensor,
    /// `ζ' = W_ζ ζ` in the representation space, `(d)`.
    pub zeta: Tensor,
    /// The same direction taken from the semantic space, `(d)` (ablation).
    pub zeta_semantic: Tensor,
}

/// Encoders per edited layer.
#[derive(Debug, Clone)]
pub struct Encoders {
    pub layers: BTreeMap<usize, LayerEncoders>,
    pub params: EncoderParams,
}

/// Training loss values, for the curve.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct EncoderStep {
    pub step: usize,
    pub truthful: f32,
    pub semantic: f32,
}

/// Eq. 4: each truthfulness representation against all, positives with positives and negatives with negatives.
fn truthful_loss(tp: &Tensor, tn: &Tensor, tau: f64) -> Result<Tensor> {
    let n = tp.dim(0)?;
    let all = Tensor::cat(&[tp, tn], 0)?; // (2n, e)
    let sims = (all.matmul(&all.t()?)? / tau)?.exp()?; // (2n, 2n)
    let same_pos = sims.narrow(1, 0, n)?.sum(1)?;
    let same_neg = sims.narrow(1, n, n)?.sum(1)?;
    let total = sims.sum(1)?;
    let num = Tensor::cat(&[&same_pos.narrow(0, 0, n)?, &same_neg.narrow(0, n, n)?], 0)?;
    Ok((total.log()? - num.log()?)?.mean_all()?)
}

/// Eq. 5: each `h_sem` against its own pair's semantic representations, the other pairs' as negatives.
fn semantic_loss(sem: &Tensor, sp: &Tensor, sn: &Tensor, tau: f64) -> Result<Tensor> {
    let a = (sem.matmul(&sp.t()?)? / tau)?.exp()?; // (n, n)
    let b = (sem.matmul(&sn.t()?)? / tau)?.exp()?;
    let n = sem.dim(0)?;
    let eye = Tensor::eye(n, DType::F32, sem.device())?;
    let own = ((&a * &eye)?.sum(1)? + (&b * &eye)?.sum(1)?)?;
    let total = (a.sum(1)? + b.sum(1)?)?;
    Ok((total.log()? - own.log()?)?.mean_all()?)
}

impl Encoders {
    /// Trains the encoders of every layer of `memory` (Eq. 4 + Eq. 5, Adam) and fits `W_ζ`.
    /// `progress(step, total, losses)` after every step.
    pub fn train(
        memory: &KnowledgeMemory,
        params: &EncoderParams,
        progress: &mut dyn FnMut(usize, usize, EncoderStep),
    ) -> Result<(Self, Vec<EncoderStep>)> {
        let device = memory.h_sem.first().map(|t| t.device().clone()).unwrap_or(Device::Cpu);
        let n = memory.len();
        if n < 4 || params.batch < 2 || params.steps == 0 {
            return Err(Error::Invalid(format!(
                "encoder training needs at least 4 triplets, a batch of 2 and one step (got {n}, {}, {})",
                params.batch, params.steps
            )));
        }
        let d = memory.h_sem[0].dim(1)?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let mut nets = Vec::new();
        let mut maps = Vec::new();
        let mut centres = Vec::new();
        for (i, l) in memory.layers.iter().enumerate() {
            let lv = vb.pp(format!("layers.{l}"));
            nets.push((
                Encoder::load(lv.pp("truthful"), d, params.hidden)?,
                Encoder::load(lv.pp("semantic"), d, params.hidden)?,
            ));
            let zero = candle_nn::Init::Const(0.0);
            maps.push((
                lv.get_with_hints((d, d), "w_zeta", zero)?,
                lv.get_with_hints((d, d), "w_zeta_semantic", zero)?,
            ));
            centres.push(memory.h_sem[i].mean(0)?);
        }
        let (map_vars, mut enc_vars): (Vec<_>, Vec<_>) = {
            let data = varmap.data().lock().map_err(|_| Error::Invalid("variable map poisoned".into()))?;
            data.iter().map(|(k, v)| (k.clone(), v.clone())).partition(|(k, _)| k.contains("w_zeta"))
        };
        // candle draws its initial weights from a generator that cannot be seeded: redraw them from the seed, by
        // name, with candle's distributions (weights Kaiming-normal, N(0, 2 / fan_in); biases U(±1 / √fan_in)).
        enc_vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (i, (name, var)) in enc_vars.iter().enumerate() {
            let mut init = Rng::derive(params.seed, "encoders-init", i as u64);
            let fan_in = if name.contains("fc1") { d } else { params.hidden } as f32;
            let values: Vec<f32> = if name.ends_with("bias") {
                let bound = 1.0 / fan_in.sqrt();
                (0..var.elem_count()).map(|_| init.range(-bound, bound)).collect()
            } else {
                let std = (2.0 / fan_in).sqrt();
                (0..var.elem_count()).map(|_| std * init.normal()).collect()
            };
            var.set(&Tensor::from_vec(values, var.shape(), &device)?)?;
        }
        let mut opt = candle_nn::AdamW::new(
            enc_vars.into_iter().map(|(_, v)| v).collect(),
            candle_nn::ParamsAdamW { lr: params.lr, weight_decay: 0.0, ..Default::default() },
        )?;
        // W_ζ is a plain least-squares fit: a faster rate is safe.
        let mut map_opt = candle_nn::AdamW::new(
            map_vars.into_iter().map(|(_, v)| v).collect(),
            candle_nn::ParamsAdamW { lr: 1e-3, weight_decay: 0.0, ..Default::default() },
        )?;
        let mut rng = Rng::derive(params.seed, "encoders", 0);
        let mut curve = Vec::new();
        let b = params.batch.min(n);
        for step in 1..=params.steps {
            let idx: Vec<u32> = (0..b).map(|_| rng.below(n) as u32).collect();
            let idx = Tensor::new(idx.as_slice(), &device)?;
            let (mut lt, mut ls, mut lw) = (
                Tensor::zeros((), DType::F32, &device)?,
                Tensor::zeros((), DType::F32, &device)?,
                Tensor::zeros((), DType::F32, &device)?,
            );
            for (i, (tru, sem)) in nets.iter().enumerate() {
                let c = &centres[i];
                let hs = memory.h_sem[i].index_select(&idx, 0)?.broadcast_sub(c)?;
                let hp = memory.h_pos[i].index_select(&idx, 0)?.broadcast_sub(c)?;
                let hn = memory.h_neg[i].index_select(&idx, 0)?.broadcast_sub(c)?;
                let (tp, tn) = (tru.forward(&hp)?, tru.forward(&hn)?);
                let (sp, sn) = (sem.forward(&hp)?, sem.forward(&hn)?);
                lt = (lt + truthful_loss(&unit_rows(&tp)?, &unit_rows(&tn)?, params.temperature)?)?;
                ls = (ls + semantic_loss(&unit_rows(&hs)?, &unit_rows(&sp)?, &unit_rows(&sn)?, params.temperature)?)?;
                // W_ζ: truthfulness (and semantic) differences → representation differences, encoders detached.
                let target = (&hp - &hn)?;
                let scale = target.sqr()?.sum(1)?.mean_all()?.detach();
                let (wz, wzs) = &maps[i];
                let fit = |diff: Tensor, w: &Tensor| -> Result<Tensor> {
                    Ok(diff.detach().matmul(w)?.sub(&target)?.sqr()?.sum(1)?.mean_all()?.div(&scale)?)
                };
                lw = (lw + fit((&tp - &tn)?, wz)? + fit((&sp - &sn)?, wzs)?)?;
            }
            opt.backward_step(&(&lt + &ls)?)?;
            map_opt.backward_step(&lw)?;
            let k = memory.layers.len() as f32;
            let point =
                EncoderStep { step, truthful: lt.to_scalar::<f32>()? / k, semantic: ls.to_scalar::<f32>()? / k };
            if step.is_multiple_of(50) || step == params.steps {
                curve.push(point);
            }
            progress(step, params.steps, point);
        }
        // ζ' per layer (and its semantic-space twin), then the encoders detached from the optimiser's variables.
        let mut directions = BTreeMap::new();
        for (i, l) in memory.layers.iter().enumerate() {
            let (tru, sem) = &nets[i];
            let c = &centres[i];
            let hp = memory.h_pos[i].broadcast_sub(c)?;
            let hn = memory.h_neg[i].broadcast_sub(c)?;
            let zeta = (tru.forward(&hp)?.mean(0)? - tru.forward(&hn)?.mean(0)?)?;
            let zeta_s = (sem.forward(&hp)?.mean(0)? - sem.forward(&hn)?.mean(0)?)?;
            let (wz, wzs) = &maps[i];
            let project =
                |z: Tensor, w: &Tensor| -> Result<Tensor> { Ok(z.unsqueeze(0)?.matmul(w)?.squeeze(0)?.detach()) };
            directions.insert(*l, (c.clone(), project(zeta, wz)?, project(zeta_s, wzs)?));
        }
        let data: HashMap<String, Tensor> = {
            let data = varmap.data().lock().map_err(|_| Error::Invalid("variable map poisoned".into()))?;
            data.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect()
        };
        let out = Self::from_tensors(data, &directions, params.clone(), d)?;
        Ok((out, curve))
    }

    fn from_tensors(
        tensors: HashMap<String, Tensor>,
        extra: &BTreeMap<usize, (Tensor, Tensor, Tensor)>,
        params: EncoderParams,
        d: usize,
    ) -> Result<Self> {
        let device = extra.values().next().map(|t| t.0.device().clone()).unwrap_or(Device::Cpu);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let mut layers = BTreeMap::new();
        for (l, (centre, zeta, zeta_semantic)) in extra {
            let lv = vb.pp(format!("layers.{l}"));
            layers.insert(
                *l,
                LayerEncoders {
                    truthful: Encoder::load(lv.pp("truthful"), d, params.hidden)?,
                    semantic: Encoder::load(lv.pp("semantic"), d, params.hidden)?,
                    centre: centre.clone(),
                    zeta: zeta.clone(),
                    zeta_semantic: zeta_semantic.clone(),
                },
            );
        }
        Ok(Self { layers, params })
    }

    /// The encoders of `layer`.
    pub fn layer(&self, layer: usize) -> Result<&LayerEncoders> {
        self.layers.get(&layer).ok_or_else(|| {
            Error::Invalid(format!(
                "the encoders cover layers {:?}, not layer {layer}",
                self.layers.keys().collect::<Vec<_>>()
            ))
        })
    }

    /// Writes `dir/encoders.safetensors` and `dir/encoders.json`.
    pub fn save(&self, dir: &Path, curve: &[EncoderStep]) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|err| Error::Io { path: dir.to_path_buf(), err })?;
        let mut t = HashMap::new();
        for (l, e) in &self.layers {
            for (name, enc) in [("truthful", &e.truthful), ("semantic", &e.semantic)] {
                t.insert(format!("layers.{l}.{name}.fc1.weight"), enc.fc1.weight().clone());
                t.insert(format!("layers.{l}.{name}.fc2.weight"), enc.fc2.weight().clone());
                if let (Some(b1), Some(b2)) = (enc.fc1.bias(), enc.fc2.bias()) {
                    t.insert(format!("layers.{l}.{name}.fc1.bias"), b1.clone());
                    t.insert(format!("layers.{l}.{name}.fc2.bias"), b2.clone());
                }
            }
            t.insert(format!("layers.{l}.centre"), e.centre.clone());
            t.insert(format!("layers.{l}.zeta"), e.zeta.clone());
            t.insert(format!("layers.{l}.zeta_semantic"), e.zeta_semantic.clone());
        }
        candle_core::safetensors::save(&t, dir.join("encoders.safetensors"))?;
        let js = dir.join("encoders.json");
        let json = serde_json::json!({
            "format": "unike-encoders/1",
            "layers": self.layers.keys().collect::<Vec<_>>(),
            "params": self.params,
            "curve": curve,
        });
        std::fs::write(&js, serde_json::to_string_pretty(&json).unwrap_or_default())
            .map_err(|err| Error::Io { path: js, err })
    }

    /// Reads encoders written by [`Encoders::save`].
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let js = dir.join("encoders.json");
        let text = std::fs::read_to_string(&js).map_err(|err| Error::Io { path: js.clone(), err })?;
        #[derive(Deserialize)]
        struct Head {
            format: String,
            layers: Vec<usize>,
            params: EncoderParams,
        }
        let head: Head =
            serde_json::from_str(&text).map_err(|e| Error::Data { path: js.clone(), msg: e.to_string() })?;
        if head.format != "unike-encoders/1" {
            return Err(Error::Data { path: js, msg: format!("format {:?} is not \"unike-encoders/1\"", head.format) });
        }
        let st = dir.join("encoders.safetensors");
        let mut tensors = candle_core::safetensors::load(&st, device)?;
        let mut extra = BTreeMap::new();
        let mut d = 0;
        for l in &head.layers {
            let mut take = |k: &str| {
                let key = format!("layers.{l}.{k}");
                tensors.remove(&key).ok_or_else(|| Error::Data { path: st.clone(), msg: format!("missing {key}") })
            };
            let (c, z, zs) = (take("centre")?, take("zeta")?, take("zeta_semantic")?);
            d = c.dim(0)?;
            extra.insert(*l, (c, z, zs));
        }
        Self::from_tensors(tensors, &extra, head.params, d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (rows.len(), 2), &Device::Cpu).unwrap()
    }

    #[test]
    fn contrastive_losses_match_hand_computed_values() -> Result<()> {
        // Two pairs, unit vectors, temperature 1. Positives (1,0),(1,0); negatives (0,1),(0,1).
        let (tp, tn) = (t(&[[1.0, 0.0], [1.0, 0.0]]), t(&[[0.0, 1.0], [0.0, 1.0]]));
        // Every row: same side sums 2e, all sums 2e + 2 → loss = log((2e + 2) / 2e).
        let want = ((2.0 * std::f32::consts::E + 2.0) / (2.0 * std::f32::consts::E)).ln();
        let got = truthful_loss(&tp, &tn, 1.0)?.to_scalar::<f32>()?;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // Separated truthfulness gives a lower loss than mixed.
        let mixed = truthful_loss(&t(&[[1.0, 0.0], [0.0, 1.0]]), &t(&[[0.0, 1.0], [1.0, 0.0]]), 1.0)?;
        assert!(mixed.to_scalar::<f32>()? > got);
        // Semantic: sem_0 = (1,0) matches its own pair exactly; pair 1 is orthogonal.
        let sem = t(&[[1.0, 0.0], [0.0, 1.0]]);
        let (sp, sn) = (t(&[[1.0, 0.0], [0.0, 1.0]]), t(&[[1.0, 0.0], [0.0, 1.0]]));
        // Row 0: own = 2e, total = 2e + 2 → log((2e+2)/2e); row 1 the same by symmetry.
        let got = semantic_loss(&sem, &sp, &sn, 1.0)?.to_scalar::<f32>()?;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        Ok(())
    }

    /// The same seed gives the same encoders and curve; another seed other ones (the initial weights come from the
    /// seed, not from candle's unseeded generator).
    #[test]
    fn training_is_deterministic_by_seed() -> Result<()> {
        use super::super::memory::Triplet;
        let (n, d) = (8, 6);
        let mut rng = Rng::new(7);
        let mut rows = |_: usize| -> Result<Tensor> {
            let v: Vec<f32> = (0..n * d).map(|_| rng.normal()).collect();
            Ok(Tensor::from_vec(v, (n, d), &Device::Cpu)?)
        };
        let triplet = Triplet {
            question: "q".into(),
            image: "i".into(),
            level: "vision".into(),
            pos: "a".into(),
            neg: "b".into(),
        };
        let memory = KnowledgeMemory {
            layers: vec![0],
            h_sem: vec![rows(0)?],
            h_pos: vec![rows(1)?],
            h_neg: vec![rows(2)?],
            triplets: vec![triplet; n],
        };
        let run = |seed: u64| -> Result<(Vec<f32>, Vec<f32>)> {
            let params = EncoderParams { hidden: 8, steps: 3, batch: 4, seed, ..EncoderParams::default() };
            let (enc, curve) = Encoders::train(&memory, &params, &mut |_, _, _| {})?;
            let l = enc.layers.get(&0).ok_or_else(|| Error::Invalid("layer 0".into()))?;
            let out = l.truthful.forward(&memory.h_pos[0])?.flatten_all()?.to_vec1::<f32>()?;
            Ok((out, curve.iter().map(|c| c.truthful).collect()))
        };
        let (a, b, c) = (run(1)?, run(1)?, run(2)?);
        assert_eq!(a, b, "the same seed gives the same encoders and losses");
        assert_ne!(a.0, c.0, "another seed gives other encoders");
        Ok(())
    }
}
