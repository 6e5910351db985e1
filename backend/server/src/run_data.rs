//! Runs on a workspace's own cases (`data: "workspace"`). At launch the cases are written as an MMEdit data set, with
//! every image (linked from the image store), into the run's folder (`runs/<id>/` of the data directory): the run
//! evaluates exactly the cases it was launched on, and resumes from the same files after a restart, whatever the
//! workspace does meanwhile.
//!
//! A case needs every probe of the five metrics. Cases authored in the Playground on a gallery image take the probes
//! they lack from that gallery case (its rephrased question when the question is the gallery's, the entity's other
//! image, the unrelated text and image questions); imported cases bring their own. Cases still lacking a probe, or
//! whose images are not gallery images or uploads of this studio, are left out, and the run says how many and why.
//! The memory of unrelated inputs (T-Patcher, UniKE) comes from the world's training split, stored alongside. Images
//! are links into the studio's image store, counted against the workspace's snapshot quota before anything is
//! written, and the folder goes when the run ends (`snapshots.rs`).

use std::path::{Path, PathBuf};

use unike_core::data::{read_records, write_records, MmeditRecord, Task};

use super::error::{ApiErr, ApiResult};
use super::playground::StoredCase;
use super::{gallery, snapshots, AppState};

/// The folder of run `id`'s data set.
pub fn dir(data_dir: &Path, id: i64) -> PathBuf {
    data_dir.join("runs").join(id.to_string())
}

/// Training-split records copied for the memory of unrelated inputs (what `unike bench` reads by default).
const MEMORY: usize = 64;

/// What a snapshot holds.
#[derive(Debug)]
pub struct Snapshot {
    /// Cases written.
    pub cases: usize,
    /// Cases left out, with why (`case 12: no rephrased question`).
    pub left_out: Vec<String>,
}

impl Snapshot {
    /// One line for the run's page, when cases were left out.
    pub fn note(&self) -> Option<String> {
        if self.left_out.is_empty() {
            return None;
        }
        let shown: Vec<&str> = self.left_out.iter().take(5).map(String::as_str).collect();
        let more = self.left_out.len().saturating_sub(shown.len());
        Some(format!(
            "{} of the workspace's cases were left out ({}{})",
            self.left_out.len(),
            shown.join("; "),
            if more > 0 { format!("; and {more} more") } else { String::new() }
        ))
    }
}

fn filled(s: &Option<String>) -> Option<String> {
    s.as_ref().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The MMEdit record of `c` with image paths as files of this studio, or why it cannot be evaluated.
fn complete(st: &AppState, c: &StoredCase) -> Result<(MmeditRecord, [PathBuf; 3]), String> {
    let file = |name: &str| {
        gallery::file_of(st, name).map(|(p, _)| p).ok_or_else(|| format!("image {name:?} is not in this studio"))
    };
    let image_name = filled(&c.image).ok_or("no image")?;
    let (image, gallery_case) =
        gallery::file_of(st, &image_name).ok_or_else(|| format!("image {image_name:?} is not in this studio"))?;
    let g = gallery_case.map(|(_, g)| g);
    // Each probe comes whole from the case, or else whole from the gallery case of its image.
    let rephrase = filled(&c.rephrase)
        .or_else(|| g.filter(|g| g.prompt.trim() == c.question.trim()).map(|g| g.rephrase_prompt.clone()));
    let other = match filled(&c.image_rephrase) {
        Some(name) => Some(file(&name)?),
        None => g.map(|g| g.rephrase_image.clone()),
    };
    let text_loc = match (filled(&c.loc), filled(&c.loc_ans)) {
        (Some(q), Some(a)) => Some((q, a)),
        _ => g.map(|g| (g.loc_question.clone(), g.loc_answer.clone())),
    };
    let image_loc = match (filled(&c.m_loc), filled(&c.m_loc_q), filled(&c.m_loc_a)) {
        (Some(name), Some(q), Some(a)) => Some((file(&name)?, q, a)),
        _ => g.map(|g| (g.m_loc_image.clone(), g.m_loc_question.clone(), g.m_loc_answer.clone())),
    };
    let (Some(rephrase), Some(other), Some((loc, loc_ans)), Some((unrelated, m_loc_q, m_loc_a))) =
        (rephrase.clone(), other.clone(), text_loc.clone(), image_loc.clone())
    else {
        let missing: Vec<&str> = [
            (rephrase.is_none(), "rephrased question"),
            (other.is_none(), "other image of the entity"),
            (text_loc.is_none(), "unrelated text question"),
            (image_loc.is_none(), "unrelated image question"),
        ]
        .into_iter()
        .filter_map(|(m, what)| m.then_some(what))
        .collect();
        return Err(format!("no {}", missing.join(", no ")));
    };
    let record = MmeditRecord {
        src: c.question.trim().to_string(),
        pred: filled(&c.pred),
        alt: c.target.trim().to_string(),
        rephrase,
        image: String::new(),
        image_rephrase: String::new(),
        loc,
        loc_ans,
        m_loc: String::new(),
        m_loc_q,
        m_loc_a,
        port_new: Vec::new(),
    };
    Ok((record, [image, other, unrelated]))
}

/// A snapshot before it is written: the usable cases with their image files, the memory records, and the bytes of
/// their distinct images (what the workspace's snapshot quota counts).
pub struct Plan {
    name: &'static str,
    cases: Vec<(MmeditRecord, [PathBuf; 3])>,
    memory: Vec<(MmeditRecord, [PathBuf; 2])>,
    left_out: Vec<String>,
    pub bytes: u64,
}

/// The first `limit` usable `cases` of `task` and the world's memory records, as [`write`] will store them (cases past
/// the limit are not looked at, so a small run of a big workspace costs little). Reads only file sizes.
pub fn plan(st: &AppState, world: &Path, task: Task, cases: &[StoredCase], limit: usize) -> ApiResult<Plan> {
    let name = if task == Task::Vqa { "vqa" } else { "caption" };
    let mut usable = Vec::new();
    let mut left_out = Vec::new();
    for c in cases {
        if usable.len() >= limit {
            break;
        }
        match complete(st, c) {
            Ok((_, files)) if files.iter().any(|f| !f.is_file()) => {
                left_out.push(format!("case {}: an image file is missing", c.id));
            }
            Ok(found) => usable.push(found),
            Err(why) => left_out.push(format!("case {}: {why}", c.id)),
        }
    }
    let memory: Vec<(MmeditRecord, [PathBuf; 2])> = read_records(&world.join(format!("{name}_train.json")))
        .map_err(ApiErr::internal)?
        .into_iter()
        .take(MEMORY)
        .map(|r| {
            let files = [world.join(&r.image), world.join(&r.m_loc)];
            (r, files)
        })
        .collect();
    let files = usable.iter().flat_map(|(_, f)| f.iter()).chain(memory.iter().flat_map(|(_, f)| f.iter()));
    let bytes = snapshots::distinct_bytes(files.map(PathBuf::as_path));
    Ok(Plan { name, cases: usable, memory, left_out, bytes })
}

/// Links `from` into `images/NAME` of `out` through the image store and returns the record's relative path.
fn link_image(blobs: &Path, from: &Path, out: &Path, name: String) -> ApiResult<String> {
    let ext = from.extension().and_then(|e| e.to_str()).unwrap_or("png");
    let rel = format!("images/{name}.{ext}");
    snapshots::link_into(blobs, from, &out.join(&rel))
        .map_err(|e| ApiErr::internal(format!("storing the image {}: {e}", from.display())))?;
    Ok(rel)
}

/// Writes `plan` as an MMEdit data set in `out`, its images linked from the store `blobs`.
/// Blocking (file reads and links): call it off the async threads.
pub fn write(plan: Plan, blobs: &Path, out: &Path) -> ApiResult<Snapshot> {
    std::fs::create_dir_all(out.join("images")).map_err(ApiErr::internal)?;
    let mut records = Vec::with_capacity(plan.cases.len());
    for (i, (mut r, [image, other, unrelated])) in plan.cases.into_iter().enumerate() {
        r.image = link_image(blobs, &image, out, format!("{i}-image"))?;
        r.image_rephrase = link_image(blobs, &other, out, format!("{i}-other"))?;
        r.m_loc = link_image(blobs, &unrelated, out, format!("{i}-unrelated"))?;
        records.push(r);
    }
    write_records(&out.join(format!("{}_eval.json", plan.name)), &records).map_err(ApiErr::internal)?;
    let mut memory = Vec::with_capacity(plan.memory.len());
    for (i, (mut r, [image, unrelated])) in plan.memory.into_iter().enumerate() {
        r.image = link_image(blobs, &image, out, format!("train-{i}-image"))?;
        r.m_loc = link_image(blobs, &unrelated, out, format!("train-{i}-unrelated"))?;
        r.image_rephrase = r.image.clone();
        memory.push(r);
    }
    write_records(&out.join(format!("{}_train.json", plan.name)), &memory).map_err(ApiErr::internal)?;
    Ok(Snapshot { cases: records.len(), left_out: plan.left_out })
}
