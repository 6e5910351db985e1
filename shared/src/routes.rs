//! Route paths of the JSON API. The server mounts exactly these; the client requests exactly these.
//!
//! Paths with `{id}` segments come with a function building the concrete path. Every write (`POST`, `DELETE`) needs
//! the session's CSRF token in [`crate::auth::CSRF_HEADER`]; every route checks the caller's role in the workspace it
//! touches. [`ALL`] lists every route for the OpenAPI document.

/// `GET` → [`crate::HealthResponse`].
pub const HEALTH: &str = "/api/health";
/// `GET` → [`crate::ModelInfo`] of the model the server runs.
pub const MODEL: &str = "/api/model";
/// `GET` → the OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = "/api/openapi.json";

/// `POST` [`crate::auth::Credentials`] → [`crate::auth::SessionInfo`] (sets the session cookie).
pub const SIGN_UP: &str = "/api/auth/signup";
/// `POST` [`crate::auth::Credentials`] → [`crate::auth::SessionInfo`].
pub const SIGN_IN: &str = "/api/auth/signin";
/// `POST` → [`crate::auth::SessionInfo`] (signed out).
pub const SIGN_OUT: &str = "/api/auth/signout";
/// `GET` → [`crate::auth::SessionInfo`] (no session: `user` is empty).
pub const SESSION: &str = "/api/auth/session";
/// `POST` → [`crate::auth::SessionInfo`]: in demo mode, a guest sandbox for a visitor without a session (the CSRF
/// header must be present, so a third-party page cannot create one).
pub const GUEST: &str = "/api/auth/guest";

/// `GET` → `Vec<`[`crate::playground::GalleryItem`]`>`.
pub const GALLERY: &str = "/api/gallery";
/// `GET` → the PNG of a gallery image or of an uploaded image (`{name}`: the gallery id or `upload-<sha>`).
pub const IMAGE: &str = "/api/images/{name}";
pub fn image(name: &str) -> String {
    format!("/api/images/{name}")
}

/// `GET` → `Vec<`[`crate::workspace::Workspace`]`>`; `POST` [`crate::workspace::NewWorkspace`] → `Workspace`.
pub const WORKSPACES: &str = "/api/workspaces";
/// `GET` → [`crate::workspace::Workspace`].
pub const WORKSPACE: &str = "/api/workspaces/{id}";
pub fn workspace(id: i64) -> String {
    format!("/api/workspaces/{id}")
}
/// `GET` → `Vec<`[`crate::workspace::Member`]`>`.
pub const MEMBERS: &str = "/api/workspaces/{id}/members";
pub fn members(id: i64) -> String {
    format!("/api/workspaces/{id}/members")
}
/// `POST` [`crate::workspace::RoleChange`] (owners) → [`crate::workspace::Member`]; `DELETE` (owners, or the member
/// leaving) → `Vec<Member>`. A workspace always keeps one owner.
pub const MEMBER: &str = "/api/workspaces/{id}/members/{user}";
pub fn member(id: i64, user: i64) -> String {
    format!("/api/workspaces/{id}/members/{user}")
}
/// `GET` → `Vec<`[`crate::workspace::PendingInvitation`]`>`; `POST` [`crate::workspace::Invitation`] (owners) →
/// `PendingInvitation`.
pub const INVITATIONS: &str = "/api/workspaces/{id}/invitations";
pub fn invitations(id: i64) -> String {
    format!("/api/workspaces/{id}/invitations")
}
/// `DELETE` (owners: revoke) → `Vec<`[`crate::workspace::PendingInvitation`]`>` still pending.
pub const INVITATION: &str = "/api/workspaces/{id}/invitations/{invitation}";
pub fn invitation(id: i64, invitation: i64) -> String {
    format!("/api/workspaces/{id}/invitations/{invitation}")
}
/// `GET` → `Vec<`[`crate::workspace::PendingInvitation`]`>` addressed to the caller.
pub const MY_INVITATIONS: &str = "/api/invitations";
/// `POST` → [`crate::workspace::Workspace`] joined.
pub const INVITATION_ACCEPT: &str = "/api/invitations/{id}/accept";
pub fn invitation_accept(id: i64) -> String {
    format!("/api/invitations/{id}/accept")
}
/// `POST` → `Vec<`[`crate::workspace::PendingInvitation`]`>` still addressed to the caller.
pub const INVITATION_DECLINE: &str = "/api/invitations/{id}/decline";
pub fn invitation_decline(id: i64) -> String {
    format!("/api/invitations/{id}/decline")
}
/// `GET` → `Vec<`[`crate::workspace::AuditEntry`]`>`, newest first.
pub const AUDIT: &str = "/api/workspaces/{id}/audit";
pub fn audit(id: i64) -> String {
    format!("/api/workspaces/{id}/audit")
}
/// `POST` [`crate::playground::AnswerRequest`] → [`crate::playground::AnswerResponse`] under the workspace's stack.
pub const ANSWER: &str = "/api/workspaces/{id}/answer";
pub fn answer(id: i64) -> String {
    format!("/api/workspaces/{id}/answer")
}
/// `GET` → [`crate::playground::EditStack`]; `POST` [`crate::playground::EditRequest`] → `AppliedEdit`.
pub const EDITS: &str = "/api/workspaces/{id}/edits";
pub fn edits(id: i64) -> String {
    format!("/api/workspaces/{id}/edits")
}
/// `DELETE` → [`crate::playground::EditStack`] (undo one edit, from anywhere in the stack).
pub const EDIT: &str = "/api/workspaces/{id}/edits/{edit}";
pub fn edit(id: i64, edit: i64) -> String {
    format!("/api/workspaces/{id}/edits/{edit}")
}
/// `GET` → `Vec<`[`crate::playground::MmEditCase`]`>` (MMEdit JSON); `POST` [`crate::playground::CaseImport`] →
/// [`crate::playground::ImportSummary`].
pub const CASES: &str = "/api/workspaces/{id}/cases";
pub fn cases(id: i64) -> String {
    format!("/api/workspaces/{id}/cases")
}
/// `GET` → `Vec<`[`crate::runs::RunInfo`]`>`; `POST` [`crate::runs::RunRequest`] → `RunInfo`.
pub const RUNS: &str = "/api/workspaces/{id}/runs";
pub fn runs(id: i64) -> String {
    format!("/api/workspaces/{id}/runs")
}
/// `GET` → [`crate::runs::RunInfo`].
pub const RUN: &str = "/api/runs/{id}";
pub fn run(id: i64) -> String {
    format!("/api/runs/{id}")
}
/// `GET` (query [`crate::runs::RunCasesQuery`]) → [`crate::runs::RunCases`]: one method's per-case scores, failing
/// cases first; whoever may read the run may read them.
pub const RUN_CASES: &str = "/api/runs/{id}/cases";
pub fn run_cases(id: i64) -> String {
    format!("/api/runs/{id}/cases")
}
/// `POST` → [`crate::runs::RunInfo`] (cancelled).
pub const RUN_CANCEL: &str = "/api/runs/{id}/cancel";
pub fn run_cancel(id: i64) -> String {
    format!("/api/runs/{id}/cancel")
}
/// `GET` (query [`crate::runs::LeaderboardQuery`]) → [`crate::runs::Leaderboard`]; public, read-only.
pub const LEADERBOARD: &str = "/api/leaderboard";
/// `GET` → the leaderboard as CSV (same filters).
pub const LEADERBOARD_CSV: &str = "/api/leaderboard.csv";
/// `GET` (query [`crate::explorer::ExplorerQuery`]) → [`crate::explorer::ExplorerView`]: the UniKE memory projected
/// (public); a workspace's edits with it for that workspace's viewers.
pub const EXPLORER: &str = "/api/explorer";
/// `GET` (query `workspace=<id>`) → `text/event-stream` of [`crate::events::Event`].
pub const EVENTS: &str = "/api/events";

/// One route for the OpenAPI document: method, path, summary, request and response type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub request: Option<&'static str>,
    pub response: &'static str,
}

const fn r(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    request: Option<&'static str>,
    response: &'static str,
) -> RouteDoc {
    RouteDoc { method, path, summary, request, response }
}

/// Every route of the API.
pub const ALL: &[RouteDoc] = &[
    r("get", HEALTH, "Liveness and version", None, "HealthResponse"),
    r("get", MODEL, "The model the server runs", None, "ModelInfo"),
    r("get", OPENAPI, "This document", None, "object"),
    r("post", SIGN_UP, "Create an account and sign in", Some("Credentials"), "SessionInfo"),
    r("post", SIGN_IN, "Sign in", Some("Credentials"), "SessionInfo"),
    r("post", SIGN_OUT, "Sign out", None, "SessionInfo"),
    r("get", SESSION, "The current session", None, "SessionInfo"),
    r("post", GUEST, "Demo mode: start a guest sandbox", None, "SessionInfo"),
    r("get", GALLERY, "The world's image gallery", None, "GalleryItem[]"),
    r("get", IMAGE, "A gallery or uploaded image (PNG)", None, "binary"),
    r("get", WORKSPACES, "The caller's workspaces", None, "Workspace[]"),
    r("post", WORKSPACES, "Create a workspace", Some("NewWorkspace"), "Workspace"),
    r("get", WORKSPACE, "One workspace", None, "Workspace"),
    r("get", MEMBERS, "Members and roles", None, "Member[]"),
    r("post", MEMBER, "Change a member's role (owners)", Some("RoleChange"), "Member"),
    r("delete", MEMBER, "Remove a member (owners) or leave", None, "Member[]"),
    r("get", INVITATIONS, "The workspace's pending invitations", None, "PendingInvitation[]"),
    r("post", INVITATIONS, "Invite a user (owners)", Some("Invitation"), "PendingInvitation"),
    r("delete", INVITATION, "Revoke an invitation (owners)", None, "PendingInvitation[]"),
    r("get", MY_INVITATIONS, "Invitations addressed to the caller", None, "PendingInvitation[]"),
    r("post", INVITATION_ACCEPT, "Accept an invitation", None, "Workspace"),
    r("post", INVITATION_DECLINE, "Decline an invitation", None, "PendingInvitation[]"),
    r("get", AUDIT, "Activity feed", None, "AuditEntry[]"),
    r("post", ANSWER, "Answer a question under the workspace's edits", Some("AnswerRequest"), "AnswerResponse"),
    r("get", EDITS, "The workspace's edit stack", None, "EditStack"),
    r("post", EDITS, "Apply an edit (editors)", Some("EditRequest"), "AppliedEdit"),
    r("delete", EDIT, "Undo an edit (editors)", None, "EditStack"),
    r("get", CASES, "Export the workspace's cases as MMEdit JSON", None, "MmEditCase[]"),
    r("post", CASES, "Import MMEdit cases (editors)", Some("CaseImport"), "ImportSummary"),
    r("get", RUNS, "The workspace's benchmark runs", None, "RunInfo[]"),
    r("post", RUNS, "Launch a benchmark run (editors)", Some("RunRequest"), "RunInfo"),
    r("get", RUN, "One run", None, "RunInfo"),
    r("get", RUN_CASES, "A run's per-case scores, failing cases first", None, "RunCases"),
    r("post", RUN_CANCEL, "Cancel a run (editors)", None, "RunInfo"),
    r("get", LEADERBOARD, "Every finished run's results, best first", None, "Leaderboard"),
    r("get", LEADERBOARD_CSV, "The leaderboard as CSV", None, "text"),
    r(
        "get",
        EXPLORER,
        "The UniKE memory and a workspace's edits in the raw, semantic and truthfulness spaces",
        None,
        "ExplorerView",
    ),
    r("get", EVENTS, "Live updates of a workspace (server-sent events)", None, "Event"),
];
