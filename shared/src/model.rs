//! Messages describing the server and the vision-language model it serves.

use serde::{Deserialize, Serialize};

/// Answer of [`crate::routes::HEALTH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HealthResponse {
    pub status: String,
    pub version: String,
    /// Worker processes seen in the last 30 s for this studio's model, when they compute its answers, edits and runs
    /// (`unike serve --workers external`); absent when the server computes them itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
}

/// Answer of [`crate::routes::MODEL`]: what the loaded checkpoint is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ModelInfo {
    /// Short name (directory name, or `default`).
    pub name: String,
    /// Where the weights came from.
    pub source: String,
    /// `f32`, `f16` or `bf16`.
    pub dtype: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub parameters: u64,
    pub vocab_size: usize,
    pub text_layers: usize,
    pub text_hidden_size: usize,
    pub vision_layers: usize,
    pub vision_hidden_size: usize,
    /// Input side of the vision tower (0: dynamic resolution, Qwen2-VL).
    pub image_size: usize,
    /// Image tokens per image (0: by the image's size, Qwen2-VL).
    pub image_seq_length: usize,
    /// `llava`, `blip2` or `qwen2vl` (older servers sent none: llava).
    #[serde(default = "default_family")]
    pub family: String,
}

fn default_family() -> String {
    "llava".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_info_round_trips_through_json() {
        let info = ModelInfo {
            name: "tiny".into(),
            source: "tests/fixtures/tiny-llava".into(),
            dtype: "f32".into(),
            device: "cpu".into(),
            parameters: 12345,
            vocab_size: 300,
            text_layers: 2,
            text_hidden_size: 64,
            vision_layers: 2,
            vision_hidden_size: 32,
            image_size: 30,
            image_seq_length: 25,
            family: "llava".into(),
        };
        let json = serde_json::to_string(&info).unwrap();
        let back: ModelInfo = serde_json::from_str(&json).unwrap();
        assert_eq!(back, info);
        assert!(json.contains("\"image_seq_length\":25"));
    }
}
