//! Accounts and sessions: sign-up, sign-in, the current session.

use serde::{Deserialize, Serialize};

/// Name rules the server enforces (also shown by the front end).
pub const USERNAME_MAX: usize = 32;
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 128;

/// Header carrying the session's CSRF token on every write (`POST`, `PUT`, `DELETE`).
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Name of the http-only session cookie.
pub const SESSION_COOKIE: &str = "unike_session";

/// `POST` sign-up and sign-in body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Credentials {
    /// 1 to [`USERNAME_MAX`] characters of `a-z`, `0-9`, `-`, `_`, `.`.
    pub username: String,
    /// [`PASSWORD_MIN`] to [`PASSWORD_MAX`] characters.
    pub password: String,
}

/// A user as others see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UserInfo {
    pub id: i64,
    pub username: String,
    /// A demo visitor's sandbox account (no password; `--demo` only).
    pub guest: bool,
}

/// The current session: who, the CSRF token writes must send in [`CSRF_HEADER`], and the server's mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SessionInfo {
    pub user: Option<UserInfo>,
    pub csrf_token: Option<String>,
    /// The server runs in public demo mode (`--demo`).
    pub demo: bool,
}
