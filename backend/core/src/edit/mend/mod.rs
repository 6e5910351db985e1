//! MEND (Mitchell et al., ICLR 2022, "Fast Model Editing at Scale"), a baseline of the UniKE paper (Appendix D.2): a
//! small network transforms the rank-one factors of the edit's gradient, `(x_t, δ_t) → (x̃_t, δ̃_t)`, and the change is
//! `ΔW = −η_l Σ_t x̃_t δ̃_t^T` with a learned step size `η_l` per edited weight. As MEND: one network per weight
//! *shape*, shared by the layers of that shape, each layer with its own scale and shift of the network's output (MEND's
//! per-layer "modes"); the network is an MLP with a residual connection on the standardised concatenation `[x_t; δ_t]`
//! (low-rank hidden layer, second layer initialised to zero so that training starts from a scaled gradient step); only
//! positions that carry a gradient enter (MEND's mask; [`super::gradient`]), both for the standardisation statistics
//! and for the change. As VLKEB applies MEND to LLaVA, it edits the up and the down projections of the last `layers`
//! MLPs (two shapes, so two networks). Trained on the training split with `unike train-method mend`.

use std::path::Path;
use std::sync::Arc;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::gradient::{EditGrad, LayerGrad};
use super::hypernet::{self, GradientEditor, ParamSet, TrainCase, TrainParams, TrainStep};
use super::{EditContext, EditMethod, EditRequest, Patch};
use crate::error::{Error, Result};
use crate::model::VisionLanguageModel;
use crate::world::rng::Rng;

/// Hyper-parameters (`hparams/mend/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MendParams {
    /// Edit the last `layers` decoder layers (MEND: the last three MLPs).
    pub layers: usize,
    /// Hidden width of the gradient networks.
    pub rank: usize,
    pub train: TrainParams,
}

impl Default for MendParams {
    fn default() -> Self {
        Self { layers: 2, rank: 64, train: TrainParams::default() }
    }
}

/// Version 2 (2026-12-06): one network per weight shape with per-layer scale and shift, the gradient mask, the up
/// projections edited too.
const FORMAT: &str = "unike-mend/2";

/// The edited projections: each its own weight shape, so each its own network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proj {
    /// `W_down (i → d)`: factors `[u_t (i); δ_t (d)]`.
    Down,
    /// `W_up (d → i)`: factors `[q_t (d); δ_up,t (i)]`.
    Up,
}

impl Proj {
    const ALL: [Proj; 2] = [Proj::Down, Proj::Up];

    fn name(self) -> &'static str {
        match self {
            Proj::Down => "down",
            Proj::Up => "up",
        }
    }

    /// The factors `[x_t; δ_t]` of layer gradient `g`, `(s, in + out)`, and the input width.
    fn factors(self, g: &LayerGrad) -> Result<(Tensor, usize)> {
        let (x, d) = match self {
            Proj::Down => (&g.u, &g.delta),
            Proj::Up => (&g.q, &g.delta_up),
        };
        Ok((Tensor::cat(&[x, d], 1)?, x.dim(1)?))
    }
}

/// The gradient networks.
pub struct MendNet {
    pub params: MendParams,
    layers: Vec<usize>,
    set: ParamSet,
}

impl MendNet {
    /// The network's parameters.
    pub fn set(&self) -> &ParamSet {
        &self.set
    }

    /// Fresh networks for `model`: feature statistics and the initial step sizes are measured on `cases` (each step
    /// size so that the first changes have unit Frobenius norm on average).
    pub fn init(model: &dyn VisionLanguageModel, params: MendParams, cases: &[TrainCase]) -> Result<Self> {
        let layers = hypernet::last_layers(model, params.layers)?;
        let (inter, d) = (model.ffn_parts(layers[0])?.width()?, model.hidden_size());
        let dev = model.device();
        let mut rng = Rng::derive(params.train.seed, "mend", 0);
        let mut set = ParamSet::default();
        let w = inter + d;
        for proj in Proj::ALL {
            let p = proj.name();
            // Statistics over the masked positions of every edited layer of this shape (MEND normalises per network).
            let rows: Vec<Tensor> = cases
                .iter()
                .flat_map(|c| c.grad.layers.iter())
                .map(|g| Ok(proj.factors(g)?.0))
                .collect::<Result<_>>()?;
            let x = Tensor::cat(&rows, 0)?;
            let mean = x.mean(0)?;
            let std = (x.broadcast_sub(&mean)?.sqr()?.mean(0)? + 1e-12)?.sqrt()?;
            set.insert(format!("{p}.mean"), mean)?;
            set.insert(format!("{p}.std"), std)?;
            set.normal(&format!("{p}.w1"), (w, params.rank), &mut rng, dev)?;
            set.insert(format!("{p}.b1"), Tensor::zeros(params.rank, candle_core::DType::F32, dev)?)?;
            set.insert(format!("{p}.w2"), Tensor::zeros((params.rank, w), candle_core::DType::F32, dev)?)?;
            set.insert(format!("{p}.b2"), Tensor::zeros(w, candle_core::DType::F32, dev)?)?;
            for k in 0..layers.len() {
                set.insert(format!("{p}.l{k}.scale"), Tensor::ones(w, candle_core::DType::F32, dev)?)?;
                set.insert(format!("{p}.l{k}.shift"), Tensor::zeros(w, candle_core::DType::F32, dev)?)?;
                set.insert(
                    format!("{p}.l{k}.{}", hypernet::STEP_SUFFIX),
                    Tensor::zeros((), candle_core::DType::F32, dev)?,
                )?;
            }
        }
        let net = Self { params, layers, set };
        for proj in Proj::ALL {
            for k in 0..net.layers.len() {
                let mut norm = 0f32;
                for c in cases {
                    norm += net.change(proj, k, &c.grad)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
                }
                let mean = (norm / cases.len().max(1) as f32).max(1e-12);
                let name = format!("{}.l{k}.{}", proj.name(), hypernet::STEP_SUFFIX);
                net.set.set(&name, &Tensor::new(-mean.ln(), dev)?)?;
            }
        }
        Ok(net)
    }

    /// Writes `dir/net.{safetensors,json}` with the training curve.
    pub fn save(&self, dir: &Path, curve: &[TrainStep], data: &str) -> Result<()> {
        hypernet::save_net(&self.set, dir, FORMAT, &self.layers, &self.params, &curve, data)
    }

    /// Reads a network written by [`MendNet::save`] for `model`.
    pub fn load(dir: &Path, model: &dyn VisionLanguageModel) -> Result<Self> {
        let (params, layers, set) = hypernet::load_net(dir, model, "mend", FORMAT, |p: &MendParams| p.layers)?;
        Ok(Self { params, layers, set })
    }

    /// The change `−η Σ_t x̃_t δ̃_t^T` of projection `proj` at the `k`-th edited layer: `(i, d)` for the down
    /// projection, `(d, i)` for the up projection.
    fn change(&self, proj: Proj, k: usize, grad: &EditGrad) -> Result<Tensor> {
        let g = grad.layers.get(k).ok_or_else(|| Error::Invalid(format!("no gradient of edited layer {k}")))?;
        let p = |n: &str| self.set.get(&format!("{}.{n}", proj.name()));
        let (x, width) = proj.factors(g)?;
        let x = x.broadcast_sub(&p("mean")?)?.broadcast_div(&p("std")?)?;
        let h = x.matmul(&p("w1")?)?.broadcast_add(&p("b1")?)?.relu()?;
        let out = h.matmul(&p("w2")?)?.broadcast_add(&p("b2")?)?;
        let out = out.broadcast_mul(&p(&format!("l{k}.scale"))?)?.broadcast_add(&p(&format!("l{k}.shift"))?)?;
        let y = (&x + out)?;
        let (a, b) = (y.narrow(1, 0, width)?, y.narrow(1, width, y.dim(1)? - width)?);
        let lr = p(&format!("l{k}.{}", hypernet::STEP_SUFFIX))?.exp()?;
        Ok(a.t()?.matmul(&b)?.broadcast_mul(&lr)?.neg()?)
    }
}

impl GradientEditor for MendNet {
    fn layers(&self) -> &[usize] {
        &self.layers
    }

    fn delta(&self, k: usize, grad: &EditGrad) -> Result<Tensor> {
        self.change(Proj::Down, k, grad)
    }

    fn up_delta(&self, k: usize, grad: &EditGrad) -> Result<Option<Tensor>> {
        Ok(Some(self.change(Proj::Up, k, grad)?))
    }

    fn params(&self) -> &ParamSet {
        &self.set
    }
}

/// The method.
pub struct Mend {
    pub net: Arc<MendNet>,
    pub eos: u32,
}

impl EditMethod for Mend {
    fn name(&self) -> &str {
        "mend"
    }

    fn resident_bytes(&self) -> usize {
        self.net.set().num_parameters() * 4
    }

    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        hypernet::gradient_edit(self.name(), &self.net.params, self.net.as_ref(), self.eos, ctx, request)
    }
}
