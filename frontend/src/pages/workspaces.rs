//! Workspaces: create one, see its members and roles, invite teammates (owners), and follow its activity feed.

use leptos::prelude::*;
use unike_shared::routes;
use unike_shared::workspace::{AuditEntry, Invitation, Member, NewWorkspace, Role, Workspace};

use crate::api;
use crate::live::LiveEvents;
use crate::session::{RequireSession, SessionCtx, WorkspacePicker};

#[component]
pub fn Workspaces() -> impl IntoView {
    view! {
        <h1>"Workspaces"</h1>
        <RequireSession>
            <WorkspacesBody/>
        </RequireSession>
    }
}

#[component]
fn WorkspacesBody() -> impl IntoView {
    let ctx = SessionCtx::get();
    let name = RwSignal::new(String::new());
    let invitee = RwSignal::new(String::new());
    let role = RwSignal::new(Role::Editor);
    let members = RwSignal::new(Vec::<Member>::new());
    let feed = RwSignal::new(Vec::<AuditEntry>::new());
    let message = RwSignal::new(None::<String>);
    let load = move || {
        if let Some(ws) = ctx.workspace.get_untracked() {
            leptos::task::spawn_local(async move {
                if let Ok(m) = api::get_json::<Vec<Member>>(&routes::members(ws)).await {
                    members.set(m);
                }
                if let Ok(f) = api::get_json::<Vec<AuditEntry>>(&routes::audit(ws)).await {
                    feed.set(f);
                }
            });
        }
    };
    Effect::new(move |_| {
        ctx.workspace.track();
        load();
    });
    let live = LiveEvents::new(ctx.workspace);
    Effect::new(move |_| {
        if live.tick.get() > 0 {
            load();
        }
    });
    let create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let body = NewWorkspace { name: name.get_untracked() };
        leptos::task::spawn_local(async move {
            match api::post_json::<_, Workspace>(routes::WORKSPACES, &body).await {
                Ok(w) => {
                    message.set(Some(format!("Created {}.", w.name)));
                    ctx.load_workspaces().await;
                    ctx.workspace.set(Some(w.id));
                }
                Err(e) => message.set(Some(e.to_string())),
            }
        });
    };
    let invite = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let Some(ws) = ctx.workspace.get_untracked() else { return };
        let body = Invitation { username: invitee.get_untracked(), role: role.get_untracked() };
        leptos::task::spawn_local(async move {
            match api::post_json::<_, Member>(&routes::members(ws), &body).await {
                Ok(m) => {
                    message.set(Some(format!("{} is now {}.", m.user.username, m.role.as_str())));
                    load();
                }
                Err(e) => message.set(Some(e.to_string())),
            }
        });
    };
    view! {
        <WorkspacePicker/>
        {move || message.get().map(|m| view! { <p class="status" role="status">{m}</p> })}
        <div class="grid two">
            <section class="card" aria-labelledby="members-heading">
                <h2 id="members-heading">"Members"</h2>
                <ul>
                    {move || members.get().into_iter().map(|m| view! {
                        <li>{m.user.username}" — "{m.role.as_str()}</li>
                    }).collect_view()}
                </ul>
                <form class="form" on:submit=invite>
                    <label class="field">"Invite (username)"
                        <input prop:value=invitee on:input=move |ev| invitee.set(event_target_value(&ev))/>
                    </label>
                    <label class="field">"Role"
                        <select on:change=move |ev| role.set(Role::parse(&event_target_value(&ev)).unwrap_or(Role::Viewer))>
                            <option value="viewer">"viewer"</option>
                            <option value="editor" selected=true>"editor"</option>
                            <option value="owner">"owner"</option>
                        </select>
                    </label>
                    <button type="submit" class="button">"Invite or change role"</button>
                </form>
            </section>
            <section class="card" aria-labelledby="new-heading">
                <h2 id="new-heading">"New workspace"</h2>
                <form class="form" on:submit=create>
                    <label class="field">"Name"
                        <input prop:value=name on:input=move |ev| name.set(event_target_value(&ev))/>
                    </label>
                    <button type="submit" class="button">"Create"</button>
                </form>
            </section>
        </div>
        <section class="card" aria-labelledby="feed-heading">
            <h2 id="feed-heading">"Activity"</h2>
            <ol class="feed">
                {move || feed.get().into_iter().map(|e| view! {
                    <li><time>{e.at}</time>" "<strong>{e.actor}</strong>" "{e.action}" — "{e.detail}</li>
                }).collect_view()}
            </ol>
        </section>
    }
}
