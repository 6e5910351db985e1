//! Live updates pushed to open pages over server-sent events ([`crate::routes::EVENTS`]).

use serde::{Deserialize, Serialize};

use crate::playground::AppliedEdit;
use crate::runs::RunInfo;

/// One event; the SSE `event:` field is [`Event::name`], the `data:` field this value as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Event {
    /// A run moved (progress, status, a method's result).
    Run { run: RunInfo },
    /// Someone applied an edit to a workspace.
    EditApplied { workspace_id: i64, edit: AppliedEdit },
    /// Someone undid an edit.
    EditUndone { workspace_id: i64, edit_id: i64, by: String },
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Run { .. } => "run",
            Event::EditApplied { .. } => "edit_applied",
            Event::EditUndone { .. } => "edit_undone",
        }
    }

    pub fn workspace_id(&self) -> i64 {
        match self {
            Event::Run { run } => run.workspace_id,
            Event::EditApplied { workspace_id, .. } | Event::EditUndone { workspace_id, .. } => *workspace_id,
        }
    }
}
