//! A Qwen2-VL checkpoint directory (Wang et al., "Qwen2-VL: Enhancing Vision-Language Model's Perception of the World
//! at Any Resolution", 2024), as the hub publishes it and transformers writes it: `config.json` ([`Qwen2VlConfig`],
//! either spelling), safetensors weights (one `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`), `tokenizer.json`, the image processor settings in `preprocessor_config.json` or
//! nested in `processor_config.json`, and an optional `generation_config.json`.
//!
//! Weights are memory-mapped ([`MappedSafetensors`]) and materialised once each in the requested dtype. Tensor names
//! are the published ones (`visual.*`, `model.*`, `lm_head.*`) or transformers 5's in-memory ones
//! (`model.visual.*`, `model.language_model.*`), detected when the checkpoint is opened.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde_json::Value;

use super::llava_checkpoint::find_weight_files;
use super::mmap::MappedSafetensors;
use super::qwen2vl::{Qwen2Vl, Qwen2VlNames};
use super::qwen2vl_config::Qwen2VlConfig;
use super::qwen2vl_processor::Qwen2VlProcessor;
use crate::error::{Error, Result};

/// An opened (not yet loaded) Qwen2-VL checkpoint.
#[derive(Debug, Clone)]
pub struct Qwen2VlCheckpoint {
    /// The directory.
    pub dir: PathBuf,
    /// Resolved `config.json`.
    pub config: Qwen2VlConfig,
    /// Safetensors files, in shard order.
    pub weight_files: Vec<PathBuf>,
    /// How tensors are named.
    pub names: Qwen2VlNames,
    /// Number of scalar parameters stored.
    pub num_parameters: u64,
}

impl Qwen2VlCheckpoint {
    /// Opens `dir`: reads and resolves the config, finds the weight files and checks they hold Qwen2-VL's parts.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::checkpoint(&dir, "not a directory"));
        }
        let config = Qwen2VlConfig::from_file(&dir.join("config.json"))?;
        let weight_files = find_weight_files(&dir)?;
        let st = MappedSafetensors::open(&weight_files)?;
        let names = [Qwen2VlNames::PUBLISHED, Qwen2VlNames::TRANSFORMERS5]
            .into_iter()
            .find(|n| {
                st.contains(&format!("{}.embed_tokens.weight", n.decoder))
                    && st.contains(&format!("{}.patch_embed.proj.weight", n.visual))
            })
            .ok_or_else(|| {
                Error::checkpoint(
                    &dir,
                    "no decoder (model.embed_tokens.weight) or vision tower (visual.patch_embed.proj.weight): not a \
                     Qwen2-VL checkpoint",
                )
            })?;
        let num_parameters = st.names().map(|(_, n)| n as u64).sum();
        Ok(Self { dir, config, weight_files, names, num_parameters })
    }

    /// Loads the model in `dtype` (default: the dtype the checkpoint was saved in, f32 if unstated) on `device`.
    pub fn load_model(&self, dtype: Option<DType>, device: &Device) -> Result<Qwen2Vl> {
        let dtype = dtype.or(self.config.stored_dtype).unwrap_or(DType::F32);
        let st = MappedSafetensors::open(&self.weight_files)?;
        let vb = VarBuilder::from_backend(Box::new(st), dtype, device.clone());
        Qwen2Vl::load(vb, &self.config, &self.names).map_err(|e| match e {
            Error::Candle(c) => Error::checkpoint(&self.dir, c.to_string()),
            other => other,
        })
    }

    /// Loads the tokenizer and image processor.
    pub fn processor(&self) -> Result<Qwen2VlProcessor> {
        Qwen2VlProcessor::load(&self.dir, &self.config)
    }

    /// EOS ids of generation: `generation_config.json`'s `eos_token_id` (the published ones list `<|im_end|>` and
    /// `<|endoftext|>`), else the text config's.
    pub fn eos_token_ids(&self) -> Result<Vec<u32>> {
        let path = self.dir.join("generation_config.json");
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let v: Value =
                serde_json::from_str(&text).map_err(|e| Error::config(&path, format!("not valid JSON: {e}")))?;
            match v.get("eos_token_id") {
                Some(Value::Number(n)) => {
                    if let Some(id) = n.as_u64() {
                        return Ok(vec![id as u32]);
                    }
                }
                Some(Value::Array(a)) => return Ok(a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect()),
                _ => {}
            }
        }
        Ok(self.config.text.eos_token_ids.clone())
    }
}
