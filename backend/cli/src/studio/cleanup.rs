//! The periodic clean-up (issue 16): what visitors leave behind is removed instead of kept forever. Every
//! [`EVERY`]: expired sessions; demo guests without a live session whose account is older than [`GUEST_TTL`], with
//! their sandboxes (edits, cases, runs, and the patch and run files on disk); and the rate-limit buckets that have
//! refilled (they carry no state).

use std::time::Duration;

use super::error::ApiResult;
use super::{run_data, AppState};

/// How often the clean-up runs.
pub const EVERY: Duration = Duration::from_secs(600);
/// How long a demo guest (and its sandbox) is kept after its last session ended.
pub const GUEST_TTL: &str = "-1 day";

/// What one clean-up removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub sessions: u64,
    pub guests: usize,
    pub workspaces: usize,
}

/// Runs [`sweep`] every [`EVERY`] for as long as the server runs.
pub fn spawn(st: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            match sweep(&st).await {
                Ok(s) if s != Swept::default() => eprintln!(
                    "studio: clean-up removed {} expired session(s), {} demo guest(s) and {} sandbox(es)",
                    s.sessions, s.guests, s.workspaces
                ),
                Ok(_) => {}
                Err(e) => eprintln!("studio: clean-up failed: {}", e.message),
            }
        }
    });
}

/// One clean-up pass (see the module note).
pub async fn sweep(st: &AppState) -> ApiResult<Swept> {
    let sessions = sqlx::query("DELETE FROM sessions WHERE expires_at <= strftime('%Y-%m-%dT%H:%M:%SZ', 'now')")
        .execute(&st.db)
        .await?
        .rows_affected();
    let mut swept = Swept { sessions, ..Swept::default() };
    // Guests past their time with no live session (expired ones are gone above) and no unfinished run.
    let guests: Vec<i64> = sqlx::query_scalar(
        "SELECT u.id FROM users u WHERE u.guest = 1 \
         AND u.created_at < strftime('%Y-%m-%dT%H:%M:%SZ', 'now', ?) \
         AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.user_id = u.id) \
         AND NOT EXISTS (SELECT 1 FROM benchmark_runs r WHERE r.author_id = u.id AND r.status IN ('queued', 'running'))",
    )
    .bind(GUEST_TTL)
    .fetch_all(&st.db)
    .await?;
    for guest in guests {
        let mut tx = super::write_tx(&st.db).await?;
        let sandboxes: Vec<i64> = sqlx::query_scalar(
            "SELECT w.id FROM workspaces w JOIN memberships m ON m.workspace_id = w.id \
             WHERE m.user_id = ? AND w.sandbox = 1",
        )
        .bind(guest)
        .fetch_all(&mut *tx)
        .await?;
        let mut runs: Vec<i64> = Vec::new();
        for ws in &sandboxes {
            runs.extend(
                sqlx::query_scalar::<_, i64>("SELECT id FROM benchmark_runs WHERE workspace_id = ?")
                    .bind(ws)
                    .fetch_all(&mut *tx)
                    .await?,
            );
            sqlx::query("DELETE FROM workspaces WHERE id = ?").bind(ws).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM audit_log WHERE actor_id = ?").bind(guest).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM users WHERE id = ? AND guest = 1").bind(guest).execute(&mut *tx).await?;
        tx.commit().await?;
        // Files go once no row refers to them.
        for ws in &sandboxes {
            let _ = std::fs::remove_dir_all(st.data_dir.join("patches").join(format!("ws{ws}")));
        }
        for run in runs {
            let _ = std::fs::remove_dir_all(run_data::dir(&st.data_dir, run));
        }
        swept.guests += 1;
        swept.workspaces += sandboxes.len();
    }
    st.limits.prune();
    st.auth_throttle.prune();
    Ok(swept)
}
