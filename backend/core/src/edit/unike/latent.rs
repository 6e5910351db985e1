//! Latent in-context editing (paper §3.2, Eq. 2, Appendix A; adaptive α of Eq. 7): in each edited layer the
//! pre-attention state of every position retrieves the top-K memory entries whose `h_sem` is most similar (cosine),
//! attends over their `h_pos` with the layer's own query, key, value and output projections (no rotary embedding: the
//! memory has no position), and the self-attention output becomes `(1 − α)·h_input + α·h_know`.
//!
//! α is the in-context knowledge's share, as the paper's text uses it (§3.3: "a smaller α effectively reduces its
//! inclusion magnitude"; §4.5 and Fig. 4b: "the increase in the fixed α enhances the impact of in-context
//! knowledge"), while Eq. 2 and Eq. 7 as printed put α on `h_input`; we follow the text throughout, for fixed and
//! adaptive α alike (before 2026-12-06 a fixed `alpha=X` weighted the input: old `X` is new `1 − X`).
//!
//! Adaptive α (Eq. 7): the relevance `r = cos(Enc_sem(h̄_pos), h_input)` of the retrieved knowledge (`h̄_pos`: the
//! retrieved `h_pos` weighted by the head-averaged attention, the space `Enc_sem` was trained on) to the position's
//! own state, α = `max(r, 0)`: weak relevance reduces the knowledge's share. Every position retrieves with its own
//! state, so teacher forcing and cached decoding agree.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use super::encoders::Encoders;
use super::memory::KnowledgeMemory;
use super::retrieve::{attend, merge, top_k, weighted_rows, with_rows, AttendDims, Pinned, Scored};
use crate::edit::unit_rows;
use crate::error::{Error, Result};
use crate::hooks::{AttnContext, AttnHook, Hooks};
use crate::model::attention::AttnParts;
use crate::model::VisionLanguageModel;

/// The in-context knowledge's share α of the attention output (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alpha {
    /// α from the semantic relevance of the retrieved knowledge (Eq. 7, see the module docs).
    Adaptive,
    /// A fixed α: `(1 − α)·h_input + α·h_know` (α = 0: the attention as without the edit's knowledge).
    Fixed(f32),
}

impl Alpha {
    /// This α written before 2026-12-06, when a fixed α weighted the input (`α·h_input + (1 − α)·h_know`): the
    /// same mixture in today's meaning (old `X` is `1 − X`, to two decimals as variants spell it).
    pub fn from_input_weight(self) -> Self {
        match self {
            Self::Adaptive => Self::Adaptive,
            Self::Fixed(a) => Self::Fixed(((1.0 - a) * 100.0).round() / 100.0),
        }
    }
}

/// One layer's retrievable entries: unit centred `h_sem` `(m, d)`, keys and values of `h_pos` `(m, kv_heads,
/// head_dim)`, centred `h_pos` `(m, d)`.
#[derive(Debug, Clone)]
pub struct Bank {
    sem: Tensor,
    keys: Tensor,
    values: Tensor,
    pos: Tensor,
}

impl Bank {
    fn new(parts: &AttnParts, centre: &Tensor, h_sem: &Tensor, h_pos: &Tensor) -> Result<Self> {
        let dtype = centre.dtype();
        let (h_sem, h_pos) = (h_sem.to_dtype(dtype)?, h_pos.to_dtype(dtype)?);
        let (keys, values) = parts.keys_values(&h_pos.to_dtype(parts.dtype())?)?;
        // Contiguous f32, so that retrieval reads them as slices on the CPU.
        Ok(Self {
            sem: unit_rows(&h_sem.broadcast_sub(centre)?)?.contiguous()?,
            keys: keys.to_dtype(DType::F32)?.contiguous()?,
            values: values.to_dtype(DType::F32)?.contiguous()?,
            pos: h_pos.broadcast_sub(centre)?.contiguous()?,
        })
    }

    fn len(&self) -> Result<usize> {
        Ok(self.sem.dim(0)?)
    }

    /// Scores of the unit, centred states `unit_x` `(n, d)` against every entry, `(n, m)`.
    fn scores(&self, unit_x: &Tensor) -> Result<Tensor> {
        Ok(unit_x.matmul(&self.sem.t()?)?)
    }

    fn cat(&self, other: &Bank) -> Result<Bank> {
        Ok(Bank {
            sem: Tensor::cat(&[&self.sem, &other.sem], 0)?,
            keys: Tensor::cat(&[&self.keys, &other.keys], 0)?,
            values: Tensor::cat(&[&self.values, &other.values], 0)?,
            pos: Tensor::cat(&[&self.pos, &other.pos], 0)?,
        })
    }
}

/// The shared knowledge memory of the edited layers, ready for retrieval, with the encoders.
#[derive(Debug)]
pub struct Knowledge {
    banks: BTreeMap<usize, Bank>,
    parts: BTreeMap<usize, AttnParts>,
    pub encoders: Arc<Encoders>,
    /// Retrievals over the memory pinned for recurring inputs ([`Knowledge::pin`]).
    pub pinned: Pinned,
}

impl Knowledge {
    /// Prepares `memory` at `layers` of `model` (keys and values through each layer's own projections).
    pub fn new(
        model: &dyn VisionLanguageModel,
        memory: &KnowledgeMemory,
        encoders: Arc<Encoders>,
        layers: &[usize],
    ) -> Result<Self> {
        let mut banks = BTreeMap::new();
        let mut parts = BTreeMap::new();
        for &l in layers {
            let i = memory.layer_index(l)?;
            let p = model.attention_parts(l)?;
            let centre = &encoders.layer(l)?.centre;
            banks.insert(l, Bank::new(&p, centre, &memory.h_sem[i], &memory.h_pos[i])?);
            parts.insert(l, p);
        }
        Ok(Self { banks, parts, encoders, pinned: Pinned::default() })
    }

    /// The unit, centred states of `residual` `(b, s, d)` at `layer`, `(b·s, d)` f32: what positions retrieve with.
    pub(crate) fn unit_states(&self, layer: usize, residual: &Tensor) -> Result<Tensor> {
        let d = residual.dim(D::Minus1)?;
        let centre = &self.encoders.layer(layer)?.centre;
        unit_rows(&residual.reshape(((), d))?.to_dtype(DType::F32)?.broadcast_sub(centre)?)
    }

    /// The best `k` memory entries of every position of `unit_x` at `layer`.
    pub(crate) fn retrieve(&self, layer: usize, unit_x: &Tensor, k: usize) -> Result<Scored> {
        let bank = self.banks.get(&layer).ok_or_else(|| Error::Invalid("layer not prepared".into()))?;
        let m = bank.len()?;
        with_rows(&bank.scores(unit_x)?, |flat| top_k(flat, m, k))
    }

    /// The unit, centred semantic states `(e, d)` f32 of entries `h_sem` `(e, d)` joining the memory at `layer`: what
    /// positions score them by (as [`Knowledge::hooks`] prepares a stack's entries).
    pub(crate) fn entry_sem(&self, layer: usize, h_sem: &Tensor) -> Result<Tensor> {
        let centre = &self.encoders.layer(layer)?.centre;
        unit_rows(&h_sem.to_dtype(centre.dtype())?.broadcast_sub(centre)?)
    }

    /// Pins the retrievals over the memory of `inputs` (residual streams entering `layer`, `(b, s, d)` each) for
    /// `top_k`: a later forward pass on the same tensors scores only a stack's own entries. A layer the knowledge
    /// does not cover is left alone; the same set is pinned once.
    pub fn pin(&self, layer: usize, inputs: &[Tensor], top_k: usize) -> Result<()> {
        let k = top_k.max(1);
        let ids: Vec<_> = inputs.iter().map(Tensor::id).collect();
        if !self.banks.contains_key(&layer) || self.pinned.holds(layer, k, &ids)? {
            return Ok(());
        }
        let mut rows = std::collections::HashMap::new();
        for x in inputs {
            rows.insert(x.id(), Arc::new(self.retrieve(layer, &self.unit_states(layer, x)?, k)?));
        }
        self.pinned.set(layer, k, rows)
    }

    /// Bytes of the prepared memory (per layer: centred semantic states, keys, values, positive states).
    pub fn bytes(&self) -> usize {
        use crate::edit::tensor_bytes;
        self.banks
            .values()
            .map(|b| [&b.sem, &b.keys, &b.values, &b.pos].into_iter().map(tensor_bytes).sum::<usize>())
            .sum::<usize>()
            + self.pinned.bytes()
    }

    /// Layers the knowledge covers.
    pub fn layers(&self) -> impl Iterator<Item = usize> + '_ {
        self.banks.keys().copied()
    }

    /// Number of memory entries per layer.
    pub fn len(&self) -> usize {
        self.banks.values().next().and_then(|b| b.len().ok()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hooks shifting the attention output of every covered layer with retrieval over the memory plus `entries`
    /// (per layer, `(h_sem, h_pos)` of the edits in a stack, `(e, d)` each).
    pub fn hooks(
        self: &Arc<Self>,
        top_k: usize,
        alpha: Alpha,
        entries: &BTreeMap<usize, Vec<(Tensor, Tensor)>>,
    ) -> Result<Hooks> {
        let mut hooks = Hooks::none();
        for (&l, base) in &self.banks {
            let mut bank = base.clone();
            let mut extra_sem = None;
            if let Some(list) = entries.get(&l).filter(|v| !v.is_empty()) {
                let s = Tensor::cat(&list.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(), 0)?;
                let p = Tensor::cat(&list.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(), 0)?;
                let extra = Bank::new(&self.parts[&l], &self.encoders.layer(l)?.centre, &s, &p)?;
                bank = bank.cat(&extra)?;
                extra_sem = Some(extra.sem);
            }
            let base_len = base.len()?;
            let shift = LatentShift { layer: l, bank, base_len, extra_sem, top_k, alpha, knowledge: self.clone() };
            hooks.add_attn(l, Arc::new(shift));
        }
        Ok(hooks)
    }
}

/// The attention hook of one layer.
pub struct LatentShift {
    layer: usize,
    /// The memory followed by the stack's entries.
    bank: Bank,
    /// Entries of the memory (the first of `bank`).
    base_len: usize,
    /// Unit centred semantic states of the stack's entries, `(e, d)`, if any.
    extra_sem: Option<Tensor>,
    top_k: usize,
    alpha: Alpha,
    knowledge: Arc<Knowledge>,
}

impl fmt::Debug for LatentShift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatentShift").field("layer", &self.layer).field("top_k", &self.top_k).finish()
    }
}

impl AttnHook for LatentShift {
    fn shift_attention(&self, ctx: &AttnContext<'_>, attn_out: Tensor) -> Result<Tensor> {
        Ok(self.shift_attention_traced(ctx, attn_out)?.0)
    }

    fn shift_attention_traced(&self, ctx: &AttnContext<'_>, attn_out: Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let parts = self.knowledge.parts.get(&self.layer).ok_or_else(|| Error::Invalid("layer not prepared".into()))?;
        let enc = self.knowledge.encoders.layer(self.layer)?;
        let (b, s, d) = attn_out.dims3()?;
        let n = b * s;
        let k = self.top_k.min(self.bank.len()?).max(1);
        let dtype = attn_out.dtype();
        let dev = attn_out.device().clone();
        // The memory's best entries (pinned for recurring inputs, see `Knowledge::pin`), then the stack's merged in:
        // the same choice as scoring the whole bank at once.
        let unit_x = self.knowledge.unit_states(self.layer, ctx.residual)?;
        let base_k = self.top_k.max(1);
        let base = match self.knowledge.pinned.get(self.layer, ctx.residual.id(), base_k)? {
            Some(pinned) => pinned,
            None => Arc::new(self.knowledge.retrieve(self.layer, &unit_x, base_k)?),
        };
        let idx = match &self.extra_sem {
            Some(extra) => {
                let e = extra.dim(0)?;
                with_rows(&unit_x.matmul(&extra.t()?)?, |flat| merge(&base, flat, e, self.base_len as u32, k))?
            }
            None => base.idx.clone(),
        };
        let (h, kvh, hd) = (parts.n_heads, parts.n_kv_heads, parts.head_dim);
        let q = parts.queries(&ctx.normed.reshape((n, d))?)?.to_dtype(DType::F32)?; // (n, h, hd)
        let (y, know) = if dev.is_cpu() {
            // On slices: no gathered copies of the entries, no per-position matrix products.
            let dims = AttendDims { n, k, heads: h, kv_heads: kvh, head_dim: hd };
            let (y, w) = with_rows(&q, |q| {
                with_rows(&self.bank.keys, |keys| {
                    with_rows(&self.bank.values, |values| attend(q, keys, values, &idx, dims))
                })
            })???;
            let know = match self.alpha {
                Alpha::Adaptive => Some(with_rows(&self.bank.pos, |pos| weighted_rows(pos, d, &idx, &w, k))?),
                Alpha::Fixed(_) => None,
            };
            let know = know.map(|v| Tensor::from_vec(v, (n, d), &dev)).transpose()?;
            (Tensor::from_vec(y, (n, h * hd), &dev)?, know)
        } else {
            self.attend_tensors(&q, &Tensor::new(idx.as_slice(), &dev)?, (n, k, d))?
        };
        let h_know = parts.output(&y.to_dtype(parts.dtype())?)?.to_dtype(DType::F32)?; // (n, d)
        let share = match (self.alpha, know) {
            (Alpha::Adaptive, Some(know)) => {
                let z = enc.semantic.forward(&know)?;
                (unit_rows(&z)? * &unit_x)?.sum_keepdim(1)?.relu()?.clamp(0f32, 1f32)?
            }
            (Alpha::Fixed(a), _) => Tensor::full(a, (n, 1), &dev)?,
            (Alpha::Adaptive, None) => return Err(Error::Invalid("adaptive α without retrieved states".into())),
        };
        let a = attn_out.reshape((n, d))?.to_dtype(DType::F32)?;
        let out = (a.broadcast_mul(&share.affine(-1.0, 1.0)?)? + h_know.broadcast_mul(&share)?)?;
        Ok((out.reshape((b, s, d))?.to_dtype(dtype)?, Some(share.reshape((b, s, 1))?)))
    }
}

impl LatentShift {
    /// [`attend`] with tensor operations (devices other than the CPU): the retrieved keys and values gathered, then
    /// per-position attention. `q` `(n, h, hd)`, `idx` `(n·k,)`; returns `y` `(n, h·hd)` and, for adaptive α, the
    /// retrieved positive states weighted by the head-averaged attention `(n, d)`.
    fn attend_tensors(
        &self,
        q: &Tensor,
        idx: &Tensor,
        (n, k, d): (usize, usize, usize),
    ) -> Result<(Tensor, Option<Tensor>)> {
        let parts = self.knowledge.parts.get(&self.layer).ok_or_else(|| Error::Invalid("layer not prepared".into()))?;
        let (h, kvh, hd) = (parts.n_heads, parts.n_kv_heads, parts.head_dim);
        let gather = |t: &Tensor| -> Result<Tensor> {
            let g = t.index_select(idx, 0)?.reshape((n, k, kvh, hd))?.transpose(1, 2)?; // (n, kvh, k, hd)
            let rep = h / kvh;
            Ok(if rep == 1 { g } else { g.unsqueeze(2)?.expand((n, kvh, rep, k, hd))?.reshape((n, h, k, hd))? }
                .contiguous()?)
        };
        let (keys, values) = (gather(&self.bank.keys)?, gather(&self.bank.values)?);
        let q = q.unsqueeze(2)?; // (n, h, 1, hd)
        let att = candle_nn::ops::softmax_last_dim(&(q.matmul(&keys.t()?)? / (hd as f64).sqrt())?)?; // (n, h, 1, k)
        let y = att.matmul(&values)?.reshape((n, h * hd))?;
        let know = match self.alpha {
            Alpha::Fixed(_) => None,
            Alpha::Adaptive => {
                let w = att.mean(1)?; // (n, 1, k)
                let pos = self.bank.pos.index_select(idx, 0)?.reshape((n, k, d))?;
                Some(w.matmul(&pos)?.squeeze(1)?) // (n, d)
            }
        };
        Ok((y, know))
    }
}
