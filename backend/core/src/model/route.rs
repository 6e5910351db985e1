//! Per-input routing ([`crate::hooks::Router`]): each router reads the unedited model's state at an input's last
//! prompt position and picks the hooks that input gets, before the input's forward pass.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use super::Llava;
use crate::error::{Error, Result};
use crate::hooks::{Capture, Hooks};

/// The routes of one input, one per router of the hooks, in order.
pub type Routes = Vec<Option<usize>>;

impl Llava {
    /// The routes of each input of a right-padded batch: `embeds (b, s, d)` (image features merged), `last[i]` the
    /// position of row `i`'s last prompt token. Without routers every input's routes are empty.
    pub fn route(&self, hooks: &Hooks, embeds: &Tensor, last: &[usize]) -> Result<Vec<Routes>> {
        let routers = hooks.routers();
        let b = embeds.dim(0)?;
        if last.len() != b {
            return Err(Error::Invalid(format!("{} prompt ends for a batch of {b}", last.len())));
        }
        let mut out: Vec<Routes> = vec![Vec::with_capacity(routers.len()); b];
        if routers.is_empty() {
            return Ok(out);
        }
        let mut states: BTreeMap<usize, Tensor> = BTreeMap::new();
        for router in routers {
            let layer = router.layer();
            let x = match states.get(&layer) {
                Some(x) => x.clone(),
                None => {
                    let x = self.prompt_states(embeds, last, layer)?;
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

    /// What a router reads: the unedited model's input of decoder layer `layer` after that layer's input RMSNorm, at
    /// each row's last prompt position `last[i]` of a right-padded batch `embeds (b, s, d)`; `(b, d)` f32.
    pub fn prompt_states(&self, embeds: &Tensor, last: &[usize], layer: usize) -> Result<Tensor> {
        let span = last.iter().max().map_or(0, |m| m + 1);
        let embeds = embeds.narrow(1, 0, span)?;
        let h = self.text().forward_layers(&embeds, 0, 0..layer, None, &Hooks::none(), &mut Capture::none())?;
        let rows = last.iter().enumerate().map(|(i, &p)| Ok(h.get(i)?.get(p)?)).collect::<Result<Vec<_>>>()?;
        Ok(self.text().attention_parts(layer)?.norm(&Tensor::stack(&rows, 0)?)?.to_dtype(DType::F32)?)
    }

    /// The hooks of one input, `embeds (1, s, d)` whose prompt ends at position `last`: `hooks` resolved on it.
    pub fn routed(&self, hooks: &Hooks, embeds: &Tensor, last: usize) -> Result<Hooks> {
        if hooks.routers().is_empty() {
            return Ok(hooks.clone());
        }
        let routes = self.route(hooks, &embeds.narrow(1, 0, last + 1)?, &[last])?;
        hooks.resolve(routes.first().map(Vec::as_slice).unwrap_or(&[]))
    }
}
