//! API errors: every failure becomes a JSON [`ApiError`] with its status. A user's mistake is a 4xx with a message;
//! only the server's own faults are 500s.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use unike_shared::ApiError;

/// A failed request.
#[derive(Debug)]
pub struct ApiErr {
    pub status: StatusCode,
    pub message: String,
}

pub type ApiResult<T> = std::result::Result<T, ApiErr>;

impl ApiErr {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "sign in first")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{} not found", what.into()))
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// A storage quota is full (413 with the quota in the message).
    pub fn quota(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    pub fn too_many(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        eprintln!("studio: internal error: {message}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error (logged on the server)")
    }
}

impl From<sqlx::Error> for ApiErr {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(format!("database: {e}"))
    }
}

/// Core errors from the model worker: the user's input (`Invalid`, a bad image) is a 400; the rest is ours.
impl From<unike_core::Error> for ApiErr {
    fn from(e: unike_core::Error) -> Self {
        match e {
            unike_core::Error::Invalid(_) | unike_core::Error::Image { .. } | unike_core::Error::Tokenizer(_) => {
                Self::bad_request(e.to_string())
            }
            unike_core::Error::Cancelled => Self::conflict("cancelled"),
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let body = ApiError { error: self.message, code: self.status.as_u16() };
        (self.status, Json(body)).into_response()
    }
}

/// A JSON request body whose rejections (malformed JSON, wrong fields, too large) are JSON [`ApiErr`]s too.
pub struct Body<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiErr;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let value = match Json::<serde_json::Value>::from_request(req, state).await {
            Ok(Json(v)) => v,
            Err(rejection) => return Err(ApiErr::new(rejection.status(), rejection.body_text())),
        };
        // Text is stored as is; PostgreSQL's text cannot hold NUL, and no field of the API has a use for it.
        if has_nul(&value) {
            return Err(ApiErr::bad_request("text may not contain NUL characters (\\u0000)"));
        }
        T::deserialize(value).map(Body).map_err(|e| {
            ApiErr::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("Failed to deserialize the JSON body into the target type: {e}"),
            )
        })
    }
}

/// Whether a string (or key) anywhere in `v` holds a NUL character.
fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Refuses a request whose path or query string carries an encoded NUL (`%00`): no route has a use for it, and
/// PostgreSQL's text cannot store it.
pub async fn refuse_nul(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let uri = req.uri().to_string();
    if uri.to_ascii_lowercase().contains("%00") {
        return ApiErr::bad_request("the address may not contain NUL characters (%00)").into_response();
    }
    next.run(req).await
}

/// Makes every API error a JSON [`ApiError`]: the rejections axum writes as plain text (a path id that is not a
/// number, a malformed query string, a method the route does not have) keep their status and get their text as the
/// message. Responses that are already JSON, and successes, pass unchanged.
pub async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).trim().to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let mut out = ApiErr::new(status, text).into_response();
    // Keep what the rejection says about the route (e.g. `Allow` of a 405).
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}
