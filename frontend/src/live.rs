//! Live updates of the current workspace over server-sent events ([`routes::EVENTS`]): every event of the kinds a
//! page listens to bumps a counter the page reacts to, and the latest event is kept.
//!
//! The connection is closed when the workspace changes and when the page that opened it goes away: the studio is
//! served over HTTP/1.1, where a browser keeps at most six connections to a host, so connections left open by pages
//! already left would soon stall every request of the app.

use leptos::prelude::*;
use leptos::wasm_bindgen::closure::Closure;
use leptos::wasm_bindgen::JsCast;
use leptos::web_sys::{EventSource, MessageEvent};
use unike_shared::events::Event;
use unike_shared::routes;

/// Event names ([`Event::name`]) of edits applied and undone.
pub const EDITS: &[&str] = &["edit_applied", "edit_undone"];
/// Event name of run progress and results.
pub const RUNS: &[&str] = &["run"];

/// Counter of received events and the last one.
#[derive(Clone, Copy)]
pub struct LiveEvents {
    pub tick: RwSignal<u64>,
    pub last: RwSignal<Option<Event>>,
}

/// An open subscription: the source and its listener (dropped together when closed).
type Open = (EventSource, Closure<dyn FnMut(MessageEvent)>);

fn close(open: &mut Option<Open>) {
    if let Some((es, _listener)) = open.take() {
        es.close();
    }
}

impl LiveEvents {
    /// Subscribes to the events named `kinds` of `workspace`, re-subscribing when it changes and closing when the
    /// calling component is cleaned up.
    pub fn new(workspace: RwSignal<Option<i64>>, kinds: &'static [&'static str]) -> Self {
        let live = Self { tick: RwSignal::new(0), last: RwSignal::new(None) };
        let current = StoredValue::new_local(None::<Open>);
        Effect::new(move |_| {
            current.update_value(close);
            let Some(ws) = workspace.get() else { return };
            let Ok(es) = EventSource::new(&format!("{}?workspace={ws}", routes::EVENTS)) else { return };
            let listener = Closure::<dyn FnMut(MessageEvent)>::new(move |m: MessageEvent| {
                if let Some(text) = m.data().as_string() {
                    if let Ok(e) = serde_json::from_str::<Event>(&text) {
                        live.last.set(Some(e));
                    }
                }
                live.tick.update(|t| *t += 1);
            });
            for name in kinds {
                let _ = es.add_event_listener_with_callback(name, listener.as_ref().unchecked_ref());
            }
            current.set_value(Some((es, listener)));
        });
        on_cleanup(move || current.try_update_value(close).unwrap_or(()));
        live
    }
}
