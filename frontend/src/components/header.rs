//! The site header: skip link, product name and the main navigation.

use leptos::prelude::*;
use leptos::wasm_bindgen::JsCast;
use leptos::web_sys::HtmlElement;
use leptos_router::components::A;

use crate::session::SessionCtx;

/// Header with a skip link, the product name and one link per page.
///
/// The router's `<A>` marks the current page with `aria-current="page"`, which the stylesheet highlights.
#[component]
pub fn Header() -> impl IntoView {
    let ctx = SessionCtx::get();
    let who = move || {
        ctx.session.with(|s| match s.as_ref().and_then(|s| s.user.as_ref()) {
            Some(u) if u.guest => format!("Demo sandbox ({})", u.username),
            Some(u) => u.username.clone(),
            None => "Sign in".to_string(),
        })
    };
    view! {
        // rel="external" keeps the router from treating the fragment link as a page change.
        <a class="skip-link" href="#main" rel="external" on:click=focus_main>
            "Skip to content"
        </a>
        <header class="site-header">
            <a href="/" class="brand">"UniKE Studio"</a>
            <nav aria-label="Main">
                <ul class="nav-links">
                    <li><A href="/" exact=true>"Home"</A></li>
                    <li><A href="/playground">"Playground"</A></li>
                    <li><A href="/benchmarks">"Benchmarks"</A></li>
                    <li><A href="/leaderboard">"Leaderboard"</A></li>
                    <li><A href="/explorer">"Explorer"</A></li>
                    <li>
                        <A href="/workspaces">"Workspaces"
                            {move || {
                                let n = ctx.invitations.get();
                                (n > 0).then(|| view! {
                                    <span class="badge" id="invitation-count" title=format!("{n} pending invitations")>{n}</span>
                                })
                            }}
                        </A>
                    </li>
                    <li class="account"><A href="/signin">{who}</A></li>
                </ul>
            </nav>
        </header>
    }
}

/// Moves keyboard focus to the page's `<main id="main">`, so the next Tab starts inside the content.
fn focus_main(ev: leptos::ev::MouseEvent) {
    ev.prevent_default();
    let main = document().get_element_by_id("main").and_then(|el| el.dyn_into::<HtmlElement>().ok());
    if let Some(main) = main {
        // Focusing cannot fail for an element with tabindex; ignore the Result the binding returns.
        let _ = main.focus();
    }
}
