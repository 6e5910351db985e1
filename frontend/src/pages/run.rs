//! A run's own page (`/runs/:id`): its request, progress (refreshed while it runs), every method's metrics with a
//! chart, and the per-case results of a chosen method with the failing cases first (question, target, the unedited
//! model's answer before and after the edit as reliability reads it, which probes failed), with exports. A finished run on the world is public: its link can be shared;
//! a run on a workspace's cases is shown to the workspace's members only.

use leptos::prelude::*;
use leptos_router::hooks::{use_params_map, use_query_map};
use unike_shared::routes;
use unike_shared::runs::{RunCase, RunCases, RunInfo, RunStatus};

use super::benchmarks::ResultsTable;
use crate::api;
use crate::charts;
use crate::format::pct;

/// How often a page of an unfinished run asks for its progress.
const REFRESH_MS: u64 = 2000;

fn opt(v: Option<f64>) -> String {
    v.map(pct).unwrap_or_else(|| "–".into())
}

/// A case's token score on probe `name` (`None`: not scored).
fn score(c: &RunCase, name: &str) -> Option<f64> {
    match name {
        "reliability" => c.reliability,
        "t_generality" => c.t_generality,
        "m_generality" => c.m_generality,
        "t_locality" => c.t_locality,
        _ => c.m_locality,
    }
}

/// Share of `cases` passing each of the five probes (percent): the per-case distribution behind the means.
fn pass_shares(cases: &[RunCase]) -> [f64; 5] {
    let names = ["reliability", "t_generality", "m_generality", "t_locality", "m_locality"];
    names.map(|n| {
        let scored: Vec<&RunCase> = cases.iter().filter(|c| score(c, n).is_some()).collect();
        let passed = scored.iter().filter(|c| !c.failed.iter().any(|f| f == n)).count();
        if scored.is_empty() {
            0.0
        } else {
            100.0 * passed as f64 / scored.len() as f64
        }
    })
}

#[component]
pub fn Run() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let id = move || params.with(|p| p.get("id").and_then(|v| v.parse::<i64>().ok()));
    let tick = RwSignal::new(0u64);
    let run = LocalResource::new(move || {
        tick.track();
        let id = id();
        async move {
            match id {
                Some(id) => api::get_json::<RunInfo>(&routes::run(id)).await.map_err(|e| e.to_string()),
                None => Err("no such run".to_string()),
            }
        }
    });
    // Refresh while the run is not finished (stops with the page).
    let timer = StoredValue::new_local(None::<leptos::prelude::IntervalHandle>);
    Effect::new(move |_| {
        let running = run.get().and_then(|r| r.ok()).is_some_and(|r| !r.status.is_final());
        if running && timer.with_value(Option::is_none) {
            let h = set_interval_with_handle(
                move || tick.update(|t| *t += 1),
                std::time::Duration::from_millis(REFRESH_MS),
            );
            timer.set_value(h.ok());
        } else if !running {
            if let Some(h) = timer.get_value() {
                h.clear();
                timer.set_value(None);
            }
        }
    });
    on_cleanup(move || {
        if let Some(Some(h)) = timer.try_get_value() {
            h.clear();
        }
    });
    let method = RwSignal::new(query.with_untracked(|q| q.get("method")).unwrap_or_default());
    let cases = LocalResource::new(move || {
        let (id, m) = (id(), method.get());
        // Refetched as the run's results arrive.
        let results = run.get().and_then(|r| r.ok()).map(|r| r.results.len()).unwrap_or(0);
        async move {
            let Some(id) = id else { return Err("no such run".to_string()) };
            let _ = results;
            let q = if m.is_empty() { String::new() } else { format!("?method={}", js_sys::encode_uri_component(&m)) };
            api::get_json::<RunCases>(&format!("{}{q}", routes::run_cases(id))).await.map_err(|e| e.to_string())
        }
    });

    let header = move |r: &RunInfo| {
        let q = &r.request;
        let rid = r.id;
        let public = r.status == RunStatus::Finished && q.data == "world";
        view! {
            <h1>{format!("Run #{}", r.id)}
                {r.reference.clone().map(|s| view! { <span class="badge reference" title=s>"reference"</span> })}
            </h1>
            <dl class="run-facts" id="run-request">
                <dt>"Methods"</dt><dd>{q.methods.join(", ")}</dd>
                <dt>"Task · mode"</dt><dd>{format!("{} · {}{}", q.task, q.mode, if q.mode == "one-step" { String::new() } else { format!(" · K = {}", q.k) })}</dd>
                <dt>"Cases · seed"</dt><dd>{format!("n = {} · seed {}", q.n, q.seed)}</dd>
                <dt>"Data"</dt><dd>{if q.data == "world" { "the model's world (evaluation split)" } else { "the workspace's cases (private)" }}</dd>
                <dt>"Model"</dt><dd>{r.model.clone()}</dd>
                <dt>"By · when"</dt><dd>{format!("{} · {}{}", r.author, r.created_at, r.finished_at.clone().map(|f| format!(" → {f}")).unwrap_or_default())}</dd>
                {r.reference.clone().map(|s| view! { <dt>"Source"</dt><dd>{s}</dd> })}
            </dl>
            {r.note.clone().map(|n| view! { <p class="hint">{n}</p> })}
            <p class="run-status" id="run-status">{format!("{}{}", r.status.as_str(),
                r.error.clone().map(|e| format!(": {e}")).unwrap_or_default())}</p>
            <p class="progress-line">
                <progress max=r.total.max(1).to_string() value=r.done.to_string() aria-label="Run progress"></progress>
                " " <span class="hint">{format!("{} / {} steps", r.done, r.total)}</span>
            </p>
            <p class="hint">{if public {
                "Public: anyone with this page's link can read it (it is on the leaderboard)."
            } else {
                "Private to the run's workspace until it is a finished run on the world."
            }}</p>
            <p class="actions">
                <a class="button secondary" href=routes::run(r.id) download=format!("run-{}.json", r.id)>"Export run (JSON)"</a>
                <a class="button secondary" href=move || format!("{}{}", routes::run_cases(rid),
                    if method.get().is_empty() { String::new() } else { format!("?method={}", js_sys::encode_uri_component(&method.get())) })
                    download=format!("run-{}-cases.json", r.id)>"Export cases (JSON)"</a>
            </p>
        }
    };
    let results = move |r: &RunInfo| {
        if r.results.is_empty() {
            return view! { <p>"No method has finished yet."</p> }.into_any();
        }
        let bars: Vec<(String, [f64; 5])> = r.results.iter().map(|b| (b.method.clone(), b.metrics.five())).collect();
        let title = format!("The five metrics per method ({}, {})", r.request.task, r.request.mode);
        let chart = match charts::grouped_bars(&title, &bars) {
            Ok(svg) => view! { <figure class="chart chart-bars" id="run-chart" role="img" aria-label=title inner_html=svg></figure> }.into_any(),
            Err(e) => view! { <p class="status error">{e}</p> }.into_any(),
        };
        view! { <ResultsTable results=r.results.clone()/> {chart} }.into_any()
    };
    let case_rows = move |list: RunCases| {
        let shares = pass_shares(&list.cases);
        let m = list.cases.first().map(|c| c.method.clone()).unwrap_or_default();
        let title = format!("Cases passing each probe, {m} (%)");
        let dist = if list.cases.is_empty() {
            ().into_any()
        } else {
            match charts::grouped_bars(&title, &[(m.clone(), shares)]) {
                Ok(svg) => view! { <figure class="chart chart-bars" id="case-chart" role="img" aria-label=title inner_html=svg></figure> }.into_any(),
                Err(e) => view! { <p class="status error">{e}</p> }.into_any(),
            }
        };
        let failing = list.cases.iter().filter(|c| !c.failed.is_empty()).count();
        view! {
            {list.note.map(|n| view! { <p class="hint">{n}</p> })}
            <p id="case-summary">{format!("{failing} of {} cases failed a probe (listed first).", list.cases.len())}</p>
            {dist}
            <div class="table-scroll">
                <table id="run-cases">
                    <caption>"Per-case token scores (%); a probe fails when any answer token is wrong (edit probes) or any top-1 token changed (locality)"</caption>
                    <thead><tr><th scope="col">"#"</th><th scope="col">"Question → target"</th>
                        <th scope="col" title="The edit question's answer read as reliability scores it: the model's top-1 token at each of the target's positions (teacher-forced), before → after the edit; runs stored before it was recorded show the data's pre-edit answer">"Answer before → after"</th><th scope="col">"Failed"</th>
                        <th scope="col">"Rel."</th><th scope="col">"T-Gen."</th><th scope="col">"M-Gen."</th>
                        <th scope="col">"T-Loc."</th><th scope="col">"M-Loc."</th><th scope="col">"Port."</th>
                        <th scope="col">"Edit ms"</th></tr></thead>
                    <tbody>
                        {list.cases.into_iter().map(|c| {
                            let class = if c.failed.is_empty() { "case" } else { "case failed" };
                            let (q, pre) = match &c.case {
                                Some(t) => (format!("{} → {}", t.question, t.target), t.pre_edit.clone().unwrap_or_else(|| "–".into())),
                                None => ("–".to_string(), "–".to_string()),
                            };
                            let answers = match (&c.answer_before, &c.answer_after) {
                                (Some(b), Some(a)) => format!("{b} → {a}"),
                                _ => pre.clone(),
                            };
                            let title = c.case.as_ref().map(|t| format!("image {}; rephrased: {}; text locality: {}; image locality: {}",
                                t.image, t.rephrase, t.loc_question, t.m_loc_question)).unwrap_or_default();
                            view! {
                                <tr class=class>
                                    <td>{c.index}</td><td title=title>{q}</td>
                                    <td class="answers" title=format!("the data's pre-edit answer: {pre}")>{answers}</td>
                                    <td class="failed-probes">{if c.failed.is_empty() { "–".to_string() } else { c.failed.join(", ") }}</td>
                                    <td>{opt(c.reliability)}</td><td>{opt(c.t_generality)}</td><td>{opt(c.m_generality)}</td>
                                    <td>{opt(c.t_locality)}</td><td>{opt(c.m_locality)}</td><td>{opt(c.portability)}</td>
                                    <td>{format!("{:.0}", c.edit_ms)}</td>
                                </tr>
                            }
                        }).collect_view()}
                    </tbody>
                </table>
            </div>
        }
    };

    view! {
        {move || match run.get() {
            None => view! { <p class="status" role="status">"Loading the run…"</p> }.into_any(),
            Some(Err(e)) => view! { <h1>"Run"</h1><p class="status error" role="alert">{format!("The run could not be loaded: {e}")}</p> }.into_any(),
            Some(Ok(r)) => {
                let methods = r.request.methods.clone();
                view! {
                    {header(&r)}
                    <section aria-labelledby="results-heading">
                        <h2 id="results-heading">"Results"</h2>
                        {results(&r)}
                    </section>
                    <section aria-labelledby="cases-heading">
                        <h2 id="cases-heading">"Cases"</h2>
                        <label class="field">"Method"
                            <select id="case-method" on:change=move |ev| method.set(event_target_value(&ev))>
                                {methods.into_iter().map(|m| {
                                    let sel = method.get_untracked() == m;
                                    view! { <option value=m.clone() selected=sel>{m.clone()}</option> }
                                }).collect_view()}
                            </select>
                        </label>
                        {move || match cases.get() {
                            None => view! { <p class="status" role="status">"Loading the cases…"</p> }.into_any(),
                            Some(Err(e)) => view! { <p class="status error" role="alert">{e}</p> }.into_any(),
                            Some(Ok(list)) => case_rows(list).into_any(),
                        }}
                    </section>
                }.into_any()
            }
        }}
    }
}
