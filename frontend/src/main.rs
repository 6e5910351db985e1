//! UniKE Studio's browser front end: a Leptos client-side app, compiled to Wasm and bundled by Trunk.
//!
//! The app talks to the back end only through the typed client in [`api`], using the route paths and
//! message types of `unike-shared`.

mod api;
mod app;
mod charts;
mod components;
mod format;
mod live;
mod pages;
mod session;

fn main() {
    // Turn Rust panics into readable messages in the browser console.
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(app::App);
}
