//! The LLaMA decoder of LLaVA (Touvron et al., 2023): RMSNorm, rotary position embeddings, SwiGLU FFN,
//! grouped-query attention, a KV cache, and the UniKE hook seams ([`crate::hooks`]).
//!
//! Weight names mirror transformers' `LlamaModel` (`embed_tokens`, `layers.{i}.self_attn.q_proj`, ...).

use std::ops::Range;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use super::attention::{AttnParts, InputNorm};
use super::cache::{KvCache, LayerKv};
use super::config::{RopeScaling, TextConfig};
use super::kernels;
use super::norm::RmsNorm;
use crate::error::{Error, Result};
use crate::hooks::{
    add_ffn_extras, shift_attention, AttnContext, Capture, CapturePoint, ContextKv, Hooks, LayerHooks, Proj, ProjSite,
};

/// Precomputed rotary tables, `cos`/`sin` of shape `(max_positions, head_dim / 2)`.
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(cfg: &TextConfig, dtype: DType, device: &Device) -> Result<Self> {
        let dim = cfg.head_dim;
        let mut inv_freq: Vec<f64> =
            (0..dim).step_by(2).map(|i| 1.0 / cfg.rope_theta.powf(i as f64 / dim as f64)).collect();
        match &cfg.rope_scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        let n = cfg.max_position_embeddings;
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for f in &inv_freq {
                // transformers computes the angle in f32; doing the same keeps parity at long positions.
                let angle = (p as f32) * (*f as f32);
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?;
        Ok(Self { cos, sin })
    }

    /// Rotates `x` of shape `(b, heads, s, head_dim)` for positions `start..start + s`.
    fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let s = x.dim(2)?;
        let max = self.cos.dim(0)?;
        if start + s > max {
            return Err(Error::Invalid(format!(
                "sequence of {} positions exceeds max_position_embeddings {max}",
                start + s
            )));
        }
        let cos = self.cos.narrow(0, start, s)?;
        let sin = self.sin.narrow(0, start, s)?;
        Ok(kernels::rope(&x.contiguous()?, &cos, &sin)?)
    }
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

fn linear(vb: VarBuilder, i: usize, o: usize, bias: bool) -> Result<Linear> {
    Ok(if bias { candle_nn::linear(i, o, vb)? } else { candle_nn::linear_no_bias(i, o, vb)? })
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &TextConfig) -> Result<Self> {
        let (d, h, kvh, hd) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        Ok(Self {
            q_proj: linear(vb.pp("q_proj"), d, h * hd, cfg.attention_bias)?,
            k_proj: linear(vb.pp("k_proj"), d, kvh * hd, cfg.attention_bias)?,
            v_proj: linear(vb.pp("v_proj"), d, kvh * hd, cfg.attention_bias)?,
            o_proj: linear(vb.pp("o_proj"), h * hd, d, cfg.attention_bias)?,
            n_heads: h,
            n_kv_heads: kvh,
            head_dim: hd,
        })
    }

    /// `x`: `(b, s, d)` normed states at positions `start..start + s`; returns `(b, s, d)`.
    ///
    /// `prefix`: keys (already rotated for positions `0..n`) and values `(b, kv_heads, n, head_dim)` of an in-context
    /// prefix that every position attends to, as if it had been prepended; the input's positions then start at
    /// `n + start`. The cache holds only the input's keys and values.
    fn forward(
        &self,
        x: &Tensor,
        start: usize,
        rope: &Rope,
        kv: Option<&mut LayerKv>,
        prefix: Option<&(Tensor, Tensor)>,
        site: ProjSite<'_>,
    ) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let split = |t: Tensor, heads: usize| -> Result<Tensor> {
            Ok(t.reshape((b, s, heads, self.head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let pos = start + prefix.map(|(k, _)| k.dim(2)).transpose()?.unwrap_or(0);
        let q = rope.apply(&split(site.project(Proj::Q, &self.q_proj, x)?, self.n_heads)?, pos)?;
        let mut k = rope.apply(&split(site.project(Proj::K, &self.k_proj, x)?, self.n_kv_heads)?, pos)?;
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
        let total = k.dim(2)?;
        let rep = self.n_heads / self.n_kv_heads;
        let k = repeat_kv(k, rep)?;
        let v = repeat_kv(v, rep)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut att = (q.matmul(&k.t()?)? * scale)?;
        if s > 1 {
            att = att.broadcast_add(&causal_mask(s, total, att.dtype(), att.device())?)?;
        }
        let att = kernels::softmax_last_dim(&att.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, s, self.n_heads * self.head_dim))?;
        site.project(Proj::O, &self.o_proj, &y)
    }
}

/// `(s, total)` additive mask: query `i` (absolute position `total - s + i`) sees keys `0..=total - s + i`.
fn causal_mask(s: usize, total: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let offset = total - s;
    let mask: Vec<f32> =
        (0..s).flat_map(|i| (0..total).map(move |j| if j > offset + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Ok(Tensor::from_vec(mask, (s, total), device)?.to_dtype(dtype)?)
}

/// `(b, kvh, s, hd)` → `(b, kvh * rep, s, hd)`, each kv head repeated `rep` times in place.
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
    act: super::config::Activation,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &TextConfig) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: linear(vb.pp("gate_proj"), d, i, cfg.mlp_bias)?,
            up_proj: linear(vb.pp("up_proj"), d, i, cfg.mlp_bias)?,
            down_proj: linear(vb.pp("down_proj"), i, d, cfg.mlp_bias)?,
            act: cfg.hidden_act,
        })
    }

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
    fn load(vb: VarBuilder, cfg: &TextConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            input_layernorm: RmsNorm::load(d, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            post_attention_layernorm: RmsNorm::load(d, cfg.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        idx: usize,
        x: &Tensor,
        start: usize,
        rope: &Rope,
        kv: Option<&mut LayerKv>,
        hooks: Option<&LayerHooks>,
        prefix: Option<&(Tensor, Tensor)>,
        capture: &mut Capture,
    ) -> Result<Tensor> {
        capture.put(idx, CapturePoint::LayerInput, x);
        let normed = self.input_layernorm.forward(x)?;
        let attn = self.self_attn.forward(&normed, start, rope, kv, prefix, ProjSite { hooks, layer: idx })?;
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

/// The LLaMA decoder.
#[derive(Debug, Clone)]
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    cfg: TextConfig,
}

impl Llama {
    /// Loads from `vb` at the `LlamaModel` prefix and `lm_head` at its own prefix (`lm_head` is ignored when the
    /// embeddings are tied).
    pub fn load(vb: VarBuilder, lm_head: VarBuilder, cfg: &TextConfig) -> Result<Self> {
        let embed_tokens = candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("embed_tokens"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(vb.pp("layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed_tokens.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(cfg.hidden_size, cfg.vocab_size, lm_head)?
        };
        let rope = Rope::new(cfg, vb.dtype(), vb.device())?;
        Ok(Self { embed_tokens, layers, norm, lm_head, rope, cfg: cfg.clone() })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    /// The gate and up projections `(i, d)` of layer `layer`'s MLP and its activation (shared with the model, not
    /// copied), for hooks that change the down projection. MLPs with biases are not supported.
    pub fn mlp_gate_up(&self, layer: usize) -> Result<(Tensor, Tensor, super::config::Activation)> {
        let l = self.layers.get(layer).ok_or_else(|| {
            Error::Invalid(format!("layer {layer} does not exist (the decoder has {})", self.layers.len()))
        })?;
        if self.cfg.mlp_bias {
            return Err(Error::Invalid("down-projection deltas need an MLP without biases".into()));
        }
        Ok((l.mlp.gate_proj.weight().clone(), l.mlp.up_proj.weight().clone(), l.mlp.act))
    }

    /// The down projection weight `(d, i)` of layer `layer`'s MLP (what up-projection changes pass through).
    pub fn mlp_down(&self, layer: usize) -> Result<Tensor> {
        let l = self.layers.get(layer).ok_or_else(|| {
            Error::Invalid(format!("layer {layer} does not exist (the decoder has {})", self.layers.len()))
        })?;
        Ok(l.mlp.down_proj.weight().clone())
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Token embeddings: `(b, s)` u32 ids → `(b, s, d)`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.embed_tokens.forward(ids)?)
    }

    /// Runs decoder layers `layers` on `x` of shape `(b, s, d)` at positions `start..start + s`.
    ///
    /// Sequences in a batch share positions (right padding: a causal mask keeps real tokens from seeing pads).
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
        if layers.end > self.layers.len() {
            return Err(Error::Invalid(format!("layer range {layers:?} exceeds {} layers", self.layers.len())));
        }
        if !hooks.routers().is_empty() {
            return Err(Error::Invalid(
                "these hooks decide per input (a SERAC stack): resolve them on the prompt first (VisionLanguageModel::route), as \
                 scoring and generation do"
                    .into(),
            ));
        }
        if let Some(l) = hooks.max_layer().filter(|l| *l >= self.layers.len()) {
            return Err(Error::Invalid(format!("hook on layer {l} but the model has {} layers", self.layers.len())));
        }
        if let Some(l) = capture.max_layer().filter(|l| *l >= self.layers.len()) {
            return Err(Error::Invalid(format!("capture at layer {l} but the model has {} layers", self.layers.len())));
        }
        let mut x = x.clone();
        let b = x.dim(0)?;
        for i in layers {
            let kv = match cache.as_deref_mut() {
                Some(c) => Some(c.layer_mut(i)?),
                None => None,
            };
            let prefix = self.context_prefix(hooks, i, b)?;
            x = self.layers[i].forward(i, &x, start, &self.rope, kv, hooks.layer(i), prefix.as_ref(), capture)?;
        }
        Ok(x)
    }

    /// Runs the FFN half of layer `layer` on its post-attention state `x (b, s, d)` (captured as
    /// [`CapturePoint::PostAttention`]), then layers `layer + 1..` to the end, at positions `0..s` without a cache.
    /// Edit methods whose parameters sit in the FFN of `layer` and above use it to run the attention half once.
    /// Returns `(b, s, d)`, as [`Llama::forward_layers`] from `layer` would.
    pub fn forward_from_ffn(&self, x: &Tensor, layer: usize, hooks: &Hooks, capture: &mut Capture) -> Result<Tensor> {
        let n = self.layers.len();
        let block = self
            .layers
            .get(layer)
            .ok_or_else(|| Error::Invalid(format!("layer {layer} of a model with {n} layers")))?;
        let x = block.forward_ffn(layer, x, hooks.layer(layer), capture)?;
        self.forward_layers(&x, 0, layer + 1..n, None, hooks, capture)
    }

    /// Positions the in-context prefixes may take together: half of the position window (the other half is the
    /// prompt's and the answer's).
    pub fn context_budget(&self) -> usize {
        self.cfg.max_position_embeddings / 2
    }

    /// Keys (rotated for positions `0..n`) and values `(b, kv_heads, n, head_dim)` of the in-context prefixes of
    /// `hooks` at layer `i`, in stack order; `None` without one. Prefixes take at most half of the position window:
    /// the most recent ones that fit (older demonstrations fall out of the context, as they would from a prompt).
    fn context_prefix(&self, hooks: &Hooks, i: usize, b: usize) -> Result<Option<(Tensor, Tensor)>> {
        let kept = hooks.kept_contexts(self.context_budget());
        if kept.is_empty() {
            return Ok(None);
        }
        let (k, v) = ContextKv::side_by_side(&kept, i, self.layers.len())?;
        let k = self.rope.apply(&k, 0)?;
        let (_, h, n, hd) = k.dims4()?;
        Ok(Some((k.expand((b, h, n, hd))?.contiguous()?, v.expand((b, h, n, hd))?.contiguous()?)))
    }

    /// The attention projections of layer `layer` and its input norm (shared with the model, not copied), for hooks
    /// that attend over memory (latent in-context editing) or precompute an in-context prefix.
    pub fn attention_parts(&self, layer: usize) -> Result<AttnParts> {
        let l = self.layers.get(layer).ok_or_else(|| {
            Error::Invalid(format!("layer {layer} does not exist (the decoder has {})", self.layers.len()))
        })?;
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
        self.attention_parts(layer)?.norm(x)
    }

    /// Final RMSNorm, `(b, s, d)` → `(b, s, d)`.
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.norm.forward(x)
    }

    /// Vocabulary logits of normed states: `(b, s, d)` → `(b, s, vocab)` in f32.
    /// Rows of the output projection for `ids (n)`: the direction each token's logit reads, `(n, d)` f32.
    pub fn unembedding(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.weight().index_select(ids, 0)?.to_dtype(DType::F32)?)
    }

    pub fn lm_head(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(x)?.to_dtype(DType::F32)?)
    }
}
