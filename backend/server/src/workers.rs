//! Worker processes (`unike serve --workers external` and any number of `unike worker` processes on any machines that
//! reach the database and the data folder): answers and edits ([`crate::remote`], on a model thread of their own) and
//! the shards of benchmark runs (here).
//!
//! The server cuts a run into shards (each method's cases in ranges of whole chunks, [`unike_pipeline::shard`]) and
//! stores them in `run_shards`. A worker claims one (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so concurrent workers never
//! wait on each other; SQLite: inside its one writer's transaction) with a lease, renews the lease while it computes
//! (a heartbeat, which also notices a cancel), and stores the shard's outcome only while it still holds the shard. A
//! worker that dies (SIGKILL, power loss) stops renewing: once its lease runs out another worker claims the shard and
//! computes it again. The worker that stores a method's last shard assembles the method's result (bit for bit the
//! one-process result) and, with the run's last method, ends the run; both writes are keyed, so a shard computed twice
//! is never counted twice.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use sqlx::AnyPool;
use unike_pipeline::data::DataSource;
use unike_pipeline::load::{self, Loaded};
use unike_pipeline::shard::{self, ShardResult, ShardSpec};
use unike_shared::runs::{RunRequest, RunStatus};

use crate::error::ApiResult;
use crate::runs;
use crate::store;

/// `unike worker`: computes answers, edits and shards of benchmark runs from a studio's database.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The studio's database (`postgres://...` for workers on several machines, or `sqlite://PATH` on one).
    #[arg(long)]
    pub db: String,
    /// The studio's data folder (run snapshots, the model's world): `--data-dir` of `unike serve` (default beside a
    /// SQLite file).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub model: load::ModelArgs,
    /// Seconds a claimed shard stays this worker's without a heartbeat (renewed every third of it); a dead worker's
    /// shard is claimed again after it.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_s: u64,
    /// This worker's name in the database (default: host name and process id).
    #[arg(long)]
    pub name: Option<String>,
    /// Milliseconds between two looks for work when there is none.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll_ms: u64,
    /// Exit once no shard is left to claim (batch jobs) instead of waiting for more.
    #[arg(long)]
    pub exit_when_idle: bool,
    /// What this worker computes: `interactive` (answers and edits), `runs` (benchmark shards), or both.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "interactive,runs")]
    pub kinds: Vec<Kind>,
    /// Loaded patches kept between answers and edits, in millions of parameters (as `unike serve`).
    #[arg(long, default_value_t = 256)]
    pub patch_cache: usize,
    /// Megabytes the built edit methods of answers and edits may hold beyond the model (as `unike serve`).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub method_cache_mb: u32,
}

/// A kind of work a worker takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Interactive,
    Runs,
}

/// A claimed shard.
struct Claimed {
    id: i64,
    run_id: i64,
    spec: ShardSpec,
    /// When the claim returned, and how long it took.
    at: std::time::Instant,
    claim_ms: f64,
}

/// Runs a worker until it is killed (or, with `--exit-when-idle`, until no shard is left).
pub fn run(args: WorkerArgs) -> Result<()> {
    load::single_thread_pools();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let (db, data_dir) = rt.block_on(store::open(&args.db, args.data_dir.as_deref()))?;
    let loaded = Arc::new(args.model.load()?);
    let model_name = crate::model_name(&args.model, &loaded.dir);
    let own = unike_pipeline::data::model_world(&loaded)?;
    let world = DataSource::world_in(&data_dir, own.unwrap_or(0), own)?;
    let world_dir = unike_pipeline::data::world_dir_in(&data_dir, own.unwrap_or(0))?;
    let name = args.name.clone().unwrap_or_else(|| format!("{}-{}", host_name(), std::process::id()));
    // Answers and edits: a model thread of their own, fed by a claimer that looks every 20 ms, so they never wait
    // behind the shard this process is computing.
    let kinds: Vec<&str> =
        args.kinds.iter().map(|k| if *k == Kind::Interactive { "interactive" } else { "runs" }).collect();
    rt.spawn(report(db.clone(), name.clone(), model_name.clone(), kinds.join(",")));
    if args.kinds.contains(&Kind::Interactive) {
        let interactive = crate::worker::Worker::spawn(
            loaded.clone(),
            world_dir,
            unike_pipeline::model_dir::repo_root(),
            model_name.clone(),
            4,
            args.patch_cache.saturating_mul(1_000_000),
            args.method_cache_mb as usize * 1024 * 1024,
        );
        rt.spawn(crate::remote::serve(db.clone(), data_dir.clone(), model_name.clone(), name.clone(), interactive));
    }
    if !args.kinds.contains(&Kind::Runs) {
        // Answers and edits only: the claimer runs on the runtime until the process is ended.
        return rt.block_on(std::future::pending());
    }
    eprintln!("unike worker {name}: computing shards of runs on model {model_name} from {}", store::redact(&args.db));
    let lease = Duration::from_secs(args.lease_s);
    loop {
        match rt.block_on(claim(&db, &name, &model_name, lease))? {
            Some(c) => {
                eprintln!(
                    "unike worker {name}: shard {} of run {} ({} cases {:?})",
                    c.id, c.run_id, c.spec.method, c.spec.cases
                );
                if let Err(e) = work(&rt, &db, &data_dir, &loaded, &world, &name, lease, &c) {
                    eprintln!("unike worker {name}: shard {}: {e:#}", c.id);
                }
            }
            None if args.exit_when_idle => return Ok(()),
            None => std::thread::sleep(Duration::from_millis(args.poll_ms)),
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into())
}

/// Claims the oldest shard of a live run on `model` that is queued, or running past its lease.
async fn claim(db: &AnyPool, worker: &str, model: &str, lease: Duration) -> Result<Option<Claimed>> {
    let t0 = std::time::Instant::now();
    let skip_locked = store::skip_locked(db, Some("s"));
    let sql = format!(
        "UPDATE run_shards SET status = 'running', worker = $1, lease_until = $2, attempts = attempts + 1 \
         WHERE id = (SELECT s.id FROM run_shards s JOIN benchmark_runs r ON r.id = s.run_id \
           WHERE r.status IN ('queued', 'running') AND r.cancel_requested = 0 AND r.model = $3 \
           AND (s.status = 'queued' OR (s.status = 'running' AND s.lease_until < $4)) \
           ORDER BY s.id LIMIT 1{skip_locked}) \
         RETURNING id, run_id, method, first_case, end_case"
    );
    let mut tx = store::claim_tx(db).await?;
    let row: Option<(i64, i64, String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(worker)
        .bind(store::stamp(lease.as_secs() as i64))
        .bind(model)
        .bind(store::now())
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(row.map(|(id, run_id, method, a, b)| Claimed {
        id,
        run_id,
        spec: ShardSpec { method, cases: a as usize..b as usize },
        at: std::time::Instant::now(),
        claim_ms: t0.elapsed().as_secs_f64() * 1e3,
    }))
}

/// Computes a claimed shard with a heartbeat beside it, and stores what came of it.
#[allow(clippy::too_many_arguments)]
fn work(
    rt: &tokio::runtime::Runtime,
    db: &AnyPool,
    data_dir: &std::path::Path,
    loaded: &Loaded,
    world: &DataSource,
    worker: &str,
    lease: Duration,
    c: &Claimed,
) -> Result<()> {
    let (request,): (String,) = rt.block_on(
        sqlx::query_as("SELECT request_json FROM benchmark_runs WHERE id = $1").bind(c.run_id).fetch_one(db),
    )?;
    let req: RunRequest = serde_json::from_str(&request).context("the run's request")?;
    let cfg = runs::config(&req, vec![c.spec.method.clone()])?;
    let data = runs::data_of(world, data_dir, c.run_id, &req);
    rt.block_on(
        sqlx::query("UPDATE benchmark_runs SET status = 'running' WHERE id = $1 AND status = 'queued'")
            .bind(c.run_id)
            .execute(db),
    )?;
    // Heartbeat: renews the lease every third of it, and notices a cancel or a lost lease.
    let (stop, cancel) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let beat = rt.spawn(heartbeat(db.clone(), c.id, c.run_id, worker.to_string(), lease, stop.clone(), cancel.clone()));
    let outcome =
        shard::run(loaded, &data, &cfg, std::slice::from_ref(&c.spec), &mut |_, _| !cancel.load(Ordering::SeqCst));
    stop.store(true, Ordering::SeqCst);
    let _ = rt.block_on(beat);
    match outcome {
        Ok(mut results) => match results.pop() {
            Some(r) => rt.block_on(complete(db, data_dir, worker, c, &req, r)),
            None => Ok(()),
        },
        Err(e) => {
            let cancelled = e.is_cancelled() || cancel.load(Ordering::SeqCst);
            rt.block_on(fail(db, data_dir, worker, c, cancelled, &format!("{e}")))
        }
    }
}

async fn heartbeat(
    db: AnyPool,
    shard: i64,
    run: i64,
    worker: String,
    lease: Duration,
    stop: Arc<AtomicBool>,
    cancel: Arc<AtomicBool>,
) {
    let every = lease / 3;
    let mut last = std::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if last.elapsed() < every {
            continue;
        }
        last = std::time::Instant::now();
        let renewed =
            sqlx::query("UPDATE run_shards SET lease_until = $1 WHERE id = $2 AND worker = $3 AND status = 'running'")
                .bind(store::stamp(lease.as_secs() as i64))
                .bind(shard)
                .bind(&worker)
                .execute(&db)
                .await
                .map(|r| r.rows_affected());
        let cancelled: Result<i64, _> = sqlx::query_scalar("SELECT cancel_requested FROM benchmark_runs WHERE id = $1")
            .bind(run)
            .fetch_one(&db)
            .await;
        // Lost (another worker took the shard after the lease ran out) or cancelled: stop computing.
        if matches!(renewed, Ok(0)) || matches!(cancelled, Ok(1)) {
            cancel.store(true, Ordering::SeqCst);
        }
    }
}

/// Stores a computed shard while this worker still holds it; then the method's result once all its shards are done,
/// and the run's end once all its methods are.
async fn complete(
    db: &AnyPool,
    data_dir: &std::path::Path,
    worker: &str,
    c: &Claimed,
    req: &RunRequest,
    r: ShardResult,
) -> Result<()> {
    let size = (c.spec.cases.end - c.spec.cases.start) as i64;
    let mut tx = store::write_tx(db).await?;
    let stored = sqlx::query(
        "UPDATE run_shards SET status = 'done', outcome_json = $1, lease_until = NULL, claim_ms = $4, wall_ms = $5, \
         edit_ms = $6 WHERE id = $2 AND worker = $3 AND status = 'running'",
    )
    .bind(serde_json::to_string(&r)?)
    .bind(c.id)
    .bind(worker)
    .bind(c.claim_ms)
    .bind(c.at.elapsed().as_secs_f64() * 1e3)
    .bind(r.outcome.edit_ms.iter().sum::<f64>())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if stored == 0 {
        // The lease ran out and another worker has the shard: its outcome counts, not this one.
        tx.rollback().await?;
        return Ok(());
    }
    sqlx::query("UPDATE benchmark_runs SET done = done + $1 WHERE id = $2 AND status IN ('queued', 'running')")
        .bind(size)
        .bind(c.run_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let left: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM run_shards WHERE run_id = $1 AND method = $2 AND status <> 'done'")
            .bind(c.run_id)
            .bind(&c.spec.method)
            .fetch_one(db)
            .await?;
    if left > 0 {
        return Ok(());
    }
    let outcomes: Vec<(String,)> =
        sqlx::query_as("SELECT outcome_json FROM run_shards WHERE run_id = $1 AND method = $2 ORDER BY first_case")
            .bind(c.run_id)
            .bind(&c.spec.method)
            .fetch_all(db)
            .await?;
    let shards = outcomes.iter().map(|(j,)| serde_json::from_str(j)).collect::<Result<Vec<ShardResult>, _>>()?;
    let cfg = runs::config(req, vec![c.spec.method.clone()])?;
    let (result, cases) = shard::assemble(&cfg, shards)?;
    api(runs::store_result(db, c.run_id, &result, &cases).await)?;
    let with_results: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM run_results WHERE run_id = $1").bind(c.run_id).fetch_one(db).await?;
    if with_results as usize >= req.methods.len() && live(db, c.run_id).await? {
        api(runs::end_run(db, data_dir, c.run_id, RunStatus::Finished, None).await)?;
    }
    Ok(())
}

/// Records a shard that could not be computed: a cancelled run ends cancelled, another error fails the run.
async fn fail(
    db: &AnyPool,
    data_dir: &std::path::Path,
    worker: &str,
    c: &Claimed,
    cancelled: bool,
    error: &str,
) -> Result<()> {
    let marked = sqlx::query(
        "UPDATE run_shards SET status = 'failed', error = $1, lease_until = NULL \
         WHERE id = $2 AND worker = $3 AND status = 'running'",
    )
    .bind(if cancelled { "cancelled" } else { error })
    .bind(c.id)
    .bind(worker)
    .execute(db)
    .await?
    .rows_affected();
    if marked == 0 || !live(db, c.run_id).await? {
        return Ok(());
    }
    let (status, error) =
        if cancelled { (RunStatus::Cancelled, None) } else { (RunStatus::Failed, Some(error.to_string())) };
    api(runs::end_run(db, data_dir, c.run_id, status, error).await)
}

/// Whether run `id` is still queued or running.
async fn live(db: &AnyPool, id: i64) -> Result<bool> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM benchmark_runs WHERE id = $1").bind(id).fetch_optional(db).await?;
    Ok(matches!(status.as_deref(), Some("queued" | "running")))
}

fn api<T>(r: ApiResult<T>) -> Result<T> {
    r.map_err(|e| anyhow::anyhow!(e.message))
}

/// How often a worker reports, and how long a report counts as alive.
const REPORT_EVERY: Duration = Duration::from_secs(5);
const ALIVE_S: i64 = 30;

/// Reports this worker alive every few seconds (its name, model and kinds), until the process ends.
async fn report(db: AnyPool, name: String, model: String, kinds: String) {
    loop {
        let r = sqlx::query(
            "INSERT INTO workers (name, model, kinds, last_seen) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET model = excluded.model, kinds = excluded.kinds, \
             last_seen = excluded.last_seen",
        )
        .bind(&name)
        .bind(&model)
        .bind(&kinds)
        .bind(store::now())
        .execute(&db)
        .await;
        if let Err(e) = r {
            eprintln!("unike worker {name}: reporting alive: {e}");
        }
        tokio::time::sleep(REPORT_EVERY).await;
    }
}

/// Forgets workers not seen for a day (each restart of a worker without `--name` reports under a new name).
pub async fn sweep(db: &AnyPool) -> ApiResult<u64> {
    Ok(sqlx::query("DELETE FROM workers WHERE last_seen < $1")
        .bind(store::stamp(-86_400))
        .execute(db)
        .await?
        .rows_affected())
}

/// Workers seen in the last 30 s that compute for `model` (those taking `kind`, when given).
pub async fn live_workers(db: &AnyPool, model: &str, kind: Option<&str>) -> ApiResult<usize> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM workers WHERE model = $1 AND last_seen > $2 AND ($3 = '' OR kinds LIKE $4)",
    )
    .bind(model)
    .bind(store::stamp(-ALIVE_S))
    .bind(kind.unwrap_or(""))
    .bind(format!("%{}%", kind.unwrap_or("")))
    .fetch_one(db)
    .await?;
    Ok(n as usize)
}

/// Stores the shards of run `id` for the workers (`--workers external`): each method's cases in ranges of about
/// `shard_cases`, whole chunks. The pre-edit stage counts as done (each shard prepares its own cases).
pub async fn enqueue(db: &AnyPool, id: i64, req: &RunRequest, shard_cases: usize) -> ApiResult<()> {
    let cfg = runs::config(req, req.methods.clone()).map_err(|e| crate::error::ApiErr::bad_request(e.to_string()))?;
    let per_method = shard::planned_cases(&cfg).div_ceil(shard_cases.max(1)).max(1);
    let specs = shard::plan(&cfg, per_method);
    let mut tx = store::write_tx(db).await?;
    for s in &specs {
        sqlx::query(
            "INSERT INTO run_shards (run_id, method, first_case, end_case, status) VALUES ($1, $2, $3, $4, 'queued')",
        )
        .bind(id)
        .bind(&s.method)
        .bind(s.cases.start as i64)
        .bind(s.cases.end as i64)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE benchmark_runs SET executor = 'workers', done = $1 WHERE id = $2")
        .bind(req.n as i64)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
