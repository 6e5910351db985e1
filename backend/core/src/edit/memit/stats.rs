//! The key statistics of the locate-then-edit methods (ROME, MEMIT, AlphaEdit): per decoder layer, the second moment
//! `C = E[u uᵀ]` of the FFN's intermediate `u` (what the output projection reads, the "keys"), over every position of
//! ordinary inputs (ROME's `layer_stats`, which runs a Wikipedia sample; here the model's training split), and its
//! eigen-decomposition (AlphaEdit's null-space projector takes the eigenvectors of small eigenvalues). Computed once per
//! model and saved as `MODEL/memit/stats.safetensors` + `stats.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::linalg::{symmetric_eigen, Mat};
use crate::edit::EditSequence;
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, Hooks};
use crate::model::VisionLanguageModel;

const FORMAT: &str = "unike-key-stats/1";

/// One layer's statistics.
#[derive(Debug, Clone)]
pub struct LayerKeyStats {
    /// `E[u uᵀ]`, `(i, i)`.
    pub second_moment: Mat,
    /// Its eigenvalues, ascending, `(i)`.
    pub eigenvalues: Vec<f64>,
    /// The matching eigenvectors as columns, `(i, i)`.
    pub eigenvectors: Mat,
}

impl LayerKeyStats {
    /// The projector onto the span of the eigenvectors whose eigenvalue is below `threshold` (AlphaEdit's `P`),
    /// `(i, i)`, and that span's dimension.
    pub fn null_space_projector(&self, threshold: f64) -> (Mat, usize) {
        let n = self.eigenvectors.rows;
        let kept: Vec<usize> = (0..self.eigenvalues.len()).filter(|&j| self.eigenvalues[j] < threshold).collect();
        let mut p = Mat::zeros(n, n);
        for r in 0..n {
            for c in r..n {
                let s: f64 = kept.iter().map(|&j| self.eigenvectors.at(r, j) * self.eigenvectors.at(c, j)).sum();
                p.data[r * n + c] = s;
                p.data[c * n + r] = s;
            }
        }
        (p, kept.len())
    }
}

/// Where the statistics came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsInfo {
    pub format: String,
    /// Token positions averaged over.
    pub tokens: usize,
    /// Input sequences.
    pub sequences: usize,
    /// The data, in words (e.g. "world 0, training split front: 1000 cases").
    pub source: String,
    /// Layers with statistics.
    pub layers: Vec<usize>,
}

/// Key statistics of a model.
#[derive(Debug, Clone)]
pub struct KeyStats {
    pub info: StatsInfo,
    pub layers: BTreeMap<usize, LayerKeyStats>,
}

impl KeyStats {
    /// Accumulates `E[u uᵀ]` at every decoder layer over every position of `seqs` (teacher-forced, prompt and
    /// answer, the unedited model), then decomposes each. `progress(done)` after each sequence.
    pub fn collect(
        model: &dyn VisionLanguageModel,
        seqs: impl IntoIterator<Item = Result<EditSequence>>,
        source: &str,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Self> {
        let n_layers = model.num_layers();
        let parts = (0..n_layers).map(|l| model.ffn_parts(l)).collect::<Result<Vec<_>>>()?;
        let mut sums: Vec<Option<Tensor>> = vec![None; n_layers];
        let (mut tokens, mut sequences) = (0usize, 0usize);
        for seq in seqs {
            let seq = seq?;
            let inputs = seq.inputs(model)?;
            let mut cap = Capture::at_layers(0..n_layers, CapturePoint::FfnInput);
            model.forward_inputs(&inputs, None, &Hooks::none(), &mut cap)?;
            for (l, p) in parts.iter().enumerate() {
                let q = cap
                    .get(l, CapturePoint::FfnInput)
                    .ok_or_else(|| Error::Invalid("FFN input not captured".into()))?;
                let u = p.intermediate(&q.squeeze(0)?)?.to_dtype(DType::F64)?;
                let outer = u.t()?.matmul(&u)?;
                sums[l] = Some(match sums[l].take() {
                    Some(s) => (s + outer)?,
                    None => outer,
                });
            }
            tokens += seq.ids.len();
            sequences += 1;
            progress(sequences);
        }
        if tokens == 0 {
            return Err(Error::Invalid("no inputs to estimate the key statistics on".into()));
        }
        let mut layers = BTreeMap::new();
        for (l, s) in sums.into_iter().enumerate() {
            let s = s.ok_or_else(|| Error::Invalid("no key statistics accumulated".into()))?;
            let m = Mat::from_tensor(&(s / tokens as f64)?)?;
            let (eigenvalues, eigenvectors) = symmetric_eigen(&m)?;
            layers.insert(l, LayerKeyStats { second_moment: m, eigenvalues, eigenvectors });
        }
        let info = StatsInfo {
            format: FORMAT.into(),
            tokens,
            sequences,
            source: source.into(),
            layers: layers.keys().copied().collect(),
        };
        Ok(Self { info, layers })
    }

    /// The statistics of layer `layer`, or an error saying how to make them.
    pub fn layer(&self, layer: usize) -> Result<&LayerKeyStats> {
        self.layers.get(&layer).ok_or_else(|| {
            Error::Invalid(format!("the key statistics have no layer {layer} (they cover {:?})", self.info.layers))
        })
    }

    /// Writes `dir/stats.safetensors` and `dir/stats.json`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|err| Error::Io { path: dir.to_path_buf(), err })?;
        let device = Device::Cpu;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (l, s) in &self.layers {
            tensors.insert(format!("layers.{l}.second_moment"), s.second_moment.to_tensor(&device)?);
            let ev: Vec<f32> = s.eigenvalues.iter().map(|&x| x as f32).collect();
            tensors.insert(format!("layers.{l}.eigenvalues"), Tensor::new(ev, &device)?);
            tensors.insert(format!("layers.{l}.eigenvectors"), s.eigenvectors.to_tensor(&device)?);
        }
        candle_core::safetensors::save(&tensors, dir.join("stats.safetensors"))?;
        let js = dir.join("stats.json");
        let text = serde_json::to_string_pretty(&self.info)
            .map_err(|e| Error::Data { path: js.clone(), msg: e.to_string() })?;
        std::fs::write(&js, text).map_err(|err| Error::Io { path: js, err })
    }

    /// True when `dir` holds saved statistics.
    pub fn exist(dir: &Path) -> bool {
        dir.join("stats.json").is_file() && dir.join("stats.safetensors").is_file()
    }

    /// Reads statistics [`KeyStats::save`] wrote for a model whose FFNs are `width` wide; missing ones are an error
    /// naming the command that makes them.
    pub fn load(dir: &Path, width: usize) -> Result<Self> {
        let js = dir.join("stats.json");
        if !Self::exist(dir) {
            return Err(Error::Invalid(format!(
                "no key statistics in {} (`unike build-stats` makes them; `unike bench` does on demand)",
                dir.display()
            )));
        }
        let data_err = |msg: String| Error::Data { path: js.clone(), msg };
        let text = std::fs::read_to_string(&js).map_err(|err| Error::Io { path: js.clone(), err })?;
        let info: StatsInfo = serde_json::from_str(&text).map_err(|e| data_err(e.to_string()))?;
        if info.format != FORMAT {
            return Err(data_err(format!("format {:?} is not {FORMAT:?}", info.format)));
        }
        let st = dir.join("stats.safetensors");
        let tensors = candle_core::safetensors::load(&st, &Device::Cpu)?;
        let get = |name: String| -> Result<&Tensor> {
            tensors.get(&name).ok_or_else(|| Error::Data { path: st.clone(), msg: format!("missing {name}") })
        };
        let mut layers = BTreeMap::new();
        for &l in &info.layers {
            let second_moment = Mat::from_tensor(get(format!("layers.{l}.second_moment"))?)?;
            let eigenvalues = get(format!("layers.{l}.eigenvalues"))?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            let eigenvectors = Mat::from_tensor(get(format!("layers.{l}.eigenvectors"))?)?;
            if second_moment.rows != width || eigenvectors.rows != width || eigenvalues.len() != width {
                return Err(data_err(format!(
                    "layer {l}'s statistics are {}x{} but the model's FFN is {width} wide (made for another model?)",
                    second_moment.rows, second_moment.cols
                )));
            }
            layers.insert(l, LayerKeyStats { second_moment, eigenvalues, eigenvectors });
        }
        Ok(Self { info, layers })
    }

    /// Bytes held.
    pub fn resident_bytes(&self) -> usize {
        self.layers
            .values()
            .map(|s| (s.second_moment.data.len() + s.eigenvectors.data.len() + s.eigenvalues.len()) * 8)
            .sum()
    }
}
