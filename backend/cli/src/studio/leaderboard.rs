//! The public, read-only leaderboard: every method result of every finished run on the world, best mean first,
//! filterable; as JSON or CSV.

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use unike_shared::runs::{Leaderboard, LeaderboardQuery, LeaderboardRow, RunRequest};
use unike_shared::BenchResult;

use super::error::{ApiErr, ApiResult};
use super::AppState;

async fn rows(st: &AppState, q: &LeaderboardQuery) -> ApiResult<Vec<LeaderboardRow>> {
    let raw: Vec<(i64, String, String, Option<String>, String, f64)> = sqlx::query_as(
        "SELECT r.id, r.model, r.request_json, r.finished_at, rr.result_json, rr.score FROM run_results rr \
         JOIN benchmark_runs r ON r.id = rr.run_id WHERE r.status = 'finished' AND (? IS NULL OR r.model = ?) \
         ORDER BY rr.score DESC, r.id, rr.method",
    )
    .bind(q.model.as_deref().filter(|m| !m.is_empty()))
    .bind(q.model.as_deref().filter(|m| !m.is_empty()))
    .fetch_all(&st.db)
    .await?;
    let want = |f: &Option<String>, v: &str| f.as_deref().is_none_or(|f| f.is_empty() || f == v);
    let mut out = Vec::new();
    for (run_id, model, req, finished_at, result, score) in raw {
        let req: RunRequest = serde_json::from_str(&req).map_err(ApiErr::internal)?;
        let result: BenchResult = serde_json::from_str(&result).map_err(ApiErr::internal)?;
        // Runs on a workspace's own cases are private to it, and not comparable with runs on the world.
        if req.data != "world" {
            continue;
        }
        if want(&q.method, &result.method) && want(&q.task, &result.task) && want(&q.mode, &result.mode) {
            out.push(LeaderboardRow {
                run_id,
                model,
                seed: req.seed,
                finished_at: finished_at.unwrap_or_default(),
                score,
                result,
            });
        }
    }
    Ok(out)
}

/// `GET /api/leaderboard`.
pub async fn json(State(st): State<AppState>, Query(q): Query<LeaderboardQuery>) -> ApiResult<Json<Leaderboard>> {
    Ok(Json(Leaderboard { rows: rows(&st, &q).await? }))
}

fn cell(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `GET /api/leaderboard.csv`.
pub async fn csv(State(st): State<AppState>, Query(q): Query<LeaderboardQuery>) -> ApiResult<impl IntoResponse> {
    let mut out = String::from(
        "run_id,model,method,task,mode,k,n,seed,reliability,t_generality,m_generality,t_locality,m_locality,portability,\
         score,edit_ms_median,finished_at\n",
    );
    for r in rows(&st, &q).await? {
        let m = &r.result.metrics;
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{:.2},{:.2},{:.2},{:.2},{:.2},{},{:.2},{:.1},{}\n",
            r.run_id,
            cell(&r.model),
            cell(&r.result.method),
            r.result.task,
            r.result.mode,
            r.result.k,
            r.result.n,
            r.seed,
            m.reliability,
            m.t_generality,
            m.m_generality,
            m.t_locality,
            m.m_locality,
            m.portability.map(|p| format!("{p:.2}")).unwrap_or_default(),
            r.score,
            r.result.timing.edit_ms_median,
            r.finished_at
        ));
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"leaderboard.csv\""),
        ],
        out,
    ))
}
