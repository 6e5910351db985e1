//! What the trained, gradient-based editors (KE and MEND) share: a [`GradientEditor`] maps an edit's gradient at the
//! last layers' MLP down projections ([`super::gradient`]) to a weight change `ΔW_down`, and is trained on the training
//! split ([`train`]) so that the change makes the edit and its rephrasings answer the target while unrelated inputs
//! keep their output distribution (the editing and locality losses of MEND §3 and KE §3). Parameters live in a
//! [`ParamSet`] that round-trips through `DIR/net.safetensors` + `DIR/net.json`.

pub mod data;
pub mod train;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::gradient::{edit_gradient, EditGrad};
use super::patch::{down_delta, up_delta};
use super::{EditContext, EditRequest, EditSequence, Patch, Provenance};
use crate::error::{Error, Result};
use crate::model::VisionLanguageModel;
use crate::world::rng::Rng;

pub use data::{prepare, TrainCase};
pub use train::{train, TrainStep};

/// How a gradient editor is trained (the `[train]` table of `hparams/<method>/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Training-split cases used (half VQA, half caption).
    pub cases: usize,
    /// Optimisation steps, each over `batch` cases.
    pub steps: usize,
    pub batch: usize,
    /// Adam learning rate of the network.
    pub lr: f64,
    /// Adam learning rate of the learned log step sizes.
    pub lr_step: f64,
    /// Weight of the locality term (KL to the unedited model on unrelated text and image questions).
    pub loc_weight: f64,
    pub seed: u64,
}

impl Default for TrainParams {
    fn default() -> Self {
        Self { cases: 600, steps: 1200, batch: 4, lr: 1e-3, lr_step: 1e-2, loc_weight: 1.0, seed: 0 }
    }
}

/// A network that turns an edit's gradient into down-projection changes.
pub trait GradientEditor: Send + Sync {
    /// The edited decoder layers, ascending.
    fn layers(&self) -> &[usize];
    /// `ΔW_down (i, d)` of the `k`-th edited layer. Differentiable with respect to the network's parameters.
    fn delta(&self, k: usize, grad: &EditGrad) -> Result<Tensor>;
    /// `ΔW_up (d, i)` of the `k`-th edited layer, for editors that change the up projections too (MEND as VLKEB
    /// applies it); `None` by default.
    fn up_delta(&self, _k: usize, _grad: &EditGrad) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// The parameters.
    fn params(&self) -> &ParamSet;
}

/// Named parameters: trained ones (`Var`) and fixed statistics.
#[derive(Debug, Clone, Default)]
pub struct ParamSet {
    vars: BTreeMap<String, Var>,
}

/// Parameters whose name ends like this are log step sizes (their own learning rate).
pub const STEP_SUFFIX: &str = "log_lr";

impl ParamSet {
    /// Adds a parameter with the given values.
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) -> Result<()> {
        self.vars.insert(name.into(), Var::from_tensor(&t.to_dtype(DType::F32)?)?);
        Ok(())
    }

    /// A `(rows, cols)` parameter drawn from `N(0, 1/rows)` with `rng` (deterministic).
    pub fn normal(&mut self, name: &str, shape: (usize, usize), rng: &mut Rng, dev: &Device) -> Result<()> {
        let scale = 1.0 / (shape.0 as f32).sqrt();
        let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.normal() * scale).collect();
        self.insert(name, Tensor::from_vec(v, shape, dev)?)
    }

    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.vars
            .get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| Error::Invalid(format!("network parameter {name:?} is missing")))
    }

    /// Sets a parameter's value (e.g. an initial step size measured on data).
    pub fn set(&self, name: &str, t: &Tensor) -> Result<()> {
        let v = self.vars.get(name).ok_or_else(|| Error::Invalid(format!("network parameter {name:?} is missing")))?;
        Ok(v.set(t)?)
    }

    /// Trainable parameters, split into (network, log step sizes); names in `fixed` are left out.
    pub fn trainable(&self, fixed: &[&str]) -> (Vec<Var>, Vec<Var>) {
        let mut net = Vec::new();
        let mut steps = Vec::new();
        for (k, v) in &self.vars {
            if fixed.iter().any(|f| k.ends_with(f)) {
                continue;
            }
            if k.ends_with(STEP_SUFFIX) {
                steps.push(v.clone());
            } else {
                net.push(v.clone());
            }
        }
        (net, steps)
    }

    pub fn num_parameters(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// Writes `dir/net.safetensors` and `dir/net.json` (`header` plus the names).
    pub fn save(&self, dir: &Path, header: serde_json::Value) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|err| Error::Io { path: dir.to_path_buf(), err })?;
        let t: HashMap<String, Tensor> = self.vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        candle_core::safetensors::save(&t, dir.join("net.safetensors"))?;
        let js = dir.join("net.json");
        let text = serde_json::to_string_pretty(&header).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(&js, text).map_err(|err| Error::Io { path: js, err })
    }

    /// Reads `dir/net.json` (checking its `format`) and `dir/net.safetensors`; returns the header and the parameters.
    pub fn load(dir: &Path, format: &str, device: &Device) -> Result<(serde_json::Value, Self)> {
        let js = dir.join("net.json");
        let text = std::fs::read_to_string(&js).map_err(|err| Error::Io { path: js.clone(), err })?;
        let header: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::Data { path: js.clone(), msg: e.to_string() })?;
        if header.get("format").and_then(|f| f.as_str()) != Some(format) {
            return Err(Error::Data { path: js, msg: format!("not a {format:?} file") });
        }
        let st = dir.join("net.safetensors");
        let tensors = candle_core::safetensors::load(&st, device)?;
        let mut set = Self::default();
        for (k, t) in tensors {
            set.insert(k, t)?;
        }
        Ok((header, set))
    }
}

/// The last `n` decoder layers of `model`, ascending (the layers the trained editors act in).
pub fn last_layers(model: &dyn VisionLanguageModel, n: usize) -> Result<Vec<usize>> {
    let total = model.num_layers();
    if n == 0 || n > total {
        return Err(Error::Invalid(format!("cannot edit the last {n} of {total} layers")));
    }
    Ok((total - n..total).collect())
}

/// Sets each edited layer's `l{k}.log_lr` so that `change(k, case)` (the layer's change at unit step size) has unit
/// Frobenius norm on average over `cases`.
pub fn init_step_sizes(
    set: &ParamSet,
    layers: usize,
    cases: &[TrainCase],
    change: impl Fn(usize, &TrainCase) -> Result<Tensor>,
) -> Result<()> {
    for k in 0..layers {
        let mut norm = 0f32;
        for c in cases {
            norm += change(k, c)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        }
        let mean = (norm / cases.len().max(1) as f32).max(1e-12);
        let name = format!("l{k}.{STEP_SUFFIX}");
        let dev = set.get(&name)?.device().clone();
        set.set(&name, &Tensor::new(-mean.ln(), &dev)?)?;
    }
    Ok(())
}

/// Writes a trained network: `dir/net.{safetensors,json}`, the header holding the format, layers, hyper-parameters,
/// training curve, data source and parameter count.
pub fn save_net(
    set: &ParamSet,
    dir: &Path,
    format: &str,
    layers: &[usize],
    params: &impl Serialize,
    curve: &impl Serialize,
    data: &str,
) -> Result<()> {
    let header = serde_json::json!({
        "format": format, "layers": layers, "params": params, "curve": curve, "data": data,
        "parameters": set.num_parameters(),
    });
    set.save(dir, header)
}

/// Reads a network written by [`save_net`] for `model`: its hyper-parameters, edited layers (the last `layers_of`
/// of them) and parameters. A missing network says how to train it.
pub fn load_net<P: serde::de::DeserializeOwned>(
    dir: &Path,
    model: &dyn VisionLanguageModel,
    method: &str,
    format: &str,
    layers_of: impl Fn(&P) -> usize,
) -> Result<(P, Vec<usize>, ParamSet)> {
    if !dir.join("net.json").is_file() {
        return Err(missing(method, dir));
    }
    let (header, set) = ParamSet::load(dir, format, model.device())?;
    let params: P = serde_json::from_value(header.get("params").cloned().unwrap_or_default())
        .map_err(|e| Error::Data { path: dir.join("net.json"), msg: format!("params: {e}") })?;
    let layers = last_layers(model, layers_of(&params))?;
    Ok((params, layers, set))
}

/// Message of a missing trained artifact.
fn missing(method: &str, dir: &Path) -> Error {
    Error::Invalid(format!(
        "{method} needs its trained network in {}: run `unike train-method {method}` (or `unike bench`, which trains it \
         on demand)",
        dir.display()
    ))
}

/// One edit with a gradient editor: the edit's gradient under the current stack, the network's change, as a patch
/// of down-projection deltas.
pub fn gradient_edit(
    name: &str,
    hparams: &impl Serialize,
    net: &dyn GradientEditor,
    eos: u32,
    ctx: &EditContext<'_>,
    request: &EditRequest,
) -> Result<Patch> {
    let seq = EditSequence::new(ctx.processor, &request.question, request.image.as_ref(), &request.target, eos)?;
    let grad = edit_gradient(ctx.model, &seq, net.layers(), &ctx.stack_hooks()?)?;
    let mut patch = Patch::new(Provenance::new(name, hparams, request)?, Default::default());
    for (k, &l) in net.layers().iter().enumerate() {
        let down = net.delta(k, &grad)?.detach();
        if let Some(up) = net.up_delta(k, &grad)? {
            patch.up_deltas.insert(l, up_delta(ctx.model, l, up.detach(), Some(down.clone()))?);
        }
        patch.mlp_deltas.insert(l, down_delta(ctx.model, l, down)?);
    }
    Ok(patch)
}
