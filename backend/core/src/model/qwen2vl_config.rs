//! `config.json` of a Qwen2-VL checkpoint (`Qwen2VLForConditionalGeneration`; Wang et al., "Qwen2-VL: Enhancing
//! Vision-Language Model's Perception of the World at Any Resolution", 2024).
//!
//! Both spellings are read: the flat transformers-4 one the hub publishes (text fields at the top level,
//! `rope_theta`, `rope_scaling: {"type": "mrope", "mrope_section": [..]}`, `torch_dtype`, vision `in_chans`) and
//! the nested transformers-5 one `save_pretrained` writes (`text_config` with `rope_parameters` holding
//! `rope_theta` and `mrope_section`, vision `in_channels`, `dtype`). Missing fields take the defaults of
//! transformers' `Qwen2VLTextConfig` / `Qwen2VLVisionConfig`. Refused with a message: other model types (Qwen2.5-VL
//! has window attention and an RMSNorm merger), sliding-window attention, rope types other than the default M-RoPE,
//! and an `mrope_section` that does not cover `head_dim / 2` frequencies.

use std::path::Path;

use candle_core::DType;
use serde_json::Value;

use super::config::{parse_dtype, Activation, Fields};
use crate::error::{Error, Result};

/// The Qwen2 decoder (`Qwen2VLTextConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Frequencies (of `head_dim / 2`) that read the temporal, height and width position rows, in that order.
    pub mrope_section: Vec<usize>,
    pub tie_word_embeddings: bool,
    pub eos_token_ids: Vec<u32>,
}

/// The vision transformer and patch merger (`Qwen2VLVisionConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VisionConfig {
    pub depth: usize,
    pub embed_dim: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub in_channels: usize,
    pub patch_size: usize,
    pub spatial_merge_size: usize,
    pub temporal_patch_size: usize,
    /// Output width of the merger (the decoder's hidden size).
    pub hidden_size: usize,
    pub hidden_act: Activation,
    /// Base of the 2-D rotary frequencies.
    pub rope_theta: f64,
}

impl Qwen2VisionConfig {
    /// Width of one flattened patch: `in_channels · temporal_patch_size · patch_size²`.
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Width of the MLP's hidden layer (`embed_dim · mlp_ratio`).
    pub fn mlp_dim(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }
}

/// Resolved `Qwen2VLConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlConfig {
    pub text: Qwen2TextConfig,
    pub vision: Qwen2VisionConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
    /// The dtype the checkpoint was saved in (`torch_dtype` / `dtype`), if stated.
    pub stored_dtype: Option<DType>,
}

impl Qwen2VlConfig {
    /// Reads and resolves `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text).map_err(|msg| Error::config(path, msg))
    }

    /// Resolves a config from its JSON text; the error is a one-line message.
    pub fn from_json_str(text: &str) -> std::result::Result<Self, String> {
        let raw: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        if !raw.is_object() {
            return Err("config.json must be a JSON object".into());
        }
        let top = Fields(&raw);
        match top.str("model_type")? {
            None | Some("qwen2_vl") => {}
            Some(mt) => return Err(format!("model_type {mt:?} is not supported (only qwen2_vl)")),
        }
        // transformers 5 nests the text fields; transformers 4 writes them at the top level.
        let text_fields = match top.obj("text_config")? {
            Some(t) => Fields(t),
            None => Fields(&raw),
        };
        let mut text = parse_text(&text_fields)?;
        if text_fields.get("tie_word_embeddings").is_none() {
            text.tie_word_embeddings = top.bool("tie_word_embeddings")?.unwrap_or(text.tie_word_embeddings);
        }
        if text.eos_token_ids.is_empty() {
            text.eos_token_ids = eos(&top)?;
        }
        let empty = Value::Object(Default::default());
        let vision = parse_vision(&Fields(top.obj("vision_config")?.unwrap_or(&empty)))?;
        let id = |k: &str, default: u32| -> std::result::Result<u32, String> {
            Ok(top.u32(k)?.or(text_fields.u32(k)?).unwrap_or(default))
        };
        let stored_dtype = match top.str("torch_dtype")?.or(top.str("dtype")?).or(text_fields.str("dtype")?) {
            None => None,
            Some(name) => Some(parse_dtype(name).ok_or_else(|| format!("unsupported dtype {name:?}"))?),
        };
        Ok(Self {
            text,
            vision,
            image_token_id: id("image_token_id", 151655)?,
            video_token_id: id("video_token_id", 151656)?,
            vision_start_token_id: id("vision_start_token_id", 151652)?,
            vision_end_token_id: id("vision_end_token_id", 151653)?,
            stored_dtype,
        })
    }
}

fn eos(f: &Fields) -> std::result::Result<Vec<u32>, String> {
    Ok(match f.get("eos_token_id") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_u64().map(|x| x as u32).ok_or_else(|| "eos_token_id must hold integers".to_string()))
            .collect::<std::result::Result<Vec<_>, String>>()?,
        Some(_) => f.u32("eos_token_id")?.into_iter().collect(),
    })
}

fn parse_text(f: &Fields) -> std::result::Result<Qwen2TextConfig, String> {
    if f.bool("use_sliding_window")? == Some(true) {
        return Err("sliding-window attention (use_sliding_window: true) is not supported on Qwen2-VL yet".into());
    }
    let hidden_size = f.usize("hidden_size")?.unwrap_or(8192);
    let heads = f.usize("num_attention_heads")?.unwrap_or(64);
    let kv_heads = f.usize("num_key_value_heads")?.unwrap_or(8);
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || !hidden_size.is_multiple_of(heads) {
        return Err(format!(
            "hidden_size {hidden_size} / num_attention_heads {heads} / num_key_value_heads {kv_heads} do not divide"
        ));
    }
    let head_dim = hidden_size / heads;
    let act = f.str("hidden_act")?.unwrap_or("silu");
    let hidden_act = Activation::parse(act).ok_or_else(|| format!("unsupported text hidden_act {act:?}"))?;
    // transformers 5: rope_parameters {rope_type, rope_theta, mrope_section}; 4: rope_theta + rope_scaling.
    let params = f.obj("rope_parameters")?.or(f.obj("rope_scaling")?);
    let pf = params.map(Fields);
    let rope_type = match &pf {
        Some(p) => p.str("rope_type")?.or(p.str("type")?).unwrap_or("default"),
        None => "default",
    };
    if !matches!(rope_type, "default" | "mrope") {
        return Err(format!("rope type {rope_type:?} is not supported on Qwen2-VL yet (only default M-RoPE)"));
    }
    let rope_theta = match pf.as_ref().map(|p| p.f64("rope_theta")).transpose()?.flatten() {
        Some(t) => t,
        None => f.f64("rope_theta")?.unwrap_or(1_000_000.0),
    };
    let mrope_section = match pf.as_ref().and_then(|p| p.get("mrope_section")) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_u64().map(|x| x as usize).ok_or("mrope_section must hold integers"))
            .collect::<std::result::Result<Vec<_>, _>>()?,
        Some(_) => return Err("mrope_section must be a list of integers".into()),
        None => return Err("no mrope_section in rope_scaling / rope_parameters: Qwen2-VL needs M-RoPE".into()),
    };
    if mrope_section.len() != 3 || mrope_section.iter().sum::<usize>() * 2 != head_dim {
        return Err(format!(
            "mrope_section {mrope_section:?} must be 3 parts summing to head_dim / 2 = {}",
            head_dim / 2
        ));
    }
    Ok(Qwen2TextConfig {
        vocab_size: f.usize("vocab_size")?.unwrap_or(152064),
        hidden_size,
        intermediate_size: f.usize("intermediate_size")?.unwrap_or(29568),
        num_hidden_layers: f.usize("num_hidden_layers")?.unwrap_or(80),
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        hidden_act,
        max_position_embeddings: f.usize("max_position_embeddings")?.unwrap_or(32768),
        rms_norm_eps: f.f64("rms_norm_eps")?.unwrap_or(1e-5),
        rope_theta,
        mrope_section,
        tie_word_embeddings: f.bool("tie_word_embeddings")?.unwrap_or(false),
        eos_token_ids: eos(f)?,
    })
}

fn parse_vision(f: &Fields) -> std::result::Result<Qwen2VisionConfig, String> {
    match f.str("model_type")? {
        None | Some("qwen2_vl") | Some("qwen2_vl_vision") => {}
        Some(mt) => return Err(format!("vision_config.model_type {mt:?} is not supported (only qwen2_vl_vision)")),
    }
    let act = f.str("hidden_act")?.unwrap_or("quick_gelu");
    let rope_theta = match f.obj("rope_parameters")?.map(Fields) {
        Some(p) => p.f64("rope_theta")?.unwrap_or(10000.0),
        None => 10000.0,
    };
    let cfg = Qwen2VisionConfig {
        depth: f.usize("depth")?.unwrap_or(32),
        embed_dim: f.usize("embed_dim")?.unwrap_or(1280),
        num_heads: f.usize("num_heads")?.unwrap_or(16),
        mlp_ratio: f.f64("mlp_ratio")?.unwrap_or(4.0),
        in_channels: f.usize("in_channels")?.or(f.usize("in_chans")?).unwrap_or(3),
        patch_size: f.usize("patch_size")?.unwrap_or(14),
        spatial_merge_size: f.usize("spatial_merge_size")?.unwrap_or(2),
        temporal_patch_size: f.usize("temporal_patch_size")?.unwrap_or(2),
        hidden_size: f.usize("hidden_size")?.unwrap_or(3584),
        hidden_act: Activation::parse(act).ok_or_else(|| format!("unsupported vision hidden_act {act:?}"))?,
        rope_theta,
    };
    if cfg.num_heads == 0 || !cfg.embed_dim.is_multiple_of(cfg.num_heads) || !cfg.head_dim().is_multiple_of(4) {
        return Err(format!(
            "vision embed_dim {} / num_heads {} must give a head_dim divisible by 4 (2-D rotary)",
            cfg.embed_dim, cfg.num_heads
        ));
    }
    if cfg.patch_size == 0 || cfg.spatial_merge_size == 0 || cfg.temporal_patch_size == 0 {
        return Err("vision patch_size, spatial_merge_size and temporal_patch_size must be positive".into());
    }
    Ok(cfg)
}
