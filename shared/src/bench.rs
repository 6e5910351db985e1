//! Editing-benchmark results, as `unike bench --json` prints them and the studio shows them.

use serde::{Deserialize, Serialize};

/// How a result's figures were computed. Results stored before conventions were recorded carry none and read as
/// [`MetricConvention::V1`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum MetricConvention {
    /// Token accuracy over the answer tokens and the end-of-sequence token; locality (text and image) as top-1
    /// agreement at the answer and end-of-sequence positions.
    #[default]
    V1,
    /// EasyEdit's multimodal evaluation: token accuracy over the answer tokens only; T-Locality as top-1 agreement
    /// at the answer positions; M-Locality as the element-wise top-10 comparison at the answer positions.
    V2,
}

impl MetricConvention {
    /// The convention `unike bench` computes now.
    pub const CURRENT: MetricConvention = MetricConvention::V2;

    /// As stored and filtered on: `v1`, `v2`.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricConvention::V1 => "v1",
            MetricConvention::V2 => "v2",
        }
    }

    pub fn parse(s: &str) -> Option<MetricConvention> {
        [MetricConvention::V1, MetricConvention::V2].into_iter().find(|c| c.as_str() == s)
    }

    /// A short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            MetricConvention::V1 => "v1: answer+EOS, M-Loc top-1",
            MetricConvention::V2 => "v2: answer tokens, M-Loc top-10",
        }
    }
}

/// The five (six) editing metrics, in percent. `portability` only where the data has portability questions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MetricSet {
    pub reliability: f64,
    pub t_generality: f64,
    pub m_generality: f64,
    pub t_locality: f64,
    pub m_locality: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portability: Option<f64>,
    /// The unedited model's score on the same portability questions (VLKEB's base), computed before any edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portability_base: Option<f64>,
    /// M-Locality as top-1 agreement with the unedited model at the answer positions (v2 token convention only; the
    /// v1 M-Locality was this, with the end-of-sequence position too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m_locality_top1: Option<f64>,
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
    /// `one-step`, `sequential` or `sequential-gap` (VLKEB's protocol).
    pub mode: String,
    /// Edits per sequence (1 for one-step); in `sequential-gap`, the gap: edits made after a case's own before it is
    /// scored.
    pub k: usize,
    /// Edit cases evaluated.
    pub n: usize,
    /// How `metrics` were computed (absent in results stored before it was recorded: `v1`).
    #[serde(default)]
    pub convention: MetricConvention,
    /// The field's convention (v2): teacher-forced token accuracy over the answer tokens; T-Locality as top-1
    /// agreement with the pre-edit model, M-Locality as its element-wise top-10 agreement, at the answer positions.
    pub metrics: MetricSet,
    /// Exact match of greedy answers (locality: the post-edit answer equals the pre-edit answer).
    pub exact_match: MetricSet,
    /// The same edits scored under the old convention v1 (token accuracy over the answer and its end of sequence;
    /// T- and M-Locality as top-1 agreement at the answer and end-of-sequence positions), so that a change of model
    /// can be read apart from the change of metric. Absent in results stored before it was computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_v1: Option<MetricSet>,
    /// Portability per number of hops (VLKEB's multi-hop questions), in hop order; empty without portability
    /// questions (and in results stored before it was computed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub portability_hops: Vec<HopScore>,
    pub timing: Timing,
}

/// Portability of the questions of one number of hops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HopScore {
    /// As the data names it: `1-hop`, `2-hop`, ...
    pub hop: String,
    /// Questions scored.
    pub questions: usize,
    /// Token accuracy (v2, percent) after the edit, and the unedited model's on the same questions.
    pub token: f64,
    pub token_base: f64,
    /// Exact match (percent) after the edit, and the unedited model's.
    pub exact: f64,
    pub exact_base: f64,
}

/// What `unike bench --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BenchReport {
    pub results: Vec<BenchResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_without_a_convention_read_as_v1() {
        let m = r#"{"reliability":1,"t_generality":2,"m_generality":3,"t_locality":4,"m_locality":5}"#;
        let old = format!(
            r#"{{"method":"ft","task":"vqa","mode":"one-step","k":1,"n":2,"metrics":{m},"exact_match":{m},
            "timing":{{"edit_ms_median":1,"edit_ms_p90":2}}}}"#
        );
        let r: BenchResult = serde_json::from_str(&old).unwrap();
        assert_eq!(r.convention, MetricConvention::V1);
        assert_eq!((r.metrics.portability_base, r.metrics.m_locality_top1), (None, None));
        let new = BenchResult { convention: MetricConvention::CURRENT, ..r };
        let json = serde_json::to_string(&new).unwrap();
        assert!(json.contains(r#""convention":"v2""#), "{json}");
        assert_eq!(serde_json::from_str::<BenchResult>(&json).unwrap(), new);
        assert_eq!(MetricConvention::parse("v2"), Some(MetricConvention::V2));
        assert_eq!(MetricConvention::parse("v3"), None);
        assert!(MetricConvention::V1.label().contains("EOS") && MetricConvention::V2.label().contains("top-10"));
    }
}
