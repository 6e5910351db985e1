//! Live updates across server replicas on one PostgreSQL database: every event a replica publishes to its own pages
//! also goes out as a `NOTIFY unike_events`, and every replica `LISTEN`s and publishes what the others sent to its
//! pages. A notification carries a pointer, not the event (PostgreSQL caps a payload at 8000 bytes, and a run's
//! results are larger): the run or the edit's id, read back from the database by the receiving replica; an undo is
//! small and travels whole. A replica skips its own notifications. On SQLite (one process) there is no relay.

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use unike_shared::events::Event;
use unike_shared::playground::AppliedEdit;

use super::AppState;

const CHANNEL: &str = "unike_events";

/// What a notification says.
#[derive(Debug, Serialize, Deserialize)]
struct Notice {
    /// The replica that sent it.
    origin: String,
    #[serde(flatten)]
    what: What,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum What {
    Run { id: i64 },
    EditApplied { workspace_id: i64, edit_id: i64 },
    EditUndone { workspace_id: i64, edit_id: i64, by: String },
}

/// This replica's end of the relay: a queue of notices to send.
#[derive(Clone)]
pub struct Relay {
    origin: String,
    tx: UnboundedSender<String>,
}

impl Relay {
    /// A relay named by a random id, and the queue its sender task drains.
    pub fn new() -> (Self, UnboundedReceiver<String>) {
        let origin = crate::auth::random_hex(8).unwrap_or_else(|_| format!("{}", std::process::id()));
        let (tx, rx) = unbounded_channel();
        (Self { origin, tx }, rx)
    }

    /// Tells the other replicas about `event`.
    pub fn notify(&self, event: &Event) {
        let what = match event {
            Event::Run { run } => What::Run { id: run.id },
            Event::EditApplied { workspace_id, edit } => {
                What::EditApplied { workspace_id: *workspace_id, edit_id: edit.id }
            }
            Event::EditUndone { workspace_id, edit_id, by } => {
                What::EditUndone { workspace_id: *workspace_id, edit_id: *edit_id, by: by.clone() }
            }
        };
        if let Ok(text) = serde_json::to_string(&Notice { origin: self.origin.clone(), what }) {
            let _ = self.tx.send(text);
        }
    }
}

/// Sends the queued notices (`pg_notify`), in order.
pub async fn send(st: AppState, mut rx: UnboundedReceiver<String>) {
    while let Some(text) = rx.recv().await {
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(&text).execute(&st.db).await {
            eprintln!("studio: relaying an event to other replicas: {e}");
        }
    }
}

/// Listens for the other replicas' notices and publishes their events to this replica's pages. Reconnects (with
/// `PgListener`'s own retry) when the connection drops; events sent meanwhile are missed, as a page that reconnects
/// misses them (pages reload the state they show when their stream reopens).
pub async fn listen(st: AppState, url: String, origin: String) {
    loop {
        let mut listener = match PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("studio: listening for other replicas' events: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            eprintln!("studio: listening for other replicas' events: {e}");
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            continue;
        }
        while let Ok(n) = listener.recv().await {
            let Ok(notice) = serde_json::from_str::<Notice>(n.payload()) else { continue };
            if notice.origin == origin {
                continue;
            }
            if let Some(event) = event_of(&st, notice.what).await {
                let _ = st.events.send(event);
            }
        }
    }
}

/// The event a notice points at, read back from the database.
async fn event_of(st: &AppState, what: What) -> Option<Event> {
    match what {
        What::Run { id } => crate::runs::load(st, id).await.ok().map(|run| Event::Run { run }),
        What::EditApplied { workspace_id, edit_id } => {
            let json: Option<String> =
                sqlx::query_scalar("SELECT result_json FROM applied_edits WHERE id = $1 AND workspace_id = $2")
                    .bind(edit_id)
                    .bind(workspace_id)
                    .fetch_optional(&st.db)
                    .await
                    .ok()
                    .flatten();
            let edit: AppliedEdit = serde_json::from_str(&json?).ok()?;
            Some(Event::EditApplied { workspace_id, edit })
        }
        What::EditUndone { workspace_id, edit_id, by } => Some(Event::EditUndone { workspace_id, edit_id, by }),
    }
}

impl Relay {
    /// This replica's id in its notices.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}
