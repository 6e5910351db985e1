//! Live updates of the current workspace over server-sent events ([`routes::EVENTS`]): every event bumps a counter
//! pages react to, and the latest event is kept.

use leptos::prelude::*;
use leptos::wasm_bindgen::closure::Closure;
use leptos::wasm_bindgen::JsCast;
use leptos::web_sys::{EventSource, MessageEvent};
use unike_shared::events::Event;
use unike_shared::routes;

/// Counter of received events and the last one.
#[derive(Clone, Copy)]
pub struct LiveEvents {
    pub tick: RwSignal<u64>,
    pub last: RwSignal<Option<Event>>,
}

impl LiveEvents {
    /// Subscribes to the events of `workspace`, re-subscribing when it changes (and closing on cleanup).
    pub fn new(workspace: RwSignal<Option<i64>>) -> Self {
        let live = Self { tick: RwSignal::new(0), last: RwSignal::new(None) };
        Effect::new(move |prev: Option<Option<EventSource>>| {
            if let Some(Some(es)) = prev {
                es.close();
            }
            let ws = workspace.get()?;
            let es = EventSource::new(&format!("{}?workspace={ws}", routes::EVENTS)).ok()?;
            let on_event = Closure::<dyn FnMut(MessageEvent)>::new(move |m: MessageEvent| {
                if let Some(text) = m.data().as_string() {
                    if let Ok(e) = serde_json::from_str::<Event>(&text) {
                        live.last.set(Some(e));
                    }
                }
                live.tick.update(|t| *t += 1);
            });
            for name in ["run", "edit_applied", "edit_undone"] {
                let _ = es.add_event_listener_with_callback(name, on_event.as_ref().unchecked_ref());
            }
            on_event.forget();
            Some(es)
        });
        live
    }
}
