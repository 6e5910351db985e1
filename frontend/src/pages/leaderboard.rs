//! The leaderboard: every finished run's results, filterable (the filters live in the URL, so a filtered view is a
//! shareable read-only link), sortable by any column, charted (five metrics per method, mean against K, and the α,
//! K and ζ ablations), and exported as CSV or JSON. Runs on a workspace's own cases are not here: they stay private.
//! A fresh studio starts with the project's committed results as reference rows (`source=reference`).

use leptos::prelude::*;
use leptos_router::hooks::{use_navigate, use_query_map};
use unike_shared::runs::{Leaderboard as Board, LeaderboardRow};
use unike_shared::{ablation, routes};

use crate::api;
use crate::charts;
use crate::format::pct;

const FILTERS: [&str; 6] = ["method", "task", "mode", "model", "convention", "source"];

/// Most methods in one bar chart.
const BARS_MAX: usize = 16;

/// Sortable columns: query value, header label, and whether the first click sorts ascending (text, and times where
/// less is better) rather than descending (scores).
const COLUMNS: [(&str, &str, bool); 14] = [
    ("method", "Method", true),
    ("task", "Task", true),
    ("mode", "Mode", true),
    ("k", "K", true),
    ("n", "n", false),
    ("model", "Model", true),
    ("score", "Score", false),
    ("reliability", "Rel.", false),
    ("t_generality", "T-Gen.", false),
    ("m_generality", "M-Gen.", false),
    ("t_locality", "T-Loc.", false),
    ("m_locality", "M-Loc.", false),
    ("edit_ms", "Edit ms", true),
    ("convention", "Convention", true),
];

/// Compares two rows by column `col`, ascending.
fn compare(a: &LeaderboardRow, b: &LeaderboardRow, col: &str) -> std::cmp::Ordering {
    let text = |r: &LeaderboardRow| match col {
        "method" => Some(r.result.method.clone()),
        "task" => Some(r.result.task.clone()),
        "mode" => Some(r.result.mode.clone()),
        "model" => Some(r.model.clone()),
        "convention" => Some(r.convention.as_str().to_string()),
        _ => None,
    };
    if let (Some(x), Some(y)) = (text(a), text(b)) {
        return x.cmp(&y);
    }
    let num = |r: &LeaderboardRow| {
        let m = &r.result.metrics;
        match col {
            "k" => r.result.k as f64,
            "n" => r.result.n as f64,
            "reliability" => m.reliability,
            "t_generality" => m.t_generality,
            "m_generality" => m.m_generality,
            "t_locality" => m.t_locality,
            "m_locality" => m.m_locality,
            "edit_ms" => r.result.timing.edit_ms_median,
            _ => r.score,
        }
    };
    num(a).total_cmp(&num(b))
}

/// `?k=v&...` of the non-empty pairs, URL-encoded (method names such as `unike:intrinsic+latent/k=5` hold `+`).
fn query_string<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let enc = |s: &str| String::from(js_sys::encode_uri_component(s));
    let parts: Vec<String> =
        pairs.into_iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{}={}", enc(k), enc(&v))).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// The charts' groups: one per (task, model), in the order the rows first show them.
fn groups(rows: &[LeaderboardRow], mode: &str) -> Vec<((String, String), Vec<LeaderboardRow>)> {
    let mut out: Vec<((String, String), Vec<LeaderboardRow>)> = Vec::new();
    for r in rows.iter().filter(|r| r.result.mode == mode) {
        let key = (r.result.task.clone(), r.model.clone());
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(r.clone()),
            None => out.push((key, vec![r.clone()])),
        }
    }
    out
}

fn figure(id: String, class: &'static str, label: String, svg: Result<String, String>) -> AnyView {
    match svg {
        Ok(svg) => {
            view! { <figure class=format!("chart {class}") id=id role="img" aria-label=label inner_html=svg></figure> }
                .into_any()
        }
        Err(e) => view! { <p class="status error">{e}</p> }.into_any(),
    }
}

#[component]
pub fn Leaderboard() -> impl IntoView {
    let query = use_query_map();
    // The filters of the view (the server applies them).
    let filters = move || query.with(|q| FILTERS.map(|f| (f, q.get(f).unwrap_or_default())));
    let qs = move || query_string(filters());
    let sort = move || query.with(|q| q.get("sort")).filter(|c| COLUMNS.iter().any(|(k, ..)| *k == c.as_str()));
    let sort_col = move || sort().unwrap_or_else(|| "score".into());
    let ascending = move || {
        let col = sort_col();
        match query.with(|q| q.get("dir")).as_deref() {
            Some("asc") => true,
            Some("desc") => false,
            _ => COLUMNS.iter().any(|(k, _, asc)| *k == col && *asc),
        }
    };
    // The whole view (filters and sort) as a query string: the shareable link.
    let view_qs = move || {
        let mut pairs: Vec<(&str, String)> = filters().to_vec();
        if let Some(col) = sort() {
            pairs.push(("sort", col));
            pairs.push(("dir", if ascending() { "asc" } else { "desc" }.into()));
        }
        query_string(pairs)
    };
    let board = LocalResource::new(move || {
        let path = format!("{}{}", routes::LEADERBOARD, qs());
        async move { api::get_json::<Board>(&path).await }
    });
    let all = LocalResource::new(|| api::get_json::<Board>(routes::LEADERBOARD));
    let navigate = use_navigate();
    // Goes to this view with the filters changed by `filter` and the sort `(column, ascending)`.
    let go = move |filter: Option<(&'static str, String)>, sorted: Option<(String, bool)>| {
        let mut pairs: Vec<(&str, String)> = filters().to_vec();
        if let Some((name, value)) = filter {
            pairs.retain(|(f, _)| *f != name);
            pairs.push((name, value));
        }
        if let Some((col, asc)) = sorted {
            pairs.push(("sort", col));
            pairs.push(("dir", if asc { "asc" } else { "desc" }.into()));
        }
        navigate(&format!("/leaderboard{}", query_string(pairs)), Default::default());
    };
    let set_filter = {
        let go = go.clone();
        move |name: &'static str, value: String| go(Some((name, value)), sort().map(|c| (c, ascending())))
    };
    let set_sort = move |col: &'static str| {
        let asc = if sort_col() == col { !ascending() } else { COLUMNS.iter().any(|(k, _, asc)| *k == col && *asc) };
        go(None, Some((col.to_string(), asc)));
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
                    "convention" => r.convention.as_str().to_string(),
                    "source" => if r.reference.is_some() { "reference" } else { "studio" }.to_string(),
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
                <select id=format!("filter-{name}") on:change=move |ev| set_filter(name, event_target_value(&ev))>
                    <option value="">"all"</option>
                    {move || options(name).into_iter().map(|v| {
                        let sel = query.get().get(name).as_deref() == Some(v.as_str());
                        view! { <option value=v.clone() selected=sel>{v.clone()}</option> }
                    }).collect_view()}
                </select>
            </label>
        }
    };
    // Header buttons live outside the rows' re-rendering, so a sorted column keeps the keyboard focus.
    let header = move |(col, label, _): (&'static str, &'static str, bool)| {
        let set_sort = set_sort.clone();
        let state = move || match (sort_col() == col, ascending()) {
            (false, _) => "none",
            (true, true) => "ascending",
            (true, false) => "descending",
        };
        let arrow = move || match state() {
            "ascending" => " ▲",
            "descending" => " ▼",
            _ => "",
        };
        view! {
            <th scope="col" aria-sort=state>
                <button type="button" class="sort" id=format!("sort-{col}") on:click=move |_| set_sort(col)>
                    {label}<span aria-hidden="true">{arrow}</span>
                </button>
            </th>
        }
    };

    let charts = move || {
        Suspend::new(async move {
            let b = board.await?;
            let mut out = Vec::new();
            // The best one-step result per method, and the mean against K of sequential runs, per task and model.
            for (i, ((task, model), rows)) in groups(&b.rows, "one-step").into_iter().enumerate() {
                let mut best: Vec<(String, [f64; 5])> = Vec::new();
                for r in &rows {
                    if !best.iter().any(|(m, _)| *m == r.result.method) {
                        best.push((r.result.method.clone(), r.result.metrics.five()));
                    }
                }
                // Methods, not their variants (the ablation charts below show those), at most the best 16: a
                // fresh studio's reference rows alone hold over thirty.
                let plain: Vec<(String, [f64; 5])> = best.iter().filter(|(m, _)| !m.contains(':')).cloned().collect();
                let mut best = if plain.is_empty() { best } else { plain };
                let cut = best.len() > BARS_MAX;
                best.truncate(BARS_MAX);
                let title = format!(
                    "One-step editing, {task} ({model}): the five metrics per method{}",
                    if cut { format!(" (best {BARS_MAX})") } else { String::new() }
                );
                out.push(figure(
                    format!("chart-bars-{i}"),
                    "chart-bars",
                    title.clone(),
                    charts::grouped_bars(&title, &best),
                ));
            }
            // Sequential runs against K, and VLKEB's gap protocol against the gap.
            let kinds = [
                ("sequential", "Sequential editing", "against K", "K (edits in sequence)", "chart-k"),
                (
                    "sequential-gap",
                    "Sequential editing with a gap (VLKEB)",
                    "against the gap",
                    "gap (later edits)",
                    "chart-gap",
                ),
            ];
            for (mode, what, against, x_desc, class) in kinds {
                for (i, ((task, model), rows)) in groups(&b.rows, mode).into_iter().enumerate() {
                    let mut seq: Vec<(String, Vec<(usize, f64)>)> = Vec::new();
                    for r in &rows {
                        match seq.iter_mut().find(|(m, _)| *m == r.result.method) {
                            Some((_, pts)) if !pts.iter().any(|p| p.0 == r.result.k) => pts.push((r.result.k, r.score)),
                            Some(_) => {}
                            None => seq.push((r.result.method.clone(), vec![(r.result.k, r.score)])),
                        }
                    }
                    let title = format!("{what}, {task} ({model}): mean of the five metrics {against}");
                    let svg = charts::metric_vs_k(&title, x_desc, &seq);
                    out.push(figure(format!("{class}-{i}"), class, title, svg));
                }
            }
            // Ablations (paper Fig. 4): fixed-α and K sweeps against the unswept variant, and the treatments of ζ.
            for (i, s) in ablation::sweeps(&b.rows).iter().enumerate() {
                let title = format!(
                    "{}: {} ({}; dashed: {})",
                    s.base,
                    s.param.label(),
                    s.task,
                    if s.param == ablation::Param::Alpha { "adaptive α" } else { "default K" }
                );
                let svg = charts::sweep(&title, s.param.label(), &s.points, s.reference);
                out.push(figure(format!("chart-sweep-{i}"), "chart-sweep", title, svg));
            }
            for (i, z) in ablation::zeta(&b.rows).iter().enumerate() {
                let title = format!("Treatments of ζ ({})", z.task);
                out.push(figure(
                    format!("chart-zeta-{i}"),
                    "chart-zeta",
                    title.clone(),
                    charts::grouped_bars(&title, &z.bars),
                ));
            }
            Ok::<_, api::ClientError>(out.into_iter().collect_view())
        })
    };
    let rows = move || {
        Suspend::new(async move {
            let b = board.await?;
            let mut rows = b.rows.clone();
            let col = sort_col();
            rows.sort_by(|a, b| compare(a, b, &col));
            if !ascending() {
                rows.reverse();
            }
            if rows.is_empty() {
                return Ok(view! {
                    <tr><td colspan="15">"No finished runs match. Launch one from Benchmarks."</td></tr>
                }
                .into_any());
            }
            Ok::<_, api::ClientError>(
                rows.into_iter()
                    .map(|r| {
                        let m = r.result.metrics.clone();
                        view! {
                            <tr class="result">
                                <th scope="row">{r.result.method.clone()}</th><td>{r.result.task.clone()}</td>
                                <td>{r.result.mode.clone()}</td><td>{r.result.k}</td><td>{r.result.n}</td>
                                <td>{r.model.clone()}</td><td><strong>{pct(r.score)}</strong></td>
                                <td>{pct(m.reliability)}</td><td>{pct(m.t_generality)}</td><td>{pct(m.m_generality)}</td>
                                <td>{pct(m.t_locality)}</td><td>{pct(m.m_locality)}</td>
                                <td>{format!("{:.0}", r.result.timing.edit_ms_median)}</td>
                                <td title=r.convention_label.clone()>{r.convention.as_str()}</td>
                                <td>
                                    <a href=format!("/runs/{}", r.run_id) title="The run's page">{format!("#{} · seed {}", r.run_id, r.seed)}</a>
                                    {r.reference.clone().map(|s| view! { " " <span class="badge reference" title=s>"reference"</span> })}
                                </td>
                            </tr>
                        }
                    })
                    .collect_view()
                    .into_any(),
            )
        })
    };
    let failed = |errors: ArcRwSignal<Errors>| {
        let text = move || errors.get().into_iter().map(|(_, e)| e.to_string()).collect::<Vec<_>>().join("; ");
        view! { <p class="status error" role="alert">"The leaderboard could not be loaded: " {text}</p> }
    };

    view! {
        <h1>"Leaderboard"</h1>
        <div class="grid four">
            {filter_select("method")}{filter_select("task")}{filter_select("mode")}{filter_select("model")}
            {filter_select("convention")}{filter_select("source")}
        </div>
        <p class="actions">
            <a class="button secondary" href=move || format!("{}{}", routes::LEADERBOARD_CSV, qs()) download="leaderboard.csv">"Export CSV"</a>
            <a class="button secondary" href=move || format!("{}{}", routes::LEADERBOARD, qs()) download="leaderboard.json">"Export JSON"</a>
            <a class="button secondary" id="share-link" href=move || format!("/leaderboard{}", view_qs())>"Shareable link to this view"</a>
        </p>
        <Suspense fallback=|| view! { <p class="status" role="status">"Loading the leaderboard…"</p> }>
            <ErrorBoundary fallback=failed>{charts}</ErrorBoundary>
        </Suspense>
        <div class="table-scroll">
            <table id="leaderboard">
                <caption>"Finished runs (token convention, %; v1 rows: answer + end of sequence, M-Loc. top-1; v2: answer tokens, M-Loc. top-10 — not comparable). Reference rows are the project's committed results (results/, labelled with their commit); the others are runs launched in this studio."</caption>
                <thead><tr>
                    {COLUMNS.into_iter().map(header).collect_view()}
                    <th scope="col">"Run"</th>
                </tr></thead>
                <tbody>
                    <Suspense fallback=|| view! { <tr><td colspan="15" role="status">"Loading…"</td></tr> }>
                        <ErrorBoundary fallback=|_| view! { <tr><td colspan="15">"–"</td></tr> }>{rows}</ErrorBoundary>
                    </Suspense>
                </tbody>
            </table>
        </div>
    }
}
