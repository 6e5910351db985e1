//! `unike bench-stack`: how long an interactive edit takes on top of a stack of earlier edits (the Playground's case:
//! every workspace edits on its own stack), and how long an answer takes under that stack.
//!
//! For each method: `--stack` edits are applied one after another (each timed: the edit on a stack of 0, 1, ...),
//! then `--edits` further edits are each made on the full stack and taken back (so every one sees `--stack` patches),
//! and greedy answers are timed under the full stack. Edits use the evaluation split's cases of the model's world in
//! order (speed does not depend on which). Medians are over the timed runs; the first edit of a method also builds
//! what it caches (memory queries of the unedited model, the memory's prefix below the patched layers), so it is
//! reported apart.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use unike_core::data::Task;
use unike_core::edit::registry::{self, MethodInputs};
use unike_core::edit::{EditContext, EditRequest, PatchStack};
use unike_core::eval::Evaluator;
use unike_core::model::GenerateOptions;

use unike_pipeline::bench::{memory_sequences, model_name};
use unike_pipeline::data::{DataArgs, DataSource};
use unike_pipeline::load;

#[derive(Args, Debug)]
pub struct BenchStackArgs {
    #[command(flatten)]
    pub model: load::ModelArgs,
    /// Methods to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "t-patcher,unike")]
    pub methods: Vec<String>,
    /// Edits below the timed ones.
    #[arg(long, default_value_t = 10)]
    pub stack: usize,
    /// Timed edits on the full stack.
    #[arg(long, default_value_t = 7)]
    pub edits: usize,
    /// Timed answers under the full stack.
    #[arg(long, default_value_t = 20)]
    pub answers: usize,
    /// Seed of the edits.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    method: String,
    stack: usize,
    first_edit_ms: f64,
    /// Edits while the stack grew (stack sizes 1 .. stack - 1; the first is `first_edit_ms`).
    growing_median_ms: f64,
    edit_median_ms: f64,
    edit_p90_ms: f64,
    answer_median_ms: f64,
}

/// The `q` quantile of `v` (NaN when empty).
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        f64::NAN
    } else {
        crate::bench_model::quantile(&s, q)
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

pub fn run(args: BenchStackArgs) -> Result<()> {
    load::single_thread_pools();
    if args.edits == 0 || args.methods.is_empty() {
        bail!("--edits must be at least 1 and --methods name at least one method");
    }
    for m in &args.methods {
        registry::check_name(m)?;
    }
    let loaded = args.model.load()?;
    let data = DataSource::resolve(&args.data, &loaded, Some(Task::Vqa))?;
    let (cases, _) = data.pool(Task::Vqa, args.data.split)?;
    let need = args.stack + args.edits + args.answers;
    if cases.len() < need {
        bail!("the data has {} VQA cases; --stack + --edits + --answers need {need}", cases.len());
    }
    let eos = loaded.ckpt.eos_token_ids()?;
    let eos0 = *eos.first().context("the checkpoint has no end-of-sequence id")?;
    let mut ev = Evaluator::new(&*loaded.model, &*loaded.processor, eos.clone());
    let memory = memory_sequences(&mut ev, &data.memory_cases(Task::Vqa, 64)?)?;
    let name = model_name(&loaded);
    let root = unike_pipeline::model_dir::repo_root();
    let mut rows = Vec::new();
    for method_name in &args.methods {
        if registry::split_name(method_name).0 == "unike" {
            unike_pipeline::unike_artifacts::ensure(&loaded)?;
        }
        unike_pipeline::trained::ensure(&loaded, std::slice::from_ref(method_name), &data)?;
        let inputs = MethodInputs {
            root: &root,
            model: &name,
            memory: memory.clone(),
            demonstrations: if method_name == "ike" { data.front(Task::Vqa)?.unwrap_or_default() } else { vec![] },
            eos: eos0,
            backbone: &*loaded.model,
            model_dir: &loaded.dir,
        };
        let method = registry::build(method_name, inputs)?;
        let mut stack = PatchStack::new();
        let mut request = |i: usize| -> Result<EditRequest> {
            let c = &cases[i];
            Ok(EditRequest {
                question: c.prompt.clone(),
                image: Some(ev.pixels(&c.image)?),
                image_path: Some(c.image.display().to_string()),
                target: c.target.clone(),
                seed: args.seed.wrapping_add(i as u64),
            })
        };
        let mut growing = Vec::new();
        for i in 0..args.stack {
            let req = request(i)?;
            let t = Instant::now();
            let patch = method
                .edit(&EditContext { model: &*loaded.model, processor: &*loaded.processor, stack: &stack }, &req)?;
            growing.push(ms(t));
            stack.push(patch);
        }
        let mut timed = Vec::new();
        for i in args.stack..args.stack + args.edits {
            let req = request(i)?;
            let t = Instant::now();
            let patch = method
                .edit(&EditContext { model: &*loaded.model, processor: &*loaded.processor, stack: &stack }, &req)?;
            timed.push(ms(t));
            let id = stack.push(patch);
            stack.remove(id)?;
        }
        let hooks = stack.hooks()?;
        let p = &*loaded.processor;
        let opts = GenerateOptions { max_new_tokens: 16, eos_token_ids: eos.clone() };
        let mut answers = Vec::new();
        for c in &cases[args.stack + args.edits..need] {
            let px = ev.pixels(&c.image)?;
            let t = Instant::now();
            let ids = p.encode(&p.question_prompt(&c.prompt, true), Some(&px))?;
            loaded.model.generate(&ids, Some(&px), &hooks, &opts)?;
            answers.push(ms(t));
        }
        let first = growing.first().copied().unwrap_or(f64::NAN);
        rows.push(Row {
            method: method_name.clone(),
            stack: args.stack,
            first_edit_ms: first,
            growing_median_ms: quantile(growing.get(1..).unwrap_or(&[]), 0.5),
            edit_median_ms: quantile(&timed, 0.5),
            edit_p90_ms: quantile(&timed, 0.9),
            answer_median_ms: quantile(&answers, 0.5),
        });
    }
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!(
        "model {name}, {} thread(s); {} edits timed on a stack of {}, {} answers under it\n",
        candle_core::utils::get_num_threads(),
        args.edits,
        args.stack,
        args.answers
    );
    println!("| method | first edit (ms) | edits while the stack grows, median (ms) | edit on the stack: median / p90 (ms) | answer: median (ms) |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} / {:.0} | {:.1} |",
            r.method, r.first_edit_ms, r.growing_median_ms, r.edit_median_ms, r.edit_p90_ms, r.answer_median_ms
        );
    }
    Ok(())
}
