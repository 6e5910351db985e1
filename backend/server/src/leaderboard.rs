//! The public, read-only leaderboard: every method result of every finished run on the world, best mean first,
//! filterable; as JSON or CSV. Each row says the metric convention it was computed with (rows stored before
//! conventions were recorded are `v1`); rows of different conventions are not comparable.

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use unike_shared::runs::{Leaderboard, LeaderboardQuery, LeaderboardRow, RunRequest, SOURCE_REFERENCE, SOURCE_STUDIO};
use unike_shared::{BenchResult, MetricConvention};

use super::error::{ApiErr, ApiResult};
use super::AppState;

async fn rows(st: &AppState, q: &LeaderboardQuery) -> ApiResult<Vec<LeaderboardRow>> {
    type Raw = (i64, String, String, Option<String>, String, f64, String, Option<String>);
    let raw: Vec<Raw> = sqlx::query_as(
        "SELECT r.id, r.model, r.request_json, r.finished_at, rr.result_json, rr.score, rr.convention, r.reference \
         FROM run_results rr \
         JOIN benchmark_runs r ON r.id = rr.run_id WHERE r.status = 'finished' AND ($1 IS NULL OR r.model = $2) \
         ORDER BY rr.score DESC, r.id, rr.method",
    )
    .bind(q.model.as_deref().filter(|m| !m.is_empty()))
    .bind(q.model.as_deref().filter(|m| !m.is_empty()))
    .fetch_all(&st.db)
    .await?;
    let want = |f: &Option<String>, v: &str| f.as_deref().is_none_or(|f| f.is_empty() || f == v);
    let mut out = Vec::new();
    let source = q.source.as_deref().filter(|s| !s.is_empty());
    if let Some(s) = source.filter(|s| ![SOURCE_REFERENCE, SOURCE_STUDIO].contains(s)) {
        return Err(ApiErr::bad_request(format!("unknown source {s:?} ({SOURCE_REFERENCE}, {SOURCE_STUDIO})")));
    }
    for (run_id, model, req, finished_at, result, score, convention, reference) in raw {
        let from = if reference.is_some() { SOURCE_REFERENCE } else { SOURCE_STUDIO };
        if source.is_some_and(|s| s != from) {
            continue;
        }
        let req: RunRequest = serde_json::from_str(&req).map_err(ApiErr::internal)?;
        let mut result: BenchResult = serde_json::from_str(&result).map_err(ApiErr::internal)?;
        let convention = MetricConvention::parse(&convention)
            .ok_or_else(|| ApiErr::internal(format!("unknown metric convention {convention:?}")))?;
        result.convention = convention;
        // Runs on a workspace's own cases are private to it, and not comparable with runs on the world.
        if req.data != "world" {
            continue;
        }
        if want(&q.method, &result.method)
            && want(&q.task, &result.task)
            && want(&q.mode, &result.mode)
            && want(&q.convention, convention.as_str())
        {
            out.push(LeaderboardRow {
                run_id,
                model,
                seed: req.seed,
                finished_at: finished_at.unwrap_or_default(),
                score,
                convention,
                convention_label: convention.label().to_string(),
                reference,
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
        "run_id,model,method,task,mode,k,n,seed,convention,reliability,t_generality,m_generality,t_locality,m_locality,\
         portability,portability_base,m_locality_top1,score,edit_ms_median,finished_at,source\n",
    );
    for r in rows(&st, &q).await? {
        let m = &r.result.metrics;
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{:.2},{:.2},{:.2},{:.2},{:.2},{},{},{},{:.2},{:.1},{},{}\n",
            r.run_id,
            cell(&r.model),
            cell(&r.result.method),
            r.result.task,
            r.result.mode,
            r.result.k,
            r.result.n,
            r.seed,
            r.convention.as_str(),
            m.reliability,
            m.t_generality,
            m.m_generality,
            m.t_locality,
            m.m_locality,
            m.portability.map(|p| format!("{p:.2}")).unwrap_or_default(),
            m.portability_base.map(|p| format!("{p:.2}")).unwrap_or_default(),
            m.m_locality_top1.map(|p| format!("{p:.2}")).unwrap_or_default(),
            r.score,
            r.result.timing.edit_ms_median,
            r.finished_at,
            cell(r.reference.as_deref().unwrap_or(SOURCE_STUDIO))
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

#[cfg(test)]
mod tests {
    /// Results stored before migration 0005 read as convention v1; results stored after carry the one written.
    #[tokio::test]
    async fn results_stored_before_the_convention_column_are_v1() -> anyhow::Result<()> {
        sqlx::any::install_default_drivers();
        let db = sqlx::any::AnyPoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
        for m in sqlx::migrate!("./migrations/sqlite").iter() {
            if m.version == 5 {
                sqlx::raw_sql(
                    "INSERT INTO users (id, username) VALUES (1, 'a'); \
                     INSERT INTO workspaces (id, name) VALUES (1, 'w'); \
                     INSERT INTO benchmark_runs (id, workspace_id, author_id, model, request_json, status) \
                     VALUES (1, 1, 1, 'default', '{}', 'finished'); \
                     INSERT INTO run_results (run_id, method, result_json, score) VALUES (1, 'ft', '{}', 50); \
                     INSERT INTO run_cases (run_id, method, case_index, edit_ms, m_locality) VALUES (1, 'ft', 0, 1, 90);",
                )
                .execute(&db)
                .await?;
            }
            sqlx::raw_sql(m.sql.clone()).execute(&db).await?;
        }
        sqlx::query("INSERT INTO run_results (run_id, method, result_json, score, convention) VALUES (1, 'ike', '{}', 40, 'v2')")
            .execute(&db)
            .await?;
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT method, convention FROM run_results ORDER BY method").fetch_all(&db).await?;
        assert_eq!(rows, [("ft".to_string(), "v1".to_string()), ("ike".to_string(), "v2".to_string())]);
        let case: (String, Option<f64>) =
            sqlx::query_as("SELECT convention, m_locality_top1 FROM run_cases").fetch_one(&db).await?;
        assert_eq!(case, ("v1".to_string(), None));
        Ok(())
    }
}
