//! Helpers shared by the tests and ignored probes of the training terms (`binding`, `question`, `decision`).

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint::LayerOutput};
use crate::model::ImageProcessor;
use crate::train::batch::Batch;
use crate::train::driver::train_base;
use crate::train::recipe::Recipe;
use crate::train::{forward_parts, Trainable, WORLD_PREPROCESSOR};
use crate::world::{tokenizer, World};

/// The first decoder layer's FFN output weights after a smoke run of `Recipe::smoke(3)` (question-answer stages
/// only), changed by `set`: a term the trainer uses must change them.
pub(crate) fn smoke_weights(set: impl Fn(&mut Recipe)) -> Result<Tensor> {
    let mut r = Recipe::smoke(3);
    set(&mut r);
    (r.vision.steps, r.tune.steps, r.context.steps) = (0, 0, 0);
    let trained = train_base(&r, &Device::Cpu, &mut |_| {})?;
    let vars = trained.trainable.varmap.data().lock().map_err(|_| Error::Invalid("lock".into()))?;
    let name = "language_model.model.layers.0.mlp.down_proj.weight";
    Ok(vars.get(name).ok_or_else(|| Error::Invalid(name.into()))?.as_tensor().clone())
}

/// A trained checkpoint of the world of seed 0 for a probe: the shipped model, or `UNIKE_PROBE_MODEL=DIR`.
pub(crate) struct Probed {
    pub world: World,
    pub tok: tokenizers::Tokenizer,
    pub images: ImageProcessor,
    pub t: Trainable,
}

impl Probed {
    pub fn load() -> Result<Self> {
        let default = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/default").to_string();
        let dir = std::env::var("UNIKE_PROBE_MODEL").unwrap_or(default);
        let cfg = std::fs::read_to_string(format!("{dir}/config.json")).map_err(|e| Error::Invalid(e.to_string()))?;
        let world = World::generate(0);
        let tok = tokenizer::build(&world)?;
        let images = ImageProcessor::from_json_str(WORLD_PREPROCESSOR).map_err(Error::Invalid)?;
        let t = Trainable::new(&cfg, 0, &Device::Cpu)?;
        crate::train::init::init_from(&t, &tok, std::path::Path::new(&dir), &Device::Cpu)?;
        Ok(Self { world, tok, images, t })
    }

    /// Every decoder layer's output `(b, s, d)` on `batch`, detached.
    pub fn hidden(&self, batch: &Batch) -> Result<Vec<Tensor>> {
        let layers = self.t.config.text.num_hidden_layers;
        let mut cap = Capture::at_layers(0..layers, LayerOutput);
        forward_parts(&self.t.model, batch, true, &mut cap)?;
        (0..layers)
            .map(|l| cap.get(l, LayerOutput).map(|h| h.detach()).ok_or_else(|| Error::Invalid(format!("layer {l}"))))
            .collect()
    }
}
