//! `config.json` of a BLIP-2 checkpoint with an OPT decoder (`Blip2ForConditionalGeneration`; Li et al., "BLIP-2:
//! Bootstrapping Language-Image Pre-training with Frozen Image Encoders and Large Language Models", ICML 2023).
//!
//! Both spellings are read: the transformers-4 one the hub publishes (every field written, `torch_dtype`) and the
//! transformers-5 one `save_pretrained` writes (only non-default fields, `dtype`). Every missing field takes the
//! default of transformers' `Blip2VisionConfig`, `Blip2QFormerConfig`, `OPTConfig` and `Blip2Config`.
//! What the port does not implement is refused here with a message: the Flan-T5 variants (an encoder-decoder
//! language model), OPT-350m's `project_in`/`project_out` and post-LayerNorm blocks, LayerNorms without affine
//! parameters, and configs older than the processor's `<image>` expansion (no `image_token_index`).

use std::path::Path;

use candle_core::DType;
use serde_json::Value;

use super::config::{parse_dtype, Activation, Fields};
use crate::error::{Error, Result};

/// The EVA-style ViT of BLIP-2 (`Blip2VisionConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct Blip2VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    /// Whether the fused `qkv` projection has a bias (its key third is zero).
    pub qkv_bias: bool,
}

impl Blip2VisionConfig {
    /// Patches per image side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens of the vision transformer: the class token, then the patches.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// The Q-Former (`Blip2QFormerConfig`): a BERT-style post-LayerNorm encoder over the learned query tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct QFormerConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    /// Layer `i` cross-attends to the image when `i % cross_attention_frequency == 0`.
    pub cross_attention_frequency: usize,
    /// Width of the vision features the cross-attention reads (the vision hidden size, as `Blip2Config` sets it).
    pub encoder_hidden_size: usize,
}

/// The OPT decoder (`OPTConfig`; Zhang et al., "OPT: Open Pre-trained Transformer Language Models", 2022).
#[derive(Debug, Clone, PartialEq)]
pub struct OptConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub ffn_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Positions the learned table covers (it has `max_position_embeddings + 2` rows: OPT's offset).
    pub max_position_embeddings: usize,
    pub activation: Activation,
    /// LayerNorm epsilon (OPT's LayerNorms use PyTorch's default, 1e-5).
    pub layer_norm_eps: f64,
    /// Biases on every attention and FFN projection.
    pub enable_bias: bool,
    /// The decoder's `final_layer_norm` after the last layer (absent with `_remove_final_layer_norm`).
    pub final_layer_norm: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl OptConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Resolved `Blip2Config` with an OPT language model.
#[derive(Debug, Clone, PartialEq)]
pub struct Blip2Config {
    pub vision: Blip2VisionConfig,
    pub qformer: QFormerConfig,
    pub text: OptConfig,
    /// Learned query tokens, and so `<image>` tokens per image.
    pub num_query_tokens: usize,
    /// The `<image>` token id the processor writes and the query outputs replace.
    pub image_token_index: u32,
    /// The dtype the checkpoint was saved in (`torch_dtype` / `dtype`), if stated.
    pub stored_dtype: Option<DType>,
}

impl Blip2Config {
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
        if let Some(mt) = top.str("model_type")? {
            if mt != "blip-2" {
                return Err(format!("model_type {mt:?} is not BLIP-2 (\"blip-2\")"));
            }
        }
        if top.bool("use_decoder_only_language_model")? == Some(false) {
            return Err("BLIP-2 with an encoder-decoder language model (Flan-T5) is not supported; only OPT".into());
        }
        let empty = Value::Object(Default::default());
        let section =
            |k: &str| -> std::result::Result<Fields<'_>, String> { Ok(Fields(top.obj(k)?.unwrap_or(&empty))) };
        let vision = parse_vision(section("vision_config")?)?;
        let mut qformer = parse_qformer(section("qformer_config")?)?;
        // Blip2Config makes the Q-Former's cross-attention read the vision width, whatever the sub-config says.
        qformer.encoder_hidden_size = vision.hidden_size;
        let text = parse_opt(section("text_config")?)?;
        let num_query_tokens = top.usize("num_query_tokens")?.unwrap_or(32);
        if num_query_tokens == 0 {
            return Err("num_query_tokens must be positive".into());
        }
        let image_token_index = top.u32("image_token_index")?.or(top.u32("image_token_id")?).ok_or(
            "no image_token_index: a BLIP-2 config from before the processor expanded <image> tokens is not supported \
             (add the tokenizer's <image> id as image_token_index)",
        )?;
        let stored_dtype = match top.str("torch_dtype")?.or(top.str("dtype")?) {
            None => None,
            Some(name) => Some(parse_dtype(name).ok_or_else(|| format!("unsupported dtype {name:?}"))?),
        };
        Ok(Self { vision, qformer, text, num_query_tokens, image_token_index, stored_dtype })
    }
}

fn activation(f: &Fields, key: &str, default: &str, part: &str) -> std::result::Result<Activation, String> {
    let name = f.str(key)?.unwrap_or(default);
    Activation::parse(name).ok_or_else(|| format!("unsupported {part} {key} {name:?}"))
}

fn check_model_type(f: &Fields, want: &str, part: &str) -> std::result::Result<(), String> {
    match f.str("model_type")? {
        Some(mt) if mt != want => Err(format!("{part}.model_type {mt:?} is not supported (only {want})")),
        _ => Ok(()),
    }
}

fn check_heads(hidden: usize, heads: usize, part: &str) -> std::result::Result<(), String> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(format!("{part} hidden_size {hidden} is not a multiple of num_attention_heads {heads}"));
    }
    Ok(())
}

fn parse_vision(f: Fields) -> std::result::Result<Blip2VisionConfig, String> {
    check_model_type(&f, "blip_2_vision_model", "vision_config")?;
    let cfg = Blip2VisionConfig {
        hidden_size: f.usize("hidden_size")?.unwrap_or(1408),
        intermediate_size: f.usize("intermediate_size")?.unwrap_or(6144),
        num_hidden_layers: f.usize("num_hidden_layers")?.unwrap_or(39),
        num_attention_heads: f.usize("num_attention_heads")?.unwrap_or(16),
        num_channels: f.usize("num_channels")?.unwrap_or(3),
        image_size: f.usize("image_size")?.unwrap_or(224),
        patch_size: f.usize("patch_size")?.unwrap_or(14),
        hidden_act: activation(&f, "hidden_act", "gelu", "vision")?,
        layer_norm_eps: f.f64("layer_norm_eps")?.unwrap_or(1e-6),
        qkv_bias: f.bool("qkv_bias")?.unwrap_or(true),
    };
    if cfg.patch_size == 0 || !cfg.image_size.is_multiple_of(cfg.patch_size) {
        return Err(format!("vision image_size {} is not a multiple of patch_size {}", cfg.image_size, cfg.patch_size));
    }
    check_heads(cfg.hidden_size, cfg.num_attention_heads, "vision")?;
    Ok(cfg)
}

fn parse_qformer(f: Fields) -> std::result::Result<QFormerConfig, String> {
    check_model_type(&f, "blip_2_qformer", "qformer_config")?;
    let cfg = QFormerConfig {
        hidden_size: f.usize("hidden_size")?.unwrap_or(768),
        intermediate_size: f.usize("intermediate_size")?.unwrap_or(3072),
        num_hidden_layers: f.usize("num_hidden_layers")?.unwrap_or(12),
        num_attention_heads: f.usize("num_attention_heads")?.unwrap_or(12),
        hidden_act: activation(&f, "hidden_act", "gelu", "qformer")?,
        layer_norm_eps: f.f64("layer_norm_eps")?.unwrap_or(1e-12),
        cross_attention_frequency: f.usize("cross_attention_frequency")?.unwrap_or(2),
        encoder_hidden_size: f.usize("encoder_hidden_size")?.unwrap_or(1408),
    };
    if cfg.cross_attention_frequency == 0 {
        return Err("qformer cross_attention_frequency must be positive".into());
    }
    if let Some(t) = f.str("position_embedding_type")? {
        if t != "absolute" {
            return Err(format!("qformer position_embedding_type {t:?} is not supported (only absolute)"));
        }
    }
    check_heads(cfg.hidden_size, cfg.num_attention_heads, "qformer")?;
    Ok(cfg)
}

fn parse_opt(f: Fields) -> std::result::Result<OptConfig, String> {
    match f.str("model_type")? {
        None | Some("opt") => {}
        Some(mt) => return Err(format!("text_config.model_type {mt:?} is not supported (only opt)")),
    }
    let hidden_size = f.usize("hidden_size")?.unwrap_or(768);
    let proj = f.usize("word_embed_proj_dim")?.unwrap_or(hidden_size);
    if proj != hidden_size {
        return Err(format!(
            "OPT word_embed_proj_dim {proj} differs from hidden_size {hidden_size}: project_in/project_out \
             (OPT-350m) are not supported"
        ));
    }
    if f.bool("do_layer_norm_before")? == Some(false) {
        return Err("OPT with do_layer_norm_before false (post-LayerNorm, OPT-350m) is not supported".into());
    }
    if f.bool("layer_norm_elementwise_affine")? == Some(false) {
        return Err("OPT LayerNorms without affine parameters are not supported".into());
    }
    let eos_token_ids = match f.get("eos_token_id") {
        None => vec![2],
        Some(Value::Number(n)) => vec![n.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or("bad eos_token_id")?],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_u64().and_then(|v| u32::try_from(v).ok()).ok_or("bad eos_token_id entry"))
            .collect::<std::result::Result<Vec<_>, _>>()?,
        Some(_) => return Err("eos_token_id must be an integer or a list".into()),
    };
    let cfg = OptConfig {
        vocab_size: f.usize("vocab_size")?.unwrap_or(50272),
        hidden_size,
        ffn_dim: f.usize("ffn_dim")?.unwrap_or(3072),
        num_hidden_layers: f.usize("num_hidden_layers")?.unwrap_or(12),
        num_attention_heads: f.usize("num_attention_heads")?.unwrap_or(12),
        max_position_embeddings: f.usize("max_position_embeddings")?.unwrap_or(2048),
        activation: activation(&f, "activation_function", "relu", "text")?,
        layer_norm_eps: 1e-5,
        enable_bias: f.bool("enable_bias")?.unwrap_or(true),
        final_layer_norm: !f.bool("_remove_final_layer_norm")?.unwrap_or(false),
        tie_word_embeddings: f.bool("tie_word_embeddings")?.unwrap_or(true),
        bos_token_id: f.u32("bos_token_id")?.or(Some(2)),
        eos_token_ids,
        pad_token_id: f.u32("pad_token_id")?.or(Some(1)),
    };
    check_heads(cfg.hidden_size, cfg.num_attention_heads, "text")?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_config_is_blip2_opt_2_7b_shaped_except_for_the_image_token() {
        let e = Blip2Config::from_json_str("{}").unwrap_err();
        assert!(e.contains("image_token_index"), "{e}");
        let c = Blip2Config::from_json_str(r#"{"image_token_index": 50265}"#).unwrap();
        assert_eq!(c.vision.hidden_size, 1408);
        assert_eq!(c.vision.num_hidden_layers, 39);
        assert_eq!(c.vision.num_positions(), 257);
        assert_eq!(c.qformer.encoder_hidden_size, 1408);
        assert_eq!(c.qformer.cross_attention_frequency, 2);
        assert_eq!(c.num_query_tokens, 32);
        assert_eq!(c.text.vocab_size, 50272);
        assert!(c.text.tie_word_embeddings && c.text.final_layer_norm && c.text.enable_bias);
        assert_eq!(c.text.activation, Activation::Relu);
        assert_eq!(c.text.eos_token_ids, vec![2]);
    }

    #[test]
    fn unsupported_variants_are_refused_with_messages() {
        let e = Blip2Config::from_json_str(
            r#"{"image_token_index": 1, "text_config": {"model_type": "t5"}, "use_decoder_only_language_model": false}"#,
        )
        .unwrap_err();
        assert!(e.contains("Flan-T5"), "{e}");
        let e = Blip2Config::from_json_str(
            r#"{"image_token_index": 1, "text_config": {"hidden_size": 1024, "word_embed_proj_dim": 512}}"#,
        )
        .unwrap_err();
        assert!(e.contains("project_in"), "{e}");
        let e =
            Blip2Config::from_json_str(r#"{"image_token_index": 1, "text_config": {"do_layer_norm_before": false}}"#)
                .unwrap_err();
        assert!(e.contains("post-LayerNorm"), "{e}");
        let e = Blip2Config::from_json_str(r#"{"image_token_index": 1, "vision_config": {"hidden_size": "x"}}"#)
            .unwrap_err();
        assert!(e.contains("hidden_size"), "{e}");
    }
}
