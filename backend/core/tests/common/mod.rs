//! Helpers shared by the core's integration tests: fixture paths, the expected outputs of transformers, loading.
#![allow(dead_code)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use serde::Deserialize;
use unike_core::model::{Llava, LlavaCheckpoint, Processor};

/// `tests/fixtures/<rel>` at the workspace root.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(rel)
}

/// One prompt run through transformers.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub prompt: String,
    pub image: Option<String>,
    pub input_ids: Vec<u32>,
    pub last_logits: Vec<f32>,
    pub answer_ids: Vec<u32>,
    pub answer: String,
}

/// transformers' outputs for `variant` (`f32`, `bf16_as_f32`, `bf16`) and case `name`.
pub fn expected(variant: &str, name: &str) -> Result<Case> {
    let path = fixture("expected/expected.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let case = v["variants"][variant][name].clone();
    serde_json::from_value(case).with_context(|| format!("case {variant}/{name}"))
}

/// Opens and loads a fixture checkpoint on the CPU.
pub fn load(dir: &str, dtype: Option<DType>) -> Result<(LlavaCheckpoint, Llava, Processor)> {
    let ckpt = LlavaCheckpoint::open(fixture(dir))?;
    let model = ckpt.load_model(dtype, &Device::Cpu)?;
    let processor = ckpt.processor()?;
    Ok((ckpt, model, processor))
}

/// Largest absolute elementwise difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
