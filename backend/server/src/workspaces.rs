//! Workspaces and their activity feed (members and invitations: [`super::members`]).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::Json;
use unike_shared::workspace::{AuditEntry, NewWorkspace, Role, Workspace};

use super::auth::{self, Caller};
use super::error::{ApiErr, ApiResult, Body};
use super::{audit, AppState};

type Row = (i64, String, String, String, i64);

const SELECT: &str = "SELECT w.id, w.name, m.role, w.created_at, \
    (SELECT COUNT(*) FROM applied_edits e WHERE e.workspace_id = w.id AND e.active = 1) \
    FROM workspaces w JOIN memberships m ON m.workspace_id = w.id AND m.user_id = $1";

fn workspace((id, name, role, created_at, edits): Row) -> Workspace {
    Workspace { id, name, role: Role::parse(&role).unwrap_or(Role::Viewer), edits: edits as usize, created_at }
}

pub async fn get_one(st: &AppState, caller: &Caller, id: i64) -> ApiResult<Workspace> {
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE w.id = $2")))
        .bind(caller.user.id)
        .bind(id)
        .fetch_optional(&st.db)
        .await?;
    row.map(workspace).ok_or_else(|| ApiErr::not_found(format!("workspace {id}")))
}

/// `GET /api/workspaces`.
pub async fn list(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Vec<Workspace>>> {
    let c = auth::signed_in(&st, &headers).await?;
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} ORDER BY w.id")))
        .bind(c.user.id)
        .fetch_all(&st.db)
        .await?;
    Ok(Json(rows.into_iter().map(workspace).collect()))
}

/// `POST /api/workspaces`.
pub async fn create(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(req): Body<NewWorkspace>,
) -> ApiResult<Json<Workspace>> {
    let c = auth::writer(&st, &headers, addr.ip()).await?;
    if c.user.guest {
        return Err(ApiErr::forbidden("demo visitors have one sandbox; sign up for team workspaces"));
    }
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ApiErr::bad_request("a workspace name has 1 to 64 characters"));
    }
    let mut tx = super::write_tx(&st.db).await?;
    // Counted inside the write transaction, so parallel creations cannot pass the quota together.
    let owned: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM memberships WHERE user_id = $1 AND role = 'owner'")
        .bind(c.user.id)
        .fetch_one(&mut *tx)
        .await?;
    if owned >= st.workspaces_per_user {
        return Err(ApiErr::quota(format!(
            "an account may own at most {} workspaces (the studio's --workspaces-per-user)",
            st.workspaces_per_user
        )));
    }
    let id: i64 = sqlx::query_scalar("INSERT INTO workspaces (name) VALUES ($1) RETURNING id")
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO memberships (workspace_id, user_id, role) VALUES ($1, $2, 'owner')")
        .bind(id)
        .bind(c.user.id)
        .execute(&mut *tx)
        .await?;
    audit::record(&mut tx, Some(id), c.user.id, "workspace.create", name).await?;
    tx.commit().await?;
    Ok(Json(get_one(&st, &c, id).await?))
}

/// `GET /api/workspaces/{id}`.
pub async fn get(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<i64>) -> ApiResult<Json<Workspace>> {
    let c = auth::signed_in(&st, &headers).await?;
    Ok(Json(get_one(&st, &c, id).await?))
}

/// `GET /api/workspaces/{id}/audit`: the newest 200 entries.
pub async fn audit_feed(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let c = auth::signed_in(&st, &headers).await?;
    auth::role_in(&st, &c, id, Role::Viewer).await?;
    let rows: Vec<(i64, String, Option<String>, String, String)> = sqlx::query_as(
        "SELECT a.id, a.at, u.username, a.action, a.detail FROM audit_log a LEFT JOIN users u ON u.id = a.actor_id \
         WHERE a.workspace_id = $1 ORDER BY a.id DESC LIMIT 200",
    )
    .bind(id)
    .fetch_all(&st.db)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(id, at, actor, action, detail)| AuditEntry {
                id,
                at,
                actor: actor.unwrap_or_else(|| "system".into()),
                action,
                detail,
            })
            .collect(),
    ))
}
