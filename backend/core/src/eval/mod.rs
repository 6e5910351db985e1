//! Evaluation of edit methods: the metric functions and the one-step / sequential / cross-task harness.

pub mod harness;
pub mod metrics;
pub mod shard;
pub mod share;
#[cfg(test)]
mod tests;

pub use harness::{run, run_detailed, CaseScore, Evaluator, Mode, PreparedCase, M_LOCALITY_TOP_K};
pub use metrics::{
    agreement, answer_scores, exact_match, token_accuracy, top_k_agreement, top_k_ids, EditMetric, Mean,
};
