//! The metric functions of the MMEdit / VLKEB protocol and a running mean in the shape of burn's `Metric`
//! (update with a value, read the aggregate).
//!
//! Field convention: Reliability, generality and portability are the teacher-forced token accuracy of the expected
//! answer; locality is the agreement of the post-edit top-1 token with the pre-edit one at each position of the
//! locality answer. Exact match compares greedy answers (for locality: post-edit greedy answer = pre-edit greedy answer).

use serde::{Deserialize, Serialize};

/// Fraction of positions where the teacher-forced argmax equals the target id. Empty targets score 0.
pub fn token_accuracy(argmax: &[u32], targets: &[u32]) -> f32 {
    if targets.is_empty() {
        return 0.0;
    }
    let right = argmax.iter().zip(targets).filter(|(a, b)| a == b).count();
    right as f32 / targets.len() as f32
}

/// Fraction of positions where the post-edit top-1 token equals the pre-edit one.
pub fn agreement(pre: &[u32], post: &[u32]) -> f32 {
    token_accuracy(post, pre)
}

/// Greedy answers equal, ignoring surrounding whitespace.
pub fn exact_match(answer: &str, expected: &str) -> bool {
    answer.trim() == expected.trim()
}

/// A running mean (burn-style metric: `update`, then `value`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Mean {
    sum: f64,
    count: usize,
}

impl Mean {
    pub fn update(&mut self, value: f32) {
        self.sum += value as f64;
        self.count += 1;
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// The mean, or `None` before any update.
    pub fn value(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// The six editing metrics (portability only where the data has it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EditMetric {
    Reliability,
    TGenerality,
    MGenerality,
    TLocality,
    MLocality,
    Portability,
}

impl EditMetric {
    pub const ALL: [EditMetric; 6] = [
        EditMetric::Reliability,
        EditMetric::TGenerality,
        EditMetric::MGenerality,
        EditMetric::TLocality,
        EditMetric::MLocality,
        EditMetric::Portability,
    ];

    /// JSON key.
    pub fn key(self) -> &'static str {
        match self {
            EditMetric::Reliability => "reliability",
            EditMetric::TGenerality => "t_generality",
            EditMetric::MGenerality => "m_generality",
            EditMetric::TLocality => "t_locality",
            EditMetric::MLocality => "m_locality",
            EditMetric::Portability => "portability",
        }
    }

    /// Table header.
    pub fn title(self) -> &'static str {
        match self {
            EditMetric::Reliability => "Rel.",
            EditMetric::TGenerality => "T-Gen.",
            EditMetric::MGenerality => "M-Gen.",
            EditMetric::TLocality => "T-Loc.",
            EditMetric::MLocality => "M-Loc.",
            EditMetric::Portability => "Port.",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_cases() {
        assert_eq!(token_accuracy(&[5, 6, 2], &[5, 6, 2]), 1.0);
        assert!((token_accuracy(&[5, 7, 2], &[5, 6, 2]) - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(token_accuracy(&[1], &[]), 0.0);
        assert_eq!(agreement(&[4, 4], &[4, 9]), 0.5);
        assert!(exact_match(" paris ", "paris") && !exact_match("paris", "rome"));
        let mut m = Mean::default();
        assert_eq!(m.value(), None);
        for v in [1.0, 0.0, 0.5] {
            m.update(v);
        }
        assert_eq!(m.value(), Some(0.5));
        assert_eq!(m.count(), 3);
    }
}
