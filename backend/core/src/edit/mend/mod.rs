//! MEND (Mitchell et al., ICLR 2022, "Fast Model Editing at Scale"), a baseline of the UniKE paper (Appendix D.2): a
//! small network per edited layer transforms the rank-one factors of the edit's gradient, `(u_t, δ_t) → (ũ_t, δ̃_t)`,
//! and the change is `ΔW_down = −η Σ_t ũ_t δ̃_t^T` with a learned step size `η` per layer. The network is an MLP with
//! a residual connection on the standardised concatenation `[u_t; δ_t]` (MEND §3.2: low-rank hidden layer, second
//! layer initialised to zero so that training starts from a scaled gradient step), trained on the training split with
//! `unike train-method mend`. It edits the down projections of the last `layers` decoder layers.

use std::path::Path;
use std::sync::Arc;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::gradient::EditGrad;
use super::hypernet::{self, GradientEditor, ParamSet, TrainCase, TrainParams, TrainStep};
use super::{EditContext, EditMethod, EditRequest, Patch};
use crate::error::{Error, Result};
use crate::model::Llava;
use crate::world::rng::Rng;

/// Hyper-parameters (`hparams/mend/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MendParams {
    /// Edit the last `layers` decoder layers (MEND: the last three MLPs).
    pub layers: usize,
    /// Hidden width of the gradient network.
    pub rank: usize,
    pub train: TrainParams,
}

impl Default for MendParams {
    fn default() -> Self {
        Self { layers: 2, rank: 64, train: TrainParams::default() }
    }
}

const FORMAT: &str = "unike-mend/1";

/// The gradient network.
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

    /// A fresh network for `model`: feature statistics and the initial step size are measured on `cases` (the step
    /// size so that the first changes have unit Frobenius norm on average).
    pub fn init(model: &Llava, params: MendParams, cases: &[TrainCase]) -> Result<Self> {
        let layers = hypernet::last_layers(model, params.layers)?;
        let (i, _, _) = model.text().mlp_gate_up(layers[0])?;
        let (inter, d) = i.dims2()?;
        let dev = model.device();
        let mut rng = Rng::derive(params.train.seed, "mend", 0);
        let mut set = ParamSet::default();
        let w = inter + d;
        for k in 0..layers.len() {
            let rows: Vec<Tensor> = cases
                .iter()
                .map(|c| Ok(Tensor::cat(&[&c.grad.layers[k].u, &c.grad.layers[k].delta], 1)?))
                .collect::<Result<_>>()?;
            let x = Tensor::cat(&rows, 0)?;
            let mean = x.mean(0)?;
            let std = (x.broadcast_sub(&mean)?.sqr()?.mean(0)? + 1e-12)?.sqrt()?;
            set.insert(format!("l{k}.mean"), mean)?;
            set.insert(format!("l{k}.std"), std)?;
            set.normal(&format!("l{k}.w1"), (w, params.rank), &mut rng, dev)?;
            set.insert(format!("l{k}.b1"), Tensor::zeros(params.rank, candle_core::DType::F32, dev)?)?;
            set.insert(format!("l{k}.w2"), Tensor::zeros((params.rank, w), candle_core::DType::F32, dev)?)?;
            set.insert(format!("l{k}.b2"), Tensor::zeros(w, candle_core::DType::F32, dev)?)?;
            set.insert(format!("l{k}.log_lr"), Tensor::zeros((), candle_core::DType::F32, dev)?)?;
        }
        let net = Self { params, layers, set };
        hypernet::init_step_sizes(&net.set, net.layers.len(), cases, |k, c| net.delta(k, &c.grad))?;
        Ok(net)
    }

    /// Writes `dir/net.{safetensors,json}` with the training curve.
    pub fn save(&self, dir: &Path, curve: &[TrainStep], data: &str) -> Result<()> {
        hypernet::save_net(&self.set, dir, FORMAT, &self.layers, &self.params, &curve, data)
    }

    /// Reads a network written by [`MendNet::save`] for `model`.
    pub fn load(dir: &Path, model: &Llava) -> Result<Self> {
        let (params, layers, set) = hypernet::load_net(dir, model, "mend", FORMAT, |p: &MendParams| p.layers)?;
        Ok(Self { params, layers, set })
    }
}

impl GradientEditor for MendNet {
    fn layers(&self) -> &[usize] {
        &self.layers
    }

    fn delta(&self, k: usize, grad: &EditGrad) -> Result<Tensor> {
        let g = grad.layers.get(k).ok_or_else(|| Error::Invalid(format!("no gradient of edited layer {k}")))?;
        let p = |n: &str| self.set.get(&format!("l{k}.{n}"));
        let inter = g.u.dim(1)?;
        let x = Tensor::cat(&[&g.u, &g.delta], 1)?.broadcast_sub(&p("mean")?)?.broadcast_div(&p("std")?)?;
        let h = x.matmul(&p("w1")?)?.broadcast_add(&p("b1")?)?.relu()?;
        let y = (&x + h.matmul(&p("w2")?)?.broadcast_add(&p("b2")?)?)?;
        let (u, d) = (y.narrow(1, 0, inter)?, y.narrow(1, inter, y.dim(1)? - inter)?);
        let lr = p("log_lr")?.exp()?;
        Ok(u.t()?.matmul(&d)?.broadcast_mul(&lr)?.neg()?)
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
