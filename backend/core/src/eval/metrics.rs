//! The metric functions of the MMEdit / VLKEB protocol and a running mean in the shape of burn's `Metric`
//! (update with a value, read the aggregate).
//!
//! Field convention (v2, EasyEdit's multimodal evaluation): Reliability, generality and portability are the
//! teacher-forced token accuracy over the expected answer's tokens only (the end-of-sequence token is supervised
//! when methods train, never scored: a failed one-token edit scores 0). T-Locality is the agreement of the post-edit
//! top-1 token with the pre-edit one at each answer position of the locality probe; M-Locality compares the pre- and
//! post-edit top-10 token lists (sorted by logit) element by element at each answer position. Exact match compares
//! greedy answers, read off teacher forcing (every answer token and the end of sequence are the argmax; for locality:
//! post-edit greedy answer = pre-edit greedy answer).

use serde::{Deserialize, Serialize};

/// Fraction of positions where the teacher-forced argmax equals the target id. Empty targets score 0.
pub fn token_accuracy(argmax: &[u32], targets: &[u32]) -> f32 {
    if targets.is_empty() {
        return 0.0;
    }
    let right = argmax.iter().zip(targets).filter(|(a, b)| a == b).count();
    right as f32 / targets.len() as f32
}

/// Scores of one probe from the argmax at each of its target positions (`argmax`) and its targets (the answer's ids
/// then the end-of-sequence id, as [`crate::edit::EditSequence::new`] builds them): the token accuracy over the
/// answer ids only, and whether greedy decoding reproduces the answer exactly (every target, end of sequence
/// included, is the argmax).
pub fn answer_scores(argmax: &[u32], targets: &[u32]) -> (f32, bool) {
    let answer = &targets[..targets.len().saturating_sub(1)];
    (token_accuracy(argmax, answer), argmax == targets)
}

/// Fraction of positions where the post-edit top-1 token equals the pre-edit one (over `pre`'s positions).
pub fn agreement(pre: &[u32], post: &[u32]) -> f32 {
    token_accuracy(post, pre)
}

/// The `k` ids of the highest logits, highest first (ties: the lower id first). NaN sorts below every number.
pub fn top_k_ids(logits: &[f32], k: usize) -> Vec<u32> {
    let key = |i: usize| if logits[i].is_nan() { f32::NEG_INFINITY } else { logits[i] };
    let mut ids: Vec<usize> = (0..logits.len()).collect();
    let k = k.min(ids.len());
    if k == 0 {
        return vec![];
    }
    let desc = |a: &usize, b: &usize| key(*b).total_cmp(&key(*a)).then(a.cmp(b));
    ids.select_nth_unstable_by(k - 1, desc);
    ids.truncate(k);
    ids.sort_by(desc);
    ids.into_iter().map(|i| i as u32).collect()
}

/// EasyEdit's multimodal locality: at each position, the pre- and post-edit top-k lists compared slot by slot (order
/// matters: the same ids in another order do not all agree); the fraction of equal slots over every position and
/// slot of `pre`. Empty `pre` scores 0.
pub fn top_k_agreement(pre: &[Vec<u32>], post: &[Vec<u32>]) -> f32 {
    let slots: usize = pre.iter().map(Vec::len).sum();
    if slots == 0 {
        return 0.0;
    }
    let equal: usize = pre.iter().zip(post).map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x == y).count()).sum();
    equal as f32 / slots as f32
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

/// The six editing metrics (portability only where the data has it), and M-Locality's top-1 variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EditMetric {
    Reliability,
    TGenerality,
    MGenerality,
    TLocality,
    MLocality,
    Portability,
    /// M-Locality as top-1 agreement at the answer positions (T-Locality's computation on the image probe).
    MLocalityTop1,
}

impl EditMetric {
    pub const ALL: [EditMetric; 7] = [
        EditMetric::Reliability,
        EditMetric::TGenerality,
        EditMetric::MGenerality,
        EditMetric::TLocality,
        EditMetric::MLocality,
        EditMetric::Portability,
        EditMetric::MLocalityTop1,
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
            EditMetric::MLocalityTop1 => "m_locality_top1",
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
            EditMetric::MLocalityTop1 => "M-Loc. top-1",
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

    /// Reliability / generality / portability: the answer's tokens only. A one-token edit the model fails scores 0
    /// (the v1 convention, which also scored the end of sequence the model gets right anyway, gave it 50).
    #[test]
    fn answer_tokens_only_and_exact_match_with_end_of_sequence() {
        let eos = 2;
        // One-token answer 7, then end of sequence.
        assert_eq!(answer_scores(&[9, eos], &[7, eos]), (0.0, false));
        assert_eq!(token_accuracy(&[9, eos], &[7, eos]), 0.5); // what v1 reported
        assert_eq!(answer_scores(&[7, eos], &[7, eos]), (1.0, true));
        // Every answer token right but no end of sequence: full token accuracy, no exact match.
        assert_eq!(answer_scores(&[7, 8, 9], &[7, 8, eos]), (1.0, false));
        // Two of three answer tokens.
        let (acc, exact) = answer_scores(&[5, 0, 6, eos], &[5, 4, 6, eos]);
        assert!((acc - 2.0 / 3.0).abs() < 1e-6 && !exact);
    }

    /// T-Locality: top-1 agreement at the answer positions.
    #[test]
    fn top1_agreement_at_answer_positions() {
        assert_eq!(agreement(&[4, 5, 6], &[4, 5, 6]), 1.0);
        assert!((agreement(&[4, 5, 6], &[4, 0, 6]) - 2.0 / 3.0).abs() < 1e-6);
        // Positions beyond the pre-edit list (e.g. the end of sequence) are not scored.
        assert_eq!(agreement(&[4], &[4, 99]), 1.0);
    }

    #[test]
    fn top_k_ids_of_hand_computed_logits() {
        let logits = [0.1, 3.0, -1.0, 2.5, 3.0, f32::NAN, 0.7, 2.0, -5.0, 1.5, 0.0, 9.0];
        // 9.0 (id 11), 3.0 (ids 1 and 4: the lower id first), 2.5 (3), 2.0 (7), 1.5 (9), 0.7 (6), 0.1 (0), 0.0 (10),
        // -1.0 (2); NaN and -5.0 last.
        assert_eq!(top_k_ids(&logits, 10), vec![11, 1, 4, 3, 7, 9, 6, 0, 10, 2]);
        assert_eq!(top_k_ids(&logits, 1), vec![11]);
        assert_eq!(top_k_ids(&logits, 0), Vec::<u32>::new());
        assert_eq!(top_k_ids(&[1.0, 2.0], 10), vec![1, 0]);
    }

    /// M-Locality: top-10 lists compared slot by slot, so the same set in another order scores below 1.
    #[test]
    fn top_k_agreement_is_element_wise() {
        let pre: Vec<u32> = (0..10).collect();
        assert_eq!(top_k_agreement(std::slice::from_ref(&pre), std::slice::from_ref(&pre)), 1.0);
        // The same ten ids with the first two swapped: 8 of 10 slots agree.
        let mut swapped = pre.clone();
        swapped.swap(0, 1);
        assert!((top_k_agreement(std::slice::from_ref(&pre), std::slice::from_ref(&swapped)) - 0.8).abs() < 1e-6);
        // The same set reversed: no slot agrees.
        let reversed: Vec<u32> = pre.iter().rev().copied().collect();
        assert_eq!(top_k_agreement(std::slice::from_ref(&pre), &[reversed]), 0.0);
        // Two positions: mean over positions and slots, (10 + 8) / 20.
        let both = top_k_agreement(&[pre.clone(), pre.clone()], &[pre.clone(), swapped]);
        assert!((both - 0.9).abs() < 1e-6);
        // From logits: post-edit logits that keep the set but reorder it.
        let pre_logits: Vec<f32> = (0..12).map(|i| 12.0 - i as f32).collect();
        let mut post_logits = pre_logits.clone();
        post_logits.swap(2, 3);
        let (a, b) = (top_k_ids(&pre_logits, 10), top_k_ids(&post_logits, 10));
        let (mut sa, mut sb) = (a.clone(), b.clone());
        sa.sort_unstable();
        sb.sort_unstable();
        assert_eq!(sa, sb);
        assert!((top_k_agreement(&[a], &[b]) - 0.8).abs() < 1e-6);
        assert_eq!(top_k_agreement(&[], &[]), 0.0);
    }
}
