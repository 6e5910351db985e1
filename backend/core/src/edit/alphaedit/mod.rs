//! AlphaEdit (Fang et al., ICLR 2025, "AlphaEdit: Null-Space Constrained Knowledge Editing for Language Models"):
//! MEMIT's locate-then-edit ([`super::memit`]) with each layer's change projected onto the null space of the keys of
//! preserved knowledge, so that `ΔW k₀ = 0` for the ordinary inputs the statistics saw and the edits made before:
//!
//! ```text
//! P  = Û Ûᵀ, Û the eigenvectors of C = E[k₀ k₀ᵀ] whose eigenvalue < nullspace_threshold
//! ΔW = R Kᵀ P (K Kᵀ P + K_p K_pᵀ P + λ I)⁻¹       (λ = L2; K_p the keys of the edits already in the stack)
//! ```
//!
//! computed as the reference code does, `solve(P (K Kᵀ + K_p K_pᵀ) + λ I, P K Rᵀ)`, which is `ΔWᵀ` `(i, d)`.
//! Sequential editing reads `K_p` from the stack's patches (every locate-then-edit patch stores its keys), so
//! undoing an edit also removes it from the cache. The same departures from EasyEdit as MEMIT.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::memit::linalg::{solve, Mat};
use super::memit::stats::KeyStats;
use super::memit::target::TargetParams;
use super::memit::{check_layers, locate_and_edit, patch_of, UpdateRule};
use super::{EditContext, EditMethod, EditRequest, Patch, Provenance};
use crate::error::{Error, Result};
use crate::model::VisionLanguageModel;

/// AlphaEdit's hyper-parameters (`hparams/alphaedit/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlphaEditParams {
    /// The edited decoder layers (ascending); the last one is where the target state is found.
    pub layers: Vec<usize>,
    /// Eigenvalues of `C` below this span the null space.
    pub nullspace_threshold: f64,
    /// `λ` of the solve.
    #[serde(rename = "L2")]
    pub l2: f64,
    pub v_num_grad_steps: usize,
    pub v_lr: f64,
    pub v_weight_decay: f64,
    pub clamp_norm_factor: f64,
}

impl Default for AlphaEditParams {
    fn default() -> Self {
        Self {
            layers: vec![1, 2],
            nullspace_threshold: 2e-2,
            l2: 10.0,
            v_num_grad_steps: 25,
            v_lr: 0.1,
            v_weight_decay: 0.5,
            clamp_norm_factor: 0.75,
        }
    }
}

impl AlphaEditParams {
    pub fn target(&self) -> TargetParams {
        TargetParams {
            steps: self.v_num_grad_steps,
            lr: self.v_lr,
            weight_decay: self.v_weight_decay,
            clamp_norm_factor: self.clamp_norm_factor,
        }
    }
}

/// AlphaEdit, with each edited layer's projector.
pub struct AlphaEdit {
    pub params: AlphaEditParams,
    /// Per edited layer: `P (i, i)` and the null space's dimension.
    projectors: BTreeMap<usize, (Mat, usize)>,
    stats: Arc<KeyStats>,
    pub eos: u32,
}

impl AlphaEdit {
    /// AlphaEdit with `stats` of the model. A layer whose null space is empty at the threshold is an error (every
    /// change would be projected away).
    pub fn new(
        params: AlphaEditParams,
        stats: Arc<KeyStats>,
        model: &dyn VisionLanguageModel,
        eos: u32,
    ) -> Result<Self> {
        check_layers(&params.layers, model)?;
        if params.l2.is_nan() || params.l2 <= 0.0 {
            return Err(Error::Invalid("L2 must be above 0".into()));
        }
        let mut projectors = BTreeMap::new();
        for &l in &params.layers {
            let s = stats.layer(l)?;
            let (p, dim) = s.null_space_projector(params.nullspace_threshold);
            if dim == 0 {
                return Err(Error::Invalid(format!(
                    "layer {l}'s null space is empty at nullspace_threshold {} (its smallest eigenvalue is {:.3e})",
                    params.nullspace_threshold,
                    s.eigenvalues.first().copied().unwrap_or(f64::NAN)
                )));
            }
            projectors.insert(l, (p, dim));
        }
        Ok(Self { params, projectors, stats, eos })
    }

    /// The null space's dimension at each edited layer.
    pub fn null_space_dims(&self) -> BTreeMap<usize, usize> {
        self.projectors.iter().map(|(&l, (_, d))| (l, *d)).collect()
    }

    /// `Σ K_p K_pᵀ` of the stack's stored keys at `layer`, `(i, i)`.
    fn preserved(ctx: &EditContext<'_>, layer: usize, width: usize) -> Result<Mat> {
        let mut acc = Mat::zeros(width, width);
        for (_, patch) in ctx.stack.iter() {
            if let Some(k) = patch.keys.get(&layer) {
                let k = Mat::from_tensor(k)?; // (n, i)
                acc = acc.combine(1.0, &k.transpose().matmul(&k)?, 1.0)?;
            }
        }
        Ok(acc)
    }
}

impl UpdateRule for AlphaEdit {
    fn update(&self, ctx: &EditContext<'_>, layer: usize, keys: &Mat, resid: &Mat) -> Result<Mat> {
        let (p, _) = self.projectors.get(&layer).ok_or_else(|| Error::Invalid(format!("layer {layer} not edited")))?;
        let kkt = keys.matmul(&keys.transpose())?.combine(1.0, &Self::preserved(ctx, layer, keys.rows)?, 1.0)?;
        let a = p.matmul(&kkt)?.combine(1.0, &Mat::identity(keys.rows), self.params.l2)?;
        let b = p.matmul(keys)?.matmul(&resid.transpose())?;
        solve(&a, &b)
    }
}

impl EditMethod for AlphaEdit {
    fn name(&self) -> &str {
        "alphaedit"
    }

    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        let located = locate_and_edit(ctx, request, &self.params.layers, &self.params.target(), self.eos, self)?;
        Ok(patch_of(Provenance::new(self.name(), &self.params, request)?, located))
    }

    fn resident_bytes(&self) -> usize {
        self.stats.resident_bytes() + self.projectors.values().map(|(p, _)| p.data.len() * 8).sum::<usize>()
    }
}
