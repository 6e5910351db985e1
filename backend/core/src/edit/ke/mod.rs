//! KE, KnowledgeEditor (De Cao et al., EMNLP 2021, "Editing Factual Knowledge in Language Models"), a baseline of the
//! UniKE paper (Appendix D.2): a hyper-network conditioned on the edit predicts a per-entry gating of the edit's
//! gradient and an additive term, `ΔW = η ((a γ^T) ⊙ (−∇W) + a' β^T)` (KE §3, Eq. 4–5): two conditioned vectors
//! over the input units, each its own softmax, `a = i · softmax(W_a c + b_a)` and `a' = i · softmax(W_a' c + b_a')`,
//! `γ = 1 + W_γ c` and `β = W_β c` over the output units, and one learned scale `η` (KE's `σ(η)`; here `exp`, so
//! that it starts at a measured gradient step). KE encodes the edit `(x, y, a)` with an
//! LSTM; here `c` is the model's own representation of the edit (its last layer averaged over the answer positions,
//! RMS-normalised), so no second text encoder is trained. Trained on the training split with `unike train-method ke`
//! (KE's constrained objective in Lagrangian form: the target's cross-entropy plus a KL term on unrelated inputs).
//! The conditioning weights start at zero, so training starts from a gradient step of a measured size.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use super::gradient::EditGrad;
use super::hypernet::{self, GradientEditor, ParamSet, TrainCase, TrainParams, TrainStep};
use super::{EditContext, EditMethod, EditRequest, Patch};
use crate::error::{Error, Result};
use crate::model::VisionLanguageModel;

/// Hyper-parameters (`hparams/ke/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeParams {
    /// Edit the last `layers` decoder layers.
    pub layers: usize,
    pub train: TrainParams,
}

impl Default for KeParams {
    fn default() -> Self {
        Self { layers: 2, train: TrainParams::default() }
    }
}

/// Version 2 (2026-12-06): separate softmax vectors for the two terms, one learned scale on both.
const FORMAT: &str = "unike-ke/2";

/// The hyper-network.
pub struct KeNet {
    pub params: KeParams,
    layers: Vec<usize>,
    set: ParamSet,
}

impl KeNet {
    /// The network's parameters.
    pub fn set(&self) -> &ParamSet {
        &self.set
    }

    /// A fresh network for `model`; the initial step size gives the first changes unit Frobenius norm on `cases`.
    pub fn init(model: &dyn VisionLanguageModel, params: KeParams, cases: &[TrainCase]) -> Result<Self> {
        let layers = hypernet::last_layers(model, params.layers)?;
        let (inter, d) = (model.ffn_parts(layers[0])?.width()?, model.hidden_size());
        let dev = model.device();
        let mut set = ParamSet::default();
        for k in 0..layers.len() {
            set.insert(format!("l{k}.w_a"), Tensor::zeros((d, inter), DType::F32, dev)?)?;
            set.insert(format!("l{k}.b_a"), Tensor::zeros(inter, DType::F32, dev)?)?;
            set.insert(format!("l{k}.w_a2"), Tensor::zeros((d, inter), DType::F32, dev)?)?;
            set.insert(format!("l{k}.b_a2"), Tensor::zeros(inter, DType::F32, dev)?)?;
            set.insert(format!("l{k}.w_gamma"), Tensor::zeros((d, d), DType::F32, dev)?)?;
            set.insert(format!("l{k}.w_beta"), Tensor::zeros((d, d), DType::F32, dev)?)?;
            set.insert(format!("l{k}.log_lr"), Tensor::zeros((), DType::F32, dev)?)?;
        }
        let net = Self { params, layers, set };
        hypernet::init_step_sizes(&net.set, net.layers.len(), cases, |k, c| c.grad.layers[k].full())?;
        Ok(net)
    }

    /// Writes `dir/net.{safetensors,json}` with the training curve.
    pub fn save(&self, dir: &Path, curve: &[TrainStep], data: &str) -> Result<()> {
        hypernet::save_net(&self.set, dir, FORMAT, &self.layers, &self.params, &curve, data)
    }

    /// Reads a network written by [`KeNet::save`] for `model`.
    pub fn load(dir: &Path, model: &dyn VisionLanguageModel) -> Result<Self> {
        let (params, layers, set) = hypernet::load_net(dir, model, "ke", FORMAT, |p: &KeParams| p.layers)?;
        Ok(Self { params, layers, set })
    }
}

impl GradientEditor for KeNet {
    fn layers(&self) -> &[usize] {
        &self.layers
    }

    fn delta(&self, k: usize, grad: &EditGrad) -> Result<Tensor> {
        let g = grad.layers.get(k).ok_or_else(|| Error::Invalid(format!("no gradient of edited layer {k}")))?;
        let p = |n: &str| self.set.get(&format!("l{k}.{n}"));
        let c = &grad.condition;
        let rms = (c.sqr()?.mean_all()? + 1e-12)?.sqrt()?;
        let c = c.broadcast_div(&rms)?.unsqueeze(0)?;
        let inter = g.u.dim(1)?;
        let softmax = |w: &str, b: &str| -> Result<Tensor> {
            let z = c.matmul(&p(w)?)?.broadcast_add(&p(b)?)?;
            Ok((candle_nn::ops::softmax(&z, D::Minus1)? * inter as f64)?)
        };
        let (a, a2) = (softmax("w_a", "b_a")?, softmax("w_a2", "b_a2")?);
        let gamma = (c.matmul(&p("w_gamma")?)? + 1.0)?;
        let beta = c.matmul(&p("w_beta")?)?;
        let eta = p("log_lr")?.exp()?;
        let gated = (a.t()?.matmul(&gamma)? * g.full()?)?.neg()?;
        Ok((gated + a2.t()?.matmul(&beta)?)?.broadcast_mul(&eta)?)
    }

    fn params(&self) -> &ParamSet {
        &self.set
    }
}

/// The method.
pub struct Ke {
    pub net: Arc<KeNet>,
    pub eos: u32,
}

impl EditMethod for Ke {
    fn name(&self) -> &str {
        "ke"
    }

    fn resident_bytes(&self) -> usize {
        self.net.set().num_parameters() * 4
    }

    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        hypernet::gradient_edit(self.name(), &self.net.params, self.net.as_ref(), self.eos, ctx, request)
    }
}
