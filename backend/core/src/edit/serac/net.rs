//! SERAC's two trained parts, per edited layer: the scope classifier (is this position's input about a stored edit,
//! and which) and the counterfactual reader (what does the stored edit say comes next), and the attention hook that
//! applies them over a stack's stored edits.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};

use crate::edit::hypernet::ParamSet;
use crate::error::{Error, Result};
use crate::hooks::{AttnContext, AttnHook};
use crate::world::rng::Rng;

/// A stored edit at one layer: its normed states `(n, d)`, the output-projection rows of the token after each position
/// `(n, d)` (the direction that raises that token's logit), and its scope key (the normed state at the last prompt position, `(d)`).
#[derive(Debug, Clone)]
pub struct StoredEdit {
    pub states: Tensor,
    pub next: Tensor,
    pub key: Tensor,
}

/// The trained networks.
#[derive(Debug)]
pub struct SeracNet {
    /// Layers carrying a classifier and a reader, ascending.
    pub layers: Vec<usize>,
    pub set: ParamSet,
}

impl SeracNet {
    /// Fresh parameters: scope projection `(d, r)` with a bias, gate scale and offset; reader `W_q, W_k (d, r)` and
    /// the log scale of what it adds (starting at `ln scale`).
    pub fn init(layers: Vec<usize>, d: usize, rank: usize, scale: f32, seed: u64, dev: &Device) -> Result<Self> {
        let mut rng = Rng::derive(seed, "serac", 0);
        let mut set = ParamSet::default();
        for k in 0..layers.len() {
            set.normal(&format!("l{k}.scope"), (d, rank), &mut rng, dev)?;
            set.insert(format!("l{k}.scope_bias"), Tensor::zeros(rank, DType::F32, dev)?)?;
            set.insert(format!("l{k}.gate_scale"), Tensor::new(10f32, dev)?)?;
            set.insert(format!("l{k}.gate_offset"), Tensor::new(-5f32, dev)?)?;
            set.normal(&format!("l{k}.w_q"), (d, rank), &mut rng, dev)?;
            set.normal(&format!("l{k}.w_k"), (d, rank), &mut rng, dev)?;
            set.insert(format!("l{k}.log_scale"), Tensor::new(scale.max(1e-6).ln(), dev)?)?;
        }
        Ok(Self { layers, set })
    }

    fn p(&self, k: usize, name: &str) -> Result<Tensor> {
        self.set.get(&format!("l{k}.{name}"))
    }

    /// Unit scope embeddings of normed states, `(n, d)` → `(n, r)`.
    fn scope(&self, k: usize, x: &Tensor) -> Result<Tensor> {
        let e = x.matmul(&self.p(k, "scope")?)?.broadcast_add(&self.p(k, "scope_bias")?)?;
        let norm = (e.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
        Ok(e.broadcast_div(&norm)?)
    }

    /// Scope probabilities of every position for every stored edit: `x (n, d)`, `keys (e, d)` → `(n, e)`.
    pub fn gates(&self, k: usize, x: &Tensor, keys: &Tensor) -> Result<Tensor> {
        let cos = self.scope(k, x)?.matmul(&self.scope(k, keys)?.t()?)?;
        let logits = cos.broadcast_mul(&self.p(k, "gate_scale")?)?.broadcast_add(&self.p(k, "gate_offset")?)?;
        Ok(candle_nn::ops::sigmoid(&logits)?)
    }

    /// The counterfactual reader: attention of `x (n, d)` over one stored edit's positions, reading the direction of
    /// the token that followed each (a copy mechanism); returns the shift `(n, d)`.
    pub fn read(&self, k: usize, x: &Tensor, edit: &StoredEdit) -> Result<Tensor> {
        let q = x.matmul(&self.p(k, "w_q")?)?;
        let keys = edit.states.matmul(&self.p(k, "w_k")?)?;
        let r = q.dim(1)? as f64;
        let att = candle_nn::ops::softmax(&(q.matmul(&keys.t()?)? / r.sqrt())?, D::Minus1)?;
        Ok(att.matmul(&edit.next)?.broadcast_mul(&self.p(k, "log_scale")?.exp()?)?)
    }

    /// The shift of normed states `x (n, d)` at the `k`-th layer given `edits`: each position reads the edit it is
    /// most likely about, weighted by that probability. Also returns the gates `(n, e)`.
    pub fn shift(&self, k: usize, x: &Tensor, edits: &[&StoredEdit]) -> Result<(Tensor, Tensor)> {
        let keys = Tensor::stack(&edits.iter().map(|e| e.key.clone()).collect::<Vec<_>>(), 0)?;
        let gates = self.gates(k, x, &keys)?;
        let best = gates.argmax_keepdim(D::Minus1)?;
        let mut out = x.zeros_like()?;
        for (i, e) in edits.iter().enumerate() {
            let chosen = best.eq(i as u32)?.to_dtype(DType::F32)?;
            let w = (gates.narrow(1, i, 1)? * chosen)?;
            out = (out + self.read(k, x, e)?.broadcast_mul(&w)?)?;
        }
        Ok((out, gates))
    }
}

/// The attention hook of one layer: the stored edits of a stack, read through the trained networks.
#[derive(Debug)]
pub struct SeracHook {
    pub net: Arc<SeracNet>,
    /// Index of the layer in `net.layers`.
    pub k: usize,
    pub edits: Vec<StoredEdit>,
}

impl AttnHook for SeracHook {
    fn shift_attention(&self, ctx: &AttnContext<'_>, attn_out: Tensor) -> Result<Tensor> {
        if self.edits.is_empty() {
            return Ok(attn_out);
        }
        let (b, s, d) = ctx.normed.dims3()?;
        let x = ctx.normed.reshape((b * s, d))?.to_dtype(DType::F32)?;
        let edits: Vec<&StoredEdit> = self.edits.iter().collect();
        let (shift, _) = self.net.shift(self.k, &x, &edits)?;
        let shift = shift.reshape((b, s, d))?.to_dtype(attn_out.dtype())?;
        Ok((attn_out + shift)?)
    }
}

/// Checks that a network fits a model of hidden size `d`.
pub fn check(net: &SeracNet, d: usize) -> Result<()> {
    let got = net.set.get("l0.scope")?.dim(0)?;
    if got != d {
        return Err(Error::Invalid(format!("the SERAC network is for hidden size {got}, the model has {d}")));
    }
    Ok(())
}
