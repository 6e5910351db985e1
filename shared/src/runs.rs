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
    /// A reference result: the project's own committed `unike reproduce` output, imported when the studio first
    /// started (`commit 1a2b3c4, results/DIR/table1.json`); `None` for runs launched in this studio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
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
    /// Where a reference row comes from (see [`RunInfo::reference`]); `None` for runs of this studio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
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
    /// `reference` (the project's committed results) or `studio` (runs launched here); empty: both.
    #[serde(default)]
    pub source: Option<String>,
}

/// Values of [`LeaderboardQuery::source`].
pub const SOURCE_REFERENCE: &str = "reference";
pub const SOURCE_STUDIO: &str = "studio";

/// One edit case of a run for one method, as the run's page lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunCase {
    pub method: String,
    /// The case's place in the run's order of edits.
    pub index: usize,
    /// The edit: question, new answer, the unedited model's answer as the data records it, the image's file name,
    /// and the probes' questions (absent where the run did not record its cases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<CaseText>,
    pub edit_ms: f64,
    /// Token scores in percent (the run's metric convention), `None` where the probe was not scored.
    pub reliability: Option<f64>,
    pub t_generality: Option<f64>,
    pub m_generality: Option<f64>,
    pub t_locality: Option<f64>,
    pub m_locality: Option<f64>,
    pub portability: Option<f64>,
    /// M-Locality as top-1 agreement (v2 runs).
    pub m_locality_top1: Option<f64>,
    /// The model's top-1 tokens at the target's positions of the edit question (teacher-forced, as reliability is
    /// scored) before and after the edit (absent in runs stored before they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_after: Option<String>,
    /// The probes this case failed, in metric order: `reliability`, `t_generality`, `m_generality`, `portability`
    /// (any answer token wrong), `t_locality`, `m_locality` (any top-1 token changed).
    pub failed: Vec<String>,
}

/// The texts of an edit case (what a run's page shows of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CaseText {
    pub question: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_edit: Option<String>,
    pub image: String,
    pub rephrase: String,
    pub loc_question: String,
    pub m_loc_question: String,
}

/// `GET` a run's cases: one method's per-case scores, the failing cases first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunCases {
    pub cases: Vec<RunCase>,
    /// Why there are none, or fewer than the run's results (reference runs keep only their tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Query of a run's cases.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunCasesQuery {
    /// The method whose cases to list (default: the run's first).
    #[serde(default)]
    pub method: Option<String>,
}
