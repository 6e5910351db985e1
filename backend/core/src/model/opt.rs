//! The OPT decoder of BLIP-2 (Zhang et al., "OPT: Open Pre-trained Transformer Language Models", 2022): learned
//! absolute positions with OPT's offset of 2, pre-LayerNorm blocks, multi-head attention with biases, a ReLU FFN
//! (`fc1` → ReLU → `fc2`), a final LayerNorm, a tied output head, a KV cache, and the UniKE hook seams
//! ([`crate::hooks`]).
//!
//! Weight names mirror transformers' `OPTDecoder` (`embed_tokens`, `embed_positions`,
//! `layers.{i}.self_attn.{q,k,v,out}_proj`, `layers.{i}.self_attn_layer_norm`, `layers.{i}.fc1`, `layers.{i}.fc2`,
//! `layers.{i}.final_layer_norm`, `final_layer_norm`).
//!
//! Per decoder layer `l` the hooks sit where they sit in the LLaMA decoder, with OPT's modules:
//!
//! ```text
//! r = x                                              capture: LayerInput  (layer 0: token embeddings + positions)
//! a = out_proj(attn(self_attn_layer_norm(x)))        (out_proj's bias included)
//! a = attn_hook_n(... attn_hook_1(a))                capture: AttnOutput  (AttnContext.normed: the LayerNorm'd x)
//! x = r + a                                          capture: PostAttention
//! q = final_layer_norm_l(x)                          capture: FfnInput    ("the FFN" reads q)
//! x = x + fc2(relu(fc1(q))) + Σ ffn_hook_i(q)        capture: LayerOutput (extra neurons add to fc2's output)
//! ```
//!
//! So T-Patcher / UniKE key-value neurons read the block's FFN input (after the block's `final_layer_norm`) and add
//! to `fc2`'s output (bias included), exactly as a neuron appended to `fc1`/`fc2` would. Positions are added once,
//! before layer 0 ([`Opt::add_positions`]), not inside the layers. In-context key/value prefixes (IKE) and per-input
//! routers (SERAC) are refused with [`Error::Invalid`]: OPT's positions live in the input, not in the keys, so a
//! prefix made for a rotary decoder does not carry over.

use std::ops::Range;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use super::attention::{AttnParts, InputNorm};
use super::blip2_config::OptConfig;
use super::cache::{KvCache, LayerKv};
use super::config::Activation;
use super::kernels;
use super::norm::LayerNorm;
use crate::error::{Error, Result};
use crate::hooks::{
    add_ffn_extras, shift_attention, AttnContext, Capture, CapturePoint, ContextKv, Hooks, LayerHooks, Proj, ProjSite,
};

/// OPT's learned position table starts at row 2 (the first two rows are never read by an unpadded sequence).
pub const POSITION_OFFSET: usize = 2;

fn linear(vb: VarBuilder, i: usize, o: usize, bias: bool) -> Result<Linear> {
    Ok(if bias { candle_nn::linear(i, o, vb)? } else { candle_nn::linear_no_bias(i, o, vb)? })
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    n_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &OptConfig) -> Result<Self> {
        let (d, b) = (cfg.hidden_size, cfg.enable_bias);
        Ok(Self {
            q_proj: linear(vb.pp("q_proj"), d, d, b)?,
            k_proj: linear(vb.pp("k_proj"), d, d, b)?,
            v_proj: linear(vb.pp("v_proj"), d, d, b)?,
            out_proj: linear(vb.pp("out_proj"), d, d, b)?,
            n_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// Causal self-attention of normed states `x (b, s, d)` after the cached positions; returns `(b, s, d)`.
    /// The query is scaled by `head_dim^-0.5` after its projection (bias included), before `q·kᵀ`, as OPT does.
    /// `prefix`: keys and values `(b, heads, n, head_dim)` of an in-context prefix every position attends to, as if
    /// it had been prepended (the cache holds only the input's).
    fn forward(
        &self,
        x: &Tensor,
        kv: Option<&mut LayerKv>,
        prefix: Option<&(Tensor, Tensor)>,
        site: ProjSite<'_>,
    ) -> Result<Tensor> {
        let (b, s, d) = x.dims3()?;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, s, self.n_heads, self.head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let q = split((site.project(Proj::Q, &self.q_proj, x)? * scale)?)?;
        let mut k = split(site.project(Proj::K, &self.k_proj, x)?)?;
        let mut v = split(site.project(Proj::V, &self.v_proj, x)?)?;
        if let Some(slot) = kv {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        if let Some((pk, pv)) = prefix {
            k = Tensor::cat(&[&pk.to_dtype(k.dtype())?, &k], 2)?;
            v = Tensor::cat(&[&pv.to_dtype(v.dtype())?, &v], 2)?;
        }
        let total = k.dim(2)?;
        let mut att = q.matmul(&k.t()?)?;
        if s > 1 {
            att = att.broadcast_add(&causal_mask(s, total, att.dtype(), att.device())?)?;
        }
        let att = kernels::softmax_last_dim(&att.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, s, d))?;
        site.project(Proj::O, &self.out_proj, &y)
    }
}

/// `(s, total)` additive mask: query `i` (absolute position `total - s + i`) sees keys `0..=total - s + i`.
fn causal_mask(s: usize, total: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let offset = total - s;
    let mask: Vec<f32> =
        (0..s).flat_map(|i| (0..total).map(move |j| if j > offset + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Ok(Tensor::from_vec(mask, (s, total), device)?.to_dtype(dtype)?)
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn_layer_norm: LayerNorm,
    self_attn: Attention,
    final_layer_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl DecoderLayer {
    fn load(vb: VarBuilder, cfg: &OptConfig) -> Result<Self> {
        let (d, f, eps, b) = (cfg.hidden_size, cfg.ffn_dim, cfg.layer_norm_eps, cfg.enable_bias);
        Ok(Self {
            self_attn_layer_norm: LayerNorm::load(d, eps, vb.pp("self_attn_layer_norm"))?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            final_layer_norm: LayerNorm::load(d, eps, vb.pp("final_layer_norm"))?,
            fc1: linear(vb.pp("fc1"), d, f, b)?,
            fc2: linear(vb.pp("fc2"), f, d, b)?,
            act: cfg.activation,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        idx: usize,
        x: &Tensor,
        start: usize,
        kv: Option<&mut LayerKv>,
        prefix: Option<&(Tensor, Tensor)>,
        hooks: Option<&LayerHooks>,
        capture: &mut Capture,
    ) -> Result<Tensor> {
        capture.put(idx, CapturePoint::LayerInput, x);
        let normed = self.self_attn_layer_norm.forward(x)?;
        let attn = self.self_attn.forward(&normed, kv, prefix, ProjSite { hooks, layer: idx })?;
        let ctx = AttnContext { layer: idx, start_pos: start, residual: x, normed: &normed };
        let attn = shift_attention(hooks, &ctx, attn, capture)?;
        capture.put(idx, CapturePoint::AttnOutput, &attn);
        let x = (x + attn)?;
        capture.put(idx, CapturePoint::PostAttention, &x);
        self.forward_ffn(idx, &x, hooks, capture)
    }

    /// The FFN half of the block on the post-attention state `x (b, s, d)`.
    fn forward_ffn(&self, idx: usize, x: &Tensor, hooks: Option<&LayerHooks>, capture: &mut Capture) -> Result<Tensor> {
        let q = self.final_layer_norm.forward(x)?;
        capture.put(idx, CapturePoint::FfnInput, &q);
        let ffn = add_ffn_extras(hooks, idx, &q, self.fc2.forward(&self.act.apply(&self.fc1.forward(&q)?)?)?)?;
        let out = (x + ffn)?;
        capture.put(idx, CapturePoint::LayerOutput, &out);
        Ok(out)
    }
}

/// The OPT decoder with its output head.
#[derive(Debug, Clone)]
pub struct Opt {
    embed_tokens: Embedding,
    /// `(max_position_embeddings + 2, d)`.
    embed_positions: Tensor,
    layers: Vec<DecoderLayer>,
    final_layer_norm: Option<LayerNorm>,
    lm_head: Linear,
    cfg: OptConfig,
}

impl Opt {
    /// Loads from `vb` at the `OPTDecoder` prefix (`language_model.model.decoder`) and the head from `lm_head`
    /// (`language_model.lm_head`; ignored when the embeddings are tied, as in every published OPT checkpoint).
    pub fn load(vb: VarBuilder, lm_head: VarBuilder, cfg: &OptConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let embed_tokens = candle_nn::embedding(cfg.vocab_size, d, vb.pp("embed_tokens"))?;
        let embed_positions =
            vb.pp("embed_positions").get((cfg.max_position_embeddings + POSITION_OFFSET, d), "weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(vb.pp("layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = if cfg.final_layer_norm {
            Some(LayerNorm::load(d, cfg.layer_norm_eps, vb.pp("final_layer_norm"))?)
        } else {
            None
        };
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed_tokens.embeddings().clone(), None)
        } else if lm_head.contains_tensor("weight") {
            candle_nn::linear_no_bias(d, cfg.vocab_size, lm_head)?
        } else {
            return Err(Error::Invalid(
                "the OPT head is untied (tie_word_embeddings false) but the checkpoint has no lm_head.weight".into(),
            ));
        };
        Ok(Self { embed_tokens, embed_positions, layers, final_layer_norm, lm_head, cfg: cfg.clone() })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &OptConfig {
        &self.cfg
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Token embeddings, without positions: `(b, s)` u32 ids → `(b, s, d)`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.embed_tokens.forward(ids)?)
    }

    /// Adds the learned positions of `start..start + s` (table rows `start + 2..`) to `x (b, s, d)`; what layer 0
    /// reads. Every row of a batch takes the same positions (unpadded or right-padded sequences; transformers gives
    /// left padding other positions).
    pub fn add_positions(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let s = x.dim(1)?;
        let rows = self.embed_positions.dim(0)?;
        if start + s + POSITION_OFFSET > rows {
            return Err(Error::Invalid(format!(
                "sequence of {} positions exceeds OPT's max_position_embeddings {}",
                start + s,
                rows - POSITION_OFFSET
            )));
        }
        let pos = self.embed_positions.narrow(0, start + POSITION_OFFSET, s)?.to_dtype(x.dtype())?;
        Ok(x.broadcast_add(&pos.unsqueeze(0)?)?)
    }

    /// Runs decoder layers `layers` on `x (b, s, d)` (positions already added) for positions `start..start + s`.
    /// With a cache, each layer's keys and values are appended to it. Returns `(b, s, d)`.
    pub fn forward_layers(
        &self,
        x: &Tensor,
        start: usize,
        layers: Range<usize>,
        mut cache: Option<&mut KvCache>,
        hooks: &Hooks,
        capture: &mut Capture,
    ) -> Result<Tensor> {
        let n = self.layers.len();
        if layers.end > n {
            return Err(Error::Invalid(format!("layer range {layers:?} exceeds {n} layers")));
        }
        self.check_hooks(hooks, capture)?;
        let b = x.dim(0)?;
        let mut x = x.clone();
        for i in layers {
            let kv = match cache.as_deref_mut() {
                Some(c) => Some(c.layer_mut(i)?),
                None => None,
            };
            let prefix = self.context_prefix(hooks, i, b)?;
            x = self.layers[i].forward(i, &x, start, kv, prefix.as_ref(), hooks.layer(i), capture)?;
        }
        Ok(x)
    }

    /// Positions the in-context prefixes may take together: half of the position table.
    pub fn context_budget(&self) -> usize {
        self.cfg.max_position_embeddings / 2
    }

    /// Keys and values `(b, heads, n, head_dim)` of the in-context prefixes of `hooks` at layer `i` that fit the
    /// budget, in stack order; `None` without one. Their learned positions are in their states already.
    fn context_prefix(&self, hooks: &Hooks, i: usize, b: usize) -> Result<Option<(Tensor, Tensor)>> {
        let kept = hooks.kept_contexts(self.context_budget());
        if kept.is_empty() {
            return Ok(None);
        }
        let (k, v) = ContextKv::side_by_side(&kept, i, self.layers.len())?;
        let (_, h, n, hd) = k.dims4()?;
        Ok(Some((k.expand((b, h, n, hd))?.contiguous()?, v.expand((b, h, n, hd))?.contiguous()?)))
    }

    /// Positions the kept in-context prefixes of `hooks` take: the input's come after them.
    pub fn prefix_span(&self, hooks: &Hooks) -> Result<usize> {
        hooks.kept_contexts(self.context_budget()).iter().map(|c| c.span()).sum()
    }

    /// `x (b, s, d)` carrying the learned positions of `from..from + s`, moved to `to..to + s` (an input after an
    /// in-context prefix).
    pub fn move_positions(&self, x: &Tensor, from: usize, to: usize) -> Result<Tensor> {
        if from == to {
            return Ok(x.clone());
        }
        let zero = x.zeros_like()?;
        let delta = (self.add_positions(&zero, to)? - self.add_positions(&zero, from)?)?;
        Ok((x + delta)?)
    }

    /// Runs the FFN half of layer `layer` on its post-attention state `x (b, s, d)` (captured as
    /// [`CapturePoint::PostAttention`]), then layers `layer + 1..` at positions `0..s` without a cache.
    /// Returns `(b, s, d)`, as [`Opt::forward_layers`] from `layer` would.
    pub fn forward_from_ffn(&self, x: &Tensor, layer: usize, hooks: &Hooks, capture: &mut Capture) -> Result<Tensor> {
        let n = self.layers.len();
        let block = self
            .layers
            .get(layer)
            .ok_or_else(|| Error::Invalid(format!("layer {layer} of a model with {n} layers")))?;
        self.check_hooks(hooks, capture)?;
        let x = block.forward_ffn(layer, x, hooks.layer(layer), capture)?;
        self.forward_layers(&x, 0, layer + 1..n, None, hooks, capture)
    }

    /// Refuses hooks this decoder does not implement, and hooks or captures past the last layer.
    fn check_hooks(&self, hooks: &Hooks, capture: &Capture) -> Result<()> {
        let n = self.layers.len();
        if !hooks.routers().is_empty() {
            return Err(Error::Invalid(
                "these hooks decide per input (a SERAC stack): resolve them on the prompt first, as scoring and \
                 generation do"
                    .into(),
            ));
        }
        if let Some(l) = hooks.max_layer().filter(|l| *l >= n) {
            return Err(Error::Invalid(format!("hook on layer {l} but the model has {n} layers")));
        }
        if let Some(l) = capture.max_layer().filter(|l| *l >= n) {
            return Err(Error::Invalid(format!("capture at layer {l} but the model has {n} layers")));
        }
        Ok(())
    }

    /// The attention projections of layer `layer` and its `self_attn_layer_norm` (shared with the model).
    pub fn attention_parts(&self, layer: usize) -> Result<AttnParts> {
        let l = self.layers.get(layer).ok_or_else(|| {
            Error::Invalid(format!("layer {layer} does not exist (the decoder has {})", self.layers.len()))
        })?;
        let a = &l.self_attn;
        Ok(AttnParts::new(
            InputNorm::Layer(l.self_attn_layer_norm.clone()),
            [a.q_proj.clone(), a.k_proj.clone(), a.v_proj.clone(), a.out_proj.clone()],
            a.n_heads,
            a.n_heads,
            a.head_dim,
        ))
    }

    /// Layer `layer`'s `self_attn_layer_norm` (what its attention reads), `(.., d)` → `(.., d)`.
    pub fn input_norm(&self, layer: usize, x: &Tensor) -> Result<Tensor> {
        let l = self.layers.get(layer).ok_or_else(|| {
            Error::Invalid(format!("layer {layer} does not exist (the decoder has {})", self.layers.len()))
        })?;
        l.self_attn_layer_norm.forward(x)
    }

    /// The decoder's `final_layer_norm` (identity when the config removes it), `(b, s, d)` → `(b, s, d)`.
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        match &self.final_layer_norm {
            Some(n) => n.forward(x),
            None => Ok(x.clone()),
        }
    }

    /// The FFN weights of layer `layer`, shared with the model: `fc1 (ffn, d)` and its bias `(ffn)` if any, `fc2
    /// (d, ffn)`, and the activation; for hooks that change the FFN.
    pub fn ffn_weights(&self, layer: usize) -> Result<(Tensor, Option<Tensor>, Tensor, Activation)> {
        let l = self.layers.get(layer).ok_or_else(|| {
            Error::Invalid(format!("layer {layer} does not exist (the decoder has {})", self.layers.len()))
        })?;
        Ok((l.fc1.weight().clone(), l.fc1.bias().cloned(), l.fc2.weight().clone(), l.act))
    }

    /// Rows of the output head for `ids (n)`: the direction each token's logit reads, `(n, d)` f32.
    pub fn unembedding(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.weight().index_select(ids, 0)?.to_dtype(DType::F32)?)
    }

    /// Vocabulary logits of normed states: `(b, s, d)` → `(b, s, vocab)` in f32.
    pub fn lm_head(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(x)?.to_dtype(DType::F32)?)
    }
}
