//! Accounts and sessions: argon2 password hashes, http-only session cookies (the database keeps only the token's
//! SHA-256), a per-session CSRF token required on every write, and in demo mode guest sandboxes and per-IP limits.

use std::net::IpAddr;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::http::{header, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use unike_shared::auth::{
    Credentials, UserInfo, CSRF_HEADER, PASSWORD_MAX, PASSWORD_MIN, SESSION_COOKIE, USERNAME_MAX,
};
use unike_shared::workspace::Role;

use super::error::{ApiErr, ApiResult};
use super::AppState;

/// Sessions last this long.
const SESSION_DAYS: i64 = 14;
/// A session slides (see [`caller`]) for at most this long after sign-in; then the user signs in again.
const SESSION_MAX_DAYS: i64 = 90;

/// The signed-in caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: UserInfo,
    pub csrf: String,
}

/// `n` random bytes from the OS, as hex.
pub fn random_hex(n: usize) -> ApiResult<String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| ApiErr::internal(format!("no randomness: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks the sign-up rules; returns the normalised username.
pub fn validate(c: &Credentials) -> ApiResult<String> {
    let name = c.username.trim().to_lowercase();
    let ok = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "-_.".contains(ch);
    if name.is_empty() || name.chars().count() > USERNAME_MAX || !name.chars().all(ok) {
        return Err(ApiErr::bad_request(format!(
            "a username has 1 to {USERNAME_MAX} characters of a-z, 0-9, '-', '_', '.'"
        )));
    }
    if name.starts_with("guest-") {
        return Err(ApiErr::bad_request("usernames starting with 'guest-' are reserved for demo visitors"));
    }
    let n = c.password.chars().count();
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
        return Err(ApiErr::bad_request(format!("a password has {PASSWORD_MIN} to {PASSWORD_MAX} characters")));
    }
    Ok(name)
}

/// Argon2id hash in PHC format (on a blocking thread: it takes tens of milliseconds on purpose).
pub async fn hash_password(password: String) -> ApiResult<String> {
    let salt = random_hex(16)?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(salt.as_bytes()).map_err(ApiErr::internal)?;
        Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(ApiErr::internal)
    })
    .await
    .map_err(ApiErr::internal)?
}

pub async fn verify_password(password: String, hash: String) -> ApiResult<bool> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(ApiErr::internal)?;
        Ok(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
    })
    .await
    .map_err(ApiErr::internal)?
}

/// A hash of a random password, verified against when a sign-in names an unknown user (made once per process).
pub fn dummy_hash() -> ApiResult<String> {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(h) = HASH.get() {
        return Ok(h.clone());
    }
    let salt = SaltString::encode_b64(random_hex(16)?.as_bytes()).map_err(ApiErr::internal)?;
    let h = Argon2::default().hash_password(random_hex(16)?.as_bytes(), &salt).map_err(ApiErr::internal)?;
    Ok(HASH.get_or_init(|| h.to_string()).clone())
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == SESSION_COOKIE && !v.is_empty()).then(|| v.to_string())
    })
}

/// The `Set-Cookie` value of a new session (or of its removal, with `None`); `secure` adds `Secure` (served over
/// HTTPS).
pub fn session_cookie(token: Option<&str>, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let v = match token {
        Some(t) => {
            // The cookie lives as long as the session may slide; the server's `expires_at` decides when it ends.
            format!(
                "{SESSION_COOKIE}={t}; HttpOnly; SameSite=Lax; Path=/; Max-Age={}{secure}",
                SESSION_MAX_DAYS * 86400
            )
        }
        None => format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Starts a session for `user_id`: returns the cookie token and the CSRF token.
pub async fn start_session(st: &AppState, user_id: i64, ip: Option<IpAddr>) -> ApiResult<(String, String)> {
    let token = random_hex(32)?;
    let csrf = random_hex(16)?;
    sqlx::query(
        "INSERT INTO sessions (token_hash, user_id, csrf, ip, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(sha256_hex(token.as_bytes()))
    .bind(user_id)
    .bind(&csrf)
    .bind(ip.map(|i| i.to_string()))
    .bind(crate::store::stamp(SESSION_DAYS * 86_400))
    .execute(&st.db)
    .await?;
    Ok((token, csrf))
}

pub async fn end_session(st: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    if let Some(t) = cookie_token(headers) {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(sha256_hex(t.as_bytes()))
            .execute(&st.db)
            .await?;
        access_changed(st);
    }
    Ok(())
}

/// The session a request carries, as the database knows it (the token's SHA-256), for per-session limits.
pub fn session_key(headers: &HeaderMap) -> Option<String> {
    cookie_token(headers).map(|t| sha256_hex(t.as_bytes()))
}

/// Says that someone may have lost access (a session ended, a membership removed or changed): open event streams
/// check their caller's access again before their next event instead of trusting what they checked last.
pub fn access_changed(st: &AppState) {
    st.access_epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// A slid session's new expiry: a full lifetime from now, never past `SESSION_MAX_DAYS` after it started.
fn slid_expiry(created_at: &str) -> String {
    let full = crate::store::stamp(SESSION_DAYS * 86_400);
    match crate::store::parse_epoch(created_at) {
        Some(t) => full.min(crate::store::format_epoch(t + SESSION_MAX_DAYS * 86_400)),
        None => full,
    }
}

/// The caller, if the request carries a live session.
pub async fn caller(st: &AppState, headers: &HeaderMap) -> ApiResult<Option<Caller>> {
    let Some(token) = cookie_token(headers) else { return Ok(None) };
    let hash = sha256_hex(token.as_bytes());
    let row: Option<(i64, String, i64, String, String, String)> = sqlx::query_as(
        "SELECT u.id, u.username, u.guest, s.csrf, s.expires_at, s.created_at \
         FROM sessions s JOIN users u ON u.id = s.user_id \
         WHERE s.token_hash = $1 AND s.expires_at > $2",
    )
    .bind(&hash)
    .bind(crate::store::now())
    .fetch_optional(&st.db)
    .await?;
    let Some((id, username, guest, csrf, expires_at, created_at)) = row else { return Ok(None) };
    let day = 86_400;
    let slide = expires_at < crate::store::stamp(SESSION_DAYS / 2 * day)
        && created_at > crate::store::stamp(-SESSION_MAX_DAYS * day);
    if slide {
        // Sliding: a session in use past half its lifetime gets a full one again (never past SESSION_MAX_DAYS).
        sqlx::query("UPDATE sessions SET expires_at = $1 WHERE token_hash = $2")
            .bind(slid_expiry(&created_at))
            .bind(&hash)
            .execute(&st.db)
            .await?;
    }
    Ok(Some(Caller { user: UserInfo { id, username, guest: guest != 0 }, csrf }))
}

/// A signed-in caller, or 401.
pub async fn signed_in(st: &AppState, headers: &HeaderMap) -> ApiResult<Caller> {
    caller(st, headers).await?.ok_or_else(ApiErr::unauthorized)
}

/// The address limits and caps apply to: the peer's, or behind `--trust-proxy N` reverse proxies the N-th address of
/// `X-Forwarded-For` from the right (the one the outermost trusted proxy saw); an IPv6 address stands for its /64
/// (one host's usual share).
pub fn client_ip(st: &AppState, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    block_of(forwarded_client(forwarded, st.trust_proxy).unwrap_or(peer))
}

/// The client behind `hops` trusted proxies: the `hops`-th entry of `X-Forwarded-For` from the right (each proxy
/// appends the address it received from). `None` without proxies, or when the header is shorter than the chain or
/// that entry is not an address (a misconfigured chain: the peer's address is used).
pub fn forwarded_client(header: Option<&str>, hops: usize) -> Option<IpAddr> {
    if hops == 0 {
        return None;
    }
    header?.rsplit(',').nth(hops - 1).and_then(|v| v.trim().parse::<IpAddr>().ok())
}

/// `ip` itself, or for an IPv6 address its /64.
fn block_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// A signed-in caller allowed to write: the CSRF header matches the session's token, and in demo mode the caller's
/// address ([`client_ip`] of `peer`) is within its rate limit.
pub async fn writer(st: &AppState, headers: &HeaderMap, peer: IpAddr) -> ApiResult<Caller> {
    let c = signed_in(st, headers).await?;
    check_csrf(&c, headers)?;
    st.limits.check(client_ip(st, headers, peer)).await?;
    Ok(c)
}

/// 403 unless the request's CSRF header carries the session's token (compared in constant time).
pub fn check_csrf(c: &Caller, headers: &HeaderMap) -> ApiResult<()> {
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !same_secret(sent.as_bytes(), c.csrf.as_bytes()) {
        return Err(ApiErr::forbidden(format!("missing or wrong {CSRF_HEADER} header (read it from the session)")));
    }
    Ok(())
}

/// Equality of two secrets whose time does not depend on where they first differ (only on their lengths, which are
/// public: tokens have a fixed length).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The caller's role in `workspace`: 404 when the workspace does not exist or the caller is not a member (so ids of
/// other teams' workspaces leak nothing), 403 when the role is below `need`.
pub async fn role_in(st: &AppState, caller: &Caller, workspace: i64, need: Role) -> ApiResult<Role> {
    recheck(&mut *st.db.acquire().await?, caller, workspace, need).await
}

/// [`role_in`] on `conn`: inside the write transaction that stores what a (possibly long) operation made, so that a
/// member removed or demoted meanwhile commits nothing.
pub async fn recheck(conn: &mut sqlx::AnyConnection, caller: &Caller, workspace: i64, need: Role) -> ApiResult<Role> {
    let role: Option<(String,)> =
        sqlx::query_as("SELECT role FROM memberships WHERE workspace_id = $1 AND user_id = $2")
            .bind(workspace)
            .bind(caller.user.id)
            .fetch_optional(&mut *conn)
            .await?;
    let role =
        role.and_then(|(r,)| Role::parse(&r)).ok_or_else(|| ApiErr::not_found(format!("workspace {workspace}")))?;
    if role < need {
        return Err(ApiErr::forbidden(format!(
            "your role in workspace {workspace} is {}; this needs {}",
            role.as_str(),
            need.as_str()
        )));
    }
    Ok(role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_entry_the_outermost_trusted_proxy_appended() {
        // client (claims 6.6.6.6) -> proxy A (appends 1.2.3.4) -> proxy B (appends 10.0.0.2) -> studio
        let h = Some("6.6.6.6, 1.2.3.4, 10.0.0.2");
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        assert_eq!(forwarded_client(h, 0), None, "no proxy: the header is ignored");
        assert_eq!(forwarded_client(h, 1), ip("10.0.0.2"));
        assert_eq!(forwarded_client(h, 2), ip("1.2.3.4"));
        // A chain longer than the header, or a forged non-address entry, falls back to the peer.
        assert_eq!(forwarded_client(h, 4), None);
        assert_eq!(forwarded_client(Some("x, 1.2.3.4"), 2), None);
        assert_eq!(forwarded_client(None, 1), None);
    }

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(same_secret(b"0123abcd", b"0123abcd"));
        assert!(!same_secret(b"0123abcd", b"0123abce"));
        assert!(!same_secret(b"0123abcd", b"1123abcd"));
        assert!(!same_secret(b"0123abcd", b"0123abc"));
        assert!(!same_secret(b"", b"0"));
    }
}
