//! `--device` and `--dtype` flags.

use anyhow::{bail, Result};
use candle_core::{DType, Device};

/// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ if s == "cuda" || s.starts_with("cuda:") => {
            let n: usize = s.strip_prefix("cuda:").map(str::parse).transpose()?.unwrap_or(0);
            if !candle_core::utils::cuda_is_available() {
                bail!("this unike was built without CUDA (rebuild with `--features cuda`) or no GPU is visible");
            }
            Ok(Device::new_cuda(n)?)
        }
        other => bail!("unknown device {other:?} (use cpu, cuda or cuda:N)"),
    }
}

/// `f32`, `f16`, `bf16`; `None` keeps the checkpoint's dtype.
pub fn parse_dtype(s: Option<&str>) -> Result<Option<DType>> {
    match s {
        None => Ok(None),
        Some(name) => match unike_core::model::config::parse_dtype(name) {
            Some(d) => Ok(Some(d)),
            None => bail!("unknown dtype {name:?} (use f32, f16 or bf16)"),
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
