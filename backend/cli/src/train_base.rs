//! `unike train-base`: trains the world's default model from scratch and saves it as an llava-hf checkpoint, with
//! its training record and curve plot.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use unike_core::train::driver::{train_base, Progress};
use unike_core::train::recipe::Recipe;
use unike_core::train::save;

use crate::{device, plot};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RecipeName {
    /// The shipped default model.
    Default,
    /// A seconds-long run of a very small model (smoke tests).
    Smoke,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Seed of the world, the initialisation and the data.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output checkpoint directory (created; existing files are overwritten).
    #[arg(long, default_value = "models/default")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "default")]
    pub recipe: RecipeName,
    /// Override the steps of stage 1 (vision classifier).
    #[arg(long)]
    pub vision_steps: Option<usize>,
    /// Override the steps of stage 2 (projector + decoder, vision frozen).
    #[arg(long)]
    pub align_steps: Option<usize>,
    /// Override the steps of stage 3 (everything).
    #[arg(long)]
    pub tune_steps: Option<usize>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: TrainArgs) -> Result<()> {
    // The trainer parallelises over batch shards (one thread per worker); candle's per-op threads would only fight
    // them on a small machine. Set before the first tensor op, when candle reads them.
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let mut recipe = match args.recipe {
        RecipeName::Default => Recipe::default_model(args.seed),
        RecipeName::Smoke => Recipe::smoke(args.seed),
    };
    for (over, stage) in [
        (args.vision_steps, &mut recipe.vision),
        (args.align_steps, &mut recipe.align),
        (args.tune_steps, &mut recipe.tune),
    ] {
        if let Some(n) = over {
            stage.steps = n;
        }
    }
    if recipe.total_steps() == 0 {
        bail!("nothing to train: every stage has 0 steps");
    }
    let dev = device::parse_device(&args.device)?;
    if args.out.is_file() {
        bail!("--out {} is a file, not a directory", args.out.display());
    }
    let bar = ProgressBar::new(recipe.total_steps() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>6} [{elapsed_precise}] {wide_bar} {pos}/{len} eta {eta} {msg}")
            .context("progress template")?,
    );
    let mut on_step = |p: &Progress| {
        bar.set_position(p.step as u64);
        bar.set_prefix(p.stage.name());
        bar.set_message(format!("loss {:.4}", p.loss));
        if let Some(pt) = p.point {
            let metrics: Vec<String> = pt.metrics.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
            let line = format!(
                "step {:>5} {:<6} {:>7.1}s loss {:.4} | {}",
                pt.step,
                pt.stage.name(),
                pt.seconds,
                pt.loss,
                metrics.join(", ")
            );
            // A hidden bar (stderr not a terminal, e.g. a log file) drops println: write the line ourselves.
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
    };
    let trained = train_base(&recipe, &dev, &mut on_step).context("training failed")?;
    bar.finish_and_clear();
    save::save(&trained, &args.out).with_context(|| format!("saving to {}", args.out.display()))?;
    let png = args.out.join("training_curve.png");
    let seconds = trained.curve.last().map_or(0.0, |p| p.seconds);
    let title =
        format!("unike train-base --seed {} ({} steps, {:.1} min)", args.seed, recipe.total_steps(), seconds / 60.0);
    plot::training_curve(&trained.curve, &title, &png)?;
    println!("saved {} ({:.1} min); curve {}", args.out.display(), seconds / 60.0, png.display());
    Ok(())
}
