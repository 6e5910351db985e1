//! The recipe of `unike train-base`: model shape, the three stages and their budgets, the data mix. Everything that
//! decides the result is here and is saved next to the weights, so a checkpoint says how it was made.

use serde::{Deserialize, Serialize};

/// One optimisation stage: its length in steps, batch size, peak learning rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
    /// Stage 1: the vision tower alone as a classifier of fresh renderings (batch = glyphs; as many scenes / 2).
    pub vision: StageRecipe,
    /// Stage 2: projector and decoder on the question-answer mix, the vision tower frozen.
    pub align: StageRecipe,
    /// Stage 3: everything, on the same mix.
    pub tune: StageRecipe,
    /// Mix of sample kinds `[entity fact, multi-hop, text fact, caption, scene question]`.
    pub mix: [f32; 5],
    /// Global-norm gradient clipping.
    pub clip: f64,
    /// Data-parallel workers (threads) per step; part of the recipe because it decides how a batch is sharded.
    pub workers: usize,
    /// Steps between two evaluations on the curve.
    pub eval_every: usize,
    /// Samples per split in each curve evaluation.
    pub eval_n: usize,
}

impl Recipe {
    /// The shipped default model (about 45 minutes on a 2-core machine, measured in the closing note of issue 3).
    pub fn default_model(seed: u64) -> Self {
        Self {
            seed,
            vision_dim: 128,
            vision_layers: 3,
            text_dim: 192,
            text_layers: 4,
            vision: StageRecipe { steps: 3000, batch: 64, lr: 2e-3 },
            align: StageRecipe { steps: 4000, batch: 48, lr: 1.5e-3 },
            tune: StageRecipe { steps: 1500, batch: 48, lr: 3e-4 },
            mix: [5.0, 1.0, 2.0, 1.0, 1.0],
            clip: 1.0,
            workers: 2,
            eval_every: 250,
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
            vision: StageRecipe { steps: 4, batch: 8, lr: 2e-3 },
            align: StageRecipe { steps: 4, batch: 8, lr: 2e-3 },
            tune: StageRecipe { steps: 2, batch: 8, lr: 1e-3 },
            mix: [5.0, 1.0, 2.0, 1.0, 1.0],
            clip: 1.0,
            workers: 2,
            eval_every: 4,
            eval_n: 8,
        }
    }

    /// Steps of all stages.
    pub fn total_steps(&self) -> usize {
        self.vision.steps + self.align.steps + self.tune.steps
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
