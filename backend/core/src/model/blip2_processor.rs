//! The processor of BLIP-2 (Li et al., "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image Encoders
//! and Large Language Models", ICML 2023) as transformers' `Blip2Processor` works: `num_query_tokens` `<image>` ids
//! in front of the tokenizer's own encoding of the prompt (which starts with OPT's `</s>` bos), and
//! `BlipImageProcessor`: convert to RGB, resize straight to `size` (height × width, no aspect ratio kept, no crop)
//! with PIL's bicubic filter, rescale by 1/255, normalize with the processor's mean and std.
//!
//! The image processor's settings are read from `preprocessor_config.json` (transformers 4 and the hub), or from
//! the `image_processor` object nested in `processor_config.json` (what transformers 5's `save_pretrained` writes).
//! The resize and normalisation are [`ImageProcessor`]'s (Pillow's fixed-point resampling reproduced exactly); this
//! file only maps `BlipImageProcessor`'s settings and defaults onto it (exact size, never a center crop).

use std::path::Path;

use serde_json::Value;
use tokenizers::Tokenizer;

use super::blip2_config::Blip2Config;
use super::preprocess::ImageProcessor;
use crate::error::{Error, Result};

/// The image placeholder token.
pub const IMAGE_TOKEN: &str = "<image>";

/// `BlipImageProcessor`'s default `size` (height and width).
const DEFAULT_SIZE: u64 = 384;

/// Tokenizer, image processor and image-token layout of a BLIP-2 checkpoint.
#[derive(Clone)]
pub struct Blip2Processor {
    tokenizer: Tokenizer,
    image: ImageProcessor,
    image_token_id: u32,
    num_query_tokens: usize,
}

impl std::fmt::Debug for Blip2Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blip2Processor")
            .field("image_token_id", &self.image_token_id)
            .field("num_query_tokens", &self.num_query_tokens)
            .field("image", &self.image)
            .finish()
    }
}

impl Blip2Processor {
    /// Loads `tokenizer.json` and the image processor settings from `dir`.
    pub fn load(dir: &Path, cfg: &Blip2Config) -> Result<Self> {
        let tpath = dir.join("tokenizer.json");
        if !tpath.is_file() {
            return Err(Error::checkpoint(dir, "tokenizer.json is missing"));
        }
        let tokenizer = Tokenizer::from_file(&tpath)
            .map_err(|e| Error::Tokenizer(format!("cannot load {}: {e}", tpath.display())))?;
        let image = load_image_processor(dir)?.with_tower(cfg.vision.image_size);
        let proc_path = dir.join("processor_config.json");
        if let Some(v) = read_json(&proc_path)? {
            if let Some(n) = v.get("num_query_tokens").and_then(Value::as_u64) {
                if n as usize != cfg.num_query_tokens {
                    return Err(Error::config(
                        &proc_path,
                        format!("num_query_tokens {n} differs from config.json's {}", cfg.num_query_tokens),
                    ));
                }
            }
        }
        Self::new(tokenizer, image, cfg)
    }

    /// Builds a processor from parts; a tokenizer that knows `<image>` must give it the config's id.
    pub fn new(tokenizer: Tokenizer, image: ImageProcessor, cfg: &Blip2Config) -> Result<Self> {
        if let Some(id) = tokenizer.token_to_id(IMAGE_TOKEN) {
            if id != cfg.image_token_index {
                return Err(Error::Tokenizer(format!(
                    "the tokenizer's {IMAGE_TOKEN} id {id} differs from config image_token_index {}",
                    cfg.image_token_index
                )));
            }
        }
        Ok(Self { tokenizer, image, image_token_id: cfg.image_token_index, num_query_tokens: cfg.num_query_tokens })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The image processor.
    pub fn image_processor(&self) -> &ImageProcessor {
        &self.image
    }

    /// The id of `<image>`.
    pub fn image_token_id(&self) -> u32 {
        self.image_token_id
    }

    /// `<image>` tokens per image.
    pub fn num_query_tokens(&self) -> usize {
        self.num_query_tokens
    }

    /// The ids of `prompt` with one image: `num_query_tokens` `<image>` ids, then the tokenizer's encoding with its
    /// special tokens (`</s> prompt...` for OPT). An empty prompt gives `[<image>...; </s>]`, what
    /// `Blip2ForConditionalGeneration.generate` builds for an image alone. The prompt must not write `<image>`
    /// itself (the processor places the image tokens).
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        if prompt.contains(IMAGE_TOKEN) {
            return Err(Error::Invalid(format!(
                "a BLIP-2 prompt must not contain {IMAGE_TOKEN}: the processor puts the image tokens in front"
            )));
        }
        let enc = self.tokenizer.encode(prompt, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = vec![self.image_token_id; self.num_query_tokens];
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Tokenizes text with no special tokens and no image (for answers and targets).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids, skipping special tokens (ids the tokenizer does not know, such as OPT's padding rows of the
    /// vocabulary, decode to nothing).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v = serde_json::from_str(&text).map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
    Ok(Some(v))
}

/// `BlipImageProcessor` from `preprocessor_config.json`, else from `processor_config.json`'s `image_processor`.
pub fn load_image_processor(dir: &Path) -> Result<ImageProcessor> {
    let pre = dir.join("preprocessor_config.json");
    let proc = dir.join("processor_config.json");
    let (path, settings) = match read_json(&pre)? {
        Some(v) => (pre, v),
        None => match read_json(&proc)?.and_then(|v| v.get("image_processor").cloned()) {
            Some(v) => (proc, v),
            None => {
                return Err(Error::checkpoint(
                    dir,
                    "no image processor settings (preprocessor_config.json, or image_processor in \
                     processor_config.json)",
                ))
            }
        },
    };
    blip_image_processor(&settings).map_err(|m| Error::config(&path, m))
}

/// Maps `BlipImageProcessor` settings onto [`ImageProcessor`]: `size` is always an exact height × width (an integer
/// means a square; default 384), there is never a center crop; the other settings and their defaults (bicubic,
/// 1/255, CLIP mean and std) are [`ImageProcessor`]'s.
pub fn blip_image_processor(settings: &Value) -> std::result::Result<ImageProcessor, String> {
    let mut v = settings.as_object().cloned().ok_or("the image processor settings must be a JSON object")?;
    if let Some(t) = v.get("image_processor_type").and_then(Value::as_str) {
        if !t.starts_with("BlipImageProcessor") {
            return Err(format!("image_processor_type {t:?} is not BlipImageProcessor"));
        }
    }
    let size = match v.get("size") {
        None | Some(Value::Null) => serde_json::json!({ "height": DEFAULT_SIZE, "width": DEFAULT_SIZE }),
        Some(Value::Number(n)) => {
            let n = n.as_u64().ok_or("size must be a positive integer")?;
            serde_json::json!({ "height": n, "width": n })
        }
        Some(Value::Object(o)) if o.contains_key("height") && o.contains_key("width") => Value::Object(o.clone()),
        Some(other) => return Err(format!("BlipImageProcessor size must be height and width, not {other}")),
    };
    v.insert("size".into(), size);
    v.insert("do_center_crop".into(), Value::Bool(false));
    ImageProcessor::from_json_str(&Value::Object(v).to_string())
}
