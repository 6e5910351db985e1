//! The Playground's API: answers under a workspace's edits, applying and undoing edits (with their probes), and the
//! workspace's edit cases as MMEdit JSON.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::Json;
use unike_core::edit::registry;
use unike_shared::events::Event;
use unike_shared::playground::{
    AnswerRequest, AnswerResponse, AppliedEdit, CaseImport, EditRequest, EditStack, ImportSummary, MmEditCase,
    ProbeKind, TEXT_MAX,
};
use unike_shared::routes;
use unike_shared::workspace::Role;

use super::auth::{self, Caller};
use super::demo::DEMO_CAPS;
use super::error::{ApiErr, ApiResult, Body};
use super::gallery::{self, ResolvedImage};
use super::worker::{EditJob, Expect, ProbeSpec, StackEntry};
use super::{audit, events, AppState};

/// Longest image name or path an imported case may give.
const IMAGE_NAME_MAX: usize = 1024;

/// Checks a user-typed text: not empty, at most [`TEXT_MAX`] characters.
pub fn text(what: &str, s: &str) -> ApiResult<String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(ApiErr::bad_request(format!("the {what} is empty")));
    }
    if t.chars().count() > TEXT_MAX {
        return Err(ApiErr::bad_request(format!("the {what} is longer than {TEXT_MAX} characters")));
    }
    Ok(t.to_string())
}

/// The workspace's stack as the database has it, bottom first.
async fn stack(st: &AppState, ws: i64) -> ApiResult<Vec<StackEntry>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT patch_dir, method FROM applied_edits WHERE workspace_id = $1 AND active = 1 ORDER BY id",
    )
    .bind(ws)
    .fetch_all(&st.db)
    .await?;
    Ok(rows.into_iter().map(|(d, method)| StackEntry { dir: st.data_dir.join(d), method }).collect())
}

async fn edit_stack(st: &AppState, ws: i64) -> ApiResult<EditStack> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT result_json FROM applied_edits WHERE workspace_id = $1 AND active = 1 ORDER BY id")
            .bind(ws)
            .fetch_all(&st.db)
            .await?;
    let edits = rows.iter().map(|(j,)| serde_json::from_str(j)).collect::<Result<_, _>>().map_err(ApiErr::internal)?;
    Ok(EditStack { edits })
}

/// `POST /api/workspaces/{id}/answer` (viewers and up).
pub async fn answer(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(ws): Path<i64>,
    Body(req): Body<AnswerRequest>,
) -> ApiResult<Json<AnswerResponse>> {
    let c = auth::writer(&st, &headers, addr.ip()).await?;
    auth::role_in(&st, &c, ws, Role::Viewer).await?;
    let question = text("question", &req.question)?;
    // An answer's upload is not kept (the resolved image removes it once the answer is back).
    let resolved = match &req.image {
        Some(i) => Some(gallery::resolve(&st, i, gallery::Keep::Transient).await?),
        None => None,
    };
    let image = resolved.as_ref().map(|r| r.path.clone());
    let entries = stack(&st, ws).await?;
    let edits = entries.len();
    let t = Instant::now();
    let answer = st.worker.answer(entries, image, question).await?;
    Ok(Json(AnswerResponse { answer, edits, ms: t.elapsed().as_secs_f64() * 1e3 }))
}

/// `GET /api/workspaces/{id}/edits`.
pub async fn list(State(st): State<AppState>, headers: HeaderMap, Path(ws): Path<i64>) -> ApiResult<Json<EditStack>> {
    let c = auth::signed_in(&st, &headers).await?;
    auth::role_in(&st, &c, ws, Role::Viewer).await?;
    Ok(Json(edit_stack(&st, ws).await?))
}

/// The probes of an edit: from the gallery case of its image when there is one (rephrased question, the entity's
/// other image, portability), and the unrelated text and image questions of that case (or of the gallery's first).
fn probes(st: &AppState, img: Option<&ResolvedImage<'_>>, question: &str) -> Vec<ProbeSpec> {
    let mut out = Vec::new();
    let case = img.and_then(|i| i.case);
    if let (Some((id, c)), Some(i)) = (case, img) {
        if c.prompt.trim() == question {
            out.push(ProbeSpec {
                kind: ProbeKind::TGenerality,
                question: c.rephrase_prompt.clone(),
                image: Some(i.path.clone()),
                image_url: Some(i.url.clone()),
                expect: Expect::Target,
            });
        }
        out.push(ProbeSpec {
            kind: ProbeKind::MGenerality,
            question: question.to_string(),
            image: Some(c.rephrase_image.clone()),
            image_url: Some(routes::image(&format!("{id}~other"))),
            expect: Expect::Target,
        });
    }
    if let Some((id, c)) = case.or_else(|| st.gallery.first()) {
        out.push(ProbeSpec {
            kind: ProbeKind::TLocality,
            question: c.loc_question.clone(),
            image: None,
            image_url: None,
            expect: Expect::Unchanged,
        });
        out.push(ProbeSpec {
            kind: ProbeKind::MLocality,
            question: c.m_loc_question.clone(),
            image: Some(c.m_loc_image.clone()),
            image_url: Some(routes::image(&format!("{id}~unrelated"))),
            expect: Expect::Unchanged,
        });
    }
    if let (Some((_, c)), Some(i)) = (case, img) {
        for p in &c.portability {
            out.push(ProbeSpec {
                kind: ProbeKind::Portability,
                question: p.question.clone(),
                image: Some(i.path.clone()),
                image_url: Some(i.url.clone()),
                expect: Expect::Answer(p.answer.clone()),
            });
        }
    }
    out
}

/// `POST /api/workspaces/{id}/edits` (editors): computes the edit on the worker, then stores the case, the patch and
/// the audit entry in one transaction, and tells the workspace's open pages.
pub async fn apply(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(ws): Path<i64>,
    Body(req): Body<EditRequest>,
) -> ApiResult<Json<AppliedEdit>> {
    let c = auth::writer(&st, &headers, addr.ip()).await?;
    auth::role_in(&st, &c, ws, Role::Editor).await?;
    let question = text("question", &req.question)?;
    let target = text("target", &req.target)?;
    let method = req.method.trim().to_string();
    registry::check_name(&method).map_err(|e| ApiErr::bad_request(e.to_string()))?;
    // One edit at a time: a stack is read, extended and written as one step.
    let guard = st.edit_locks.lock(ws).await;
    let entries = stack(&st, ws).await?;
    if c.user.guest {
        // Every edit keeps its patch on disk (undone ones too, for the audit trail), so a sandbox's total is capped.
        let made: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM applied_edits WHERE workspace_id = $1")
            .bind(ws)
            .fetch_one(&st.db)
            .await?;
        if entries.len() >= DEMO_CAPS.edits {
            return Err(ApiErr::too_many(format!("a demo sandbox holds {} edits; undo one first", DEMO_CAPS.edits)));
        }
        if made as usize >= DEMO_CAPS.edits_total {
            return Err(ApiErr::too_many(format!("a demo sandbox may make {} edits", DEMO_CAPS.edits_total)));
        }
    }
    // Stored only once the caps allow the edit.
    let img = match &req.image {
        Some(i) => Some(gallery::resolve(&st, i, gallery::Keep::Stored).await?),
        None => None,
    };
    let rel = PathBuf::from("patches").join(format!("ws{ws}")).join(auth::random_hex(8)?);
    let job = EditJob {
        method: method.clone(),
        question: question.clone(),
        target: target.clone(),
        image: img.as_ref().map(|i| i.path.clone()),
        seed: req.seed,
        probes: probes(&st, img.as_ref(), &question),
        save_to: st.data_dir.join(&rel),
    };
    let mut out = st.worker.edit(entries, job).await?;
    if let Some(first) = out.probes.first_mut() {
        first.image_url = img.as_ref().map(|i| i.url.clone());
    }
    let mut edit = AppliedEdit {
        id: 0,
        method: method.clone(),
        question: question.clone(),
        target: target.clone(),
        image_url: img.as_ref().map(|i| i.url.clone()),
        seed: req.seed,
        author: c.user.username.clone(),
        created_at: String::new(),
        before: out.before,
        after: out.after,
        edit_ms: out.edit_ms,
        probes: out.probes,
        demonstrations: out.demonstrations,
    };
    let rephrase = img
        .as_ref()
        .and_then(|i| i.case)
        .filter(|(_, c)| c.prompt.trim() == question)
        .map(|(_, c)| c.rephrase_prompt.clone());
    // Once the model has made the patch it is recorded (or removed) in a task of its own, also when the client has
    // gone meanwhile: what is on disk is what the database counts. The stack's lock goes with it.
    let task = tokio::spawn(async move {
        let _guard = guard;
        let stored = store_edit(&st, &c, ws, req.seed, &rel, rephrase, &mut edit).await;
        if let Err(e) = stored {
            // Nothing refers to the patch: a member removed meanwhile, or a failed write, leaves no file behind.
            for f in unike_core::edit::Patch::files(&st.data_dir.join(&rel)) {
                let _ = std::fs::remove_file(f);
            }
            return Err(e);
        }
        events::publish(&st, Event::EditApplied { workspace_id: ws, edit: edit.clone() });
        Ok(edit)
    });
    Ok(Json(task.await.map_err(ApiErr::internal)??))
}

/// Stores an applied edit (its case, its row, the audit line) in one transaction, after checking again that the
/// caller may still edit the workspace.
async fn store_edit(
    st: &AppState,
    c: &Caller,
    ws: i64,
    seed: u64,
    rel: &std::path::Path,
    rephrase: Option<String>,
    edit: &mut AppliedEdit,
) -> ApiResult<()> {
    let (question, target, method) = (edit.question.clone(), edit.target.clone(), edit.method.clone());
    let mut tx = super::write_tx(&st.db).await?;
    auth::recheck(&mut tx, c, ws, Role::Editor).await?;
    let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM edit_cases WHERE workspace_id = $1")
        .bind(ws)
        .fetch_one(&mut *tx)
        .await?;
    let quota = if c.user.guest { DEMO_CAPS.cases } else { st.cases_per_workspace };
    if held as usize >= quota {
        return Err(ApiErr::quota(format!("a workspace holds at most {quota} cases (each edit adds one)")));
    }
    let case_id: i64 = sqlx::query_scalar(
        "INSERT INTO edit_cases (workspace_id, question, target, pred, image, rephrase, source) \
         VALUES ($1, $2, $3, $4, $5, $6, 'playground') RETURNING id",
    )
    .bind(ws)
    .bind(&question)
    .bind(&target)
    .bind(&edit.before)
    .bind(&edit.image_url)
    .bind(rephrase)
    .fetch_one(&mut *tx)
    .await?;
    let (id, created_at): (i64, String) = sqlx::query_as(
        "INSERT INTO applied_edits (workspace_id, case_id, author_id, method, seed, patch_dir, result_json) \
         VALUES ($1, $2, $3, $4, $5, $6, '{}') RETURNING id, created_at",
    )
    .bind(ws)
    .bind(case_id)
    .bind(c.user.id)
    .bind(&method)
    .bind(seed as i64)
    .bind(rel.to_string_lossy().as_ref())
    .fetch_one(&mut *tx)
    .await?;
    (edit.id, edit.created_at) = (id, created_at);
    sqlx::query("UPDATE applied_edits SET result_json = $1 WHERE id = $2")
        .bind(serde_json::to_string(&*edit).map_err(ApiErr::internal)?)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::record(&mut tx, Some(ws), c.user.id, "edit.apply", &format!("#{id} {method}: {question} → {target}"))
        .await?;
    tx.commit().await?;
    Ok(())
}

/// `DELETE /api/workspaces/{id}/edits/{edit}` (editors): drops one edit from anywhere in the stack.
pub async fn undo(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((ws, edit)): Path<(i64, i64)>,
) -> ApiResult<Json<EditStack>> {
    let c: Caller = auth::writer(&st, &headers, addr.ip()).await?;
    auth::role_in(&st, &c, ws, Role::Editor).await?;
    let _guard = st.edit_locks.lock(ws).await;
    let mut tx = super::write_tx(&st.db).await?;
    auth::recheck(&mut tx, &c, ws, Role::Editor).await?;
    let patch_dir: Option<String> = sqlx::query_scalar(
        "UPDATE applied_edits SET active = 0, undone_at = $3 \
         WHERE id = $1 AND workspace_id = $2 AND active = 1 RETURNING patch_dir",
    )
    .bind(edit)
    .bind(ws)
    .bind(crate::store::now())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(patch_dir) = patch_dir else {
        return Err(ApiErr::not_found(format!("edit {edit} on workspace {ws}'s stack")));
    };
    audit::record(&mut tx, Some(ws), c.user.id, "edit.undo", &format!("#{edit}")).await?;
    tx.commit().await?;
    // An undone edit is never applied again (its case and record stay in the workspace's history): its patch goes, so
    // edit-and-undo loops do not fill the disk.
    for f in unike_core::edit::Patch::files(&st.data_dir.join(&patch_dir)) {
        let _ = std::fs::remove_file(f);
    }
    events::publish(&st, Event::EditUndone { workspace_id: ws, edit_id: edit, by: c.user.username.clone() });
    Ok(Json(edit_stack(&st, ws).await?))
}

/// A stored case of a workspace (authored in the Playground or imported), as MMEdit names its fields.
#[derive(sqlx::FromRow)]
pub struct StoredCase {
    pub id: i64,
    pub question: String,
    pub target: String,
    pub pred: Option<String>,
    pub image: Option<String>,
    pub rephrase: Option<String>,
    pub image_rephrase: Option<String>,
    pub loc: Option<String>,
    pub loc_ans: Option<String>,
    pub m_loc: Option<String>,
    pub m_loc_q: Option<String>,
    pub m_loc_a: Option<String>,
}

/// The workspace's cases, oldest first.
pub async fn stored_cases(st: &AppState, ws: i64) -> ApiResult<Vec<StoredCase>> {
    Ok(sqlx::query_as(
        "SELECT id, question, target, pred, image, rephrase, image_rephrase, loc, loc_ans, m_loc, m_loc_q, m_loc_a \
         FROM edit_cases WHERE workspace_id = $1 ORDER BY id",
    )
    .bind(ws)
    .fetch_all(&st.db)
    .await?)
}

/// `GET /api/workspaces/{id}/cases`: the workspace's cases as MMEdit JSON.
pub async fn export(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(ws): Path<i64>,
) -> ApiResult<Json<Vec<MmEditCase>>> {
    let c = auth::signed_in(&st, &headers).await?;
    auth::role_in(&st, &c, ws, Role::Viewer).await?;
    let rows = stored_cases(&st, ws).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| MmEditCase {
                src: r.question,
                pred: r.pred,
                alt: r.target,
                rephrase: r.rephrase,
                image: r.image.unwrap_or_default(),
                image_rephrase: r.image_rephrase,
                loc: r.loc,
                loc_ans: r.loc_ans,
                m_loc: r.m_loc,
                m_loc_q: r.m_loc_q,
                m_loc_a: r.m_loc_a,
            })
            .collect(),
    ))
}

/// `POST /api/workspaces/{id}/cases` (editors): imports MMEdit cases, all or none.
pub async fn import(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(ws): Path<i64>,
    Body(req): Body<CaseImport>,
) -> ApiResult<Json<ImportSummary>> {
    let c = auth::writer(&st, &headers, addr.ip()).await?;
    auth::role_in(&st, &c, ws, Role::Editor).await?;
    if req.cases.is_empty() || req.cases.len() > 5000 {
        return Err(ApiErr::bad_request("an import has 1 to 5000 cases"));
    }
    for (i, case) in req.cases.iter().enumerate() {
        text(&format!("case {i}'s src"), &case.src)?;
        text(&format!("case {i}'s alt"), &case.alt)?;
        let optional = [
            ("pred", &case.pred),
            ("rephrase", &case.rephrase),
            ("loc", &case.loc),
            ("loc_ans", &case.loc_ans),
            ("m_loc_q", &case.m_loc_q),
            ("m_loc_a", &case.m_loc_a),
        ];
        for (field, value) in optional {
            if value.as_deref().is_some_and(|v| v.chars().count() > TEXT_MAX) {
                return Err(ApiErr::bad_request(format!("case {i}'s {field} is longer than {TEXT_MAX} characters")));
            }
        }
        let images = [
            ("image", Some(&case.image)),
            ("image_rephrase", case.image_rephrase.as_ref()),
            ("m_loc", case.m_loc.as_ref()),
        ];
        for (field, value) in images {
            if value.is_some_and(|v| v.len() > IMAGE_NAME_MAX) {
                return Err(ApiErr::bad_request(format!(
                    "case {i}'s {field} is longer than {IMAGE_NAME_MAX} bytes (an image name or path)"
                )));
            }
        }
    }
    let mut tx = super::write_tx(&st.db).await?;
    auth::recheck(&mut tx, &c, ws, Role::Editor).await?;
    // Counted in the transaction that writes, so parallel imports cannot each pass the check.
    let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM edit_cases WHERE workspace_id = $1")
        .bind(ws)
        .fetch_one(&mut *tx)
        .await?;
    let quota = if c.user.guest { DEMO_CAPS.cases } else { st.cases_per_workspace };
    if held as usize + req.cases.len() > quota {
        return Err(ApiErr::quota(format!(
            "a workspace holds at most {quota} cases; it has {held}, and this import adds {}",
            req.cases.len()
        )));
    }
    for case in &req.cases {
        sqlx::query(
            "INSERT INTO edit_cases (workspace_id, question, target, pred, image, rephrase, image_rephrase, loc, loc_ans, \
             m_loc, m_loc_q, m_loc_a, source) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'import')",
        )
        .bind(ws)
        .bind(case.src.trim())
        .bind(case.alt.trim())
        .bind(&case.pred)
        .bind(Some(&case.image).filter(|s| !s.is_empty()))
        .bind(&case.rephrase)
        .bind(&case.image_rephrase)
        .bind(&case.loc)
        .bind(&case.loc_ans)
        .bind(&case.m_loc)
        .bind(&case.m_loc_q)
        .bind(&case.m_loc_a)
        .execute(&mut *tx)
        .await?;
    }
    audit::record(&mut tx, Some(ws), c.user.id, "cases.import", &format!("{} cases", req.cases.len())).await?;
    tx.commit().await?;
    Ok(Json(ImportSummary { imported: req.cases.len() }))
}

/// Removes the patch files no edit on a stack refers to (an edit whose server stopped between saving its patch and
/// recording it; an undone edit whose files outlived a crash, or an older studio that kept them); run at start-up,
/// before any edit can be in flight. Returns how many patches were removed.
pub async fn remove_orphan_patches(st: &AppState) -> ApiResult<usize> {
    let known: std::collections::HashSet<String> =
        sqlx::query_scalar::<_, String>("SELECT patch_dir FROM applied_edits WHERE active = 1")
            .fetch_all(&st.db)
            .await?
            .into_iter()
            .collect();
    let root = st.data_dir.join("patches");
    // On PostgreSQL other processes share the folder: a patch written in the last minutes may belong to an edit whose
    // row another replica (or a worker's job) has not committed yet.
    let shared = crate::store::backend(&st.db) == crate::store::Backend::Postgres;
    let young = |path: &std::path::Path| {
        shared
            && std::fs::metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().map_or(true, |age| age < std::time::Duration::from_secs(600)))
    };
    let Ok(workspaces) = std::fs::read_dir(&root) else { return Ok(0) };
    let mut removed = std::collections::BTreeSet::new();
    for ws in workspaces.flatten() {
        let Ok(files) = std::fs::read_dir(ws.path()) else { continue };
        for f in files.flatten() {
            let path = f.path();
            let (Some(stem), Some(ext)) = (path.file_stem(), path.extension()) else { continue };
            if ext != "json" && ext != "safetensors" {
                continue;
            }
            let rel = PathBuf::from("patches").join(ws.file_name()).join(stem);
            if !known.contains(rel.to_string_lossy().as_ref()) && !young(&path) && std::fs::remove_file(&path).is_ok() {
                removed.insert(rel);
            }
        }
    }
    Ok(removed.len())
}
