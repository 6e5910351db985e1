//! Token buckets in the database, for server replicas that share one (PostgreSQL): one atomic upsert per request
//! refills the bucket by the time since its last use, takes a token when there is one, and says whether it did. The
//! same arithmetic as [`super::throttle::Buckets`], which a single process keeps in memory.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::AnyPool;

use super::error::ApiResult;

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Takes one token of `key`'s bucket in `scope` (`burst` tokens, refilled at `per_second`); `Err(seconds to wait)`
/// when it is empty.
pub async fn take(db: &AnyPool, scope: &str, key: &str, burst: f64, per_second: f64) -> ApiResult<Result<(), f64>> {
    // The refilled level, from the row as it was (every SET expression reads the old row).
    let level = "(CASE WHEN rate_buckets.tokens + ($4 - rate_buckets.at) * $5 > $3 THEN $3 \
                 ELSE rate_buckets.tokens + ($4 - rate_buckets.at) * $5 END)";
    let sql = format!(
        "INSERT INTO rate_buckets (scope, key, tokens, at, full_at, granted) VALUES ($1, $2, $3 - 1, $4, $4 + 1 / $5, 1) \
         ON CONFLICT (scope, key) DO UPDATE SET \
         tokens = CASE WHEN {level} >= 1 THEN {level} - 1 ELSE {level} END, \
         full_at = $4 + ($3 - CASE WHEN {level} >= 1 THEN {level} - 1 ELSE {level} END) / $5, \
         granted = CASE WHEN {level} >= 1 THEN 1 ELSE 0 END, \
         at = $4 \
         RETURNING tokens, granted"
    );
    let (tokens, granted): (f64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(scope)
        .bind(key)
        .bind(burst)
        .bind(now())
        .bind(per_second)
        .fetch_one(db)
        .await?;
    Ok(if granted == 1 { Ok(()) } else { Err(((1.0 - tokens) / per_second).ceil()) })
}

/// Seconds until `key` has a token again in `scope`, or `None` when it has one now (nothing is taken).
pub async fn wait(db: &AnyPool, scope: &str, key: &str, burst: f64, per_second: f64) -> ApiResult<Option<f64>> {
    let row: Option<(f64, f64)> = sqlx::query_as("SELECT tokens, at FROM rate_buckets WHERE scope = $1 AND key = $2")
        .bind(scope)
        .bind(key)
        .fetch_optional(db)
        .await?;
    let level = row.map_or(burst, |(tokens, at)| (tokens + (now() - at) * per_second).min(burst));
    Ok((level < 1.0).then(|| ((1.0 - level) / per_second).ceil()))
}

/// Forgets the buckets that are full again (they carry no state).
pub async fn prune(db: &AnyPool) -> ApiResult<u64> {
    Ok(sqlx::query("DELETE FROM rate_buckets WHERE full_at < $1").bind(now()).execute(db).await?.rows_affected())
}
