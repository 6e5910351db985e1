//! Live updates: every change a page may show (run progress, teammates' edits) goes out on one broadcast channel;
//! each open page subscribes over server-sent events to the workspace it shows.
//!
//! Open streams are bounded per session and per client address (`--streams-per-session`, `--streams-per-address`),
//! and a stream checks its caller's access from what it checked last unless access may have changed since
//! ([`auth::access_changed`]) or a minute has passed (sessions expire), instead of two queries per event.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};
use unike_shared::events::Event;
use unike_shared::workspace::Role;

use super::auth;
use super::error::{ApiErr, ApiResult};
use super::AppState;

/// How long a stream trusts its last access check when nothing has changed.
const RECHECK_AFTER: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
pub struct EventsQuery {
    pub workspace: i64,
}

/// Open streams per session and per client address.
pub struct StreamCounts {
    per_session: usize,
    per_address: usize,
    sessions: Mutex<HashMap<String, usize>>,
    addresses: Mutex<HashMap<IpAddr, usize>>,
}

/// One open stream, counted until it is dropped (the page closed it or the stream ended).
pub struct StreamSlot {
    counts: Arc<StreamCounts>,
    session: String,
    address: IpAddr,
}

fn release<K: Hash + Eq>(map: &Mutex<HashMap<K, usize>>, key: &K) {
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = m.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            m.remove(key);
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        release(&self.counts.sessions, &self.session);
        release(&self.counts.addresses, &self.address);
    }
}

impl StreamCounts {
    pub fn new(per_session: usize, per_address: usize) -> Self {
        Self { per_session, per_address, sessions: Mutex::default(), addresses: Mutex::default() }
    }

    /// A slot for one more stream of `session` from `address`, or 429.
    pub fn open(self: &Arc<Self>, session: String, address: IpAddr) -> ApiResult<StreamSlot> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let mut addresses = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        let (s, a) = (sessions.get(&session).copied().unwrap_or(0), addresses.get(&address).copied().unwrap_or(0));
        if s >= self.per_session {
            return Err(ApiErr::too_many(format!(
                "this session has {s} live-update streams open (at most {}); close a page first",
                self.per_session
            )));
        }
        if a >= self.per_address {
            return Err(ApiErr::too_many(format!(
                "your address has {a} live-update streams open (at most {})",
                self.per_address
            )));
        }
        *sessions.entry(session.clone()).or_default() += 1;
        *addresses.entry(address).or_default() += 1;
        Ok(StreamSlot { counts: self.clone(), session, address })
    }
}

/// `GET /api/events?workspace=ID`: the workspace's events as they happen (viewers and up). Access is checked again
/// before an event goes out when it may have changed: a member removed, or a session ended, stops the stream.
pub async fn stream(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let caller = auth::signed_in(&st, &headers).await?;
    auth::role_in(&st, &caller, q.workspace, Role::Viewer).await?;
    let session = auth::session_key(&headers).unwrap_or_default();
    let slot = st.streams.open(session, auth::client_ip(&st, &headers, addr.ip()))?;
    let ws = q.workspace;
    // (epoch, when) of the last successful access check.
    let checked = Arc::new(Mutex::new((st.access_epoch.load(Ordering::SeqCst), Instant::now())));
    let events = BroadcastStream::new(st.events.subscribe())
        .filter_map(move |e| {
            let _slot = &slot; // counted for as long as the stream lives
            let e = e.ok()?; // a lagging page skips what it missed; it refetches on the next event
            if e.workspace_id() != ws {
                return None;
            }
            let data = serde_json::to_string(&e).ok()?;
            Some(SseEvent::default().event(e.name()).data(data))
        })
        .then(move |event| {
            let (st, headers, checked) = (st.clone(), headers.clone(), checked.clone());
            async move {
                let epoch = st.access_epoch.load(Ordering::SeqCst);
                let fresh = {
                    let c = checked.lock().unwrap_or_else(|p| p.into_inner());
                    c.0 == epoch && c.1.elapsed() < RECHECK_AFTER
                };
                if !fresh {
                    let caller = auth::signed_in(&st, &headers).await.ok()?;
                    auth::role_in(&st, &caller, ws, Role::Viewer).await.ok()?;
                    *checked.lock().unwrap_or_else(|p| p.into_inner()) = (epoch, Instant::now());
                }
                Some(event)
            }
        })
        .map_while(|event| event.map(Ok));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Sends `event` to every subscribed page (nobody listening is fine), and to the other replicas' pages when the studio
/// runs on PostgreSQL ([`super::relay`]).
pub fn publish(st: &AppState, event: Event) {
    if let Some(relay) = &st.relay {
        relay.notify(&event);
    }
    let _ = st.events.send(event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_counted_per_session_and_address_until_dropped() {
        let c = Arc::new(StreamCounts::new(2, 3));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let s1 = c.open("s".into(), a).unwrap();
        let _s2 = c.open("s".into(), a).unwrap();
        assert_eq!(c.open("s".into(), b).err().map(|e| e.status.as_u16()), Some(429), "per session");
        let _t1 = c.open("t".into(), a).unwrap();
        assert_eq!(c.open("u".into(), a).err().map(|e| e.status.as_u16()), Some(429), "per address");
        drop(s1);
        assert!(c.open("u".into(), a).is_ok(), "a closed stream frees its slot");
    }
}
