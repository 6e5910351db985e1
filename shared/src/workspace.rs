//! Team workspaces: members with roles, invitations, the activity feed.

use serde::{Deserialize, Serialize};

use crate::auth::UserInfo;

/// What a member may do. Viewers read; editors also apply and undo edits, import cases and launch runs; owners also
/// manage members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Editor,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

/// `POST` create-workspace body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NewWorkspace {
    /// 1 to 64 characters.
    pub name: String,
}

/// A workspace, with the caller's role in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Workspace {
    pub id: i64,
    pub name: String,
    pub role: Role,
    /// Edits currently on its patch stack.
    pub edits: usize,
    pub created_at: String,
}

/// A member and their role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Member {
    pub user: UserInfo,
    pub role: Role,
}

/// `POST` invite body: invite an existing user with a role; they join once they accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Invitation {
    pub username: String,
    pub role: Role,
}

/// An invitation waiting for its invitee to accept or decline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PendingInvitation {
    pub id: i64,
    pub workspace_id: i64,
    /// The workspace's name.
    pub workspace: String,
    /// Who is invited.
    pub username: String,
    pub role: Role,
    /// The owner who sent it.
    pub invited_by: String,
    pub created_at: String,
}

/// `POST` change-role body (owners).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RoleChange {
    pub role: Role,
}

/// One line of a workspace's activity feed (its audit log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub actor: String,
    /// `workspace.create`, `member.invite`, `member.join`, `member.role`, `member.remove`, `edit.apply`, `edit.undo`, `cases.import`, `run.start`, `run.cancel`, ...
    pub action: String,
    pub detail: String,
}
