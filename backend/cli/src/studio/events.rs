//! Live updates: every change a page may show (run progress, teammates' edits) goes out on one broadcast channel;
//! each open page subscribes over server-sent events to the workspace it shows.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use serde::Deserialize;
use std::convert::Infallible;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};
use unike_shared::events::Event;
use unike_shared::workspace::Role;

use super::auth;
use super::error::ApiResult;
use super::AppState;

#[derive(Deserialize)]
pub struct EventsQuery {
    pub workspace: i64,
}

/// `GET /api/events?workspace=ID`: the workspace's events as they happen (viewers and up). Access is checked again
/// before each event goes out: a member removed, or a session ended, stops the stream.
pub async fn stream(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let caller = auth::signed_in(&st, &headers).await?;
    auth::role_in(&st, &caller, q.workspace, Role::Viewer).await?;
    let ws = q.workspace;
    let events = BroadcastStream::new(st.events.subscribe())
        .filter_map(move |e| {
            let e = e.ok()?; // a lagging page skips what it missed; it refetches on the next event
            if e.workspace_id() != ws {
                return None;
            }
            let data = serde_json::to_string(&e).ok()?;
            Some(SseEvent::default().event(e.name()).data(data))
        })
        .then(move |event| {
            let (st, headers) = (st.clone(), headers.clone());
            async move {
                let caller = auth::signed_in(&st, &headers).await.ok()?;
                auth::role_in(&st, &caller, ws, Role::Viewer).await.ok()?;
                Some(event)
            }
        })
        .map_while(|event| event.map(Ok));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Sends `event` to every subscribed page (nobody listening is fine).
pub fn publish(st: &AppState, event: Event) {
    let _ = st.events.send(event);
}
