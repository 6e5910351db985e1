//! Route paths of the JSON API. The server mounts exactly these; the client requests exactly these.

/// `GET` → [`crate::HealthResponse`].
pub const HEALTH: &str = "/api/health";
/// `GET` → [`crate::ModelInfo`] of the model the server runs.
pub const MODEL: &str = "/api/model";
