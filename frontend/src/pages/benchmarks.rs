//! Benchmarks: configure and launch a run, watch it live, cancel it, read its results.

use leptos::prelude::*;
use unike_shared::events::Event;
use unike_shared::playground::METHODS;
use unike_shared::routes;
use unike_shared::runs::{RunInfo, RunRequest, RunStatus, RUN_N_MAX};

use crate::api;
use crate::format::pct;
use crate::live::LiveEvents;
use crate::session::{RequireSession, SessionCtx, WorkspacePicker};

/// Ablation presets: label, element id, the variants run beside `unike`.
const PRESETS: [(&str, &str, &str); 3] = [
    ("fixed α sweep", "preset-alpha", "unike:alpha=0 unike:alpha=0.2 unike:alpha=0.4 unike:alpha=0.6 unike:alpha=0.8"),
    ("treatments of ζ", "preset-zeta", "unike:zeta-none unike:zeta-random unike:zeta-semantic"),
    (
        "retrieved states K",
        "preset-k",
        "unike:intrinsic+latent unike:intrinsic+latent/k=1 unike:intrinsic+latent/k=5 unike:intrinsic+latent/k=20 unike:intrinsic+latent/k=40",
    ),
];

#[component]
pub fn Benchmarks() -> impl IntoView {
    view! {
        <h1>"Benchmarks"</h1>
        <RequireSession>
            <BenchmarksBody/>
        </RequireSession>
    }
}

#[component]
fn BenchmarksBody() -> impl IntoView {
    let ctx = SessionCtx::get();
    let chosen = RwSignal::new(vec!["unike".to_string(), "t-patcher".to_string()]);
    let task = RwSignal::new("vqa".to_string());
    let mode = RwSignal::new("one-step".to_string());
    let k = RwSignal::new(10usize);
    let n = RwSignal::new(20usize);
    let seed = RwSignal::new(0u64);
    let data = RwSignal::new("world".to_string());
    // UniKE variants and other method names beyond the checkboxes, space-separated (`unike:alpha=0.4`).
    let extra = RwSignal::new(String::new());
    let runs = RwSignal::new(Vec::<RunInfo>::new());
    // `None` while the workspace's runs load; the error of loading them.
    let loaded = RwSignal::new(None::<Result<(), String>>);
    let error = RwSignal::new(None::<String>);
    let launching = RwSignal::new(false);

    let load = move || {
        if let Some(ws) = ctx.workspace.get_untracked() {
            loaded.set(None);
            leptos::task::spawn_local(async move {
                match api::get_json::<Vec<RunInfo>>(&routes::runs(ws)).await {
                    Ok(r) => {
                        runs.set(r);
                        loaded.set(Some(Ok(())));
                    }
                    Err(e) => loaded.set(Some(Err(format!("The runs could not be loaded: {e}")))),
                }
            });
        }
    };
    Effect::new(move |_| {
        ctx.workspace.track();
        load();
    });
    // Progress arrives live: replace the run in place.
    let live = LiveEvents::new(ctx.workspace, crate::live::RUNS);
    Effect::new(move |_| {
        if let Some(Event::Run { run }) = live.last.get() {
            runs.update(|rs| match rs.iter_mut().find(|r| r.id == run.id) {
                Some(r) => *r = run,
                None => rs.insert(0, run),
            });
        }
    });

    let launch = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let Some(ws) = ctx.workspace.get_untracked() else { return };
        if launching.get_untracked() {
            return;
        }
        let req = RunRequest {
            methods: chosen
                .get_untracked()
                .into_iter()
                .chain(extra.get_untracked().split_whitespace().map(str::to_string))
                .collect(),
            task: task.get_untracked(),
            mode: mode.get_untracked(),
            k: k.get_untracked(),
            n: n.get_untracked(),
            seed: seed.get_untracked(),
            data: data.get_untracked(),
        };
        launching.set(true);
        leptos::task::spawn_local(async move {
            let sent = api::post_json::<_, RunInfo>(&routes::runs(ws), &req).await;
            launching.set(false);
            match sent {
                Ok(r) => {
                    error.set(None);
                    runs.update(|rs| {
                        if !rs.iter().any(|x| x.id == r.id) {
                            rs.insert(0, r)
                        }
                    });
                }
                Err(e) => error.set(Some(e.to_string())),
            }
        });
    };
    let cancel = move |id: i64| {
        leptos::task::spawn_local(async move {
            if let Err(e) = api::post_json::<_, RunInfo>(&routes::run_cancel(id), &()).await {
                error.set(Some(e.to_string()));
            }
        });
    };
    let toggle = move |m: &'static str| {
        chosen.update(|c| {
            if let Some(i) = c.iter().position(|x| x == m) {
                c.remove(i);
            } else {
                c.push(m.to_string());
            }
        })
    };
    let select = |label: &'static str, sig: RwSignal<String>, opts: &'static [&'static str]| {
        view! {
            <label class="field">{label}
                <select on:change=move |ev| sig.set(event_target_value(&ev))>
                    {opts.iter().map(|o| view! { <option value=*o selected=move || sig.get() == *o>{*o}</option> }).collect_view()}
                </select>
            </label>
        }
    };
    // A number field; leaving it shows the value a launch sends (the last valid one typed).
    let number = |label: &'static str, sig: RwSignal<usize>| {
        view! {
            <label class="field">{label}
                <input type="number" min="1" max=RUN_N_MAX.to_string() prop:value=move || sig.get().to_string()
                    on:input=move |ev| if let Ok(v) = event_target_value(&ev).parse() { sig.set(v) }
                    on:change=move |ev| {
                        let input: leptos::web_sys::HtmlInputElement = event_target(&ev);
                        input.set_value(&sig.get_untracked().to_string());
                    }/>
            </label>
        }
    };

    view! {
        <WorkspacePicker/>
        <form class="card form" on:submit=launch aria-labelledby="run-heading">
            <h2 id="run-heading">"New run"</h2>
            <fieldset>
                <legend>"Methods"</legend>
                {METHODS.iter().map(|m| view! {
                    <label class="check"><input type="checkbox" prop:checked=move || chosen.with(|c| c.iter().any(|x| x == m))
                        on:change=move |_| toggle(m)/>{*m}</label>
                }).collect_view()}
            </fieldset>
            <label class="field">"More methods or UniKE variants (space-separated, e.g. unike:alpha=0.4 unike:zeta-none)"
                <input id="extra-methods" prop:value=extra on:input=move |ev| extra.set(event_target_value(&ev))/>
            </label>
            <p class="actions">
                "Presets (paper Fig. 4, E-VQA one-step): "
                {PRESETS.iter().map(|(label, id, methods)| view! {
                    <button type="button" id=*id class="button small secondary" on:click=move |_| {
                        chosen.set(vec!["unike".to_string()]);
                        extra.set(methods.to_string());
                        task.set("vqa".into());
                        mode.set("one-step".into());
                    }>{*label}</button>
                }).collect_view()}
            </p>
            <div class="grid three">
                <label class="field">"Data"
                    <select id="run-data" on:change=move |ev| data.set(event_target_value(&ev))>
                        <option value="world" selected=move || data.get() == "world">"world (public)"</option>
                        <option value="workspace" selected=move || data.get() == "workspace">"workspace cases (private)"</option>
                    </select>
                </label>
                {select("Task", task, &["vqa", "caption", "cross"])}
                {select("Mode", mode, &["one-step", "sequential", "sequential-gap"])}
                {number("K (sequential) or gap (sequential-gap)", k)}
                {number("Cases (n)", n)}
                <label class="field">"Seed"
                    <input type="number" min="0" prop:value=move || seed.get().to_string()
                        on:input=move |ev| if let Ok(v) = event_target_value(&ev).parse() { seed.set(v) }/>
                </label>
            </div>
            <button type="submit" class="button" disabled=move || launching.get()>
                {move || if launching.get() { "Launching…" } else { "Launch" }}
            </button>
            {move || error.get().map(|e| view! { <p class="status error" role="alert">{e}</p> })}
        </form>
        <section aria-labelledby="runs-heading">
            <h2 id="runs-heading">"Runs"</h2>
            {move || match loaded.get() {
                None => view! { <p class="status" role="status">"Loading the runs…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="status error" role="alert">{e}</p> }.into_any(),
                Some(Ok(())) if runs.with(Vec::is_empty) => view! { <p>"No runs in this workspace yet."</p> }.into_any(),
                Some(Ok(())) => ().into_any(),
            }}
            // Keyed by run: live progress updates a card in place, so its Cancel button keeps the keyboard focus.
            <For each=move || runs.with(|rs| rs.iter().map(|r| r.id).collect::<Vec<_>>()) key=|id| *id let:id>
                <RunCard id runs cancel/>
            </For>
        </section>
    }
}

/// One run of `runs`, updated in place as its progress arrives.
#[component]
fn RunCard(
    id: i64,
    runs: RwSignal<Vec<RunInfo>>,
    cancel: impl Fn(i64) + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let run = Memo::new(move |_| runs.with(|rs| rs.iter().find(|r| r.id == id).cloned()));
    let Some(first) = run.get_untracked() else { return ().into_any() };
    let running = move || run.with(|r| r.as_ref().is_some_and(|r| !r.status.is_final()));
    let field = move |f: fn(&RunInfo) -> String| move || run.with(|r| r.as_ref().map(f).unwrap_or_default());
    let r = first.request;
    view! {
        <article class="card run">
            <h3><a href=format!("/runs/{id}")>{format!("Run #{} — {} · {} · {} · n={} · seed {}{}", id, r.methods.join(", "), r.task, r.mode, r.n, r.seed,
                if r.data == "workspace" { " · workspace cases" } else { "" })}</a></h3>
            {first.note.map(|n| view! { <p class="hint">{n}</p> })}
            <p class="run-status">{field(|r| {
                let error = r.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default();
                format!("{} by {} on {}{error}", r.status.as_str(), r.author, r.model)
            })}</p>
            <p class="progress-line">
                <progress max=field(|r| r.total.max(1).to_string()) value=field(|r| r.done.to_string())
                    aria-label=format!("Run {id} progress")></progress>
                " " <span class="hint">{field(|r| format!("{} / {} steps", r.done, r.total))}</span>
            </p>
            <Show when=running>
                <button type="button" class="button small secondary" on:click=move |_| cancel(id)>"Cancel"</button>
            </Show>
            {move || run.with(|r| r.as_ref().filter(|r| r.status == RunStatus::Finished || !r.results.is_empty())
                .map(|r| view! { <ResultsTable results=r.results.clone()/> }))}
        </article>
    }
    .into_any()
}

/// One row per method: the five metrics, portability and the unedited model's portability, token convention (the
/// convention each row was computed with: v1 results stored earlier are not comparable with v2).
#[component]
pub fn ResultsTable(results: Vec<unike_shared::BenchResult>) -> impl IntoView {
    view! {
        <div class="table-scroll">
            <table>
                <thead><tr><th scope="col">"Method"</th><th scope="col">"Rel."</th><th scope="col">"T-Gen."</th>
                    <th scope="col">"M-Gen."</th><th scope="col">"T-Loc."</th><th scope="col">"M-Loc."</th>
                    <th scope="col">"Port."</th><th scope="col">"Port. base"</th><th scope="col">"Edit ms (median)"</th>
                    <th scope="col">"Convention"</th></tr></thead>
                <tbody>
                    {results.into_iter().map(|r| {
                        let m = r.metrics;
                        view! {
                            <tr><th scope="row">{r.method}</th><td>{pct(m.reliability)}</td><td>{pct(m.t_generality)}</td>
                                <td>{pct(m.m_generality)}</td><td>{pct(m.t_locality)}</td><td>{pct(m.m_locality)}</td>
                                <td>{m.portability.map(pct).unwrap_or_else(|| "–".into())}</td>
                                <td>{m.portability_base.map(pct).unwrap_or_else(|| "–".into())}</td>
                                <td>{format!("{:.0}", r.timing.edit_ms_median)}</td>
                                <td title=r.convention.label()>{r.convention.as_str()}</td></tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </div>
    }
}
