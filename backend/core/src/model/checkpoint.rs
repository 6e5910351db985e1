//! A checkpoint directory of any supported family, recognised by `config.json`'s `model_type`: `llava`
//! ([`LlavaCheckpoint`]), `blip-2` ([`Blip2Checkpoint`]) or `qwen2_vl` ([`Qwen2VlCheckpoint`]). Without a
//! `model_type` the directory is read as llava-hf (its tensor names decide).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};

use super::blip2_checkpoint::Blip2Checkpoint;
use super::llava_checkpoint::LlavaCheckpoint;
use super::model_processor::ModelProcessor;
use super::qwen2vl_checkpoint::Qwen2VlCheckpoint;
use super::vlm::{Family, VisionLanguageModel};
use crate::error::{Error, Result};

/// An opened (not yet loaded) checkpoint of any family.
#[derive(Debug, Clone)]
pub enum Checkpoint {
    Llava(LlavaCheckpoint),
    Blip2(Blip2Checkpoint),
    Qwen2Vl(Qwen2VlCheckpoint),
}

/// What a studio or a report shows of a model's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSummary {
    pub family: Family,
    pub vocab_size: usize,
    pub text_layers: usize,
    pub text_hidden_size: usize,
    pub vision_layers: usize,
    pub vision_hidden_size: usize,
    /// Input side of the vision tower (0: dynamic resolution).
    pub image_size: usize,
    /// Image tokens per image (0: dynamic, by the image's size).
    pub image_seq_length: usize,
}

impl Checkpoint {
    /// Opens `dir` as the family its `config.json` names.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::checkpoint(dir, "not a directory"));
        }
        let path = dir.join("config.json");
        let model_type = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("model_type").and_then(|m| m.as_str()).map(str::to_string)),
            Err(_) => None,
        };
        match model_type.as_deref() {
            Some("blip-2") => Ok(Checkpoint::Blip2(Blip2Checkpoint::open(dir)?)),
            Some("qwen2_vl") => Ok(Checkpoint::Qwen2Vl(Qwen2VlCheckpoint::open(dir)?)),
            Some("llava") | None => Ok(Checkpoint::Llava(LlavaCheckpoint::open(dir)?)),
            Some(other) => Err(Error::checkpoint(
                dir,
                format!("model_type {other:?} is not supported (llava, blip-2 or qwen2_vl)"),
            )),
        }
    }

    pub fn family(&self) -> Family {
        match self {
            Checkpoint::Llava(_) => Family::Llava,
            Checkpoint::Blip2(_) => Family::Blip2,
            Checkpoint::Qwen2Vl(_) => Family::Qwen2Vl,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &PathBuf {
        match self {
            Checkpoint::Llava(c) => &c.dir,
            Checkpoint::Blip2(c) => &c.dir,
            Checkpoint::Qwen2Vl(c) => &c.dir,
        }
    }

    /// Safetensors files, in shard order.
    pub fn weight_files(&self) -> &[PathBuf] {
        match self {
            Checkpoint::Llava(c) => &c.weight_files,
            Checkpoint::Blip2(c) => &c.weight_files,
            Checkpoint::Qwen2Vl(c) => &c.weight_files,
        }
    }

    /// Scalar parameters stored.
    pub fn num_parameters(&self) -> u64 {
        match self {
            Checkpoint::Llava(c) => c.num_parameters,
            Checkpoint::Blip2(c) => c.num_parameters,
            Checkpoint::Qwen2Vl(c) => c.num_parameters,
        }
    }

    /// The dtype the weights were saved in, if the config says.
    pub fn stored_dtype(&self) -> Option<DType> {
        match self {
            Checkpoint::Llava(c) => c.config.stored_dtype,
            Checkpoint::Blip2(c) => c.config.stored_dtype,
            Checkpoint::Qwen2Vl(c) => c.config.stored_dtype,
        }
    }

    /// The LLaVA checkpoint, when it is one (world-model training and its evaluation are LLaVA's).
    pub fn llava(&self) -> Option<&LlavaCheckpoint> {
        match self {
            Checkpoint::Llava(c) => Some(c),
            _ => None,
        }
    }

    /// The model's shape.
    pub fn summary(&self) -> ModelSummary {
        match self {
            Checkpoint::Llava(c) => {
                let cfg = &c.config;
                ModelSummary {
                    family: Family::Llava,
                    vocab_size: cfg.text.vocab_size,
                    text_layers: cfg.text.num_hidden_layers,
                    text_hidden_size: cfg.text.hidden_size,
                    vision_layers: cfg.vision.num_hidden_layers,
                    vision_hidden_size: cfg.vision.hidden_size,
                    image_size: cfg.vision.image_size,
                    image_seq_length: cfg.image_seq_length,
                }
            }
            Checkpoint::Blip2(c) => {
                let cfg = &c.config;
                ModelSummary {
                    family: Family::Blip2,
                    vocab_size: cfg.text.vocab_size,
                    text_layers: cfg.text.num_hidden_layers,
                    text_hidden_size: cfg.text.hidden_size,
                    vision_layers: cfg.vision.num_hidden_layers,
                    vision_hidden_size: cfg.vision.hidden_size,
                    image_size: cfg.vision.image_size,
                    image_seq_length: cfg.num_query_tokens,
                }
            }
            Checkpoint::Qwen2Vl(c) => {
                let cfg = &c.config;
                ModelSummary {
                    family: Family::Qwen2Vl,
                    vocab_size: cfg.text.vocab_size,
                    text_layers: cfg.text.num_hidden_layers,
                    text_hidden_size: cfg.text.hidden_size,
                    vision_layers: cfg.vision.depth,
                    vision_hidden_size: cfg.vision.embed_dim,
                    image_size: 0,
                    image_seq_length: 0,
                }
            }
        }
    }

    /// Loads the model in `dtype` (default: the checkpoint's, f32 if unstated) on `device`.
    pub fn load_model(&self, dtype: Option<DType>, device: &Device) -> Result<Arc<dyn VisionLanguageModel>> {
        Ok(match self {
            Checkpoint::Llava(c) => Arc::new(c.load_model(dtype, device)?),
            Checkpoint::Blip2(c) => Arc::new(c.load_model(dtype, device)?),
            Checkpoint::Qwen2Vl(c) => Arc::new(c.load_model(dtype, device)?),
        })
    }

    /// Loads the processor (tokenizer, template, image processor).
    pub fn processor(&self) -> Result<Arc<dyn ModelProcessor>> {
        Ok(match self {
            Checkpoint::Llava(c) => Arc::new(c.processor()?),
            Checkpoint::Blip2(c) => Arc::new(c.processor()?),
            Checkpoint::Qwen2Vl(c) => Arc::new(c.processor()?),
        })
    }

    /// End-of-sequence ids greedy decoding stops on.
    pub fn eos_token_ids(&self) -> Result<Vec<u32>> {
        match self {
            Checkpoint::Llava(c) => c.eos_token_ids(),
            Checkpoint::Blip2(c) => Ok(c.eos_token_ids()),
            Checkpoint::Qwen2Vl(c) => c.eos_token_ids(),
        }
    }
}
