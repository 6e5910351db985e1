//! Typed client for the UniKE Studio JSON API.
//!
//! Every request goes to a path from [`unike_shared::routes`] on the page's own origin and decodes into a
//! type from `unike-shared`, so the front end and back end cannot drift apart silently.

use std::fmt;

use std::cell::RefCell;

use gloo_net::http::{Request, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use unike_shared::auth::{SessionInfo, CSRF_HEADER};
use unike_shared::{routes, ApiError, HealthResponse, ModelInfo};

thread_local! {
    /// The session's CSRF token, sent with every write.
    static CSRF: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Remembers the CSRF token of `session` for later writes.
pub fn remember(session: &SessionInfo) {
    CSRF.with(|c| *c.borrow_mut() = session.csrf_token.clone());
}

/// Why an API call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientError {
    /// No answer arrived: the server is down, unreachable, or the browser blocked the request.
    Network(String),
    /// The server answered with an error status and the documented [`ApiError`] body.
    Server(ApiError),
    /// The server (or something in front of it) answered with an error status and some other body.
    Status { code: u16, text: String },
    /// A success status, but the body is not the expected message.
    Decode(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Network(detail) => write!(f, "could not reach the server ({detail})"),
            Self::Server(body) => write!(f, "the server answered {}: {}", body.code, body.error),
            Self::Status { code, text } => write!(f, "the server answered {code} {text}"),
            Self::Decode(detail) => write!(f, "unexpected answer from the server ({detail})"),
        }
    }
}

impl std::error::Error for ClientError {}

/// `GET` [`routes::HEALTH`].
pub async fn fetch_health() -> Result<HealthResponse, ClientError> {
    get_json(routes::HEALTH).await
}

/// `GET` [`routes::MODEL`].
pub async fn fetch_model() -> Result<ModelInfo, ClientError> {
    get_json(routes::MODEL).await
}

/// `GET` [`routes::SESSION`] (remembering its CSRF token); in demo mode a visitor without a session then asks for a
/// guest sandbox ([`routes::GUEST`]: the server creates one only on this explicit request).
pub async fn fetch_session() -> Result<SessionInfo, ClientError> {
    let mut s: SessionInfo = get_json(routes::SESSION).await?;
    if s.user.is_none() && s.demo {
        s = post_json(routes::GUEST, &()).await?;
    }
    remember(&s);
    Ok(s)
}

fn with_csrf(builder: RequestBuilder) -> RequestBuilder {
    let token = CSRF.with(|c| c.borrow().clone()).unwrap_or_default();
    builder.header(CSRF_HEADER, &token).header("Accept", "application/json")
}

async fn decode<T: DeserializeOwned>(sent: Result<Response, gloo_net::Error>) -> Result<T, ClientError> {
    let response = sent.map_err(|err| ClientError::Network(err.to_string()))?;
    if !response.ok() {
        return Err(error_from(response).await);
    }
    response.json::<T>().await.map_err(|err| ClientError::Decode(err.to_string()))
}

/// `POST`s `body` as JSON to `path` (with the CSRF token) and decodes a 2xx JSON answer as `T`.
pub async fn post_json<B: Serialize, T: DeserializeOwned>(path: &str, body: &B) -> Result<T, ClientError> {
    let request = with_csrf(Request::post(path)).json(body).map_err(|err| ClientError::Decode(err.to_string()))?;
    decode(request.send().await).await
}

/// `DELETE`s `path` (with the CSRF token) and decodes a 2xx JSON answer as `T`.
pub async fn delete_json<T: DeserializeOwned>(path: &str) -> Result<T, ClientError> {
    decode(with_csrf(Request::delete(path)).send().await).await
}

/// Sends a `GET` for `path` and decodes a 2xx JSON body as `T`.
pub async fn get_json<T: DeserializeOwned>(path: &str) -> Result<T, ClientError> {
    let response = Request::get(path)
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|err| ClientError::Network(err.to_string()))?;
    if !response.ok() {
        return Err(error_from(response).await);
    }
    response.json::<T>().await.map_err(|err| ClientError::Decode(err.to_string()))
}

/// Builds the error for a non-2xx answer, preferring the server's own [`ApiError`] body.
async fn error_from(response: Response) -> ClientError {
    let code = response.status();
    let text = response.status_text();
    match response.json::<ApiError>().await {
        Ok(body) => ClientError::Server(body),
        Err(_) => ClientError::Status { code, text },
    }
}
