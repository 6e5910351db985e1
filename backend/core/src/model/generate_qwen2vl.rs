//! Greedy decoding of Qwen2-VL (Wang et al., "Qwen2-VL: Enhancing Vision-Language Model's Perception of the World
//! at Any Resolution", 2024) with a KV cache, as [`super::generate`] does for LLaVA: the prompt (its
//! `<|image_pad|>` tokens replaced by the merged image embeddings) runs once at its M-RoPE positions, then one token
//! per step at position `cache length + rope_delta` in all three rows, as transformers decodes.

use candle_core::{Tensor, D};

use super::cache::KvCache;
use super::generate::{GenerateOptions, Generation};
use super::qwen2vl::Qwen2Vl;
use crate::error::{Error, Result};
use crate::hooks::{Capture, Hooks};

impl Qwen2Vl {
    /// Greedy decoding of one sequence: `ids` is the expanded prompt, `images` its pixel values
    /// `(n_patches, patch_dim)` with one `[t, h, w]` grid per image.
    pub fn generate(
        &self,
        ids: &[u32],
        images: Option<(&Tensor, &[[usize; 3]])>,
        hooks: &Hooks,
        opts: &GenerateOptions,
    ) -> Result<Generation> {
        if ids.is_empty() {
            return Err(Error::Invalid("cannot generate from an empty prompt".into()));
        }
        let input = Tensor::new(ids, self.device())?.unsqueeze(0)?;
        let feats = images.map(|(p, g)| self.image_features(p, g)).transpose()?;
        let embeds = self.embed_inputs(&input, feats.as_ref())?;
        let index = self.rope_index(&[ids.to_vec()], None, images.map(|(_, g)| g).unwrap_or(&[]))?;
        let mut cache = KvCache::new(self.text().num_layers());
        let mut none = Capture::none();
        let h = self.forward_embeds(&embeds, &index.positions, None, Some(&mut cache), hooks, &mut none)?;
        let mut logits = self.logits(&h.narrow(1, ids.len() - 1, 1)?)?.flatten_all()?;
        let first_logits = logits.to_vec1::<f32>()?;
        let mut tokens = Vec::new();
        let mut stopped_on_eos = false;
        while tokens.len() < opts.max_new_tokens {
            let next = logits.argmax(D::Minus1)?.to_scalar::<u32>()?;
            tokens.push(next);
            if opts.eos_token_ids.contains(&next) {
                stopped_on_eos = true;
                break;
            }
            if tokens.len() == opts.max_new_tokens {
                break;
            }
            let x = self.text().embed(&Tensor::new(&[[next]], self.device())?)?;
            let pos = self.decode_positions(cache.len(), 1, &index.deltas)?;
            let h = self.forward_embeds(&x, &pos, None, Some(&mut cache), hooks, &mut none)?;
            logits = self.logits(&h)?.flatten_all()?;
        }
        Ok(Generation { tokens, first_logits, stopped_on_eos })
    }
}
