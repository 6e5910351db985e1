//! `unike bench --shard I/N --shard-out FILE` and `unike bench --merge FILE,...`: one benchmark split across
//! machines without a database. Each machine computes shard I of N of every method ([`unike_pipeline::shard`]) and
//! writes it with the flags that define the run; `--merge`, given the same flags, checks that every file is of this
//! run and assembles the results (bit for bit those of one `unike bench`, edit times aside) without loading a model.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use unike_pipeline::bench::{provenance, Config};
use unike_pipeline::data::DataSource;
use unike_pipeline::load::Loaded;
use unike_pipeline::shard::{self, ShardResult};

use crate::bench_edit::BenchArgs;

const FORMAT: &str = "unike-bench-shards/1";

/// A shard file: the run it belongs to, where its data came from, and its shards.
#[derive(Serialize, Deserialize)]
struct ShardFile {
    format: String,
    /// The flags that define the run's numbers (everything but output and threads).
    run: serde_json::Value,
    index: usize,
    count: usize,
    notes: Vec<String>,
    shards: Vec<ShardResult>,
}

/// The flags of `args` that decide the run's numbers.
fn run_key(args: &BenchArgs) -> serde_json::Value {
    serde_json::json!({
        "model": args.model.model, "dtype": args.model.dtype, "device": args.model.device,
        "methods": args.methods, "task": format!("{:?}", args.task), "mode": format!("{:?}", args.mode),
        "k": args.k, "gap": args.gap, "n": args.n, "seed": args.seed, "memory": args.memory,
        "world": args.data.world, "data": args.data.data, "images": args.data.images, "train": args.data.train,
        "split": format!("{:?}", args.data.split),
    })
}

/// `I/N`.
fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let (i, n) = s.split_once('/').with_context(|| format!("--shard {s:?}: expected I/N, e.g. 0/4"))?;
    let (i, n): (usize, usize) = (i.trim().parse()?, n.trim().parse()?);
    ensure!(n > 0 && i < n, "--shard {s}: expected I/N with 0 <= I < N");
    Ok((i, n))
}

/// `--shard I/N`: computes this machine's shard of every method and writes it to `--shard-out`.
pub fn compute(args: &BenchArgs, shard: &str, loaded: &Loaded, data: &DataSource, cfg: &Config) -> Result<()> {
    let (index, count) = parse_shard(shard)?;
    let out = args.shard_out.as_deref().context("--shard needs --shard-out FILE")?;
    let specs = shard::nth(cfg, index, count)?;
    let shards = shard::run(loaded, data, cfg, &specs, &mut |_, _| true)?;
    let file = ShardFile {
        format: FORMAT.into(),
        run: run_key(args),
        index,
        count,
        notes: provenance(loaded, data, cfg)?,
        shards,
    };
    write_atomically(out, &serde_json::to_vec(&file)?)?;
    eprintln!("shard {index}/{count}: {} method shard(s) written to {}", file.shards.len(), out.display());
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `--merge FILE,...`: the run's results from its shard files, printed as `unike bench` prints them.
pub fn merge(args: &BenchArgs) -> Result<()> {
    let key = run_key(args);
    let mut files = Vec::new();
    for path in &args.merge {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let f: ShardFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a shard file of `unike bench --shard`", path.display()))?;
        ensure!(f.format == FORMAT, "{}: format {:?}, expected {FORMAT}", path.display(), f.format);
        if f.run != key {
            bail!(
                "{} was computed for another run ({}); merge with the flags it was computed with",
                path.display(),
                f.run
            );
        }
        files.push(f);
    }
    let count = files[0].count;
    let mut seen = vec![false; count];
    for f in &files {
        ensure!(f.count == count, "the files cut the run into {} and {} shards", count, f.count);
        ensure!(!std::mem::replace(&mut seen[f.index], true), "shard {}/{count} is given twice", f.index);
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        bail!("shard {missing}/{count} is missing");
    }
    // What assembling needs of the configuration: its methods and its mode (cross-task or not); the data's own task
    // (a single caption file) changes neither, so the model and the data need not be read.
    let cfg = Config {
        methods: args.methods.clone(),
        task: args.task.unwrap_or(unike_pipeline::bench::BenchTask::Vqa),
        mode: args.mode,
        k: if args.mode == unike_pipeline::bench::BenchMode::SequentialGap { args.gap } else { args.k },
        n: args.n,
        seed: args.seed,
        memory: args.memory,
        threads: 1,
        split: args.data.split,
    };
    let notes = files[0].notes.clone();
    let all: Vec<ShardResult> = files.into_iter().flat_map(|f| f.shards).collect();
    let mut results = Vec::new();
    for m in &args.methods {
        let of: Vec<ShardResult> = all.iter().filter(|s| &s.spec.method == m).cloned().collect();
        let (result, _) = shard::assemble(&cfg, of)?;
        results.push(result);
    }
    if args.json {
        println!("{}", serde_json::to_string(&serde_json::json!({"results": results, "data": notes}))?);
    } else {
        crate::bench_edit::print_table(&notes, &results);
    }
    Ok(())
}
