//! A placeholder for pages that are planned but not built yet.

use leptos::prelude::*;
use leptos_router::components::A;

/// States plainly that `title` arrives in a later release, and what it will do.
#[component]
pub fn ComingSoon(
    /// The page's name, shown as its heading.
    title: &'static str,
    /// One sentence on what the page will offer.
    what: &'static str,
) -> impl IntoView {
    view! {
        <h1>{title}</h1>
        <p class="status">{title} " arrives in a later release of UniKE Studio."</p>
        <p>{what}</p>
        <p><A href="/">"Back to Home"</A></p>
    }
}
