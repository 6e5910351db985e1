//! The vision transformer and patch merger of Qwen2-VL (Wang et al., "Qwen2-VL: Enhancing Vision-Language Model's
//! Perception of the World at Any Resolution", 2024), as transformers' `Qwen2VisionTransformerPretrainedModel` runs
//! it (no window attention: that is Qwen2.5-VL).
//!
//! Weight names mirror the published checkpoints under `visual.`: `patch_embed.proj` (a Conv3d whose kernel equals
//! its stride, run here as a matmul over the flattened `[C·T·P·P]` patches), `blocks.{i}.norm1`, `blocks.{i}.attn.qkv`
//! (fused, with bias), `blocks.{i}.attn.proj`, `blocks.{i}.norm2`, `blocks.{i}.mlp.fc1`, `blocks.{i}.mlp.fc2`,
//! `merger.ln_q`, `merger.mlp.0`, `merger.mlp.2`.
//!
//! Patches arrive in merge-window-major order (each `merge × merge` window's patches consecutive), and the 2-D
//! rotary embedding gives each head's first half the patch row's angles and its second half the column's
//! (`rotate_half` layout). Attention is full and bidirectional within one image; images never see each other.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::Activation;
use super::kernels;
use super::norm::LayerNorm;
use super::qwen2vl_config::Qwen2VisionConfig;
use crate::error::{Error, Result};

/// LayerNorm epsilon of every vision and merger norm.
const LN_EPS: f64 = 1e-6;

#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
    heads: usize,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &Qwen2VisionConfig) -> Result<Self> {
        let (d, m) = (cfg.embed_dim, cfg.mlp_dim());
        Ok(Self {
            norm1: LayerNorm::load(d, LN_EPS, vb.pp("norm1"))?,
            qkv: candle_nn::linear(d, 3 * d, vb.pp("attn").pp("qkv"))?,
            proj: candle_nn::linear(d, d, vb.pp("attn").pp("proj"))?,
            norm2: LayerNorm::load(d, LN_EPS, vb.pp("norm2"))?,
            fc1: candle_nn::linear(d, m, vb.pp("mlp").pp("fc1"))?,
            fc2: candle_nn::linear(m, d, vb.pp("mlp").pp("fc2"))?,
            act: cfg.hidden_act,
            heads: cfg.num_heads,
        })
    }

    /// One image's patches `x (n, d)` with rotary tables `(n, head_dim / 2)`; returns `(n, d)`.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (n, d) = x.dims2()?;
        let hd = d / self.heads;
        let qkv = self.qkv.forward(&self.norm1.forward(x)?)?.reshape((n, 3, self.heads, hd))?;
        // (1, heads, n, hd); the rotation runs in f32, as transformers does.
        let part = |i: usize| -> Result<Tensor> { Ok(qkv.narrow(1, i, 1)?.squeeze(1)?.transpose(0, 1)?.unsqueeze(0)?) };
        let rot = |t: Tensor| -> Result<Tensor> {
            let dt = t.dtype();
            Ok(kernels::rope(&t.to_dtype(DType::F32)?.contiguous()?, cos, sin)?.to_dtype(dt)?)
        };
        let q = rot(part(0)?)?;
        let k = rot(part(1)?)?;
        let v = part(2)?.contiguous()?;
        let scale = 1.0 / (hd as f64).sqrt();
        let att = (q.matmul(&k.t()?)? * scale)?;
        let att = kernels::softmax_last_dim(&att.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        let y = att.matmul(&v)?.squeeze(0)?.transpose(0, 1)?.reshape((n, d))?;
        let x = (x + self.proj.forward(&y)?)?;
        let h = self.fc2.forward(&self.act.apply(&self.fc1.forward(&self.norm2.forward(&x)?)?)?)?;
        Ok((x + h)?)
    }
}

/// The vision transformer with its patch merger.
#[derive(Debug, Clone)]
pub struct Qwen2Vision {
    /// `(embed_dim, patch_dim)`: the Conv3d kernel flattened.
    patch_embed: Tensor,
    blocks: Vec<Block>,
    ln_q: LayerNorm,
    mlp0: Linear,
    mlp2: Linear,
    /// The rotary inverse frequencies, `head_dim / 4` of them.
    inv_freq: Vec<f32>,
    cfg: Qwen2VisionConfig,
}

impl Qwen2Vision {
    /// Loads from `vb` at the `visual` prefix.
    pub fn load(vb: VarBuilder, cfg: &Qwen2VisionConfig) -> Result<Self> {
        let (d, p, t) = (cfg.embed_dim, cfg.patch_size, cfg.temporal_patch_size);
        let w = vb.pp("patch_embed").pp("proj").get((d, cfg.in_channels, t, p, p), "weight")?;
        let patch_embed = w.reshape((d, cfg.patch_dim()))?;
        let blocks = (0..cfg.depth).map(|i| Block::load(vb.pp("blocks").pp(i), cfg)).collect::<Result<Vec<_>>>()?;
        let merged = d * cfg.spatial_merge_size * cfg.spatial_merge_size;
        let m = vb.pp("merger");
        let ln_q = LayerNorm::load(d, LN_EPS, m.pp("ln_q"))?;
        let mlp0 = candle_nn::linear(merged, merged, m.pp("mlp").pp("0"))?;
        let mlp2 = candle_nn::linear(merged, cfg.hidden_size, m.pp("mlp").pp("2"))?;
        // The rotary dimension is head_dim / 2: rows and columns take head_dim / 4 frequencies each.
        let rot = cfg.head_dim() / 2;
        let inv_freq = (0..rot).step_by(2).map(|i| (1.0 / cfg.rope_theta.powf(i as f64 / rot as f64)) as f32).collect();
        Ok(Self { patch_embed, blocks, ln_q, mlp0, mlp2, inv_freq, cfg: cfg.clone() })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &Qwen2VisionConfig {
        &self.cfg
    }

    /// Patches per image, checking `grid_thw` against the merge size; `(t·h·w)` per image.
    fn image_sizes(&self, pixel_values: &Tensor, grid_thw: &[[usize; 3]]) -> Result<Vec<usize>> {
        let m = self.cfg.spatial_merge_size;
        let (rows, width) = pixel_values.dims2()?;
        if width != self.cfg.patch_dim() {
            return Err(Error::Invalid(format!(
                "pixel_values rows are {width} wide, the patch embedding takes {}",
                self.cfg.patch_dim()
            )));
        }
        let mut sizes = Vec::with_capacity(grid_thw.len());
        for g in grid_thw {
            if g.contains(&0) || g[1] % m != 0 || g[2] % m != 0 {
                return Err(Error::Invalid(format!(
                    "image grid {g:?} is not a positive multiple of the merge size {m}"
                )));
            }
            sizes.push(g[0] * g[1] * g[2]);
        }
        let total: usize = sizes.iter().sum();
        if total != rows {
            return Err(Error::Invalid(format!("pixel_values has {rows} patches but image_grid_thw gives {total}")));
        }
        Ok(sizes)
    }

    /// Rotary tables `cos, sin (t·h·w, head_dim / 2)` f32 of one image grid, in merge-window-major patch order.
    fn rotary(&self, g: &[usize; 3], device: &Device) -> Result<(Tensor, Tensor)> {
        let m = self.cfg.spatial_merge_size;
        let (gt, gh, gw) = (g[0], g[1], g[2]);
        let half = 2 * self.inv_freq.len();
        let mut cos = Vec::with_capacity(gt * gh * gw * half);
        let mut sin = Vec::with_capacity(cos.capacity());
        for _ in 0..gt {
            for br in 0..gh / m {
                for bc in 0..gw / m {
                    for mh in 0..m {
                        for mw in 0..m {
                            let (row, col) = ((br * m + mh) as f32, (bc * m + mw) as f32);
                            for pos in [row, col] {
                                for f in &self.inv_freq {
                                    let a = pos * f;
                                    cos.push(a.cos());
                                    sin.push(a.sin());
                                }
                            }
                        }
                    }
                }
            }
        }
        let n = gt * gh * gw;
        Ok((Tensor::from_vec(cos, (n, half), device)?, Tensor::from_vec(sin, (n, half), device)?))
    }

    /// The last block's output, before the merger: `pixel_values (n_patches, patch_dim)` with one `[t, h, w]` grid
    /// per image (patches in merge-window-major order, images concatenated) → `(n_patches, embed_dim)`.
    pub fn encode(&self, pixel_values: &Tensor, grid_thw: &[[usize; 3]]) -> Result<Tensor> {
        let sizes = self.image_sizes(pixel_values, grid_thw)?;
        let x = pixel_values.to_dtype(self.patch_embed.dtype())?.matmul(&self.patch_embed.t()?)?;
        let mut outs = Vec::with_capacity(sizes.len());
        let mut offset = 0;
        for (g, &n) in grid_thw.iter().zip(&sizes) {
            let (cos, sin) = self.rotary(g, x.device())?;
            let mut h = x.narrow(0, offset, n)?;
            for b in &self.blocks {
                h = b.forward(&h, &cos, &sin)?;
            }
            outs.push(h);
            offset += n;
        }
        Ok(Tensor::cat(&outs, 0)?)
    }

    /// The patch merger: `ln_q` per patch, each merge window's patches concatenated, `mlp.0` → GELU → `mlp.2`:
    /// `(n_patches, embed_dim)` → `(n_patches / merge², hidden_size)`.
    pub fn merge(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.merge_input(x)?;
        Ok(self.mlp2.forward(&self.mlp0.forward(&h)?.gelu_erf()?)?)
    }

    /// The merger's norm and window merge: `(n_patches, d)` → `(n_patches / merge², d · merge²)`, what its MLP reads.
    pub fn merge_input(&self, x: &Tensor) -> Result<Tensor> {
        let (n, d) = x.dims2()?;
        let w = self.cfg.spatial_merge_size * self.cfg.spatial_merge_size;
        if n % w != 0 {
            return Err(Error::Invalid(format!("{n} patches do not fill {w}-patch merge windows")));
        }
        Ok(self.ln_q.forward(x)?.reshape((n / w, d * w))?)
    }

    /// The merger's MLP (`mlp.0`, exact GELU, `mlp.2`), shared.
    pub fn merger_parts(&self) -> super::ProjectorParts {
        super::ProjectorParts::Mlp { l1: self.mlp0.clone(), l2: self.mlp2.clone(), act: Activation::Gelu }
    }

    /// [`Qwen2Vision::encode`] then [`Qwen2Vision::merge`]: `(n_patches, patch_dim)` → `(n_patches / merge², hidden)`.
    pub fn forward(&self, pixel_values: &Tensor, grid_thw: &[[usize; 3]]) -> Result<Tensor> {
        self.merge(&self.encode(pixel_values, grid_thw)?)
    }
}
