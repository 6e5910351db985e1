//! Loading a checkpoint: which directory (`--model`), in which dtype (`--dtype`), on which device (`--device`).

use crate::error::{input, Error, Result};
use candle_core::{DType, Device};

/// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ if s == "cuda" || s.starts_with("cuda:") => {
            let n: usize = s
                .strip_prefix("cuda:")
                .map(str::parse)
                .transpose()
                .map_err(|_| Error::Input(format!("bad device {s:?} (use cpu, cuda or cuda:N)")))?
                .unwrap_or(0);
            if !candle_core::utils::cuda_is_available() {
                input!("this unike was built without CUDA (rebuild with `--features cuda`) or no GPU is visible");
            }
            Ok(Device::new_cuda(n)?)
        }
        other => input!("unknown device {other:?} (use cpu, cuda or cuda:N)"),
    }
}

/// `f32`, `f16`, `bf16`; `None` keeps the checkpoint's dtype.
pub fn parse_dtype(s: Option<&str>) -> Result<Option<DType>> {
    match s {
        None => Ok(None),
        Some(name) => match unike_core::model::config::parse_dtype(name) {
            Some(d) => Ok(Some(d)),
            None => input!("unknown dtype {name:?} (use f32, f16 or bf16)"),
        },
    }
}

/// Display name of a device.
pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

/// `--model`, `--dtype`, `--device`: which checkpoint to load, in which dtype, where.
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[derive(Debug, Clone)]
pub struct ModelArgs {
    /// Model directory (llava-hf, BLIP-2 or Qwen2-VL layout, as transformers saves them) or `default`.
    #[cfg_attr(feature = "clap", arg(long, default_value = "default"))]
    pub model: String,
    /// Compute dtype: f32, f16 or bf16 (default: the checkpoint's).
    #[cfg_attr(feature = "clap", arg(long))]
    pub dtype: Option<String>,
    /// cpu, cuda or cuda:N.
    #[cfg_attr(feature = "clap", arg(long, default_value = "cpu"))]
    pub device: String,
}

/// A loaded checkpoint with its processor.
pub struct Loaded {
    pub dir: std::path::PathBuf,
    pub ckpt: unike_core::model::Checkpoint,
    pub processor: std::sync::Arc<dyn unike_core::model::ModelProcessor>,
    pub model: std::sync::Arc<dyn unike_core::model::VisionLanguageModel>,
    pub device: Device,
    /// Time to open, map and materialise, in milliseconds.
    pub load_ms: f64,
}

impl Default for ModelArgs {
    /// The shipped default model, its own dtype, on the CPU.
    fn default() -> Self {
        Self { model: "default".into(), dtype: None, device: "cpu".into() }
    }
}

impl ModelArgs {
    /// Resolves the directory and loads checkpoint, processor and model.
    pub fn load(&self) -> Result<Loaded> {
        let device = parse_device(&self.device)?;
        let dtype = parse_dtype(self.dtype.as_deref())?;
        let dir = crate::model_dir::resolve(&self.model)?;
        let t0 = std::time::Instant::now();
        let ckpt = unike_core::model::Checkpoint::open(&dir)?;
        let processor = ckpt.processor()?;
        let model = ckpt.load_model(dtype, &device)?;
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(Loaded { dir, ckpt, processor, model, device, load_ms })
    }
}

/// World models are tiny: the matmul thread pools (rayon, candle) mostly spin on them. Measured with `eval-base --n 500`:
/// 47 s wall with 33 s of system time by default, 22.5 s with RAYON_NUM_THREADS=1. Sets both to 1 unless already set.
pub fn single_thread_pools() {
    for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, "1");
        }
    }
}
