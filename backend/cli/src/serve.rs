//! `unike serve`: the studio's HTTP server: the built front end (`dist/`, from trunk) and the JSON API whose
//! routes and messages live in `unike-shared`.
//!
//! Model work never runs inside an async handler: the model is opened and checked on a blocking thread at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use clap::Args;
use tower_http::services::{ServeDir, ServeFile};
use unike_shared::{routes, ApiError, HealthResponse, ModelInfo};

use crate::device;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub model: device::ModelArgs,
    /// The built front end (default: `dist/` of the repository).
    #[arg(long)]
    pub dist: Option<PathBuf>,
}

#[derive(Clone)]
struct AppState {
    info: Arc<ModelInfo>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(args))
}

fn model_info(args: &ServeArgs) -> Result<ModelInfo> {
    let device::Loaded { dir, ckpt, model, device: dev, .. } = args.model.load()?;
    let cfg = model.config();
    let name = if args.model.model == "default" {
        "default".to_string()
    } else {
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| args.model.model.clone())
    };
    Ok(ModelInfo {
        name,
        source: dir.display().to_string(),
        dtype: format!("{:?}", model.dtype()).to_lowercase(),
        device: device::device_name(&dev),
        parameters: ckpt.num_parameters,
        vocab_size: cfg.text.vocab_size,
        text_layers: cfg.text.num_hidden_layers,
        text_hidden_size: cfg.text.hidden_size,
        vision_layers: cfg.vision.num_hidden_layers,
        vision_hidden_size: cfg.vision.hidden_size,
        image_size: cfg.vision.image_size,
        image_seq_length: cfg.image_seq_length,
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
        .route("/api/{*rest}", any(api_not_found))
        .with_state(state);
    match dist {
        Some(d) => api.fallback_service(ServeDir::new(d).fallback(ServeFile::new(d.join("index.html")))),
        None => api.fallback(no_front_end),
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let dist = find_dist(args.dist.as_deref());
    match &dist {
        Some(d) if d.join("index.html").is_file() => {}
        Some(d) => anyhow::bail!("{} has no index.html: build the front end with trunk first", d.display()),
        None => eprintln!("warning: no built front end (dist/index.html) found; serving the API only"),
    }
    let info_args = ServeArgs { dist: None, ..args };
    let addr = info_args.addr;
    let info = tokio::task::spawn_blocking(move || model_info(&info_args)).await??;
    let app = router(AppState { info: Arc::new(info.clone()) }, dist.as_deref());
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!(
        "UniKE Studio on http://{} (model {} from {}, {} parameters)",
        listener.local_addr()?,
        info.name,
        info.source,
        info.parameters
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn health() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
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
