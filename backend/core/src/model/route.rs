//! Per-input routing ([`crate::hooks::Router`]): each router reads the unedited model's state at an input's last
//! prompt position, or its FFN inputs over the prompt at one layer, and picks the hooks that input gets, before the
//! input's forward pass.

use std::collections::BTreeMap;

use candle_core::Tensor;

use super::vlm::{Inputs, VisionLanguageModel};
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, Hooks, RouterReads};

/// The routes of one input, one per router of the hooks, in order.
pub type Routes = Vec<Option<usize>>;

/// [`VisionLanguageModel::route`]: the routes of each input of a right-padded batch `inputs` (image features
/// merged), `last[i]` the position of row `i`'s last prompt token. Without routers every input's routes are empty.
pub fn route<M: VisionLanguageModel + ?Sized>(
    model: &M,
    hooks: &Hooks,
    inputs: &Inputs,
    last: &[usize],
) -> Result<Vec<Routes>> {
    let routers = hooks.routers();
    let b = inputs.embeds.dim(0)?;
    if last.len() != b {
        return Err(Error::Invalid(format!("{} prompt ends for a batch of {b}", last.len())));
    }
    let mut out: Vec<Routes> = vec![Vec::with_capacity(routers.len()); b];
    if routers.is_empty() {
        return Ok(out);
    }
    let mut states: BTreeMap<usize, Tensor> = BTreeMap::new();
    let mut ffn_inputs: BTreeMap<usize, Tensor> = BTreeMap::new();
    for router in routers {
        let layer = router.layer();
        if router.reads() == RouterReads::PromptFfnInputs {
            let q = match ffn_inputs.get(&layer) {
                Some(q) => q.clone(),
                None => {
                    let span = last.iter().max().map_or(0, |m| m + 1);
                    let x = inputs.narrow(span)?;
                    let mut cap = Capture::of([(layer, CapturePoint::FfnInput)]);
                    let none = Hooks::none();
                    model.forward_layers(&x.embeds, &x.positions, 0..layer + 1, None, &none, &mut cap)?;
                    let q = cap
                        .get(layer, CapturePoint::FfnInput)
                        .cloned()
                        .ok_or_else(|| Error::Invalid(format!("layer {layer}'s FFN input was not captured")))?;
                    ffn_inputs.insert(layer, q.clone());
                    q
                }
            };
            for (o, r) in out.iter_mut().zip(router.decide_prompt(&q, last)?) {
                o.push(r);
            }
            continue;
        }
        let x = match states.get(&layer) {
            Some(x) => x.clone(),
            None => {
                let x = model.prompt_states(inputs, last, layer)?;
                states.insert(layer, x.clone());
                x
            }
        };
        for (o, r) in out.iter_mut().zip(router.decide(&x)?) {
            o.push(r);
        }
    }
    Ok(out)
}
