//! Top-K retrieval for latent in-context editing: every position's state is scored (cosine) against a bank's
//! semantic states and keeps its best K entries, best first, ties to the lower index. A bank is the shared memory
//! followed by a stack's own entries; the two are scored apart and merged, which gives the same choice as scoring
//! them together, and lets retrievals over the shared memory be *pinned* for inputs that recur unchanged: the memory
//! of unrelated inputs entering the first edited layer is the same under every stack (issue 16, "fast on a stack"),
//! so an edit on a stack scores only the stack's entries against it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{Tensor, TensorId};

use crate::error::{Error, Result};

/// The best entries of each row: `idx` and `score` hold `k` per row (`k` = the wanted K, capped at the bank's size),
/// best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub k: usize,
    pub idx: Vec<u32>,
    pub score: Vec<f32>,
}

/// Keeps `best` (best first, at most `k`) with `(v, i)` offered after every index already in it.
fn offer(best: &mut Vec<(f32, u32)>, k: usize, v: f32, i: u32) {
    // NaN ranks below every number (cosines are never NaN here; this only keeps the order total).
    let v = if v.is_nan() { f32::NEG_INFINITY } else { v };
    if best.len() == k && best.last().is_some_and(|&(b, _)| v <= b) {
        return;
    }
    // After every kept entry of a value >= v: an equal value keeps its lower index first.
    let at = best.partition_point(|&(b, _)| b >= v);
    best.insert(at, (v, i));
    best.truncate(k);
}

/// The best `k` of each row of `flat` (rows of `m` scores). One pass per row: most entries fail the comparison with
/// the current k-th best, so this costs about one comparison per entry (banks hold thousands, K is tens).
pub fn top_k(flat: &[f32], m: usize, k: usize) -> Scored {
    let k = k.min(m);
    let rows = flat.len().checked_div(m).unwrap_or(0);
    let (mut idx, mut score) = (Vec::with_capacity(rows * k), Vec::with_capacity(rows * k));
    let mut best = Vec::with_capacity(k + 1);
    for row in flat.chunks_exact(m.max(1)).take(rows) {
        best.clear();
        for (i, &v) in row.iter().enumerate() {
            offer(&mut best, k, v, i as u32);
        }
        idx.extend(best.iter().map(|&(_, i)| i));
        score.extend(best.iter().map(|&(v, _)| v));
    }
    Scored { k, idx, score }
}

/// The best `k` of each row of `base` together with `extra`'s rows (`e` scores each, for indices `offset..offset +
/// e`, every one above `base`'s indices): the indices, `k` per row, best first.
pub fn merge(base: &Scored, extra: &[f32], e: usize, offset: u32, k: usize) -> Vec<u32> {
    let rows = base.idx.len().checked_div(base.k).unwrap_or_else(|| extra.len() / e.max(1));
    let mut out = Vec::with_capacity(rows * k);
    let mut best = Vec::with_capacity(k + 1);
    for r in 0..rows {
        best.clear();
        let b = r * base.k..(r + 1) * base.k;
        best.extend(base.score[b.clone()].iter().copied().zip(base.idx[b].iter().copied()));
        best.truncate(k);
        for (j, &v) in extra[r * e..(r + 1) * e].iter().enumerate() {
            offer(&mut best, k, v, offset + j as u32);
        }
        out.extend(best.iter().map(|&(_, i)| i));
    }
    out
}

/// The values of a 2-D f32 tensor, row-major, without copying when it is contiguous on the CPU.
pub fn with_rows<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    if t.is_contiguous() {
        let (storage, layout) = t.storage_and_layout();
        if let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) = &*storage {
            let start = layout.start_offset();
            return Ok(f(&v[start..start + t.elem_count()]));
        }
    }
    Ok(f(&t.flatten_all()?.to_vec1::<f32>()?))
}

/// Shapes of [`attend`].
#[derive(Debug, Clone, Copy)]
pub struct AttendDims {
    /// Positions.
    pub n: usize,
    /// Entries retrieved per position.
    pub k: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Attention of every position over its own retrieved entries, on slices (the CPU path: no gathered copies of the
/// entries, no per-position matrix products). For position `p` and head `h` (key-value head `h / (heads /
/// kv_heads)`): `a_j = softmax_j(q[p,h] · key[idx[p,j]] / √head_dim)`, `y[p,h] = Σ_j a_j value[idx[p,j]]`.
/// `q` `(n, heads, head_dim)`, `keys` / `values` `(m, kv_heads, head_dim)`, `idx` `(n, k)`. Returns `y` `(n, heads ·
/// head_dim)` and the weights averaged over heads `(n, k)`.
pub fn attend(q: &[f32], keys: &[f32], values: &[f32], idx: &[u32], dims: AttendDims) -> (Vec<f32>, Vec<f32>) {
    let AttendDims { n, k, heads, kv_heads, head_dim: hd } = dims;
    let rep = (heads / kv_heads.max(1)).max(1);
    let scale = 1.0 / (hd as f32).sqrt();
    let (mut y, mut mean) = (vec![0f32; n * heads * hd], vec![0f32; n * k]);
    let mut a = vec![0f32; k];
    for p in 0..n {
        let rows = &idx[p * k..(p + 1) * k];
        for h in 0..heads {
            let kv = h / rep;
            let qh = &q[(p * heads + h) * hd..(p * heads + h + 1) * hd];
            let mut max = f32::NEG_INFINITY;
            for (j, &e) in rows.iter().enumerate() {
                let key = &keys[(e as usize * kv_heads + kv) * hd..][..hd];
                a[j] = qh.iter().zip(key).map(|(x, y)| x * y).sum::<f32>() * scale;
                max = max.max(a[j]);
            }
            let mut sum = 0.0;
            for v in a.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            let out = &mut y[(p * heads + h) * hd..(p * heads + h + 1) * hd];
            for (j, &e) in rows.iter().enumerate() {
                let w = a[j] / sum;
                mean[p * k + j] += w / heads as f32;
                let value = &values[(e as usize * kv_heads + kv) * hd..][..hd];
                for (o, v) in out.iter_mut().zip(value) {
                    *o += w * v;
                }
            }
        }
    }
    (y, mean)
}

/// Per position, the rows of `table` (`(m, d)`) it retrieved (`idx` `(n, k)`) weighted by `w` `(n, k)` and summed,
/// `(n, d)`.
pub fn weighted_rows(table: &[f32], d: usize, idx: &[u32], w: &[f32], k: usize) -> Vec<f32> {
    let n = idx.len() / k.max(1);
    let mut out = vec![0f32; n * d];
    for p in 0..n {
        let o = &mut out[p * d..(p + 1) * d];
        for j in 0..k {
            let (e, wj) = (idx[p * k + j] as usize, w[p * k + j]);
            for (x, v) in o.iter_mut().zip(&table[e * d..(e + 1) * d]) {
                *x += wj * v;
            }
        }
    }
    out
}

/// Retrievals over the shared memory pinned for one layer's recurring inputs (by tensor identity, which a cached
/// input keeps), one set at a time: pinning another set replaces it, so what it holds is bounded by one memory.
#[derive(Debug, Default)]
pub struct Pinned {
    set: Mutex<Option<PinnedSet>>,
    hits: AtomicUsize,
}

#[derive(Debug)]
struct PinnedSet {
    layer: usize,
    k: usize,
    rows: HashMap<TensorId, Arc<Scored>>,
}

impl Pinned {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Option<PinnedSet>>> {
        self.set.lock().map_err(|_| Error::Invalid("pinned retrievals poisoned".into()))
    }

    /// Whether exactly these inputs are pinned for `layer` and `k`.
    pub fn holds(&self, layer: usize, k: usize, ids: &[TensorId]) -> Result<bool> {
        Ok(self.lock()?.as_ref().is_some_and(|s| {
            s.layer == layer && s.k == k && s.rows.len() == ids.len() && ids.iter().all(|i| s.rows.contains_key(i))
        }))
    }

    /// Replaces the pinned set.
    pub fn set(&self, layer: usize, k: usize, rows: HashMap<TensorId, Arc<Scored>>) -> Result<()> {
        *self.lock()? = Some(PinnedSet { layer, k, rows });
        Ok(())
    }

    /// The pinned retrieval of input `id` at `layer` with `k`, if any.
    pub fn get(&self, layer: usize, id: TensorId, k: usize) -> Result<Option<Arc<Scored>>> {
        let hit = self.lock()?.as_ref().filter(|s| s.layer == layer && s.k == k).and_then(|s| s.rows.get(&id).cloned());
        if hit.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(hit)
    }

    /// Calls answered from the pinned set so far (a test sees that the path is taken).
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.set
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.rows.values().map(|r| r.idx.len() * 8).sum()))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: a full sort, ties to the lower index.
    fn sorted(flat: &[f32], m: usize, k: usize) -> Vec<u32> {
        flat.chunks(m)
            .flat_map(|row| {
                let mut idx: Vec<u32> = (0..m as u32).collect();
                idx.sort_by(|a, b| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b)));
                idx.truncate(k.min(m));
                idx
            })
            .collect()
    }

    #[test]
    fn top_k_picks_the_largest_best_first_with_ties_by_index() {
        let rows = [0.1, 0.9, 0.5, 0.9, -1.0, 3.0, 2.0, 1.0, 0.0, -1.0];
        assert_eq!(top_k(&rows, 5, 3).idx, vec![1, 3, 2, 0, 1, 2]);
        assert_eq!(top_k(&rows, 5, 3).score, vec![0.9, 0.9, 0.5, 3.0, 2.0, 1.0]);
        assert_eq!(top_k(&rows[..5], 5, 9).idx, vec![1, 3, 2, 0, 4]);
        // Against a full sort on pseudo-random rows with many ties.
        let m = 257;
        let flat: Vec<f32> = (0..m * 7).map(|i| ((i * 7919) % 31) as f32 / 7.0 - 2.0).collect();
        for k in [1, 5, 40, 300] {
            assert_eq!(top_k(&flat, m, k).idx, sorted(&flat, m, k), "k = {k}");
        }
    }

    #[test]
    fn scoring_the_memory_and_the_stack_apart_then_merging_picks_what_scoring_them_together_does() {
        let (m, e, rows) = (200, 9, 6);
        let together: Vec<f32> = (0..(m + e) * rows).map(|i| ((i * 104_729) % 23) as f32 / 5.0 - 1.0).collect();
        let base: Vec<f32> = together.chunks(m + e).flat_map(|r| r[..m].to_vec()).collect();
        let extra: Vec<f32> = together.chunks(m + e).flat_map(|r| r[m..].to_vec()).collect();
        for k in [1, 3, 40, 205, 500] {
            let pinned = top_k(&base, m, k);
            let kk = k.min(m + e);
            assert_eq!(merge(&pinned, &extra, e, m as u32, kk), sorted(&together, m + e, k), "k = {k}");
        }
    }

    #[test]
    fn attending_over_retrieved_entries_is_softmax_attention_per_head() -> Result<()> {
        use candle_core::{Device, D};
        let dims = AttendDims { n: 3, k: 4, heads: 4, kv_heads: 2, head_dim: 5 };
        let m = 7;
        let fill = |len: usize, seed: usize| -> Vec<f32> {
            (0..len).map(|i| (((i + seed) * 7919) % 97) as f32 / 48.0 - 1.0).collect()
        };
        let (q, keys, values) = (fill(3 * 4 * 5, 1), fill(m * 2 * 5, 2), fill(m * 2 * 5, 3));
        let idx: Vec<u32> = vec![0, 3, 6, 1, 2, 2, 5, 4, 6, 0, 1, 3];
        let (y, mean) = attend(&q, &keys, &values, &idx, dims);
        // The same with tensors: gather, repeat the key-value heads, softmax, weighted sum.
        let dev = &Device::Cpu;
        let ids = Tensor::new(idx.as_slice(), dev)?;
        let gather = |t: &[f32]| -> Result<Tensor> {
            let g = Tensor::from_slice(t, (m, 2, 5), dev)?.index_select(&ids, 0)?.reshape((3, 4, 2, 5))?;
            let g = g.transpose(1, 2)?.unsqueeze(2)?.expand((3, 2, 2, 4, 5))?.reshape((3, 4, 4, 5))?;
            Ok(g.contiguous()?)
        };
        let (kt, vt) = (gather(&keys)?, gather(&values)?);
        let qt = Tensor::from_slice(q.as_slice(), (3, 4, 1, 5), dev)?;
        let att = candle_nn::ops::softmax_last_dim(&(qt.matmul(&kt.t()?)? / 5f64.sqrt())?)?;
        let want_y = att.matmul(&vt)?.flatten_all()?.to_vec1::<f32>()?;
        let want_mean = att.mean(1)?.flatten_all()?.to_vec1::<f32>()?;
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5) && a.len() == b.len();
        assert!(close(&y, &want_y), "{y:?} vs {want_y:?}");
        assert!(close(&mean, &want_mean), "{mean:?} vs {want_mean:?}");
        // Weighted rows: the mean weights applied to a (m, 6) table.
        let table = fill(m * 6, 4);
        let got = weighted_rows(&table, 6, &idx, &mean, 4);
        let rows = Tensor::from_slice(table.as_slice(), (m, 6), dev)?.index_select(&ids, 0)?.reshape((3, 4, 6))?;
        let w = Tensor::from_slice(mean.as_slice(), (3, 1, 4), dev)?;
        let want = w.matmul(&rows)?.squeeze(D::Minus2)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(close(&got, &want), "{got:?} vs {want:?}");
        Ok(())
    }

    #[test]
    fn rows_of_a_tensor_are_read_in_order() -> Result<()> {
        let t = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &candle_core::Device::Cpu)?;
        assert_eq!(with_rows(&t, |v| v.to_vec())?, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(with_rows(&t.t()?, |v| v.to_vec())?, vec![1.0, 3.0, 2.0, 4.0]);
        Ok(())
    }
}
