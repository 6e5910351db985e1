//! The knowledge-space explorer (paper §4.5, Fig. 5a): the in-context knowledge memory of one edited layer projected
//! to two dimensions in three spaces side by side — the raw hidden states, the semantic space (`Enc_sem`) and the
//! truthfulness space (`Enc_tru`) — each with the positive (`h_pos`, truthful answer) and negative (`h_neg`,
//! hallucinated answer) state of every sampled triplet. The paper's figure shows positives and negatives mixed in
//! the semantic space and apart in the truthfulness space.
//!
//! Every space is compared by cosine, as the encoders are trained and as retrieval scores: states are centred by the
//! memory's mean `h_sem` ([`super::encoders::LayerEncoders::centre`]), encoded (or not, for the raw space) and scaled
//! to unit length, so Euclidean distance between the rows orders pairs as cosine does.
//!
//! Projections: t-SNE (van der Maaten & Hinton 2008, as the paper; Barnes–Hut, the `bhtsne` crate, started from the
//! PCA layout and on one thread, so a seed gives one picture) or PCA (the top two principal components by power iteration). States that
//! are not part of the fit (a workspace's edits, retrieved entries outside the sample) are placed without refitting:
//! under PCA by the same components, exactly; under t-SNE at the Gaussian-weighted mean of their ten nearest fitted
//! states (the initialisation openTSNE's `transform` starts from, without its optimisation).

use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::encoders::LayerEncoders;
use super::memory::KnowledgeMemory;
use crate::edit::unit_rows;
use crate::error::{Error, Result};
use crate::world::rng::Rng;

/// Neighbours an out-of-sample state is placed by (t-SNE).
const PLACE_NEIGHBOURS: usize = 10;
/// Power iterations per principal component, at most (they stop once the axis moves less than 1e-6).
const PCA_ITERATIONS: usize = 200;

/// How the spaces are brought to two dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    Tsne,
    Pca,
}

/// The three spaces of Fig. 5a.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Space {
    /// The hidden states themselves (centred).
    Raw,
    /// `Enc_sem` of the states.
    Semantic,
    /// `Enc_tru` of the states.
    Truthful,
}

impl Space {
    pub const ALL: [Space; 3] = [Space::Raw, Space::Semantic, Space::Truthful];
}

/// Settings of a fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExploreParams {
    pub projection: Projection,
    /// Triplets sampled per hallucination level (all of a level with fewer).
    pub per_level: usize,
    pub seed: u64,
    /// t-SNE perplexity (lowered for small samples) and iterations.
    pub perplexity: f32,
    pub epochs: usize,
}

impl Default for ExploreParams {
    fn default() -> Self {
        Self { projection: Projection::Tsne, per_level: 200, seed: 0, perplexity: 30.0, epochs: 750 }
    }
}

/// One space's fit: the fitted states' features `(2m, d)` (positives of the sample, then negatives), their 2-D
/// coordinates, and for PCA the mean and components.
#[derive(Debug, Clone)]
pub struct SpaceFit {
    pub space: Space,
    features: Vec<f32>,
    d: usize,
    pub coords: Vec<[f32; 2]>,
    /// The largest absolute coordinate of the fitted points (at least 1e-12): the picture's half-width.
    pub extent: f32,
    /// [`kind_agreement`] of the fitted points.
    pub kind_agreement: f32,
    pca: Option<Pca>,
}

#[derive(Debug, Clone)]
struct Pca {
    mean: Vec<f32>,
    axes: [Vec<f32>; 2],
}

/// The memory of one layer, fitted in the three spaces.
#[derive(Debug, Clone)]
pub struct Explorer {
    pub layer: usize,
    pub params: ExploreParams,
    /// Memory indices of the sampled triplets, in point order (point `i` is the positive state of `sample[i]`, point
    /// `m + i` its negative).
    pub sample: Vec<usize>,
    pub spaces: Vec<SpaceFit>,
    /// Seconds the fit took.
    pub seconds: f64,
}

/// One retrieved entry: its index among the memory followed by the given extra entries, and its cosine score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retrieved {
    pub index: usize,
    pub score: f32,
}

/// The memory's triplets drawn for the picture: up to `per_level` of each hallucination level, in memory order.
pub fn sample(memory: &KnowledgeMemory, per_level: usize, seed: u64) -> Vec<usize> {
    let mut levels: Vec<&str> = memory.triplets.iter().map(|t| t.level.as_str()).collect();
    levels.sort_unstable();
    levels.dedup();
    let mut chosen = Vec::new();
    for (li, level) in levels.iter().enumerate() {
        let mut idx: Vec<usize> = (0..memory.len()).filter(|&i| memory.triplets[i].level == *level).collect();
        // A partial Fisher–Yates shuffle from the seed, then memory order.
        let mut rng = Rng::derive(seed, "explorer-sample", li as u64);
        let take = per_level.min(idx.len());
        for i in 0..take {
            let j = i + rng.below(idx.len() - i);
            idx.swap(i, j);
        }
        chosen.extend_from_slice(&idx[..take]);
    }
    chosen.sort_unstable();
    chosen
}

/// The features of hidden states `h` `(n, d)` in `space`: centred, encoded, unit rows, `(n, d)` f32.
pub fn features(enc: &LayerEncoders, space: Space, h: &Tensor) -> Result<Tensor> {
    let x = h.to_dtype(DType::F32)?.broadcast_sub(&enc.centre.to_dtype(DType::F32)?)?;
    let z = match space {
        Space::Raw => x,
        Space::Semantic => enc.semantic.forward(&x)?,
        Space::Truthful => enc.truthful.forward(&x)?,
    };
    unit_rows(&z)
}

/// The memory entries `h_sem` `(m, d)` followed by `extra` `(e, d)` best matching `query` `(d)` by the cosine of the
/// centred states, as latent in-context editing retrieves ([`super::latent`]): the best `k`, best first.
pub fn retrieve(
    memory_sem: &Tensor,
    extra: Option<&Tensor>,
    centre: &Tensor,
    query: &Tensor,
    k: usize,
) -> Result<Vec<Retrieved>> {
    let bank = match extra {
        Some(e) => Tensor::cat(&[memory_sem, e], 0)?,
        None => memory_sem.clone(),
    };
    let unit = |t: &Tensor| unit_rows(&t.to_dtype(DType::F32)?.broadcast_sub(&centre.to_dtype(DType::F32)?)?);
    let scores: Vec<f32> = unit(&bank)?.matmul(&unit(&query.reshape((1, ()))?)?.t()?)?.flatten_all()?.to_vec1()?;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    Ok(order.into_iter().take(k).map(|index| Retrieved { index, score: scores[index] }).collect())
}

impl Explorer {
    /// Fits the memory's layer `layer` (a layer of `memory.layers`) with `enc`, that layer's encoders.
    pub fn fit(memory: &KnowledgeMemory, enc: &LayerEncoders, layer: usize, params: &ExploreParams) -> Result<Self> {
        let start = Instant::now();
        let li = memory.layer_index(layer)?;
        let sample = sample(memory, params.per_level, params.seed);
        if sample.len() < 2 {
            return Err(Error::Invalid(format!("the knowledge memory has {} triplets: too few to draw", sample.len())));
        }
        let idx =
            Tensor::new(sample.iter().map(|&i| i as u32).collect::<Vec<_>>().as_slice(), memory.h_pos[li].device())?;
        let states =
            Tensor::cat(&[memory.h_pos[li].index_select(&idx, 0)?, memory.h_neg[li].index_select(&idx, 0)?], 0)?;
        let mut spaces = Vec::new();
        for space in Space::ALL {
            let f = features(enc, space, &states)?;
            let d = f.dim(1)?;
            let features: Vec<f32> = f.flatten_all()?.to_vec1()?;
            let pca = Pca::fit(&features, d, params.seed)?;
            let init = pca.project(&features, d);
            let coords = match params.projection {
                Projection::Pca => init,
                Projection::Tsne => tsne(&features, d, &init, params)?,
            };
            let pca = (params.projection == Projection::Pca).then_some(pca);
            let extent = coords.iter().flat_map(|p| [p[0].abs(), p[1].abs()]).fold(0f32, f32::max).max(1e-12);
            let kind_agreement = kind_agreement(&coords);
            spaces.push(SpaceFit { space, features, d, coords, extent, kind_agreement, pca });
        }
        Ok(Self { layer, params: params.clone(), sample, spaces, seconds: start.elapsed().as_secs_f64() })
    }
}

impl SpaceFit {
    /// Places features `(e, d)` (from [`features`]) in this space's picture without refitting (see the module docs).
    pub fn place(&self, f: &Tensor) -> Result<Vec<[f32; 2]>> {
        if f.dim(1)? != self.d {
            return Err(Error::Invalid(format!("states of width {} for a space of width {}", f.dim(1)?, self.d)));
        }
        let rows: Vec<f32> = f.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        if let Some(pca) = &self.pca {
            return Ok(pca.project(&rows, self.d));
        }
        Ok(rows.chunks(self.d).map(|r| self.place_one(r)).collect())
    }

    fn place_one(&self, row: &[f32]) -> [f32; 2] {
        let mut dist: Vec<(f32, usize)> =
            self.features.chunks(self.d).enumerate().map(|(i, f)| (sq_dist(f, row), i)).collect();
        let k = PLACE_NEIGHBOURS.min(dist.len());
        if k == 0 {
            return [0.0, 0.0];
        }
        dist.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let near = &dist[..k];
        let width = near.iter().map(|p| p.0).fold(0f32, f32::max).max(1e-12);
        let (mut x, mut y, mut total) = (0f32, 0f32, 0f32);
        for &(d2, i) in near {
            let w = (-d2 / width).exp();
            x += w * self.coords[i][0];
            y += w * self.coords[i][1];
            total += w;
        }
        [x / total, y / total]
    }
}

fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Pca {
    /// The top two principal axes of `rows` (`n` rows of width `d`), by power iteration from a seeded start.
    fn fit(rows: &[f32], d: usize, seed: u64) -> Result<Self> {
        let n = rows.len() / d.max(1);
        if n == 0 || d == 0 {
            return Err(Error::Invalid("no states to project".into()));
        }
        let mut mean = vec![0f32; d];
        for r in rows.chunks(d) {
            mean.iter_mut().zip(r).for_each(|(m, x)| *m += x / n as f32);
        }
        let centred: Vec<f32> = rows.chunks(d).flat_map(|r| r.iter().zip(&mean).map(|(x, m)| x - m)).collect();
        let mut axes: Vec<Vec<f32>> = Vec::new();
        for a in 0..2 {
            let mut rng = Rng::derive(seed, "explorer-pca", a);
            let mut v: Vec<f32> = (0..d).map(|_| rng.normal()).collect();
            for _ in 0..PCA_ITERATIONS {
                // v ← Xᵀ X v, without the earlier axes.
                let xv: Vec<f32> = centred.chunks(d).map(|r| dot(r, &v)).collect();
                let mut w = vec![0f32; d];
                for (r, s) in centred.chunks(d).zip(&xv) {
                    w.iter_mut().zip(r).for_each(|(wi, x)| *wi += s * x);
                }
                for u in &axes {
                    let p = dot(&w, u);
                    w.iter_mut().zip(u).for_each(|(wi, ui)| *wi -= p * ui);
                }
                let norm = dot(&w, &w).sqrt();
                if norm < 1e-12 {
                    break;
                }
                let next: Vec<f32> = w.into_iter().map(|x| x / norm).collect();
                let moved = next.iter().zip(&v).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                v = next;
                if moved < 1e-6 {
                    break;
                }
            }
            // A sign convention, so the picture does not flip between runs: the largest entry is positive.
            let big = v.iter().copied().fold(0f32, |m, x| if x.abs() > m.abs() { x } else { m });
            if big < 0.0 {
                v.iter_mut().for_each(|x| *x = -*x);
            }
            axes.push(v);
        }
        let second = axes.pop().unwrap_or_default();
        let first = axes.pop().unwrap_or_default();
        Ok(Self { mean, axes: [first, second] })
    }

    /// Coordinates of `rows` (width `d`) on the two axes.
    fn project(&self, rows: &[f32], d: usize) -> Vec<[f32; 2]> {
        rows.chunks(d)
            .map(|r| {
                let c: Vec<f32> = r.iter().zip(&self.mean).map(|(x, m)| x - m).collect();
                [dot(&c, &self.axes[0]), dot(&c, &self.axes[1])]
            })
            .collect()
    }
}

/// Barnes–Hut t-SNE of `rows` (width `d`) from `init` (scaled to a standard deviation of 1e-4, as PCA starts are).
fn tsne(rows: &[f32], d: usize, init: &[[f32; 2]], params: &ExploreParams) -> Result<Vec<[f32; 2]>> {
    let n = init.len();
    // The perplexity needs three times as many neighbours as points (the crate panics otherwise).
    let perplexity = params.perplexity.min((n as f32 - 1.0) / 3.0 - 1.0);
    if n < 8 || perplexity < 1.0 {
        return Ok(init.to_vec());
    }
    let sd = (init.iter().map(|p| p[0] * p[0]).sum::<f32>() / n as f32).sqrt().max(1e-12);
    let start: Vec<f32> = init.iter().flat_map(|p| [p[0] / sd * 1e-4, p[1] / sd * 1e-4]).collect();
    let samples: Vec<&[f32]> = rows.chunks(d).collect();
    // On one thread: the crate's parallel sums add in an order that work stealing decides, and a seed must give one
    // picture.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| Error::Invalid(format!("no thread for t-SNE: {e}")))?;
    let y = pool.install(|| {
        let mut t = bhtsne::tSNE::<f32, &[f32], 2>::new(&samples);
        t.perplexity(perplexity).epochs(params.epochs.max(1)).initial_embedding(start);
        t.barnes_hut(0.5, |a, b| sq_dist(a, b).sqrt());
        t.embedding()
    });
    if y.len() != 2 * n || y.iter().any(|v| !v.is_finite()) {
        return Err(Error::Invalid("t-SNE gave no finite embedding".into()));
    }
    Ok(y.chunks(2).map(|p| [p[0], p[1]]).collect())
}

/// How apart positives and negatives lie in a picture: the share of each point's ten nearest points (2-D) that are of
/// its own kind, averaged. With `m` positives then `m` negatives, 0.5 means mixed (as Fig. 5a's semantic space), 1.0
/// fully apart (its truthfulness space).
pub fn kind_agreement(coords: &[[f32; 2]]) -> f32 {
    let n = coords.len();
    let m = n / 2;
    if m < 2 {
        return 0.0;
    }
    let k = PLACE_NEIGHBOURS.min(n - 1);
    let mut total = 0f32;
    for (i, p) in coords.iter().enumerate() {
        let mut near: Vec<(f32, usize)> =
            coords.iter().enumerate().filter(|(j, _)| *j != i).map(|(j, q)| (sq_dist(p, q), j)).collect();
        near.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let same = near[..k].iter().filter(|(_, j)| (*j < m) == (i < m)).count();
        total += same as f32 / k as f32;
    }
    total / n as f32
}
