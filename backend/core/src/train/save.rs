//! Writing a trained world model as an llava-hf checkpoint directory: `model.safetensors` (llava-hf tensor names),
//! `config.json`, `tokenizer.json`, `preprocessor_config.json`, `processor_config.json` (for transformers'
//! `AutoProcessor`), and `training.json` (the recipe and the curve).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::driver::{CurvePoint, Trained};
use super::recipe::Recipe;
use super::{WORLD_PREPROCESSOR, WORLD_PROCESSOR};
use crate::error::{Error, Result};

/// Name of the training record in a checkpoint directory.
pub const TRAINING_FILE: &str = "training.json";

/// `training.json`: how the weights beside it were made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    pub recipe: Recipe,
    pub curve: Vec<CurvePoint>,
}

impl TrainingRecord {
    /// Reads `training.json` of a checkpoint directory, if it has one.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(TRAINING_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|err| Error::Io { path: path.clone(), err })?;
        serde_json::from_str(&text).map(Some).map_err(|e| Error::Config { path: path.clone(), msg: e.to_string() })
    }
}

fn pretty(json: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| Error::Invalid(e.to_string()))?;
    serde_json::to_string_pretty(&v).map_err(|e| Error::Invalid(e.to_string()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|err| Error::Io { path: path.to_path_buf(), err })
}

/// Writes `trained` into `dir` (created if missing).
pub fn save(trained: &Trained, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|err| Error::Io { path: dir.to_path_buf(), err })?;
    trained.trainable.varmap.save(dir.join("model.safetensors"))?;
    write(&dir.join("config.json"), &pretty(&trained.config_json)?)?;
    write(&dir.join("preprocessor_config.json"), &pretty(WORLD_PREPROCESSOR)?)?;
    write(&dir.join("processor_config.json"), &pretty(WORLD_PROCESSOR)?)?;
    let tok = dir.join("tokenizer.json");
    trained.tokenizer.save(&tok, true).map_err(|e| Error::Tokenizer(format!("{}: {e}", tok.display())))?;
    let record = TrainingRecord { recipe: trained.recipe.clone(), curve: trained.curve.clone() };
    let json = serde_json::to_string_pretty(&record).map_err(|e| Error::Invalid(e.to_string()))?;
    write(&dir.join(TRAINING_FILE), &json)
}
