//! One interface over every vision-language backbone (issue 18 §1): what edit methods, the evaluation harness, the
//! studio and the CLI see of a model. Implemented by [`super::Llava`] (LLaVA-1.5, LLaMA decoder),
//! [`super::Blip2`] (BLIP-2, OPT decoder) and [`super::Qwen2Vl`] (Qwen2-VL, Qwen2 decoder with M-RoPE).
//!
//! Every family keeps the three hook seams of [`crate::hooks`] in the same places of its decoder layer:
//!
//! | seam | LLaMA (LLaVA) | OPT (BLIP-2) | Qwen2 (Qwen2-VL) |
//! |---|---|---|---|
//! | layer input | residual | residual (layer 0: tokens + learned positions) | residual |
//! | attention output (shift) | `o_proj` output | `out_proj` output (bias included) | `o_proj` output |
//! | FFN query `q` | `post_attention_layernorm(x)` | `final_layer_norm(x)` of the layer | `post_attention_layernorm(x)` |
//! | FFN | `down(act(gate q) · up q)` | `fc2(relu(fc1 q + b1)) + b2` | `down(act(gate q) · up q)` |
//!
//! Extra FFN neurons ([`crate::hooks::FfnHook`]) read `q` and add to the FFN output in all three.
//!
//! Dispatch is dynamic (`&dyn VisionLanguageModel`): one compiled copy of every method, and each call is a whole
//! pass, so the indirection costs nothing measurable.

use std::fmt;
use std::ops::Range;

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use super::attention::AttnParts;
use super::cache::KvCache;
use super::ffn::FfnParts;
use super::generate::{GenerateOptions, Generation};
use super::route::Routes;
use crate::error::{Error, Result};
use crate::hooks::{Capture, Hooks};

/// A model family: its architecture, processor and checkpoint layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// `LlavaForConditionalGeneration` (llava-hf): CLIP vision tower, MLP projector, LLaMA decoder.
    #[default]
    Llava,
    /// `Blip2ForConditionalGeneration` with OPT: ViT, Q-Former, language projection, OPT decoder.
    Blip2,
    /// `Qwen2VLForConditionalGeneration`: ViT with 2-D rotary positions and patch merger, Qwen2 decoder with M-RoPE.
    Qwen2Vl,
}

impl Family {
    /// The name in hparams files and JSON: `llava`, `blip2`, `qwen2vl`.
    pub fn stem(self) -> &'static str {
        match self {
            Family::Llava => "llava",
            Family::Blip2 => "blip2",
            Family::Qwen2Vl => "qwen2vl",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.stem())
    }
}

/// Preprocessed images, in reading order. Fixed-size families (LLaVA, BLIP-2): `values (n, 3, H, W)`, no grids.
/// Qwen2-VL: `values (Σ t·h·w, C·T·P·P)` patches with one `[t, h, w]` grid per image.
#[derive(Debug, Clone)]
pub struct Pixels {
    pub values: Tensor,
    pub grids: Option<Vec<[usize; 3]>>,
}

impl Pixels {
    /// Images of a fixed-size family, `(n, 3, H, W)`.
    pub fn fixed(values: Tensor) -> Self {
        Self { values, grids: None }
    }

    /// Qwen2-VL patches `(Σ t·h·w, patch_dim)` with their grids.
    pub fn patches(values: Tensor, grids: Vec<[usize; 3]>) -> Self {
        Self { values, grids: Some(grids) }
    }

    /// Number of images.
    pub fn count(&self) -> usize {
        match &self.grids {
            Some(g) => g.len(),
            None => self.values.dim(0).unwrap_or(0),
        }
    }

    /// The images of several inputs, in order (a batch's images).
    pub fn cat(parts: &[&Pixels]) -> Result<Option<Pixels>> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        if parts.len() == 1 {
            return Ok(Some((*first).clone()));
        }
        let values = Tensor::cat(&parts.iter().map(|p| &p.values).collect::<Vec<_>>(), 0)?;
        let grids = match first.grids {
            Some(_) => {
                let mut all = Vec::new();
                for p in parts {
                    all.extend(p.grids.as_ref().ok_or_else(|| Error::Invalid("mixed image layouts".into()))?);
                }
                Some(all)
            }
            None => None,
        };
        Ok(Some(Pixels { values, grids }))
    }

    /// The same images on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Pixels> {
        Ok(Pixels { values: self.values.to_device(device)?, grids: self.grids.clone() })
    }
}

/// Positions of the tokens of an input. Rows of a batch share them (right padding).
#[derive(Debug, Clone)]
pub enum Positions {
    /// Consecutive positions `start..start + s` (LLaMA's rotary, OPT's learned table).
    Offset(usize),
    /// Qwen2-VL's multimodal rotary positions `(3, b, s)` u32 and each row's delta (the next text position minus
    /// the sequence length), as transformers' `get_rope_index` gives them.
    Mrope { ids: Tensor, deltas: Vec<i64> },
}

impl Positions {
    /// The first `len` positions.
    pub fn narrow(&self, len: usize) -> Result<Positions> {
        Ok(match self {
            Positions::Offset(s) => Positions::Offset(*s),
            Positions::Mrope { ids, deltas } => {
                Positions::Mrope { ids: ids.narrow(2, 0, len)?, deltas: deltas.clone() }
            }
        })
    }

    /// The positions of right-padded rows `rows` (one row each), `longest` tokens per row: each row's own
    /// positions, the padding continuing them (the causal mask keeps real tokens from seeing the pads).
    pub fn right_padded(rows: &[&Positions], longest: usize) -> Result<Positions> {
        let Some(first) = rows.first() else {
            return Ok(Positions::Offset(0));
        };
        match first {
            Positions::Offset(start) => {
                if rows.iter().any(|r| !matches!(r, Positions::Offset(s) if s == start)) {
                    return Err(Error::Invalid("rows of a batch must start at the same position".into()));
                }
                Ok(Positions::Offset(*start))
            }
            Positions::Mrope { ids, .. } => {
                let device = ids.device().clone();
                let mut flat: Vec<Vec<u32>> = (0..3).map(|_| Vec::with_capacity(rows.len() * longest)).collect();
                let mut deltas = Vec::with_capacity(rows.len());
                for r in rows {
                    let Positions::Mrope { ids, deltas: d } = r else {
                        return Err(Error::Invalid("mixed position kinds in a batch".into()));
                    };
                    let v = ids.to_vec3::<u32>()?;
                    for (axis, out) in flat.iter_mut().enumerate() {
                        let row = v
                            .get(axis)
                            .and_then(|a| a.first())
                            .ok_or_else(|| Error::Invalid("multimodal positions must be (3, 1, s) per row".into()))?;
                        if row.len() > longest {
                            return Err(Error::Invalid("a row is longer than the batch".into()));
                        }
                        let next = row.iter().max().map_or(0, |m| m + 1);
                        out.extend_from_slice(row);
                        out.extend((0..(longest - row.len()) as u32).map(|i| next + i));
                    }
                    deltas.extend_from_slice(d);
                }
                let flat: Vec<u32> = flat.into_iter().flatten().collect();
                Ok(Positions::Mrope { ids: Tensor::from_vec(flat, (3, rows.len(), longest), &device)?, deltas })
            }
        }
    }

    /// Row `i`'s positions (as a batch of one).
    pub fn row(&self, i: usize) -> Result<Positions> {
        Ok(match self {
            Positions::Offset(s) => Positions::Offset(*s),
            Positions::Mrope { ids, deltas } => Positions::Mrope {
                ids: ids.narrow(1, i, 1)?,
                deltas: vec![*deltas.get(i).ok_or_else(|| Error::Invalid(format!("no row {i}")))?],
            },
        })
    }

    /// The first position (`Offset`), for families with consecutive positions.
    pub fn offset(&self) -> Result<usize> {
        match self {
            Positions::Offset(s) => Ok(*s),
            Positions::Mrope { .. } => Err(Error::Invalid("this model takes multimodal rotary positions".into())),
        }
    }
}

/// What the decoder reads: the residual entering layer 0 `(b, s, d)` (image features merged; OPT's learned
/// positions added) and the positions of its tokens.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub embeds: Tensor,
    pub positions: Positions,
}

impl Inputs {
    /// The first `len` tokens of every row.
    pub fn narrow(&self, len: usize) -> Result<Inputs> {
        Ok(Inputs { embeds: self.embeds.narrow(1, 0, len)?, positions: self.positions.narrow(len)? })
    }
}

/// The [`VisionLanguageModel`] methods every family implements the same way: by its fields `device`, `dtype`, `cfg`
/// (`cfg.text.hidden_size`, `cfg.text.vocab_size`) and its decoder `text` (`num_layers`, `context_budget`,
/// `final_norm`, `lm_head`, `input_norm`, `attention_parts`, `unembedding`).
macro_rules! decoder_delegation {
    () => {
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn device(&self) -> &candle_core::Device {
            &self.device
        }
        fn dtype(&self) -> candle_core::DType {
            self.dtype
        }
        fn num_layers(&self) -> usize {
            self.text.num_layers()
        }
        fn hidden_size(&self) -> usize {
            self.cfg.text.hidden_size
        }
        fn vocab_size(&self) -> usize {
            self.cfg.text.vocab_size
        }
        fn context_budget(&self) -> usize {
            self.text.context_budget()
        }
        fn final_norm(&self, h: &Tensor) -> $crate::error::Result<Tensor> {
            self.text.final_norm(h)
        }
        fn logits(&self, h: &Tensor) -> $crate::error::Result<Tensor> {
            self.text.lm_head(h)
        }
        fn input_norm(&self, layer: usize, x: &Tensor) -> $crate::error::Result<Tensor> {
            self.text.input_norm(layer, x)
        }
        fn attention_parts(&self, layer: usize) -> $crate::error::Result<$crate::model::attention::AttnParts> {
            self.text.attention_parts(layer)
        }
        fn unembedding(&self, ids: &Tensor) -> $crate::error::Result<Tensor> {
            self.text.unembedding(ids)
        }
    };
}
pub(crate) use decoder_delegation;

/// A vision-language model with the hook seams of [`crate::hooks`]; see the module header for what each seam is in
/// each family. Shapes: `b` batch, `s` sequence, `d` the decoder's hidden size.
pub trait VisionLanguageModel: Send + Sync + fmt::Debug {
    fn family(&self) -> Family;
    /// The concrete model (world-model training and evaluation need LLaVA itself).
    fn as_any(&self) -> &dyn std::any::Any;
    fn device(&self) -> &Device;
    fn dtype(&self) -> DType;
    fn num_layers(&self) -> usize;
    fn hidden_size(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// The id of the image placeholder token in prompts.
    fn image_token_id(&self) -> u32;
    /// Positions the in-context prefixes (IKE) may take together.
    fn context_budget(&self) -> usize;

    /// Image embeddings as they replace the image tokens: `(n, t, d)` (fixed-size families) or `(Σ tokens, d)`.
    fn image_features(&self, pixels: &Pixels) -> Result<Tensor>;

    /// Inputs of `ids (b, s)` (right-padded rows, positions from 0) with `pixels`' images filling the image-token
    /// runs in reading order over the batch.
    fn embed(&self, ids: &Tensor, pixels: Option<&Pixels>) -> Result<Inputs>;

    /// What the vision-to-language projector reads for `pixels`: LLaVA's selected vision features `(n, t, d_v·k)`,
    /// BLIP-2's Q-Former outputs `(n, q, d_q)`, Qwen2-VL's normed merge windows `(Σ tokens, d_v·merge²)`.
    fn projector_input(&self, pixels: &Pixels) -> Result<Tensor>;

    /// The projector (shared, not copied): `image_features = projector(projector_input)`.
    fn projector_parts(&self) -> Result<super::ProjectorParts>;

    /// [`VisionLanguageModel::embed`] with the image-token runs taking `features` (projected, as
    /// [`VisionLanguageModel::image_features`] gives them) instead of `pixels`' own; `pixels` still give their
    /// grids (Qwen2-VL's positions).
    fn embed_projected(&self, ids: &Tensor, features: Option<&Tensor>, pixels: Option<&Pixels>) -> Result<Inputs>;

    /// Inputs of text-only `ids (b, s)` that continue a sequence whose first pass had `prompt` positions, after
    /// `cache_len` cached tokens (decoding).
    fn embed_next(&self, ids: &Tensor, prompt: &Positions, cache_len: usize) -> Result<Inputs>;

    /// Decoder layers `layers` on the residual `x (b, s, d)` entering `layers.start`, at `positions` (after the
    /// cached ones when `cache` is given). Returns the residual leaving the last layer, `(b, s, d)`.
    fn forward_layers(
        &self,
        x: &Tensor,
        positions: &Positions,
        layers: Range<usize>,
        cache: Option<&mut KvCache>,
        hooks: &Hooks,
        capture: &mut Capture,
    ) -> Result<Tensor>;

    /// The FFN half of layer `layer` on its post-attention state `x (b, s, d)`, then the layers after it, at
    /// `positions` without a cache. Returns `(b, s, d)`, as [`VisionLanguageModel::forward_layers`] from `layer`.
    fn forward_from_ffn(
        &self,
        x: &Tensor,
        positions: &Positions,
        layer: usize,
        hooks: &Hooks,
        capture: &mut Capture,
    ) -> Result<Tensor>;

    /// The final norm, `(b, s, d)` → `(b, s, d)`.
    fn final_norm(&self, h: &Tensor) -> Result<Tensor>;

    /// Vocabulary logits of normed states, `(b, s, d)` → `(b, s, vocab)` f32.
    fn logits(&self, h: &Tensor) -> Result<Tensor>;

    /// Layer `layer`'s input norm (what its attention reads), `(.., d)` → `(.., d)`.
    fn input_norm(&self, layer: usize, x: &Tensor) -> Result<Tensor>;

    /// Layer `layer`'s attention projections (shared), for hooks that attend over memory or encode prefixes.
    fn attention_parts(&self, layer: usize) -> Result<AttnParts>;

    /// Layer `layer`'s FFN weights (shared, not copied).
    fn ffn_parts(&self, layer: usize) -> Result<FfnParts>;

    /// Rows of the output head for `ids (n)`, `(n, d)` f32.
    fn unembedding(&self, ids: &Tensor) -> Result<Tensor>;

    // ---- provided: the same for every family ----

    /// [`VisionLanguageModel::embed`] with `hooks`' changes of the projected image features applied (none: exactly
    /// `embed`).
    fn embed_hooked(&self, ids: &Tensor, pixels: Option<&Pixels>, hooks: &Hooks) -> Result<Inputs> {
        match pixels {
            Some(p) if !hooks.vision().is_empty() => {
                let x = self.projector_input(p)?;
                let mut f = self.projector_parts()?.forward_with(&x, None)?;
                for h in hooks.vision() {
                    f = (f + h.adapt(&x)?.to_dtype(x.dtype())?)?;
                }
                self.embed_projected(ids, Some(&f), Some(p))
            }
            _ => self.embed(ids, pixels),
        }
    }

    /// Every decoder layer and the final norm on `inputs`. Returns the normed last hidden states `(b, s, d)`.
    fn forward_inputs(
        &self,
        inputs: &Inputs,
        cache: Option<&mut KvCache>,
        hooks: &Hooks,
        capture: &mut Capture,
    ) -> Result<Tensor> {
        let h = self.forward_layers(&inputs.embeds, &inputs.positions, 0..self.num_layers(), cache, hooks, capture)?;
        self.final_norm(&h)
    }

    /// Teacher-forced logits `(b, s, vocab)` f32 of right-padded `ids (b, s)` with their images.
    fn forward(&self, ids: &Tensor, pixels: Option<&Pixels>, hooks: &Hooks) -> Result<Tensor> {
        let inputs = self.embed_hooked(ids, pixels, hooks)?;
        let h = self.forward_inputs(&inputs, None, hooks, &mut Capture::none())?;
        self.logits(&h)
    }

    /// What a router reads: the unedited model's input of layer `layer` after its input norm, at each row's last
    /// prompt position `last[i]` of right-padded `inputs`; `(b, d)` f32.
    fn prompt_states(&self, inputs: &Inputs, last: &[usize], layer: usize) -> Result<Tensor> {
        let span = last.iter().max().map_or(0, |m| m + 1);
        let x = inputs.narrow(span)?;
        let h = self.forward_layers(&x.embeds, &x.positions, 0..layer, None, &Hooks::none(), &mut Capture::none())?;
        let rows = last.iter().enumerate().map(|(i, &p)| Ok(h.get(i)?.get(p)?)).collect::<Result<Vec<_>>>()?;
        Ok(self.input_norm(layer, &Tensor::stack(&rows, 0)?)?.to_dtype(DType::F32)?)
    }

    /// The routes of each input of a right-padded batch (`last[i]`: row `i`'s last prompt position), one per router
    /// of `hooks`; empty without routers.
    fn route(&self, hooks: &Hooks, inputs: &Inputs, last: &[usize]) -> Result<Vec<Routes>> {
        super::route::route(self, hooks, inputs, last)
    }

    /// The hooks of one input whose prompt ends at position `last`: `hooks` resolved on it.
    fn routed(&self, hooks: &Hooks, inputs: &Inputs, last: usize) -> Result<Hooks> {
        if hooks.routers().is_empty() {
            return Ok(hooks.clone());
        }
        let routes = self.route(hooks, &inputs.narrow(last + 1)?, &[last])?;
        hooks.resolve(routes.first().map(Vec::as_slice).unwrap_or(&[]))
    }

    /// Greedy decoding of one sequence with a KV cache: `ids` the expanded prompt, `pixels` its images.
    fn generate(
        &self,
        ids: &[u32],
        pixels: Option<&Pixels>,
        hooks: &Hooks,
        opts: &GenerateOptions,
    ) -> Result<Generation> {
        if ids.is_empty() {
            return Err(Error::Invalid("cannot generate from an empty prompt".into()));
        }
        let input = Tensor::new(ids, self.device())?.unsqueeze(0)?;
        let inputs = self.embed_hooked(&input, pixels, hooks)?;
        // A router (SERAC) decides once, on the prompt, what this whole generation runs with.
        let hooks = &self.routed(hooks, &inputs, ids.len() - 1)?;
        let mut cache = KvCache::new(self.num_layers());
        let mut none = Capture::none();
        let h = self.forward_inputs(&inputs, Some(&mut cache), hooks, &mut none)?;
        let mut logits = self.logits(&h.narrow(1, ids.len() - 1, 1)?)?.flatten_all()?;
        let first_logits = logits.to_vec1::<f32>()?;
        let mut tokens = Vec::new();
        let mut stopped_on_eos = false;
        while tokens.len() < opts.max_new_tokens {
            let next = logits.argmax(D::Minus1)?.to_scalar::<u32>()?;
            tokens.push(next);
            if opts.eos_token_ids.contains(&next) {
                stopped_on_eos = true;
                break;
            }
            if tokens.len() == opts.max_new_tokens {
                break;
            }
            let x = self.embed_next(&Tensor::new(&[[next]], self.device())?, &inputs.positions, cache.len())?;
            let h = self.forward_inputs(&x, Some(&mut cache), hooks, &mut none)?;
            logits = self.logits(&h)?.flatten_all()?;
        }
        Ok(Generation { tokens, first_logits, stopped_on_eos })
    }
}
