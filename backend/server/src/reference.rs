//! Reference runs: the project's own committed `unike reproduce` results, imported into the database when the studio
//! first starts, so that a fresh studio's leaderboard already holds the comparison of every method (a visitor of the
//! hosted demo sees it at once), each row labelled with its commit; runs launched in the studio appear beside them.
//!
//! A results folder is imported when it has a `manifest.json` (written by `unike reproduce`): its commit, model,
//! seed and sections. Each section's JSON (a [`BenchReport`]) becomes finished runs on the world, one per task, mode,
//! `k` and `n` (a run's results are one configuration), authored by a built-in account that cannot sign in, in a
//! workspace nobody is a member of. Each folder is imported once (recorded in `data_migrations` under its name and
//! commit); a result already imported from another folder for the same model, method, configuration, seed and
//! metric convention is not imported twice (folders are taken newest first, so the newest wins).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use unike_shared::runs::RunRequest;
use unike_shared::{BenchReport, BenchResult};

/// The author of reference runs: a name sign-up refuses (it holds a space) and an account without a password.
pub const AUTHOR: &str = "unike reference";
const WORKSPACE: &str = "Reference results (committed under results/)";
/// The manifest `unike reproduce` writes beside its tables.
pub const MANIFEST: &str = "manifest.json";
/// Largest section file read (the committed ones are under 200 KB).
const SECTION_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// `results/DIR/manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The commit whose release build produced the folder (short hash).
    pub commit: String,
    /// The model's studio name (`default` for the shipped model).
    pub model: String,
    pub seed: u64,
    /// When the run finished (RFC 3339); folders are imported newest first.
    pub date: String,
    /// Sections written (`table1`, ..., `gap`): their `SECTION.json` files.
    pub sections: Vec<String>,
    /// The command that produced it.
    #[serde(default)]
    pub command: String,
}

/// A results folder and its manifest.
type Folder = (PathBuf, Manifest);
/// A run's configuration in a section: task, mode, `k`, `n`.
type Configuration = (String, String, usize, usize);

/// The folders of `root` with a manifest, newest first, and why any other was left out.
fn folders(root: &Path) -> Result<(Vec<Folder>, Vec<String>)> {
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((out, skipped)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    for entry in entries {
        let dir = entry?.path();
        let file = dir.join(MANIFEST);
        if !file.is_file() {
            continue;
        }
        let read = std::fs::read_to_string(&file)
            .map_err(anyhow::Error::from)
            .and_then(|t| serde_json::from_str::<Manifest>(&t).map_err(anyhow::Error::from));
        match read {
            Ok(m) => out.push((dir, m)),
            Err(e) => skipped.push(format!("{}: not a manifest ({e})", file.display())),
        }
    }
    out.sort_by(|a, b| b.1.date.cmp(&a.1.date).then_with(|| a.0.cmp(&b.0)));
    Ok((out, skipped))
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Imported {
    /// Runs added.
    pub runs: usize,
    /// Folders left out, with why (nothing of such a folder is imported).
    pub skipped: Vec<String>,
}

fn folder_name(dir: &Path) -> String {
    dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// What identifies a result across folders.
fn key(model: &str, seed: u64, r: &BenchResult) -> String {
    format!("{model}|{}|{}|{}|{}|{}|{seed}|{}", r.method, r.task, r.mode, r.k, r.n, r.convention.as_str())
}

/// The reference author's and workspace's ids, made on first use.
async fn owner(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<(i64, i64)> {
    let user: Option<i64> =
        sqlx::query_scalar("SELECT id FROM users WHERE username = $1").bind(AUTHOR).fetch_optional(&mut **tx).await?;
    let user = match user {
        Some(id) => id,
        None => {
            sqlx::query_scalar("INSERT INTO users (username, password_hash, guest) VALUES ($1, NULL, 0) RETURNING id")
                .bind(AUTHOR)
                .fetch_one(&mut **tx)
                .await?
        }
    };
    let ws: Option<i64> = sqlx::query_scalar(
        "SELECT DISTINCT w.id FROM workspaces w JOIN benchmark_runs r ON r.workspace_id = w.id \
         WHERE r.reference IS NOT NULL ORDER BY w.id LIMIT 1",
    )
    .fetch_optional(&mut **tx)
    .await?;
    let ws = match ws {
        Some(id) => id,
        None => {
            sqlx::query_scalar("INSERT INTO workspaces (name) VALUES ($1) RETURNING id")
                .bind(WORKSPACE)
                .fetch_one(&mut **tx)
                .await?
        }
    };
    Ok((user, ws))
}

/// Imports every folder of `root` not imported yet. A folder that cannot be read is left out whole (and said why);
/// the others are imported.
pub async fn import(db: &AnyPool, root: &Path) -> Result<Imported> {
    let (found, skipped) = folders(root)?;
    let mut done = Imported { runs: 0, skipped };
    for (dir, manifest) in found {
        match import_folder(db, &dir, &manifest).await {
            Ok(n) => done.runs += n,
            Err(e) => done.skipped.push(format!("{}: {e:#}", dir.display())),
        }
    }
    Ok(done)
}

/// Imports one folder in one transaction (unless done before); returns the runs added.
async fn import_folder(db: &AnyPool, dir: &Path, manifest: &Manifest) -> Result<usize> {
    let mut added = 0;
    {
        let mark = format!("reference:{}@{}", folder_name(dir), manifest.commit);
        let mut tx = crate::store::write_tx(db).await?;
        // Checked inside the transaction: replicas starting together on one database import a folder once.
        let done: Option<String> = sqlx::query_scalar("SELECT name FROM data_migrations WHERE name = $1")
            .bind(&mark)
            .fetch_optional(&mut *tx)
            .await?;
        if done.is_some() {
            return Ok(0);
        }
        let mut seen: HashSet<String> = HashSet::new();
        let stored: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT r.model, r.request_json, rr.result_json FROM run_results rr JOIN benchmark_runs r \
             ON r.id = rr.run_id WHERE r.reference IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (model, req, result) in stored {
            if let (Ok(req), Ok(result)) =
                (serde_json::from_str::<RunRequest>(&req), serde_json::from_str::<BenchResult>(&result))
            {
                seen.insert(key(&model, req.seed, &result));
            }
        }
        let (user, ws) = owner(&mut tx).await?;
        for section in &manifest.sections {
            let file = dir.join(format!("{section}.json"));
            let len =
                std::fs::metadata(&file).with_context(|| format!("{} names a missing {section}.json", mark))?.len();
            anyhow::ensure!(len <= SECTION_MAX_BYTES, "{} is larger than {SECTION_MAX_BYTES} bytes", file.display());
            let report: BenchReport = serde_json::from_str(&std::fs::read_to_string(&file)?)
                .with_context(|| format!("{} is not a benchmark report", file.display()))?;
            // One run per configuration, its methods in the file's order.
            let mut groups: Vec<(Configuration, Vec<BenchResult>)> = Vec::new();
            for r in report.results {
                if !seen.insert(key(&manifest.model, manifest.seed, &r)) {
                    continue;
                }
                let g = (r.task.clone(), r.mode.clone(), r.k, r.n);
                match groups.iter_mut().find(|(k, _)| *k == g) {
                    Some((_, v)) => v.push(r),
                    None => groups.push((g, vec![r])),
                }
            }
            let source = format!("commit {}, results/{}/{section}.json", manifest.commit, folder_name(dir));
            for ((task, mode, k, n), results) in groups {
                let req = RunRequest {
                    methods: results.iter().map(|r| r.method.clone()).collect(),
                    task,
                    mode,
                    k,
                    n,
                    seed: manifest.seed,
                    data: "world".into(),
                };
                let total = (n * (1 + results.len())) as i64;
                let note = format!("Reference result: `{}` at {}.", manifest.command, source);
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO benchmark_runs (workspace_id, author_id, model, request_json, status, done, total, \
                     note, created_at, finished_at, reference) VALUES ($1, $2, $3, $4, 'finished', $5, $5, $6, $7, \
                     $7, $8) RETURNING id",
                )
                .bind(ws)
                .bind(user)
                .bind(&manifest.model)
                .bind(serde_json::to_string(&req)?)
                .bind(total)
                .bind(note)
                .bind(&manifest.date)
                .bind(&source)
                .fetch_one(&mut *tx)
                .await?;
                for (position, r) in results.iter().enumerate() {
                    sqlx::query(
                        "INSERT INTO run_results (run_id, method, result_json, score, convention, position) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(id)
                    .bind(&r.method)
                    .bind(serde_json::to_string(r)?)
                    .bind(r.metrics.mean5())
                    .bind(r.convention.as_str())
                    .bind(position as i64)
                    .execute(&mut *tx)
                    .await?;
                }
                added += 1;
            }
        }
        sqlx::query("INSERT INTO data_migrations (name) VALUES ($1)").bind(&mark).execute(&mut *tx).await?;
        tx.commit().await?;
    }
    Ok(added)
}
