//! The Qwen2 decoder of Qwen2-VL (Wang et al., "Qwen2-VL: Enhancing Vision-Language Model's Perception of the World
//! at Any Resolution", 2024): RMSNorm, grouped-query attention with biased q/k/v projections, multimodal rotary
//! position embeddings (M-RoPE), a SwiGLU FFN, a KV cache, and the UniKE hook seams ([`crate::hooks`]).
//!
//! Weight names mirror transformers' `Qwen2VLTextModel` as published (`model.embed_tokens`,
//! `model.layers.{i}.self_attn.{q,k,v,o}_proj`, `model.layers.{i}.mlp.{gate,up,down}_proj`,
//! `model.layers.{i}.{input,post_attention}_layernorm`, `model.norm`).
//!
//! M-RoPE: positions are a `(3, b, s)` tensor (temporal, height, width rows; equal for text). The `head_dim / 2`
//! rotary frequencies are split into `mrope_section` contiguous chunks, the first reading the temporal row, the
//! second the height row, the third the width row; the angles are then duplicated (`rotate_half` layout, as LLaMA).
//!
//! Per decoder layer `l` the hooks sit where they sit in the LLaMA decoder ([`super::llama`]):
//!
//! ```text
//! r = x                                              capture: LayerInput  (layer 0: the input embeddings)
//! a = o_proj(attn(input_layernorm(x)))
//! a = attn_hook_n(... attn_hook_1(a))                capture: AttnOutput  (AttnContext.normed: the RMSNorm'd x)
//! x = r + a                                          capture: PostAttention
//! q = post_attention_layernorm(x)                    capture: FfnInput    ("the FFN" reads q)
//! x = x + down_proj(silu(gate_proj(q)) · up_proj(q)) + Σ ffn_hook_i(q)
//!                                                    capture: LayerOutput (extra neurons add to down_proj's output)
//! ```
//!
//! In-context key/value prefixes (IKE) and per-input routers (SERAC) are refused with [`Error::Invalid`]: a prefix
//! would need M-RoPE positions of its own.

use std::ops::Range;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};

use super::attention::{AttnParts, InputNorm};
use super::cache::{KvCache, LayerKv};
use super::config::Activation;
use super::kernels;
use super::norm::RmsNorm;
use super::qwen2vl_config::Qwen2TextConfig;
use crate::error::{Error, Result};
use crate::hooks::{
    add_ffn_extras, shift_attention, AttnContext, Capture, CapturePoint, ContextKv, Hooks, LayerHooks, Proj, ProjSite,
};

fn linear(vb: VarBuilder, i: usize, o: usize, bias: bool) -> Result<Linear> {
    Ok(if bias { candle_nn::linear(i, o, vb)? } else { candle_nn::linear_no_bias(i, o, vb)? })
}

/// Rotary tables of one forward: `cos`, `sin` of shape `(b, 1, s, head_dim)`, in the model's dtype.
#[derive(Debug, Clone)]
pub struct MropeTables {
    cos: Tensor,
    sin: Tensor,
}

impl MropeTables {
    /// `x (b, heads, s, hd)` → `x·cos + rotate_half(x)·sin`.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let hd = x.dim(D::Minus1)?;
        let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
        let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
        let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok((x.broadcast_mul(&self.cos)? + rot.broadcast_mul(&self.sin)?)?)
    }
}

/// Additive attention mask `(b, 1, s, total)`: causal over the cache, keys whose `key_mask` is 0 hidden (left
/// padding), a query always seeing itself (so padded rows stay finite).
fn attention_mask(b: usize, s: usize, total: usize, key_mask: Option<&[Vec<u32>]>, device: &Device) -> Result<Tensor> {
    let offset = total - s;
    let mut m = Vec::with_capacity(b * s * total);
    for r in 0..b {
        for i in 0..s {
            for j in 0..total {
                let causal = j <= offset + i;
                let kept = key_mask.is_none_or(|km| km[r].get(j).is_none_or(|&v| v != 0));
                m.push(if causal && (kept || j == offset + i) { 0f32 } else { f32::NEG_INFINITY });
            }
        }
    }
    Ok(Tensor::from_vec(m, (b, 1, s, total), device)?)
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &Qwen2TextConfig) -> Result<Self> {
        let (d, h, kvh, hd) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        Ok(Self {
            q_proj: linear(vb.pp("q_proj"), d, h * hd, true)?,
            k_proj: linear(vb.pp("k_proj"), d, kvh * hd, true)?,
            v_proj: linear(vb.pp("v_proj"), d, kvh * hd, true)?,
            o_proj: linear(vb.pp("o_proj"), h * hd, d, false)?,
            n_heads: h,
            n_kv_heads: kvh,
            head_dim: hd,
        })
    }

    /// `x (b, s, d)` normed states; `mask (b, 1, s, total)` additive (the prefix's columns first); returns
    /// `(b, s, d)`. `prefix`: rotated keys and values `(b, kv_heads, n, head_dim)` of an in-context prefix every
    /// position attends to, as if it had been prepended (the cache holds only the input's).
    fn forward(
        &self,
        x: &Tensor,
        rope: &MropeTables,
        mask: &Tensor,
        kv: Option<&mut LayerKv>,
        prefix: Option<&(Tensor, Tensor)>,
        site: ProjSite<'_>,
    ) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let split = |t: Tensor, heads: usize| -> Result<Tensor> {
            Ok(t.reshape((b, s, heads, self.head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let q = rope.apply(&split(site.project(Proj::Q, &self.q_proj, x)?, self.n_heads)?)?;
        let mut k = rope.apply(&split(site.project(Proj::K, &self.k_proj, x)?, self.n_kv_heads)?)?;
        let mut v = split(site.project(Proj::V, &self.v_proj, x)?, self.n_kv_heads)?;
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
        let rep = self.n_heads / self.n_kv_heads;
        let k = repeat_kv(k, rep)?;
        let v = repeat_kv(v, rep)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let att = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?.broadcast_add(mask)?;
        let att = kernels::softmax_last_dim(&att)?.to_dtype(v.dtype())?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, s, self.n_heads * self.head_dim))?;
        site.project(Proj::O, &self.o_proj, &y)
    }
}

/// `(b, kvh, s, hd)` → `(b, kvh · rep, s, hd)`, each kv head repeated `rep` times in place.
fn repeat_kv(x: Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x);
    }
    let (b, kvh, s, hd) = x.dims4()?;
    Ok(x.unsqueeze(2)?.expand((b, kvh, rep, s, hd))?.reshape((b, kvh * rep, s, hd))?)
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    /// `(b, s, d)` → `(b, s, d)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.act.apply(&self.gate_proj.forward(x)?)?;
        Ok(self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)?)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn load(vb: VarBuilder, cfg: &Qwen2TextConfig) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        let m = vb.pp("mlp");
        Ok(Self {
            input_layernorm: RmsNorm::load(d, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            post_attention_layernorm: RmsNorm::load(d, cfg.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
            mlp: Mlp {
                gate_proj: linear(m.pp("gate_proj"), d, i, false)?,
                up_proj: linear(m.pp("up_proj"), d, i, false)?,
                down_proj: linear(m.pp("down_proj"), i, d, false)?,
                act: cfg.hidden_act,
            },
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        idx: usize,
        x: &Tensor,
        start: usize,
        rope: &MropeTables,
        mask: &Tensor,
        kv: Option<&mut LayerKv>,
        prefix: Option<&(Tensor, Tensor)>,
        hooks: Option<&LayerHooks>,
        capture: &mut Capture,
    ) -> Result<Tensor> {
        capture.put(idx, CapturePoint::LayerInput, x);
        let normed = self.input_layernorm.forward(x)?;
        let attn = self.self_attn.forward(&normed, rope, mask, kv, prefix, ProjSite { hooks, layer: idx })?;
        let ctx = AttnContext { layer: idx, start_pos: start, residual: x, normed: &normed };
        let attn = shift_attention(hooks, &ctx, attn, capture)?;
        capture.put(idx, CapturePoint::AttnOutput, &attn);
        let x = (x + attn)?;
        capture.put(idx, CapturePoint::PostAttention, &x);
        self.forward_ffn(idx, &x, hooks, capture)
    }

    /// The FFN half of the layer on the post-attention state `x (b, s, d)`.
    fn forward_ffn(&self, idx: usize, x: &Tensor, hooks: Option<&LayerHooks>, capture: &mut Capture) -> Result<Tensor> {
        let q = self.post_attention_layernorm.forward(x)?;
        capture.put(idx, CapturePoint::FfnInput, &q);
        let ffn = add_ffn_extras(hooks, idx, &q, self.mlp.forward(&q)?)?;
        let out = (x + ffn)?;
        capture.put(idx, CapturePoint::LayerOutput, &out);
        Ok(out)
    }
}

/// The in-context prefixes of one forward pass: per layer, rotated keys and values `(1, kv_heads, n, head_dim)`;
/// `span`, the positions they take.
struct Prefix {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    span: usize,
}

impl Prefix {
    /// Layer `i`'s keys and values for a batch of `b`.
    fn layer(&self, i: usize, b: usize) -> Result<(Tensor, Tensor)> {
        let (k, v) = (&self.keys[i], &self.values[i]);
        let (_, h, n, hd) = k.dims4()?;
        Ok((k.expand((b, h, n, hd))?.contiguous()?, v.expand((b, h, n, hd))?.contiguous()?))
    }
}

/// The Qwen2 decoder with its output head.
#[derive(Debug, Clone)]
pub struct Qwen2 {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    /// `head_dim / 2` inverse frequencies (f32, as transformers computes the angles).
    inv_freq: Vec<f32>,
    cfg: Qwen2TextConfig,
}

impl Qwen2 {
    /// Loads from `vb` at the decoder prefix (`model`) and the head from `lm_head` (ignored when tied).
    pub fn load(vb: VarBuilder, lm_head: VarBuilder, cfg: &Qwen2TextConfig) -> Result<Self> {
        let embed_tokens = candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("embed_tokens"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(vb.pp("layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed_tokens.embeddings().clone(), None)
        } else if lm_head.contains_tensor("weight") {
            candle_nn::linear_no_bias(cfg.hidden_size, cfg.vocab_size, lm_head)?
        } else {
            return Err(Error::Invalid(
                "the Qwen2 head is untied (tie_word_embeddings false) but the checkpoint has no lm_head.weight".into(),
            ));
        };
        let hd = cfg.head_dim;
        let inv_freq = (0..hd).step_by(2).map(|i| (1.0 / cfg.rope_theta.powf(i as f64 / hd as f64)) as f32).collect();
        Ok(Self { embed_tokens, layers, norm, lm_head, inv_freq, cfg: cfg.clone() })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &Qwen2TextConfig {
        &self.cfg
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Token embeddings: `(b, s)` u32 ids → `(b, s, d)`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.embed_tokens.forward(ids)?)
    }

    /// M-RoPE tables of `positions (3, b, s)` (u32 or i64): frequency `k` reads the row its `mrope_section` chunk
    /// names; angles in f32, duplicated to `head_dim`. Returns tables of `(b, 1, s, head_dim)` in `dtype`.
    pub fn mrope(&self, positions: &Tensor, dtype: DType) -> Result<MropeTables> {
        let (three, b, s) = positions.dims3()?;
        if three != 3 {
            return Err(Error::Invalid(format!("M-RoPE positions must be (3, b, s), got {:?}", positions.dims())));
        }
        let pos = positions.to_dtype(DType::F32)?.to_vec3::<f32>()?;
        let mut row_of = Vec::with_capacity(self.inv_freq.len());
        for (r, &n) in self.cfg.mrope_section.iter().enumerate() {
            row_of.extend(std::iter::repeat_n(r, n));
        }
        let hd = self.cfg.head_dim;
        let at = |r: usize, bi: usize, si: usize| pos[r][bi][si];
        let mut cos = Vec::with_capacity(b * s * hd);
        let mut sin = Vec::with_capacity(b * s * hd);
        for bi in 0..b {
            for si in 0..s {
                let angles: Vec<f32> = self.inv_freq.iter().zip(&row_of).map(|(f, &r)| at(r, bi, si) * f).collect();
                for _ in 0..2 {
                    for a in &angles {
                        cos.push(a.cos());
                        sin.push(a.sin());
                    }
                }
            }
        }
        let dev = positions.device();
        let t = |v: Vec<f32>| -> Result<Tensor> { Ok(Tensor::from_vec(v, (b, 1, s, hd), dev)?.to_dtype(dtype)?) };
        Ok(MropeTables { cos: t(cos)?, sin: t(sin)? })
    }

    /// Runs decoder layers `layers` on `x (b, s, d)` at M-RoPE `positions (3, b, s)`, after `cache.len()` cached
    /// positions (0 without a cache). `key_mask`: per row, 1 for real tokens and 0 for (left) padding, over the
    /// cached and new positions together; `None` when nothing is padded. With a cache, each layer's keys and values
    /// are appended to it. Returns `(b, s, d)`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_layers(
        &self,
        x: &Tensor,
        positions: &Tensor,
        key_mask: Option<&Tensor>,
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
        let (b, s, _) = x.dims3()?;
        let start = cache.as_deref().map(|c| c.len()).unwrap_or(0);
        let rope = self.mrope(positions, x.dtype())?;
        let km = key_mask.map(|m| m.to_dtype(DType::U32)?.to_vec2::<u32>()).transpose()?;
        if let Some(km) = &km {
            if km.len() != b || km.iter().any(|r| r.len() != start + s) {
                return Err(Error::Invalid(format!("key mask must be ({b}, {}) for this input", start + s)));
            }
        }
        let mut mask = attention_mask(b, s, start + s, km.as_deref(), x.device())?;
        let prefix = self.context_prefix(hooks, x.dtype())?;
        let rope = match &prefix {
            // The input's positions come after the prefixes'.
            Some(p) => self.mrope(&(positions.to_dtype(DType::U32)? + p.span as f64)?, x.dtype())?,
            None => rope,
        };
        if let Some(p) = &prefix {
            let n = p.keys.first().map(|k| k.dim(2)).transpose()?.unwrap_or(0);
            mask = Tensor::cat(&[&Tensor::zeros((b, 1, s, n), mask.dtype(), mask.device())?, &mask], 3)?;
        }
        let mut x = x.clone();
        for i in layers {
            let kv = match cache.as_deref_mut() {
                Some(c) => Some(c.layer_mut(i)?),
                None => None,
            };
            let kv_prefix = match &prefix {
                Some(p) => Some(p.layer(i, b)?),
                None => None,
            };
            x = self.layers[i].forward(i, &x, start, &rope, &mask, kv, kv_prefix.as_ref(), hooks.layer(i), capture)?;
        }
        Ok(x)
    }

    /// Positions the in-context prefixes may take together: half of the position window.
    pub fn context_budget(&self) -> usize {
        self.cfg.max_position_embeddings / 2
    }

    /// The in-context prefixes of `hooks` that fit the budget, their keys rotated at their own multimodal positions
    /// (each moved past the ones before it), and the positions they take together.
    fn context_prefix(&self, hooks: &Hooks, dtype: DType) -> Result<Option<Prefix>> {
        let kept = hooks.kept_contexts(self.context_budget());
        if kept.is_empty() {
            return Ok(None);
        }
        let n_layers = self.layers.len();
        let mut positions = Vec::with_capacity(kept.len());
        let mut span = 0usize;
        for c in &kept {
            let own = match &c.positions {
                Some(p) => p.to_dtype(DType::U32)?,
                None => {
                    let n = c.len() as u32;
                    Tensor::arange(0u32, n, &self.rope_device())?.unsqueeze(0)?.repeat((3, 1))?
                }
            };
            positions.push((own + span as f64)?);
            span += c.span()?;
        }
        let tables = self.mrope(&Tensor::cat(&positions, 1)?.unsqueeze(1)?, dtype)?;
        let mut keys = Vec::with_capacity(n_layers);
        let mut values = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            let (k, v) = ContextKv::side_by_side(&kept, i, n_layers)?;
            keys.push(tables.apply(&k.to_dtype(dtype)?)?);
            values.push(v);
        }
        Ok(Some(Prefix { keys, values, span }))
    }

    fn rope_device(&self) -> candle_core::Device {
        self.embed_tokens.embeddings().device().clone()
    }

    /// Runs the FFN half of layer `layer` on its post-attention state `x (b, s, d)`, then layers `layer + 1..` at
    /// `positions (3, b, s)` without a cache or padding. Returns `(b, s, d)`.
    pub fn forward_from_ffn(
        &self,
        x: &Tensor,
        positions: &Tensor,
        layer: usize,
        hooks: &Hooks,
        capture: &mut Capture,
    ) -> Result<Tensor> {
        let n = self.layers.len();
        let block = self
            .layers
            .get(layer)
            .ok_or_else(|| Error::Invalid(format!("layer {layer} of a model with {n} layers")))?;
        self.check_hooks(hooks, capture)?;
        let x = block.forward_ffn(layer, x, hooks.layer(layer), capture)?;
        self.forward_layers(&x, positions, None, layer + 1..n, None, hooks, capture)
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

    /// The gate and up projections `(i, d)` of layer `layer`'s MLP and its activation, for hooks that change the
    /// down projection.
    pub fn mlp_gate_up(&self, layer: usize) -> Result<(Tensor, Tensor, Activation)> {
        let l = self.layer(layer)?;
        Ok((l.mlp.gate_proj.weight().clone(), l.mlp.up_proj.weight().clone(), l.mlp.act))
    }

    /// The down projection weight `(d, i)` of layer `layer`'s MLP.
    pub fn mlp_down(&self, layer: usize) -> Result<Tensor> {
        Ok(self.layer(layer)?.mlp.down_proj.weight().clone())
    }

    fn layer(&self, layer: usize) -> Result<&DecoderLayer> {
        self.layers.get(layer).ok_or_else(|| {
            Error::Invalid(format!("layer {layer} does not exist (the decoder has {})", self.layers.len()))
        })
    }

    /// The attention projections of layer `layer` and its `input_layernorm` (shared with the model).
    pub fn attention_parts(&self, layer: usize) -> Result<AttnParts> {
        let l = self.layer(layer)?;
        let a = &l.self_attn;
        Ok(AttnParts::new(
            InputNorm::Rms(l.input_layernorm.clone()),
            [a.q_proj.clone(), a.k_proj.clone(), a.v_proj.clone(), a.o_proj.clone()],
            a.n_heads,
            a.n_kv_heads,
            a.head_dim,
        ))
    }

    /// Layer `layer`'s `input_layernorm` (what its attention reads), `(.., d)` → `(.., d)`.
    pub fn input_norm(&self, layer: usize, x: &Tensor) -> Result<Tensor> {
        self.layer(layer)?.input_layernorm.forward(x)
    }

    /// Final RMSNorm, `(b, s, d)` → `(b, s, d)`.
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.norm.forward(x)
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
