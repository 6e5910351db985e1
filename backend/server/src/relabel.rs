//! One-time data migrations that SQL alone cannot express, run after the SQL migrations and recorded in
//! `data_migrations` (migration 0007).
//!
//! `alpha_meaning`: before 2026-12-06 a UniKE variant's fixed `alpha=X` weighted the input's own attention output;
//! it now names the in-context knowledge's share, the paper's meaning (`unike_core::edit::unike::latent`). Stored
//! method names (applied edits, runs' requests, results and per-case scores) are renamed to `alpha=1−X`, so every
//! stored figure keeps describing the same mixture under today's name. Patches on disk convert themselves when read
//! (format `unike-patch/1`).

use anyhow::{Context, Result};
use sqlx::{AnyPool, Row};
use unike_core::edit::unike::variant::from_input_weight_alpha;

const ALPHA_MEANING: &str = "alpha_meaning";

/// Runs every data migration not yet recorded, each in one transaction.
pub async fn run(db: &AnyPool) -> Result<()> {
    let done: Option<(String,)> = sqlx::query_as("SELECT name FROM data_migrations WHERE name = $1")
        .bind(ALPHA_MEANING)
        .fetch_optional(db)
        .await?;
    if done.is_none() {
        alpha_meaning(db).await.context("renaming stored fixed-α UniKE variants")?;
    }
    Ok(())
}

/// `json`'s string field `key` renamed by [`from_input_weight_alpha`]; `None` when nothing changes.
fn rename_field(json: &str, key: &str) -> Option<String> {
    let mut v: serde_json::Value = serde_json::from_str(json).ok()?;
    let new = from_input_weight_alpha(v.get(key)?.as_str()?)?;
    v[key] = serde_json::Value::String(new);
    serde_json::to_string(&v).ok()
}

/// A run request's `methods` list renamed; `None` when nothing changes.
fn rename_methods(json: &str) -> Option<String> {
    let mut v: serde_json::Value = serde_json::from_str(json).ok()?;
    let mut changed = false;
    for m in v.get_mut("methods")?.as_array_mut()? {
        if let Some(new) = m.as_str().and_then(from_input_weight_alpha) {
            *m = serde_json::Value::String(new);
            changed = true;
        }
    }
    changed.then(|| serde_json::to_string(&v).ok()).flatten()
}

async fn alpha_meaning(db: &AnyPool) -> Result<()> {
    // Alone among writers, and checked again inside: replicas starting together on one database run it once.
    let mut tx = crate::store::write_tx(db).await?;
    let done: Option<(String,)> = sqlx::query_as("SELECT name FROM data_migrations WHERE name = $1")
        .bind(ALPHA_MEANING)
        .fetch_optional(&mut *tx)
        .await?;
    if done.is_some() {
        return Ok(());
    }
    for row in sqlx::query("SELECT id, method, result_json FROM applied_edits WHERE method LIKE 'unike:%alpha=%'")
        .fetch_all(&mut *tx)
        .await?
    {
        let (id, method, result): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        let Some(new) = from_input_weight_alpha(&method) else { continue };
        let result = rename_field(&result, "method").unwrap_or(result);
        sqlx::query("UPDATE applied_edits SET method = $1, result_json = $2 WHERE id = $3")
            .bind(new)
            .bind(result)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    for row in sqlx::query("SELECT id, request_json FROM benchmark_runs WHERE request_json LIKE '%alpha=%'")
        .fetch_all(&mut *tx)
        .await?
    {
        let (id, request): (i64, String) = (row.get(0), row.get(1));
        if let Some(new) = rename_methods(&request) {
            sqlx::query("UPDATE benchmark_runs SET request_json = $1 WHERE id = $2")
                .bind(new)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
    }
    for row in sqlx::query("SELECT run_id, method, result_json FROM run_results WHERE method LIKE 'unike:%alpha=%'")
        .fetch_all(&mut *tx)
        .await?
    {
        let (run, method, result): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        let Some(new) = from_input_weight_alpha(&method) else { continue };
        let result = rename_field(&result, "method").unwrap_or(result);
        // A sweep holds `alpha=0.2` and `alpha=0.8` side by side: rename through a marked name (no method name
        // starts with `#`), so that swapping two names never collides on the (run, method) keys.
        let marked = format!("#{new}");
        sqlx::query("UPDATE run_results SET method = $1, result_json = $2 WHERE run_id = $3 AND method = $4")
            .bind(&marked)
            .bind(result)
            .bind(run)
            .bind(&method)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE run_cases SET method = $1 WHERE run_id = $2 AND method = $3")
            .bind(&marked)
            .bind(run)
            .bind(&method)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE run_results SET method = substr(method, 2) WHERE method LIKE '#%'").execute(&mut *tx).await?;
    sqlx::query("UPDATE run_cases SET method = substr(method, 2) WHERE method LIKE '#%'").execute(&mut *tx).await?;
    sqlx::query("INSERT INTO data_migrations (name) VALUES ($1)").bind(ALPHA_MEANING).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written before the change (migrations up to 0006, a run of a fixed-α sweep and an applied edit)
    /// reads with today's names after it; a second start changes nothing.
    #[tokio::test]
    async fn stored_fixed_alpha_variants_are_renamed_once() -> Result<()> {
        sqlx::any::install_default_drivers();
        let db = sqlx::any::AnyPoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
        for m in sqlx::migrate!("./migrations/sqlite").iter() {
            if m.version == 7 {
                sqlx::raw_sql(
                    "INSERT INTO users (id, username) VALUES (1, 'a'); \
                     INSERT INTO workspaces (id, name) VALUES (1, 'w'); \
                     INSERT INTO benchmark_runs (id, workspace_id, author_id, model, request_json, status) VALUES \
                       (1, 1, 1, 'default', '{\"methods\":[\"unike:alpha=0.8\",\"unike\",\"ft\"],\"n\":5}', 'finished'); \
                     INSERT INTO run_results (run_id, method, result_json, score) VALUES \
                       (1, 'unike:alpha=0.8', '{\"method\":\"unike:alpha=0.8\",\"n\":5}', 50), \
                       (1, 'unike:alpha=0.2', '{\"method\":\"unike:alpha=0.2\",\"n\":5}', 40), \
                       (1, 'unike', '{\"method\":\"unike\",\"n\":5}', 60); \
                     INSERT INTO run_cases (run_id, method, case_index, edit_ms, m_locality) VALUES \
                       (1, 'unike:alpha=0.8', 0, 1, 90), (1, 'unike:alpha=0.2', 0, 1, 70), (1, 'unike', 0, 1, 80); \
                     INSERT INTO applied_edits (id, workspace_id, author_id, method, seed, patch_dir, result_json) VALUES \
                       (1, 1, 1, 'unike:k=3/alpha=0.25', 0, 'p', '{\"method\":\"unike:k=3/alpha=0.25\"}');",
                )
                .execute(&db)
                .await?;
            }
            sqlx::raw_sql(m.sql.clone()).execute(&db).await?;
        }
        for _ in 0..2 {
            run(&db).await?;
            // The two fixed α swap names; each keeps its own figures.
            let rows: Vec<(String, f64, String)> =
                sqlx::query_as("SELECT method, score, result_json FROM run_results ORDER BY method")
                    .fetch_all(&db)
                    .await?;
            let names: Vec<(&str, f64)> = rows.iter().map(|(m, s, _)| (m.as_str(), *s)).collect();
            assert_eq!(names, [("unike", 60.0), ("unike:alpha=0.2", 50.0), ("unike:alpha=0.8", 40.0)]);
            assert!(rows[1].2.contains("unike:alpha=0.2") && rows[2].2.contains("unike:alpha=0.8"), "{rows:?}");
            let cases: Vec<(String, f64)> =
                sqlx::query_as("SELECT method, m_locality FROM run_cases ORDER BY method").fetch_all(&db).await?;
            let cases: Vec<(&str, f64)> = cases.iter().map(|(m, s)| (m.as_str(), *s)).collect();
            assert_eq!(cases, [("unike", 80.0), ("unike:alpha=0.2", 90.0), ("unike:alpha=0.8", 70.0)]);
            let (request,): (String,) =
                sqlx::query_as("SELECT request_json FROM benchmark_runs").fetch_one(&db).await?;
            assert!(request.contains("[\"unike:alpha=0.2\",\"unike\",\"ft\"]"), "{request}");
            let (method, result): (String, String) =
                sqlx::query_as("SELECT method, result_json FROM applied_edits").fetch_one(&db).await?;
            assert_eq!(method, "unike:alpha=0.75/k=3");
            assert!(result.contains("unike:alpha=0.75/k=3"), "{result}");
        }
        Ok(())
    }
}
