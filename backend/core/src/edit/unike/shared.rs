//! UniKE's prepared knowledge, one per model and edited layers in a process (issue 16). Every UniKE variant built
//! from a model directory retrieves from the same memory through the same layers' projections; only how many entries
//! and how they are mixed differ. So the prepared knowledge (tens of MB with the shipped 6,000 entries) is shared by
//! all of them and by their patches (a patch's retrieval holds it), and lives as long as one of them does: a cache of
//! built methods that drops a variant frees nothing another still holds, and many variants cost one copy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use super::encoders::Encoders;
use super::latent::Knowledge;
use super::Artifacts;
use crate::error::{Error, Result};
use crate::model::VisionLanguageModel;

/// What identifies a prepared knowledge: the artifacts' directory, the model (its address: the weights the
/// projections are shared with) and its device, the layers.
#[derive(PartialEq)]
struct Key {
    dir: PathBuf,
    model: usize,
    device: String,
    layers: Vec<usize>,
}

/// Knowledge alive somewhere in the process, by key (dead entries are dropped on each lookup).
static LIVE: Mutex<Vec<(Key, Weak<Knowledge>)>> = Mutex::new(Vec::new());

/// The prepared knowledge of `model_dir`'s artifacts at `layers` of `model`, with its encoders: the one alive in this
/// process if any, else loaded now (and then shared).
pub fn knowledge(
    model: &dyn VisionLanguageModel,
    model_dir: &Path,
    layers: &[usize],
) -> Result<(Arc<Knowledge>, Arc<Encoders>)> {
    let key = Key {
        dir: model_dir.canonicalize().unwrap_or_else(|_| model_dir.to_path_buf()),
        model: model as *const dyn VisionLanguageModel as *const () as usize,
        device: format!("{:?}", model.device().location()),
        layers: layers.to_vec(),
    };
    let mut live = LIVE.lock().map_err(|_| Error::Invalid("the shared UniKE knowledge is poisoned".into()))?;
    live.retain(|(_, w)| w.strong_count() > 0);
    if let Some(k) = live.iter().find(|(k, _)| *k == key).and_then(|(_, w)| w.upgrade()) {
        let encoders = k.encoders.clone();
        return Ok((k, encoders));
    }
    let artifacts = Artifacts::load(model_dir, model.device())?;
    let k = Arc::new(Knowledge::new(model, &artifacts.memory, artifacts.encoders.clone(), layers)?);
    live.push((key, Arc::downgrade(&k)));
    Ok((k, artifacts.encoders))
}

/// Prepared knowledges alive in this process.
pub fn alive() -> usize {
    LIVE.lock().map(|l| l.iter().filter(|(_, w)| w.strong_count() > 0).count()).unwrap_or(0)
}
