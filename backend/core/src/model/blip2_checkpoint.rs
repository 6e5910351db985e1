//! A BLIP-2 (OPT) checkpoint directory (Li et al., "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen
//! Image Encoders and Large Language Models", ICML 2023), as the hub publishes it and transformers writes it:
//! `config.json` ([`Blip2Config`]), safetensors weights (one `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`), `tokenizer.json`, and the image processor settings in `preprocessor_config.json`
//! or nested in `processor_config.json`.
//!
//! Weights are memory-mapped ([`MappedSafetensors`]) and materialised once each in the requested dtype, as for LLaVA.
//! `language_model.lm_head.weight` may be present (the hub's copy of the tied head) or absent (transformers 5).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::blip2::{names, Blip2};
use super::blip2_config::Blip2Config;
use super::blip2_processor::Blip2Processor;
use super::llava_checkpoint::find_weight_files;
use super::mmap::MappedSafetensors;
use crate::error::{Error, Result};

/// An opened (not yet loaded) BLIP-2 checkpoint.
#[derive(Debug, Clone)]
pub struct Blip2Checkpoint {
    /// The directory.
    pub dir: PathBuf,
    /// Resolved `config.json`.
    pub config: Blip2Config,
    /// Safetensors files, in shard order.
    pub weight_files: Vec<PathBuf>,
    /// Whether the files carry `language_model.lm_head.weight` (unused when the head is tied).
    pub has_lm_head: bool,
    /// Number of scalar parameters (a stored copy of the tied head not counted).
    pub num_parameters: u64,
}

impl Blip2Checkpoint {
    /// Opens `dir`: reads and resolves the config, finds the weight files and checks they hold BLIP-2's parts.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::checkpoint(&dir, "not a directory"));
        }
        let config = Blip2Config::from_file(&dir.join("config.json"))?;
        let weight_files = find_weight_files(&dir)?;
        let st = MappedSafetensors::open(&weight_files)?;
        for (part, probe) in [
            ("vision model", format!("{}.embeddings.patch_embedding.weight", names::VISION)),
            ("query tokens", names::QUERY_TOKENS.to_string()),
            ("Q-Former", format!("{}.layernorm.weight", names::QFORMER)),
            ("language projection", format!("{}.weight", names::LANGUAGE_PROJECTION)),
            ("OPT decoder", format!("{}.embed_tokens.weight", names::DECODER)),
        ] {
            if !st.contains(&probe) {
                return Err(Error::checkpoint(&dir, format!("no {part} ({probe}): not a BLIP-2 OPT checkpoint")));
            }
        }
        let head = format!("{}.weight", names::LM_HEAD);
        let has_lm_head = st.contains(&head);
        let tied = config.text.tie_word_embeddings;
        let num_parameters = st.names().filter(|(n, _)| !(tied && *n == head)).map(|(_, n)| n as u64).sum();
        Ok(Self { dir, config, weight_files, has_lm_head, num_parameters })
    }

    /// Loads the model in `dtype` (default: the dtype the checkpoint was saved in, f32 if unstated) on `device`.
    pub fn load_model(&self, dtype: Option<DType>, device: &Device) -> Result<Blip2> {
        let dtype = dtype.or(self.config.stored_dtype).unwrap_or(DType::F32);
        let st = MappedSafetensors::open(&self.weight_files)?;
        let vb = VarBuilder::from_backend(Box::new(st), dtype, device.clone());
        Blip2::load(vb, &self.config).map_err(|e| match e {
            Error::Candle(c) => Error::checkpoint(&self.dir, c.to_string()),
            other => other,
        })
    }

    /// Loads the tokenizer and image processor.
    pub fn processor(&self) -> Result<Blip2Processor> {
        Blip2Processor::load(&self.dir, &self.config)
    }

    /// EOS ids of generation: the language model's (`text_config.eos_token_id`), which is what
    /// `Blip2ForConditionalGeneration.generate` stops on (not the top-level `generation_config.json`).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.config.text.eos_token_ids.clone()
    }
}
