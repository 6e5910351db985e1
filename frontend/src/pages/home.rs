//! The home page: what UniKE Studio is and which model the server runs.

use leptos::prelude::*;

use crate::api;
use crate::components::ModelTable;

/// Introduction plus the loaded model, fetched from the API, with loading and error states.
#[component]
pub fn Home() -> impl IntoView {
    let model = LocalResource::new(api::fetch_model);
    let model_view = move || Suspend::new(async move { model.await.map(|info| view! { <ModelTable info/> }) });
    view! {
        <h1>"UniKE Studio"</h1>
        <p class="lead">
            "Edit what a vision-language model knows, and measure what changed."
        </p>
        <section aria-labelledby="model-heading">
            <h2 id="model-heading">"Model"</h2>
            <Suspense fallback=|| view! { <p class="status" role="status">"Loading model information…"</p> }>
                <ErrorBoundary fallback=|errors| view! { <LoadError errors/> }>
                    {model_view}
                </ErrorBoundary>
            </Suspense>
            <button type="button" class="button" on:click=move |_| model.refetch()>
                "Reload"
            </button>
        </section>
    }
}

/// The error state of the model panel: what went wrong, in words.
#[component]
fn LoadError(errors: ArcRwSignal<Errors>) -> impl IntoView {
    let messages = move || errors.get().into_iter().map(|(_, err)| view! { <li>{err.to_string()}</li> }).collect_view();
    view! {
        <div class="status error" role="alert">
            <p>"The model information could not be loaded."</p>
            <ul>{messages}</ul>
        </div>
    }
}
