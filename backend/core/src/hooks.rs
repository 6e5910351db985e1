//! The seams of the decoder that editing methods use, and nothing else (DESIGN.md "hooks").
//!
//! Per decoder layer `l` the forward pass is
//!
//! ```text
//! r   = x                                   (b, s, d)   capture: LayerInput   ("pre-attention" state)
//! a   = o_proj(attn(rms_1(x)))              (b, s, d)
//! a   = attn_hook_n(... attn_hook_1(a))                 capture: AttnOutput    (after the shifts)
//! x   = r + a                                           capture: PostAttention
//! q   = rms_2(x)                                        capture: FfnInput      (the FFN query)
//! x   = x + mlp(q) + Σ ffn_hook_i(q)                    capture: LayerOutput
//! ```
//!
//! (a) [`FfnHook`]: extra FFN key-value neurons, added to the FFN output (paper Eq. 3, T-Patcher);
//! (b) [`AttnHook`]: a shift of the self-attention output (paper Eq. 2, latent in-context editing);
//! (c) [`Capture`]: hidden states at the points above, for memory extraction and analysis;
//! (d) [`ProjHook`]: a change of one of the self-attention's projections (`q`, `k`, `v`, `o`), added to that
//!     projection's output (LoRA's low-rank adapters);
//! (e) [`VisionHook`]: a change of the projected image features, from the projector's input (FT on the vision side),
//!     applied when inputs are embedded ([`crate::model::VisionLanguageModel::embed_hooked`]).
//!
//! With an empty [`Hooks`] and no capture the forward pass takes exactly the plain path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::config::Activation;
use crate::model::ffn::FfnParts;

/// What an attention hook sees besides the attention output.
pub struct AttnContext<'a> {
    /// Decoder layer index.
    pub layer: usize,
    /// Position of the first token of this call (non-zero when decoding with a KV cache).
    pub start_pos: usize,
    /// Residual stream entering the layer (the pre-attention hidden state), `(b, s, d)`.
    pub residual: &'a Tensor,
    /// The same after the layer's input RMSNorm (what the attention read), `(b, s, d)`.
    pub normed: &'a Tensor,
}

/// Extra FFN key-value neurons (capability of an edit that adds parametric knowledge).
pub trait FfnHook: Send + Sync + fmt::Debug {
    /// `ffn_input`: the FFN query `q = rms_2(x)`, `(b, s, d)`. Returns `(b, s, d)`, added to the FFN output.
    fn ffn_extra(&self, layer: usize, ffn_input: &Tensor) -> Result<Tensor>;
}

/// A shift of the self-attention output (capability of an edit that injects latent in-context knowledge).
pub trait AttnHook: Send + Sync + fmt::Debug {
    /// `attn_out`: output of `o_proj`, `(b, s, d)`. Returns the replacement, `(b, s, d)`.
    fn shift_attention(&self, ctx: &AttnContext<'_>, attn_out: Tensor) -> Result<Tensor>;

    /// [`AttnHook::shift_attention`], with the share of the replacement that comes from outside the input (latent
    /// in-context knowledge: α as the paper's text means it), `(b, s, 1)`, when the hook mixes one in; captured as
    /// [`CapturePoint::KnowledgeShare`].
    fn shift_attention_traced(&self, ctx: &AttnContext<'_>, attn_out: Tensor) -> Result<(Tensor, Option<Tensor>)> {
        Ok((self.shift_attention(ctx, attn_out)?, None))
    }
}

/// One of the self-attention's four projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    O,
}

impl Proj {
    /// The checkpoint's name of the projection (`q_proj`, ...; OPT's `out_proj` is `o_proj` here).
    pub fn name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
        }
    }

    /// The projection of a name [`Proj::name`] gives.
    pub fn parse(name: &str) -> Option<Self> {
        [Proj::Q, Proj::K, Proj::V, Proj::O].into_iter().find(|p| p.name() == name)
    }
}

/// A change of a self-attention projection (capability of an edit that adapts the attention, LoRA).
pub trait ProjHook: Send + Sync + fmt::Debug {
    /// Which projection it changes.
    fn proj(&self) -> Proj;
    /// `input`: what the projection reads, `(b, s, in)`. Returns `(b, s, out)`, added to the projection's output
    /// (before any bias-free scaling the family applies after it).
    fn adapt(&self, layer: usize, input: &Tensor) -> Result<Tensor>;
}

/// A change of the vision-to-language projector's output (capability of an edit of the image path).
pub trait VisionHook: Send + Sync + fmt::Debug {
    /// `projector_input`: what the projector reads ([`crate::model::VisionLanguageModel::projector_input`]). Returns
    /// the change of its output, f32, added to the projected image features.
    fn adapt(&self, projector_input: &Tensor) -> Result<Tensor>;
}

/// The hooks of one layer, applied in insertion order.
#[derive(Clone, Default, Debug)]
pub struct LayerHooks {
    pub ffn: Vec<Arc<dyn FfnHook>>,
    pub attn: Vec<Arc<dyn AttnHook>>,
    pub proj: Vec<Arc<dyn ProjHook>>,
}

impl LayerHooks {
    /// True when the layer runs the plain path.
    pub fn is_empty(&self) -> bool {
        self.ffn.is_empty() && self.attn.is_empty() && self.proj.is_empty()
    }
}

/// Where a decoder's attention applies its projections: the layer and its hooks. Every family's attention projects
/// through [`ProjSite::project`].
#[derive(Clone, Copy)]
pub(crate) struct ProjSite<'a> {
    pub hooks: Option<&'a LayerHooks>,
    pub layer: usize,
}

impl ProjSite<'_> {
    /// `linear(input)` for projection `which`, `input (b, s, in)` → `(b, s, out)`, plus its hooks' changes.
    pub fn project(&self, which: Proj, linear: &candle_nn::Linear, input: &Tensor) -> Result<Tensor> {
        use candle_core::Module;
        let mut out = linear.forward(input)?;
        if let Some(h) = self.hooks {
            for hook in h.proj.iter().filter(|p| p.proj() == which) {
                out = (out + hook.adapt(self.layer, input)?.to_dtype(input.dtype())?)?;
            }
        }
        Ok(out)
    }
}

/// The attention output `attn (b, s, d)` of layer `ctx.layer` after its hooks' shifts, in insertion order; with a
/// [`CapturePoint::KnowledgeShare`] capture, the shifts' summed knowledge share is recorded. Every decoder calls
/// this between its attention and the residual add.
pub(crate) fn shift_attention(
    hooks: Option<&LayerHooks>,
    ctx: &AttnContext<'_>,
    mut attn: Tensor,
    capture: &mut Capture,
) -> Result<Tensor> {
    let Some(h) = hooks else {
        return Ok(attn);
    };
    let idx = ctx.layer;
    if capture.wants(idx, CapturePoint::KnowledgeShare) {
        let mut total: Option<Tensor> = None;
        for hook in &h.attn {
            let (out, share) = hook.shift_attention_traced(ctx, attn)?;
            attn = out;
            total = match (total, share) {
                (Some(t), Some(s)) => Some((t + s)?),
                (t, s) => t.or(s),
            };
        }
        if let Some(t) = total {
            capture.put(idx, CapturePoint::KnowledgeShare, &t);
        }
    } else {
        for hook in &h.attn {
            attn = hook.shift_attention(ctx, attn)?;
        }
    }
    Ok(attn)
}

/// The FFN output `ffn (b, s, d)` of layer `idx` plus its hooks' extra neurons on the FFN query `q (b, s, d)`.
pub(crate) fn add_ffn_extras(hooks: Option<&LayerHooks>, idx: usize, q: &Tensor, mut ffn: Tensor) -> Result<Tensor> {
    if let Some(h) = hooks {
        for hook in &h.ffn {
            ffn = (ffn + hook.ffn_extra(idx, q)?)?;
        }
    }
    Ok(ffn)
}

/// Keys and values of an in-context demonstration at every decoder layer, `(kv_heads, n, head_dim)` each (keys
/// before rotary embedding): every input position attends to them as if the demonstration had been prepended to the
/// prompt (vanilla in-context editing, IKE). Several contexts sit side by side, each encoded on its own.
///
/// Positions: LLaMA rotates the keys for the prefix's place when it is used; OPT's learned positions are already in
/// the states (the query then starts after the prefix); Qwen2-VL's multimodal rotary positions are stored with the
/// keys (`positions`, `(3, n)` u32, as its encoding forward pass used them).
#[derive(Debug, Clone)]
pub struct ContextKv {
    pub layers: Vec<(Tensor, Tensor)>,
    /// Qwen2-VL: the prefix's own M-RoPE positions `(3, n)` u32.
    pub positions: Option<Tensor>,
}

impl ContextKv {
    /// A prefix whose positions are consecutive from 0 (LLaVA, BLIP-2).
    pub fn new(layers: Vec<(Tensor, Tensor)>) -> Self {
        Self { layers, positions: None }
    }

    /// Number of context positions.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|(k, _)| k.dim(1).ok()).unwrap_or(0)
    }

    /// Layer `i`'s keys and values of `kept` prefixes side by side, `(1, kv_heads, Σn, head_dim)` each (keys as
    /// stored, before any rotary embedding).
    pub fn side_by_side(kept: &[&Arc<ContextKv>], i: usize, n_layers: usize) -> Result<(Tensor, Tensor)> {
        let mut ks = Vec::with_capacity(kept.len());
        let mut vs = Vec::with_capacity(kept.len());
        for c in kept {
            let (k, v) = c.layers.get(i).filter(|_| c.layers.len() == n_layers).ok_or_else(|| {
                Error::Invalid(format!("in-context prefix has {} layers, the model {n_layers}", c.layers.len()))
            })?;
            ks.push(k.clone());
            vs.push(v.clone());
        }
        Ok((Tensor::cat(&ks, 1)?.unsqueeze(0)?, Tensor::cat(&vs, 1)?.unsqueeze(0)?))
    }

    /// How far the prefix moves the query's positions: its length, or with multimodal positions the largest + 1.
    pub fn span(&self) -> Result<usize> {
        match &self.positions {
            Some(p) => Ok(p.max_all()?.to_scalar::<u32>()? as usize + 1),
            None => Ok(self.len()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of stored values (keys and values of every layer).
    pub fn elem_count(&self) -> usize {
        self.layers.iter().map(|(k, v)| k.elem_count() + v.elem_count()).sum()
    }
}

/// A decision made once per input, on its prompt, before the forward pass: which extra hooks the input gets (SERAC's
/// scope classifier sending in-scope inputs to its counterfactual model, out-of-scope ones to the base model).
/// Hooks with a router are resolved per input by [`crate::model::VisionLanguageModel::route`] (teacher-forced scoring and
/// generation do it); a plain forward pass refuses them rather than silently skip the decision.
pub trait Router: Send + Sync + fmt::Debug {
    /// The decoder layer whose state the decision reads; computed by the unedited model.
    fn layer(&self) -> usize;

    /// Which state of [`Router::layer`] the decision reads.
    fn reads(&self) -> RouterReads {
        RouterReads::LastPromptState
    }

    /// [`RouterReads::LastPromptState`]: the route of each input from its state, `states (n, d)` f32 → `n` routes;
    /// `None` adds nothing.
    fn decide(&self, states: &Tensor) -> Result<Vec<Option<usize>>>;

    /// [`RouterReads::PromptFfnInputs`]: the route of each input from the layer's FFN inputs `(n, s, d)` of
    /// right-padded rows, row `i`'s prompt ending at position `last[i]`.
    fn decide_prompt(&self, ffn_inputs: &Tensor, last: &[usize]) -> Result<Vec<Option<usize>>> {
        let _ = (ffn_inputs, last);
        Err(Error::Invalid("this router reads the last prompt state".into()))
    }

    /// The hooks route `route` adds to the others.
    fn route_hooks(&self, route: usize) -> Result<Hooks>;
}

/// What a [`Router`] reads of the unedited model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterReads {
    /// The input of the layer after its input norm, at the last prompt position (SERAC's scope classifier).
    LastPromptState,
    /// The layer's FFN input at every prompt position (WISE's activation score).
    PromptFfnInputs,
}

/// Hooks of every layer. Cheap to clone (hooks are shared); stacking patches is extending.
#[derive(Clone, Default, Debug)]
pub struct Hooks {
    layers: BTreeMap<usize, LayerHooks>,
    vision: Vec<Arc<dyn VisionHook>>,
    contexts: Vec<Arc<ContextKv>>,
    routers: Vec<Arc<dyn Router>>,
}

impl Hooks {
    /// No hooks: the plain forward pass.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds extra FFN neurons to `layer`.
    pub fn add_ffn(&mut self, layer: usize, hook: Arc<dyn FfnHook>) -> &mut Self {
        self.layers.entry(layer).or_default().ffn.push(hook);
        self
    }

    /// Adds a change of the projected image features.
    pub fn add_vision(&mut self, hook: Arc<dyn VisionHook>) -> &mut Self {
        self.vision.push(hook);
        self
    }

    /// The changes of the projected image features, in order.
    pub fn vision(&self) -> &[Arc<dyn VisionHook>] {
        &self.vision
    }

    /// Adds a change of one of `layer`'s attention projections.
    pub fn add_proj(&mut self, layer: usize, hook: Arc<dyn ProjHook>) -> &mut Self {
        self.layers.entry(layer).or_default().proj.push(hook);
        self
    }

    /// Adds a self-attention output shift to `layer`.
    pub fn add_attn(&mut self, layer: usize, hook: Arc<dyn AttnHook>) -> &mut Self {
        self.layers.entry(layer).or_default().attn.push(hook);
        self
    }

    /// Adds an in-context prefix (after any already there).
    pub fn add_context(&mut self, context: Arc<ContextKv>) -> &mut Self {
        self.contexts.push(context);
        self
    }

    /// The in-context prefixes, in order.
    /// The in-context prefixes that fit in `budget` positions together: the most recent ones, in stack order (older
    /// demonstrations fall out of the context first, as they would from a prompt).
    pub fn kept_contexts(&self, budget: usize) -> Vec<&Arc<ContextKv>> {
        let mut used = 0;
        let mut kept = Vec::new();
        for c in self.contexts.iter().rev() {
            if used + c.len() > budget {
                break;
            }
            used += c.len();
            kept.push(c);
        }
        kept.reverse();
        kept
    }

    pub fn contexts(&self) -> &[Arc<ContextKv>] {
        &self.contexts
    }

    /// Adds a per-input router (after any already there).
    pub fn add_router(&mut self, router: Arc<dyn Router>) -> &mut Self {
        self.routers.push(router);
        self
    }

    /// The per-input routers, in order.
    pub fn routers(&self) -> &[Arc<dyn Router>] {
        &self.routers
    }

    /// These hooks without their routers: what every input gets whatever its route.
    pub fn without_routers(&self) -> Hooks {
        Self { routers: Vec::new(), ..self.clone() }
    }

    /// The hooks of one input whose routes (one per router, in order) are `routes`: these hooks without routers,
    /// then each chosen route's hooks.
    pub fn resolve(&self, routes: &[Option<usize>]) -> Result<Hooks> {
        if routes.len() != self.routers.len() {
            return Err(Error::Invalid(format!("{} routes for {} routers", routes.len(), self.routers.len())));
        }
        let mut h = self.without_routers();
        for (router, route) in self.routers.iter().zip(routes) {
            if let Some(r) = route {
                h.extend(&router.route_hooks(*r)?);
            }
        }
        Ok(h)
    }

    /// Appends every hook of `other` after this one's (sequential stacking).
    pub fn extend(&mut self, other: &Hooks) -> &mut Self {
        self.routers.extend(other.routers.iter().cloned());
        self.contexts.extend(other.contexts.iter().cloned());
        self.vision.extend(other.vision.iter().cloned());
        for (l, h) in &other.layers {
            let e = self.layers.entry(*l).or_default();
            e.ffn.extend(h.ffn.iter().cloned());
            e.attn.extend(h.attn.iter().cloned());
            e.proj.extend(h.proj.iter().cloned());
        }
        self
    }

    /// The hooks of `layer`, if it has any.
    pub fn layer(&self, layer: usize) -> Option<&LayerHooks> {
        self.layers.get(&layer).filter(|h| !h.is_empty())
    }

    /// True when no layer has a hook and there is no in-context prefix or router.
    pub fn is_empty(&self) -> bool {
        self.layers.values().all(LayerHooks::is_empty)
            && self.contexts.is_empty()
            && self.routers.is_empty()
            && self.vision.is_empty()
    }

    /// The lowest layer whose computation the hooks change: 0 with an in-context prefix (every layer attends to it),
    /// a router (a route may add one) or a change of the image features, else the smallest hooked layer; `None` for no hooks. Below it the model
    /// computes what it computes unhooked.
    pub fn first_layer(&self) -> Option<usize> {
        if !self.contexts.is_empty() || !self.routers.is_empty() || !self.vision.is_empty() {
            return Some(0);
        }
        self.layers.iter().find(|(_, h)| !h.is_empty()).map(|(l, _)| *l)
    }

    /// Largest hooked layer index, to check against the model.
    pub fn max_layer(&self) -> Option<usize> {
        self.layers.iter().rev().find(|(_, h)| !h.is_empty()).map(|(l, _)| *l)
    }
}

/// Where in a decoder layer a hidden state is captured (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CapturePoint {
    LayerInput,
    AttnOutput,
    PostAttention,
    FfnInput,
    LayerOutput,
    /// The knowledge share of the layer's attention hooks, `(b, s, 1)` (summed over hooks that mix one in; absent
    /// when none does).
    KnowledgeShare,
}

/// Requests and receives hidden states during a forward pass. Each captured tensor is `(b, s, d)` for the tokens of
/// that call.
#[derive(Debug, Default, Clone)]
pub struct Capture {
    wanted: BTreeSet<(usize, CapturePoint)>,
    got: BTreeMap<(usize, CapturePoint), Tensor>,
}

impl Capture {
    /// Captures nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Captures the given (layer, point) pairs.
    pub fn of(points: impl IntoIterator<Item = (usize, CapturePoint)>) -> Self {
        Self { wanted: points.into_iter().collect(), got: BTreeMap::new() }
    }

    /// Captures `point` at every layer in `layers`.
    pub fn at_layers(layers: impl IntoIterator<Item = usize>, point: CapturePoint) -> Self {
        Self::of(layers.into_iter().map(|l| (l, point)))
    }

    pub(crate) fn wants(&self, layer: usize, point: CapturePoint) -> bool {
        self.wanted.contains(&(layer, point))
    }

    pub(crate) fn put(&mut self, layer: usize, point: CapturePoint, t: &Tensor) {
        if self.wants(layer, point) {
            self.got.insert((layer, point), t.clone());
        }
    }

    /// The state captured at (layer, point), `(b, s, d)`.
    pub fn get(&self, layer: usize, point: CapturePoint) -> Option<&Tensor> {
        self.got.get(&(layer, point))
    }

    /// Everything captured so far.
    pub fn captured(&self) -> &BTreeMap<(usize, CapturePoint), Tensor> {
        &self.got
    }

    /// Largest requested layer index, to check against the model.
    pub fn max_layer(&self) -> Option<usize> {
        self.wanted.iter().map(|(l, _)| *l).max()
    }
}

/// `n` extra key-value neurons: `act(q W_K + b_K) W_V`, the T-Patcher / UniKE patch of an FFN.
#[derive(Debug, Clone)]
pub struct ExtraNeurons {
    /// Keys `W_K`, `(d, n)`.
    pub w_k: Tensor,
    /// Key bias `b_K`, `(n)`.
    pub b_k: Tensor,
    /// Values `W_V`, `(n, d)` (UniKE folds `β·ζ'` into them).
    pub w_v: Tensor,
    /// Activation of the extra neurons.
    pub act: Activation,
}

impl ExtraNeurons {
    /// Checks the shapes: `w_k (d, n)`, `b_k (n)`, `w_v (n, d)`.
    pub fn new(w_k: Tensor, b_k: Tensor, w_v: Tensor, act: Activation) -> Result<Self> {
        let (d, n) = w_k.dims2()?;
        let (n2, d2) = w_v.dims2()?;
        if b_k.dims1()? != n || n2 != n || d2 != d {
            return Err(Error::Invalid(format!(
                "extra neurons: w_k {:?}, b_k {:?}, w_v {:?} do not fit (d, n), (n), (n, d)",
                w_k.dims(),
                b_k.dims(),
                w_v.dims()
            )));
        }
        Ok(Self { w_k, b_k, w_v, act })
    }

    /// Activations of the extra neurons, `(b, s, n)` for `q` of `(b, s, d)`.
    pub fn activations(&self, q: &Tensor) -> Result<Tensor> {
        let q = q.to_dtype(self.w_k.dtype())?;
        let pre = q.broadcast_matmul(&self.w_k)?.broadcast_add(&self.b_k)?;
        Ok(self.act.apply(&pre)?)
    }
}

impl FfnHook for ExtraNeurons {
    fn ffn_extra(&self, _layer: usize, ffn_input: &Tensor) -> Result<Tensor> {
        let o = self.activations(ffn_input)?;
        Ok(o.broadcast_matmul(&self.w_v)?.to_dtype(ffn_input.dtype())?)
    }
}

/// A change of one FFN's output projection, `ΔW_down` as `(i, d)`: adds `u(q) ΔW_down` to the FFN output, with the
/// layer's own intermediate `u(q)` ([`FfnParts::intermediate`]: `act(q Gᵀ) ⊙ q Uᵀ` gated, `act(q W1ᵀ + b1)` plain).
/// Fine-tuning's patch.
#[derive(Debug, Clone)]
pub struct DownProjDelta {
    pub parts: FfnParts,
    /// `(i, d)`.
    pub delta: Tensor,
}

impl DownProjDelta {
    /// The FFN's intermediate activations `(b, s, i)` for `q (b, s, d)`.
    pub fn intermediate(&self, q: &Tensor) -> Result<Tensor> {
        self.parts.intermediate(q)
    }
}

impl FfnHook for DownProjDelta {
    fn ffn_extra(&self, _layer: usize, ffn_input: &Tensor) -> Result<Tensor> {
        let h = self.intermediate(ffn_input)?.to_dtype(self.delta.dtype())?;
        Ok(h.broadcast_matmul(&self.delta)?.to_dtype(ffn_input.dtype())?)
    }
}

/// A change of one FFN's up projection (`U` gated, `fc1` plain), `ΔW_up` as `(d, i)`: the intermediate changes by
/// `h` ([`FfnParts::up_change`]: `act(q Gᵀ) ⊙ q ΔW_up` gated, `act(pre + q ΔW_up) − act(pre)` plain), so `h (W_downᵀ +
/// ΔW_down)` is added to the FFN output, with the same layer's output-projection change `ΔW_down (i, d)` when the edit
/// makes one too (so that both together are exactly the edited FFN). MEND's patch, as VLKEB edits LLaVA.
#[derive(Debug, Clone)]
pub struct UpProjDelta {
    pub parts: FfnParts,
    /// `(d, i)`.
    pub delta: Tensor,
    /// The same layer's `ΔW_down (i, d)`, if the edit changes it too.
    pub down_delta: Option<Tensor>,
}

impl FfnHook for UpProjDelta {
    fn ffn_extra(&self, _layer: usize, ffn_input: &Tensor) -> Result<Tensor> {
        let h = self.parts.up_change(ffn_input, &self.delta)?;
        let mut out = h.broadcast_matmul(&self.parts.down().t()?.to_dtype(self.delta.dtype())?)?;
        if let Some(dd) = &self.down_delta {
            out = (out + h.broadcast_matmul(dd)?)?;
        }
        Ok(out.to_dtype(ffn_input.dtype())?)
    }
}

/// Adds a fixed vector to the attention output at every position: the simplest attention shift (steering).
#[derive(Debug, Clone)]
pub struct ConstantShift {
    /// `(d)`.
    pub vector: Tensor,
}

impl AttnHook for ConstantShift {
    fn shift_attention(&self, _ctx: &AttnContext<'_>, attn_out: Tensor) -> Result<Tensor> {
        let v = self.vector.to_dtype(attn_out.dtype())?;
        Ok(attn_out.broadcast_add(&v)?)
    }
}
