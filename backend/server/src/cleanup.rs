//! The periodic clean-up (issue 16): what visitors leave behind is removed instead of kept forever. Every
//! [`EVERY`]: expired sessions; demo guests without a live session whose account is older than [`GUEST_TTL_S`] (a day), with
//! their sandboxes (edits, cases, runs, and the patch and run files on disk); uploaded images no case refers to; run
//! data no unfinished run needs (and stored images no run data links to); and the rate-limit buckets that have
//! refilled (they carry no state).

use std::time::Duration;

use super::error::ApiResult;
use super::{run_data, snapshots, AppState};

/// How often the clean-up runs.
pub const EVERY: Duration = Duration::from_secs(600);
/// How long a demo guest (and its sandbox) is kept after its last session ended.
pub const GUEST_TTL_S: i64 = 86_400;
/// How old an unreferenced upload must be before it is removed (an edit in flight refers to its image only once it
/// is stored).
pub const UPLOAD_GRACE: Duration = Duration::from_secs(3600);

/// What one clean-up removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub sessions: u64,
    pub guests: usize,
    pub workspaces: usize,
    pub uploads: usize,
    pub snapshots: usize,
}

/// Runs [`sweep`] every [`EVERY`] for as long as the server runs.
pub fn spawn(st: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            match sweep(&st).await {
                Ok(s) if s != Swept::default() => eprintln!(
                    "studio: clean-up removed {} expired session(s), {} demo guest(s), {} sandbox(es), {} upload(s), \
                     {} run data folder(s)",
                    s.sessions, s.guests, s.workspaces, s.uploads, s.snapshots
                ),
                Ok(_) => {}
                Err(e) => eprintln!("studio: clean-up failed: {}", e.message),
            }
        }
    });
}

/// One clean-up pass (see the module note).
pub async fn sweep(st: &AppState) -> ApiResult<Swept> {
    let sessions = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
        .bind(crate::store::now())
        .execute(&st.db)
        .await?
        .rows_affected();
    let mut swept = Swept { sessions, ..Swept::default() };
    // Guests past their time with no live session (expired ones are gone above) and no unfinished run.
    let guests: Vec<i64> = sqlx::query_scalar(
        "SELECT u.id FROM users u WHERE u.guest = 1 \
         AND u.created_at < $1 \
         AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.user_id = u.id) \
         AND NOT EXISTS (SELECT 1 FROM benchmark_runs r WHERE r.author_id = u.id AND r.status IN ('queued', 'running'))",
    )
    .bind(crate::store::stamp(-GUEST_TTL_S))
    .fetch_all(&st.db)
    .await?;
    for guest in guests {
        let mut tx = super::write_tx(&st.db).await?;
        let sandboxes: Vec<i64> = sqlx::query_scalar(
            "SELECT w.id FROM workspaces w JOIN memberships m ON m.workspace_id = w.id \
             WHERE m.user_id = $1 AND w.sandbox = 1",
        )
        .bind(guest)
        .fetch_all(&mut *tx)
        .await?;
        let mut runs: Vec<i64> = Vec::new();
        for ws in &sandboxes {
            runs.extend(
                sqlx::query_scalar::<_, i64>("SELECT id FROM benchmark_runs WHERE workspace_id = $1")
                    .bind(ws)
                    .fetch_all(&mut *tx)
                    .await?,
            );
            sqlx::query("DELETE FROM workspaces WHERE id = $1").bind(ws).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM audit_log WHERE actor_id = $1").bind(guest).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM users WHERE id = $1 AND guest = 1").bind(guest).execute(&mut *tx).await?;
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
    swept.uploads = remove_unreferenced_uploads(st).await?;
    swept.snapshots = remove_unneeded_snapshots(st).await?;
    st.limits.prune();
    st.auth_throttle.prune();
    if crate::store::backend(&st.db) == crate::store::Backend::Postgres {
        crate::rate_store::prune(&st.db).await?;
    }
    if st.external_workers.is_some() {
        crate::remote::sweep(&st.db).await?;
        crate::workers::sweep(&st.db).await?;
    }
    Ok(swept)
}

/// Removes uploaded images older than [`UPLOAD_GRACE`] that no case refers to (an edit refused after its image was
/// stored, a sandbox cleaned up, an answer's image left by a crash).
async fn remove_unreferenced_uploads(st: &AppState) -> ApiResult<usize> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT image FROM edit_cases WHERE image LIKE '%upload-%' \
         UNION SELECT image_rephrase FROM edit_cases WHERE image_rephrase LIKE '%upload-%' \
         UNION SELECT m_loc FROM edit_cases WHERE m_loc LIKE '%upload-%'",
    )
    .fetch_all(&st.db)
    .await?;
    let used: std::collections::HashSet<String> =
        rows.iter().filter_map(|r| r.rsplit('/').next()).map(|n| n.trim_end_matches(".png").to_string()).collect();
    let dir = st.data_dir.join("uploads");
    let old = |p: &std::path::Path| {
        p.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|e| e > UPLOAD_GRACE))
    };
    let mut removed = 0;
    for sub in [dir.clone(), dir.join("transient")] {
        let Ok(files) = std::fs::read_dir(&sub) else { continue };
        for f in files.flatten() {
            let path = f.path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else { continue };
            if path.is_file() && !used.contains(&stem) && old(&path) && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Removes the data folders of runs that ended (or whose row is gone) and snapshots a crash left half-written, then
/// the stored images no folder links to.
async fn remove_unneeded_snapshots(st: &AppState) -> ApiResult<usize> {
    let runs_dir = st.data_dir.join("runs");
    // Folders first: a run's folder appears only after its row is committed, so the query below sees every row.
    let mut ids: Vec<(i64, std::path::PathBuf)> = Vec::new();
    let mut stale = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&runs_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Ok(id) = name.parse::<i64>() {
                ids.push((id, e.path()));
            } else if name.starts_with("new-")
                && e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > snapshots::STALE))
            {
                stale.push(e.path());
            }
        }
    }
    let mut removed = 0;
    for (id, path) in ids {
        let unfinished: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM benchmark_runs WHERE id = $1 AND status IN ('queued', 'running')")
                .bind(id)
                .fetch_optional(&st.db)
                .await?;
        if unfinished.is_none() {
            stale.push(path);
        }
    }
    for path in stale {
        if std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    let blobs = snapshots::blobs_dir(&st.data_dir);
    tokio::task::spawn_blocking(move || snapshots::sweep_blobs(&blobs))
        .await
        .map_err(super::error::ApiErr::internal)?;
    Ok(removed)
}
