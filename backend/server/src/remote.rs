//! Answers and edits computed by worker processes (`unike serve --workers external`): the replica stores the job in
//! `interactive_jobs` and waits for its result; every `unike worker` runs a thread that claims these jobs (looking
//! every 20 ms, beside the thread that computes run shards, so an answer never waits behind a shard) and computes them
//! on its own model thread ([`crate::worker::Worker`]) exactly as a one-process studio does. Paths travel relative to
//! the data folder, which every process mounts where it likes. A worker that dies mid-job stops renewing its lease
//! and another takes the job; a replica that gives up waiting (its bound) marks the job abandoned.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;

use crate::error::{ApiErr, ApiResult};
use crate::store;
use crate::worker::{EditJob, EditOutcome, StackEntry, Worker};

/// How long a replica waits for a worker to answer before it says the model is busy.
const WAIT: Duration = Duration::from_secs(120);
/// How often a replica looks for its job's result, and a worker for new jobs.
const POLL: Duration = Duration::from_millis(20);
/// A claimed job is the worker's for this long without a renewal.
const LEASE_S: i64 = 30;

/// A job as stored: the stack and the request, paths relative to the data folder.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Payload {
    Answer { stack: Vec<StackEntry>, image: Option<PathBuf>, question: String },
    Edit { stack: Vec<StackEntry>, job: Box<EditJob> },
}

/// A replica's side: where jobs go.
pub struct Remote {
    db: AnyPool,
    data_dir: PathBuf,
    model: String,
    /// Jobs queued across the database at most (`--queue`): past it a new one is a 503.
    queue: usize,
}

/// `path` relative to `base` when it is inside it (else as it is).
fn relative(base: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(base).map_or_else(|_| path.to_path_buf(), Path::to_path_buf)
}

fn rebase_stack(stack: Vec<StackEntry>, f: impl Fn(&Path) -> PathBuf) -> Vec<StackEntry> {
    stack.into_iter().map(|e| StackEntry { dir: f(&e.dir), method: e.method }).collect()
}

fn rebase_job(mut job: EditJob, f: impl Fn(&Path) -> PathBuf) -> EditJob {
    job.image = job.image.as_deref().map(&f);
    job.save_to = f(&job.save_to);
    for p in &mut job.probes {
        p.image = p.image.as_deref().map(&f);
    }
    job
}

impl Remote {
    pub fn new(db: AnyPool, data_dir: PathBuf, model: String, queue: usize) -> Self {
        Self { db, data_dir, model, queue }
    }

    pub async fn answer(&self, stack: Vec<StackEntry>, image: Option<PathBuf>, question: String) -> ApiResult<String> {
        let rel = |p: &Path| relative(&self.data_dir, p);
        let image = image.as_deref().map(rel);
        let payload = Payload::Answer { stack: rebase_stack(stack, rel), image, question };
        let json = self.run("answer", &payload).await?;
        serde_json::from_str(&json).map_err(ApiErr::internal)
    }

    pub async fn edit(&self, stack: Vec<StackEntry>, job: EditJob) -> ApiResult<EditOutcome> {
        let rel = |p: &Path| relative(&self.data_dir, p);
        let payload = Payload::Edit { stack: rebase_stack(stack, rel), job: Box::new(rebase_job(job, rel)) };
        let json = self.run("edit", &payload).await?;
        serde_json::from_str(&json).map_err(ApiErr::internal)
    }

    /// Stores a job and waits for its result (the JSON a worker stored), or its error as the worker gave it.
    async fn run(&self, kind: &str, payload: &Payload) -> ApiResult<String> {
        if crate::workers::live_workers(&self.db, &self.model, Some("interactive")).await? == 0 {
            return Err(ApiErr::unavailable(format!(
                "no worker computes answers and edits for model {} (start `unike worker --kinds interactive` on this \
                 studio's database)",
                self.model
            )));
        }
        let queued: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM interactive_jobs WHERE status = 'queued' AND model = $1")
                .bind(&self.model)
                .fetch_one(&self.db)
                .await?;
        if queued as usize >= self.queue {
            return Err(ApiErr::unavailable("the model is busy; try again in a moment"));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO interactive_jobs (model, kind, payload_json, status, created_at) \
             VALUES ($1, $2, $3, 'queued', $4) RETURNING id",
        )
        .bind(&self.model)
        .bind(kind)
        .bind(serde_json::to_string(payload).map_err(ApiErr::internal)?)
        .bind(store::now())
        .fetch_one(&self.db)
        .await?;
        // Marks the job abandoned when this request goes away (timeout, or the client hung up and the handler is
        // dropped), so no worker starts it.
        struct Abandon(Option<(AnyPool, i64)>);
        impl Drop for Abandon {
            fn drop(&mut self) {
                if let Some((db, id)) = self.0.take() {
                    tokio::spawn(async move {
                        let _ = sqlx::query(
                            "UPDATE interactive_jobs SET status = 'abandoned' WHERE id = $1 AND status = 'queued'",
                        )
                        .bind(id)
                        .execute(&db)
                        .await;
                    });
                }
            }
        }
        let mut abandon = Abandon(Some((self.db.clone(), id)));
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            tokio::time::sleep(POLL).await;
            let row: (String, Option<String>, Option<String>, Option<String>) =
                sqlx::query_as("SELECT status, result_json, error_kind, error FROM interactive_jobs WHERE id = $1")
                    .bind(id)
                    .fetch_one(&self.db)
                    .await?;
            match row {
                (s, Some(result), _, _) if s == "done" => {
                    abandon.0 = None;
                    forget(&self.db, id).await?;
                    return Ok(result);
                }
                (s, _, kind, error) if s == "failed" => {
                    abandon.0 = None;
                    let status = kind
                        .and_then(|k| k.parse::<u16>().ok())
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    forget(&self.db, id).await?;
                    return Err(ApiErr::new(status, error.unwrap_or_default()));
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(ApiErr::unavailable("no worker took the job in time; try again in a moment"));
                }
                _ => {}
            }
        }
    }
}

/// Removes a job whose result its replica has read (the table holds only jobs in flight).
async fn forget(db: &AnyPool, id: i64) -> ApiResult<()> {
    sqlx::query("DELETE FROM interactive_jobs WHERE id = $1").bind(id).execute(db).await?;
    Ok(())
}

/// Removes jobs nobody waits for any more: abandoned ones, and any older than an hour (a replica that died while
/// waiting). Returns how many went.
pub async fn sweep(db: &AnyPool) -> ApiResult<u64> {
    Ok(sqlx::query("DELETE FROM interactive_jobs WHERE status = 'abandoned' OR created_at < $1")
        .bind(store::stamp(-3600))
        .execute(db)
        .await?
        .rows_affected())
}

/// A worker's side: claims answers and edits for `model` and computes them on `worker` (its own model thread), until
/// the process ends. Runs on a runtime of its own.
pub async fn serve(db: AnyPool, data_dir: PathBuf, model: String, name: String, worker: Worker) {
    loop {
        match claim(&db, &model, &name).await {
            Ok(Some((id, payload))) => {
                // The lease is renewed while the job runs (a first UniKE edit may build its memory for minutes).
                let renew = tokio::spawn({
                    let (db, name) = (db.clone(), name.clone());
                    async move {
                        loop {
                            tokio::time::sleep(Duration::from_secs((LEASE_S / 3) as u64)).await;
                            let _ = sqlx::query(
                                "UPDATE interactive_jobs SET lease_until = $1 WHERE id = $2 AND worker = $3 \
                                 AND status = 'running'",
                            )
                            .bind(store::stamp(LEASE_S))
                            .bind(id)
                            .bind(&name)
                            .execute(&db)
                            .await;
                        }
                    }
                });
                let abs = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { data_dir.join(p) };
                let outcome: ApiResult<String> = match serde_json::from_str::<Payload>(&payload) {
                    Ok(Payload::Answer { stack, image, question }) => worker
                        .answer(rebase_stack(stack, abs), image.as_deref().map(abs), question)
                        .await
                        .and_then(|a| serde_json::to_string(&a).map_err(ApiErr::internal)),
                    Ok(Payload::Edit { stack, job }) => worker
                        .edit(rebase_stack(stack, abs), rebase_job(*job, abs))
                        .await
                        .and_then(|o| serde_json::to_string(&o).map_err(ApiErr::internal)),
                    Err(e) => Err(ApiErr::internal(format!("an unreadable job: {e}"))),
                };
                renew.abort();
                let (status, result, kind, error) = match outcome {
                    Ok(json) => ("done", Some(json), None, None),
                    Err(e) => ("failed", None, Some(e.status.as_u16().to_string()), Some(e.message)),
                };
                let stored = sqlx::query(
                    "UPDATE interactive_jobs SET status = $1, result_json = $2, error_kind = $3, error = $4, \
                     lease_until = NULL WHERE id = $5 AND worker = $6 AND status = 'running'",
                )
                .bind(status)
                .bind(result)
                .bind(kind)
                .bind(error)
                .bind(id)
                .bind(&name)
                .execute(&db)
                .await;
                if let Err(e) = stored {
                    eprintln!("unike worker {name}: storing interactive job {id}: {e}");
                }
            }
            Ok(None) => tokio::time::sleep(POLL).await,
            Err(e) => {
                eprintln!("unike worker {name}: claiming an interactive job: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Claims the oldest queued answer or edit for `model` (or one whose worker's lease ran out).
async fn claim(db: &AnyPool, model: &str, worker: &str) -> Result<Option<(i64, String)>, sqlx::Error> {
    let skip_locked = store::skip_locked(db, None);
    let sql = format!(
        "UPDATE interactive_jobs SET status = 'running', worker = $1, lease_until = $2 \
         WHERE id = (SELECT id FROM interactive_jobs WHERE model = $3 \
           AND (status = 'queued' OR (status = 'running' AND lease_until < $4)) ORDER BY id LIMIT 1{skip_locked}) \
         RETURNING id, payload_json"
    );
    let mut tx = store::claim_tx(db).await?;
    let row: Option<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(worker)
        .bind(store::stamp(LEASE_S))
        .bind(model)
        .bind(store::now())
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(row)
}
