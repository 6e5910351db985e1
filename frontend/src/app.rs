//! The application shell: header, routed page area and footer, with the session in context.

use leptos::prelude::*;
use leptos_router::components::{Route, Router, Routes};
use leptos_router::path;

use crate::components::{Footer, Header};
use crate::pages::{Benchmarks, Explorer, Home, Leaderboard, NotFound, Playground, Run, SignIn, Workspaces};
use crate::session::SessionCtx;

/// Root component: the router with one route per page.
#[component]
pub fn App() -> impl IntoView {
    SessionCtx::provide();
    view! {
        <Router>
            <Header/>
            <main id="main" class="page" tabindex="-1">
                <Routes fallback=NotFound>
                    <Route path=path!("/") view=Home/>
                    <Route path=path!("/playground") view=Playground/>
                    <Route path=path!("/benchmarks") view=Benchmarks/>
                    <Route path=path!("/leaderboard") view=Leaderboard/>
                    <Route path=path!("/runs/:id") view=Run/>
                    <Route path=path!("/explorer") view=Explorer/>
                    <Route path=path!("/workspaces") view=Workspaces/>
                    <Route path=path!("/signin") view=SignIn/>
                </Routes>
            </main>
            <Footer/>
        </Router>
    }
}
