//! The leaderboard: every finished run's results, filterable (the filters live in the URL, so a filtered view is a
//! shareable read-only link), sortable by any column, charted (five metrics per method, mean against K, and the α,
//! K and ζ ablations), and exported as CSV or JSON. Runs on a workspace's own cases are not here: they stay private.

use leptos::prelude::*;
use leptos_router::hooks::{use_navigate, use_query_map};
use unike_shared::runs::{Leaderboard as Board, LeaderboardRow};
use unike_shared::{ablation, routes};

use crate::api;
use crate::charts;
use crate::format::pct;

const FILTERS: [&str; 4] = ["method", "task", "mode", "model"];

fn metric(r: &LeaderboardRow, col: &str) -> f64 {
    let m = &r.result.metrics;
    match col {
        "reliability" => m.reliability,
        "t_generality" => m.t_generality,
        "m_generality" => m.m_generality,
        "t_locality" => m.t_locality,
        "m_locality" => m.m_locality,
        "edit_ms" => -r.result.timing.edit_ms_median,
        _ => r.score,
    }
}

#[component]
pub fn Leaderboard() -> impl IntoView {
    let query = use_query_map();
    let qs = move || {
        let q = query.get();
        let parts: Vec<String> =
            FILTERS.iter().filter_map(|f| q.get(f).filter(|v| !v.is_empty()).map(|v| format!("{f}={v}"))).collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    };
    let board = LocalResource::new(move || {
        let path = format!("{}{}", routes::LEADERBOARD, qs());
        async move { api::get_json::<Board>(&path).await }
    });
    let all = LocalResource::new(|| api::get_json::<Board>(routes::LEADERBOARD));
    let sort = RwSignal::new("score".to_string());
    let navigate = use_navigate();
    let set_filter = move |name: &'static str, value: String| {
        let mut q = query.get_untracked();
        if value.is_empty() {
            q.remove(name);
        } else {
            q.replace(name, value);
        }
        let parts: Vec<String> = FILTERS.iter().filter_map(|f| q.get(f).map(|v| format!("{f}={v}"))).collect();
        navigate(&format!("/leaderboard?{}", parts.join("&")), Default::default());
    };
    let options = move |name: &'static str| {
        let values = all.get().and_then(|b| b.ok()).map(|b| {
            let mut v: Vec<String> = b
                .rows
                .iter()
                .map(|r| match name {
                    "method" => r.result.method.clone(),
                    "task" => r.result.task.clone(),
                    "mode" => r.result.mode.clone(),
                    _ => r.model.clone(),
                })
                .collect();
            v.sort();
            v.dedup();
            v
        });
        values.unwrap_or_default()
    };
    let filter_select = move |name: &'static str| {
        let set_filter = set_filter.clone();
        view! {
            <label class="field">{name}
                <select on:change=move |ev| set_filter(name, event_target_value(&ev))>
                    <option value="">"all"</option>
                    {move || options(name).into_iter().map(|v| {
                        let sel = query.get().get(name).as_deref() == Some(v.as_str());
                        view! { <option value=v.clone() selected=sel>{v.clone()}</option> }
                    }).collect_view()}
                </select>
            </label>
        }
    };
    let header = move |label: &'static str, col: &'static str| {
        view! {
            <th scope="col" aria-sort=move || if sort.get() == col { "descending" } else { "none" }>
                <button type="button" class="sort" on:click=move |_| sort.set(col.to_string())>{label}</button>
            </th>
        }
    };

    let content = move || {
        Suspend::new(async move {
            let b = board.await?;
            let mut rows = b.rows.clone();
            let col = sort.get();
            rows.sort_by(|a, b| metric(b, &col).total_cmp(&metric(a, &col)));
            // Charts: the best one-step result per method, and the mean against K of sequential runs.
            let mut best: Vec<(String, [f64; 5])> = Vec::new();
            for r in b.rows.iter().filter(|r| r.result.mode == "one-step") {
                if !best.iter().any(|(m, _)| *m == r.result.method) {
                    best.push((r.result.method.clone(), r.result.metrics.five()));
                }
            }
            let mut seq: Vec<(String, Vec<(usize, f64)>)> = Vec::new();
            for r in b.rows.iter().filter(|r| r.result.mode == "sequential") {
                match seq.iter_mut().find(|(m, _)| *m == r.result.method) {
                    Some((_, pts)) if !pts.iter().any(|p| p.0 == r.result.k) => pts.push((r.result.k, r.score)),
                    Some(_) => {}
                    None => seq.push((r.result.method.clone(), vec![(r.result.k, r.score)])),
                }
            }
            // Ablations (paper Fig. 4): fixed-α and K sweeps against the unswept variant, and the treatments of ζ.
            let sweeps: Vec<Result<String, String>> = ablation::sweeps(&b.rows)
                .iter()
                .map(|s| {
                    let title = format!(
                        "{}: {} ({}; dashed: {})",
                        s.base,
                        s.param.label(),
                        s.task,
                        if s.param == ablation::Param::Alpha { "adaptive α" } else { "default K" }
                    );
                    charts::sweep(&title, s.param.label(), &s.points, s.reference)
                })
                .collect();
            let zetas: Vec<Result<String, String>> = ablation::zeta(&b.rows)
                .iter()
                .map(|z| charts::grouped_bars(&format!("Treatments of ζ ({})", z.task), &z.bars))
                .collect();
            let figure = |id: String, svg: Result<String, String>| match svg {
                Ok(svg) => view! { <figure class="chart" id=id inner_html=svg></figure> }.into_any(),
                Err(e) => view! { <p class="status error">{e}</p> }.into_any(),
            };
            let ablations = sweeps
                .into_iter()
                .enumerate()
                .map(|(i, svg)| figure(format!("chart-sweep-{i}"), svg))
                .chain(zetas.into_iter().enumerate().map(|(i, svg)| figure(format!("chart-zeta-{i}"), svg)))
                .collect_view();
            let bars = (!best.is_empty())
                .then(|| charts::grouped_bars("One-step editing: the five metrics per method", &best));
            let lines =
                (!seq.is_empty()).then(|| charts::metric_vs_k("Sequential editing: mean of the five metrics", &seq));
            Ok::<_, api::ClientError>(view! {
                {bars.map(|svg| match svg {
                    Ok(svg) => view! { <figure class="chart" id="chart-bars" inner_html=svg></figure> }.into_any(),
                    Err(e) => view! { <p class="status error">{e}</p> }.into_any(),
                })}
                {lines.map(|svg| match svg {
                    Ok(svg) => view! { <figure class="chart" id="chart-k" inner_html=svg></figure> }.into_any(),
                    Err(e) => view! { <p class="status error">{e}</p> }.into_any(),
                })}
                {ablations}
                {if rows.is_empty() {
                    view! { <p>"No finished runs match. Launch one from Benchmarks."</p> }.into_any()
                } else {
                    view! {
                        <div class="table-scroll">
                            <table id="leaderboard">
                                <caption>"Finished runs (token convention, %)"</caption>
                                <thead><tr>
                                    <th scope="col">"Method"</th><th scope="col">"Task"</th><th scope="col">"Mode"</th>
                                    <th scope="col">"K"</th><th scope="col">"n"</th><th scope="col">"Model"</th>
                                    {header("Score", "score")}{header("Rel.", "reliability")}{header("T-Gen.", "t_generality")}
                                    {header("M-Gen.", "m_generality")}{header("T-Loc.", "t_locality")}
                                    {header("M-Loc.", "m_locality")}{header("Edit ms", "edit_ms")}
                                    <th scope="col">"Run"</th>
                                </tr></thead>
                                <tbody>
                                    {rows.into_iter().map(|r| {
                                        let m = r.result.metrics.clone();
                                        view! {
                                            <tr>
                                                <th scope="row">{r.result.method.clone()}</th><td>{r.result.task.clone()}</td>
                                                <td>{r.result.mode.clone()}</td><td>{r.result.k}</td><td>{r.result.n}</td>
                                                <td>{r.model.clone()}</td><td><strong>{pct(r.score)}</strong></td>
                                                <td>{pct(m.reliability)}</td><td>{pct(m.t_generality)}</td><td>{pct(m.m_generality)}</td>
                                                <td>{pct(m.t_locality)}</td><td>{pct(m.m_locality)}</td>
                                                <td>{format!("{:.0}", r.result.timing.edit_ms_median)}</td>
                                                <td><a href=routes::run(r.run_id)>{format!("#{} (seed {})", r.run_id, r.seed)}</a></td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table>
                        </div>
                    }.into_any()
                }}
            })
        })
    };

    view! {
        <h1>"Leaderboard"</h1>
        <div class="grid four">
            {filter_select("method")}{filter_select("task")}{filter_select("mode")}{filter_select("model")}
        </div>
        <p class="actions">
            <a class="button secondary" href=move || format!("{}{}", routes::LEADERBOARD_CSV, qs()) download="leaderboard.csv">"Export CSV"</a>
            <a class="button secondary" href=move || format!("{}{}", routes::LEADERBOARD, qs()) download="leaderboard.json">"Export JSON"</a>
            <a class="button secondary" href=move || format!("/leaderboard{}", qs())>"Shareable link to this view"</a>
        </p>
        <Suspense fallback=|| view! { <p class="status" role="status">"Loading the leaderboard…"</p> }>
            <ErrorBoundary fallback=|_| view! { <p class="status error" role="alert">"The leaderboard could not be loaded."</p> }>
                {content}
            </ErrorBoundary>
        </Suspense>
    }
}
