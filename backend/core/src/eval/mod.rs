//! Evaluation of edit methods: the metric functions and the one-step / sequential / cross-task harness.

pub mod harness;
pub mod metrics;

pub use harness::{run, run_detailed, CaseScore, Evaluator, Mode, PreparedCase};
pub use metrics::{agreement, exact_match, token_accuracy, EditMetric, Mean};
