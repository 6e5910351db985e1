//! Stage 1 of the default model's training: the vision tower alone learns the world's visual vocabulary from fresh
//! renderings, as a classifier. Entity glyphs are classified by identity (200-way) and by its factors (shape, colour,
//! stripes) from the mean of the patch features; scenes by the content of each quadrant from the mean of that
//! quadrant's patches. The heads are thrown away afterwards: only the tower's weights are kept.
//!
//! This is the remedy DESIGN.md reports for the plateau of end-to-end training from scratch (the decoder never learns
//! to use an image it cannot yet tell apart), and LLaVA's own order: a trained vision encoder first, then alignment.

use candle_core::{DType, Device, Tensor, Var, D};

use crate::error::Result;
use crate::model::{ImageProcessor, Llava};
use crate::world::lexicon::{COLOURS, SCENE_COLOURS, SCENE_SHAPES, SHAPES};
use crate::world::rng::Rng;
use crate::world::{Pool, World, N_ENTITIES};

/// Classes of the quadrant head: empty, or one (scene shape, scene colour) pair.
pub const QUADRANT_CLASSES: usize = 1 + SCENE_SHAPES.len() * SCENE_COLOURS.len();
/// Output ranges of the glyph head: entity, shape, colour, stripes.
const ENTITY: (usize, usize) = (0, N_ENTITIES);
const SHAPE: (usize, usize) = (ENTITY.1, ENTITY.1 + SHAPES.len());
const COLOUR: (usize, usize) = (SHAPE.1, SHAPE.1 + COLOURS.len());
const STRIPE: (usize, usize) = (COLOUR.1, COLOUR.1 + 2);

/// Weight of the per-patch identity term of [`vision_loss`].
const PATCH_IDENTITY_WEIGHT: f64 = 0.5;

/// The classifier heads of stage 1 (not part of the saved model).
pub struct VisionHeads {
    glyph_w: Var,
    glyph_b: Var,
    quad_w: Var,
    quad_b: Var,
}

fn normal_var(shape: (usize, usize), std: f32, rng: &mut Rng, device: &Device) -> Result<Var> {
    let values: Vec<f32> = (0..shape.0 * shape.1).map(|_| std * rng.normal()).collect();
    Ok(Var::from_tensor(&Tensor::from_vec(values, shape, device)?)?)
}

impl VisionHeads {
    /// Fresh heads on features of width `d`, initialised from `seed`.
    pub fn new(d: usize, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = Rng::derive(seed, "vision-heads", 0);
        Ok(Self {
            glyph_w: normal_var((d, STRIPE.1), 0.02, &mut rng, device)?,
            glyph_b: Var::zeros(STRIPE.1, DType::F32, device)?,
            quad_w: normal_var((d, QUADRANT_CLASSES), 0.02, &mut rng, device)?,
            quad_b: Var::zeros(QUADRANT_CLASSES, DType::F32, device)?,
        })
    }

    /// The heads' variables (for the optimiser).
    pub fn vars(&self) -> Vec<Var> {
        vec![self.glyph_w.clone(), self.glyph_b.clone(), self.quad_w.clone(), self.quad_b.clone()]
    }
}

/// A stage-1 batch: glyph images with their labels, scene images with the class of each quadrant.
pub struct VisionBatch {
    /// `(g, 3, 32, 32)` glyph pixels.
    pub glyphs: Tensor,
    /// `(g)` entity, shape, colour and stripe labels (u32).
    pub entity: Tensor,
    pub shape: Tensor,
    pub colour: Tensor,
    pub stripe: Tensor,
    /// `(q, 3, 32, 32)` scene pixels.
    pub scenes: Tensor,
    /// `(q · 4)` quadrant classes (u32), quadrants in slot order.
    pub quadrants: Tensor,
}

/// `n_glyphs` fresh renderings of random entities and `n_scenes` fresh scenes from `pool`.
pub fn vision_batch(
    world: &World,
    images: &ImageProcessor,
    pool: Pool,
    n_glyphs: usize,
    n_scenes: usize,
    rng: &mut Rng,
    device: &Device,
) -> Result<VisionBatch> {
    if n_glyphs == 0 || n_scenes == 0 {
        return Err(crate::error::Error::Invalid("a vision batch needs at least one glyph and one scene".into()));
    }
    let mut glyphs = Vec::with_capacity(n_glyphs);
    let (mut ent, mut shp, mut col, mut stp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n_glyphs {
        let e = rng.below(N_ENTITIES);
        let entity = &world.entities[e];
        glyphs.push(images.preprocess(&world.render_entity(e, pool, rng.next_u64()), device)?);
        ent.push(e as u32);
        shp.push(entity.shape as u32);
        col.push(entity.colour as u32);
        stp.push(entity.striped as u32);
    }
    let mut scenes = Vec::with_capacity(n_scenes);
    let mut quads = Vec::with_capacity(n_scenes * 4);
    for _ in 0..n_scenes {
        let (objs, img) = world.scene(pool, rng.next_u64());
        scenes.push(images.preprocess(&img, device)?);
        for slot in 0..4 {
            let class = objs.iter().find(|o| o.slot == slot).map_or(0, |o| {
                let s = SCENE_SHAPES.iter().position(|&x| x == o.shape).unwrap_or(0);
                let c = SCENE_COLOURS.iter().position(|&x| x == o.colour).unwrap_or(0);
                1 + s * SCENE_COLOURS.len() + c
            });
            quads.push(class as u32);
        }
    }
    let u = |v: Vec<u32>| Tensor::new(v.as_slice(), device);
    Ok(VisionBatch {
        glyphs: Tensor::stack(&glyphs, 0)?,
        entity: u(ent)?,
        shape: u(shp)?,
        colour: u(col)?,
        stripe: u(stp)?,
        scenes: Tensor::stack(&scenes, 0)?,
        quadrants: u(quads)?,
    })
}

/// `(4, t)` averaging matrix of each quadrant's patches on a `g × g` patch grid (`t = g²`, `g` even).
fn quadrant_pool(g: usize, device: &Device) -> Result<Tensor> {
    let h = g / 2;
    let mut m = vec![0f32; 4 * g * g];
    for q in 0..4 {
        for r in 0..g {
            for c in 0..g {
                if r / h == q / 2 && c / h == q % 2 {
                    m[q * g * g + r * g + c] = 1.0 / (h * h) as f32;
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (4, g * g), device)?)
}

/// What the heads say about a batch.
pub struct VisionOutput {
    /// Scalar training loss (sum of the five cross-entropies).
    pub loss: Tensor,
    /// Fraction of glyphs whose entity is the head's argmax.
    pub entity_accuracy: f32,
    /// Fraction of quadrants classified right.
    pub quadrant_accuracy: f32,
}

fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f32> {
    let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let want = labels.to_vec1::<u32>()?;
    let right = pred.iter().zip(&want).filter(|(a, b)| a == b).count();
    Ok(right as f32 / want.len().max(1) as f32)
}

/// Runs the vision tower and the heads on `batch` (differentiably).
pub fn vision_loss(model: &Llava, heads: &VisionHeads, batch: &VisionBatch) -> Result<VisionOutput> {
    let _scope = crate::model::kernels::differentiable();
    let ce = candle_nn::loss::cross_entropy;
    // Glyphs: mean of the patch features (g, t, d) → (g, d).
    let feats = model.vision_features(&batch.glyphs)?;
    let pooled = feats.mean(1)?;
    let logits = pooled.matmul(heads.glyph_w.as_tensor())?.broadcast_add(heads.glyph_b.as_tensor())?;
    let part = |r: (usize, usize)| logits.narrow(1, r.0, r.1 - r.0);
    let entity_logits = part(ENTITY)?;
    let glyph_loss = (ce(&entity_logits, &batch.entity)?
        + ce(&part(SHAPE)?, &batch.shape)?
        + ce(&part(COLOUR)?, &batch.colour)?
        + ce(&part(STRIPE)?, &batch.stripe)?)?;
    // Every patch feature on its own names the entity too (half weight), so that each image token the decoder sees
    // carries who is pictured: comparing two images in a context is then comparing any of their tokens.
    let (g, t, d) = feats.dims3()?;
    let w_entity = heads.glyph_w.as_tensor().narrow(1, ENTITY.0, ENTITY.1 - ENTITY.0)?;
    let b_entity = heads.glyph_b.as_tensor().narrow(0, ENTITY.0, ENTITY.1 - ENTITY.0)?;
    let per_patch = feats.reshape((g * t, d))?.matmul(&w_entity)?.broadcast_add(&b_entity)?;
    let labels = batch.entity.unsqueeze(1)?.expand((g, t))?.contiguous()?.reshape(g * t)?;
    let glyph_loss = (glyph_loss + (ce(&per_patch, &labels)? * PATCH_IDENTITY_WEIGHT)?)?;
    // Scenes: each quadrant's patches averaged, (q, t, d) → (q, 4, d) → (q·4, classes).
    let feats = model.vision_features(&batch.scenes)?;
    let (q, t, d) = feats.dims3()?;
    let g = (t as f64).sqrt() as usize;
    let pool = quadrant_pool(g, feats.device())?;
    let quads = pool.unsqueeze(0)?.expand((q, 4, t))?.contiguous()?.matmul(&feats)?.reshape((q * 4, d))?;
    let quad_logits = quads.matmul(heads.quad_w.as_tensor())?.broadcast_add(heads.quad_b.as_tensor())?;
    let loss = (glyph_loss + ce(&quad_logits, &batch.quadrants)?)?;
    Ok(VisionOutput {
        loss,
        entity_accuracy: accuracy(&entity_logits, &batch.entity)?,
        quadrant_accuracy: accuracy(&quad_logits, &batch.quadrants)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quadrant_pool_averages_each_quadrant() -> Result<()> {
        let p = quadrant_pool(4, &Device::Cpu)?.to_vec2::<f32>()?;
        // Top-left quadrant = patches 0, 1, 4, 5; bottom-right = 10, 11, 14, 15.
        assert_eq!(p[0].iter().enumerate().filter(|(_, &x)| x > 0.0).map(|(i, _)| i).collect::<Vec<_>>(), [0, 1, 4, 5]);
        assert_eq!(
            p[3].iter().enumerate().filter(|(_, &x)| x > 0.0).map(|(i, _)| i).collect::<Vec<_>>(),
            [10, 11, 14, 15]
        );
        assert!(p.iter().all(|row| (row.iter().sum::<f32>() - 1.0).abs() < 1e-6));
        Ok(())
    }
}
#[cfg(test)]
mod step_tests {
    use super::*;
    use crate::train::{world_config_json, Trainable, WORLD_PREPROCESSOR};
    use candle_nn::Optimizer;

    #[test]
    fn vision_loss_falls_on_a_fixed_batch() -> Result<()> {
        let world = World::generate(0);
        let cfg = world_config_json(500, 32, 1, 32, 1, 4);
        let t = Trainable::new(&cfg, 0, &Device::Cpu)?;
        let images = ImageProcessor::from_json_str(WORLD_PREPROCESSOR).map_err(crate::Error::Invalid)?;
        let heads = VisionHeads::new(32, 0, &Device::Cpu)?;
        let mut rng = Rng::new(3);
        let batch = vision_batch(&world, &images, Pool::Train, 16, 8, &mut rng, &Device::Cpu)?;
        let mut vars = t.varmap.all_vars();
        vars.extend(heads.vars());
        let mut opt = candle_nn::AdamW::new_lr(vars, 3e-3)?;
        let first = vision_loss(&t.model, &heads, &batch)?.loss.to_scalar::<f32>()?;
        for _ in 0..40 {
            let l = vision_loss(&t.model, &heads, &batch)?.loss;
            opt.backward_step(&l)?;
        }
        let last = vision_loss(&t.model, &heads, &batch)?.loss.to_scalar::<f32>()?;
        assert!(last < first * 0.5, "loss {first} -> {last}");
        Ok(())
    }
}
