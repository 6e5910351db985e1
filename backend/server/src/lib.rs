//! UniKE Studio's server (`unike serve`): the built front end (`dist/`, from trunk) and the JSON API whose routes
//! and messages live in `unike-shared`, over a SQLite database (sqlx, migrations in `backend/server/migrations`),
//! running the editing core through [`unike_pipeline`].
//!
//! Model work never runs inside an async handler: the model is opened on a blocking thread at start, answers and
//! edits run on the interactive worker ([`worker`]), benchmark runs on the run worker ([`runs`]).

mod accounts;
mod audit;
mod auth;
mod cleanup;
mod demo;
mod error;
mod events;
mod explorer;
mod gallery;
mod leaderboard;
mod members;
mod openapi;
mod patch_cache;
mod playground;
mod rate_store;
pub mod reference;
mod relabel;
pub mod relay;
pub mod remote;
mod run_cases;
mod run_data;
mod run_schedule;
mod runs;
mod snapshots;
pub mod store;
mod throttle;
mod worker;
pub mod workers;
mod workspaces;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::{Json, Router};
use clap::Args;
use sqlx::AnyPool;
use tokio::sync::broadcast;
use tower_http::services::{ServeDir, ServeFile};
use unike_shared::events::Event;
use unike_shared::{routes, ApiError, HealthResponse, ModelInfo};

use self::demo::RateLimits;
use self::gallery::Gallery;
use self::runs::RunQueue;
use self::worker::Worker;
use unike_pipeline::load;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// The project's committed `unike reproduce` results, shown on the leaderboard as reference rows: every
    /// `DIR/*/manifest.json` folder is imported once, when the studio first sees it (default: `results/` of the
    /// repository; `none`: import nothing).
    #[arg(long)]
    pub reference_results: Option<String>,
    #[command(flatten)]
    pub model: load::ModelArgs,
    /// The built front end (default: `dist/` of the repository).
    #[arg(long)]
    pub dist: Option<PathBuf>,
    /// The database: `sqlite://PATH` (a file, created with its schema if missing; the embedded default) or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (shared by several servers; needs --data-dir).
    #[arg(long, default_value = "sqlite://studio-data/studio.db")]
    pub db: String,
    /// The data folder (patches, uploads, run snapshots): default `PATH.d` beside a SQLite file; required with
    /// PostgreSQL (a folder every server reaches).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Who computes benchmark runs: `local` (this process's run thread) or `external` (`unike worker` processes that
    /// claim the runs' shards from the database; this server only stores them and shows their progress).
    #[arg(long, value_enum, default_value = "local")]
    pub workers: Workers,
    /// With `--workers external`: cases per shard (each method's cases are cut into shards of about this many).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub shard_cases: u32,
    /// Public demo mode: visitors get a guest sandbox without signing up; per-IP rate limits and caps apply.
    #[arg(long)]
    pub demo: bool,
    /// Jobs the interactive model worker queues before answering 503.
    #[arg(long, default_value_t = 32)]
    pub queue: usize,
    /// Mark the session cookie `Secure` (the studio is served over HTTPS, e.g. behind a reverse proxy).
    #[arg(long)]
    pub secure_cookies: bool,
    /// Behind N reverse proxies that each append to `X-Forwarded-For` (`--trust-proxy` alone: one), take the client's
    /// address for limits from the N-th entry counted from the right; entries further left are the client's own claims
    /// and are never trusted. Without it the peer's address is used (clients could otherwise claim any address).
    #[arg(long, value_name = "HOPS", num_args = 0..=1, default_missing_value = "1", default_value_t = 0)]
    pub trust_proxy: usize,
    /// Loaded patches the model worker keeps between jobs, in millions of parameters (least recently used ones are
    /// dropped and reloaded from disk when needed).
    #[arg(long, default_value_t = 256)]
    pub patch_cache: usize,
    /// Megabytes the edit methods the model worker keeps built may hold beyond the model (trained networks, UniKE's
    /// prepared memory: each UniKE variant is a method of its own); the least recently used are dropped and rebuilt
    /// when needed.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub method_cache_mb: u32,
    /// Benchmark runs queued at once (taken round robin across authors, members before demo guests); past it a new
    /// run answers 503.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub run_queue: u32,
    /// Megabytes of uploaded images the studio keeps (edits' images; an answer's upload is not kept); past it an edit
    /// on a new upload answers 413.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub uploads_mb: u32,
    /// Megabytes of images the unfinished runs on one workspace's cases may hold in their data snapshots (images shared
    /// between runs are stored once; a run's data goes when it ends). Demo sandboxes: 64 or this, the smaller.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub snapshot_mb: u32,
    /// Cases one workspace may hold (imports and Playground edits together; demo sandboxes: 200).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub cases_per_workspace: u32,
    /// Workspaces one account may own (its first, made at sign-up, included): with `--cases-per-workspace`, this
    /// bounds what one member can store.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub workspaces_per_user: u32,
    /// Live-update streams (server-sent events) one session may hold open at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub streams_per_session: u32,
    /// Live-update streams one client address may hold open at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub streams_per_address: u32,
    /// Sign-in and sign-up attempts allowed per client address every 10 minutes (in every mode).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_attempts: u32,
    /// Failed sign-ins allowed per account every 10 minutes; then the account's sign-ins answer 429 until it refills.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_failures: u32,
    /// Password hashes (argon2, 19 MiB each) computed at once; up to 8 times as many sign-ins wait, others get 429.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub hash_concurrency: u32,
}

/// Who computes benchmark runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workers {
    Local,
    External,
}

/// Everything a handler reaches.
#[derive(Clone)]
pub struct AppState {
    pub db: AnyPool,
    pub info: Arc<ModelInfo>,
    pub worker: Worker,
    pub runs: RunQueue,
    pub events: broadcast::Sender<Event>,
    pub limits: Arc<RateLimits>,
    /// Throttles of password work (every mode).
    pub auth_throttle: Arc<throttle::AuthThrottle>,
    /// Open live-update streams per session and address.
    pub streams: Arc<events::StreamCounts>,
    /// Cases one (non-demo) workspace may hold.
    pub cases_per_workspace: usize,
    /// Workspaces one account may own.
    pub workspaces_per_user: i64,
    /// Bytes of kept uploads.
    pub uploads_bytes: u64,
    /// Bytes of run data snapshots per workspace, and what launches have reserved of them.
    pub snapshot_quota: Arc<snapshots::SnapshotQuota>,
    /// Bumped whenever someone may have lost access (see [`auth::access_changed`]).
    pub access_epoch: Arc<std::sync::atomic::AtomicU64>,
    pub demo: bool,
    pub secure_cookies: bool,
    /// Trusted reverse proxies in front of the studio (`--trust-proxy`).
    pub trust_proxy: usize,
    /// Patches and uploads.
    pub data_dir: PathBuf,
    /// With `--workers external`: the cases per shard (runs go to the database for `unike worker`s).
    pub external_workers: Option<usize>,
    /// On PostgreSQL: the other replicas hear of this one's events (`NOTIFY`).
    pub relay: Option<relay::Relay>,
    pub gallery: Arc<Gallery>,
    /// The model's own world's data (generated once): the gallery's source, the cases of runs on the world (a run's
    /// seed draws them), and the memory of unrelated inputs of runs on workspace cases.
    pub world: PathBuf,
    /// Applying and undoing edits is one step per workspace stack (other workspaces do not wait for it).
    pub edit_locks: Arc<StackLocks>,
    /// The knowledge-space explorer's loaded memory and cached projections.
    pub explorer: Arc<explorer::ExplorerState>,
}

/// One lock per workspace stack: an edit reads the stack, extends it and writes it as one step, and an undo waits for
/// it; edits of other workspaces go on meanwhile.
#[derive(Default)]
pub struct StackLocks {
    locks: std::sync::Mutex<std::collections::HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
}

impl StackLocks {
    /// Waits for workspace `ws`'s stack.
    pub async fn lock(&self, ws: i64) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            // Forget the locks nobody holds or waits for, so the map stays the size of the busy workspaces.
            m.retain(|_, l| Arc::strong_count(l) > 1);
            m.entry(ws).or_default().clone()
        };
        lock.lock_owned().await
    }
}

pub fn run(args: ServeArgs) -> Result<()> {
    // As in `unike bench`: each model worker runs its matmuls on its own thread (on world-sized models the shared
    // pools only spin: interactive edits took 2.6-4.6 s instead of ~0.2 s). RAYON_NUM_THREADS / CANDLE_NUM_THREADS
    // set by the caller win (a large checkpoint on CPU wants them).
    unike_pipeline::load::single_thread_pools();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(args))
}

/// Where the weights came from, without revealing the server's file system: a path under the working directory
/// relative to it (`models/default`), anything else by its directory name only.
fn public_source(dir: &std::path::Path) -> String {
    let cwd = std::env::current_dir().ok();
    let relative = if dir.is_relative() { Some(dir) } else { cwd.as_deref().and_then(|c| dir.strip_prefix(c).ok()) };
    match relative.filter(|r| !r.components().any(|c| matches!(c, std::path::Component::ParentDir))) {
        Some(r) => r.display().to_string(),
        None => dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    }
}

/// The model's name in the studio (runs and leaderboard rows carry it): `default`, or its directory's name.
pub fn model_name(args: &load::ModelArgs, dir: &Path) -> String {
    if args.model == "default" {
        "default".to_string()
    } else {
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| args.model.clone())
    }
}

/// What the studio shows of its model, from the checkpoint (`loaded`: the model this process computes with, if any;
/// a replica whose workers compute reads only the checkpoint's configuration).
fn model_info(
    args: &ServeArgs,
    ckpt: &unike_core::model::Checkpoint,
    loaded: Option<&load::Loaded>,
) -> Result<ModelInfo> {
    let s = ckpt.summary();
    let dtype = match loaded {
        Some(l) => l.model.dtype(),
        None => {
            load::parse_dtype(args.model.dtype.as_deref())?.or(ckpt.stored_dtype()).unwrap_or(candle_core::DType::F32)
        }
    };
    let device = match loaded {
        Some(l) => load::device_name(&l.device),
        None => format!("{} (workers)", args.model.device),
    };
    Ok(ModelInfo {
        name: model_name(&args.model, ckpt.dir()),
        source: public_source(ckpt.dir()),
        dtype: format!("{dtype:?}").to_lowercase(),
        device,
        parameters: ckpt.num_parameters(),
        vocab_size: s.vocab_size,
        text_layers: s.text_layers,
        text_hidden_size: s.text_hidden_size,
        vision_layers: s.vision_layers,
        vision_hidden_size: s.vision_hidden_size,
        image_size: s.image_size,
        image_seq_length: s.image_seq_length,
        family: s.family.to_string(),
    })
}

fn find_dist(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let mut roots = vec![std::env::current_dir().ok()?];
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    roots.into_iter().map(|r| r.join("dist")).find(|d| d.join("index.html").is_file())
}

/// The router: API routes, JSON 404 for unknown API paths, then the front end (SPA fallback to index.html).
fn router(state: AppState, dist: Option<&Path>) -> Router {
    let api = Router::new()
        .route(routes::HEALTH, get(health))
        .route(routes::MODEL, get(model))
        .route(routes::OPENAPI, get(openapi))
        .route(routes::SIGN_UP, post(accounts::sign_up))
        .route(routes::SIGN_IN, post(accounts::sign_in))
        .route(routes::SIGN_OUT, post(accounts::sign_out))
        .route(routes::SESSION, get(accounts::session))
        .route(routes::GUEST, post(accounts::guest))
        .route(routes::GALLERY, get(gallery::list))
        .route(routes::IMAGE, get(gallery::image))
        .route(routes::WORKSPACES, get(workspaces::list).post(workspaces::create))
        .route(routes::WORKSPACE, get(workspaces::get))
        .route(routes::MEMBERS, get(members::members))
        .route(routes::MEMBER, post(members::set_role).delete(members::remove))
        .route(routes::INVITATIONS, get(members::list).post(members::invite))
        .route(routes::INVITATION, delete(members::revoke))
        .route(routes::MY_INVITATIONS, get(members::mine))
        .route(routes::INVITATION_ACCEPT, post(members::accept))
        .route(routes::INVITATION_DECLINE, post(members::decline))
        .route(routes::AUDIT, get(workspaces::audit_feed))
        .route(routes::ANSWER, post(playground::answer))
        .route(routes::EDITS, get(playground::list).post(playground::apply))
        .route(routes::EDIT, delete(playground::undo))
        .route(routes::CASES, get(playground::export).post(playground::import))
        .route(routes::RUNS, get(runs::list).post(runs::create))
        .route(routes::RUN, get(runs::get))
        .route(routes::RUN_CASES, get(run_cases::list))
        .route(routes::RUN_CANCEL, post(runs::cancel))
        .route(routes::LEADERBOARD, get(leaderboard::json))
        .route(routes::LEADERBOARD_CSV, get(leaderboard::csv))
        .route(routes::EVENTS, get(events::stream))
        .route(routes::EXPLORER, get(explorer::view))
        .route("/api/{*rest}", any(api_not_found))
        // A handler's panic is our bug: a logged JSON 500, and the server goes on.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|p: Box<dyn std::any::Any + Send>| {
            error::ApiErr::internal(format!("a handler panicked: {}", worker::panic_message(&*p))).into_response()
        }))
        .layer(axum::middleware::from_fn(error::refuse_nul))
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(DefaultBodyLimit::max(4 * 1024 * 1024))
        .with_state(state);
    match dist {
        Some(d) => api.fallback_service(ServeDir::new(d).fallback(ServeFile::new(d.join("index.html")))),
        None => api.fallback(no_front_end),
    }
}

pub use store::write_tx;

async fn serve(args: ServeArgs) -> Result<()> {
    let dist = find_dist(args.dist.as_deref());
    match &dist {
        Some(d) if d.join("index.html").is_file() => {}
        Some(d) => anyhow::bail!("{} has no index.html: build the front end with trunk first", d.display()),
        None => eprintln!("warning: no built front end (dist/index.html) found; serving the API only"),
    }
    let (db, data_dir) = store::open(&args.db, args.data_dir.as_deref()).await?;
    let reference_root = match args.reference_results.as_deref() {
        Some("none") => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => Some(unike_pipeline::model_dir::repo_root().join("results")),
    };
    if let Some(root) = reference_root {
        // A folder that cannot be imported is reported and left out; the studio still starts.
        match reference::import(&db, &root).await {
            Ok(done) => {
                if done.runs > 0 {
                    eprintln!("studio: imported {} reference run(s) from {}", done.runs, root.display());
                }
                for s in done.skipped {
                    eprintln!("warning: reference results left out: {s}");
                }
            }
            Err(e) => eprintln!("warning: reference results of {} not imported: {e:#}", root.display()),
        }
    }
    let relay = (store::backend(&db) == store::Backend::Postgres).then(relay::Relay::new);
    // Replicas of one PostgreSQL database share their rate limits and sign-in throttles there.
    let shared = (store::backend(&db) == store::Backend::Postgres).then(|| db.clone());
    let addr = args.addr;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    // A replica whose workers compute everything reads only the checkpoint's configuration, never its weights.
    let external = args.workers == Workers::External;
    let model_args = args.model.clone();
    let loaded =
        if external { None } else { Some(Arc::new(tokio::task::spawn_blocking(move || model_args.load()).await??)) };
    let ckpt = match &loaded {
        Some(l) => l.ckpt.clone(),
        None => unike_core::model::Checkpoint::open(unike_pipeline::model_dir::resolve(&args.model.model)?)?,
    };
    let info = model_info(&args, &ckpt, loaded.as_deref())?;
    let loaded_dir = ckpt.dir().clone();
    // The model's own world (the seed its training.json records; world 0 for a model without one), generated once:
    // the gallery, the memory of unrelated inputs of T-Patcher and UniKE, and the cases of every run on the world
    // (a run's seed draws its cases; it no longer makes a world).
    let own = unike_core::train::save::TrainingRecord::read(&loaded_dir)?.map(|r| r.recipe.seed);
    // Under the studio's own data folder, not at a predictable path of the shared temporary directory.
    let world_source = unike_pipeline::data::DataSource::world_in(&data_dir, own.unwrap_or(0), own)?;
    let world = unike_pipeline::data::world_dir_in(&data_dir, own.unwrap_or(0))?;
    let gallery = Arc::new(Gallery::load(&world, 24, 12)?);
    // With external workers the answers and edits go to them too; this process keeps the model for what it shows.
    let worker = match &loaded {
        None => Worker::remote(remote::Remote::new(db.clone(), data_dir.clone(), info.name.clone(), args.queue)),
        Some(loaded) => Worker::spawn(
            loaded.clone(),
            world.clone(),
            unike_pipeline::model_dir::repo_root(),
            info.name.clone(),
            args.queue,
            args.patch_cache.saturating_mul(1_000_000),
            args.method_cache_mb as usize * 1024 * 1024,
        ),
    };
    // UniKE's K, what the explorer's focus retrieves by default (the model's hyper-parameter file, else the default).
    let top_k =
        unike_core::edit::hparams::resolve(&unike_pipeline::model_dir::repo_root(), "unike", &info.name, ckpt.family())
            .map(|p| unike_core::edit::hparams::load::<unike_core::edit::unike::UniKeParams>(&p))
            .transpose()?
            .unwrap_or_default()
            .top_k;
    let explorer = Arc::new(explorer::ExplorerState::new(loaded_dir.clone(), top_k));
    let (runs, updates) = RunQueue::spawn(loaded, data_dir.clone(), world_source, args.run_queue as usize);
    let state = AppState {
        db,
        info: Arc::new(info.clone()),
        worker,
        runs,
        events: broadcast::channel(256).0,
        limits: Arc::new(RateLimits::new(args.demo, 30.0, 0.5, shared.clone())),
        auth_throttle: Arc::new(throttle::AuthThrottle::new(
            args.auth_attempts as usize,
            args.auth_failures as usize,
            args.hash_concurrency as usize,
            shared.clone(),
        )),
        streams: Arc::new(events::StreamCounts::new(
            args.streams_per_session as usize,
            args.streams_per_address as usize,
        )),
        access_epoch: Arc::default(),
        cases_per_workspace: args.cases_per_workspace as usize,
        workspaces_per_user: i64::from(args.workspaces_per_user),
        uploads_bytes: u64::from(args.uploads_mb) * 1024 * 1024,
        snapshot_quota: Arc::new(snapshots::SnapshotQuota::new(
            u64::from(args.snapshot_mb) * 1024 * 1024,
            u64::from(args.snapshot_mb.min(64)) * 1024 * 1024,
        )),
        demo: args.demo,
        secure_cookies: args.secure_cookies,
        trust_proxy: args.trust_proxy,
        data_dir,
        external_workers: (args.workers == Workers::External).then_some(args.shard_cases as usize),
        relay: relay.as_ref().map(|(r, _)| r.clone()),
        gallery,
        world,
        edit_locks: Arc::default(),
        explorer,
    };
    tokio::spawn(runs::record(state.clone(), updates));
    if let Some((r, rx)) = relay {
        tokio::spawn(relay::send(state.clone(), rx));
        tokio::spawn(relay::listen(state.clone(), args.db.clone(), r.origin().to_string()));
    }
    // Runs the workers compute are theirs to take up again; this server only shows how they go.
    let resumed = if state.external_workers.is_some() {
        tokio::spawn(runs::watch_external(state.clone()));
        0
    } else {
        runs::resume(&state).await?
    };
    cleanup::spawn(state.clone());
    let orphans = playground::remove_orphan_patches(&state).await.map_err(|e| anyhow::anyhow!(e.message))?;
    if orphans > 0 {
        eprintln!("studio: removed {orphans} patch(es) no edit refers to");
    }
    // Load UniKE's memory and encoders ahead of the first edit when they are built (building them is left to the first
    // UniKE edit, which says so in the log).
    if unike_core::edit::unike::Artifacts::present(&loaded_dir) {
        state.worker.warm("unike");
    }
    let app = router(state, dist.as_deref());
    eprintln!(
        "UniKE Studio on http://{} (model {} from {}, {} parameters; database {}{}{})",
        listener.local_addr()?,
        info.name,
        info.source,
        info.parameters,
        args.db,
        if args.demo { "; demo mode" } else { "" },
        if resumed > 0 { format!("; resuming {resumed} unfinished runs") } else { String::new() },
    );
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn openapi() -> Json<serde_json::Value> {
    Json(openapi::document(env!("CARGO_PKG_VERSION")))
}

async fn health(State(s): State<AppState>) -> error::ApiResult<Json<HealthResponse>> {
    let workers = match s.external_workers {
        Some(_) => Some(workers::live_workers(&s.db, &s.info.name, None).await?),
        None => None,
    };
    Ok(Json(HealthResponse { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into(), workers }))
}

async fn model(State(s): State<AppState>) -> Json<ModelInfo> {
    Json((*s.info).clone())
}

async fn api_not_found() -> Response {
    let body = ApiError { error: "no such API route".into(), code: 404 };
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn no_front_end() -> Html<&'static str> {
    Html(
        "<!doctype html><title>UniKE Studio</title><p>The front end is not built. Run <code>./studio serve</code> \
         from the repository (it builds it with trunk), or pass <code>--dist DIR</code>.</p>",
    )
}
