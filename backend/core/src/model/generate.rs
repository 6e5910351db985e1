//! Greedy decoding with a KV cache: the prompt is run once (prefill), then one token per step.

use candle_core::{Tensor, D};

use super::cache::KvCache;
use super::llava::Llava;
use crate::error::{Error, Result};
use crate::hooks::{Capture, Hooks};

/// Stopping rules of greedy decoding.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// At most this many new tokens (an EOS counts).
    pub max_new_tokens: usize,
    /// Stop after emitting any of these.
    pub eos_token_ids: Vec<u32>,
}

/// Result of greedy decoding.
#[derive(Debug, Clone)]
pub struct Generation {
    /// New tokens, including the EOS that stopped decoding (as transformers' `generate` returns them).
    pub tokens: Vec<u32>,
    /// Vocabulary logits at the last prompt position, f32.
    pub first_logits: Vec<f32>,
    /// True when decoding stopped on an EOS token.
    pub stopped_on_eos: bool,
}

impl Llava {
    /// Greedy decoding of one sequence: `ids` is the expanded prompt, `pixel_values (n, 3, H, W)` its images.
    pub fn generate(
        &self,
        ids: &[u32],
        pixel_values: Option<&Tensor>,
        hooks: &Hooks,
        opts: &GenerateOptions,
    ) -> Result<Generation> {
        if ids.is_empty() {
            return Err(Error::Invalid("cannot generate from an empty prompt".into()));
        }
        let input = Tensor::new(ids, self.device())?.unsqueeze(0)?;
        let feats = pixel_values.map(|p| self.image_features(p)).transpose()?;
        let embeds = self.embed_inputs(&input, feats.as_ref())?;
        // A router (SERAC) decides once, on the prompt, what this whole generation runs with.
        let hooks = &self.routed(hooks, &embeds, ids.len() - 1)?;
        let mut cache = KvCache::new(self.text().num_layers());
        let mut none = Capture::none();
        let h = self.forward_embeds(&embeds, 0, Some(&mut cache), hooks, &mut none)?;
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
            let h = self.forward_embeds(&x, cache.len(), Some(&mut cache), hooks, &mut none)?;
            logits = self.logits(&h)?.flatten_all()?;
        }
        Ok(Generation { tokens, first_logits, stopped_on_eos })
    }
}
