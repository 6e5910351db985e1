//! `unike knowledge-share`: the mean knowledge share α (as the paper's text means it; `1 − α` of Eq. 2 as printed) that a UniKE method's latent in-context
//! knowledge takes on each kind of probe, one-step edits on the cases `unike bench` would draw (issue 15 §2: the
//! semantic space should make it high on inputs related to the edit and low on unrelated ones).

use anyhow::{bail, Result};
use clap::Args;
use unike_core::edit::registry;
use unike_core::eval::share::{knowledge_shares, PROBE_KINDS};
use unike_core::eval::Evaluator;

use unike_pipeline::bench::{self, BenchMode, BenchTask, Config, Setup};
use unike_pipeline::data::{DataArgs, DataSource};
use unike_pipeline::load;

#[derive(Args, Debug)]
pub struct ShareArgs {
    #[command(flatten)]
    pub model: load::ModelArgs,
    /// Methods (UniKE variants with latent knowledge; fixed α shows as its constant share).
    #[arg(long, default_value = "unike", value_delimiter = ',')]
    pub methods: Vec<String>,
    #[arg(long, value_enum, default_value = "vqa")]
    pub task: BenchTask,
    /// Edit cases (one-step), drawn by --seed as `unike bench` draws them.
    #[arg(long, default_value_t = 100)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, default_value_t = 64)]
    pub memory: usize,
    #[arg(long)]
    pub json: bool,
}

/// One method's mean share per probe kind.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShareRow {
    pub method: String,
    pub task: String,
    pub n: usize,
    /// In [`PROBE_KINDS`] order.
    pub shares: [f32; 5],
}

/// The rows of `cfg`'s methods (one-step; methods without latent knowledge are an error).
pub fn rows(loaded: &load::Loaded, data: &DataSource, cfg: &Config) -> Result<Vec<ShareRow>> {
    let setup = Setup::new(loaded, data, cfg)?;
    let mut ev = Evaluator::new(&*loaded.model, &*loaded.processor, loaded.ckpt.eos_token_ids()?);
    let memory = bench::memory_sequences(&mut ev, &setup.memory_cases)?;
    let prepared = setup
        .cases
        .iter()
        .enumerate()
        .map(|(i, c)| ev.prepare(c, cfg.seed.wrapping_add(i as u64)))
        .collect::<unike_core::Result<Vec<_>>>()?;
    let mut out = Vec::new();
    for name in &cfg.methods {
        let method = setup.method(loaded, name, &memory)?;
        let Some(shares) = knowledge_shares(&ev, method.as_ref(), &prepared)? else {
            bail!("{name} mixes no latent knowledge in (no knowledge share to report)");
        };
        out.push(ShareRow { method: name.clone(), task: setup.task_name.into(), n: prepared.len(), shares });
    }
    Ok(out)
}

/// The Markdown table of `rows`.
pub fn markdown(rows: &[ShareRow]) -> String {
    let mut out = format!("| method | task | n | {} |\n", PROBE_KINDS.join(" | "));
    out.push_str(&format!("|---|---|---|{}\n", "---|".repeat(PROBE_KINDS.len())));
    for r in rows {
        let cells: Vec<String> = r.shares.iter().map(|s| format!("{s:.3}")).collect();
        out.push_str(&format!("| {} | {} | {} | {} |\n", r.method, r.task, r.n, cells.join(" | ")));
    }
    out.push_str(
        "\nMean knowledge share α (the in-context knowledge's weight) over the edited layers and the positions predicting each probe's \
         answer, one-step edits. Edit, rephrased question and other image are about the edit; the unrelated text and \
         image questions are not.\n",
    );
    out
}

pub fn run(args: ShareArgs) -> Result<()> {
    load::single_thread_pools();
    if args.n == 0 {
        bail!("--n must be at least 1");
    }
    if args.task == BenchTask::Cross {
        bail!("--task takes vqa or caption");
    }
    for m in &args.methods {
        registry::check_name(m)?;
        if registry::split_name(m).0 != "unike" {
            bail!("{m}: only UniKE methods mix latent knowledge in");
        }
    }
    let loaded = args.model.load()?;
    let data = DataSource::resolve(&args.data, &loaded, None)?;
    let cfg = Config {
        methods: args.methods.clone(),
        task: args.task,
        mode: BenchMode::OneStep,
        k: 1,
        n: args.n,
        seed: args.seed,
        memory: args.memory,
        threads: 1,
        split: args.data.split,
    };
    let rows = rows(&loaded, &data, &cfg)?;
    if args.json {
        println!("{}", serde_json::to_string(&serde_json::json!({"probe_kinds": PROBE_KINDS, "rows": rows}))?);
    } else {
        print!("{}", markdown(&rows));
    }
    Ok(())
}
