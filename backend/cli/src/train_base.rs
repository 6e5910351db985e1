//! `unike train-base`: trains the world's default model from scratch and saves it as an llava-hf checkpoint, with
//! its training record and curve plot.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use unike_core::train::driver::{train_base, Progress};
use unike_core::train::recipe::Recipe;
use unike_core::train::save;

use crate::plot;
use unike_pipeline::load;

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
    /// Override the steps of stage 2a (induction: the decoder on repeated word strings).
    #[arg(long)]
    pub induction_steps: Option<usize>,
    /// Override the steps of stage 2b (in-context use, vision frozen).
    #[arg(long)]
    pub context_steps: Option<usize>,
    /// Override the steps of stage 3 (everything).
    #[arg(long)]
    pub tune_steps: Option<usize>,
    /// Start from the weights of this world checkpoint instead of from scratch (pilots of a data mix; tensors are
    /// matched by name and shape, token rows by token text). Recorded in training.json.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Override the decoder's layers (with `--init` from a shallower checkpoint: its layers are spread over the new
    /// decoder and the others start as the identity).
    #[arg(long)]
    pub text_layers: Option<usize>,
    /// Override the decoder's attention heads (from scratch only; they must divide the width, 192).
    #[arg(long)]
    pub text_heads: Option<usize>,
    /// Override the steps between two curve evaluations.
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Override the make-up of in-context samples: shares of repetitions and drills, then of contexts with a relevant
    /// demonstration, optionally of hard irrelevant demonstrations and of drills on one relation and on one entity
    /// (`0.2,0.4,0.5,0.7,0.6,0.2` by default: the shipped model's).
    #[arg(long, value_name = "REPEAT,DRILL,RELEVANT[,HARD[,DRILL_RELATION,DRILL_ENTITY]]", value_delimiter = ',')]
    pub context_shares: Option<Vec<f32>>,
    /// Of the hard irrelevant demonstrations about a character, the share about the query's own character with
    /// another relation (0 to 1; the shipped model's 0.5); the others ask the query's relation about another one.
    #[arg(long)]
    pub hard_same_entity: Option<f32>,
    /// Of the drills on one character or one relation, the share whose final query asks a fact the drill did not
    /// state, answered as the world does (0 to 1; the shipped model's 0).
    #[arg(long)]
    pub drill_recall: Option<f32>,
    /// Override the sequences of dense repetitions kept in every step after the induction stage (0: none).
    #[arg(long)]
    pub keep_induction: Option<usize>,
    /// Share of plain samples that get 1–3 easy irrelevant demonstrations in front (0 to 1; the shipped model's 0.4).
    #[arg(long)]
    pub distract: Option<f32>,
    /// The binding term: `LAYER,WEIGHT` (text after an image predicts it, centred over the batch's images, at that
    /// decoder layer's output; the shipped model's `1,0.5`; weight 0 turns it off).
    #[arg(long, value_name = "LAYER,WEIGHT", value_delimiter = ',')]
    pub binding: Option<Vec<f32>>,
    /// The question binding term: `LAYER,WEIGHT` (every position that predicts a turn's answer classifies the
    /// relation its question asks, at that decoder layer's output; off in the shipped model; weight 0 turns it off).
    #[arg(long, value_name = "LAYER,WEIGHT", value_delimiter = ',')]
    pub question_binding: Option<Vec<f32>>,
    /// The decision term: `LAYER,WEIGHT` (every position that predicts the answer of a query with demonstrations
    /// says whether a demonstration gives that answer, at that decoder layer's output; off in the shipped model;
    /// weight 0 turns it off).
    #[arg(long, value_name = "LAYER,WEIGHT", value_delimiter = ',')]
    pub decision: Option<Vec<f32>>,
    /// The invariance term: `LAYER,WEIGHT[,FROM_STEP]` (the states that predict the answer of a query whose
    /// demonstrations do not give it are pulled toward the query's states alone, at the outputs of that decoder layer
    /// and the later ones, from that step of the run on, counted over all stages as the curve counts them; off in the
    /// shipped model; weight 0 turns it off).
    #[arg(long, value_name = "LAYER,WEIGHT[,FROM_STEP]", value_delimiter = ',')]
    pub invariance: Option<Vec<f32>>,
    /// With `--invariance`: count only the answer positions whose answer id the demonstrations make less likely
    /// than the query alone does by more than MARGIN nats (0: any loss of likelihood); without it, every position
    /// of an ignoring query is pulled.
    #[arg(long, value_name = "MARGIN")]
    pub invariance_gate: Option<f32>,
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
        (args.induction_steps, &mut recipe.induction),
        (args.context_steps, &mut recipe.context),
        (args.tune_steps, &mut recipe.tune),
    ] {
        if let Some(n) = over {
            stage.steps = n;
        }
    }
    if let Some(n) = args.eval_every {
        if n == 0 {
            bail!("--eval-every must be at least 1");
        }
        recipe.eval_every = n;
    }
    if let Some(v) = &args.context_shares {
        let ok = (3..=6).contains(&v.len()) && v.iter().all(|x| (0.0..=1.0).contains(x)) && v[0] + v[1] <= 1.0;
        if !ok {
            bail!("--context-shares takes three to six numbers in [0, 1], the first two summing to at most 1");
        }
        let c = &mut recipe.context_shares;
        (c.repeat, c.drill, c.relevant) = (v[0], v[1], v[2]);
        c.hard = v.get(3).copied().unwrap_or(c.hard);
        c.drill_same_relation = v.get(4).copied().unwrap_or(c.drill_same_relation);
        c.drill_same_entity = v.get(5).copied().unwrap_or(c.drill_same_entity);
        if c.drill_same_relation + c.drill_same_entity > 1.0 {
            bail!("--context-shares: the shares of drills on one relation and on one entity sum to more than 1");
        }
    }
    if let Some(h) = args.hard_same_entity {
        if !(0.0..=1.0).contains(&h) {
            bail!("--hard-same-entity must be in [0, 1]");
        }
        recipe.context_shares.hard_same_entity = h;
    }
    if let Some(d) = args.drill_recall {
        if !(0.0..=1.0).contains(&d) {
            bail!("--drill-recall must be in [0, 1]");
        }
        recipe.context_shares.drill_recall = d;
    }
    if let Some(d) = args.distract {
        if !(0.0..=1.0).contains(&d) {
            bail!("--distract must be in [0, 1]");
        }
        recipe.context_shares.distract = d;
    }
    let layers = args.text_layers.unwrap_or(recipe.text_layers);
    if let Some(b) = &args.binding {
        let (l, w) = layer_and_weight(b, layers).context("--binding")?;
        (recipe.binding_layer, recipe.binding_weight) = (l, w);
    }
    if let Some(b) = &args.question_binding {
        let (l, w) = layer_and_weight(b, layers).context("--question-binding")?;
        (recipe.question_binding_layer, recipe.question_binding_weight) = (l, w);
    }
    if let Some(b) = &args.decision {
        let (l, w) = layer_and_weight(b, layers).context("--decision")?;
        (recipe.decision_layer, recipe.decision_weight) = (l, w);
    }
    if let Some(b) = &args.invariance {
        if b.len() > 3 {
            bail!("--invariance: takes LAYER,WEIGHT[,FROM_STEP]");
        }
        let from = match b.get(2) {
            Some(&s) if s >= 0.0 && s.fract() == 0.0 => s as usize,
            Some(_) => bail!("--invariance: FROM_STEP must be a whole number of steps"),
            None => 0,
        };
        let (l, w) = layer_and_weight(&b[..b.len().min(2)], layers).context("--invariance")?;
        (recipe.invariance_layer, recipe.invariance_weight, recipe.invariance_from) = (l, w, from);
    }
    if let Some(m) = args.invariance_gate {
        if args.invariance.is_none() {
            bail!("--invariance-gate: only with --invariance");
        }
        if !m.is_finite() || m < 0.0 {
            bail!("--invariance-gate: MARGIN must be a number of nats, 0 or more");
        }
        recipe.invariance_gate = Some(m);
    }
    if let Some(n) = args.keep_induction {
        recipe.keep_induction = n;
    }
    if let Some(n) = args.text_layers {
        if !(1..=64).contains(&n) {
            bail!("--text-layers must be 1 to 64");
        }
        recipe.text_layers = n;
    }
    if let Some(h) = args.text_heads {
        if h == 0 || recipe.text_dim % h != 0 {
            bail!("--text-heads must divide the decoder width ({})", recipe.text_dim);
        }
        recipe.text_heads = h;
    }
    if let Some(dir) = &args.init {
        if !dir.join("model.safetensors").is_file() || !dir.join("tokenizer.json").is_file() {
            bail!("--init {}: not a checkpoint directory with model.safetensors and tokenizer.json", dir.display());
        }
        // A run from a checkpoint keeps its heads (`init_from` refuses others).
        let heads = unike_core::train::init::checkpoint_heads(dir)?;
        if args.text_heads.is_some_and(|h| h != heads) {
            bail!("--text-heads: {} has {heads} attention heads per layer; a run from it keeps them", dir.display());
        }
        recipe.text_heads = heads;
        recipe.init = Some(dir.display().to_string());
    }
    if recipe.total_steps() == 0 {
        bail!("nothing to train: every stage has 0 steps");
    }
    let dev = load::parse_device(&args.device)?;
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

/// `LAYER,WEIGHT` of a binding term: a decoder layer below `layers` and a weight of at least 0.
fn layer_and_weight(v: &[f32], layers: usize) -> Result<(usize, f32)> {
    if v.len() != 2 || v[0] < 0.0 || v[0].fract() != 0.0 || v[0] as usize >= layers || v[1].is_nan() || v[1] < 0.0 {
        bail!("takes LAYER,WEIGHT: a decoder layer below --text-layers ({layers}) and a weight of at least 0");
    }
    Ok((v[0] as usize, v[1]))
}
