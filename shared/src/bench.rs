//! Editing-benchmark results, as `unike bench --json` prints them and the studio shows them.

use serde::{Deserialize, Serialize};

/// The five (six) editing metrics, in percent. `portability` only where the data has portability questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MetricSet {
    pub reliability: f64,
    pub t_generality: f64,
    pub m_generality: f64,
    pub t_locality: f64,
    pub m_locality: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portability: Option<f64>,
}

impl MetricSet {
    /// Reliability, T-Generality, M-Generality, T-Locality, M-Locality, in that order.
    pub fn five(&self) -> [f64; 5] {
        [self.reliability, self.t_generality, self.m_generality, self.t_locality, self.m_locality]
    }

    /// Mean of the five metrics (the leaderboard's score).
    pub fn mean5(&self) -> f64 {
        self.five().iter().sum::<f64>() / 5.0
    }
}

/// Edit latency of a run, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Timing {
    pub edit_ms_median: f64,
    pub edit_ms_p90: f64,
}

/// One (method, task, mode) row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BenchResult {
    pub method: String,
    /// `vqa`, `caption` or `cross`.
    pub task: String,
    /// `one-step` or `sequential`.
    pub mode: String,
    /// Edits per sequence (1 for one-step).
    pub k: usize,
    /// Edit cases evaluated.
    pub n: usize,
    /// The field's convention: teacher-forced token accuracy; locality as top-1 agreement with the pre-edit model.
    pub metrics: MetricSet,
    /// Exact match of greedy answers (locality: the post-edit answer equals the pre-edit answer).
    pub exact_match: MetricSet,
    pub timing: Timing,
}

/// What `unike bench --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BenchReport {
    pub results: Vec<BenchResult>,
}
