//! `unike reproduce --out DIR`: the paper's experiments on the synthetic world — Table 1 (one-step E-VQA / E-IC, all
//! methods), Table 2 (sequential, K = 10 and 20), Table 3 (cross-task), Table 4 (ablations) and Fig. 4 (K sweep, fixed
//! vs adaptive α, ζ variants) — as Markdown + JSON per section and PNG charts, plus `DIR/README.md` with every table
//! and `DIR/manifest.json` (commit, model, seed, sections: what the studio imports as reference results).
//! VLKEB's sequential editing with a gap (`gap`: one stream per method, each edit scored after G later ones, G = 10,
//! 20, 50, 100) and portability per number of hops (under Table 1) come with them. Each section is written as soon as
//! it is done.

use std::path::Path;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use unike_shared::{BenchReport, BenchResult};

use crate::plot_bench::{grouped_bars, metric_lines, series_lines};
use unike_pipeline::bench::{self, BenchMode, BenchTask, Config};
use unike_pipeline::data::{DataArgs, DataSource};
use unike_pipeline::load;

/// Sections, in order.
pub const SECTIONS: [&str; 8] = ["table1", "table2", "table3", "table4", "fig4a", "fig4b", "fig4c", "gap"];

/// The gaps of VLKEB's sequential protocol (`test_sequencial` with `gap_num` 10, 20, 50, 100).
pub const GAPS: [usize; 4] = [10, 20, 50, 100];

#[derive(Args, Debug)]
pub struct ReproduceArgs {
    #[command(flatten)]
    pub model: load::ModelArgs,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Edit cases per configuration (sequential runs use the largest multiple of K not above it).
    #[arg(long, default_value_t = 100)]
    pub n: usize,
    /// Draws each configuration's cases (and every random choice); the data stays the model's own world unless
    /// --world or --data says otherwise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub data: DataArgs,
    /// Methods of Tables 1–3 (`none`: the unedited model, the row every method is compared with).
    #[arg(
        long,
        default_value = "none,ft,ke,t-patcher,mend,ike,serac,unike,ft-vision,lora,grace,wise,rome,memit,alphaedit",
        value_delimiter = ','
    )]
    pub methods: Vec<String>,
    /// Cases scored per gap in the `gap` section (each stream edits these plus G more; E-VQA).
    #[arg(long, default_value_t = 50)]
    pub gap_n: usize,
    /// The gaps of the `gap` section (VLKEB's: 10, 20, 50, 100).
    #[arg(long, value_delimiter = ',', default_values_t = GAPS)]
    pub gaps: Vec<usize>,
    /// Only these sections (table1, table2, table3, table4, fig4a, fig4b, fig4c, gap).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    #[arg(long, default_value_t = 64)]
    pub memory: usize,
    /// Worker threads per benchmark (see `unike bench --threads`); 0 = one per core.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

fn write_section(out: &Path, name: &str, title: &str, results: &[BenchResult]) -> Result<String> {
    let json = serde_json::to_string_pretty(&BenchReport { results: results.to_vec() })?;
    std::fs::write(out.join(format!("{name}.json")), json)?;
    let mut md = format!("## {title}\n\n");
    md.push_str(
        "| method | task | mode | k | n | Rel. | T-Gen. | M-Gen. | T-Loc. | M-Loc. | mean | Port. | Port. base | edit ms |\n",
    );
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        let m = &r.metrics;
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {:.0} |\n",
            r.method,
            r.task,
            r.mode,
            r.k,
            r.n,
            m.reliability,
            m.t_generality,
            m.m_generality,
            m.t_locality,
            m.m_locality,
            r.metrics.mean5(),
            unike_pipeline::report::opt_pct(m.portability),
            unike_pipeline::report::opt_pct(m.portability_base),
            r.timing.edit_ms_median
        ));
    }
    md.push_str(&unike_pipeline::report::hops_table(results));
    md.push_str(&format!("\n{} ", unike_pipeline::report::CONVENTION_NOTE));
    md.push_str(&format!("Exact-match scores and M-Loc. top-1 are in `{name}.json`.\n\n"));
    std::fs::write(out.join(format!("{name}.md")), &md)?;
    Ok(md)
}

fn bars(out: &Path, file: &str, title: &str, results: &[BenchResult]) -> Result<String> {
    let series: Vec<(String, [f64; 5])> = results.iter().map(|r| (r.method.clone(), r.metrics.five())).collect();
    grouped_bars(&out.join(file), title, &series)?;
    Ok(format!("![{title}]({file})\n\n"))
}

pub fn run(args: ReproduceArgs) -> Result<()> {
    load::single_thread_pools();
    for s in &args.only {
        if !SECTIONS.contains(&s.as_str()) {
            bail!("unknown section {s:?} (known: {})", SECTIONS.join(", "));
        }
    }
    if args.n < 20 {
        bail!("--n must be at least 20 (sequential editing uses K = 20)");
    }
    if args.gap_n == 0 {
        bail!("--gap-n must be at least 1");
    }
    if args.gaps.is_empty() || args.gaps.iter().any(|g| !(1..=1000).contains(g)) {
        bail!("--gaps takes gaps from 1 to 1000");
    }
    for m in &args.methods {
        unike_core::edit::registry::check_name(m)?;
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let loaded = args.model.load()?;
    let data = DataSource::resolve(&args.data, &loaded, None)?;
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let cfg = |methods: Vec<String>, task: BenchTask, mode: BenchMode, k: usize| Config {
        methods,
        task,
        mode,
        k,
        n: if mode == BenchMode::Sequential || task == BenchTask::Cross { args.n / k * k } else { args.n },
        seed: args.seed,
        memory: args.memory,
        threads: bench::worker_threads(args.threads),
        split: args.data.split,
    };
    // A configuration that fails (e.g. a method's limit) is reported in its place; the others still run.
    let failures = std::cell::RefCell::new(Vec::<String>::new());
    let run = |c: Config| -> Result<Vec<BenchResult>> {
        let mut out = Vec::new();
        for m in &c.methods {
            let one = Config { methods: vec![m.clone()], ..c.clone() };
            match crate::bench_edit::bench(&loaded, &data, &one) {
                Ok(r) => out.extend(r),
                Err(e) => {
                    let msg = format!("{m} ({:?}, {:?}, k {}): {e:#}", c.task, c.mode, c.k).replace('\n', " ");
                    eprintln!("failed: {msg}");
                    failures.borrow_mut().push(msg);
                }
            }
        }
        Ok(out)
    };
    let out = &args.out;
    // The command as given (every argument), so that the README and the manifest say exactly how to redo it.
    let command: Vec<String> = std::env::args().skip(1).collect();
    let mut readme = format!(
        "# UniKE reproduction on {}\n\nModel `{}`, seed {}, n = {} per configuration. Command: `unike {}`. \
         Metric convention {}.\n\n",
        data.label,
        loaded.dir.display(),
        args.seed,
        args.n,
        command.join(" "),
        unike_shared::MetricConvention::CURRENT.label()
    );
    // Where the data comes from (as `unike bench` prints it), for a one-step VQA configuration of every method.
    if let Ok(lines) =
        bench::provenance(&loaded, &data, &cfg(args.methods.clone(), BenchTask::Vqa, BenchMode::OneStep, 1))
    {
        for l in lines {
            readme.push_str(&format!("- {l}\n"));
        }
        readme.push('\n');
    }
    // What the studio imports as reference results (`unike_server::reference`): rewritten with each section.
    let sections_done = std::cell::RefCell::new(Vec::<String>::new());
    let manifest = |section: Option<&str>| -> Result<()> {
        let mut done = sections_done.borrow_mut();
        if let Some(s) = section {
            done.push(s.to_string());
        }
        let m = unike_server::reference::Manifest {
            commit: env!("UNIKE_COMMIT").to_string(),
            model: bench::model_name(&loaded),
            seed: args.seed,
            date: unike_server::store::now(),
            sections: done.clone(),
            command: format!("unike {}", command.join(" ")),
        };
        std::fs::write(out.join(unike_server::reference::MANIFEST), serde_json::to_string_pretty(&m)? + "\n")?;
        Ok(())
    };
    let emit = |readme: &mut String, text: String| -> Result<()> {
        readme.push_str(&text);
        std::fs::write(out.join("README.md"), &*readme)?;
        Ok(())
    };
    manifest(None)?;
    let (vqa, cap) = (BenchTask::Vqa, BenchTask::Caption);
    if want("table1") {
        let mut all = Vec::new();
        for task in [vqa, cap] {
            all.extend(run(cfg(args.methods.clone(), task, BenchMode::OneStep, 1))?);
        }
        let mut text = write_section(out, "table1", "Table 1: one-step editing (E-VQA, E-IC)", &all)?;
        for t in ["vqa", "caption"] {
            let rs: Vec<BenchResult> = all.iter().filter(|r| r.task == t).cloned().collect();
            text.push_str(&bars(out, &format!("table1_{t}.png"), &format!("One-step editing, {t}"), &rs)?);
        }
        emit(&mut readme, text)?;
        manifest(Some("table1"))?;
    }
    if want("table2") {
        let mut all = Vec::new();
        for task in [vqa, cap] {
            for k in [10, 20] {
                all.extend(run(cfg(args.methods.clone(), task, BenchMode::Sequential, k))?);
            }
        }
        let mut text = write_section(out, "table2", "Table 2: sequential editing (K = 10, 20)", &all)?;
        for t in ["vqa", "caption"] {
            for k in [10, 20] {
                let rs: Vec<BenchResult> = all.iter().filter(|r| r.task == t && r.k == k).cloned().collect();
                let file = format!("table2_{t}_k{k}.png");
                text.push_str(&bars(out, &file, &format!("Sequential editing, {t}, K = {k}"), &rs)?);
            }
        }
        emit(&mut readme, text)?;
        manifest(Some("table2"))?;
    }
    if want("table3") {
        let all = run(cfg(args.methods.clone(), BenchTask::Cross, BenchMode::Sequential, 10))?;
        let mut text = write_section(out, "table3", "Table 3: cross-task editing (K = 10: 5 E-VQA + 5 E-IC)", &all)?;
        text.push_str(&bars(out, "table3.png", "Cross-task editing, K = 10", &all)?);
        emit(&mut readme, text)?;
        manifest(Some("table3"))?;
    }
    if want("table4") {
        let variants: Vec<String> =
            ["unike:only-intrinsic", "unike:only-latent", "unike:intrinsic+ike", "unike:intrinsic+latent", "unike"]
                .map(String::from)
                .to_vec();
        let mut all = Vec::new();
        for task in [vqa, cap] {
            all.extend(run(cfg(variants.clone(), task, BenchMode::OneStep, 1))?);
        }
        let mut text = write_section(out, "table4", "Table 4: ablations (one-step)", &all)?;
        for t in ["vqa", "caption"] {
            let rs: Vec<BenchResult> = all.iter().filter(|r| r.task == t).cloned().collect();
            text.push_str(&bars(out, &format!("table4_{t}.png"), &format!("Ablations, {t}"), &rs)?);
        }
        emit(&mut readme, text)?;
        manifest(Some("table4"))?;
    }
    if want("fig4a") {
        let ks = [1usize, 5, 10, 20, 40, 80];
        let variants: Vec<String> = ks.iter().map(|k| format!("unike:intrinsic+latent/k={k}")).collect();
        let all = run(cfg(variants, vqa, BenchMode::OneStep, 1))?;
        let mut text =
            write_section(out, "fig4a", "Fig. 4a: intrinsic + latent IKE, number of retrieved states K (E-VQA)", &all)?;
        let xs: Vec<f64> = ks.iter().map(|k| *k as f64).collect();
        let vals: Vec<[f64; 5]> = all.iter().map(|r| r.metrics.five()).collect();
        metric_lines(&out.join("fig4a.png"), "Latent IKE: retrieved states K", "K", &xs, &vals)?;
        text.push_str("![Fig. 4a](fig4a.png)\n\n");
        emit(&mut readme, text)?;
        manifest(Some("fig4a"))?;
    }
    if want("fig4b") {
        // α is the in-context knowledge's share (the paper's meaning; 0: no knowledge).
        let alphas = [0.0f64, 0.2, 0.4, 0.6, 0.8];
        let mut variants: Vec<String> = alphas.iter().map(|a| format!("unike:alpha={a}")).collect();
        variants.push("unike".into());
        let all = run(cfg(variants, vqa, BenchMode::OneStep, 1))?;
        let mut text = write_section(out, "fig4b", "Fig. 4b: fixed α vs adaptive α (E-VQA)", &all)?;
        let vals: Vec<[f64; 5]> = all.iter().take(alphas.len()).map(|r| r.metrics.five()).collect();
        let x = "fixed α (the in-context knowledge's share)";
        metric_lines(&out.join("fig4b.png"), "Fixed α (adaptive: see the table)", x, &alphas, &vals)?;
        text.push_str("![Fig. 4b](fig4b.png)\n\n");
        text.push_str(&bars(out, "fig4b_bars.png", "Fixed and adaptive α", &all)?);
        emit(&mut readme, text)?;
        manifest(Some("fig4b"))?;
    }
    if want("fig4c") {
        let variants: Vec<String> =
            ["unike", "unike:zeta-none", "unike:zeta-random", "unike:zeta-semantic"].map(String::from).to_vec();
        let all = run(cfg(variants, vqa, BenchMode::OneStep, 1))?;
        let mut text = write_section(out, "fig4c", "Fig. 4c: treatments of ζ (E-VQA)", &all)?;
        text.push_str(&bars(out, "fig4c.png", "ζ treatments", &all)?);
        emit(&mut readme, text)?;
        manifest(Some("fig4c"))?;
    }
    if want("gap") {
        let mut all = Vec::new();
        for &g in &args.gaps {
            all.extend(run(Config { n: args.gap_n, ..cfg(args.methods.clone(), vqa, BenchMode::SequentialGap, g) })?);
        }
        let title = format!(
            "Sequential editing with a gap (VLKEB; E-VQA, {} cases scored per gap, each right after G later edits; k = G)",
            args.gap_n
        );
        let mut text = write_section(out, "gap", &title, &all)?;
        let mut series: Vec<(String, Vec<f64>)> = Vec::new();
        for m in &args.methods {
            let ys: Vec<f64> = args
                .gaps
                .iter()
                .filter_map(|g| all.iter().find(|r| &r.method == m && r.k == *g).map(|r| r.metrics.mean5()))
                .collect();
            if ys.len() == args.gaps.len() {
                series.push((m.clone(), ys));
            }
        }
        let xs: Vec<f64> = args.gaps.iter().map(|g| *g as f64).collect();
        series_lines(&out.join("gap.png"), "Sequential editing with a gap: mean of the five", "gap G", &xs, &series)?;
        text.push_str("![Gap protocol](gap.png)\n\n");
        emit(&mut readme, text)?;
        manifest(Some("gap"))?;
    }
    let failed = failures.into_inner();
    if !failed.is_empty() {
        let mut text = String::from("## Failed configurations\n\n");
        for f in &failed {
            text.push_str(&format!("- {f}\n"));
        }
        emit(&mut readme, text)?;
    }
    eprintln!("wrote {}", out.join("README.md").display());
    Ok(())
}
