//! Benchmarks: configure and launch a run, watch it live, cancel it, read its results.

use leptos::prelude::*;
use unike_shared::events::Event;
use unike_shared::playground::METHODS;
use unike_shared::routes;
use unike_shared::runs::{RunInfo, RunRequest, RunStatus};

use crate::api;
use crate::format::pct;
use crate::live::LiveEvents;
use crate::session::{RequireSession, SessionCtx, WorkspacePicker};

/// Ablation presets: label, element id, the variants run beside `unike`.
const PRESETS: [(&str, &str, &str); 3] = [
    ("fixed α sweep", "preset-alpha", "unike:alpha=0.2 unike:alpha=0.4 unike:alpha=0.6 unike:alpha=0.8 unike:alpha=1"),
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
    let error = RwSignal::new(None::<String>);

    let load = move || {
        if let Some(ws) = ctx.workspace.get_untracked() {
            leptos::task::spawn_local(async move {
                match api::get_json::<Vec<RunInfo>>(&routes::runs(ws)).await {
                    Ok(r) => runs.set(r),
                    Err(e) => error.set(Some(e.to_string())),
                }
            });
        }
    };
    Effect::new(move |_| {
        ctx.workspace.track();
        load();
    });
    // Progress arrives live: replace the run in place.
    let live = LiveEvents::new(ctx.workspace);
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
        leptos::task::spawn_local(async move {
            match api::post_json::<_, RunInfo>(&routes::runs(ws), &req).await {
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
    let number = |label: &'static str, sig: RwSignal<usize>| {
        view! {
            <label class="field">{label}
                <input type="number" min="1" prop:value=move || sig.get().to_string()
                    on:input=move |ev| if let Ok(v) = event_target_value(&ev).parse() { sig.set(v) }/>
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
                {select("Mode", mode, &["one-step", "sequential"])}
                {number("K (sequential)", k)}
                {number("Cases (n)", n)}
                <label class="field">"Seed"
                    <input type="number" min="0" prop:value=move || seed.get().to_string()
                        on:input=move |ev| if let Ok(v) = event_target_value(&ev).parse() { seed.set(v) }/>
                </label>
            </div>
            <button type="submit" class="button">"Launch"</button>
            {move || error.get().map(|e| view! { <p class="status error" role="alert">{e}</p> })}
        </form>
        <section aria-labelledby="runs-heading">
            <h2 id="runs-heading">"Runs"</h2>
            {move || {
                let rs = runs.get();
                if rs.is_empty() {
                    return view! { <p>"No runs in this workspace yet."</p> }.into_any();
                }
                rs.into_iter().map(|r| {
                    let id = r.id;
                    let running = !r.status.is_final();
                    view! {
                        <article class="card run">
                            <h3>{format!("Run #{} — {} · {} · {} · n={} · seed {}{}", r.id, r.request.methods.join(", "),
                                r.request.task, r.request.mode, r.request.n, r.request.seed,
                                if r.request.data == "workspace" { " · workspace cases" } else { "" })}</h3>
                            {r.note.clone().map(|n| view! { <p class="hint">{n}</p> })}
                            <p class="run-status">{format!("{} by {} on {}", r.status.as_str(), r.author, r.model)}
                               {r.error.clone().map(|e| format!(": {e}"))}</p>
                            <progress max=r.total.max(1).to_string() value=r.done.to_string()
                                aria-label=format!("Run {} progress", r.id)>{format!("{}/{}", r.done, r.total)}</progress>
                            <Show when=move || running>
                                <button type="button" class="button small secondary" on:click=move |_| cancel(id)>"Cancel"</button>
                            </Show>
                            {(r.status == RunStatus::Finished || !r.results.is_empty())
                                .then(|| view! { <ResultsTable results=r.results.clone()/> })}
                        </article>
                    }
                }).collect_view().into_any()
            }}
        </section>
    }
}

/// One row per method: the five metrics (and portability), token convention.
#[component]
pub fn ResultsTable(results: Vec<unike_shared::BenchResult>) -> impl IntoView {
    view! {
        <div class="table-scroll">
            <table>
                <thead><tr><th scope="col">"Method"</th><th scope="col">"Rel."</th><th scope="col">"T-Gen."</th>
                    <th scope="col">"M-Gen."</th><th scope="col">"T-Loc."</th><th scope="col">"M-Loc."</th>
                    <th scope="col">"Port."</th><th scope="col">"Edit ms (median)"</th></tr></thead>
                <tbody>
                    {results.into_iter().map(|r| {
                        let m = r.metrics;
                        view! {
                            <tr><th scope="row">{r.method}</th><td>{pct(m.reliability)}</td><td>{pct(m.t_generality)}</td>
                                <td>{pct(m.m_generality)}</td><td>{pct(m.t_locality)}</td><td>{pct(m.m_locality)}</td>
                                <td>{m.portability.map(pct).unwrap_or_else(|| "–".into())}</td>
                                <td>{format!("{:.0}", r.timing.edit_ms_median)}</td></tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </div>
    }
}
