//! LoRA (Hu et al., ICLR 2022, "LoRA: Low-Rank Adaptation of Large Language Models") as a knowledge editor, as
//! EasyEdit's multimodal LoRA editor applies it: low-rank adapters `ΔW = (α / r) B A` on the self-attention's
//! `q_proj` and `v_proj` (its `target_modules`) of every decoder layer (`layers = []`), `A (r, in)` Kaiming-uniform
//! and `B (out, r)` zero at the start (PEFT's init), trained on the edit with the target's cross-entropy (answer and
//! end of sequence), the base weights frozen: `num_steps` steps of SGD at `lr` with the rate multiplied by `lr_decay`
//! after each (EasyEdit's multimodal configs: 5 steps at 0.1, ExponentialLR 0.9), or Adam (its text configs). The
//! patch is the adapters, applied through projection hooks ([`crate::hooks::ProjHook`]); a stack of LoRA edits sums
//! their adapters.
//!
//! Departures from EasyEdit: plain LoRA (its Qwen3-VL config; its LLaVA-OneVision and Qwen2-VL configs name AdaLoRA);
//! no dropout on the adapters' input (deterministic edits).

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, SGD};
use serde::{Deserialize, Serialize};

use super::{EditContext, EditMethod, EditRequest, EditSequence, Patch, Provenance};
use crate::error::{Error, Result};
use crate::hooks::{Proj, ProjHook};
use crate::model::{kernels, VisionLanguageModel};
use crate::world::rng::Rng;

/// LoRA's hyper-parameters (`hparams/lora/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraParams {
    /// Decoder layers with adapters (empty: every layer).
    pub layers: Vec<usize>,
    /// Projections with adapters: `q_proj`, `k_proj`, `v_proj`, `o_proj`.
    pub target_modules: Vec<String>,
    /// `r`.
    pub rank: usize,
    /// `α` (the adapters' output is scaled by `α / r`).
    pub lora_alpha: f64,
    pub num_steps: usize,
    pub lr: f64,
    /// `sgd` or `adam`.
    pub optimizer: String,
    /// The learning rate is multiplied by this after every step (1: constant).
    pub lr_decay: f64,
}

impl Default for LoraParams {
    fn default() -> Self {
        Self {
            layers: vec![],
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            rank: 8,
            lora_alpha: 32.0,
            num_steps: 5,
            lr: 0.1,
            optimizer: "sgd".into(),
            lr_decay: 0.9,
        }
    }
}

/// One adapter: adds `scale · x Aᵀ Bᵀ` to its projection's output.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub proj: Proj,
    /// `(r, in)`.
    pub a: Tensor,
    /// `(out, r)`.
    pub b: Tensor,
    pub scale: f64,
}

impl ProjHook for LoraAdapter {
    fn proj(&self) -> Proj {
        self.proj
    }

    fn adapt(&self, _layer: usize, input: &Tensor) -> Result<Tensor> {
        let x = input.to_dtype(self.a.dtype())?;
        Ok((x.broadcast_matmul(&self.a.t()?)?.broadcast_matmul(&self.b.t()?)? * self.scale)?)
    }
}

/// The adapters of a patch, by (layer, projection).
pub type Adapters = BTreeMap<(usize, Proj), LoraAdapter>;

/// `(in, out)` of projection `p` in `model`'s layer `layer`.
pub fn projection_shape(model: &dyn VisionLanguageModel, layer: usize, p: Proj) -> Result<(usize, usize)> {
    let a = model.attention_parts(layer)?;
    let (d, q, kv) = (model.hidden_size(), a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim);
    Ok(match p {
        Proj::Q => (d, q),
        Proj::K | Proj::V => (d, kv),
        Proj::O => (q, d),
    })
}

enum Opt {
    Adam(AdamW),
    Sgd(SGD),
}

/// The LoRA editor.
pub struct Lora {
    pub params: LoraParams,
    sites: Vec<(usize, Proj)>,
    pub eos: u32,
}

impl Lora {
    /// LoRA on `model`: the layers must exist, the modules be attention projections, the rank at least 1.
    pub fn new(params: LoraParams, model: &dyn VisionLanguageModel, eos: u32) -> Result<Self> {
        let n = model.num_layers();
        if params.rank == 0 {
            return Err(Error::Invalid("LoRA rank must be at least 1".into()));
        }
        if !matches!(params.optimizer.as_str(), "sgd" | "adam") {
            return Err(Error::Invalid(format!("optimizer {:?} is not sgd or adam", params.optimizer)));
        }
        if let Some(l) = params.layers.iter().find(|&&l| l >= n) {
            return Err(Error::Invalid(format!("layer {l} is outside the model's {n} decoder layers (0..{n})")));
        }
        let projs = params
            .target_modules
            .iter()
            .map(|m| {
                Proj::parse(m).ok_or_else(|| {
                    Error::Invalid(format!("target module {m:?} is not q_proj, k_proj, v_proj or o_proj"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if projs.is_empty() {
            return Err(Error::Invalid("target_modules is empty".into()));
        }
        let layers: Vec<usize> = if params.layers.is_empty() { (0..n).collect() } else { params.layers.clone() };
        let sites = layers.iter().flat_map(|&l| projs.iter().map(move |&p| (l, p))).collect();
        Ok(Self { params, sites, eos })
    }
}

impl EditMethod for Lora {
    fn name(&self) -> &str {
        "lora"
    }

    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        let model = ctx.model;
        let seq =
            EditSequence::new(ctx.processor, &request.question, request.image.as_ref(), &request.target, self.eos)?;
        let inputs = seq.inputs(model)?;
        let base = ctx.stack_hooks()?;
        let (r, device) = (self.params.rank, model.device());
        let scale = self.params.lora_alpha / r as f64;
        let mut rng = Rng::derive(request.seed, "lora", 0);
        let mut vars = Vec::new();
        for &(layer, p) in &self.sites {
            let (fan_in, fan_out) = projection_shape(model, layer, p)?;
            // PEFT's init: A Kaiming-uniform with a = √5, which is U(−1/√in, 1/√in); B zero.
            let bound = 1.0 / (fan_in as f32).sqrt();
            let a: Vec<f32> = (0..r * fan_in).map(|_| rng.range(-bound, bound)).collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (r, fan_in), device)?)?;
            let b = Var::zeros((fan_out, r), DType::F32, device)?;
            vars.push((layer, p, a, b));
        }
        let all: Vec<Var> = vars.iter().flat_map(|(_, _, a, b)| [a.clone(), b.clone()]).collect();
        let mut opt = match self.params.optimizer.as_str() {
            "adam" => {
                Opt::Adam(AdamW::new(all, ParamsAdamW { lr: self.params.lr, weight_decay: 0.0, ..Default::default() })?)
            }
            _ => Opt::Sgd(SGD::new(all, self.params.lr)?),
        };
        let mut lr = self.params.lr;
        let n_t = seq.targets().len();
        let targets = Tensor::new(seq.targets(), device)?;
        let adapters = |vars: &[(usize, Proj, Var, Var)]| -> Adapters {
            vars.iter()
                .map(|(l, p, a, b)| {
                    let ad = LoraAdapter { proj: *p, a: a.as_tensor().clone(), b: b.as_tensor().clone(), scale };
                    ((*l, *p), ad)
                })
                .collect()
        };
        for _ in 0..self.params.num_steps {
            let mut hooks = base.clone();
            for ((l, _), ad) in adapters(&vars) {
                hooks.add_proj(l, Arc::new(ad));
            }
            let _scope = kernels::differentiable();
            let h = model.forward_inputs(&inputs, None, &hooks, &mut crate::hooks::Capture::none())?;
            let logits = model.logits(&h.narrow(1, seq.prompt_len - 1, n_t)?)?.squeeze(0)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
            lr *= self.params.lr_decay;
            match &mut opt {
                Opt::Adam(o) => {
                    o.backward_step(&loss)?;
                    o.set_learning_rate(lr);
                }
                Opt::Sgd(o) => {
                    o.backward_step(&loss)?;
                    o.set_learning_rate(lr);
                }
            }
        }
        let mut patch = Patch::new(Provenance::new(self.name(), &self.params, request)?, BTreeMap::new());
        patch.lora = adapters(&vars)
            .into_iter()
            .map(|(k, ad)| (k, LoraAdapter { a: ad.a.detach(), b: ad.b.detach(), ..ad }))
            .collect();
        Ok(patch)
    }
}
