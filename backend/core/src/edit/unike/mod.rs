//! UniKE (Pan et al., NeurIPS 2024, "Towards Unified Multimodal Editing with Enhanced Knowledge Collaboration"):
//! intrinsic editing (extra FFN key-value neurons in the last layers, §3.2 Eq. 3) and latent in-context editing
//! (retrieved hidden states of in-context knowledge shift the self-attention output, Eq. 2) in the same layers, with
//! knowledge disentangled into a truthfulness space (its editing direction ζ regulates the new neurons' values, Eq. 6)
//! and a semantic space (it sets α from the relevance of the retrieved knowledge, Eq. 7).
//!
//! An edit's patch holds the new neurons, the edit's own `(h_sem, h_pos)` entries (they join the shared memory of
//! [`memory`] for retrieval) and, for the "intrinsic + vanilla IKE" ablation, the encoded demonstration. Ablations of
//! Table 4 and Fig. 4 are variants: `unike:<name>[/<name>...]`, see [`UniKeParams::apply_variant`].

pub mod encoders;
pub mod explore;
pub mod latent;
pub mod memory;
pub mod retrieve;
pub mod shared;
pub mod unchanged;
pub mod variant;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use self::encoders::{EncoderParams, Encoders};
use self::latent::{Alpha, Knowledge};
use self::memory::{knowledge_states, KnowledgeMemory};
use self::unchanged::MemoryBase;
use super::ike::demonstration;
use super::memory_prefix::{memory_queries_fast, MemoryPrefix};
use super::neurons::{memory_queries, stack_memory, train_neurons, NeuronParams, NeuronSetting};
use super::patch::Retrieval;
use super::{EditContext, EditMethod, EditRequest, EditSequence, Patch, Provenance};
use crate::error::{Error, Result};
use crate::hooks::Hooks;
use crate::model::VisionLanguageModel;
use crate::world::rng::Rng;

/// Where the editing direction of the new neurons comes from (Fig. 4c).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Zeta {
    /// ζ from the truthfulness space (the method).
    Truthful,
    /// ζ from the semantic space (ablation).
    Semantic,
    /// A random direction of the same norm (ablation).
    Random,
    /// No regulation (ablation).
    None,
}

/// The new neurons (T-Patcher's terms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrinsicParams {
    pub neurons: usize,
    pub steps: usize,
    pub lr: f64,
    pub edit_margin: f32,
    pub memory_margin: f32,
    pub edit_weight: f32,
    pub memory_weight: f32,
    /// Train the keys too (T-Patcher); false: values only, from keys initialised on the edit and the memory, until
    /// the target's cross-entropy is at most `stop_loss` (see `neurons::NeuronParams`).
    pub train_keys: bool,
    pub stop_loss: f32,
    /// Learning rate of the keys and biases when they are trained, if other than `lr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_lr: Option<f64>,
}

/// Hyper-parameters (`hparams/unike/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UniKeParams {
    /// Both kinds of editing act in the last `layers` decoder layers (paper: 4).
    pub layers: usize,
    /// Intrinsic editing (new neurons) on.
    pub intrinsic: bool,
    /// Latent in-context editing on.
    pub latent: bool,
    /// Vanilla IKE (the edit as an in-context demonstration) instead of latent IKE.
    pub vanilla_ike: bool,
    /// Retrieved memory entries per position (paper: 40).
    pub top_k: usize,
    /// α: adaptive (Eq. 7) or fixed (Eq. 2).
    pub alpha: Alpha,
    /// Scale of `ζ'` added to the new values (Eq. 6).
    pub beta: f32,
    pub zeta: Zeta,
    pub intrinsic_params: IntrinsicParams,
    /// Triplets `unike build-memory` collects.
    pub memory_size: usize,
    pub encoders: EncoderParams,
}

impl Default for UniKeParams {
    fn default() -> Self {
        Self {
            layers: 2,
            intrinsic: true,
            latent: true,
            vanilla_ike: false,
            top_k: 40,
            alpha: Alpha::Adaptive,
            beta: 0.1,
            zeta: Zeta::Truthful,
            intrinsic_params: IntrinsicParams {
                neurons: 10,
                steps: 100,
                lr: 0.5,
                edit_margin: 2.0,
                memory_margin: 0.5,
                edit_weight: 1.0,
                memory_weight: 1.0,
                train_keys: false,
                key_lr: None,
                stop_loss: 0.02,
            },
            memory_size: 6000,
            encoders: EncoderParams::default(),
        }
    }
}

/// Ablation variants, as `unike:<name>`.
pub const VARIANTS: [(&str, &str); 13] = [
    ("only-intrinsic", "Table 4 row 1: new neurons only, no ζ"),
    ("only-latent", "Table 4 row 2: latent IKE only, fixed α"),
    ("intrinsic+ike", "Table 4 row 3: new neurons + the edit as an in-context demonstration"),
    ("intrinsic+latent", "Table 4 row 4: new neurons + latent IKE, no collaboration (fixed α, no ζ)"),
    ("full", "Table 4 row 5: the method (the default)"),
    ("zeta-none", "Fig. 4c: no ζ"),
    ("zeta-random", "Fig. 4c: a random direction instead of ζ"),
    ("zeta-semantic", "Fig. 4c: ζ from the semantic space"),
    ("alpha=X", "Fig. 4b: fixed α = X in [0, 1], the in-context knowledge's share (0: none)"),
    ("k=N", "Fig. 4a: N retrieved entries"),
    ("adaptive", "adaptive α (after alpha=X)"),
    ("train-keys", "keys and values at one learning rate of 0.05 (the 2026-12-06 measurement variant)"),
    ("values-only", "the intrinsic training before issue 15: values only, until the target is reached (erases ζ)"),
];

/// α (the knowledge's share) of the variants without collaboration.
pub const FIXED_ALPHA: f32 = 0.2;

impl UniKeParams {
    /// Applies a list of variants separated by `/` (`,` too, outside the CLI whose `--methods` splits on commas) (see [`VARIANTS`]).
    /// Values are bounded and one mode at most is named (see [`variant`]).
    pub fn apply_variant(&mut self, variant: &str) -> Result<()> {
        variant::check(variant, bad_variant)?;
        for v in variant.split(['/', ',']).map(str::trim).filter(|v| !v.is_empty()) {
            match v {
                "full" => {}
                "only-intrinsic" => {
                    (self.latent, self.vanilla_ike, self.zeta) = (false, false, Zeta::None);
                }
                "only-latent" => {
                    (self.intrinsic, self.latent, self.vanilla_ike) = (false, true, false);
                    (self.alpha, self.zeta) = (Alpha::Fixed(FIXED_ALPHA), Zeta::None);
                }
                "intrinsic+ike" => {
                    (self.latent, self.vanilla_ike, self.zeta) = (false, true, Zeta::None);
                }
                "intrinsic+latent" => {
                    (self.alpha, self.zeta) = (Alpha::Fixed(FIXED_ALPHA), Zeta::None);
                }
                "zeta-none" => self.zeta = Zeta::None,
                "zeta-random" => self.zeta = Zeta::Random,
                "zeta-semantic" => self.zeta = Zeta::Semantic,
                "adaptive" => self.alpha = Alpha::Adaptive,
                // The measurement variant of 2026-12-06: keys and values at one learning rate of 0.05.
                "train-keys" => {
                    let p = &mut self.intrinsic_params;
                    (p.train_keys, p.lr, p.key_lr) = (true, 0.05, None);
                }
                // The intrinsic training before issue 15: values only, until the target's cross-entropy is at most
                // `stop_loss`, at most 100 steps at lr 1.0 (ζ is erased by it).
                "values-only" => {
                    let p = &mut self.intrinsic_params;
                    (p.train_keys, p.steps, p.lr, p.key_lr) = (false, 100, 1.0, None);
                }
                other => {
                    if let Some(x) = other.strip_prefix("alpha=") {
                        let a: f32 = x.parse().map_err(|_| bad_variant(other))?;
                        if !(0.0..=1.0).contains(&a) {
                            return Err(bad_variant(other));
                        }
                        self.alpha = Alpha::Fixed(a);
                    } else if let Some(x) = other.strip_prefix("k=") {
                        self.top_k = x.parse().ok().filter(|k| *k > 0).ok_or_else(|| bad_variant(other))?;
                    } else {
                        return Err(bad_variant(other));
                    }
                }
            }
        }
        Ok(())
    }

    fn neuron_params(&self) -> NeuronParams {
        let p = &self.intrinsic_params;
        NeuronParams {
            last_layers: self.layers,
            neurons: p.neurons,
            steps: p.steps,
            lr: p.lr,
            key_lr: p.key_lr,
            edit_margin: p.edit_margin,
            memory_margin: p.memory_margin,
            edit_weight: p.edit_weight,
            memory_weight: p.memory_weight,
            train_keys: p.train_keys,
            stop_loss: p.stop_loss,
            per_mistake: false,
            relative_margin: None,
        }
    }
}

fn bad_variant(v: &str) -> Error {
    let known: Vec<&str> = VARIANTS.iter().map(|(n, _)| *n).collect();
    Error::Invalid(format!("unknown UniKE variant {v:?} (known: {})", known.join(", ")))
}

/// The trained artifacts of a model: `DIR/unike/memory.*` and `DIR/unike/encoders.*`.
pub struct Artifacts {
    pub memory: KnowledgeMemory,
    pub encoders: Arc<Encoders>,
}

impl Artifacts {
    /// The artifact directory of a model directory.
    pub fn dir(model_dir: &Path) -> std::path::PathBuf {
        model_dir.join("unike")
    }

    /// True when both the memory and the encoders are there.
    pub fn present(model_dir: &Path) -> bool {
        let d = Self::dir(model_dir);
        d.join("memory.safetensors").is_file() && d.join("encoders.safetensors").is_file()
    }

    /// Loads both; a clear error says how to build them when they are missing.
    pub fn load(model_dir: &Path, device: &candle_core::Device) -> Result<Self> {
        let d = Self::dir(model_dir);
        if !Self::present(model_dir) {
            return Err(Error::Invalid(format!(
                "UniKE needs its knowledge memory and encoders in {}: run `unike build-memory` then `unike \
                 train-encoders` (or `unike bench`, which builds them on demand)",
                d.display()
            )));
        }
        Ok(Self { memory: KnowledgeMemory::load(&d, device)?, encoders: Arc::new(Encoders::load(&d, device)?) })
    }
}

/// The method.
pub struct UniKe {
    name: String,
    pub params: UniKeParams,
    knowledge: Option<Arc<Knowledge>>,
    encoders: Arc<Encoders>,
    memory: Vec<EditSequence>,
    eos: u32,
    unedited: OnceLock<BTreeMap<usize, Tensor>>,
    /// `memory`'s residual stream below the edited layers (the same under every stack whose hooks sit above).
    prefix: MemoryPrefix,
    /// `memory`'s FFN inputs under the shared knowledge alone (what a stack of UniKE edits leaves unchanged).
    base: MemoryBase,
    /// What `unedited`, `prefix` and `base` weigh once filled (by the first edits on an empty stack and on a stack).
    cache_bytes: usize,
}

impl UniKe {
    /// `name`: as the CLI spelled it (`unike` or `unike:<variant>`); `memory`: unrelated training questions
    /// (T-Patcher's locality terms).
    pub fn new(
        name: &str,
        params: UniKeParams,
        model: &dyn VisionLanguageModel,
        artifacts: &Artifacts,
        memory: Vec<EditSequence>,
        eos: u32,
    ) -> Result<Self> {
        let layers = Self::check(&params, model)?;
        let knowledge = if params.latent {
            Some(Arc::new(Knowledge::new(model, &artifacts.memory, artifacts.encoders.clone(), &layers)?))
        } else {
            None
        };
        Ok(Self::from_parts(name, params, model, knowledge, artifacts.encoders.clone(), memory, eos))
    }

    /// As [`UniKe::new`] with the artifacts of `model_dir`, whose prepared knowledge is shared with every other
    /// variant built from them in this process while one of them, or a patch of one, holds it ([`shared`]): variants
    /// differ in how they retrieve, not in what, so a visitor asking for many variants does not multiply it.
    pub fn from_dir(
        name: &str,
        params: UniKeParams,
        model: &dyn VisionLanguageModel,
        model_dir: &Path,
        memory: Vec<EditSequence>,
        eos: u32,
    ) -> Result<Self> {
        let layers = Self::check(&params, model)?;
        let (knowledge, encoders) = shared::knowledge(model, model_dir, &layers)?;
        let knowledge = params.latent.then_some(knowledge);
        Ok(Self::from_parts(name, params, model, knowledge, encoders, memory, eos))
    }

    /// The edited layers, after checking that `params` edit something in layers the model has.
    fn check(params: &UniKeParams, model: &dyn VisionLanguageModel) -> Result<Vec<usize>> {
        let n = model.num_layers();
        if params.layers == 0 || params.layers > n {
            return Err(Error::Invalid(format!("UniKE layers must be in 1..={n}, not {}", params.layers)));
        }
        if !params.intrinsic && !params.latent && !params.vanilla_ike {
            return Err(Error::Invalid("this UniKE variant edits nothing".into()));
        }
        Ok((n - params.layers..n).collect())
    }

    fn from_parts(
        name: &str,
        params: UniKeParams,
        model: &dyn VisionLanguageModel,
        knowledge: Option<Arc<Knowledge>>,
        encoders: Arc<Encoders>,
        memory: Vec<EditSequence>,
        eos: u32,
    ) -> Self {
        let d = model.hidden_size();
        let layers = params.layers;
        let cache_bytes = if params.intrinsic {
            let base = if params.latent { MemoryBase::expected_bytes(&memory, layers, d) } else { 0 };
            // The memory's queries on an empty stack (kept once computed), its residuals, the base.
            let positions: usize = memory.iter().map(|s| s.ids.len()).sum();
            layers * positions * d * 4 + MemoryPrefix::expected_bytes(&memory, d) + base
        } else {
            0
        };
        Self {
            name: name.to_string(),
            params,
            knowledge,
            encoders,
            memory,
            eos,
            unedited: OnceLock::new(),
            prefix: MemoryPrefix::default(),
            base: MemoryBase::default(),
            cache_bytes,
        }
    }

    fn layers(&self, model: &dyn VisionLanguageModel) -> Vec<usize> {
        let n = model.num_layers();
        (n - self.params.layers..n).collect()
    }

    /// `β·ζ'` per edited layer, as the variant asks.
    fn value_offsets(&self, layers: &[usize], seed: u64) -> Result<BTreeMap<usize, Tensor>> {
        let mut out = BTreeMap::new();
        if !self.params.intrinsic || self.params.beta == 0.0 {
            return Ok(out);
        }
        for &l in layers {
            let e = self.encoders.layer(l)?;
            let z = match self.params.zeta {
                Zeta::None => continue,
                Zeta::Truthful => e.zeta.clone(),
                Zeta::Semantic => e.zeta_semantic.clone(),
                Zeta::Random => {
                    let d = e.zeta.dim(0)?;
                    let mut rng = Rng::derive(seed, "zeta-random", l as u64);
                    let r = Tensor::from_vec((0..d).map(|_| rng.normal()).collect::<Vec<f32>>(), d, e.zeta.device())?;
                    let norm = |t: &Tensor| -> Result<f32> { Ok(t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?) };
                    let scale = f64::from(norm(&e.zeta)? / norm(&r)?.max(1e-6));
                    (r * scale)?
                }
            };
            out.insert(l, (z.to_dtype(DType::F32)? * f64::from(self.params.beta))?);
        }
        Ok(out)
    }
}

impl EditMethod for UniKe {
    fn name(&self) -> &str {
        &self.name
    }

    fn patch_deps(&self) -> super::PatchDeps {
        super::PatchDeps { knowledge: self.knowledge.clone(), serac: None }
    }

    fn resident_bytes(&self) -> usize {
        // The caches count from the start (their size is known from the memory), so that a cache of built methods
        // weighs them before they fill.
        self.knowledge.as_ref().map_or(0, |k| k.bytes()) + self.cache_bytes
    }

    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        let model = ctx.model;
        let seq =
            EditSequence::new(ctx.processor, &request.question, request.image.as_ref(), &request.target, self.eos)?;
        let layers = self.layers(model);
        let provenance = Provenance::new(&self.name, &self.params, request)?;
        let mut patch = Patch::new(provenance, BTreeMap::new());
        let stack_hooks = ctx.stack_hooks()?;
        // External knowledge first: the edit's own states join the memory (latent) or it becomes a demonstration.
        if let Some(knowledge) = &self.knowledge {
            for (l, (sem, pos)) in layers.iter().zip(knowledge_states(model, &seq, &layers, &stack_hooks)?) {
                patch.latent.insert(*l, (sem.unsqueeze(0)?, pos.unsqueeze(0)?));
            }
            patch.retrieval =
                Some(Retrieval { knowledge: knowledge.clone(), top_k: self.params.top_k, alpha: self.params.alpha });
        }
        if self.params.vanilla_ike {
            patch.contexts.push(Arc::new(demonstration(model, &seq, &stack_hooks)?));
        }
        if !self.params.intrinsic {
            return Ok(patch);
        }
        // Intrinsic knowledge, trained with the external knowledge in place (the two collaborate in the same layers)
        // exactly as the stack applies them once the patch is pushed: one retrieval over the shared memory, the
        // stack's entries and the edit's own (not the stack's retrieval plus a second one of the edit's).
        let stack_has_retrieval = ctx.stack.iter().any(|(_, p)| !p.latent.is_empty());
        let mut with_edit = ctx.stack.clone();
        with_edit.push(patch.clone());
        // T-Patcher's memory queries: under the stack, the edit's demonstration if any, and the retrieval (the
        // stack's when it has one; else over the shared memory alone, the edit's own entry left out, so that on an
        // empty stack they are computed once).
        let mut memory_hooks = Hooks::none();
        for c in &patch.contexts {
            memory_hooks.add_context(c.clone());
        }
        if let (Some(k), false) = (&self.knowledge, stack_has_retrieval) {
            memory_hooks.extend(&k.hooks(self.params.top_k, self.params.alpha, &BTreeMap::new())?);
        }
        let fresh;
        let memory = if ctx.stack.is_empty() && patch.contexts.is_empty() {
            match self.unedited.get() {
                Some(m) => m,
                None => {
                    let m = memory_queries(ctx, &self.memory, &layers, &memory_hooks)?;
                    self.unedited.get_or_init(|| m)
                }
            }
        } else {
            let earlier = stack_memory(ctx, self.eos)?;
            // Only the memory sequences the stack can reach are run under it; the others keep their states under the
            // shared knowledge alone (see `unchanged`).
            let settings = (self.params.top_k, self.params.alpha);
            let reached = match (&self.knowledge, patch.contexts.is_empty()) {
                (Some(k), true) => {
                    self.base.queries(ctx, k, settings, &self.memory, &self.prefix, &earlier, &layers)?
                }
                _ => None,
            };
            fresh = match reached {
                Some(q) => q.rows,
                None => {
                    // The memory enters the first edited layer the same under every stack: its retrieval over the
                    // shared memory is pinned once, and each edit scores only the stack's entries against it.
                    if let (Some(k), Some(&lo)) = (&self.knowledge, layers.iter().min()) {
                        let inputs: Vec<Tensor> =
                            self.prefix.chunks(model, &self.memory, lo)?.iter().map(|c| c.x.clone()).collect();
                        k.pin(lo, &inputs, self.params.top_k)?;
                    }
                    memory_queries_fast(ctx, &self.memory, &self.prefix, &earlier, &layers, &memory_hooks)?
                }
            };
            &fresh
        };
        let setting = NeuronSetting { extra: Hooks::none(), value_offset: self.value_offsets(&layers, request.seed)? };
        let with_ctx = EditContext { model, processor: ctx.processor, stack: &with_edit };
        patch.neurons = train_neurons(&with_ctx, &seq, memory, &self.params.neuron_params(), request.seed, &setting)?;
        Ok(patch)
    }
}
