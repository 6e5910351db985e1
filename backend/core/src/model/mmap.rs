//! Memory-mapped safetensors with one materialisation per tensor and no lingering page residency.
//!
//! candle's CPU tensors own their storage, so loading always copies a tensor out of its file once. Mapping alone
//! would still leave every touched page of the mapping resident next to that copy, doubling peak memory on a 7B
//! checkpoint. This backend therefore (1) parses the safetensors headers itself, (2) materialises each tensor
//! straight from the mapping in the requested dtype on the requested device, and (3) advises the kernel that the
//! tensor's mapped pages are no longer needed. Peak resident memory is the weights once (none on the host for a GPU
//! device) plus the largest tensor.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use memmap2::{Mmap, UncheckedAdvice};
use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Byte range within the file.
    start: usize,
    end: usize,
}

struct Mapped {
    path: PathBuf,
    mmap: Mmap,
}

/// Safetensors files mapped read-only, indexed by tensor name.
pub struct MappedSafetensors {
    files: Vec<Mapped>,
    entries: HashMap<String, Entry>,
}

fn st_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "U8" => DType::U8,
        "U32" => DType::U32,
        "I64" => DType::I64,
        _ => return None,
    })
}

impl MappedSafetensors {
    /// Maps every file and reads its header; a tensor name in two files is an error.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for (fi, path) in paths.iter().enumerate() {
            let f = File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: checkpoint files are read-only inputs; they must not be truncated while mapped.
            let mmap = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
            for (name, e) in parse_header(path, &mmap, fi)? {
                if entries.insert(name.clone(), e).is_some() {
                    return Err(Error::checkpoint(path, format!("tensor {name} appears in two weight files")));
                }
            }
            files.push(Mapped { path: path.clone(), mmap });
        }
        Ok(Self { files, entries })
    }

    /// Tensor names with their element counts.
    pub fn names(&self) -> impl Iterator<Item = (&str, usize)> {
        self.entries.iter().map(|(n, e)| (n.as_str(), e.shape.iter().product()))
    }

    /// True when the files hold `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() }.bt())?;
        let m = &self.files[e.file];
        let bytes = &m.mmap[e.start..e.end];
        let t = Tensor::from_raw_buffer(bytes, e.dtype, &e.shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(dev)?;
        // SAFETY: the mapping is private and read-only and is never written, so dropping its pages only means they
        // are read from the file again if touched again.
        let _ = unsafe { m.mmap.unchecked_advise_range(UncheckedAdvice::DontNeed, e.start, e.end - e.start) };
        Ok(t)
    }
}

impl SimpleBackend for MappedSafetensors {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if let Some(e) = self.entries.get(name) {
            if e.shape.as_slice() != s.dims() {
                return Err(candle_core::Error::UnexpectedShape {
                    msg: format!("shape mismatch for {name} in {}", self.files[e.file].path.display()),
                    expected: s,
                    got: e.shape.clone().into(),
                }
                .bt());
            }
        }
        self.load(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

/// Parses the safetensors header: 8-byte little-endian length, then JSON `{name: {dtype, shape, data_offsets}}`.
fn parse_header(path: &Path, bytes: &[u8], file: usize) -> Result<Vec<(String, Entry)>> {
    let bad = |m: String| Error::checkpoint(path, format!("not a safetensors file: {m}"));
    if bytes.len() < 8 {
        return Err(bad("shorter than its header".into()));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().map_err(|_| bad("header length".into()))?) as usize;
    let data_start =
        8usize.checked_add(n).filter(|&s| s <= bytes.len()).ok_or_else(|| bad("header too long".into()))?;
    let header: Value = serde_json::from_slice(&bytes[8..data_start]).map_err(|e| bad(format!("header: {e}")))?;
    let obj = header.as_object().ok_or_else(|| bad("header is not an object".into()))?;
    let data_len = bytes.len() - data_start;
    let mut out = Vec::with_capacity(obj.len());
    for (name, v) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dname = v["dtype"].as_str().ok_or_else(|| bad(format!("{name}: no dtype")))?;
        let dtype = st_dtype(dname).ok_or_else(|| bad(format!("{name}: unsupported dtype {dname}")))?;
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .ok_or_else(|| bad(format!("{name}: no shape")))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad(format!("{name}: bad shape")))?;
        let offs = v["data_offsets"].as_array().ok_or_else(|| bad(format!("{name}: no data_offsets")))?;
        let (b, e) = match (offs.first().and_then(Value::as_u64), offs.get(1).and_then(Value::as_u64)) {
            (Some(b), Some(e)) => (b as usize, e as usize),
            _ => return Err(bad(format!("{name}: bad data_offsets"))),
        };
        let want = shape.iter().product::<usize>() * dtype.size_in_bytes();
        if b > e || e > data_len || e - b != want {
            return Err(bad(format!("{name}: data_offsets [{b}, {e}) do not fit {want} bytes in {data_len}")));
        }
        out.push((name.clone(), Entry { file, dtype, shape, start: data_start + b, end: data_start + e }));
    }
    Ok(out)
}
