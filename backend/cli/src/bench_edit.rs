//! `unike bench`: the flags, a progress bar, and the table or JSON of [`unike_pipeline::bench`]'s results.

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use unike_core::edit::registry;
use unike_pipeline::bench::{
    bench_observed, given_task, provenance, resolve_task, select_cases, worker_threads, BenchMode, BenchObserver,
    BenchTask, Config,
};
use unike_pipeline::data::{self, DataArgs, DataSource};
use unike_pipeline::load::{self, Loaded};
use unike_pipeline::report::markdown;
use unike_shared::BenchResult;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: load::ModelArgs,
    /// Comma-separated methods (none, ft, ke, t-patcher, mend, ike, serac, unike, ft-vision, lora, grace, wise,
    /// rome, memit, alphaedit; `none` is the unedited model).
    #[arg(long, default_value = "t-patcher", value_delimiter = ',')]
    pub methods: Vec<String>,
    /// vqa, caption or cross (default: vqa, or the task of a single --data file).
    #[arg(long, value_enum)]
    pub task: Option<BenchTask>,
    #[arg(long, value_enum, default_value = "one-step")]
    pub mode: BenchMode,
    /// Edits per sequence in sequential mode (cross-task: always 10, 5 + 5).
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// In sequential-gap mode: edits made after a case's own before it is scored (VLKEB: 10, 20, 50, 100); the stream
    /// edits `--n` + gap cases and scores the first `--n`.
    #[arg(long, default_value_t = 10)]
    pub gap: usize,
    /// Edit cases to evaluate: a sample drawn by --seed from the split.
    #[arg(long, default_value_t = 100)]
    pub n: usize,
    /// Draws the cases and every random choice of the run (same seed, same cases, same numbers). It does not change
    /// the data: that stays the model's own world unless --world or --data says otherwise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub data: DataArgs,
    /// Training-split cases whose questions (edit, text and image question: three each) form the memory of unrelated
    /// inputs of the methods that keep one (T-Patcher, UniKE).
    #[arg(long, default_value_t = 64)]
    pub memory: usize,
    /// Print one JSON object instead of the Markdown table.
    #[arg(long)]
    pub json: bool,
    /// Worker threads editing independent chunks (one-step edits, sequences) side by side; 0 = one per core. The
    /// metrics do not depend on it, only the edit times (the workers share the memory bandwidth).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Compute only shard I of N of every method (ranges of whole chunks) and write it to --shard-out; another
    /// machine computes another shard, and `--merge` assembles them into this run's results, bit for bit.
    #[arg(long, value_name = "I/N", requires = "shard_out", conflicts_with = "merge")]
    pub shard: Option<String>,
    /// Where --shard writes its outcome (JSON).
    #[arg(long, value_name = "FILE")]
    pub shard_out: Option<std::path::PathBuf>,
    /// Assemble the results of this configuration from the files --shard wrote (every shard once; no model work).
    #[arg(long, value_name = "FILE", num_args = 1.., value_delimiter = ',')]
    pub merge: Vec<std::path::PathBuf>,
}

/// The CLI's progress bar on stderr.
pub struct Bar(ProgressBar);

impl Bar {
    pub fn new() -> Result<Self> {
        let bar = ProgressBar::new(0);
        bar.set_style(ProgressStyle::with_template(
            "{prefix:>24} [{elapsed_precise}] {wide_bar} {pos}/{len} eta {eta}",
        )?);
        Ok(Self(bar))
    }
}

impl BenchObserver for Bar {
    fn stage(&mut self, name: &str, total: usize) {
        self.0.reset();
        self.0.set_length(total as u64);
        self.0.set_prefix(name.to_string());
    }

    fn progress(&mut self, done: usize) -> bool {
        self.0.set_position(done as u64);
        true
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Runs every method of `cfg` on `loaded` over the cases of `data`, with a progress bar on stderr.
pub fn bench(loaded: &Loaded, data: &DataSource, cfg: &Config) -> Result<Vec<BenchResult>> {
    Ok(bench_observed(loaded, data, cfg, &mut Bar::new()?)?)
}

pub fn run(args: BenchArgs) -> Result<()> {
    load::single_thread_pools();
    // Cheap checks before anything is loaded.
    if args.n == 0 {
        bail!("--n must be at least 1");
    }
    for m in &args.methods {
        registry::check_name(m)?;
    }
    if !args.merge.is_empty() {
        return crate::bench_shards::merge(&args);
    }
    let loaded = args.model.load()?;
    let data = DataSource::resolve(&args.data, &loaded, given_task(args.task))?;
    let cfg = Config {
        methods: args.methods.clone(),
        task: resolve_task(args.task, &data)?,
        mode: args.mode,
        k: if args.mode == BenchMode::SequentialGap { args.gap } else { args.k },
        n: args.n,
        seed: args.seed,
        memory: args.memory,
        threads: worker_threads(args.threads),
        split: args.data.split,
    };
    if let Some(shard) = &args.shard {
        return crate::bench_shards::compute(&args, shard, &loaded, &data, &cfg);
    }
    let results = bench(&loaded, &data, &cfg)?;
    let notes = provenance(&loaded, &data, &cfg)?;
    if args.json {
        // The results, where the data came from, and the cases drawn (in edit order).
        let (_, list) = select_cases(&loaded, &data, &cfg)?;
        let cases: Vec<serde_json::Value> = list
            .iter()
            .map(|c| {
                serde_json::json!({"task": data::task_name(c.task), "prompt": c.prompt, "target": c.target,
                    "image": c.image.display().to_string()})
            })
            .collect();
        println!("{}", serde_json::to_string(&serde_json::json!({"results": results, "data": notes, "cases": cases}))?);
    } else {
        print_table(&notes, &results);
    }
    Ok(())
}

/// Where the data came from, then the results' Markdown tables (what `bench` prints without `--json`).
pub fn print_table(notes: &[String], results: &[BenchResult]) {
    for line in notes {
        println!("{line}  ");
    }
    println!();
    print!("{}", markdown(results));
}
