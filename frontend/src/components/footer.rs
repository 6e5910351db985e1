//! The site footer, with the server's version from the health check.

use leptos::prelude::*;

use crate::api;

/// Footer showing this front end's version and, once known, the server's.
#[component]
pub fn Footer() -> impl IntoView {
    let health = LocalResource::new(api::fetch_health);
    let server = move || {
        Suspend::new(async move {
            match health.await {
                Ok(answer) => format!("server v{} ({})", answer.version, answer.status),
                Err(_) => "server unreachable".to_string(),
            }
        })
    };
    view! {
        <footer class="site-footer">
            <span>"UniKE Studio · front end v" {env!("CARGO_PKG_VERSION")}</span>
            <span class="server-version" aria-live="polite">
                <Suspense fallback=|| "checking server…">{server}</Suspense>
            </span>
        </footer>
    }
}
