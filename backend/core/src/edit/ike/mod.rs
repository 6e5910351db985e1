//! IKE (Zheng et al., EMNLP 2023, "Can We Edit Factual Knowledge by In-Context Learning?"), the in-context baseline of
//! the UniKE paper (Appendix D.2), as EasyEdit applies it to multimodal models (`apply_ike_to_multimodal_model`):
//! the `k` demonstrations of the training split most similar to the edit ([`pool`]: copy, update and retain kinds,
//! each opening with a new fact), most similar first, then the edit itself as a copy demonstration, in front of every
//! prompt. A patch holds the demonstrations' keys and values at every layer ([`prefix`]: exactly what prepending
//! them to the prompt gives the attention); several edits sit side by side, each encoded on its own. The base
//! weights are untouched.
//!
//! Departures (README, "Each method against its paper"): the demonstrations show their images (the default model
//! learnt in-context use with each demonstration's image; `with_image = false` gives EasyEdit's text-only
//! demonstrations), `k` is small (the model's 512 positions hold about five image demonstrations; EasyEdit's 32 are
//! text-only on 2048-position models), and retrieval embeds with the model itself (no sentence encoder offline).

pub mod pool;
pub mod prefix;

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use pool::{DemoImage, DemoKind, Demonstration, Pool};
pub use prefix::demonstration;

use super::{EditContext, EditMethod, EditRequest, Patch, Provenance};
use crate::data::EditCase;
use crate::error::{Error, Result};
use crate::model::{ModelProcessor, VisionLanguageModel};

/// Hyper-parameters (`hparams/ike/<model>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IkeParams {
    /// Show each demonstration's image (else the demonstrations are text only, as EasyEdit's).
    pub with_image: bool,
    /// Demonstrations retrieved from the training split (EasyEdit: 32), before the edit's own.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Training-split cases whose demonstrations form the pool (three each; the first of the front).
    #[serde(default = "default_pool")]
    pub pool: usize,
}

fn default_k() -> usize {
    2
}

fn default_pool() -> usize {
    1000
}

impl Default for IkeParams {
    fn default() -> Self {
        Self { with_image: true, k: default_k(), pool: default_pool() }
    }
}

/// The method.
pub struct Ike {
    pub params: IkeParams,
    /// Training-split cases of the pool (at most `params.pool`).
    cases: Vec<EditCase>,
    /// The pool, embedded at the first edit that needs it.
    pool: Mutex<Option<Arc<Pool>>>,
    hidden: usize,
}

impl Ike {
    /// IKE with demonstrations from `cases` (the front of a training split; the first `params.pool` are kept).
    pub fn new(params: IkeParams, mut cases: Vec<EditCase>, model: &dyn VisionLanguageModel) -> Self {
        cases.truncate(params.pool);
        let hidden = model.hidden_size();
        Self { params, cases, pool: Mutex::new(None), hidden }
    }

    /// The pool, embedded once.
    pub fn pool(&self, model: &dyn VisionLanguageModel, processor: &dyn ModelProcessor) -> Result<Arc<Pool>> {
        let mut slot = self.pool.lock().map_err(|_| Error::Invalid("IKE's pool lock is poisoned".into()))?;
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        if self.cases.is_empty() {
            return Err(Error::Invalid(format!(
                "IKE retrieves {} demonstrations from a training split, but none was given (set k = 0 in \
                 hparams/ike, or give a training split)",
                self.params.k
            )));
        }
        let p = Arc::new(Pool::build(model, processor, &self.cases)?);
        *slot = Some(p.clone());
        Ok(p)
    }

    /// The demonstrations of `request`: the `k` retrieved (most similar first, with their similarity), then its
    /// copy demonstration. The least similar are left out while the prefix does not fit the model's
    /// [context budget](crate::model::llama::Llama::context_budget); on a stack, older edits' prefixes fall out of
    /// that window first (as older turns would from a prompt), so one edit's prefix never depends on the stack.
    pub fn demonstrations(
        &self,
        model: &dyn VisionLanguageModel,
        processor: &dyn ModelProcessor,
        request: &EditRequest,
    ) -> Result<(Vec<Demonstration>, Vec<f32>)> {
        let own = Demonstration::copy(
            &request.question,
            &request.target,
            request.image.clone().map(|p| DemoImage::Pixels(std::sync::Arc::new(p))),
        );
        let (mut demos, mut scores) = (Vec::new(), Vec::new());
        if self.params.k > 0 {
            let pool = self.pool(model, processor)?;
            let query = pool::embed_texts(model, processor, &[own.text(processor)])?.squeeze(0)?;
            for (i, score) in pool.top_k(&query, self.params.k)? {
                demos.push(pool.demos[i].clone());
                scores.push(score);
            }
        }
        demos.push(own);
        let window = model.context_budget();
        loop {
            let len = prefix::prefix_ids(processor, &demos, self.params.with_image, model.device())?.0.len();
            if len <= window {
                return Ok((demos, scores));
            }
            if demos.len() == 1 {
                return Err(Error::Invalid(format!(
                    "IKE: the edit's demonstration needs {len} positions, more than the {window} the model keeps for \
                     in-context prefixes (half its position window)"
                )));
            }
            demos.remove(demos.len() - 2);
            scores.pop();
        }
    }
}

impl EditMethod for Ike {
    fn name(&self) -> &str {
        "ike"
    }

    fn edit(&self, ctx: &EditContext<'_>, request: &EditRequest) -> Result<Patch> {
        let hooks = ctx.stack_hooks()?;
        let (demos, scores) = self.demonstrations(ctx.model, ctx.processor, request)?;
        let mut provenance = Provenance::new(self.name(), &self.params, request)?;
        provenance.demonstrations = demos
            .iter()
            .enumerate()
            .map(|(i, d)| match scores.get(i) {
                Some(s) => format!("{} (similarity {s:.3})", d.describe()),
                None => format!("{} (the edit)", d.describe()),
            })
            .collect();
        let mut patch = Patch::new(provenance, Default::default());
        patch.contexts.push(Arc::new(prefix::encode(
            ctx.model,
            ctx.processor,
            &demos,
            self.params.with_image,
            &hooks,
        )?));
        Ok(patch)
    }

    fn resident_bytes(&self) -> usize {
        // The pool's embeddings once built: three demonstrations per case, `hidden` f32 each.
        if self.params.k == 0 {
            0
        } else {
            3 * self.cases.len() * self.hidden * 4
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use candle_core::{Device, Tensor};

    use crate::edit::EditSequence;
    use crate::hooks::{Capture, Hooks};

    #[test]
    fn a_demonstration_prefix_is_exactly_prepending_it() -> Result<()> {
        let cfg = crate::train::world_config_json(40, 16, 1, 32, 3, 4);
        let model = crate::train::Trainable::new(&cfg, 3, &Device::Cpu)?.model;
        let demo = EditSequence { ids: vec![1, 5, 6, 7, 8, 2], prompt_len: 4, pixels: None };
        let input = [1u32, 9, 10, 11, 12];
        let embed = |ids: &[u32]| -> Result<Tensor> {
            Ok(model.embed(&Tensor::new(ids, model.device())?.unsqueeze(0)?, None)?.embeds)
        };
        let mut cap = Capture::none();
        let joined: Vec<u32> = demo.ids.iter().chain(&input).copied().collect();
        let whole = model.forward_embeds(&embed(&joined)?, 0, None, &Hooks::none(), &mut cap)?;
        let whole = whole.narrow(1, demo.ids.len(), input.len())?;
        let mut hooks = Hooks::none();
        hooks.add_context(std::sync::Arc::new(demonstration(&model, &demo, &Hooks::none())?));
        let prefixed = model.forward_embeds(&embed(&input)?, 0, None, &hooks, &mut cap)?;
        let diff = (whole - &prefixed)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "prefix and prepending differ by {diff}");
        // Without the prefix the output is different (the test can fail).
        let plain = model.forward_embeds(&embed(&input)?, 0, None, &Hooks::none(), &mut cap)?;
        assert!((plain - prefixed)?.abs()?.max_all()?.to_scalar::<f32>()? > 1e-3);
        Ok(())
    }
}
