//! Workspaces: invitations addressed to you (accept or decline), create a workspace, its members and roles (owners
//! change roles, remove members and invite; anyone may leave), pending invitations (owners revoke), and the activity
//! feed from the audit log.

use leptos::prelude::*;
use unike_shared::routes;
use unike_shared::workspace::{
    AuditEntry, Invitation, Member, NewWorkspace, PendingInvitation, Role, RoleChange, Workspace,
};

use crate::api;
use crate::live::LiveEvents;
use crate::session::{RequireSession, SessionCtx, WorkspacePicker};

const ROLES: [Role; 3] = [Role::Viewer, Role::Editor, Role::Owner];

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
    let pending = RwSignal::new(Vec::<PendingInvitation>::new());
    let mine = RwSignal::new(Vec::<PendingInvitation>::new());
    let feed = RwSignal::new(Vec::<AuditEntry>::new());
    let message = RwSignal::new(None::<String>);
    // The last write's or load's failure (shown as an error, apart from the last success).
    let failure = RwSignal::new(None::<String>);
    // Whether the workspace's members and feed have loaded.
    let loaded = RwSignal::new(false);
    let me = move || ctx.session.with(|s| s.as_ref().and_then(|s| s.user.as_ref()).map(|u| u.id));
    let my_role = move || {
        let ws = ctx.workspace.get()?;
        ctx.workspaces.with(|all| all.iter().find(|w| w.id == ws).map(|w| w.role))
    };
    let is_owner = move || my_role() == Some(Role::Owner);
    let load = move || {
        leptos::task::spawn_local(async move {
            match api::get_json::<Vec<PendingInvitation>>(routes::MY_INVITATIONS).await {
                Ok(m) => {
                    ctx.invitations.set(m.len());
                    mine.set(m);
                }
                Err(e) => failure.set(Some(format!("Your invitations could not be loaded: {e}"))),
            }
        });
        if let Some(ws) = ctx.workspace.get_untracked() {
            leptos::task::spawn_local(async move {
                let fetched = async {
                    let m = api::get_json::<Vec<Member>>(&routes::members(ws)).await?;
                    let p = api::get_json::<Vec<PendingInvitation>>(&routes::invitations(ws)).await?;
                    let f = api::get_json::<Vec<AuditEntry>>(&routes::audit(ws)).await?;
                    Ok::<_, api::ClientError>((m, p, f))
                };
                match fetched.await {
                    Ok((m, p, f)) => {
                        members.set(m);
                        pending.set(p);
                        feed.set(f);
                        loaded.set(true);
                    }
                    Err(e) => failure.set(Some(format!("The workspace could not be loaded: {e}"))),
                }
            });
        }
    };
    Effect::new(move |_| {
        ctx.workspace.track();
        load();
    });
    let live = LiveEvents::new(ctx.workspace, crate::live::EDITS);
    Effect::new(move |_| {
        if live.tick.get() > 0 {
            load();
        }
    });
    // Reports the outcome of a write and reloads what it touched.
    let done = move |outcome: Result<String, api::ClientError>| {
        match outcome {
            Ok(m) => {
                failure.set(None);
                message.set(Some(m));
            }
            Err(e) => failure.set(Some(e.to_string())),
        }
        load();
    };
    let create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let body = NewWorkspace { name: name.get_untracked() };
        leptos::task::spawn_local(async move {
            match api::post_json::<_, Workspace>(routes::WORKSPACES, &body).await {
                Ok(w) => {
                    failure.set(None);
                    message.set(Some(format!("Created {}.", w.name)));
                    name.set(String::new());
                    ctx.load_workspaces().await;
                    ctx.workspace.set(Some(w.id));
                }
                Err(e) => failure.set(Some(e.to_string())),
            }
        });
    };
    let invite = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let Some(ws) = ctx.workspace.get_untracked() else { return };
        let body = Invitation { username: invitee.get_untracked(), role: role.get_untracked() };
        leptos::task::spawn_local(async move {
            let r = api::post_json::<_, PendingInvitation>(&routes::invitations(ws), &body).await;
            if r.is_ok() {
                invitee.set(String::new());
            }
            done(r.map(|i| format!("Invited {} as {}; they join once they accept.", i.username, i.role.as_str())));
        });
    };
    let answer = move |inv: PendingInvitation, accept: bool| {
        leptos::task::spawn_local(async move {
            if accept {
                match api::post_json::<_, Workspace>(&routes::invitation_accept(inv.id), &()).await {
                    Ok(w) => {
                        // Reported once the header's invitation count and the workspaces have caught up.
                        ctx.load_workspaces().await;
                        ctx.workspace.set(Some(w.id));
                        failure.set(None);
                        message.set(Some(format!("You joined {} as {}.", w.name, w.role.as_str())));
                        load();
                    }
                    Err(e) => done(Err(e)),
                }
            } else {
                let r = api::post_json::<_, Vec<PendingInvitation>>(&routes::invitation_decline(inv.id), &()).await;
                done(r.map(|_| format!("Declined the invitation to {}.", inv.workspace)));
            }
        });
    };
    let set_role = move |user: i64, role: Role| {
        let Some(ws) = ctx.workspace.get_untracked() else { return };
        leptos::task::spawn_local(async move {
            let r = api::post_json::<_, Member>(&routes::member(ws, user), &RoleChange { role }).await;
            done(r.map(|m| format!("{} is now {}.", m.user.username, m.role.as_str())));
        });
    };
    let remove = move |m: Member| {
        let Some(ws) = ctx.workspace.get_untracked() else { return };
        let leaving = me() == Some(m.user.id);
        leptos::task::spawn_local(async move {
            match api::delete_json::<Vec<Member>>(&routes::member(ws, m.user.id)).await {
                Ok(_) if leaving => {
                    message.set(Some("You left the workspace.".into()));
                    ctx.load_workspaces().await;
                    load();
                }
                r => done(r.map(|_| format!("Removed {}.", m.user.username))),
            }
        });
    };
    let revoke = move |inv: PendingInvitation| {
        let Some(ws) = ctx.workspace.get_untracked() else { return };
        leptos::task::spawn_local(async move {
            let r = api::delete_json::<Vec<PendingInvitation>>(&routes::invitation(ws, inv.id)).await;
            done(r.map(|_| format!("Revoked the invitation of {}.", inv.username)));
        });
    };
    let member_row = move |m: Member| {
        let (uid, current) = (m.user.id, m.role);
        let own = me() == Some(uid);
        let select = is_owner().then(|| {
            view! {
                <select aria-label=format!("Role of {}", m.user.username)
                    on:change=move |ev| if let Some(r) = Role::parse(&event_target_value(&ev)) { set_role(uid, r) }>
                    {ROLES.map(|r| view! { <option value=r.as_str() selected=r == current>{r.as_str()}</option> })}
                </select>
            }
        });
        let label = if own { "Leave" } else { "Remove" };
        let button = (own || is_owner()).then(|| {
            let m = m.clone();
            view! { <button type="button" class="button small secondary" on:click=move |_| remove(m.clone())>{label}</button> }
        });
        view! {
            <li class="member">
                <strong>{m.user.username.clone()}</strong>" "
                {if select.is_some() { None } else { Some(current.as_str()) }}
                {select}" "{button}
            </li>
        }
    };
    view! {
        {move || (!mine.get().is_empty()).then(|| view! {
            <section class="card" id="my-invitations" aria-labelledby="mine-heading">
                <h2 id="mine-heading">"Invitations for you"</h2>
                <ul>
                    {mine.get().into_iter().map(|inv| {
                        let (a, d) = (inv.clone(), inv.clone());
                        view! {
                            <li>
                                {format!("{} invites you to {} as {} ", inv.invited_by, inv.workspace, inv.role.as_str())}
                                <button type="button" class="button small" on:click=move |_| answer(a.clone(), true)>"Accept"</button>" "
                                <button type="button" class="button small secondary" on:click=move |_| answer(d.clone(), false)>"Decline"</button>
                            </li>
                        }
                    }).collect_view()}
                </ul>
            </section>
        })}
        <WorkspacePicker/>
        {move || message.get().map(|m| view! { <p class="status" role="status">{m}</p> })}
        {move || failure.get().map(|m| view! { <p class="status error" role="alert">{m}</p> })}
        <div class="grid two">
            <section class="card" aria-labelledby="members-heading">
                <h2 id="members-heading">"Members"</h2>
                {move || (!loaded.get()).then(|| view! { <p class="status" role="status">"Loading the members…"</p> })}
                <ul id="members">{move || members.get().into_iter().map(member_row).collect_view()}</ul>
                {move || (!pending.get().is_empty()).then(|| view! {
                    <h3>"Pending invitations"</h3>
                    <ul id="pending">
                        {pending.get().into_iter().map(|inv| {
                            let r = inv.clone();
                            view! {
                                <li>
                                    {format!("{} as {} (by {}) ", inv.username, inv.role.as_str(), inv.invited_by)}
                                    {is_owner().then(|| view! {
                                        <button type="button" class="button small secondary" on:click=move |_| revoke(r.clone())>"Revoke"</button>
                                    })}
                                </li>
                            }
                        }).collect_view()}
                    </ul>
                })}
                {move || if is_owner() {
                    view! {
                        <form class="form" on:submit=invite>
                            <label class="field">"Invite (username)"
                                <input id="invitee" prop:value=invitee on:input=move |ev| invitee.set(event_target_value(&ev))/>
                            </label>
                            <label class="field">"Role"
                                <select on:change=move |ev| role.set(Role::parse(&event_target_value(&ev)).unwrap_or(Role::Viewer))>
                                    {ROLES.map(|r| view! { <option value=r.as_str() selected=r == Role::Editor>{r.as_str()}</option> })}
                                </select>
                            </label>
                            <button type="submit" class="button">"Invite"</button>
                        </form>
                    }.into_any()
                } else {
                    view! { <p class="hint">"Owners invite members and change roles."</p> }.into_any()
                }}
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
            {move || (loaded.get() && feed.with(Vec::is_empty)).then(|| view! { <p>"No activity yet."</p> })}
            <ol class="feed">
                {move || feed.get().into_iter().map(|e| view! {
                    <li><time>{e.at}</time>" "<strong>{e.actor}</strong>" "{e.action}" — "{e.detail}</li>
                }).collect_view()}
            </ol>
        </section>
    }
}
