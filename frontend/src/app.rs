//! The application shell: header, routed page area and footer.

use leptos::prelude::*;
use leptos_router::components::{Route, Router, Routes};
use leptos_router::path;

use crate::components::{Footer, Header};
use crate::pages::{ComingSoon, Home, NotFound};

/// Root component: the router with one route per page.
#[component]
pub fn App() -> impl IntoView {
    view! {
        <Router>
            <Header/>
            <main id="main" class="page" tabindex="-1">
                <Routes fallback=NotFound>
                    <Route path=path!("/") view=Home/>
                    <Route
                        path=path!("/playground")
                        view=|| view! { <ComingSoon title="Playground" what="Edit a model's knowledge from an image and a prompt, then compare its answers before and after."/> }
                    />
                    <Route
                        path=path!("/benchmarks")
                        view=|| view! { <ComingSoon title="Benchmarks" what="Run editing benchmarks and measure reliability, generality and locality."/> }
                    />
                    <Route
                        path=path!("/leaderboard")
                        view=|| view! { <ComingSoon title="Leaderboard" what="Compare editing methods across models and benchmarks."/> }
                    />
                    <Route
                        path=path!("/workspaces")
                        view=|| view! { <ComingSoon title="Workspaces" what="Save, name and revisit sets of edits."/> }
                    />
                </Routes>
            </main>
            <Footer/>
        </Router>
    }
}
