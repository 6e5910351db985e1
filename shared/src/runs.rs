//! Benchmark runs launched from the studio, and the leaderboard of finished ones.

use serde::{Deserialize, Serialize};

use crate::bench::{BenchResult, MetricConvention};

/// Limits of a studio run (`--demo` lowers `n`).
pub const RUN_N_MAX: usize = 500;

/// `POST` launch-run body: what `unike bench` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunRequest {
    pub methods: Vec<String>,
    /// `vqa`, `caption` or `cross`.
    pub task: String,
    /// `one-step`, `sequential` or `sequential-gap` (VLKEB's protocol: one stream of edits, each case scored after
    /// `k` later edits).
    pub mode: String,
    /// Edits per sequence (`sequential`) or the gap (`sequential-gap`).
    #[serde(default = "ten")]
    pub k: usize,
    pub n: usize,
    /// Draws the run's cases (a deterministic sample of `n`) and every random choice of the run.
    #[serde(default)]
    pub seed: u64,
    /// `world` (the evaluation split of the model's own synthetic world) or `workspace` (the workspace's stored cases, snapshotted at launch;
    /// such runs stay private to the workspace and are not on the public leaderboard).
    #[serde(default = "world")]
    pub data: String,
}

fn ten() -> usize {
    10
}

fn world() -> String {
    "world".into()
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Finished,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        [Self::Queued, Self::Running, Self::Finished, Self::Failed, Self::Cancelled]
            .into_iter()
            .find(|r| r.as_str() == s)
    }

    /// No more progress will come.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Finished | Self::Failed | Self::Cancelled)
    }
}

/// One run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunInfo {
    pub id: i64,
    pub workspace_id: i64,
    pub author: String,
    pub model: String,
    pub request: RunRequest,
    pub status: RunStatus,
    /// Cases evaluated so far, of `total` (all methods).
    pub done: usize,
    pub total: usize,
    /// Why it failed.
    pub error: Option<String>,
    /// What the reader should know (e.g. workspace cases left out of the run, and why).
    #[serde(default)]
    pub note: Option<String>,
    /// One row per finished method.
    pub results: Vec<BenchResult>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// One row of the leaderboard: a method's result in a finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LeaderboardRow {
    pub run_id: i64,
    pub model: String,
    pub seed: u64,
    pub finished_at: String,
    /// Mean of the five metrics (token convention).
    pub score: f64,
    /// How the row's figures were computed (rows stored before conventions were recorded: `v1`); rows of different
    /// conventions are not comparable.
    pub convention: MetricConvention,
    /// [`MetricConvention::label`] of `convention`.
    pub convention_label: String,
    pub result: BenchResult,
}

/// The leaderboard, best score first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Leaderboard {
    pub rows: Vec<LeaderboardRow>,
}

/// Leaderboard filters (query string); empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LeaderboardQuery {
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    /// `v1` or `v2` ([`MetricConvention`]).
    #[serde(default)]
    pub convention: Option<String>,
}
