//! Key-value cache of the decoder for incremental (greedy) decoding.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Keys and values of one layer, each `(b, kv_heads, t, head_dim)`; `None` before the first call.
pub type LayerKv = Option<(Tensor, Tensor)>;

/// Per-layer keys and values of every position seen so far.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
}

impl KvCache {
    /// An empty cache for a decoder of `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers] }
    }

    /// Number of cached positions (0 when empty).
    pub fn len(&self) -> usize {
        self.layers.iter().flatten().next().and_then(|(k, _)| k.dim(2).ok()).unwrap_or(0)
    }

    /// True when nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every cached position.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
    }

    pub(crate) fn layer_mut(&mut self, i: usize) -> Result<&mut LayerKv> {
        let n = self.layers.len();
        self.layers.get_mut(i).ok_or_else(|| Error::Invalid(format!("KV cache has {n} layers, asked for layer {i}")))
    }
}
