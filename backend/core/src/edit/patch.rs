//! Edits are data: a [`Patch`] is everything one edit added to the model (extra FFN neurons, weight deltas, adapters,
//! prefixes, memory entries, with the edit's provenance), and a [`super::PatchStack`] applies any number of them
//! through hooks. Base weights are never mutated or copied, so stacking gives sequential editing, dropping any patch
//! gives undo, and each user can own a stack.
//! Patches round-trip through `NAME.safetensors` (tensors) + `NAME.json` (provenance and layout).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::serac::{SeracEntry, SeracNet};
use super::unike::latent::{Alpha, Knowledge};
use crate::error::{Error, Result};
use crate::hooks::{ContextKv, DownProjDelta, ExtraNeurons, Hooks, Proj, UpProjDelta};
use crate::model::config::Activation;
use crate::model::VisionLanguageModel;

/// Where an edit came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Method name as the CLI spells it (`t-patcher`, `unike`, ...).
    pub method: String,
    /// The method's hyper-parameters, as used.
    pub hparams: serde_json::Value,
    /// The edit: question and the target answer.
    pub prompt: String,
    pub target: String,
    /// Image of the edit, if any (as given).
    #[serde(default)]
    pub image: Option<String>,
    pub seed: u64,
    /// Who made it (studio user), if known.
    #[serde(default)]
    pub author: Option<String>,
    /// In-context methods: the demonstrations put in front of every prompt, in order, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub demonstrations: Vec<String>,
}

impl Provenance {
    /// The provenance of `request` edited by `method` with hyper-parameters `hparams` (no author: the studio sets it).
    pub fn new(method: &str, hparams: &impl Serialize, request: &super::EditRequest) -> Result<Self> {
        Ok(Self {
            method: method.into(),
            hparams: serde_json::to_value(hparams).map_err(|e| Error::Invalid(e.to_string()))?,
            prompt: request.question.clone(),
            target: request.target.clone(),
            image: request.image_path.clone(),
            seed: request.seed,
            author: None,
            demonstrations: Vec::new(),
        })
    }
}

/// What one edit added.
#[derive(Debug, Clone)]
pub struct Patch {
    pub provenance: Provenance,
    /// Extra key-value neurons, by decoder layer.
    pub neurons: BTreeMap<usize, ExtraNeurons>,
    /// Changes of MLP down projections, by decoder layer (fine-tuning). Only the delta is saved.
    pub mlp_deltas: BTreeMap<usize, DownProjDelta>,
    /// Changes of MLP up projections, by decoder layer (MEND). Only the delta is saved.
    pub up_deltas: BTreeMap<usize, UpProjDelta>,
    /// In-context prefixes (vanilla IKE demonstrations), encoded.
    pub contexts: Vec<Arc<ContextKv>>,
    /// Latent in-context knowledge entries `(h_sem, h_pos)`, `(e, d)` each, by decoder layer (UniKE).
    pub latent: BTreeMap<usize, (Tensor, Tensor)>,
    /// The shared memory the entries join, with the retrieval settings; required when `latent` is not empty.
    pub retrieval: Option<Retrieval>,
    /// A stored edit with SERAC's trained classifier (its scope key and counterfactual context).
    pub serac: Option<SeracEntry>,
    /// Locate-then-edit (ROME, MEMIT, AlphaEdit): the edit's keys `(n, i)` at each changed layer, which AlphaEdit's
    /// preserved-knowledge cache reads for the edits above it. Not applied by any hook.
    pub keys: BTreeMap<usize, Tensor>,
    /// Low-rank adapters of attention projections (LoRA), by (layer, projection).
    pub lora: super::lora::Adapters,
    /// A GRACE codebook entry (the stack's entries make one codebook per layer).
    pub grace: Option<super::grace::codebook::GraceEntry>,
    /// A change of the vision-to-language projector (FT on the vision side).
    pub vision: Option<crate::model::ProjectorDelta>,
    /// A WISE side-memory change (the stack's entries make the side memories and their router).
    pub wise: Option<super::wise::memory::WiseEntry>,
}

/// What loading a patch may need besides the model: the UniKE memory latent entries join, SERAC's networks.
#[derive(Default, Clone)]
pub struct PatchDeps {
    pub knowledge: Option<Arc<Knowledge>>,
    pub serac: Option<Arc<SeracNet>>,
}

/// The knowledge memory a latent patch retrieves from, and how.
#[derive(Debug, Clone)]
pub struct Retrieval {
    pub knowledge: Arc<Knowledge>,
    pub top_k: usize,
    pub alpha: Alpha,
}

/// The JSON half of a saved patch.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchJson {
    format: String,
    provenance: Provenance,
    /// Layer → activation name of its neurons.
    neurons: BTreeMap<usize, String>,
    /// Layers whose down projection changes.
    #[serde(default)]
    mlp_deltas: Vec<usize>,
    /// Layers whose up projection changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    up_deltas: Vec<usize>,
    /// Number of in-context prefixes.
    #[serde(default)]
    contexts: usize,
    /// Layers with latent knowledge entries.
    #[serde(default)]
    latent: Vec<usize>,
    /// Retrieval settings of the latent entries.
    #[serde(default)]
    retrieval: Option<RetrievalJson>,
    /// SERAC stored edits (0 or 1).
    #[serde(default)]
    serac: usize,
    /// Layers with stored keys (locate-then-edit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keys: Vec<usize>,
    /// LoRA adapters: `LAYER.PROJ` (e.g. `3.q_proj`) → the scale `α / r`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    lora: BTreeMap<String, f64>,
    /// A GRACE entry's layer, label and starting radius (its key and value are tensors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grace: Option<GraceJson>,
    /// The number of projector linears changed (FT on the vision side), 0 for none.
    #[serde(default, skip_serializing_if = "is_zero")]
    vision: usize,
    /// A WISE entry's layer, shard, record and routing ratio (its change is a tensor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wise: Option<WiseJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WiseJson {
    layer: usize,
    shard: usize,
    act: f64,
    act_ratio: f64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GraceJson {
    layer: usize,
    label: String,
    eps: f64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrievalJson {
    top_k: usize,
    alpha: Alpha,
}

/// Version 2 (2026-12-06): a fixed α is the in-context knowledge's share (see [`super::unike::latent`]).
const FORMAT: &str = "unike-patch/2";
/// Version 1: a fixed α weighted the input; read and converted.
const FORMAT_V1: &str = "unike-patch/1";

fn activation_name(a: Activation) -> &'static str {
    match a {
        Activation::QuickGelu => "quick_gelu",
        Activation::Gelu => "gelu",
        Activation::GeluTanh => "gelu_pytorch_tanh",
        Activation::Silu => "silu",
        Activation::Relu => "relu",
    }
}

fn data_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Data { path: path.to_path_buf(), msg: msg.into() }
}

impl Patch {
    /// A patch of extra neurons.
    pub fn new(provenance: Provenance, neurons: BTreeMap<usize, ExtraNeurons>) -> Self {
        Self {
            provenance,
            neurons,
            mlp_deltas: BTreeMap::new(),
            up_deltas: BTreeMap::new(),
            contexts: vec![],
            latent: BTreeMap::new(),
            retrieval: None,
            serac: None,
            keys: BTreeMap::new(),
            lora: BTreeMap::new(),
            grace: None,
            vision: None,
            wise: None,
        }
    }

    /// The hooks of the patch's own parameters (neurons, deltas, prefixes), without latent retrieval.
    pub(super) fn own_hooks(&self) -> Hooks {
        let mut h = Hooks::none();
        for (&layer, n) in &self.neurons {
            h.add_ffn(layer, Arc::new(n.clone()));
        }
        for (&layer, d) in &self.mlp_deltas {
            h.add_ffn(layer, Arc::new(d.clone()));
        }
        for (&layer, d) in &self.up_deltas {
            h.add_ffn(layer, Arc::new(d.clone()));
        }
        for c in &self.contexts {
            h.add_context(c.clone());
        }
        for (&(layer, _), a) in &self.lora {
            h.add_proj(layer, Arc::new(a.clone()));
        }
        if let Some(v) = &self.vision {
            h.add_vision(Arc::new(v.clone()));
        }
        h
    }

    /// The hooks that apply this patch alone.
    pub fn hooks(&self) -> Result<Hooks> {
        super::stack::stack_hooks(std::iter::once(self))
    }

    /// Number of extra parameters (and stored states).
    pub fn num_parameters(&self) -> usize {
        let neurons: usize =
            self.neurons.values().map(|n| n.w_k.elem_count() + n.b_k.elem_count() + n.w_v.elem_count()).sum();
        let contexts: usize = self.contexts.iter().map(|c| c.elem_count()).sum();
        let latent: usize = self.latent.values().map(|(s, p)| s.elem_count() + p.elem_count()).sum();
        let serac: usize = self.serac.iter().map(|e| e.key.elem_count() + e.context.elem_count()).sum();
        let up: usize = self.up_deltas.values().map(|d| d.delta.elem_count()).sum::<usize>()
            + self.lora.values().map(|a| a.a.elem_count() + a.b.elem_count()).sum::<usize>()
            + self
                .vision
                .iter()
                .flat_map(|v| v.deltas.iter())
                .map(|(w, b)| w.elem_count() + b.elem_count())
                .sum::<usize>()
            + self.grace.iter().map(|g| g.key.elem_count() + g.value.elem_count()).sum::<usize>()
            + self.wise.iter().map(|w| w.delta.elem_count()).sum::<usize>();
        neurons + self.mlp_deltas.values().map(|d| d.delta.elem_count()).sum::<usize>() + up + contexts + latent + serac
    }

    /// The files [`Patch::save`] writes for `base`.
    pub fn files(base: &Path) -> [PathBuf; 2] {
        [base.with_extension("safetensors"), base.with_extension("json")]
    }

    /// Writes `base.safetensors` and `base.json` (`base` is a path without extension).
    pub fn save(&self, base: &Path) -> Result<()> {
        let (st, js) = (base.with_extension("safetensors"), base.with_extension("json"));
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (layer, n) in &self.neurons {
            tensors.insert(format!("layers.{layer}.w_k"), n.w_k.clone());
            tensors.insert(format!("layers.{layer}.b_k"), n.b_k.clone());
            tensors.insert(format!("layers.{layer}.w_v"), n.w_v.clone());
        }
        for (layer, d) in &self.mlp_deltas {
            tensors.insert(format!("layers.{layer}.down_delta"), d.delta.clone());
        }
        for (layer, d) in &self.up_deltas {
            tensors.insert(format!("layers.{layer}.up_delta"), d.delta.clone());
        }
        for (i, c) in self.contexts.iter().enumerate() {
            for (layer, (k, v)) in c.layers.iter().enumerate() {
                tensors.insert(format!("contexts.{i}.layers.{layer}.k"), k.clone());
                tensors.insert(format!("contexts.{i}.layers.{layer}.v"), v.clone());
            }
            if let Some(p) = &c.positions {
                tensors.insert(format!("contexts.{i}.positions"), p.clone());
            }
        }
        for (layer, k) in &self.keys {
            tensors.insert(format!("layers.{layer}.keys"), k.clone());
        }
        for ((layer, p), a) in &self.lora {
            tensors.insert(format!("layers.{layer}.{}.lora_a", p.name()), a.a.clone());
            tensors.insert(format!("layers.{layer}.{}.lora_b", p.name()), a.b.clone());
        }
        if let Some(g) = &self.grace {
            tensors.insert("grace.key".into(), g.key.clone());
            tensors.insert("grace.value".into(), g.value.clone());
        }
        if let Some(w) = &self.wise {
            tensors.insert("wise.delta".into(), w.delta.clone());
        }
        for (i, (w, b)) in self.vision.iter().flat_map(|v| v.deltas.iter()).enumerate() {
            tensors.insert(format!("projector.{i}.weight_delta"), w.clone());
            tensors.insert(format!("projector.{i}.bias_delta"), b.clone());
        }
        for (layer, (sem, pos)) in &self.latent {
            tensors.insert(format!("layers.{layer}.h_sem"), sem.clone());
            tensors.insert(format!("layers.{layer}.h_pos"), pos.clone());
        }
        if let Some(e) = &self.serac {
            tensors.insert("serac.key".into(), e.key.clone());
            for (layer, (k, v)) in e.context.layers.iter().enumerate() {
                tensors.insert(format!("serac.context.layers.{layer}.k"), k.clone());
                tensors.insert(format!("serac.context.layers.{layer}.v"), v.clone());
            }
            if let Some(p) = &e.context.positions {
                tensors.insert("serac.context.positions".into(), p.clone());
            }
        }
        candle_core::safetensors::save(&tensors, &st)?;
        let json = PatchJson {
            format: FORMAT.into(),
            provenance: self.provenance.clone(),
            neurons: self.neurons.iter().map(|(l, n)| (*l, activation_name(n.act).to_string())).collect(),
            mlp_deltas: self.mlp_deltas.keys().copied().collect(),
            up_deltas: self.up_deltas.keys().copied().collect(),
            contexts: self.contexts.len(),
            latent: self.latent.keys().copied().collect(),
            retrieval: self.retrieval.as_ref().map(|r| RetrievalJson { top_k: r.top_k, alpha: r.alpha }),
            serac: usize::from(self.serac.is_some()),
            keys: self.keys.keys().copied().collect(),
            lora: self.lora.iter().map(|((l, p), a)| (format!("{l}.{}", p.name()), a.scale)).collect(),
            grace: self.grace.as_ref().map(|g| GraceJson { layer: g.layer, label: g.label.clone(), eps: g.eps }),
            vision: self.vision.as_ref().map_or(0, |v| v.deltas.len()),
            wise: self.wise.as_ref().map(|w| WiseJson {
                layer: w.layer,
                shard: w.shard,
                act: w.act,
                act_ratio: w.act_ratio,
            }),
        };
        let text = serde_json::to_string_pretty(&json).map_err(|e| data_err(&js, e.to_string()))?;
        std::fs::write(&js, text).map_err(|err| Error::Io { path: js.clone(), err })
    }

    /// The provenance of the patch saved at `base` (its JSON half alone), e.g. to make an outdated patch again.
    pub fn provenance_of(base: &Path) -> Result<Provenance> {
        let js = base.with_extension("json");
        let text = std::fs::read_to_string(&js).map_err(|err| Error::Io { path: js.clone(), err })?;
        let json: PatchJson = serde_json::from_str(&text).map_err(|e| data_err(&js, e.to_string()))?;
        Ok(json.provenance)
    }

    /// The latent knowledge entries `(h_sem, h_pos)` `(e, d)` by layer of the patch saved at `base` (UniKE; empty for
    /// other patches), without a model: what the knowledge-space explorer draws.
    pub fn latent_of(base: &Path, device: &candle_core::Device) -> Result<BTreeMap<usize, (Tensor, Tensor)>> {
        let (st, js) = (base.with_extension("safetensors"), base.with_extension("json"));
        let text = std::fs::read_to_string(&js).map_err(|err| Error::Io { path: js.clone(), err })?;
        let json: PatchJson = serde_json::from_str(&text).map_err(|e| data_err(&js, e.to_string()))?;
        if json.latent.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut tensors = candle_core::safetensors::load(&st, device)?;
        let mut take =
            |name: String| tensors.remove(&name).ok_or_else(|| data_err(&st, format!("missing tensor {name}")));
        let mut out = BTreeMap::new();
        for l in json.latent {
            out.insert(l, (take(format!("layers.{l}.h_sem"))?, take(format!("layers.{l}.h_pos"))?));
        }
        Ok(out)
    }

    /// Reads a patch written by [`Patch::save`], for `model` (down-projection deltas bind to its MLP weights).
    /// Patches with latent knowledge or a SERAC stored edit need [`Patch::load_with`].
    pub fn load(base: &Path, model: &dyn VisionLanguageModel) -> Result<Self> {
        Self::load_with(base, model, &PatchDeps::default())
    }

    /// Reads a patch, joining its latent entries (if any) to `deps.knowledge` (the UniKE memory they were made with)
    /// and its SERAC stored edit (if any) to `deps.serac`.
    pub fn load_with(base: &Path, model: &dyn VisionLanguageModel, deps: &PatchDeps) -> Result<Self> {
        let device = model.device();
        let (st, js) = (base.with_extension("safetensors"), base.with_extension("json"));
        let text = std::fs::read_to_string(&js).map_err(|err| Error::Io { path: js.clone(), err })?;
        let mut json: PatchJson = serde_json::from_str(&text).map_err(|e| data_err(&js, e.to_string()))?;
        if json.format == FORMAT_V1 {
            // Written when a fixed α weighted the input: the same mixture in today's meaning, and the method's name
            // as it is spelled now.
            if let Some(r) = json.retrieval.as_mut() {
                r.alpha = r.alpha.from_input_weight();
            }
            if let Some(name) = super::unike::variant::from_input_weight_alpha(&json.provenance.method) {
                json.provenance.method = name;
                if let Some(a) = json.provenance.hparams.pointer_mut("/alpha/fixed") {
                    if let Some(x) = a.as_f64() {
                        *a = serde_json::json!(((1.0 - x) * 100.0).round() / 100.0);
                    }
                }
            }
        } else if json.format != FORMAT {
            return Err(data_err(&js, format!("format {:?} is not {FORMAT:?}", json.format)));
        }
        if !st.is_file() {
            return Err(Error::Io { path: st.clone(), err: std::io::ErrorKind::NotFound.into() });
        }
        let mut tensors = candle_core::safetensors::load(&st, device)?;
        let mut neurons = BTreeMap::new();
        for (layer, act) in json.neurons {
            let act = Activation::parse(&act).ok_or_else(|| data_err(&js, format!("unknown activation {act:?}")))?;
            let mut take = |name: &str| {
                let key = format!("layers.{layer}.{name}");
                tensors.remove(&key).ok_or_else(|| data_err(&st, format!("missing tensor {key}")))
            };
            let (w_k, b_k, w_v) = (take("w_k")?, take("b_k")?, take("w_v")?);
            neurons.insert(layer, ExtraNeurons::new(w_k, b_k, w_v, act)?);
        }
        let mut mlp_deltas = BTreeMap::new();
        for layer in json.mlp_deltas {
            let key = format!("layers.{layer}.down_delta");
            let delta = tensors.remove(&key).ok_or_else(|| data_err(&st, format!("missing tensor {key}")))?;
            mlp_deltas.insert(layer, down_delta(model, layer, delta)?);
        }
        let mut up_deltas = BTreeMap::new();
        for layer in json.up_deltas {
            let key = format!("layers.{layer}.up_delta");
            let delta = tensors.remove(&key).ok_or_else(|| data_err(&st, format!("missing tensor {key}")))?;
            let down = mlp_deltas.get(&layer).map(|d: &DownProjDelta| d.delta.clone());
            up_deltas.insert(layer, up_delta(model, layer, delta, down)?);
        }
        if tensors.contains_key("serac.0.states") {
            return Err(Error::Outdated {
                path: js,
                msg: "this SERAC edit was stored by the former per-position reader (until 2026-12-06), which \
                      SERAC's counterfactual model replaced: make the edit again"
                    .into(),
            });
        }
        // Qwen2-VL prefixes carry their multimodal positions.
        let mut context_positions: Vec<Option<Tensor>> =
            (0..json.contexts).map(|i| tensors.remove(&format!("contexts.{i}.positions"))).collect();
        let serac_positions = tensors.remove("serac.context.positions");
        let mut take = |key: String| tensors.remove(&key).ok_or_else(|| data_err(&st, format!("missing tensor {key}")));
        let mut contexts = Vec::new();
        for i in 0..json.contexts {
            let layers = (0..model.num_layers())
                .map(|l| Ok((take(format!("contexts.{i}.layers.{l}.k"))?, take(format!("contexts.{i}.layers.{l}.v"))?)))
                .collect::<Result<Vec<_>>>()?;
            let positions = context_positions.get_mut(i).and_then(Option::take);
            contexts.push(Arc::new(ContextKv { layers, positions }));
        }
        let mut keys = BTreeMap::new();
        for l in json.keys {
            let k = take(format!("layers.{l}.keys"))?;
            let width = model.ffn_parts(l)?.width()?;
            if k.rank() != 2 || k.dim(1)? != width {
                return Err(data_err(&st, format!("layer {l}'s keys are {:?}, not (n, {width})", k.dims())));
            }
            keys.insert(l, k);
        }
        let mut lora = BTreeMap::new();
        for (site, scale) in json.lora {
            let parsed = site.split_once('.').and_then(|(l, p)| Some((l.parse::<usize>().ok()?, Proj::parse(p)?)));
            let (layer, proj) = parsed.ok_or_else(|| data_err(&js, format!("bad LoRA site {site:?}")))?;
            let (a, b) = (take(format!("layers.{site}.lora_a"))?, take(format!("layers.{site}.lora_b"))?);
            let (fan_in, fan_out) = super::lora::projection_shape(model, layer, proj)?;
            if a.rank() != 2 || b.rank() != 2 || a.dim(1)? != fan_in || b.dim(0)? != fan_out || a.dim(0)? != b.dim(1)? {
                return Err(data_err(
                    &st,
                    format!("LoRA {site}: {:?} and {:?} do not fit this model", a.dims(), b.dims()),
                ));
            }
            lora.insert((layer, proj), super::lora::LoraAdapter { proj, a, b, scale });
        }
        let grace = match json.grace {
            None => None,
            Some(g) => {
                let (key, value) = (take("grace.key".into())?, take("grace.value".into())?);
                let parts = model.ffn_parts(g.layer)?;
                if key.dims() != [parts.width()?] || value.dims() != [model.hidden_size()] {
                    return Err(data_err(
                        &st,
                        format!("a GRACE entry of {:?} / {:?} for this model", key.dims(), value.dims()),
                    ));
                }
                Some(super::grace::codebook::GraceEntry {
                    layer: g.layer,
                    key,
                    value,
                    label: g.label,
                    eps: g.eps,
                    parts,
                })
            }
        };
        let vision = match json.vision {
            0 => None,
            n => {
                let deltas = (0..n)
                    .map(|i| {
                        Ok((take(format!("projector.{i}.weight_delta"))?, take(format!("projector.{i}.bias_delta"))?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let delta = crate::model::ProjectorDelta::new(model.projector_parts()?, deltas)
                    .map_err(|e| data_err(&st, e.to_string()))?;
                Some(delta)
            }
        };
        let wise = match json.wise {
            None => None,
            Some(w) => {
                let delta = take("wise.delta".into())?;
                let parts = model.ffn_parts(w.layer)?;
                if delta.dims() != [parts.width()?, model.hidden_size()] {
                    return Err(data_err(&st, format!("a WISE change of {:?} for this model", delta.dims())));
                }
                let (layer, shard, act, act_ratio) = (w.layer, w.shard, w.act, w.act_ratio);
                Some(super::wise::memory::WiseEntry { layer, delta, shard, act, act_ratio, parts })
            }
        };
        let mut latent = BTreeMap::new();
        for l in json.latent {
            latent.insert(l, (take(format!("layers.{l}.h_sem"))?, take(format!("layers.{l}.h_pos"))?));
        }
        let serac = if json.serac == 0 {
            None
        } else {
            let key = take("serac.key".into())?;
            let layers = (0..model.num_layers())
                .map(|l| {
                    Ok((take(format!("serac.context.layers.{l}.k"))?, take(format!("serac.context.layers.{l}.v"))?))
                })
                .collect::<Result<Vec<_>>>()?;
            let net = deps.serac.clone().ok_or_else(|| {
                data_err(&js, "this patch is a SERAC stored edit: load it with SERAC's trained classifier")
            })?;
            if key.dims() != [model.hidden_size()] {
                return Err(data_err(&st, format!("a SERAC key of shape {:?} for this model", key.dims())));
            }
            Some(SeracEntry { net, key, context: Arc::new(ContextKv { layers, positions: serac_positions }) })
        };
        if let Some(extra) = tensors.keys().next() {
            return Err(data_err(&st, format!("unexpected tensor {extra}")));
        }
        let retrieval = match (json.retrieval, latent.is_empty()) {
            (_, true) => None,
            (Some(r), false) => {
                let knowledge = deps.knowledge.clone().ok_or_else(|| {
                    data_err(&js, "this patch has latent knowledge: load it with the UniKE memory it was made with")
                })?;
                Some(Retrieval { knowledge, top_k: r.top_k, alpha: r.alpha })
            }
            (None, false) => return Err(data_err(&js, "latent entries without retrieval settings")),
        };
        Ok(Self {
            provenance: json.provenance,
            neurons,
            mlp_deltas,
            up_deltas,
            contexts,
            latent,
            retrieval,
            serac,
            keys,
            lora,
            grace,
            vision,
            wise,
        })
    }
}

/// A down-projection delta `(i, d)` of `model`'s layer `layer`, bound to that layer's gate and up projections.
pub fn down_delta(model: &dyn VisionLanguageModel, layer: usize, delta: Tensor) -> Result<DownProjDelta> {
    let parts = model.ffn_parts(layer)?;
    let want = [parts.width()?, model.hidden_size()];
    if delta.dims() != want {
        return Err(Error::Invalid(format!(
            "a down-projection delta of layer {layer} must be {want:?}, not {:?}",
            delta.dims()
        )));
    }
    Ok(DownProjDelta { parts, delta })
}

/// An up-projection delta `(d, i)` of `model`'s layer `layer`, bound to that layer's gate and down projections and to
/// the same edit's down-projection delta `(i, d)` of that layer, if any.
pub fn up_delta(
    model: &dyn VisionLanguageModel,
    layer: usize,
    delta: Tensor,
    down_delta: Option<Tensor>,
) -> Result<UpProjDelta> {
    let parts = model.ffn_parts(layer)?;
    if delta.dims() != parts.down().dims() {
        return Err(Error::Invalid(format!(
            "an up-projection delta of layer {layer} must be {:?}, not {:?}",
            parts.down().dims(),
            delta.dims()
        )));
    }
    Ok(UpProjDelta { parts, delta, down_delta })
}

#[cfg(test)]
#[path = "patch_tests.rs"]
mod tests;
