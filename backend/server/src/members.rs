//! Members of a workspace and invitations to it. Owners invite existing users with a role; the invitee accepts (and
//! joins) or declines; owners revoke pending invitations, change roles and remove members; anyone may leave. A
//! workspace always keeps at least one owner. Every change is one transaction with its audit entry.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::Json;
use sqlx::{Any, Transaction};
use unike_shared::auth::UserInfo;
use unike_shared::workspace::{Invitation, Member, PendingInvitation, Role, RoleChange, Workspace};

use super::auth;
use super::error::{ApiErr, ApiResult, Body};
use super::{audit, workspaces, AppState};

async fn member_list(st: &AppState, ws: i64) -> ApiResult<Vec<Member>> {
    let rows: Vec<(i64, String, i64, String)> = sqlx::query_as(
        "SELECT u.id, u.username, u.guest, m.role FROM memberships m JOIN users u ON u.id = m.user_id \
         WHERE m.workspace_id = $1 ORDER BY u.username",
    )
    .bind(ws)
    .fetch_all(&st.db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, username, guest, role)| Member {
            user: UserInfo { id, username, guest: guest != 0 },
            role: Role::parse(&role).unwrap_or(Role::Viewer),
        })
        .collect())
}

/// The member `user` of `ws` (username and role), or 404.
async fn member_of(tx: &mut Transaction<'_, Any>, ws: i64, user: i64) -> ApiResult<(String, bool, Role)> {
    let row: Option<(String, i64, String)> = sqlx::query_as(
        "SELECT u.username, u.guest, m.role FROM memberships m JOIN users u ON u.id = m.user_id \
         WHERE m.workspace_id = $1 AND m.user_id = $2",
    )
    .bind(ws)
    .bind(user)
    .fetch_optional(&mut **tx)
    .await?;
    let (name, guest, role) = row.ok_or_else(|| ApiErr::not_found(format!("member {user} of workspace {ws}")))?;
    Ok((name, guest != 0, Role::parse(&role).unwrap_or(Role::Viewer)))
}

/// Refuses a change that would leave `ws` without an owner, when it takes the owner role from one member.
async fn keep_an_owner(tx: &mut Transaction<'_, Any>, ws: i64) -> ApiResult<()> {
    let owners: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM memberships WHERE workspace_id = $1 AND role = 'owner'")
        .bind(ws)
        .fetch_one(&mut **tx)
        .await?;
    if owners <= 1 {
        return Err(ApiErr::conflict("a workspace keeps at least one owner; make someone else owner first"));
    }
    Ok(())
}

/// `GET /api/workspaces/{id}/members`.
pub async fn members(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(ws): Path<i64>,
) -> ApiResult<Json<Vec<Member>>> {
    let c = auth::signed_in(&st, &headers).await?;
    auth::role_in(&st, &c, ws, Role::Viewer).await?;
    Ok(Json(member_list(&st, ws).await?))
}

/// `POST /api/workspaces/{id}/members/{user}` (owners): changes a member's role.
pub async fn set_role(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((ws, user)): Path<(i64, i64)>,
    Body(req): Body<RoleChange>,
) -> ApiResult<Json<Member>> {
    let c = auth::writer(&st, &headers, addr.ip()).await?;
    auth::role_in(&st, &c, ws, Role::Owner).await?;
    let mut tx = super::write_tx(&st.db).await?;
    auth::recheck(&mut tx, &c, ws, Role::Owner).await?;
    let (name, guest, old) = member_of(&mut tx, ws, user).await?;
    if old == Role::Owner && req.role != Role::Owner {
        keep_an_owner(&mut tx, ws).await?;
    }
    sqlx::query("UPDATE memberships SET role = $1 WHERE workspace_id = $2 AND user_id = $3")
        .bind(req.role.as_str())
        .bind(ws)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    let detail = format!("{name}: {} → {}", old.as_str(), req.role.as_str());
    audit::record(&mut tx, Some(ws), c.user.id, "member.role", &detail).await?;
    tx.commit().await?;
    auth::access_changed(&st);
    Ok(Json(Member { user: UserInfo { id: user, username: name, guest }, role: req.role }))
}

/// `DELETE /api/workspaces/{id}/members/{user}`: owners remove a member; any member removes themselves (leaves).
pub async fn remove(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((ws, user)): Path<(i64, i64)>,
) -> ApiResult<Json<Vec<Member>>> {
    let c = auth::writer(&st, &headers, addr.ip()).await?;
    let leaving = user == c.user.id;
    auth::role_in(&st, &c, ws, if leaving { Role::Viewer } else { Role::Owner }).await?;
    let mut tx = super::write_tx(&st.db).await?;
    auth::recheck(&mut tx, &c, ws, if leaving { Role::Viewer } else { Role::Owner }).await?;
    let (name, _, role) = member_of(&mut tx, ws, user).await?;
    if role == Role::Owner {
        keep_an_owner(&mut tx, ws).await?;
    }
    sqlx::query("DELETE FROM memberships WHERE workspace_id = $1 AND user_id = $2")
        .bind(ws)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    let (action, detail) = if leaving { ("member.leave", name) } else { ("member.remove", name) };
    audit::record(&mut tx, Some(ws), c.user.id, action, &detail).await?;
    tx.commit().await?;
    auth::access_changed(&st);
    Ok(Json(member_list(&st, ws).await?))
}

const INVITE_SELECT: &str = "SELECT i.id, i.workspace_id, w.name, u.username, i.role, COALESCE(b.username, ''), \
    i.created_at FROM invitations i JOIN workspaces w ON w.id = i.workspace_id JOIN users u ON u.id = i.user_id \
    LEFT JOIN users b ON b.id = i.invited_by";

type InviteRow = (i64, i64, String, String, String, String, String);

fn pending((id, workspace_id, workspace, username, role, invited_by, created_at): InviteRow) -> PendingInvitation {
    PendingInvitation {
        id,
        workspace_id,
        workspace,
        username,
        role: Role::parse(&role).unwrap_or(Role::Viewer),
        invited_by,
        created_at,
    }
}

async fn invitations_of_workspace(st: &AppState, ws: i64) -> ApiResult<Vec<PendingInvitation>> {
    let rows: Vec<InviteRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{INVITE_SELECT} WHERE i.workspace_id = $1 ORDER BY i.id")))
            .bind(ws)
            .fetch_all(&st.db)
            .await?;
    Ok(rows.into_iter().map(pending).collect())
}

async fn invitations_of_user(st: &AppState, user: i64) -> ApiResult<Vec<PendingInvitation>> {
    let rows: Vec<InviteRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{INVITE_SELECT} WHERE i.user_id = $1 ORDER BY i.id")))
            .bind(user)
            .fetch_all(&st.db)
            .await?;
    Ok(rows.into_iter().map(pending).collect())
}

/// `GET /api/workspaces/{id}/invitations` (members).
pub async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(ws): Path<i64>,
) -> ApiResult<Json<Vec<PendingInvitation>>> {
    let c = auth::signed_in(&st, &headers).await?;
    auth::role_in(&st, &c, ws, Role::Viewer).await?;
    Ok(Json(invitations_of_workspace(&st, ws).await?))
}

/// `POST /api/workspaces/{id}/invitations` (owners): invites an existing, signed-up user; inviting again changes the
/// offered role.
pub async fn invite(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(ws): Path<i64>,
    Body(inv): Body<Invitation>,
) -> ApiResult<Json<PendingInvitation>> {
    let c = auth::writer(&st, &headers, addr.ip()).await?;
    auth::role_in(&st, &c, ws, Role::Owner).await?;
    if c.user.guest {
        return Err(ApiErr::forbidden("a demo sandbox is its visitor's alone: guests cannot invite"));
    }
    let username = inv.username.trim().to_lowercase();
    if username.is_empty() {
        return Err(ApiErr::bad_request("name the user to invite"));
    }
    let user: Option<(i64, i64)> = sqlx::query_as("SELECT id, guest FROM users WHERE username = $1")
        .bind(&username)
        .fetch_optional(&st.db)
        .await?;
    let (uid, guest) = user.ok_or_else(|| ApiErr::not_found(format!("user {username:?}")))?;
    if guest != 0 {
        return Err(ApiErr::bad_request("demo guests cannot join workspaces"));
    }
    let mut tx = super::write_tx(&st.db).await?;
    auth::recheck(&mut tx, &c, ws, Role::Owner).await?;
    let member: Option<(String,)> =
        sqlx::query_as("SELECT role FROM memberships WHERE workspace_id = $1 AND user_id = $2")
            .bind(ws)
            .bind(uid)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((role,)) = member {
        return Err(ApiErr::conflict(format!("{username} is already a member ({role}); change their role instead")));
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO invitations (workspace_id, user_id, role, invited_by) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (workspace_id, user_id) DO UPDATE SET role = excluded.role, invited_by = excluded.invited_by \
         RETURNING id",
    )
    .bind(ws)
    .bind(uid)
    .bind(inv.role.as_str())
    .bind(c.user.id)
    .fetch_one(&mut *tx)
    .await?;
    audit::record(&mut tx, Some(ws), c.user.id, "member.invite", &format!("{username} as {}", inv.role.as_str()))
        .await?;
    tx.commit().await?;
    invitations_of_workspace(&st, ws)
        .await?
        .into_iter()
        .find(|i| i.id == id)
        .map(Json)
        .ok_or_else(|| ApiErr::internal("the invitation vanished"))
}

/// `DELETE /api/workspaces/{id}/invitations/{invitation}` (owners): revokes a pending invitation.
pub async fn revoke(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((ws, id)): Path<(i64, i64)>,
) -> ApiResult<Json<Vec<PendingInvitation>>> {
    let c = auth::writer(&st, &headers, addr.ip()).await?;
    auth::role_in(&st, &c, ws, Role::Owner).await?;
    let mut tx = super::write_tx(&st.db).await?;
    auth::recheck(&mut tx, &c, ws, Role::Owner).await?;
    let name: Option<(String,)> = sqlx::query_as(
        "DELETE FROM invitations WHERE id = $1 AND workspace_id = $2 \
         RETURNING (SELECT username FROM users WHERE users.id = invitations.user_id)",
    )
    .bind(id)
    .bind(ws)
    .fetch_optional(&mut *tx)
    .await?;
    let (name,) = name.ok_or_else(|| ApiErr::not_found(format!("invitation {id}")))?;
    audit::record(&mut tx, Some(ws), c.user.id, "member.revoke", &name).await?;
    tx.commit().await?;
    Ok(Json(invitations_of_workspace(&st, ws).await?))
}

/// `GET /api/invitations`: the caller's pending invitations.
pub async fn mine(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Vec<PendingInvitation>>> {
    let c = auth::signed_in(&st, &headers).await?;
    Ok(Json(invitations_of_user(&st, c.user.id).await?))
}

/// Takes the caller's invitation `id` out of the table; 404 when it is not theirs.
async fn take(tx: &mut Transaction<'_, Any>, id: i64, user: i64) -> ApiResult<(i64, Role)> {
    let row: Option<(i64, String)> =
        sqlx::query_as("DELETE FROM invitations WHERE id = $1 AND user_id = $2 RETURNING workspace_id, role")
            .bind(id)
            .bind(user)
            .fetch_optional(&mut **tx)
            .await?;
    let (ws, role) = row.ok_or_else(|| ApiErr::not_found(format!("invitation {id}")))?;
    Ok((ws, Role::parse(&role).unwrap_or(Role::Viewer)))
}

/// `POST /api/invitations/{id}/accept`: joins the workspace with the offered role.
pub async fn accept(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> ApiResult<Json<Workspace>> {
    let c = auth::writer(&st, &headers, addr.ip()).await?;
    let mut tx = super::write_tx(&st.db).await?;
    let (ws, role) = take(&mut tx, id, c.user.id).await?;
    sqlx::query("INSERT INTO memberships (workspace_id, user_id, role) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(ws)
        .bind(c.user.id)
        .bind(role.as_str())
        .execute(&mut *tx)
        .await?;
    audit::record(&mut tx, Some(ws), c.user.id, "member.join", &format!("{} as {}", c.user.username, role.as_str()))
        .await?;
    tx.commit().await?;
    Ok(Json(workspaces::get_one(&st, &c, ws).await?))
}

/// `POST /api/invitations/{id}/decline`.
pub async fn decline(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> ApiResult<Json<Vec<PendingInvitation>>> {
    let c = auth::writer(&st, &headers, addr.ip()).await?;
    let mut tx = super::write_tx(&st.db).await?;
    let (ws, _) = take(&mut tx, id, c.user.id).await?;
    audit::record(&mut tx, Some(ws), c.user.id, "member.decline", &c.user.username).await?;
    tx.commit().await?;
    Ok(Json(invitations_of_user(&st, c.user.id).await?))
}
