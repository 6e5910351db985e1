//! A llava-hf checkpoint directory: `config.json`, safetensors weights (single file, or shards listed in
//! `model.safetensors.index.json`), `tokenizer.json`, `preprocessor_config.json`, optional `generation_config.json`.
//!
//! Weights are memory-mapped ([`MappedSafetensors`]): the files are never read into a buffer; each tensor is
//! materialised once, straight from the mapping, in the requested dtype, and its mapped pages are released at once,
//! so peak resident memory is the weights once plus the largest tensor.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::config::LlavaConfig;
use super::llava::{KeyLayout, Llava};
use super::mmap::MappedSafetensors;
use super::preprocess::ImageProcessor;
use super::processor::Processor;
use crate::error::{Error, Result};

/// An opened (not yet loaded) checkpoint.
#[derive(Debug, Clone)]
pub struct LlavaCheckpoint {
    /// The directory.
    pub dir: PathBuf,
    /// Resolved `config.json`.
    pub config: LlavaConfig,
    /// Safetensors files, in shard order.
    pub weight_files: Vec<PathBuf>,
    /// How tensors are named.
    pub layout: KeyLayout,
    /// Number of scalar parameters stored.
    pub num_parameters: u64,
}

impl LlavaCheckpoint {
    /// Opens `dir`: reads and resolves the config, finds the weight files, and reads the tensor names from the
    /// safetensors headers (through the memory map).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::checkpoint(&dir, "not a directory"));
        }
        let config = LlavaConfig::from_file(&dir.join("config.json"))?;
        let weight_files = find_weight_files(&dir)?;
        let st = MappedSafetensors::open(&weight_files)?;
        let layout = KeyLayout::detect(|k| st.contains(k)).map_err(|part| {
            Error::checkpoint(&dir, format!("no {part} weights under any llava-hf name: not a LLaVA checkpoint"))
        })?;
        let num_parameters = st.names().map(|(_, n)| n as u64).sum();
        Ok(Self { dir, config, weight_files, layout, num_parameters })
    }

    /// Loads the model in `dtype` (default: the dtype the checkpoint was saved in, f32 if unstated) on `device`.
    pub fn load_model(&self, dtype: Option<DType>, device: &Device) -> Result<Llava> {
        let dtype = dtype.or(self.config.stored_dtype).unwrap_or(DType::F32);
        let st = MappedSafetensors::open(&self.weight_files)?;
        let vb = VarBuilder::from_backend(Box::new(st), dtype, device.clone());
        Llava::load(vb, self.layout, &self.config).map_err(|e| match e {
            Error::Candle(c) => Error::checkpoint(&self.dir, c.to_string()),
            other => other,
        })
    }

    /// Loads `tokenizer.json` (+ the prompt template) into a [`Processor`].
    pub fn processor(&self) -> Result<Processor> {
        Processor::load(&self.dir, &self.config, self.image_processor()?)
    }

    /// Loads `preprocessor_config.json`, for the checkpoint's vision tower (its input size: every image is brought
    /// to it, see [`ImageProcessor::with_tower`]).
    pub fn image_processor(&self) -> Result<ImageProcessor> {
        Ok(ImageProcessor::from_file(&self.dir.join("preprocessor_config.json"))?
            .with_tower(self.config.vision.image_size))
    }

    /// EOS ids: `generation_config.json` if present, else the text config's.
    pub fn eos_token_ids(&self) -> Result<Vec<u32>> {
        let path = self.dir.join("generation_config.json");
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::config(&path, format!("not valid JSON: {e}")))?;
            match v.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => {
                    if let Some(id) = n.as_u64() {
                        return Ok(vec![id as u32]);
                    }
                }
                Some(serde_json::Value::Array(a)) => {
                    return Ok(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect());
                }
                _ => {}
            }
        }
        Ok(self.config.text.eos_token_ids.clone())
    }
}

/// `model.safetensors.index.json` → its shards (each once, in order of first mention); else `model.safetensors`;
/// else every `*.safetensors` in the directory, sorted.
pub(crate) fn find_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::config(&index, format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::config(&index, "no weight_map object"))?;
        let mut seen = BTreeSet::new();
        let mut files = Vec::new();
        for f in map.values() {
            let name = f.as_str().ok_or_else(|| Error::config(&index, "weight_map values must be file names"))?;
            if seen.insert(name.to_string()) {
                let p = dir.join(name);
                if !p.is_file() {
                    return Err(Error::checkpoint(dir, format!("shard {name} listed in the index is missing")));
                }
                files.push(p);
            }
        }
        if files.is_empty() {
            return Err(Error::config(&index, "weight_map is empty"));
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::checkpoint(dir, "no *.safetensors weights"));
    }
    Ok(files)
}
