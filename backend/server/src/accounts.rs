//! Sign-up, sign-in, sign-out and the current session (in demo mode, a guest sandbox for visitors).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap};
use axum::response::{AppendHeaders, IntoResponse};
use axum::Json;
use unike_shared::auth::{Credentials, SessionInfo, UserInfo, PASSWORD_MAX, USERNAME_MAX};

use super::auth::{self, Caller};
use super::demo::DEMO_CAPS;
use super::error::{ApiErr, ApiResult, Body};
use super::{audit, AppState};

fn info(st: &AppState, c: Option<&Caller>) -> SessionInfo {
    SessionInfo { user: c.map(|c| c.user.clone()), csrf_token: c.map(|c| c.csrf.clone()), demo: st.demo }
}

fn with_cookie(st: &AppState, token: Option<&str>, body: SessionInfo) -> impl IntoResponse {
    (AppendHeaders([(header::SET_COOKIE, auth::session_cookie(token, st.secure_cookies))]), Json(body))
}

/// Creates a user with their first workspace (an owner's), atomically.
async fn create_user(
    st: &AppState,
    username: &str,
    hash: Option<&str>,
    guest: bool,
    ip: std::net::IpAddr,
) -> ApiResult<i64> {
    let mut tx = super::write_tx(&st.db).await?;
    if guest {
        // Counted in the write transaction, so parallel requests cannot all pass the cap.
        let recent: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM users WHERE guest = 1 AND created_ip = $1 \
             AND created_at > $2",
        )
        .bind(ip.to_string())
        .bind(crate::store::stamp(-3600))
        .fetch_one(&mut *tx)
        .await?;
        if recent as usize >= DEMO_CAPS.guests_per_hour {
            return Err(ApiErr::too_many("too many demo sandboxes from your address in the last hour"));
        }
    }
    let id: i64 = match sqlx::query_scalar(
        "INSERT INTO users (username, password_hash, guest, created_ip) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(username)
    .bind(hash)
    .bind(i64::from(guest))
    .bind(ip.to_string())
    .fetch_one(&mut *tx)
    .await
    {
        Ok(id) => id,
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(ApiErr::conflict(format!("the username {username:?} is taken")))
        }
        Err(e) => return Err(e.into()),
    };
    let name = if guest { "Sandbox".to_string() } else { format!("{username}'s workspace") };
    let ws: i64 = sqlx::query_scalar("INSERT INTO workspaces (name, sandbox) VALUES ($1, $2) RETURNING id")
        .bind(&name)
        .bind(i64::from(guest))
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO memberships (workspace_id, user_id, role) VALUES ($1, $2, 'owner')")
        .bind(ws)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::record(&mut tx, Some(ws), id, "workspace.create", &name).await?;
    tx.commit().await?;
    Ok(id)
}

/// `POST /api/auth/signup`.
pub async fn sign_up(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(c): Body<Credentials>,
) -> ApiResult<impl IntoResponse> {
    let ip = auth::client_ip(&st, &headers, addr.ip());
    st.limits.check(ip).await?;
    st.auth_throttle.attempt(ip).await?;
    let username = auth::validate(&c)?;
    let hash = {
        let _slot = st.auth_throttle.hash_slot().await?;
        auth::hash_password(c.password).await?
    };
    let id = create_user(&st, &username, Some(&hash), false, ip).await?;
    let (token, csrf) = auth::start_session(&st, id, Some(ip)).await?;
    let caller = Caller { user: UserInfo { id, username, guest: false }, csrf };
    Ok(with_cookie(&st, Some(&token), info(&st, Some(&caller))))
}

/// `POST /api/auth/signin`.
pub async fn sign_in(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(c): Body<Credentials>,
) -> ApiResult<impl IntoResponse> {
    let ip = auth::client_ip(&st, &headers, addr.ip());
    st.limits.check(ip).await?;
    st.auth_throttle.attempt(ip).await?;
    // (Bounded: a name longer than any account's is throttled as its first characters.)
    let username: String = c.username.trim().to_lowercase().chars().take(USERNAME_MAX + 1).collect();
    st.auth_throttle.check_account(&username).await?;
    let row: Option<(i64, Option<String>)> =
        sqlx::query_as("SELECT id, password_hash FROM users WHERE username = $1 AND guest = 0")
            .bind(&username)
            .fetch_optional(&st.db)
            .await?;
    let wrong = || ApiErr::new(axum::http::StatusCode::UNAUTHORIZED, "wrong username or password");
    if c.password.chars().count() > PASSWORD_MAX {
        st.auth_throttle.failed(&username).await?;
        return Err(wrong());
    }
    // An unknown name costs the same hash as a known one, so timing does not tell which names exist.
    let (id, hash) = match row {
        Some((id, Some(h))) => (Some(id), h),
        _ => (None, auth::dummy_hash()?),
    };
    let verified = {
        let _slot = st.auth_throttle.hash_slot().await?;
        auth::verify_password(c.password, hash).await?
    };
    let Some(id) = id.filter(|_| verified) else {
        st.auth_throttle.failed(&username).await?;
        return Err(wrong());
    };
    let (token, csrf) = auth::start_session(&st, id, Some(ip)).await?;
    let caller = Caller { user: UserInfo { id, username, guest: false }, csrf };
    Ok(with_cookie(&st, Some(&token), info(&st, Some(&caller))))
}

/// `POST /api/auth/signout`: ends a live session only with its CSRF token (a third-party page cannot sign a visitor
/// out); without a live session it only clears the cookie.
pub async fn sign_out(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<impl IntoResponse> {
    if let Some(c) = auth::caller(&st, &headers).await? {
        auth::check_csrf(&c, &headers)?;
    }
    auth::end_session(&st, &headers).await?;
    Ok(with_cookie(&st, None, info(&st, None)))
}

/// `GET /api/auth/session`: the current session (it creates nothing: a demo visitor asks for a sandbox with
/// [`guest`]).
pub async fn session(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Json<SessionInfo>> {
    let c = auth::caller(&st, &headers).await?;
    Ok(Json(info(&st, c.as_ref())))
}

/// `POST /api/auth/guest`: in demo mode, a guest sandbox for a visitor without a session (one with a session gets
/// it back). Only on an explicit request that carries the CSRF header: a third-party page can neither send it nor
/// make the studio create sandboxes against its visitors' address quota by loading a URL.
pub async fn guest(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> ApiResult<axum::response::Response> {
    if let Some(c) = auth::caller(&st, &headers).await? {
        return Ok(Json(info(&st, Some(&c))).into_response());
    }
    if !st.demo {
        return Err(ApiErr::forbidden("guest sandboxes exist only in demo mode; sign up instead"));
    }
    if !headers.contains_key(unike_shared::auth::CSRF_HEADER) {
        return Err(ApiErr::forbidden(format!("a guest sandbox needs the {} header", unike_shared::auth::CSRF_HEADER)));
    }
    let ip = auth::client_ip(&st, &headers, addr.ip());
    let username = format!("guest-{}", auth::random_hex(5)?);
    let id = create_user(&st, &username, None, true, ip).await?;
    let (token, csrf) = auth::start_session(&st, id, Some(ip)).await?;
    let caller = Caller { user: UserInfo { id, username, guest: true }, csrf };
    Ok(with_cookie(&st, Some(&token), info(&st, Some(&caller))).into_response())
}
