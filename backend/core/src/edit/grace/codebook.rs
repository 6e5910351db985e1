//! GRACE's codebook at one layer: keys (the FFN intermediate `u`, what the output projection reads) with deferral
//! radii, and values that replace the output projection's result where an input's key falls within a radius. Each
//! edit contributes one [`GraceEntry`]; the codebook of a stack is rebuilt by inserting the entries in stack order
//! with GRACE's rule, so undoing an edit rebuilds the codebook without it:
//!
//! - an empty codebook, or a key farther than `eps₀ + ε_k` from its nearest key `k`: a new key with radius `eps₀`;
//! - within that reach but with another label (target): a new key, and both radii set to half their distance
//!   (the old one just under it), so that the two never overlap;
//! - within reach with the same label: no new key; `k`'s radius grows to the distance if it was smaller
//!   (`eps_expand = coverage`) and the entry's value (trained from `k`'s) becomes `k`'s.

use candle_core::{DType, Tensor, D};

use crate::error::{Error, Result};
use crate::hooks::FfnHook;
use crate::model::FfnParts;

/// One edit's contribution.
#[derive(Debug, Clone)]
pub struct GraceEntry {
    pub layer: usize,
    /// The key `(i)` f32: the layer's FFN intermediate at the edit's last prompt token.
    pub key: Tensor,
    /// The value `(d)` f32, trained.
    pub value: Tensor,
    /// The edit's target: entries with the same label share a key.
    pub label: String,
    /// The starting radius `eps₀`.
    pub eps: f64,
    /// The layer's FFN (shared with the model).
    pub parts: FfnParts,
}

/// The codebook of one layer.
#[derive(Debug, Clone, Default)]
pub struct Codebook {
    keys: Vec<Vec<f32>>,
    radii: Vec<f64>,
    values: Vec<Tensor>,
    labels: Vec<String>,
}

fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt()
}

impl Codebook {
    /// The codebook of `entries` inserted in order.
    pub fn replay<'a>(entries: impl IntoIterator<Item = &'a GraceEntry>) -> Result<Self> {
        let mut c = Self::default();
        for e in entries {
            c.insert(&e.key.to_vec1::<f32>()?, e.value.clone(), &e.label, e.eps);
        }
        Ok(c)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The radii, in key order.
    pub fn radii(&self) -> &[f64] {
        &self.radii
    }

    /// The value of key `k`.
    pub fn value(&self, k: usize) -> Option<&Tensor> {
        self.values.get(k)
    }

    /// The nearest key to `key` and its distance; of equally near keys, the newest (re-editing a question with
    /// another answer makes two keys at distance 0: the newer answer wins).
    pub fn nearest(&self, key: &[f32]) -> Option<(usize, f64)> {
        self.keys.iter().map(|k| distance(k, key)).enumerate().rev().min_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Inserts an entry by GRACE's rule (module docs); returns the index of the key whose value `value` now is.
    pub fn insert(&mut self, key: &[f32], value: Tensor, label: &str, eps: f64) -> usize {
        if let Some((k, d)) = self.nearest(key) {
            if d <= eps + self.radii[k] {
                if self.labels[k] != label {
                    self.radii[k] = d / 2.0 - 1e-5;
                    return self.push(key, value, label, d / 2.0);
                }
                if d > self.radii[k] {
                    self.radii[k] = d;
                }
                self.values[k] = value;
                return k;
            }
        }
        self.push(key, value, label, eps)
    }

    fn push(&mut self, key: &[f32], value: Tensor, label: &str, radius: f64) -> usize {
        self.keys.push(key.to_vec());
        self.radii.push(radius);
        self.values.push(value);
        self.labels.push(label.to_string());
        self.keys.len() - 1
    }

    /// Where `key` would go: `Some(k)` when it joins key `k` (same label, within reach), `None` for a new key.
    pub fn joins(&self, key: &[f32], label: &str, eps: f64) -> Option<usize> {
        let (k, d) = self.nearest(key)?;
        (d <= eps + self.radii[k] && self.labels[k] == label).then_some(k)
    }

    /// The hook of this codebook with value `k` replaced by `value` (training a value), or as it is.
    pub fn hook(&self, parts: &FfnParts, replace: Option<(usize, &Tensor)>) -> Result<GraceHook> {
        if self.is_empty() {
            return Err(Error::Invalid("an empty GRACE codebook".into()));
        }
        // Newest first: the first minimum wins ties, as in [`Codebook::nearest`].
        let device = self.values[0].device();
        let width = self.keys[0].len();
        let keys: Vec<f32> = self.keys.iter().rev().flatten().copied().collect();
        let keys = Tensor::from_vec(keys, (self.keys.len(), width), device)?;
        let values: Vec<Tensor> = self
            .values
            .iter()
            .enumerate()
            .rev()
            .map(|(i, v)| match replace {
                Some((k, r)) if k == i => r.clone(),
                _ => v.clone(),
            })
            .collect();
        let radii: Vec<f32> = self.radii.iter().rev().map(|&r| r as f32).collect();
        Ok(GraceHook {
            parts: parts.clone(),
            keys,
            radii: Tensor::new(radii, device)?,
            values: Tensor::stack(&values, 0)?,
        })
    }
}

/// The codebook as an FFN hook: at every position whose key (the FFN intermediate there) lies within its nearest
/// key's radius, the output projection's result is replaced by that key's value.
#[derive(Debug, Clone)]
pub struct GraceHook {
    parts: FfnParts,
    /// `(n, i)`, newest first.
    keys: Tensor,
    /// `(n)`.
    radii: Tensor,
    /// `(n, d)`.
    values: Tensor,
}

impl GraceHook {
    /// Which positions of `q (b, s, d)` are replaced, `(b, s)` u8, and by which key, `(b, s)` u32.
    pub fn matches(&self, q: &Tensor) -> Result<(Tensor, Tensor)> {
        let u = self.parts.intermediate(q)?.to_dtype(DType::F32)?;
        let (b, s, i) = u.dims3()?;
        let flat = u.reshape((b * s, i))?;
        let d2 = (flat.sqr()?.sum_keepdim(D::Minus1)?.broadcast_sub(&(flat.matmul(&self.keys.t()?)? * 2.0)?)?)
            .broadcast_add(&self.keys.sqr()?.sum(D::Minus1)?.unsqueeze(0)?)?;
        let d = d2.relu()?.sqrt()?;
        let nearest = d.argmin(D::Minus1)?;
        let dmin = d.min(D::Minus1)?;
        let within = dmin.le(&self.radii.index_select(&nearest, 0)?)?;
        Ok((within.reshape((b, s))?, nearest.reshape((b, s))?))
    }
}

impl FfnHook for GraceHook {
    fn ffn_extra(&self, _layer: usize, ffn_input: &Tensor) -> Result<Tensor> {
        let (b, s, d) = ffn_input.dims3()?;
        let (within, nearest) = self.matches(ffn_input)?;
        let u = self.parts.intermediate(ffn_input)?.to_dtype(DType::F32)?;
        let current = u.broadcast_matmul(&self.parts.down().t()?.to_dtype(DType::F32)?)?;
        let chosen = self.values.index_select(&nearest.flatten_all()?, 0)?.reshape((b, s, d))?;
        let mask = within.to_dtype(DType::F32)?.unsqueeze(2)?;
        Ok((chosen - current)?.broadcast_mul(&mask)?.to_dtype(ffn_input.dtype())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn v(x: f32) -> Tensor {
        Tensor::new(&[x], &Device::Cpu).unwrap()
    }

    #[test]
    fn graces_rule_adds_splits_and_covers() {
        let mut c = Codebook::default();
        assert_eq!(c.insert(&[0.0, 0.0], v(1.0), "red", 1.0), 0);
        // Far away: a new key with the starting radius.
        assert_eq!(c.insert(&[10.0, 0.0], v(2.0), "blue", 1.0), 1);
        assert_eq!(c.radii(), &[1.0, 1.0]);
        // Within reach of key 0 (1.5 ≤ 1 + 1), same label, farther than its radius: it covers (radius 1.5).
        assert_eq!(c.joins(&[1.5, 0.0], "red", 1.0), Some(0));
        assert_eq!(c.insert(&[1.5, 0.0], v(3.0), "red", 1.0), 0);
        assert_eq!((c.len(), c.radii()[0]), (2, 1.5));
        assert_eq!(c.value(0).unwrap().to_vec1::<f32>().unwrap(), [3.0]);
        // Within reach of key 1 with another label: a new key, both radii halved at their distance.
        assert_eq!(c.joins(&[10.0, 1.0], "green", 1.0), None);
        assert_eq!(c.insert(&[10.0, 1.0], v(4.0), "green", 1.0), 2);
        assert!((c.radii()[1] - (0.5 - 1e-5)).abs() < 1e-12 && c.radii()[2] == 0.5, "{:?}", c.radii());
        // The same question again with another answer: the newer key wins the tie.
        c.insert(&[0.0, 0.0], v(5.0), "pink", 1.0);
        assert_eq!(c.nearest(&[0.0, 0.0]), Some((3, 0.0)));
    }
}
