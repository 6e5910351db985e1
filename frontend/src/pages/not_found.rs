//! The page for any path the router does not know.

use leptos::prelude::*;
use leptos_router::components::A;

/// "Page not found", with a way back.
#[component]
pub fn NotFound() -> impl IntoView {
    view! {
        <h1>"Page not found"</h1>
        <p>"There is no page at this address."</p>
        <p><A href="/">"Back to Home"</A></p>
    }
}
