//! Benchmark runs: launched from the studio, persisted, executed on their own worker thread (one case at a time, so
//! the interactive worker keeps the other core), streamed to open pages, cancellable, and resumed after a restart
//! (methods whose results were stored are not run again). Finished results feed the public leaderboard.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::Json;
use clap::ValueEnum;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use unike_core::data::Task;
use unike_core::edit::registry;
use unike_core::eval::{CaseScore, EditMetric};
use unike_shared::events::Event;
use unike_shared::runs::{RunInfo, RunRequest, RunStatus, RUN_N_MAX};
use unike_shared::workspace::Role;
use unike_shared::BenchResult;

use super::auth;
use super::demo::DEMO_CAPS;
use super::error::{ApiErr, ApiResult, Body};
use super::run_schedule::{Author, Schedule};
use super::{audit, events, playground, run_data, snapshots, AppState};
use unike_pipeline::bench::{self, BenchMode, BenchObserver, BenchTask, Config};
use unike_pipeline::data::{DataSource, Split};
use unike_pipeline::load::Loaded;

/// `data` of a run on the workspace's own cases.
const WORKSPACE: &str = "workspace";

/// A run for the worker thread.
struct RunJob {
    id: i64,
    req: RunRequest,
    /// The data set: the run's snapshot of its workspace's cases (`None`: the model's world).
    data: Option<PathBuf>,
    /// Methods with stored results (a resumed run).
    skip: Vec<String>,
    cancel: Arc<AtomicBool>,
}

/// What the run worker thread reports.
pub enum Update {
    Progress { id: i64, done: usize, total: usize },
    Result { id: i64, result: Box<BenchResult>, cases: Vec<CaseScore> },
    End { id: i64, status: RunStatus, error: Option<String> },
}

/// Handle of the run worker.
#[derive(Clone)]
pub struct RunQueue {
    schedule: Arc<Schedule<RunJob>>,
    cancels: Arc<Mutex<HashMap<i64, Arc<AtomicBool>>>>,
    /// Where snapshots of workspace cases live.
    data_dir: PathBuf,
}

/// What a run reads: the model's world, or a workspace snapshot.
fn source(world: &DataSource, job: &RunJob) -> DataSource {
    match &job.data {
        Some(dir) => DataSource::from_dir(dir, "the workspace's cases".into()),
        None => world.clone(),
    }
}

/// Parses a task or mode name as `unike bench` spells it.
fn parse<T: ValueEnum>(what: &str, s: &str) -> ApiResult<T> {
    T::from_str(s, false).map_err(|_| {
        let known: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect();
        ApiErr::bad_request(format!("unknown {what} {s:?} ({})", known.join(", ")))
    })
}

/// The benchmark configuration of a run's request, for `methods` (all of its methods, or those left to compute).
pub(crate) fn config(req: &RunRequest, methods: Vec<String>) -> anyhow::Result<Config> {
    Ok(Config {
        methods,
        task: parse("task", &req.task).map_err(|e| anyhow::anyhow!(e.message))?,
        mode: parse("mode", &req.mode).map_err(|e| anyhow::anyhow!(e.message))?,
        k: req.k,
        n: req.n,
        seed: req.seed,
        memory: 64,
        threads: 1,
        split: Split::Eval,
    })
}

/// What a run reads, wherever it is computed: its workspace snapshot under `data_dir`, or the model's world.
pub(crate) fn data_of(world: &DataSource, data_dir: &std::path::Path, id: i64, req: &RunRequest) -> DataSource {
    if req.data == WORKSPACE {
        DataSource::from_dir(&run_data::dir(data_dir, id), "the workspace's cases".into())
    } else {
        world.clone()
    }
}

/// Cases a run evaluates: `n` per stage, the pre-edit stage and one per method.
fn total(req: &RunRequest) -> usize {
    req.n * (1 + req.methods.len())
}

struct Observer<'a> {
    id: i64,
    tx: &'a UnboundedSender<Update>,
    cancel: &'a AtomicBool,
    n: usize,
    /// Stages finished before the current one (pre-edit, then one per method; skipped methods count as finished).
    stages_done: usize,
    stage: usize,
    total: usize,
    /// When progress was last reported (reports are throttled to [`PROGRESS_EVERY`], and a stage's end).
    reported: Option<std::time::Instant>,
}

/// The least time between two progress reports of a run (each is a database write and an event to open pages).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl BenchObserver for Observer<'_> {
    fn stage(&mut self, _name: &str, total: usize) {
        self.stage += 1;
        self.n = total;
    }

    fn progress(&mut self, done: usize) -> bool {
        let due = self.reported.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) || done == self.n;
        if due {
            self.reported = Some(std::time::Instant::now());
            let done = (self.stages_done + self.stage.saturating_sub(1)) * self.n + done;
            let _ = self.tx.send(Update::Progress { id: self.id, done, total: self.total });
        }
        !self.cancel.load(Ordering::SeqCst)
    }

    fn result(&mut self, result: &BenchResult, cases: &[CaseScore]) {
        let _ = self.tx.send(Update::Result { id: self.id, result: Box::new(result.clone()), cases: cases.to_vec() });
    }
}

fn execute(
    loaded: &Loaded,
    world: &DataSource,
    job: &RunJob,
    tx: &UnboundedSender<Update>,
) -> (RunStatus, Option<String>) {
    let methods: Vec<String> = job.req.methods.iter().filter(|m| !job.skip.contains(m)).cloned().collect();
    let n = job.req.n;
    let total = total(&job.req);
    if methods.is_empty() {
        return (RunStatus::Finished, None);
    }
    let run = || -> anyhow::Result<()> {
        let cfg = config(&job.req, methods.clone())?;
        let data = source(world, job);
        let mut obs = Observer {
            id: job.id,
            tx,
            cancel: &job.cancel,
            n,
            stages_done: job.skip.len(),
            stage: 0,
            total,
            reported: None,
        };
        bench::bench_observed(loaded, &data, &cfg, &mut obs)?;
        Ok(())
    };
    match run() {
        Ok(()) => (RunStatus::Finished, None),
        Err(e)
            if e.downcast_ref::<unike_pipeline::Error>().is_some_and(unike_pipeline::Error::is_cancelled)
                || matches!(e.downcast_ref::<unike_core::Error>(), Some(unike_core::Error::Cancelled)) =>
        {
            (RunStatus::Cancelled, None)
        }
        Err(e) => (RunStatus::Failed, Some(format!("{e:#}"))),
    }
}

impl RunQueue {
    /// Starts the run worker thread and the task that records its updates.
    /// `capacity` bounds the queued runs (fair across authors, see [`Schedule`]).
    /// Without a model (`--workers external`: the workers compute the runs) no thread starts and nothing is queued.
    pub fn spawn(
        loaded: Option<Arc<Loaded>>,
        data_dir: PathBuf,
        world: DataSource,
        capacity: usize,
    ) -> (Self, UnboundedReceiver<Update>) {
        let schedule = Arc::new(Schedule::<RunJob>::new(capacity));
        let queue = schedule.clone();
        let (utx, urx) = unbounded_channel();
        let Some(loaded) = loaded else {
            return (Self { schedule, cancels: Arc::default(), data_dir }, urx);
        };
        std::thread::Builder::new()
            .name("unike-runs".into())
            .spawn(move || {
                loop {
                    let job = queue.pop();
                    let _ = utx.send(Update::Progress { id: job.id, done: 0, total: total(&job.req) });
                    let (status, error) = if job.cancel.load(Ordering::SeqCst) {
                        (RunStatus::Cancelled, None)
                    } else {
                        // A panic fails this run (its finished methods are kept) and the worker takes the next one.
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(&loaded, &world, &job, &utx)))
                            .unwrap_or_else(|p| {
                                let msg = super::worker::panic_message(&*p);
                                (RunStatus::Failed, Some(format!("internal error: {msg}")))
                            })
                    };
                    let _ = utx.send(Update::End { id: job.id, status, error });
                }
            })
            .expect("spawning the run worker thread");
        (Self { schedule, cancels: Arc::default(), data_dir }, urx)
    }

    /// Queues run `id` of `author` (`resumed`: accepted before a restart, queued past the bound).
    fn submit(&self, id: i64, req: RunRequest, skip: Vec<String>, author: Author, resumed: bool) -> ApiResult<()> {
        let cancel = Arc::new(AtomicBool::new(false));
        let data = (req.data == WORKSPACE).then(|| run_data::dir(&self.data_dir, id));
        let job = RunJob { id, req, data, skip, cancel: cancel.clone() };
        self.cancels.lock().map_err(|_| ApiErr::internal("poisoned"))?.insert(id, cancel);
        if resumed {
            self.schedule.push_resumed(author, job);
        } else if self.schedule.push(author, job).is_err() {
            if let Ok(mut m) = self.cancels.lock() {
                m.remove(&id);
            }
            return Err(ApiErr::unavailable(format!(
                "the benchmark queue is full ({} runs waiting); try again later",
                self.schedule.len()
            )));
        }
        Ok(())
    }

    fn cancel(&self, id: i64) {
        if let Ok(m) = self.cancels.lock() {
            if let Some(c) = m.get(&id) {
                c.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// With external workers: publishes to open pages the runs whose progress or state the workers changed (they write
/// the database only), looking twice a second.
pub async fn watch_external(st: AppState) {
    let mut seen: HashMap<i64, (String, i64)> = HashMap::new();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let tracked: Vec<i64> = seen.keys().copied().collect();
        let rows: Result<Vec<(i64, String, i64)>, _> = sqlx::query_as(
            "SELECT id, status, done FROM benchmark_runs WHERE executor = 'workers' AND status IN ('queued', 'running')",
        )
        .fetch_all(&st.db)
        .await;
        let Ok(mut rows) = rows else { continue };
        // Those that ended since the last look: once more, with their final state.
        for id in tracked {
            if !rows.iter().any(|r| r.0 == id) {
                if let Ok(Some(r)) =
                    sqlx::query_as::<_, (i64, String, i64)>("SELECT id, status, done FROM benchmark_runs WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&st.db)
                        .await
                {
                    rows.push(r);
                }
            }
        }
        for (id, status, done) in rows {
            let live = matches!(status.as_str(), "queued" | "running");
            let changed = seen.get(&id) != Some(&(status.clone(), done));
            if live {
                seen.insert(id, (status, done));
            } else {
                seen.remove(&id);
            }
            if changed {
                if let Ok(run) = load(&st, id).await {
                    events::publish(&st, Event::Run { run });
                }
            }
        }
    }
}

/// Writes the run worker's updates to the database and to open pages.
pub async fn record(st: AppState, mut rx: UnboundedReceiver<Update>) {
    while let Some(u) = rx.recv().await {
        let id = match &u {
            Update::Progress { id, .. } | Update::Result { id, .. } | Update::End { id, .. } => *id,
        };
        if let Err(e) = apply(&st, u).await {
            eprintln!("studio: recording run {id}: {}", e.message);
            continue;
        }
        if let Ok(run) = load(&st, id).await {
            events::publish(&st, Event::Run { run });
        }
    }
}

/// Characters kept of a recorded answer (the target's positions bound it; a long target gives a long one).
const ANSWER_MAX: usize = 200;

fn clip_answer(a: &str) -> String {
    a.chars().take(ANSWER_MAX).collect()
}

/// Stores a method's result of run `id` and its per-case scores (again: a resumed or re-run method replaces its rows).
pub(crate) async fn store_result(
    db: &sqlx::AnyPool,
    id: i64,
    result: &BenchResult,
    cases: &[CaseScore],
) -> ApiResult<()> {
    let mut tx = super::write_tx(db).await?;
    let convention = result.convention.as_str();
    sqlx::query(
        "INSERT INTO run_results (run_id, method, result_json, score, convention, position) \
         VALUES ($1, $2, $3, $4, $5, (SELECT COUNT(*) FROM run_results WHERE run_id = $1)) \
         ON CONFLICT (run_id, method) DO UPDATE SET result_json = excluded.result_json, \
         score = excluded.score, convention = excluded.convention",
    )
    .bind(id)
    .bind(&result.method)
    .bind(serde_json::to_string(&result).map_err(ApiErr::internal)?)
    .bind(result.metrics.mean5())
    .bind(convention)
    .execute(&mut *tx)
    .await?;
    for (i, c) in cases.iter().enumerate() {
        let t = |m: EditMetric| c.token[m as usize];
        sqlx::query(
            "INSERT INTO run_cases (run_id, method, case_index, edit_ms, reliability, t_generality, \
             m_generality, t_locality, m_locality, portability, m_locality_top1, convention, answer_before, \
             answer_after) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (run_id, method, case_index) DO UPDATE SET edit_ms = excluded.edit_ms, \
             reliability = excluded.reliability, t_generality = excluded.t_generality, \
             m_generality = excluded.m_generality, t_locality = excluded.t_locality, \
             m_locality = excluded.m_locality, portability = excluded.portability, \
             m_locality_top1 = excluded.m_locality_top1, convention = excluded.convention, \
             answer_before = excluded.answer_before, answer_after = excluded.answer_after",
        )
        .bind(id)
        .bind(&result.method)
        .bind(i as i64)
        .bind(c.edit_ms)
        .bind(t(EditMetric::Reliability))
        .bind(t(EditMetric::TGenerality))
        .bind(t(EditMetric::MGenerality))
        .bind(t(EditMetric::TLocality))
        .bind(t(EditMetric::MLocality))
        .bind(t(EditMetric::Portability))
        .bind(t(EditMetric::MLocalityTop1))
        .bind(convention)
        .bind(c.answer_before.as_deref().map(clip_answer))
        .bind(c.answer_after.as_deref().map(clip_answer))
        // Not prepared once for all: sqlx 0.9's Any driver declares a missing f64 as a PostgreSQL float4, and a
        // statement prepared with that type then refuses a present one ("incorrect binary data format").
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn apply(st: &AppState, u: Update) -> ApiResult<()> {
    match u {
        Update::Progress { id, done, total } => {
            sqlx::query("UPDATE benchmark_runs SET status = 'running', done = $1, total = $2 WHERE id = $3 AND status IN ('queued', 'running')")
                .bind(done as i64)
                .bind(total as i64)
                .bind(id)
                .execute(&st.db)
                .await?;
        }
        Update::Result { id, result, cases } => store_result(&st.db, id, &result, &cases).await?,
        Update::End { id, status, error } => {
            if let Ok(mut m) = st.runs.cancels.lock() {
                m.remove(&id);
            }
            end_run(&st.db, &st.data_dir, id, status, error).await?;
        }
    }
    Ok(())
}

/// Records the end of run `id` (its results are stored) and removes its data snapshot, which no run needs any more.
pub(crate) async fn end_run(
    db: &sqlx::AnyPool,
    data_dir: &std::path::Path,
    id: i64,
    status: RunStatus,
    error: Option<String>,
) -> ApiResult<()> {
    sqlx::query(
        "UPDATE benchmark_runs SET status = $1, error = $2, done = CASE WHEN $3 = 'finished' THEN total ELSE done END, \
         finished_at = $5 WHERE id = $4",
    )
    .bind(status.as_str())
    .bind(error)
    .bind(status.as_str())
    .bind(id)
    .bind(crate::store::now())
    .execute(db)
    .await?;
    let (folder, blobs) = (run_data::dir(data_dir, id), snapshots::blobs_dir(data_dir));
    if folder.exists() {
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&folder);
            snapshots::sweep_blobs(&blobs);
        })
        .await
        .map_err(ApiErr::internal)?;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct RunRow {
    id: i64,
    workspace_id: i64,
    author: String,
    model: String,
    request_json: String,
    status: String,
    done: i64,
    total: i64,
    error: Option<String>,
    note: Option<String>,
    created_at: String,
    finished_at: Option<String>,
    reference: Option<String>,
}

const RUN_SELECT: &str =
    "SELECT r.id, r.workspace_id, u.username AS author, r.model, r.request_json, r.status, r.done, \
    r.total, r.error, r.note, r.created_at, r.finished_at, r.reference FROM benchmark_runs r \
    JOIN users u ON u.id = r.author_id";

async fn info(st: &AppState, r: RunRow) -> ApiResult<RunInfo> {
    let results: Vec<(String,)> =
        sqlx::query_as("SELECT result_json FROM run_results WHERE run_id = $1 ORDER BY position, method")
            .bind(r.id)
            .fetch_all(&st.db)
            .await?;
    Ok(RunInfo {
        id: r.id,
        workspace_id: r.workspace_id,
        author: r.author,
        model: r.model,
        request: serde_json::from_str(&r.request_json).map_err(ApiErr::internal)?,
        status: RunStatus::parse(&r.status).unwrap_or(RunStatus::Failed),
        done: r.done as usize,
        total: r.total as usize,
        error: r.error,
        note: r.note,
        results: results
            .iter()
            .map(|(j,)| serde_json::from_str(j))
            .collect::<Result<_, _>>()
            .map_err(ApiErr::internal)?,
        created_at: r.created_at,
        finished_at: r.finished_at,
        reference: r.reference,
    })
}

pub async fn load(st: &AppState, id: i64) -> ApiResult<RunInfo> {
    let row: Option<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{RUN_SELECT} WHERE r.id = $1")))
        .bind(id)
        .fetch_optional(&st.db)
        .await?;
    info(st, row.ok_or_else(|| ApiErr::not_found(format!("run {id}")))?).await
}

/// Re-queues the runs a previous server left unfinished, each skipping the methods whose results it stored.
pub async fn resume(st: &AppState) -> anyhow::Result<usize> {
    // Cancelled before the restart: stays cancelled (its finished methods kept).
    sqlx::query(
        "UPDATE benchmark_runs SET status = 'cancelled', finished_at = $1 \
         WHERE status IN ('queued', 'running') AND cancel_requested = 1",
    )
    .bind(crate::store::now())
    .execute(&st.db)
    .await?;
    // Launched on another model: its results would be mixed with this model's; it fails, its finished methods kept.
    sqlx::query(
        "UPDATE benchmark_runs SET status = 'failed', finished_at = $3, \
         error = 'the server was restarted on model ' || $1 || '; this run was launched on ' || model \
         WHERE status IN ('queued', 'running') AND model <> $2",
    )
    .bind(&st.info.name)
    .bind(&st.info.name)
    .bind(crate::store::now())
    .execute(&st.db)
    .await?;
    let rows: Vec<(i64, String, i64, i64)> = sqlx::query_as(
        "SELECT r.id, r.request_json, r.author_id, u.guest FROM benchmark_runs r JOIN users u ON u.id = r.author_id \
         WHERE r.status IN ('queued', 'running') ORDER BY r.id",
    )
    .fetch_all(&st.db)
    .await?;
    let mut resumed = 0;
    for (id, json, author, guest) in rows {
        let Ok(req) = serde_json::from_str::<RunRequest>(&json) else {
            sqlx::query("UPDATE benchmark_runs SET status = 'failed', error = 'unreadable request' WHERE id = $1")
                .bind(id)
                .execute(&st.db)
                .await?;
            continue;
        };
        let skip: Vec<(String,)> =
            sqlx::query_as("SELECT method FROM run_results WHERE run_id = $1").bind(id).fetch_all(&st.db).await?;
        sqlx::query("UPDATE benchmark_runs SET status = 'queued' WHERE id = $1").bind(id).execute(&st.db).await?;
        let author = Author { id: author, guest: guest != 0 };
        st.runs
            .submit(id, req, skip.into_iter().map(|(m,)| m).collect(), author, true)
            .map_err(|e| anyhow::anyhow!(e.message))?;
        resumed += 1;
    }
    Ok(resumed)
}

fn validate(req: &RunRequest, guest: bool) -> ApiResult<()> {
    if req.methods.is_empty() || req.methods.len() > 16 {
        return Err(ApiErr::bad_request("a run has 1 to 16 methods"));
    }
    // Two spellings of one UniKE variant are one method (built and scored once).
    let mut seen = std::collections::BTreeMap::new();
    for m in &req.methods {
        let canonical = registry::canonical_name(m).map_err(|e| ApiErr::bad_request(e.to_string()))?;
        if let Some(first) = seen.insert(canonical.clone(), m) {
            return Err(ApiErr::bad_request(if first == m {
                format!("method {m} is listed twice")
            } else {
                format!("{first} and {m} are the same method ({canonical})")
            }));
        }
    }
    parse::<BenchTask>("task", &req.task)?;
    let mode: BenchMode = parse("mode", &req.mode)?;
    // A seed draws a run's cases from the model's world: a sandbox picks among a few.
    if guest && req.seed >= DEMO_CAPS.seeds {
        return Err(ApiErr::bad_request(format!("a demo sandbox runs with seeds 0 to {}", DEMO_CAPS.seeds - 1)));
    }
    let cap = if guest { DEMO_CAPS.run_n } else { RUN_N_MAX };
    if req.n == 0 || req.n > cap {
        return Err(ApiErr::bad_request(format!("n must be 1 to {cap}")));
    }
    if mode == BenchMode::Sequential && (req.k == 0 || req.k > req.n) {
        return Err(ApiErr::bad_request("k must be 1 to n"));
    }
    // The gap protocol edits n + gap cases: the gap is bounded like n.
    if mode == BenchMode::SequentialGap && req.k > GAP_MAX {
        return Err(ApiErr::bad_request(format!("the gap (k) must be 0 to {GAP_MAX}")));
    }
    match req.data.as_str() {
        "world" => {}
        WORKSPACE if req.task == "cross" => {
            return Err(ApiErr::bad_request(
                "cross-task runs use the world: a workspace's cases are all edited as the run's task (vqa or caption)",
            ))
        }
        WORKSPACE => {}
        other => {
            return Err(ApiErr::bad_request(format!(
                "unknown data {other:?}: \"world\" (the model's synthetic world) or \"workspace\" (its cases)"
            )))
        }
    }
    Ok(())
}

/// A workspace run's data, written and waiting for the run's id.
struct Written {
    /// The fresh folder the caller renames to the run's once it has an id.
    tmp: PathBuf,
    snapshot: run_data::Snapshot,
    /// Bytes counted against the workspace's snapshot quota (stored with the run).
    bytes: u64,
    /// Held until the run's row (which counts the bytes from then on) is committed.
    _reserved: snapshots::Reservation,
}

/// Writes the workspace's usable cases as the data set of a new run, within the workspace's snapshot quota (checked
/// and reserved before anything is written), and bounds the request's `n` by them.
async fn snapshot(st: &AppState, ws: i64, sandbox: bool, req: &mut RunRequest) -> ApiResult<Written> {
    let cases = playground::stored_cases(st, ws).await?;
    if cases.is_empty() {
        return Err(ApiErr::bad_request(
            "this workspace has no cases yet: apply edits in the Playground or import MMEdit JSON",
        ));
    }
    let task = if parse::<BenchTask>("task", &req.task)? == BenchTask::Caption { Task::Caption } else { Task::Vqa };
    let (st2, limit) = (st.clone(), req.n);
    let plan = tokio::task::spawn_blocking(move || run_data::plan(&st2, &st2.world, task, &cases, limit))
        .await
        .map_err(ApiErr::internal)??;
    let bytes = plan.bytes;
    let reserved = st.snapshot_quota.reserve(&st.db, ws, sandbox, bytes).await?;
    let tmp = st.data_dir.join("runs").join(format!("new-{}", auth::random_hex(8)?));
    let (out, blobs) = (tmp.clone(), snapshots::blobs_dir(&st.data_dir));
    let written = tokio::task::spawn_blocking(move || run_data::write(plan, &blobs, &out))
        .await
        .map_err(ApiErr::internal)
        .and_then(|r| r);
    let refuse = |msg: String| {
        let _ = std::fs::remove_dir_all(&tmp);
        Err(ApiErr::bad_request(msg))
    };
    let snap = match written {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if snap.cases == 0 {
        return refuse(format!("none of the workspace's cases can be evaluated: {}", snap.note().unwrap_or_default()));
    }
    req.n = req.n.min(snap.cases);
    if req.mode == "sequential-gap" {
        // The stream edits the scored cases and `gap` more.
        req.n = req.n.min(snap.cases.saturating_sub(req.k));
        if req.n == 0 {
            return refuse(format!(
                "a gap of {} needs more than {} usable cases; the workspace has {}",
                req.k, req.k, snap.cases
            ));
        }
    }
    if req.mode == "sequential" {
        req.n = req.n / req.k * req.k;
        if req.n == 0 {
            return refuse(format!("k = {} is more than the {} usable cases of the workspace", req.k, snap.cases));
        }
    }
    Ok(Written { tmp, snapshot: snap, bytes, _reserved: reserved })
}

/// The largest gap of a `sequential-gap` run (VLKEB's largest).
pub const GAP_MAX: usize = 100;

/// Unfinished (queued or running) runs one user may have at once: the run worker takes runs one at a time, so this
/// bounds its queue per user.
pub const UNFINISHED_MAX: usize = 4;

/// Refuses a run its author may not launch: more than [`UNFINISHED_MAX`] unfinished, or past a demo guest's cap.
async fn check_caps(conn: &mut sqlx::AnyConnection, c: &auth::Caller) -> ApiResult<()> {
    let (all, unfinished): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(SUM(CASE WHEN status IN ('queued', 'running') THEN 1 ELSE 0 END), 0) AS BIGINT) \
         FROM benchmark_runs WHERE author_id = $1",
    )
    .bind(c.user.id)
    .fetch_one(&mut *conn)
    .await?;
    if c.user.guest && all as usize >= DEMO_CAPS.runs {
        return Err(ApiErr::too_many(format!("a demo sandbox may launch {} runs", DEMO_CAPS.runs)));
    }
    if unfinished as usize >= UNFINISHED_MAX {
        return Err(ApiErr::too_many(format!(
            "you have {UNFINISHED_MAX} unfinished runs; wait for one to finish or cancel one"
        )));
    }
    Ok(())
}

/// `POST /api/workspaces/{id}/runs` (editors).
pub async fn create(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(ws): Path<i64>,
    Body(mut req): Body<RunRequest>,
) -> ApiResult<Json<RunInfo>> {
    let c = auth::writer(&st, &headers, addr.ip()).await?;
    auth::role_in(&st, &c, ws, Role::Editor).await?;
    req.methods = req.methods.iter().map(|m| m.trim().to_string()).collect();
    validate(&req, c.user.guest)?;
    if req.task == "cross" {
        (req.mode, req.k, req.n) = ("sequential".into(), 10, (req.n / 10).max(1) * 10);
    } else if req.mode == "sequential" {
        req.n = req.n / req.k * req.k;
    } else if req.mode != "sequential-gap" {
        req.k = 1;
    }
    // Checked before the (possibly slow) snapshot, and again in the transaction that stores the run.
    check_caps(&mut *st.db.acquire().await?, &c).await?;
    let snapshot = if req.data == WORKSPACE { Some(snapshot(&st, ws, c.user.guest, &mut req).await?) } else { None };
    // The texts of the cases the run edits, for its page (drawn as the run will draw them).
    let data = match &snapshot {
        Some(w) => DataSource::from_dir(&w.tmp, "the workspace's cases".into()),
        None => DataSource::from_dir(&st.world, "the model's world".into()),
    };
    let texts_req = req.clone();
    let cases_json = tokio::task::spawn_blocking(move || {
        crate::run_cases::texts(&data, &texts_req).and_then(|t| serde_json::to_string(&t).ok())
    })
    .await
    .map_err(ApiErr::internal)?;
    let stored = async {
        let mut tx = super::write_tx(&st.db).await?;
        auth::recheck(&mut tx, &c, ws, Role::Editor).await?;
        check_caps(&mut tx, &c).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO benchmark_runs (workspace_id, author_id, model, request_json, status, total, note, \
             snapshot_bytes, cases_json) VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8) RETURNING id",
        )
        .bind(ws)
        .bind(c.user.id)
        .bind(&st.info.name)
        .bind(serde_json::to_string(&req).map_err(ApiErr::internal)?)
        .bind(total(&req) as i64)
        .bind(snapshot.as_ref().and_then(|w| w.snapshot.note()))
        .bind(snapshot.as_ref().map_or(0, |w| w.bytes as i64))
        .bind(&cases_json)
        .fetch_one(&mut *tx)
        .await?;
        let detail = format!(
            "#{id} {} {} {} n={} seed={}{}",
            req.methods.join(","),
            req.task,
            req.mode,
            req.n,
            req.seed,
            if req.data == WORKSPACE { " on the workspace's cases" } else { "" }
        );
        audit::record(&mut tx, Some(ws), c.user.id, "run.start", &detail).await?;
        tx.commit().await?;
        Ok::<_, ApiErr>(id)
    };
    let id = match stored.await {
        Ok(id) => id,
        Err(e) => {
            if let Some(w) = &snapshot {
                let _ = std::fs::remove_dir_all(&w.tmp);
            }
            return Err(e);
        }
    };
    // The snapshot takes the run's id only once the row is committed, so a failed commit leaves no folder behind. A
    // folder already there belongs to no run (the id was just given out: one left by a crash between an earlier
    // commit's rollback and its clean-up) and is replaced.
    if let Some(w) = snapshot {
        let dest = run_data::dir(&st.data_dir, id);
        let moved = (|| {
            if dest.exists() {
                std::fs::remove_dir_all(&dest)?;
            }
            std::fs::rename(&w.tmp, &dest)
        })();
        if let Err(e) = moved {
            let _ = std::fs::remove_dir_all(&w.tmp);
            sqlx::query("UPDATE benchmark_runs SET status = 'failed', error = $1 WHERE id = $2")
                .bind("the run's data could not be stored on the server")
                .bind(id)
                .execute(&st.db)
                .await?;
            return Err(ApiErr::internal(e));
        }
    }
    let req_data_is_workspace = req.data == WORKSPACE;
    let queued = match st.external_workers {
        Some(shard_cases) => crate::workers::enqueue(&st.db, id, &req, shard_cases).await,
        None => st.runs.submit(id, req, Vec::new(), Author { id: c.user.id, guest: c.user.guest }, false),
    };
    if let Err(e) = queued {
        // Stored but never queued: it says why instead of waiting forever.
        sqlx::query(
            "UPDATE benchmark_runs SET status = 'failed', error = $1, \
             finished_at = $3 WHERE id = $2",
        )
        .bind(&e.message)
        .bind(id)
        .bind(crate::store::now())
        .execute(&st.db)
        .await?;
        if req_data_is_workspace {
            let _ = std::fs::remove_dir_all(run_data::dir(&st.data_dir, id));
        }
        return Err(e);
    }
    let run = load(&st, id).await?;
    events::publish(&st, Event::Run { run: run.clone() });
    Ok(Json(run))
}

/// `GET /api/workspaces/{id}/runs`.
pub async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(ws): Path<i64>,
) -> ApiResult<Json<Vec<RunInfo>>> {
    let c = auth::signed_in(&st, &headers).await?;
    auth::role_in(&st, &c, ws, Role::Viewer).await?;
    let rows: Vec<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{RUN_SELECT} WHERE r.workspace_id = $1 ORDER BY r.id DESC LIMIT 100"
    )))
    .bind(ws)
    .fetch_all(&st.db)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(info(&st, r).await?);
    }
    Ok(Json(out))
}

/// `GET /api/runs/{id}`: members of its workspace; anyone once a run on the world is finished (the leaderboard links
/// to it).
pub async fn get(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<i64>) -> ApiResult<Json<RunInfo>> {
    Ok(Json(readable(&st, &headers, id).await?))
}

/// Run `id` if the caller may read it (see [`get`]); else not found.
pub(crate) async fn readable(st: &AppState, headers: &HeaderMap, id: i64) -> ApiResult<RunInfo> {
    let run = load(st, id).await?;
    if run.status != RunStatus::Finished || run.request.data == WORKSPACE {
        let c = auth::signed_in(st, headers).await?;
        auth::role_in(st, &c, run.workspace_id, Role::Viewer)
            .await
            .map_err(|_| ApiErr::not_found(format!("run {id}")))?;
    }
    Ok(run)
}

/// `POST /api/runs/{id}/cancel` (editors of its workspace).
pub async fn cancel(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> ApiResult<Json<RunInfo>> {
    let c = auth::writer(&st, &headers, addr.ip()).await?;
    let run = load(&st, id).await?;
    // As `get`: a run of a workspace the caller cannot see does not exist for them (nor does its workspace's id).
    let hide = |e: ApiErr| {
        if e.status == axum::http::StatusCode::NOT_FOUND {
            ApiErr::not_found(format!("run {id}"))
        } else {
            e
        }
    };
    auth::role_in(&st, &c, run.workspace_id, Role::Editor).await.map_err(hide)?;
    if run.status.is_final() {
        return Err(ApiErr::conflict(format!("run {id} is already {}", run.status.as_str())));
    }
    let mut tx = super::write_tx(&st.db).await?;
    auth::recheck(&mut tx, &c, run.workspace_id, Role::Editor).await.map_err(hide)?;
    st.runs.cancel(id);
    // A queued run never starts; a running one stops after its current case (the worker then records it), and is
    // not resumed by a restart before then.
    sqlx::query(
        "UPDATE benchmark_runs SET status = CASE status WHEN 'queued' THEN 'cancelled' ELSE status END, \
         finished_at = CASE status WHEN 'queued' THEN $2 ELSE finished_at END, \
         cancel_requested = 1 WHERE id = $1 AND status IN ('queued', 'running')",
    )
    .bind(id)
    .bind(crate::store::now())
    .execute(&mut *tx)
    .await?;
    audit::record(&mut tx, Some(run.workspace_id), c.user.id, "run.cancel", &format!("#{id}")).await?;
    tx.commit().await?;
    Ok(Json(load(&st, id).await?))
}
