//! The training loop of `unike train-base`: three stages (vision classifier, alignment with the tower frozen, full
//! tuning), AdamW with warm-up and cosine decay, global-norm clipping, and a curve of loss and accuracy per split.
//! Deterministic: the world, the initialisation and the data stream all derive from the recipe's seed.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::batch::induction_batch;
use super::evaluate::teacher_forced;
use super::recipe::{learning_rate, Recipe, StageRecipe};
use super::vision::{vision_batch, vision_loss, VisionHeads};
use super::{grouped_loss, make_grouped, world_config_json, Trainable, WORLD_PREPROCESSOR};
use crate::error::{Error, Result};
use crate::model::ImageProcessor;
use crate::world::context::{pick_split, PickCue};
use crate::world::rng::Rng;
use crate::world::samples::{eval_split, training_sample_eased, Sample, Split};
use crate::world::{tokenizer, Pool, World};

/// Length of the random string the induction stage repeats.
const INDUCTION_HALF: usize = 12;

/// Length groups per data-parallel shard (in-context samples are several times longer than plain questions).
const GROUPS: usize = 3;

/// The three stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Vision,
    Align,
    Induction,
    Context,
    Tune,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Vision => "vision",
            Stage::Align => "align",
            Stage::Induction => "induction",
            Stage::Context => "context",
            Stage::Tune => "tune",
        }
    }
}

/// One point of the training curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Global step (over all stages).
    pub step: usize,
    pub stage: Stage,
    /// Mean training loss since the previous point.
    pub loss: f32,
    /// Seconds since training began.
    pub seconds: f64,
    /// Accuracies: stage 1 `entity_train`, `entity_unseen`, `quadrant_unseen`; later the teacher-forced exact match
    /// of each eval split (`facts_seen`, `renderings_unseen`, ...).
    pub metrics: BTreeMap<String, f32>,
}

/// What the progress callback sees after every step.
pub struct Progress<'a> {
    pub stage: Stage,
    pub step: usize,
    pub total: usize,
    pub loss: f32,
    /// Set when this step closed a curve point.
    pub point: Option<&'a CurvePoint>,
}

/// A trained model with everything needed to save it.
pub struct Trained {
    pub trainable: Trainable,
    pub tokenizer: Tokenizer,
    pub config_json: String,
    pub recipe: Recipe,
    pub curve: Vec<CurvePoint>,
}

fn clip_gradients(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<()> {
    let mut sum = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sum += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sum.sqrt();
    if norm > max_norm {
        let scale = max_norm / norm;
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(())
}

/// Data-parallel step on scoped threads: `work(i)` builds the loss of shard `i` of `workers`; returns the mean of
/// their losses and the mean of their gradients (in a fixed order, so the result does not depend on scheduling).
/// With candle's own threads set to one (`unike train-base` does), this uses the cores far better than
/// parallelising every small op.
fn parallel_grads<F>(workers: usize, vars: &[Var], work: F) -> Result<(f32, GradStore)>
where
    F: Fn(usize) -> Result<Tensor> + Sync,
{
    let results: Vec<Result<(f32, GradStore)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|i| {
                let work = &work;
                scope.spawn(move || -> Result<(f32, GradStore)> {
                    let loss = work(i)?;
                    Ok((loss.to_scalar::<f32>()?, loss.backward()?))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::Invalid("a training worker panicked".into()))))
            .collect()
    });
    let mut results = results.into_iter().collect::<Result<Vec<_>>>()?.into_iter();
    let Some((mut loss, mut grads)) = results.next() else {
        return Err(Error::Invalid("no training worker ran".into()));
    };
    let mut n = 1f64;
    for (l, other) in results {
        loss += l;
        n += 1.0;
        for v in vars {
            match (grads.remove(v.as_tensor()), other.get(v.as_tensor())) {
                (Some(a), Some(b)) => grads.insert(v.as_tensor(), (a + b)?),
                (Some(a), None) => grads.insert(v.as_tensor(), a),
                (None, Some(b)) => grads.insert(v.as_tensor(), b.clone()),
                (None, None) => None,
            };
        }
    }
    if n > 1.0 {
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g / n)?);
            }
        }
    }
    Ok((loss / n as f32, grads))
}

fn optimiser(vars: Vec<Var>, lr: f64) -> Result<AdamW> {
    Ok(AdamW::new(vars, ParamsAdamW { lr, weight_decay: 0.01, ..Default::default() })?)
}

/// Variables of the model whose names start with any of `prefixes`, in name order.
fn vars_of(t: &Trainable, prefixes: &[&str]) -> Result<Vec<Var>> {
    let data = t.varmap.data().lock().map_err(|_| Error::Invalid("variable map poisoned".into()))?;
    let mut named: Vec<(&String, &Var)> =
        data.iter().filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p))).collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    Ok(named.into_iter().map(|(_, v)| v.clone()).collect())
}

/// Fixed curve-evaluation sets: `eval_n` samples of each split (text facts: the first `eval_n`).
fn curve_sets(world: &World, n: usize) -> Vec<(&'static str, Vec<Sample>)> {
    // Every split but the unknown facts (whose report is not an accuracy), in `Split::ALL`'s order.
    Split::ALL
        .into_iter()
        .filter(|s| *s != Split::Unknown)
        .map(|s| (s.name(), eval_split(world, s, n).into_iter().take(n).collect()))
        .chain(std::iter::once((
            // Two demonstrations told apart only by the entity on their images (the hard part of ignoring).
            PickCue::Rendering.name(),
            pick_split(world, n, PickCue::Rendering).into_iter().map(|(s, _)| s).collect(),
        )))
        .collect()
}

/// Trains a world model as `recipe` says, calling `progress` after every step.
pub fn train_base(recipe: &Recipe, device: &Device, progress: &mut dyn FnMut(&Progress)) -> Result<Trained> {
    let start = std::time::Instant::now();
    let world = World::generate(recipe.seed);
    let tok = tokenizer::build(&world)?;
    let config_json = world_config_json(
        tok.get_vocab_size(true),
        recipe.vision_dim,
        recipe.vision_layers,
        recipe.text_dim,
        recipe.text_layers,
        recipe.text_heads,
    );
    let t = Trainable::new(&config_json, recipe.seed, device)?;
    if let Some(dir) = &recipe.init {
        super::init::init_from(&t, &tok, std::path::Path::new(dir), device)?;
    }
    let images = ImageProcessor::from_json_str(WORLD_PREPROCESSOR).map_err(Error::Invalid)?;
    let seq = t.config.image_seq_length;
    let total = recipe.total_steps();
    let mut curve = Vec::new();
    let mut global = 0usize;

    // Stage 1: the vision tower as a classifier of fresh renderings.
    let heads = VisionHeads::new(recipe.vision_dim, recipe.seed, device)?;
    let mut vars = vars_of(&t, &["vision_tower."])?;
    vars.extend(heads.vars());
    let mut opt = optimiser(vars.clone(), recipe.vision.lr)?;
    let mut rng = Rng::derive(recipe.seed, "train-vision", 0);
    let mut eval_rng = Rng::derive(recipe.seed, "curve-vision", 0);
    let seen = vision_batch(&world, &images, Pool::Train, recipe.eval_n, recipe.eval_n, &mut eval_rng, device)?;
    let unseen = vision_batch(&world, &images, Pool::Eval, recipe.eval_n, recipe.eval_n, &mut eval_rng, device)?;
    let mut acc = (0f32, 0usize);
    for step in 0..recipe.vision.steps {
        opt.set_learning_rate(learning_rate(&recipe.vision, step));
        let w = recipe.workers.max(1);
        let (g, q) = (recipe.vision.batch.div_ceil(w), recipe.vision.batch.div_ceil(2 * w));
        let shards = (0..w)
            .map(|_| vision_batch(&world, &images, Pool::Train, g, q, &mut rng, device))
            .collect::<Result<Vec<_>>>()?;
        let (l, mut grads) = parallel_grads(w, &vars, |i| Ok(vision_loss(&t.model, &heads, &shards[i])?.loss))?;
        clip_gradients(&mut grads, &vars, recipe.clip)?;
        opt.step(&grads)?;
        acc = (acc.0 + l, acc.1 + 1);
        global += 1;
        let point = if (step + 1) % recipe.eval_every == 0 || step + 1 == recipe.vision.steps {
            let a = vision_loss(&t.model, &heads, &seen)?;
            let b = vision_loss(&t.model, &heads, &unseen)?;
            let metrics = BTreeMap::from([
                ("entity_train".to_string(), a.entity_accuracy),
                ("entity_unseen".to_string(), b.entity_accuracy),
                ("quadrant_unseen".to_string(), b.quadrant_accuracy),
            ]);
            let loss = acc.0 / acc.1.max(1) as f32;
            acc = (0.0, 0);
            curve.push(CurvePoint {
                step: global,
                stage: Stage::Vision,
                loss,
                seconds: start.elapsed().as_secs_f64(),
                metrics,
            });
            curve.last()
        } else {
            None
        };
        progress(&Progress { stage: Stage::Vision, step: global, total, loss: l, point });
    }
    drop(heads);

    // Stages 2 and 3: question answering, first with the tower frozen, then everything.
    let sets = curve_sets(&world, recipe.eval_n);
    let stages: [(Stage, &StageRecipe, [f32; 6], &[&str]); 4] = [
        (Stage::Induction, &recipe.induction, recipe.mix, &["language_model."]),
        (Stage::Align, &recipe.align, recipe.mix, &["multi_modal_projector.", "language_model."]),
        (Stage::Context, &recipe.context, recipe.context_mix, &["multi_modal_projector.", "language_model."]),
        (Stage::Tune, &recipe.tune, recipe.mix, &["vision_tower.", "multi_modal_projector.", "language_model."]),
    ];
    let binding = (recipe.binding_weight > 0.0)
        .then(|| {
            super::binding::Binding::new(
                recipe.binding_layer,
                recipe.binding_weight,
                recipe.text_dim,
                recipe.seed,
                device,
            )
        })
        .transpose()?;
    let question = (recipe.question_binding_weight > 0.0)
        .then(|| {
            super::question::QuestionBinding::new(
                recipe.question_binding_layer,
                recipe.question_binding_weight,
                recipe.text_dim,
                recipe.seed,
                device,
            )
        })
        .transpose()?;
    let decision = (recipe.decision_weight > 0.0)
        .then(|| {
            super::decision::Decision::new(
                recipe.decision_layer,
                recipe.decision_weight,
                recipe.text_dim,
                recipe.seed,
                device,
            )
        })
        .transpose()?;
    let invariance = (recipe.invariance_weight > 0.0).then(|| {
        super::invariance::Invariance::from_layer(recipe.invariance_layer, recipe.text_layers, recipe.invariance_weight)
            .gated(recipe.invariance_gate)
    });
    let terms = super::Terms {
        image: binding.as_ref(),
        question: question.as_ref(),
        decision: decision.as_ref(),
        invariance: invariance.as_ref(),
    };
    for (stage, sr, mix, prefixes) in stages {
        let mut vars = vars_of(&t, prefixes)?;
        if stage != Stage::Induction {
            vars.extend(binding.iter().map(|b| b.head.clone()));
            vars.extend(question.iter().map(|q| q.head.clone()));
            vars.extend(decision.iter().map(|d| d.head.clone()));
        }
        let mut opt = optimiser(vars.clone(), sr.lr)?;
        let mut rng = Rng::derive(recipe.seed, "train-qa", stage as u64);
        let mut keep_rng = Rng::derive(recipe.seed, "train-keep-induction", stage as u64);
        let frozen = stage != Stage::Tune;
        for step in 0..sr.steps {
            opt.set_learning_rate(learning_rate(sr, step));
            let ease = if stage == Stage::Context {
                recipe.context_ease * (1.0 - step as f32 / sr.steps.max(1) as f32)
            } else {
                0.0
            };
            let shard = sr.batch.div_ceil(recipe.workers.max(1));
            let (lv, mut grads) = if stage == Stage::Induction {
                let batches = (0..recipe.workers.max(1))
                    .map(|_| induction_batch(&tok, shard, INDUCTION_HALF, &mut rng, device))
                    .collect::<Result<Vec<_>>>()?;
                parallel_grads(batches.len(), &vars, |i| super::loss(&t.model, &batches[i], true))?
            } else {
                let samples: Vec<Sample> = (0..sr.batch)
                    .map(|_| training_sample_eased(&world, mix, ease, &recipe.context_shares, &mut rng))
                    .collect();
                let shards: Vec<&[Sample]> = samples.chunks(shard).collect();
                // The invariance term starts at global step `invariance_from` (0: from the first).
                let terms = match global >= recipe.invariance_from {
                    true => terms,
                    false => super::Terms { invariance: None, ..terms },
                };
                let keep = recipe.keep_induction.div_ceil(shards.len().max(1));
                let kept = (0..shards.len())
                    .map(|_| {
                        (keep > 0)
                            .then(|| induction_batch(&tok, keep, INDUCTION_HALF, &mut keep_rng, device))
                            .transpose()
                    })
                    .collect::<Result<Vec<_>>>()?;
                parallel_grads(shards.len(), &vars, |i| {
                    let batches = make_grouped(
                        shards[i],
                        &tok,
                        &images,
                        seq,
                        GROUPS,
                        recipe.lm_weight,
                        terms.invariance.is_some(),
                        device,
                    )?;
                    let qa = grouped_loss(&t.model, &batches, frozen, terms)?;
                    match &kept[i] {
                        Some(b) => Ok((qa + (super::loss(&t.model, b, true)? * recipe.keep_induction_weight as f64)?)?),
                        None => Ok(qa),
                    }
                })?
            };
            clip_gradients(&mut grads, &vars, recipe.clip)?;
            opt.step(&grads)?;
            acc = (acc.0 + lv, acc.1 + 1);
            global += 1;
            let point = if (step + 1) % recipe.eval_every == 0 || step + 1 == sr.steps {
                let mut metrics = BTreeMap::new();
                for (name, samples) in &sets {
                    let score = teacher_forced(&t.model, &tok, &images, samples, 64, device)?;
                    metrics.insert(name.to_string(), score.exact_match);
                }
                let loss = acc.0 / acc.1.max(1) as f32;
                acc = (0.0, 0);
                curve.push(CurvePoint { step: global, stage, loss, seconds: start.elapsed().as_secs_f64(), metrics });
                curve.last()
            } else {
                None
            };
            progress(&Progress { stage, step: global, total, loss: lv, point });
        }
    }
    Ok(Trained { trainable: t, tokenizer: tok, config_json, recipe: recipe.clone(), curve })
}

#[cfg(test)]
mod step_tests {
    use super::*;
    use crate::train::vision::{vision_batch, vision_loss, VisionHeads};

    #[test]
    fn parallel_vision_steps_learn() -> Result<()> {
        let world = World::generate(0);
        let cfg = world_config_json(500, 32, 1, 32, 1, 4);
        let t = Trainable::new(&cfg, 0, &Device::Cpu)?;
        let images = ImageProcessor::from_json_str(WORLD_PREPROCESSOR).map_err(Error::Invalid)?;
        let heads = VisionHeads::new(32, 0, &Device::Cpu)?;
        let mut rng = Rng::new(3);
        let shards = [
            vision_batch(&world, &images, Pool::Train, 8, 4, &mut rng, &Device::Cpu)?,
            vision_batch(&world, &images, Pool::Train, 8, 4, &mut rng, &Device::Cpu)?,
        ];
        let mut vars = vars_of(&t, &["vision_tower."])?;
        vars.extend(heads.vars());
        let mut opt = optimiser(vars.clone(), 3e-3)?;
        let mut losses = vec![];
        for _ in 0..40 {
            let (l, mut grads) = parallel_grads(2, &vars, |i| Ok(vision_loss(&t.model, &heads, &shards[i])?.loss))?;
            clip_gradients(&mut grads, &vars, 1.0)?;
            opt.step(&grads)?;
            losses.push(l);
        }
        assert!(losses[39] < losses[0] * 0.5);
        Ok(())
    }
}
