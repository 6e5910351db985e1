//! The recipe of `unike train-base`: model shape, the three stages and their budgets, the data mix. Everything that
//! decides the result is here and is saved next to the weights, so a checkpoint says how it was made.

use serde::{Deserialize, Serialize};

/// One optimisation stage: its length in steps, batch size, peak learning rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageRecipe {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
}

/// How to train a world model from scratch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Seed of the world, the initialisation and the data stream.
    pub seed: u64,
    pub vision_dim: usize,
    pub vision_layers: usize,
    pub text_dim: usize,
    pub text_layers: usize,
    /// Attention heads of each decoder layer (older recipes: 4).
    #[serde(default = "four")]
    pub text_heads: usize,
    /// Stage 1: the vision tower alone as a classifier of fresh renderings (batch = glyphs; as many scenes / 2).
    pub vision: StageRecipe,
    /// Stage 2: projector and decoder on the question-answer mix, the vision tower frozen.
    pub align: StageRecipe,
    /// Stage 2a (first after the vision tower, while the decoder is fresh): the decoder as a language model on
    /// repetitions of random word strings (`train::batch::induction_batch`), so that it can copy from its context
    /// before it learns the world.
    #[serde(default)]
    pub induction: StageRecipe,
    /// Stage 2b: projector and decoder, the vision tower frozen, on `context_mix` (in-context use, once the world's
    /// facts are learnt). Recipes written before it existed have none.
    #[serde(default)]
    pub context: StageRecipe,
    /// Stage 3: everything, on `mix`.
    pub tune: StageRecipe,
    /// Mix of sample kinds `[entity fact, multi-hop, text fact, caption, scene question, in-context]` (recipes
    /// written before in-context samples existed list five: their in-context weight is 0).
    #[serde(deserialize_with = "mix_of_five_or_six")]
    pub mix: [f32; 6],
    /// Mix of stage 2b (same kinds as `mix`).
    #[serde(default)]
    pub context_mix: [f32; 6],
    /// Curriculum ease of stage 2b's in-context samples at its start, decaying linearly to 0 at its end (see
    /// `world::context::training_context_sample`). Stage 3 uses 0.
    #[serde(default)]
    pub context_ease: f32,
    /// Weight of the language-model term on the prompt text of in-context samples (see `train::batch::make_batch`);
    /// an answer id weighs 1.
    #[serde(default)]
    pub lm_weight: f32,
    /// What the in-context samples are made of (older recipes: the first shares, 0.2 / 0.3 / 0.5).
    #[serde(default)]
    pub context_shares: crate::world::context::ContextShares,
    /// Sequences of dense repetitions (stage 2a's data) added to every step of the later stages, so that the copy
    /// circuit the induction stage formed is kept while the world's facts are learnt (0: none; older recipes).
    #[serde(default)]
    pub keep_induction: usize,
    /// Weight of that term against the question-answer loss (each a mean over its positions).
    #[serde(default)]
    pub keep_induction_weight: f32,
    /// Binding term: at the output of decoder layer `binding_layer`, every text position after an image predicts,
    /// through a linear read-out trained alongside (and discarded), the mean projected features of the latest image
    /// before it (cosine). 0: off (older recipes).
    #[serde(default)]
    pub binding_weight: f32,
    #[serde(default)]
    pub binding_layer: usize,
    /// Question binding term: at the output of decoder layer `question_binding_layer`, every position that predicts
    /// a turn's answer classifies the relation its question asks, through a linear read-out trained alongside (and
    /// discarded); cross-entropy (`train::question`). 0: off (older recipes).
    #[serde(default)]
    pub question_binding_weight: f32,
    #[serde(default)]
    pub question_binding_layer: usize,
    /// Decision term: at the output of decoder layer `decision_layer`, every position that predicts the answer of a
    /// query with demonstrations says whether a demonstration gives that answer, through a linear read-out trained
    /// alongside (and discarded); cross-entropy (`train::decision`). 0: off (older recipes).
    #[serde(default)]
    pub decision_weight: f32,
    #[serde(default)]
    pub decision_layer: usize,
    /// Invariance term: at the outputs of decoder layer `invariance_layer` and every later one, the states of the
    /// positions that predict
    /// the answer of a query whose demonstrations do not give it are pulled toward the query's states alone
    /// (relative squared distance; `train::invariance`). 0: off (older recipes).
    #[serde(default)]
    pub invariance_weight: f32,
    #[serde(default)]
    pub invariance_layer: usize,
    /// The run's step (counted over all stages, as the curve counts them) from which the invariance term applies.
    #[serde(default)]
    pub invariance_from: usize,
    /// When set, the invariance term counts only the pairs whose answer id the demonstrations make less likely than
    /// the query alone does by more than this many nats (`train::invariance::Invariance::gate`); none: every pair
    /// (older recipes).
    #[serde(default)]
    pub invariance_gate: Option<f32>,
    /// Checkpoint the run started from (`--init`), when not from scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// Global-norm gradient clipping.
    pub clip: f64,
    /// Data-parallel workers (threads) per step; part of the recipe because it decides how a batch is sharded.
    pub workers: usize,
    /// Steps between two evaluations on the curve.
    pub eval_every: usize,
    /// Samples per split in each curve evaluation.
    pub eval_n: usize,
}

fn four() -> usize {
    4
}

fn mix_of_five_or_six<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<[f32; 6], D::Error> {
    let v = Vec::<f32>::deserialize(d)?;
    match v.len() {
        5 | 6 => Ok(std::array::from_fn(|i| v.get(i).copied().unwrap_or(0.0))),
        n => Err(serde::de::Error::custom(format!("mix has {n} weights, expected 6"))),
    }
}

impl Recipe {
    /// The shipped default model (issue 14's run "full4": 142.9 minutes at nice 19 beside builds and CI runs on the
    /// 2-core machine, about 80 quiet; see the README's "The default model").
    pub fn default_model(seed: u64) -> Self {
        Self {
            seed,
            vision_dim: 128,
            vision_layers: 3,
            text_dim: 192,
            text_layers: 4,
            text_heads: 4,
            vision: StageRecipe { steps: 3000, batch: 64, lr: 2e-3 },
            align: StageRecipe { steps: 4000, batch: 48, lr: 1.5e-3 },
            induction: StageRecipe { steps: 300, batch: 64, lr: 2e-3 },
            context: StageRecipe { steps: 0, batch: 48, lr: 1e-3 },
            tune: StageRecipe { steps: 800, batch: 48, lr: 3e-4 },
            mix: [5.0, 1.0, 2.0, 2.0, 1.5, 3.0],
            context_mix: [2.0, 0.5, 1.0, 1.0, 0.5, 6.0],
            context_ease: 0.6,
            lm_weight: 0.3,
            context_shares: crate::world::context::ContextShares::shipped(),
            keep_induction: 16,
            keep_induction_weight: 0.5,
            binding_weight: 0.5,
            binding_layer: 1,
            question_binding_weight: 0.0,
            question_binding_layer: 1,
            decision_weight: 0.0,
            decision_layer: 2,
            invariance_weight: 0.0,
            invariance_layer: 2,
            invariance_from: 0,
            invariance_gate: None,
            init: None,
            clip: 1.0,
            workers: 2,
            eval_every: 500,
            eval_n: 96,
        }
    }

    /// A seconds-long recipe with a very small model (tests, smoke runs).
    pub fn smoke(seed: u64) -> Self {
        Self {
            seed,
            vision_dim: 32,
            vision_layers: 1,
            text_dim: 48,
            text_layers: 1,
            text_heads: 4,
            vision: StageRecipe { steps: 4, batch: 8, lr: 2e-3 },
            align: StageRecipe { steps: 4, batch: 8, lr: 2e-3 },
            induction: StageRecipe { steps: 2, batch: 8, lr: 1e-3 },
            context: StageRecipe { steps: 2, batch: 8, lr: 1e-3 },
            tune: StageRecipe { steps: 2, batch: 8, lr: 1e-3 },
            mix: [5.0, 1.0, 2.0, 1.0, 1.0, 2.0],
            context_mix: [1.0, 0.0, 1.0, 0.0, 0.0, 4.0],
            context_ease: 0.5,
            lm_weight: 0.3,
            context_shares: Default::default(),
            keep_induction: 4,
            keep_induction_weight: 0.5,
            binding_weight: 0.0,
            binding_layer: 1,
            question_binding_weight: 0.0,
            question_binding_layer: 1,
            decision_weight: 0.0,
            decision_layer: 2,
            invariance_weight: 0.0,
            invariance_layer: 2,
            invariance_from: 0,
            invariance_gate: None,
            init: None,
            clip: 1.0,
            workers: 2,
            eval_every: 4,
            eval_n: 8,
        }
    }

    /// Steps of all stages.
    pub fn total_steps(&self) -> usize {
        self.vision.steps + self.align.steps + self.induction.steps + self.context.steps + self.tune.steps
    }
}

/// Learning rate at `step` of a stage: linear warm-up over the first tenth (at most 200 steps), then cosine decay
/// to a tenth of the peak.
pub fn learning_rate(stage: &StageRecipe, step: usize) -> f64 {
    let warm = (stage.steps / 10).clamp(1, 200);
    if step < warm {
        return stage.lr * (step + 1) as f64 / warm as f64;
    }
    let t = (step - warm) as f64 / (stage.steps - warm).max(1) as f64;
    stage.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_a_tenth() {
        let s = StageRecipe { steps: 1000, batch: 1, lr: 1.0 };
        assert!((learning_rate(&s, 0) - 0.01).abs() < 1e-9);
        assert!((learning_rate(&s, 99) - 1.0).abs() < 1e-9);
        assert!(learning_rate(&s, 500) < 1.0 && learning_rate(&s, 500) > 0.1);
        assert!((learning_rate(&s, 999) - 0.1).abs() < 1e-3);
    }
}
