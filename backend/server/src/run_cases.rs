//! A run's cases for its page: the texts of the cases it edits (recorded at launch, so that they outlive the run's
//! data snapshot) joined with each method's per-case scores, the failing cases first.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use unike_pipeline::data::DataSource;
use unike_shared::runs::{CaseText, RunCase, RunCases, RunCasesQuery, RunRequest};

use super::error::{ApiErr, ApiResult};
use super::AppState;

/// Characters kept of each recorded text (world cases are far shorter; workspace cases are capped on entry too).
const TEXT_MAX: usize = 500;

fn clip(s: &str) -> String {
    s.chars().take(TEXT_MAX).collect()
}

/// The texts of the cases a run of `req` edits, in its order, drawn from `data` as the run will draw them (`None`
/// when they cannot be drawn: the run itself then says why).
pub fn texts(data: &DataSource, req: &RunRequest) -> Option<Vec<CaseText>> {
    let cfg = super::runs::config(req, req.methods.clone()).ok()?;
    let (_, cases) = unike_pipeline::bench::drawn_cases(None, data, &cfg).ok()?;
    let name = |p: &std::path::Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Some(
        cases
            .iter()
            .map(|c| CaseText {
                question: clip(&c.prompt),
                target: clip(&c.target),
                pre_edit: c.pre_edit.as_deref().map(clip),
                image: clip(&name(&c.image)),
                rephrase: clip(&c.rephrase_prompt),
                loc_question: clip(&c.loc_question),
                m_loc_question: clip(&c.m_loc_question),
            })
            .collect(),
    )
}

/// The probes a case failed (see [`RunCase::failed`]).
fn failed(c: &RunCase) -> Vec<String> {
    let below = |v: Option<f64>| v.is_some_and(|v| v < 100.0 - 1e-6);
    let m_loc = c.m_locality_top1.or(c.m_locality);
    [
        ("reliability", c.reliability),
        ("t_generality", c.t_generality),
        ("m_generality", c.m_generality),
        ("portability", c.portability),
        ("t_locality", c.t_locality),
        ("m_locality", m_loc),
    ]
    .into_iter()
    .filter(|(_, v)| below(*v))
    .map(|(n, _)| n.to_string())
    .collect()
}

/// Mean of a case's scored probes (for ordering).
fn mean(c: &RunCase) -> f64 {
    let v: Vec<f64> =
        [c.reliability, c.t_generality, c.m_generality, c.t_locality, c.m_locality].into_iter().flatten().collect();
    if v.is_empty() {
        100.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// A stored case: index, edit time, the seven token scores, the answers before and after.
type Row = (
    i64,
    f64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<String>,
    Option<String>,
);

/// `GET /api/runs/{id}/cases`: whoever may read the run.
pub async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<RunCasesQuery>,
) -> ApiResult<Json<RunCases>> {
    let run = super::runs::readable(&st, &headers, id).await?;
    let method = match q.method.as_deref().filter(|m| !m.is_empty()) {
        Some(m) if run.request.methods.iter().any(|x| x == m) => m.to_string(),
        Some(m) => return Err(ApiErr::not_found(format!("method {m:?} in run {id}"))),
        None => match run.request.methods.first() {
            Some(m) => m.clone(),
            None => return Ok(Json(RunCases { cases: vec![], note: Some("the run has no methods".into()) })),
        },
    };
    let stored: Option<Option<String>> = sqlx::query_scalar("SELECT cases_json FROM benchmark_runs WHERE id = $1")
        .bind(id)
        .fetch_optional(&st.db)
        .await?;
    let texts: Vec<CaseText> = match stored.flatten() {
        Some(j) => serde_json::from_str(&j).map_err(ApiErr::internal)?,
        None => vec![],
    };
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT case_index, edit_ms, reliability, t_generality, m_generality, t_locality, m_locality, portability, \
         m_locality_top1, answer_before, answer_after FROM run_cases WHERE run_id = $1 AND method = $2 \
         ORDER BY case_index",
    )
    .bind(id)
    .bind(&method)
    .fetch_all(&st.db)
    .await?;
    let mut cases: Vec<RunCase> = rows
        .into_iter()
        .map(|(i, edit_ms, rel, tg, mg, tl, ml, port, ml1, answer_before, answer_after)| {
            let mut c = RunCase {
                method: method.clone(),
                index: i as usize,
                case: texts.get(i as usize).cloned(),
                edit_ms,
                reliability: rel,
                t_generality: tg,
                m_generality: mg,
                t_locality: tl,
                m_locality: ml,
                portability: port,
                m_locality_top1: ml1,
                answer_before,
                answer_after,
                failed: vec![],
            };
            c.failed = failed(&c);
            c
        })
        .collect();
    cases.sort_by(|a, b| {
        b.failed.len().cmp(&a.failed.len()).then(mean(a).total_cmp(&mean(b))).then(a.index.cmp(&b.index))
    });
    let note = if run.reference.is_some() {
        Some("a reference run keeps only its tables (results/*/SECTION.json), not its cases".to_string())
    } else if cases.is_empty() {
        Some(format!("no case of {method} is stored yet"))
    } else if texts.is_empty() {
        Some("this run did not record its cases' texts (runs before they were recorded)".to_string())
    } else {
        None
    };
    Ok(Json(RunCases { cases, note }))
}
