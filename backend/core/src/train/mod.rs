//! Training the default model on the synthetic world (Substrate II): the model's shape, deterministic
//! initialisation, batches and the teacher-forced loss. The `unike train-base` driver builds on these.

pub mod batch;
pub mod binding;
pub mod decision;
#[cfg(test)]
mod disturbance;
pub mod driver;
pub mod evaluate;
pub mod init;
pub mod invariance;
pub mod question;
pub mod recipe;
pub mod save;
#[cfg(test)]
pub(crate) mod test_support;
pub mod vision;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::error::{Error, Result};
use crate::hooks::{Capture, Hooks};
use crate::model::{kernels, KeyLayout, Llava, LlavaConfig};
use crate::world::rng::Rng;
use crate::world::tokenizer::{EOS, IMAGE, PAD};
pub use batch::{make_batch, make_grouped, Batch};

/// Shape of a world model (llava-hf `config.json`): CLIP d`vision_dim` x `vision_layers` on 32x32 images with 8x8
/// patches (16 image tokens, last layer's features), LLaMA d`text_dim` x `text_layers` with `text_heads` attention
/// heads (`text_dim` must divide by it).
pub fn world_config_json(
    vocab: usize,
    vision_dim: usize,
    vision_layers: usize,
    text_dim: usize,
    text_layers: usize,
    text_heads: usize,
) -> String {
    serde_json::json!({
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "torch_dtype": "float32",
        "image_token_index": IMAGE, "pad_token_id": PAD, "projector_hidden_act": "gelu", "image_seq_length": 16,
        "vision_feature_layer": -1, "vision_feature_select_strategy": "default", "tie_word_embeddings": false,
        "text_config": {"model_type": "llama", "vocab_size": vocab, "hidden_size": text_dim,
            "intermediate_size": text_dim * 8 / 3, "num_hidden_layers": text_layers, "num_attention_heads": text_heads,
            "num_key_value_heads": text_heads, "max_position_embeddings": MAX_POSITIONS, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "bos_token_id": 1, "eos_token_id": EOS, "pad_token_id": PAD},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": vision_dim,
            "intermediate_size": vision_dim * 4, "num_hidden_layers": vision_layers, "num_attention_heads": 4,
            "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
    })
    .to_string()
}

/// Positions of world models: room for four image demonstrations (IKE-style blocks of two turns each) and the query.
pub const MAX_POSITIONS: usize = 512;

/// `preprocessor_config.json` of world models, as transformers' `CLIPImageProcessor` spells it: shortest edge to 32
/// (bicubic, Pillow's filter 3), center crop 32x32, rescale, normalise. A world image is already 32x32, so resizing
/// and cropping leave it unchanged bit for bit; any other image is brought to the tower's 32x32.
pub const WORLD_PREPROCESSOR: &str = r#"{"do_resize": true, "size": {"shortest_edge": 32}, "resample": 3,
 "do_center_crop": true, "crop_size": {"height": 32, "width": 32}, "do_rescale": true,
 "rescale_factor": 0.00392156862745098, "do_normalize": true, "image_mean": [0.5, 0.5, 0.5],
 "image_std": [0.25, 0.25, 0.25], "do_convert_rgb": true, "image_processor_type": "CLIPImageProcessor"}"#;

/// `processor_config.json` of world models, so that transformers' `AutoProcessor` (a `LlavaProcessor`) expands each
/// `<image>` into the model's 16 image tokens: (32 / 8)² = 16 patches + 1 class token (`num_additional_image_tokens`),
/// less the class token the "default" strategy drops. The chat template is llava-1.5's, which renders a user turn
/// with an image as `USER: <image>\n{question} ASSISTANT:`, the model's prompt template.
pub const WORLD_PROCESSOR: &str = r#"{"processor_class": "LlavaProcessor", "image_token": "<image>", "patch_size": 8,
 "num_additional_image_tokens": 1, "vision_feature_select_strategy": "default",
 "chat_template": "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"}"#;

/// A trainable model: its variables and the model reading them.
pub struct Trainable {
    pub varmap: VarMap,
    pub model: Llava,
    pub config: LlavaConfig,
}

impl Trainable {
    /// Builds the model of `config_json` on fresh variables, initialised from `seed` with our own generator
    /// (normal, std 0.02; norm weights 1, biases 0), so the same seed gives the same start everywhere.
    pub fn new(config_json: &str, seed: u64, device: &Device) -> Result<Self> {
        let config = LlavaConfig::from_json_str(config_json).map_err(Error::Invalid)?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let model = Llava::load(vb, KeyLayout::LLAVA_HF, &config)?;
        let data = varmap.data().lock().map_err(|_| Error::Invalid("variable map poisoned".into()))?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for (i, name) in names.into_iter().enumerate() {
            let var = &data[name];
            let n = var.elem_count();
            let mut rng = Rng::derive(seed, "init", i as u64);
            let values: Vec<f32> = if name.contains("norm") && name.ends_with("weight") {
                vec![1.0; n]
            } else if name.ends_with("bias") {
                vec![0.0; n]
            } else {
                (0..n).map(|_| 0.02 * rng.normal()).collect()
            };
            var.set(&Tensor::from_vec(values, var.shape(), device)?)?;
        }
        drop(data);
        Ok(Self { varmap, model, config })
    }
}

/// Teacher-forced logits of `batch`, `(b, s, vocab)` f32. With `vision_frozen` the vision tower runs outside the
/// graph (its features are detached), so no gradient reaches it and its backward pass is skipped.
pub fn logits(model: &Llava, batch: &Batch, vision_frozen: bool) -> Result<Tensor> {
    Ok(forward_parts(model, batch, vision_frozen, &mut Capture::none())?.0)
}

/// Logits `(b, s, vocab)` and the projected image features `(n, t, d)` of `batch`, capturing into `capture`.
pub(crate) fn forward_parts(
    model: &Llava,
    batch: &Batch,
    vision_frozen: bool,
    capture: &mut Capture,
) -> Result<(Tensor, Option<Tensor>)> {
    let vision = |p: &Tensor| -> Result<Tensor> {
        if vision_frozen {
            Ok(model.vision_features(p)?.detach())
        } else {
            let _scope = kernels::differentiable();
            model.vision_features(p)
        }
    };
    let feats = batch.pixels.as_ref().map(vision).transpose()?;
    let _scope = kernels::differentiable();
    let image = feats.map(|f| model.project(&f)).transpose()?;
    let embeds = model.embed_inputs(&batch.ids, image.as_ref())?;
    let h = model.forward_embeds(&embeds, 0, None, &Hooks::none(), capture)?;
    Ok((model.logits(&h)?, image))
}

/// Weighted mean cross-entropy of the supervised positions of `batch` (`Batch::weights`), computed
/// differentiably. Returns a scalar.
pub fn loss(model: &Llava, batch: &Batch, vision_frozen: bool) -> Result<Tensor> {
    loss_with(model, batch, vision_frozen, Terms::default())
}

/// The auxiliary terms added to the answers' cross-entropy (each off when `None`).
#[derive(Clone, Copy, Default)]
pub struct Terms<'a> {
    /// The image binding term ([`binding`]).
    pub image: Option<&'a binding::Binding>,
    /// The question binding term ([`question`]).
    pub question: Option<&'a question::QuestionBinding>,
    /// The decision term ([`decision`]).
    pub decision: Option<&'a decision::Decision>,
    /// The invariance term ([`invariance`]; read where the batch carries its clean pass).
    pub invariance: Option<&'a invariance::Invariance>,
}

/// [`loss`] plus the auxiliary `terms` (the image term when the batch has images, the question term when it has
/// labelled positions).
pub fn loss_with(model: &Llava, batch: &Batch, vision_frozen: bool, terms: Terms<'_>) -> Result<Tensor> {
    use crate::hooks::CapturePoint::LayerOutput;
    let points = [terms.image.map(|b| b.layer), terms.question.map(|q| q.layer), terms.decision.map(|d| d.layer)];
    let invariance = terms.invariance.filter(|_| batch.clean.is_some()).map(|i| i.layers.as_slice()).unwrap_or(&[]);
    let points = points.into_iter().flatten().chain(invariance.iter().copied());
    let mut cap = Capture::of(points.map(|l| (l, LayerOutput)));
    let (logits, image) = forward_parts(model, batch, vision_frozen, &mut cap)?;
    let mut total = cross_entropy(&logits, batch)?;
    if let (Some(b), Some(img)) = (terms.image, image) {
        if let Some(h) = cap.get(b.layer, LayerOutput) {
            if let Some(term) = binding::loss(b, &batch.ids, h, &img)? {
                total = (total + term)?;
            }
        }
    }
    if let Some(q) = terms.question {
        if let Some(h) = cap.get(q.layer, LayerOutput) {
            if let Some(term) = question::loss(q, h, &batch.relation_positions, &batch.relation_labels)? {
                total = (total + term)?;
            }
        }
    }
    if let Some(d) = terms.decision {
        if let Some(h) = cap.get(d.layer, LayerOutput) {
            if let Some(term) = decision::loss(d, h, &batch.decision_positions, &batch.decision_labels)? {
                total = (total + term)?;
            }
        }
    }
    if let (Some(i), Some(clean)) = (terms.invariance, batch.clean.as_deref()) {
        let hs: Option<Vec<&Tensor>> = i.layers.iter().map(|&l| cap.get(l, LayerOutput)).collect();
        if let Some(hs) = hs {
            total = (total + invariance::loss(i, model, &hs, &logits, clean)?)?;
        }
    }
    Ok(total)
}

fn cross_entropy(logits: &Tensor, batch: &Batch) -> Result<Tensor> {
    let (b, s, v) = logits.dims3()?;
    let picked = logits.reshape((b * s, v))?.index_select(&batch.positions, 0)?;
    Ok(((nll(&picked, &batch.targets)? * &batch.weights)?.sum_all()? / batch.weight_sum.max(1e-9))?)
}

/// Negative log-likelihood `(m)` of the u32 `targets (m)` under the rows of `logits (m, k)`.
pub(crate) fn nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    Ok(logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?)
}

/// Mean cross-entropy over the supervised positions of several batches together (each position weighs the same,
/// as in one batch). Returns a scalar.
pub fn grouped_loss(model: &Llava, batches: &[Batch], vision_frozen: bool, terms: Terms<'_>) -> Result<Tensor> {
    let total: f64 = batches.iter().map(|b| b.weight_sum).sum();
    let mut sum: Option<Tensor> = None;
    for b in batches {
        let part = (loss_with(model, b, vision_frozen, terms)? * (b.weight_sum / total.max(1e-9)))?;
        sum = Some(match sum {
            Some(s) => (s + part)?,
            None => part,
        });
    }
    sum.ok_or_else(|| Error::Invalid("no batch to train on".into()))
}

#[cfg(test)]
mod tests {
    use candle_nn::Optimizer;

    use super::*;
    use crate::model::ImageProcessor;
    use crate::world::samples::training_sample;
    use crate::world::{tokenizer, World};

    #[test]
    fn a_few_adamw_steps_fit_a_batch() -> Result<()> {
        let world = World::generate(0);
        let tok = tokenizer::build(&world)?;
        let cfg = world_config_json(tok.get_vocab_size(true), 32, 1, 48, 1, 4);
        let t = Trainable::new(&cfg, 0, &Device::Cpu)?;
        let again = Trainable::new(&cfg, 0, &Device::Cpu)?;
        let key = "language_model.model.embed_tokens.weight";
        let a = t.varmap.data().lock().map_err(|_| Error::Invalid("poisoned".into()))?[key].as_tensor().clone();
        let b = again.varmap.data().lock().map_err(|_| Error::Invalid("poisoned".into()))?[key].as_tensor().clone();
        assert_eq!(a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?, "init is deterministic");
        let images = ImageProcessor::from_json_str(WORLD_PREPROCESSOR).map_err(Error::Invalid)?;
        let mut rng = Rng::new(1);
        let samples: Vec<_> = (0..6).map(|_| training_sample(&world, [1.0; 6], &mut rng)).collect();
        let batch = make_batch(&samples, &tok, &images, 16, 0.0, &Device::Cpu)?;
        let mut opt = candle_nn::AdamW::new_lr(t.varmap.all_vars(), 3e-3)?;
        let first = loss(&t.model, &batch, false)?.to_scalar::<f32>()?;
        for _ in 0..30 {
            let l = loss(&t.model, &batch, false)?;
            opt.backward_step(&l)?;
        }
        let last = loss(&t.model, &batch, false)?.to_scalar::<f32>()?;
        assert!(first > 5.0 && last < first * 0.5, "loss {first} -> {last}");
        Ok(())
    }

    /// The world preprocessor before issue 14 (no resize, no crop).
    const OLD_PREPROCESSOR: &str = r#"{"do_resize": false, "do_center_crop": false, "do_rescale": true,
     "rescale_factor": 0.00392156862745098, "do_normalize": true, "image_mean": [0.5, 0.5, 0.5],
     "image_std": [0.25, 0.25, 0.25], "image_processor_type": "CLIPImageProcessor"}"#;

    fn values(p: &ImageProcessor, img: &image::RgbImage) -> Result<Vec<f32>> {
        Ok(p.preprocess(img, &Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
    }

    #[test]
    fn world_images_keep_their_pixel_values_and_other_images_fit_the_tower() -> Result<()> {
        let world = World::generate(0);
        let new = ImageProcessor::from_json_str(WORLD_PREPROCESSOR).map_err(Error::Invalid)?.with_tower(32);
        let old = ImageProcessor::from_json_str(OLD_PREPROCESSOR).map_err(Error::Invalid)?;
        assert!(matches!(new.resample, crate::model::preprocess::Resample::Bicubic));
        let mut images: Vec<image::RgbImage> =
            (0..8).map(|i| world.render_entity(i * 7, crate::world::Pool::Eval, i as u64)).collect();
        images.extend((0..4).map(|i| world.scene(crate::world::Pool::Eval, i).1));
        for img in &images {
            assert_eq!(img.dimensions(), (32, 32));
            assert_eq!(values(&new, img)?, values(&old, img)?, "a world image changed");
        }
        // A 96x80 photo: the new config and the old one (no resize, but told the tower's size) give the same 32x32.
        let photo =
            image::RgbImage::from_fn(96, 80, |x, y| image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) % 256) as u8]));
        let a = new.preprocess(&photo, &Device::Cpu)?;
        assert_eq!(a.dims(), &[3, 32, 32]);
        assert_eq!(a.flatten_all()?.to_vec1::<f32>()?, values(&old.clone().with_tower(32), &photo)?);
        // Without knowing the tower, the old config passes the photo through unchanged (the tower would refuse it).
        assert_eq!(old.preprocess(&photo, &Device::Cpu)?.dims(), &[3, 80, 96]);
        Ok(())
    }

    #[test]
    fn the_default_model_ships_the_world_processor_configs() -> Result<()> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default");
        for (file, want) in
            [("preprocessor_config.json", WORLD_PREPROCESSOR), ("processor_config.json", WORLD_PROCESSOR)]
        {
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let parse =
                |t: &str| serde_json::from_str::<serde_json::Value>(t).map_err(|e| Error::Invalid(e.to_string()));
            assert_eq!(parse(&text)?, parse(want)?, "{file}");
        }
        Ok(())
    }

    #[test]
    fn the_processor_config_expands_an_image_into_the_models_image_tokens() -> Result<()> {
        let p: serde_json::Value = serde_json::from_str(WORLD_PROCESSOR).map_err(|e| Error::Invalid(e.to_string()))?;
        let cfg: serde_json::Value = serde_json::from_str(&world_config_json(100, 32, 1, 48, 1, 4))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let side = cfg["vision_config"]["image_size"].as_u64().unwrap_or(0) / p["patch_size"].as_u64().unwrap_or(1);
        // transformers' LlavaProcessor: patches + num_additional_image_tokens, minus 1 with the "default" strategy.
        let mut n = side * side + p["num_additional_image_tokens"].as_u64().unwrap_or(0);
        if p["vision_feature_select_strategy"] == "default" {
            n -= 1;
        }
        assert_eq!(Some(n), cfg["image_seq_length"].as_u64());
        assert_eq!(p["patch_size"], cfg["vision_config"]["patch_size"]);
        assert_eq!(p["vision_feature_select_strategy"], cfg["vision_feature_select_strategy"]);
        Ok(())
    }
}

#[cfg(test)]
mod induction_tests {
    use candle_nn::Optimizer;

    use super::*;

    /// Diagnostic: a small text-only model learns to continue a repeated random sequence (an induction head) from
    /// a language-model loss on the repetition. Gradient must reach the attention's query and key weights.
    #[test]
    #[ignore]
    fn a_small_model_learns_to_copy() -> Result<()> {
        // UNIKE_COPY_INIT=DIR: the default shape, started from DIR's weights (vocabulary rows by token text).
        let init = std::env::var("UNIKE_COPY_INIT").ok();
        let big = init.is_some() || std::env::var("UNIKE_COPY_BIG").is_ok();
        let (cfg, vocab) = if big {
            (world_config_json(514, 128, 3, 192, 4, 4), 500u32)
        } else {
            (world_config_json(64, 32, 1, 64, 2, 4), 59)
        };
        let t = Trainable::new(&cfg, 0, &Device::Cpu)?;
        if let Some(dir) = &init {
            let tok = tokenizers::Tokenizer::from_file(format!("{dir}/tokenizer.json"))
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            println!("{:?}", init::init_from(&t, &tok, std::path::Path::new(dir), &Device::Cpu)?.fresh);
        }
        let vars = t.varmap.all_vars();
        let mut opt = candle_nn::AdamW::new_lr(vars, 2e-3)?;
        let mut rng = Rng::new(3);
        let (b, half) = (32usize, 10usize);
        let make = |rng: &mut Rng| -> Result<Batch> {
            let mut ids = Vec::new();
            let (mut pos, mut tg) = (Vec::new(), Vec::new());
            for i in 0..b {
                let seq: Vec<u32> = (0..half).map(|_| 5 + rng.below(vocab as usize) as u32).collect();
                let row: Vec<u32> = std::iter::once(1).chain(seq.iter().copied()).chain(seq.iter().copied()).collect();
                for k in half + 2..row.len() {
                    pos.push((i * row.len() + k - 1) as u32);
                    tg.push(row[k]);
                }
                ids.extend(row);
            }
            let m = tg.len();
            Ok(Batch {
                ids: Tensor::from_vec(ids, (b, 2 * half + 1), &Device::Cpu)?,
                pixels: None,
                positions: Tensor::new(pos.as_slice(), &Device::Cpu)?,
                targets: Tensor::new(tg.as_slice(), &Device::Cpu)?,
                weights: Tensor::ones(m, DType::F32, &Device::Cpu)?,
                weight_sum: m as f64,
                lengths: vec![m / b; b],
                relation_positions: vec![],
                relation_labels: vec![],
                decision_positions: vec![],
                decision_labels: vec![],
                clean: None,
            })
        };
        let q = "language_model.model.layers.1.self_attn.q_proj.weight";
        for step in 0..300 {
            let batch = make(&mut rng)?;
            let l = loss(&t.model, &batch, false)?;
            let grads = l.backward()?;
            if step == 0 {
                let data = t.varmap.data().lock().map_err(|_| Error::Invalid("poisoned".into()))?;
                let g = grads.get(data[q].as_tensor()).map(|g| g.sqr().and_then(|x| x.sum_all()));
                println!("q_proj grad norm² {:?}", g.transpose()?.map(|x| x.to_scalar::<f32>()));
            }
            opt.step(&grads)?;
            if step % 50 == 0 {
                println!("step {step} loss {}", l.to_scalar::<f32>()?);
            }
        }
        Ok(())
    }
}
