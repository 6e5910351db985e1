//! Sign in or create an account.

use leptos::prelude::*;
use unike_shared::auth::{Credentials, SessionInfo, PASSWORD_MIN};
use unike_shared::routes;

use crate::api;
use crate::session::SessionCtx;

#[component]
pub fn SignIn() -> impl IntoView {
    let ctx = SessionCtx::get();
    let username = RwSignal::new(String::new());
    let password = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    let submit = move |route: &'static str| {
        let creds = Credentials { username: username.get_untracked(), password: password.get_untracked() };
        busy.set(true);
        leptos::task::spawn_local(async move {
            match api::post_json::<_, SessionInfo>(route, &creds).await {
                Ok(s) => {
                    api::remember(&s);
                    error.set(None);
                    ctx.session.set(Some(s));
                    ctx.load_workspaces().await;
                    let _ = window().location().set_href("/playground");
                }
                Err(e) => error.set(Some(e.to_string())),
            }
            busy.set(false);
        });
    };
    let signed_in_as =
        move || ctx.session.with(|s| s.as_ref().and_then(|s| s.user.as_ref()).map(|u| u.username.clone()));
    let sign_out = move |_| {
        leptos::task::spawn_local(async move {
            let _ = api::post_json::<_, SessionInfo>(routes::SIGN_OUT, &()).await;
            ctx.reload();
        });
    };
    view! {
        <h1>"Sign in"</h1>
        <Show when=move || signed_in_as().is_some()>
            <p class="status">"Signed in as " <strong>{signed_in_as}</strong> ". "
                <button type="button" class="button secondary" on:click=sign_out>"Sign out"</button>
            </p>
        </Show>
        <form class="card form" on:submit=move |ev| { ev.prevent_default(); submit(routes::SIGN_IN) }>
            <label class="field">"Username"
                <input id="username" name="username" autocomplete="username" required
                    prop:value=username on:input=move |ev| username.set(event_target_value(&ev))/>
            </label>
            <label class="field">{format!("Password (at least {PASSWORD_MIN} characters)")}
                <input id="password" name="password" type="password" autocomplete="current-password" required
                    prop:value=password on:input=move |ev| password.set(event_target_value(&ev))/>
            </label>
            <div class="actions">
                <button id="signin" type="submit" class="button" disabled=busy>"Sign in"</button>
                <button id="signup" type="button" class="button secondary" disabled=busy
                    on:click=move |_| submit(routes::SIGN_UP)>"Create account"</button>
            </div>
            <Show when=move || error.get().is_some()>
                <p class="status error" role="alert">{move || error.get()}</p>
            </Show>
        </form>
    }
}
