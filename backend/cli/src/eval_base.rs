//! `unike eval-base`: greedy exact match of a world model per split (seen facts, unseen renderings, held-out
//! paraphrases, text facts, captions) and how it answers facts it was never taught.

use anyhow::{bail, Result};
use clap::Args;
use unike_core::model::{Llava, Processor};
use unike_core::train::evaluate::{eval_base, FLOORS};
use unike_core::train::save::TrainingRecord;
use unike_core::world::World;

use unike_pipeline::load;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: load::ModelArgs,
    /// Samples per split (text facts: all of them).
    #[arg(long, default_value_t = 300)]
    pub n: usize,
    /// World seed (default: the seed in the model's training.json, else 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print `{"splits": {NAME: {"n", "exact_match", "token_accuracy"}}, "unknown_facts": {...}}`.
    #[arg(long)]
    pub json: bool,
    /// Exit non-zero when a split is below the default model's floor.
    #[arg(long)]
    pub check: bool,
    /// Only diagnose `context_ignore`: for each kind of hard demonstration (same relation about another entity, same
    /// entity with another relation), how often the answer is the world's, the demonstration's (copied), or other.
    #[arg(long)]
    pub breakdown: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.n == 0 {
        bail!("--n must be at least 1");
    }
    unike_pipeline::load::single_thread_pools();
    let loaded = args.model.load()?;
    let seed = match args.seed {
        Some(s) => s,
        None => TrainingRecord::read(&loaded.dir)?.map_or(0, |r| r.recipe.seed),
    };
    let world = World::generate(seed);
    let eos = loaded.ckpt.eos_token_ids()?;
    if args.breakdown {
        return breakdown(&loaded, &eos, &world, args.n);
    }
    let t0 = std::time::Instant::now();
    let (model, processor) = world_model(&loaded)?;
    let report = eval_base(model, processor, &eos, &world, args.n)?;
    let secs = t0.elapsed().as_secs_f64();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("model {} (world seed {seed}), {secs:.1} s", loaded.dir.display());
        println!("{:<22} {:>5} {:>12} {:>15} {:>7}", "split", "n", "exact_match", "token_accuracy", "floor");
        for (name, s) in &report.splits {
            let floor = FLOORS.iter().find(|(f, _)| f == name).map_or("-".to_string(), |(_, v)| format!("{v:.2}"));
            println!("{name:<22} {:>5} {:>12.3} {:>15.3} {floor:>7}", s.n, s.exact_match, s.token_accuracy);
        }
        let u = &report.unknown_facts;
        println!(
            "unknown_facts          {:>5} answered {:.3}, right {:.3}, mean first-token confidence {:.3}",
            u.n, u.answered, u.exact_match, u.mean_confidence
        );
        for [q, truth, said] in &u.examples {
            println!("  {q} -> {said:?} (world: {truth:?})");
        }
    }
    if args.check {
        let below: Vec<String> = FLOORS
            .iter()
            .filter_map(|(name, floor)| {
                let s = report.splits.get(*name)?;
                let best = s.exact_match;
                (best < *floor).then(|| format!("{name} {best:.3} < {floor}"))
            })
            .collect();
        if !below.is_empty() {
            bail!("below the floor: {}", below.join(", "));
        }
    }
    Ok(())
}

/// The LLaVA model and processor of `loaded` (world models are LLaVA-style).
fn world_model(loaded: &load::Loaded) -> Result<(&Llava, &Processor)> {
    match (loaded.model.as_any().downcast_ref::<Llava>(), loaded.processor.as_any().downcast_ref::<Processor>()) {
        (Some(m), Some(p)) => Ok((m, p)),
        _ => bail!("eval-base evaluates LLaVA-style world models; this is a {} checkpoint", loaded.model.family()),
    }
}

/// Whether a wrong answer `a` to the query of a one-demonstration sample is the query's answer for a *lookalike*:
/// a character whose own answer to the demonstration's question is the demonstration's answer (the model taking the
/// stated fact as a cue to who is shown), and the chance of that for an answer drawn uniformly from the query
/// relation's other answers. `(false, 0)` when either question is not an entity relation's paraphrase.
fn lookalike_answer(world: &World, s: &unike_core::world::samples::Sample, demo: &str, a: &str) -> (bool, f64) {
    use std::collections::BTreeSet;
    use unike_core::world::{Relation, N_ENTITIES};
    let (Some(rq), Some(rd)) =
        (Relation::of_paraphrase(&s.question), s.context.first().and_then(|t| Relation::of_paraphrase(&t.question)))
    else {
        return (false, 0.0);
    };
    let pool: BTreeSet<String> = (0..N_ENTITIES).map(|e| world.answer(e, rq)).filter(|x| *x != s.answer).collect();
    let looks: BTreeSet<String> = (0..N_ENTITIES)
        .filter(|&e| world.answer(e, rd) == demo)
        .map(|e| world.answer(e, rq))
        .filter(|x| *x != s.answer)
        .collect();
    (looks.contains(a), looks.len() as f64 / pool.len().max(1) as f64)
}

fn breakdown(loaded: &load::Loaded, eos: &[u32], world: &World, n: usize) -> Result<()> {
    let (model, processor) = world_model(loaded)?;
    use unike_core::train::evaluate::answer;
    use unike_core::world::context::{hard_split, pick_split, HardKind, PickCue};
    println!(
        "{:<28} {:>5} {:>7} {:>7} {:>9} {:>7}   (qa / fact demonstrations: world's) [other: lookalike / chance]",
        "hard demonstration", "n", "world", "copied", "its_image", "other"
    );
    for kind in HardKind::ALL {
        let samples = hard_split(world, n, kind);
        let (mut truth, mut copied, mut recalled, mut by_form) = (0usize, 0usize, 0usize, [0usize; 2]);
        let mut others = Vec::new();
        let (mut lookalike, mut chance) = (0usize, 0.0f64);
        for (i, (s, demo, its)) in samples.iter().enumerate() {
            let a = answer(model, processor, eos, s)?.answer;
            if a == s.answer {
                truth += 1;
                by_form[i % 2] += 1;
            } else if a == *demo {
                copied += 1;
            } else if a == *its {
                recalled += 1;
            } else {
                let (hit, p) = lookalike_answer(world, s, demo, &a);
                lookalike += usize::from(hit);
                chance += p;
                if others.len() < 3 {
                    others.push(format!("{:?} -> {a:?} (world {:?}, demo {demo:?})", s.question, s.answer));
                }
            }
        }
        let m = samples.len().max(1) as f32;
        let half = (samples.len() as f32 / 2.0).max(1.0);
        let other = samples.len() - truth - copied - recalled;
        println!(
            "{:<28} {:>5} {:>7.3} {:>7.3} {:>9.3} {:>7.3}   ({:.3} / {:.3}) [{:.3} / {:.3}]",
            kind.name(),
            samples.len(),
            truth as f32 / m,
            copied as f32 / m,
            recalled as f32 / m,
            other as f32 / m,
            by_form[0] as f32 / half,
            by_form[1] as f32 / half,
            lookalike as f64 / other.max(1) as f64,
            chance / other.max(1) as f64,
        );
        for o in others {
            println!("  other: {o}");
        }
    }
    println!("{:<28} {:>5} {:>9} {:>7} {:>7}", "two demonstrations, one cue", "n", "relevant", "twin", "other");
    for cue in PickCue::ALL {
        let samples = pick_split(world, n, cue);
        let (mut right, mut twin) = (0usize, 0usize);
        for (s, b) in &samples {
            let a = answer(model, processor, eos, s)?.answer;
            right += usize::from(a == s.answer);
            twin += usize::from(a == *b);
        }
        let m = samples.len().max(1) as f32;
        println!(
            "{:<28} {:>5} {:>9.3} {:>7.3} {:>7.3}",
            cue.name(),
            samples.len(),
            right as f32 / m,
            twin as f32 / m,
            (samples.len() - right - twin) as f32 / m
        );
    }
    Ok(())
}
