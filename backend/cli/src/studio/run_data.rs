//! Runs on a workspace's own cases (`data: "workspace"`). At launch the cases are written as an MMEdit data set, with
//! copies of every image, into the run's folder (`runs/<id>/` of the data directory): the run evaluates exactly the
//! cases it was launched on, and resumes from the same files after a restart, whatever the workspace does meanwhile.
//!
//! A case needs every probe of the five metrics. Cases authored in the Playground on a gallery image take the probes
//! they lack from that gallery case (its rephrased question when the question is the gallery's, the entity's other
//! image, the unrelated text and image questions); imported cases bring their own. Cases still lacking a probe, or
//! whose images are not gallery images or uploads of this studio, are left out, and the run says how many and why.
//! The memory of unrelated inputs (T-Patcher, UniKE) comes from the world's training split, copied alongside.

use std::path::{Path, PathBuf};

use unike_core::data::{read_records, write_records, MmeditRecord, Task};

use super::error::{ApiErr, ApiResult};
use super::playground::StoredCase;
use super::{gallery, AppState};

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

/// Copies `from` into `images/NAME` of `out` and returns the record's relative path.
fn copy_image(from: &Path, out: &Path, name: String) -> ApiResult<String> {
    let ext = from.extension().and_then(|e| e.to_str()).unwrap_or("png");
    let rel = format!("images/{name}.{ext}");
    std::fs::copy(from, out.join(&rel))
        .map_err(|e| ApiErr::internal(format!("copying the image {}: {e}", from.display())))?;
    Ok(rel)
}

/// Writes the first `limit` usable `cases` of `task` (and the world's memory records) as an MMEdit data set in
/// `out` (cases past the limit are not looked at, so a small run of a big workspace copies little).
/// Blocking (file copies): call it off the async threads.
pub fn write(
    st: &AppState,
    world: &Path,
    task: Task,
    cases: &[StoredCase],
    limit: usize,
    out: &Path,
) -> ApiResult<Snapshot> {
    std::fs::create_dir_all(out.join("images")).map_err(ApiErr::internal)?;
    let name = if task == Task::Vqa { "vqa" } else { "caption" };
    let mut records = Vec::new();
    let mut left_out = Vec::new();
    for c in cases {
        if records.len() >= limit {
            break;
        }
        match complete(st, c) {
            Ok((mut r, [image, other, unrelated])) => {
                if !image.is_file() || !other.is_file() || !unrelated.is_file() {
                    left_out.push(format!("case {}: an image file is missing", c.id));
                    continue;
                }
                let i = records.len();
                r.image = copy_image(&image, out, format!("{i}-image"))?;
                r.image_rephrase = copy_image(&other, out, format!("{i}-other"))?;
                r.m_loc = copy_image(&unrelated, out, format!("{i}-unrelated"))?;
                records.push(r);
            }
            Err(why) => left_out.push(format!("case {}: {why}", c.id)),
        }
    }
    write_records(&out.join(format!("{name}_eval.json")), &records).map_err(ApiErr::internal)?;
    let memory = read_records(&world.join(format!("{name}_train.json"))).map_err(ApiErr::internal)?;
    let mut copied = Vec::new();
    for (i, mut r) in memory.into_iter().take(MEMORY).enumerate() {
        r.image = copy_image(&world.join(&r.image), out, format!("train-{i}-image"))?;
        r.m_loc = copy_image(&world.join(&r.m_loc), out, format!("train-{i}-unrelated"))?;
        r.image_rephrase = r.image.clone();
        copied.push(r);
    }
    write_records(&out.join(format!("{name}_train.json")), &copied).map_err(ApiErr::internal)?;
    Ok(Snapshot { cases: records.len(), left_out })
}
