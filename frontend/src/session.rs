//! The signed-in session, shared by every page through Leptos context, and the workspace the pages work in.

use leptos::prelude::*;
use unike_shared::auth::SessionInfo;
use unike_shared::workspace::{PendingInvitation, Workspace};

use crate::api;

/// The session (`None` until the first answer) and the chosen workspace id.
#[derive(Clone, Copy)]
pub struct SessionCtx {
    pub session: RwSignal<Option<SessionInfo>>,
    pub workspace: RwSignal<Option<i64>>,
    pub workspaces: RwSignal<Vec<Workspace>>,
    /// Invitations waiting for the caller's answer (shown beside Workspaces in the header).
    pub invitations: RwSignal<usize>,
    /// Why the session or the workspaces could not be loaded (shown with a retry).
    pub error: RwSignal<Option<String>>,
}

impl SessionCtx {
    /// Provides the context and loads the session and the caller's workspaces.
    pub fn provide() -> Self {
        let ctx = Self {
            session: RwSignal::new(None),
            workspace: RwSignal::new(None),
            workspaces: RwSignal::new(vec![]),
            invitations: RwSignal::new(0),
            error: RwSignal::new(None),
        };
        provide_context(ctx);
        ctx.reload();
        ctx
    }

    pub fn get() -> Self {
        expect_context::<Self>()
    }

    /// Fetches the session and workspaces again (after signing in or out, or creating a workspace).
    pub fn reload(self) {
        leptos::task::spawn_local(async move {
            match api::fetch_session().await {
                Ok(s) => {
                    self.error.set(None);
                    let signed_in = s.user.is_some();
                    self.session.set(Some(s));
                    if signed_in {
                        self.load_workspaces().await;
                    } else {
                        self.workspaces.set(vec![]);
                        self.workspace.set(None);
                    }
                }
                Err(e) => self.error.set(Some(format!("Your session could not be loaded: {e}"))),
            }
        });
    }

    /// Fetches the caller's workspaces (keeping the chosen one when it is still theirs) and pending invitations.
    pub async fn load_workspaces(self) {
        let pending = api::get_json::<Vec<PendingInvitation>>(unike_shared::routes::MY_INVITATIONS).await;
        self.invitations.set(pending.map(|p| p.len()).unwrap_or(0));
        match api::get_json::<Vec<Workspace>>(unike_shared::routes::WORKSPACES).await {
            Ok(ws) => {
                let current = self.workspace.get_untracked();
                let keep = current.filter(|id| ws.iter().any(|w| w.id == *id));
                let chosen = keep.or_else(|| ws.first().map(|w| w.id));
                // Only a change re-runs what follows the workspace (its stack, its live connection).
                if chosen != current {
                    self.workspace.set(chosen);
                }
                self.workspaces.set(ws);
            }
            Err(e) => self.error.set(Some(format!("Your workspaces could not be loaded: {e}"))),
        }
    }

    pub fn signed_in(&self) -> bool {
        self.session.with(|s| s.as_ref().is_some_and(|s| s.user.is_some()))
    }
}

/// Shows `children` when signed in, and a sign-in prompt otherwise.
#[component]
pub fn RequireSession(children: ChildrenFn) -> impl IntoView {
    let ctx = SessionCtx::get();
    move || {
        if let Some(e) = ctx.error.get() {
            view! {
                <div class="status error" role="alert">
                    <p>{e}</p>
                    <button type="button" class="button secondary" on:click=move |_| ctx.reload()>"Try again"</button>
                </div>
            }
            .into_any()
        } else if ctx.session.with(|s| s.is_none()) {
            view! { <p class="status" role="status">"Loading your session…"</p> }.into_any()
        } else if ctx.signed_in() {
            children().into_any()
        } else {
            view! {
                <p class="status">
                    "Sign in to use this page. " <a href="/signin">"Sign in or create an account"</a>
                </p>
            }
            .into_any()
        }
    }
}

/// A select of the caller's workspaces bound to the session's current workspace.
#[component]
pub fn WorkspacePicker() -> impl IntoView {
    let ctx = SessionCtx::get();
    view! {
        <label class="field inline">
            "Workspace "
            <select on:change=move |ev| ctx.workspace.set(event_target_value(&ev).parse().ok())>
                {move || {
                    ctx.workspaces
                        .get()
                        .into_iter()
                        .map(|w| {
                            let selected = ctx.workspace.get() == Some(w.id);
                            view! {
                                <option value=w.id.to_string() selected=selected>
                                    {format!("{} ({}, {} edits)", w.name, w.role.as_str(), w.edits)}
                                </option>
                            }
                        })
                        .collect_view()
                }}
            </select>
        </label>
    }
}
