//! Where the data of runs on workspace cases lives on disk, and how much of it a workspace may hold.
//!
//! - **Shared images.** A snapshot's images are hard links into one content-addressed store (`blobs/<sha256>.<ext>`
//!   of the data directory): the same image in many runs (the gallery's, an upload, the 128 memory images every run
//!   takes) is stored once. Where the file system cannot link, the image is copied (and still counted).
//! - **A quota counted before anything is written.** A snapshot counts the bytes of its distinct images. A workspace's
//!   unfinished runs (whose snapshots are on disk) together with the snapshots being written for it may hold at most
//!   `--snapshot-mb`; the check and the reservation are one step, so parallel launches cannot each pass it.
//! - **Removal when no run needs them.** A run's folder goes when the run ends (finished, failed or cancelled: its
//!   results are in the database), and a stored image goes when no snapshot links to it any more. The clean-up task
//!   also removes folders of ended or deleted runs and half-written snapshots left by a crash.

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::error::{ApiErr, ApiResult};

/// The content-addressed image store of the data directory.
pub fn blobs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("blobs")
}

/// How old a half-written snapshot (`runs/new-*`) or store file (`blobs/.tmp-*`) must be before the clean-up removes
/// it (a launch writes its snapshot in well under that).
pub const STALE: Duration = Duration::from_secs(3600);

static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Puts the file `from` at `dest` as a link into the store `blobs` (adding it to the store when new). Returns whether
/// the store gained a file.
pub fn link_into(blobs: &Path, from: &Path, dest: &Path) -> std::io::Result<bool> {
    let bytes = std::fs::read(from)?;
    let ext = from.extension().and_then(|e| e.to_str()).filter(|e| e.len() <= 8).unwrap_or("png");
    let hash: String = Sha256::digest(&bytes).iter().map(|x| format!("{x:02x}")).collect();
    let blob = blobs.join(format!("{hash}.{ext}"));
    let mut added = false;
    // Twice: a clean-up may remove an unlinked store file between the check and the link.
    for _ in 0..2 {
        if !blob.is_file() {
            std::fs::create_dir_all(blobs)?;
            let n = TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = blobs.join(format!(".tmp-{hash}-{}-{n}", std::process::id()));
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, &blob)?;
            added = true;
        }
        match std::fs::hard_link(&blob, dest) {
            Ok(()) => return Ok(added),
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            // No links on this file system (or across devices): a copy of its own.
            Err(_) => {
                std::fs::write(dest, &bytes)?;
                return Ok(added);
            }
        }
    }
    Err(std::io::Error::other(format!("{} kept disappearing from the image store", blob.display())))
}

/// Removes stored images no snapshot links to, and store files left half-written. Returns how many went.
pub fn sweep_blobs(blobs: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(blobs) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        let name = e.file_name();
        let tmp = name.to_str().is_some_and(|n| n.starts_with(".tmp-"));
        let unused = if tmp { is_stale(&meta) } else { meta.is_file() && meta.nlink() == 1 };
        if unused && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn is_stale(meta: &std::fs::Metadata) -> bool {
    meta.modified().is_ok_and(|t| t.elapsed().is_ok_and(|e| e > STALE))
}

/// Bytes of the distinct files among `files` (a file named twice counts once). Files that cannot be read count 0;
/// writing them fails later with its own message.
pub fn distinct_bytes<'a>(files: impl IntoIterator<Item = &'a Path>) -> u64 {
    let mut seen = HashSet::new();
    files
        .into_iter()
        .filter(|f| seen.insert(f.to_path_buf()))
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum()
}

/// Per-workspace snapshot bytes: the quota, and what launches in progress have reserved of it.
pub struct SnapshotQuota {
    /// Bytes one workspace's snapshots may hold (`--snapshot-mb`).
    pub per_workspace: u64,
    /// Bytes one demo sandbox's snapshots may hold.
    pub per_sandbox: u64,
    /// One check at a time (the check reads the database, then reserves).
    gate: tokio::sync::Mutex<()>,
    reserved: Mutex<HashMap<i64, u64>>,
}

/// Bytes reserved for a snapshot being written; given back when dropped (once the run's row, which counts them from
/// then on, is committed, or the launch failed).
pub struct Reservation {
    quota: Arc<SnapshotQuota>,
    workspace: i64,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut r) = self.quota.reserved.lock() {
            if let Some(v) = r.get_mut(&self.workspace) {
                *v = v.saturating_sub(self.bytes);
                if *v == 0 {
                    r.remove(&self.workspace);
                }
            }
        }
    }
}

impl SnapshotQuota {
    pub fn new(per_workspace: u64, per_sandbox: u64) -> Self {
        Self { per_workspace, per_sandbox, gate: tokio::sync::Mutex::new(()), reserved: Mutex::default() }
    }

    fn reserved(&self, ws: i64) -> u64 {
        self.reserved.lock().map_or(u64::MAX, |r| r.get(&ws).copied().unwrap_or(0))
    }

    /// Reserves `bytes` of workspace `ws`'s quota (`sandbox`: a demo sandbox's smaller one), or answers 413.
    pub async fn reserve(
        self: &Arc<Self>,
        db: &sqlx::AnyPool,
        ws: i64,
        sandbox: bool,
        bytes: u64,
    ) -> ApiResult<Reservation> {
        let limit = if sandbox { self.per_sandbox } else { self.per_workspace };
        let mb = |b: u64| b.div_ceil(1024 * 1024);
        if bytes > limit {
            return Err(ApiErr::quota(format!(
                "this run's data ({} MB of images) is more than the workspace's snapshot quota of {} MB; \
                 launch it with a smaller n",
                mb(bytes),
                mb(limit)
            )));
        }
        let _one_at_a_time = self.gate.lock().await;
        // Reservations first: one given back after this read belongs to a run whose row the query below then sees.
        let reserved = self.reserved(ws);
        let stored: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(snapshot_bytes), 0) AS BIGINT) FROM benchmark_runs \
             WHERE workspace_id = $1 AND status IN ('queued', 'running')",
        )
        .bind(ws)
        .fetch_one(db)
        .await?;
        let held = reserved.saturating_add(stored.max(0) as u64);
        if held.saturating_add(bytes) > limit {
            return Err(ApiErr::quota(format!(
                "the workspace's unfinished runs hold {} MB of its {} MB snapshot quota and this run needs {} MB; \
                 wait for one to finish or cancel one",
                mb(held),
                mb(limit),
                mb(bytes)
            )));
        }
        let mut r = self.reserved.lock().map_err(|_| ApiErr::internal("snapshot quota poisoned"))?;
        *r.entry(ws).or_default() += bytes;
        Ok(Reservation { quota: self.clone(), workspace: ws, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_image_in_two_snapshots_is_stored_once_and_goes_with_the_last() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("unike-blobs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (blobs, a, b) = (dir.join("blobs"), dir.join("a"), dir.join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d)?;
        }
        let src = dir.join("image.png");
        std::fs::write(&src, b"not really a png")?;
        assert!(link_into(&blobs, &src, &a.join("0.png"))?);
        assert!(!link_into(&blobs, &src, &b.join("0.png"))?, "the second snapshot reuses the stored file");
        assert_eq!(std::fs::read_dir(&blobs)?.count(), 1);
        assert_eq!(std::fs::metadata(a.join("0.png"))?.ino(), std::fs::metadata(b.join("0.png"))?.ino());
        assert_eq!(sweep_blobs(&blobs), 0, "still linked");
        std::fs::remove_dir_all(&a)?;
        assert_eq!(sweep_blobs(&blobs), 0, "b still links it");
        std::fs::remove_dir_all(&b)?;
        assert_eq!(sweep_blobs(&blobs), 1);
        assert_eq!(std::fs::read_dir(&blobs)?.count(), 0);
        assert_eq!(distinct_bytes([src.as_path(), src.as_path()]), 16);
        std::fs::remove_dir_all(&dir)
    }
}
