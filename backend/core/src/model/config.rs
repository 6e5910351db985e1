//! `config.json` of a llava-hf checkpoint (`LlavaForConditionalGeneration`).
//!
//! Every field missing from the file takes the default of transformers' `LlavaConfig`, `LlamaConfig` and
//! `CLIPVisionConfig`, so the published llava-1.5-7b-hf config (which omits most text fields) resolves to the
//! 7B LLaMA shape. RoPE accepts both spellings: top-level `rope_theta` / `rope_scaling` (transformers 4.x) and
//! `rope_parameters` (transformers 5.x).

use std::path::Path;

use candle_core::DType;
use serde_json::Value;

use crate::error::{Error, Result};

/// Activation functions named by HF configs that our modules implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (CLIP's `quick_gelu`).
    QuickGelu,
    /// Exact GELU with erf (`gelu`).
    Gelu,
    /// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluTanh,
    /// `x * sigmoid(x)` (`silu`, `swish`).
    Silu,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// Parses an HF activation name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            "silu" | "swish" => Some(Self::Silu),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }

    /// Applies the activation elementwise.
    pub fn apply(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Self::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Self::Gelu => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Silu => x.silu(),
            Self::Relu => x.relu(),
        }
    }
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1 wavelength-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
}

/// Resolved LLaMA decoder configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
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
    pub rope_scaling: RopeScaling,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// Resolved CLIP vision tower configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// Patches per image side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Positions of the vision transformer: patches plus the class token.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// Which vision tokens LLaVA keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectStrategy {
    /// Drop the class token (`default`).
    Default,
    /// Keep every token (`full`).
    Full,
}

/// Resolved `LlavaConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_token_index: u32,
    pub pad_token_id: Option<u32>,
    pub projector_hidden_act: Activation,
    pub projector_bias: bool,
    /// Vision layers whose hidden states feed the projector (HF indexing: 0 = embeddings, negative from the end);
    /// several are concatenated on the feature axis.
    pub vision_feature_layers: Vec<i64>,
    pub vision_feature_select_strategy: SelectStrategy,
    /// Image tokens per image after `<image>` expansion.
    pub image_seq_length: usize,
    /// The dtype the checkpoint was saved in (`torch_dtype` / `dtype`), if stated.
    pub stored_dtype: Option<DType>,
}

impl LlavaConfig {
    /// Reads and resolves `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text).map_err(|msg| Error::config(path, msg))
    }

    /// Resolves a config from its JSON text; the error is a one-line message.
    pub fn from_json_str(text: &str) -> std::result::Result<Self, String> {
        let raw: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let obj = raw.as_object().ok_or("config.json must be a JSON object")?;
        let empty = Value::Object(Default::default());
        let text_v = obj.get("text_config").filter(|v| !v.is_null()).unwrap_or(&empty);
        let vision_v = obj.get("vision_config").filter(|v| !v.is_null()).unwrap_or(&empty);
        let top = Fields(&raw);

        let vision = parse_vision(Fields(vision_v))?;
        let mut text = parse_text(Fields(text_v))?;
        // Newer configs keep tie_word_embeddings at the top level of LlavaConfig (default false).
        if let Some(t) = top.bool("tie_word_embeddings")? {
            text.tie_word_embeddings = t;
        }
        if let Some(v) = top.usize("vocab_size")? {
            if !text_v.as_object().is_some_and(|o| o.contains_key("vocab_size")) {
                text.vocab_size = v;
            }
        }

        let vision_feature_layers = match obj.get("vision_feature_layer") {
            None | Some(Value::Null) => vec![-2],
            Some(Value::Number(n)) => vec![n.as_i64().ok_or("vision_feature_layer must be an integer")?],
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_i64().ok_or("vision_feature_layer entries must be integers"))
                .collect::<std::result::Result<Vec<_>, _>>()?,
            Some(_) => return Err("vision_feature_layer must be an integer or a list".into()),
        };
        if vision_feature_layers.is_empty() {
            return Err("vision_feature_layer is an empty list".into());
        }
        let n_states = vision.num_hidden_layers as i64 + 1;
        for &l in &vision_feature_layers {
            if l >= n_states || l < -n_states {
                return Err(format!("vision_feature_layer {l} out of range for {} vision layers", n_states - 1));
            }
        }
        let vision_feature_select_strategy = match top.str("vision_feature_select_strategy")?.unwrap_or("default") {
            "default" => SelectStrategy::Default,
            "full" => SelectStrategy::Full,
            other => return Err(format!("unknown vision_feature_select_strategy {other:?}")),
        };
        let grid_tokens = vision.grid() * vision.grid();
        let derived_seq = match vision_feature_select_strategy {
            SelectStrategy::Default => grid_tokens,
            SelectStrategy::Full => grid_tokens + 1,
        };
        let image_seq_length = top.usize("image_seq_length")?.unwrap_or(derived_seq);
        if image_seq_length != derived_seq {
            return Err(format!(
                "image_seq_length {image_seq_length} disagrees with the vision tower, which yields {derived_seq} tokens"
            ));
        }
        let act_name = top.str("projector_hidden_act")?.unwrap_or("gelu");
        let projector_hidden_act =
            Activation::parse(act_name).ok_or_else(|| format!("unsupported projector_hidden_act {act_name:?}"))?;
        let image_token_index = top.u32("image_token_index")?.or(top.u32("image_token_id")?).unwrap_or(32000);
        let stored_dtype = match top.str("torch_dtype")?.or(top.str("dtype")?).or(Fields(text_v).str("torch_dtype")?) {
            None => None,
            Some(name) => Some(parse_dtype(name).ok_or_else(|| format!("unsupported dtype {name:?}"))?),
        };
        Ok(Self {
            text,
            vision,
            image_token_index,
            pad_token_id: top.u32("pad_token_id")?,
            projector_hidden_act,
            projector_bias: top.bool("multimodal_projector_bias")?.unwrap_or(true),
            vision_feature_layers,
            vision_feature_select_strategy,
            image_seq_length,
            stored_dtype,
        })
    }
}

/// Parses `float32`/`f32`, `float16`/`f16`, `bfloat16`/`bf16`.
pub fn parse_dtype(name: &str) -> Option<DType> {
    match name {
        "float32" | "f32" | "fp32" => Some(DType::F32),
        "float16" | "f16" | "fp16" | "half" => Some(DType::F16),
        "bfloat16" | "bf16" => Some(DType::BF16),
        _ => None,
    }
}

fn parse_text(f: Fields) -> std::result::Result<TextConfig, String> {
    let hidden_size = f.usize("hidden_size")?.unwrap_or(4096);
    let num_attention_heads = f.usize("num_attention_heads")?.unwrap_or(32);
    let num_key_value_heads = f.usize("num_key_value_heads")?.unwrap_or(num_attention_heads);
    if num_attention_heads == 0 || num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
        return Err(format!(
            "num_attention_heads {num_attention_heads} must be a positive multiple of num_key_value_heads {num_key_value_heads}"
        ));
    }
    let head_dim = f.usize("head_dim")?.unwrap_or(hidden_size / num_attention_heads);
    if head_dim % 2 != 0 {
        return Err(format!("head_dim {head_dim} must be even for RoPE"));
    }
    let act = f.str("hidden_act")?.unwrap_or("silu");
    let hidden_act = Activation::parse(act).ok_or_else(|| format!("unsupported text hidden_act {act:?}"))?;
    let max_position_embeddings = f.usize("max_position_embeddings")?.unwrap_or(2048);

    // RoPE: transformers 5 nests everything in rope_parameters; 4.x has rope_theta + rope_scaling.
    let params = f.obj("rope_parameters")?.or(f.obj("rope_scaling")?);
    let pf = params.map(Fields);
    let rope_theta = match pf.as_ref().and_then(|p| p.f64("rope_theta").transpose()) {
        Some(v) => v?,
        None => f.f64("rope_theta")?.unwrap_or(10000.0),
    };
    let rope_scaling = match pf {
        None => RopeScaling::Default,
        Some(p) => {
            let kind = p.str("rope_type")?.or(p.str("type")?).unwrap_or("default");
            match kind {
                "default" => RopeScaling::Default,
                "linear" => RopeScaling::Linear { factor: p.f64("factor")?.ok_or("linear rope needs a factor")? },
                "llama3" => RopeScaling::Llama3 {
                    factor: p.f64("factor")?.ok_or("llama3 rope needs a factor")?,
                    low_freq_factor: p.f64("low_freq_factor")?.unwrap_or(1.0),
                    high_freq_factor: p.f64("high_freq_factor")?.unwrap_or(4.0),
                    original_max_position_embeddings: p
                        .usize("original_max_position_embeddings")?
                        .unwrap_or(max_position_embeddings),
                },
                other => return Err(format!("unsupported rope type {other:?} (supported: default, linear, llama3)")),
            }
        }
    };
    let eos_token_ids = match f.0.get("eos_token_id") {
        None => vec![2],
        Some(Value::Null) => vec![],
        Some(Value::Number(n)) => vec![n.as_u64().ok_or("eos_token_id must be a non-negative integer")? as u32],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_u64().map(|v| v as u32).ok_or("eos_token_id entries must be non-negative integers"))
            .collect::<std::result::Result<Vec<_>, _>>()?,
        Some(_) => return Err("eos_token_id must be an integer or a list".into()),
    };
    let cfg = TextConfig {
        vocab_size: f.usize("vocab_size")?.unwrap_or(32000),
        hidden_size,
        intermediate_size: f.usize("intermediate_size")?.unwrap_or(11008),
        num_hidden_layers: f.usize("num_hidden_layers")?.unwrap_or(32),
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        hidden_act,
        max_position_embeddings,
        rms_norm_eps: f.f64("rms_norm_eps")?.unwrap_or(1e-6),
        rope_theta,
        rope_scaling,
        attention_bias: f.bool("attention_bias")?.unwrap_or(false),
        mlp_bias: f.bool("mlp_bias")?.unwrap_or(false),
        tie_word_embeddings: f.bool("tie_word_embeddings")?.unwrap_or(false),
        bos_token_id: f.u32("bos_token_id")?.or(Some(1)),
        eos_token_ids,
    };
    if let Some(mt) = f.str("model_type")? {
        if mt != "llama" {
            return Err(format!("text_config.model_type {mt:?} is not supported (only llama)"));
        }
    }
    Ok(cfg)
}

fn parse_vision(f: Fields) -> std::result::Result<VisionConfig, String> {
    let act = f.str("hidden_act")?.unwrap_or("quick_gelu");
    let cfg = VisionConfig {
        hidden_size: f.usize("hidden_size")?.unwrap_or(768),
        intermediate_size: f.usize("intermediate_size")?.unwrap_or(3072),
        num_hidden_layers: f.usize("num_hidden_layers")?.unwrap_or(12),
        num_attention_heads: f.usize("num_attention_heads")?.unwrap_or(12),
        num_channels: f.usize("num_channels")?.unwrap_or(3),
        image_size: f.usize("image_size")?.unwrap_or(224),
        patch_size: f.usize("patch_size")?.unwrap_or(32),
        hidden_act: Activation::parse(act).ok_or_else(|| format!("unsupported vision hidden_act {act:?}"))?,
        layer_norm_eps: f.f64("layer_norm_eps")?.unwrap_or(1e-5),
    };
    if cfg.patch_size == 0 || !cfg.image_size.is_multiple_of(cfg.patch_size) {
        return Err(format!("vision image_size {} is not a multiple of patch_size {}", cfg.image_size, cfg.patch_size));
    }
    if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
        return Err(format!(
            "vision hidden_size {} is not a multiple of num_attention_heads {}",
            cfg.hidden_size, cfg.num_attention_heads
        ));
    }
    if let Some(mt) = f.str("model_type")? {
        if mt != "clip_vision_model" {
            return Err(format!("vision_config.model_type {mt:?} is not supported (only clip_vision_model)"));
        }
    }
    Ok(cfg)
}

/// Typed, optional field access on a JSON object; a present field of the wrong type is an error.
pub(crate) struct Fields<'a>(pub(crate) &'a Value);

impl<'a> Fields<'a> {
    pub(crate) fn get(&self, k: &str) -> Option<&'a Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }
    pub(crate) fn usize(&self, k: &str) -> std::result::Result<Option<usize>, String> {
        self.get(k)
            .map(|v| v.as_u64().map(|x| x as usize).ok_or_else(|| format!("{k} must be a non-negative integer")))
            .transpose()
    }
    pub(crate) fn u32(&self, k: &str) -> std::result::Result<Option<u32>, String> {
        self.get(k)
            .map(|v| {
                v.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| format!("{k} must be a non-negative integer"))
            })
            .transpose()
    }
    pub(crate) fn f64(&self, k: &str) -> std::result::Result<Option<f64>, String> {
        self.get(k).map(|v| v.as_f64().ok_or_else(|| format!("{k} must be a number"))).transpose()
    }
    pub(crate) fn bool(&self, k: &str) -> std::result::Result<Option<bool>, String> {
        self.get(k).map(|v| v.as_bool().ok_or_else(|| format!("{k} must be true or false"))).transpose()
    }
    pub(crate) fn str(&self, k: &str) -> std::result::Result<Option<&'a str>, String> {
        self.get(k).map(|v| v.as_str().ok_or_else(|| format!("{k} must be a string"))).transpose()
    }
    pub(crate) fn obj(&self, k: &str) -> std::result::Result<Option<&'a Value>, String> {
        match self.get(k) {
            None => Ok(None),
            Some(v) if v.is_object() => Ok(Some(v)),
            Some(_) => Err(format!("{k} must be an object")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config.json published with llava-1.5-7b-hf (text fields mostly omitted).
    const LLAVA_7B: &str = r#"{
      "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
      "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
      "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05, "torch_dtype": "float16",
        "vocab_size": 32064},
      "tie_word_embeddings": false, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
      "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
        "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14,
        "projection_dim": 768, "vocab_size": 32000},
      "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064
    }"#;

    #[test]
    fn llava_7b_config_resolves_to_transformers_defaults() {
        let c = LlavaConfig::from_json_str(LLAVA_7B).unwrap();
        assert_eq!(c.text.hidden_size, 4096);
        assert_eq!(c.text.intermediate_size, 11008);
        assert_eq!(c.text.num_hidden_layers, 32);
        assert_eq!(c.text.num_key_value_heads, 32);
        assert_eq!(c.text.head_dim, 128);
        assert_eq!(c.text.vocab_size, 32064);
        assert_eq!(c.text.rope_theta, 10000.0);
        assert_eq!(c.text.rms_norm_eps, 1e-5);
        assert_eq!(c.vision.hidden_size, 1024);
        assert_eq!(c.vision.hidden_act, Activation::QuickGelu);
        assert_eq!(c.image_seq_length, 576);
        assert_eq!(c.vision_feature_layers, vec![-2]);
        assert_eq!(c.stored_dtype, Some(DType::F16));
        assert_eq!(c.image_token_index, 32000);
    }

    #[test]
    fn both_rope_spellings_are_read() {
        let old =
            r#"{"text_config": {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}}"#;
        let new =
            r#"{"text_config": {"rope_parameters": {"rope_type": "linear", "rope_theta": 500000.0, "factor": 2.0}}}"#;
        for s in [old, new] {
            let c = LlavaConfig::from_json_str(s).unwrap();
            assert_eq!(c.text.rope_theta, 500000.0);
            assert_eq!(c.text.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        }
    }

    #[test]
    fn bad_configs_give_messages() {
        assert!(LlavaConfig::from_json_str("{").unwrap_err().contains("not valid JSON"));
        let e = LlavaConfig::from_json_str(r#"{"text_config": {"hidden_size": "big"}}"#).unwrap_err();
        assert!(e.contains("hidden_size"), "{e}");
        let e =
            LlavaConfig::from_json_str(r#"{"text_config": {"rope_parameters": {"rope_type": "yarn"}}}"#).unwrap_err();
        assert!(e.contains("yarn"), "{e}");
        let e = LlavaConfig::from_json_str(r#"{"vision_feature_layer": 99}"#).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
    }
}
