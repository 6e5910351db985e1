//! `GET /api/explorer`: the knowledge-space explorer (issue 20 §1; paper Fig. 5a). UniKE's in-context knowledge
//! memory of one layer in the raw, semantic and truthfulness spaces ([`unike_core::edit::unike::explore`]), with a
//! workspace's UniKE edits placed among it and, for a chosen entry, the entries latent editing retrieves for it.
//!
//! The memory and encoders are read from the model's `unike/` folder (not from the model worker: a replica whose
//! workers compute has them too when they share the model folder); fits are cached per layer and projection and
//! dropped when the artifacts change on disk. One fit runs at a time, a few requests wait for it, the rest are told
//! to come back (503). A model whose memory is not built yet answers 503 (the first UniKE edit builds it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use candle_core::{Device, Tensor};
use tokio::sync::Semaphore;
use unike_core::edit::unike::explore::{self, ExploreParams, Explorer, Projection, Space};
use unike_core::edit::unike::Artifacts;
use unike_core::edit::Patch;
use unike_shared::explorer::{
    AnswerKind, ExplorerEntry, ExplorerFocus, ExplorerLink, ExplorerPoint, ExplorerQuery, ExplorerSpace, ExplorerView,
    FOCUS_K_MAX,
};
use unike_shared::playground::AppliedEdit;
use unike_shared::workspace::Role;

use super::error::{ApiErr, ApiResult};
use super::{auth, AppState};

/// Fits kept (layers × projections).
const FITS_MAX: usize = 16;
/// Requests that may wait for a fit in progress.
const WAITING_MAX: usize = 4;
/// Edits of a workspace drawn (the newest).
const EDITS_MAX: usize = 256;

/// The artifacts as loaded, with the modification times they were loaded at.
type Loaded = (Option<SystemTime>, Arc<Artifacts>);

/// What the explorer keeps between requests.
pub struct ExplorerState {
    model_dir: PathBuf,
    /// UniKE's K (what a focus retrieves by default).
    top_k: usize,
    artifacts: Mutex<Option<Loaded>>,
    fits: Mutex<HashMap<(usize, Projection), Arc<Explorer>>>,
    slot: Semaphore,
    waiting: AtomicUsize,
}

impl ExplorerState {
    pub fn new(model_dir: PathBuf, top_k: usize) -> Self {
        Self {
            model_dir,
            top_k: top_k.clamp(1, FOCUS_K_MAX),
            artifacts: Mutex::new(None),
            fits: Mutex::new(HashMap::new()),
            slot: Semaphore::new(1),
            waiting: AtomicUsize::new(0),
        }
    }

    /// When the artifacts were last written (the later of the two files).
    fn stamp(&self) -> Option<SystemTime> {
        let dir = Artifacts::dir(&self.model_dir);
        ["memory.safetensors", "encoders.safetensors"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok())
            .max()
    }

    fn cached(&self) -> Option<Arc<Artifacts>> {
        let stamp = self.stamp();
        let guard = self.artifacts.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().filter(|(s, _)| *s == stamp).map(|(_, a)| a.clone())
    }
}

/// `GET /api/explorer` (public; a workspace's edits for its viewers).
pub async fn view(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ExplorerQuery>,
) -> ApiResult<Json<ExplorerView>> {
    let projection = match q.projection.as_deref().unwrap_or("tsne") {
        "tsne" => Projection::Tsne,
        "pca" => Projection::Pca,
        p => return Err(ApiErr::bad_request(format!("unknown projection {p:?}: tsne or pca"))),
    };
    let k = q.k.unwrap_or(st.explorer.top_k);
    if k == 0 || k > FOCUS_K_MAX {
        return Err(ApiErr::bad_request(format!("k must be 1 to {FOCUS_K_MAX}")));
    }
    let focus = q.focus.as_deref().map(parse_focus).transpose()?;
    let edits = match q.workspace {
        Some(ws) => {
            let c = auth::signed_in(&st, &headers).await?;
            auth::role_in(&st, &c, ws, Role::Viewer).await?;
            workspace_edits(&st, ws).await?
        }
        None => Vec::new(),
    };
    if matches!(focus, Some(Focus::Edit(_))) && q.workspace.is_none() {
        return Err(ApiErr::bad_request("an edit as focus needs its workspace"));
    }
    let art = artifacts(&st).await?;
    let layer = q.layer.unwrap_or_else(|| art.memory.layers.last().copied().unwrap_or(0));
    if !art.memory.layers.contains(&layer) {
        return Err(ApiErr::bad_request(format!(
            "layer {layer} is not in the memory (layers {:?})",
            art.memory.layers
        )));
    }
    let fit = fit(&st, &art, layer, projection).await?;
    let model = st.info.name.clone();
    let view = tokio::task::spawn_blocking(move || build(&art, &fit, &edits, focus, k, model))
        .await
        .map_err(ApiErr::internal)??;
    Ok(Json(view))
}

/// An entry named by `focus`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Focus {
    Memory(usize),
    Edit(i64),
}

fn parse_focus(s: &str) -> ApiResult<Focus> {
    let bad = || ApiErr::bad_request(format!("focus {s:?} is neither m:<memory index> nor e:<edit id>"));
    match s.split_once(':') {
        Some(("m", n)) => n.parse().map(Focus::Memory).map_err(|_| bad()),
        Some(("e", n)) => n.parse().map(Focus::Edit).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// A workspace's active edits (id, what they show, the patch), newest [`EDITS_MAX`], bottom first.
async fn workspace_edits(st: &AppState, ws: i64) -> ApiResult<Vec<(AppliedEdit, PathBuf)>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT result_json, patch_dir FROM applied_edits WHERE workspace_id = $1 AND active = 1 ORDER BY id DESC \
         LIMIT $2",
    )
    .bind(ws)
    .bind(EDITS_MAX as i64)
    .fetch_all(&st.db)
    .await?;
    let mut out = rows
        .into_iter()
        .map(|(j, d)| Ok((serde_json::from_str::<AppliedEdit>(&j).map_err(ApiErr::internal)?, st.data_dir.join(d))))
        .collect::<ApiResult<Vec<_>>>()?;
    out.reverse();
    Ok(out)
}

/// The memory and encoders, loaded once (again when they change on disk). Missing ones are a 503 that says they are
/// being built (the first request asks the model worker to build them).
async fn artifacts(st: &AppState) -> ApiResult<Arc<Artifacts>> {
    let ex = &st.explorer;
    if let Some(a) = ex.cached() {
        return Ok(a);
    }
    if !Artifacts::present(&ex.model_dir) {
        // Not built here: building takes the model worker for minutes, and a visitor of this page must not hold up
        // everyone's edits and answers.
        return Err(ApiErr::unavailable(
            "UniKE's knowledge memory is not built yet: the first UniKE edit builds it (a few minutes on the default \
             model; `./studio serve` and `unike build-memory` build it ahead)",
        ));
    }
    let dir = ex.model_dir.clone();
    let stamp = ex.stamp();
    let art = tokio::task::spawn_blocking(move || Artifacts::load(&dir, &Device::Cpu))
        .await
        .map_err(ApiErr::internal)?
        .map_err(ApiErr::internal)?;
    let art = Arc::new(art);
    *ex.artifacts.lock().unwrap_or_else(|p| p.into_inner()) = Some((stamp, art.clone()));
    ex.fits.lock().unwrap_or_else(|p| p.into_inner()).clear();
    Ok(art)
}

/// The fit of `layer` by `projection`: cached, or computed (one at a time, a few waiting).
async fn fit(st: &AppState, art: &Arc<Artifacts>, layer: usize, projection: Projection) -> ApiResult<Arc<Explorer>> {
    let ex = &st.explorer;
    let get = || ex.fits.lock().unwrap_or_else(|p| p.into_inner()).get(&(layer, projection)).cloned();
    if let Some(f) = get() {
        return Ok(f);
    }
    if ex.waiting.fetch_add(1, Ordering::SeqCst) >= WAITING_MAX {
        ex.waiting.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiErr::unavailable("the explorer is busy projecting; try again in a moment"));
    }
    let permit = ex.slot.acquire().await;
    ex.waiting.fetch_sub(1, Ordering::SeqCst);
    let _permit = permit.map_err(ApiErr::internal)?;
    if let Some(f) = get() {
        return Ok(f);
    }
    let a = art.clone();
    let params = ExploreParams { projection, ..Default::default() };
    let fitted = tokio::task::spawn_blocking(move || {
        let enc = a.encoders.layer(layer)?;
        Explorer::fit(&a.memory, enc, layer, &params)
    })
    .await
    .map_err(ApiErr::internal)?
    .map_err(ApiErr::internal)?;
    eprintln!(
        "studio: explorer projected layer {layer} ({projection:?}, {} points) in {:.2} s",
        2 * fitted.sample.len(),
        fitted.seconds
    );
    let fitted = Arc::new(fitted);
    let mut fits = ex.fits.lock().unwrap_or_else(|p| p.into_inner());
    if fits.len() >= FITS_MAX {
        fits.clear();
    }
    fits.insert((layer, projection), fitted.clone());
    Ok(fitted)
}

/// The view: the sample's entries and points, the edits' placed points, the focus's retrieval.
fn build(
    art: &Artifacts,
    fit: &Explorer,
    edits: &[(AppliedEdit, PathBuf)],
    focus: Option<Focus>,
    k: usize,
    model: String,
) -> ApiResult<ExplorerView> {
    let mem = &art.memory;
    let li = mem.layer_index(fit.layer).map_err(ApiErr::internal)?;
    let enc = art.encoders.layer(fit.layer).map_err(ApiErr::internal)?;
    let mut entries: Vec<ExplorerEntry> = fit.sample.iter().map(|&i| memory_entry(art, i, true)).collect();
    let m = fit.sample.len();
    let mut spaces: Vec<ExplorerSpace> = fit
        .spaces
        .iter()
        .map(|s| ExplorerSpace {
            space: space_name(s.space).into(),
            title: space_title(s.space).into(),
            kind_agreement: s.kind_agreement,
            points: s
                .coords
                .iter()
                .enumerate()
                .map(|(p, c)| {
                    let [x, y] = scaled(s, *c);
                    ExplorerPoint {
                        entry: (p % m) as u32,
                        kind: if p < m { AnswerKind::Positive } else { AnswerKind::Negative },
                        x,
                        y,
                    }
                })
                .collect(),
        })
        .collect();
    // The edits with states at this layer, placed by their positive state.
    let mut without = Vec::new();
    let mut edit_rows: Vec<(i64, u32)> = Vec::new();
    let (mut e_sem, mut e_pos) = (Vec::new(), Vec::new());
    for (e, dir) in edits {
        match Patch::latent_of(dir, &Device::Cpu).ok().and_then(|mut l| l.remove(&fit.layer)) {
            Some((s, p)) => {
                edit_rows.push((e.id, entries.len() as u32));
                entries.push(edit_entry(e));
                e_sem.push(s.narrow(0, 0, 1).map_err(ApiErr::internal)?);
                e_pos.push(p.narrow(0, 0, 1).map_err(ApiErr::internal)?);
            }
            None => without.push(e.id),
        }
    }
    let cat = |v: &[Tensor]| -> ApiResult<Option<Tensor>> {
        if v.is_empty() {
            Ok(None)
        } else {
            Ok(Some(Tensor::cat(v, 0).map_err(ApiErr::internal)?))
        }
    };
    let (e_sem, e_pos) = (cat(&e_sem)?, cat(&e_pos)?);
    if let Some(pos) = &e_pos {
        place(fit, enc, &mut spaces, pos, &edit_rows.iter().map(|r| r.1).collect::<Vec<_>>(), AnswerKind::Positive)?;
    }
    // The focus's retrieval over the memory and the edits, as latent editing scores it.
    let focus = match focus {
        None => None,
        Some(f) => {
            let (query, at) = match f {
                Focus::Memory(i) if i < mem.len() => {
                    let at = memory_at(art, fit, enc, &mut entries, &mut spaces, i, li)?;
                    (mem.h_sem[li].get(i).map_err(ApiErr::internal)?, at)
                }
                Focus::Memory(i) => {
                    return Err(ApiErr::bad_request(format!("the memory has {} entries, not {}", mem.len(), i + 1)))
                }
                Focus::Edit(id) => {
                    let Some(row) = edit_rows.iter().position(|r| r.0 == id) else {
                        return Err(ApiErr::bad_request(format!(
                            "edit {id} has no knowledge state at layer {} in this workspace",
                            fit.layer
                        )));
                    };
                    let sem = e_sem.as_ref().ok_or_else(|| ApiErr::internal("edit states vanished"))?;
                    (sem.get(row).map_err(ApiErr::internal)?, edit_rows[row].1)
                }
            };
            let got =
                explore::retrieve(&mem.h_sem[li], e_sem.as_ref(), &enc.centre, &query, k).map_err(ApiErr::internal)?;
            let mut links = Vec::new();
            for r in got {
                let entry = if r.index < mem.len() {
                    memory_at(art, fit, enc, &mut entries, &mut spaces, r.index, li)?
                } else {
                    edit_rows[r.index - mem.len()].1
                };
                // The entry itself (a memory question retrieves its own state first) is no link.
                if entry != at {
                    links.push(ExplorerLink { entry, score: r.score });
                }
            }
            Some(ExplorerFocus { entry: at, links })
        }
    };
    Ok(ExplorerView {
        model,
        layers: mem.layers.clone(),
        layer: fit.layer,
        projection: match fit.params.projection {
            Projection::Tsne => "tsne",
            Projection::Pca => "pca",
        }
        .into(),
        memory_size: mem.len(),
        sampled: m,
        entries,
        spaces,
        focus,
        fit_seconds: fit.seconds,
        edits_without_states: without,
    })
}

/// The index among the entries of memory entry `i`: its place in the sample, or among the entries already added,
/// else it is added with both its states placed.
fn memory_at(
    art: &Artifacts,
    fit: &Explorer,
    enc: &unike_core::edit::unike::encoders::LayerEncoders,
    entries: &mut Vec<ExplorerEntry>,
    spaces: &mut [ExplorerSpace],
    i: usize,
    li: usize,
) -> ApiResult<u32> {
    if let Ok(p) = fit.sample.binary_search(&i) {
        return Ok(p as u32);
    }
    let id = format!("m:{i}");
    if let Some(p) = entries.iter().position(|e| e.id == id) {
        return Ok(p as u32);
    }
    let at = entries.len() as u32;
    entries.push(memory_entry(art, i, false));
    let row = |t: &Tensor| t.narrow(0, i, 1).map_err(ApiErr::internal);
    place(fit, enc, spaces, &row(&art.memory.h_pos[li])?, &[at], AnswerKind::Positive)?;
    place(fit, enc, spaces, &row(&art.memory.h_neg[li])?, &[at], AnswerKind::Negative)?;
    Ok(at)
}

/// Places states `h` `(e, d)` (of entries `at`) in every space.
fn place(
    fit: &Explorer,
    enc: &unike_core::edit::unike::encoders::LayerEncoders,
    spaces: &mut [ExplorerSpace],
    h: &Tensor,
    at: &[u32],
    kind: AnswerKind,
) -> ApiResult<()> {
    for (s, out) in fit.spaces.iter().zip(spaces.iter_mut()) {
        let f = explore::features(enc, s.space, h).map_err(ApiErr::internal)?;
        for (c, &entry) in s.place(&f).map_err(ApiErr::internal)?.into_iter().zip(at) {
            let [x, y] = scaled(s, c);
            out.points.push(ExplorerPoint { entry, kind, x, y });
        }
    }
    Ok(())
}

/// A point in units of the fitted points' largest coordinate (so every picture spans about −1 to 1), to three
/// decimals (the JSON stays small; a point is a few pixels wide).
fn scaled(s: &unike_core::edit::unike::explore::SpaceFit, c: [f32; 2]) -> [f32; 2] {
    let scale = s.extent;
    [(c[0] / scale * 1000.0).round() / 1000.0, (c[1] / scale * 1000.0).round() / 1000.0]
}

fn memory_entry(art: &Artifacts, i: usize, sampled: bool) -> ExplorerEntry {
    let t = &art.memory.triplets[i];
    ExplorerEntry {
        id: format!("m:{i}"),
        question: t.question.clone(),
        image: t.image.clone(),
        level: t.level.clone(),
        positive: t.pos.clone(),
        negative: t.neg.clone(),
        sampled,
    }
}

fn edit_entry(e: &AppliedEdit) -> ExplorerEntry {
    let image = e.image_url.as_deref().and_then(|u| u.rsplit('/').next()).unwrap_or("(no image)").to_string();
    ExplorerEntry {
        id: format!("e:{}", e.id),
        question: e.question.clone(),
        image,
        level: "edit".into(),
        positive: e.target.clone(),
        negative: e.before.clone(),
        sampled: true,
    }
}

fn space_name(s: Space) -> &'static str {
    match s {
        Space::Raw => "raw",
        Space::Semantic => "semantic",
        Space::Truthful => "truthful",
    }
}

fn space_title(s: Space) -> &'static str {
    match s {
        Space::Raw => "Hidden states",
        Space::Semantic => "Semantic space (Enc_sem)",
        Space::Truthful => "Truthfulness space (Enc_tru)",
    }
}
