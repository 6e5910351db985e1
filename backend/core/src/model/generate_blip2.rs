//! Greedy decoding of BLIP-2 (OPT) with a KV cache, as [`super::generate`] does for LLaVA: the prompt (its
//! `<image>` tokens replaced by the projected query outputs) is run once, then one token per step at the next
//! learned position. transformers' `Blip2ForConditionalGeneration.generate` stops on the *language model's* EOS
//! (`text_config.eos_token_id`), which [`super::blip2_checkpoint::Blip2Checkpoint::eos_token_ids`] returns.

use candle_core::{Tensor, D};

use super::blip2::Blip2;
use super::cache::KvCache;
use super::generate::{GenerateOptions, Generation};
use crate::error::{Error, Result};
use crate::hooks::{Capture, Hooks};

impl Blip2 {
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
