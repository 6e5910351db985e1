//! `unike explore`: the knowledge-space explorer's projections of the UniKE memory (issue 20 §1, paper Fig. 5a) as a
//! benchmark table: per layer and projection, the points drawn, the fit time (median of `--repeat`), and how apart
//! positive and negative states lie in each space (the share of a point's ten nearest points of its own kind: 0.5
//! mixed, 1.0 apart).

use anyhow::{Context, Result};
use clap::Args;
use unike_core::edit::unike::explore::{ExploreParams, Explorer, Projection};
use unike_core::edit::unike::Artifacts;
use unike_pipeline::model_dir;

#[derive(Args, Debug)]
pub struct ExploreArgs {
    /// Model directory or `default` (its `unike/` artifacts are read; build them with `unike build-memory` and
    /// `unike train-encoders`, or any UniKE edit).
    #[arg(long, default_value = "default")]
    pub model: String,
    /// Layers (default: every layer of the memory).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "tsne,pca")]
    pub projections: Vec<String>,
    /// Triplets sampled per hallucination level.
    #[arg(long, default_value_t = ExploreParams::default().per_level)]
    pub per_level: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fits per configuration (the table shows the median time).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

pub fn parse_projection(s: &str) -> Result<Projection> {
    match s {
        "tsne" | "t-sne" => Ok(Projection::Tsne),
        "pca" => Ok(Projection::Pca),
        _ => anyhow::bail!("unknown projection {s:?} (tsne or pca)"),
    }
}

pub fn run(a: ExploreArgs) -> Result<()> {
    let dir = model_dir::resolve(&a.model)?;
    let art = Artifacts::load(&dir, &candle_core::Device::Cpu).context("loading the UniKE memory and encoders")?;
    let layers = if a.layers.is_empty() { art.memory.layers.clone() } else { a.layers.clone() };
    let projections = a.projections.iter().map(|p| parse_projection(p)).collect::<Result<Vec<_>>>()?;
    println!("memory: {} triplets, layers {:?}; {} cores", art.memory.len(), art.memory.layers, cores());
    println!(
        "| layer | projection | points | fit s (median of {}) | kind agreement raw | semantic | truthfulness |",
        a.repeat.max(1)
    );
    println!("|---|---|---|---|---|---|---|");
    for &layer in &layers {
        let enc = art.encoders.layer(layer)?;
        for &projection in &projections {
            let params = ExploreParams { projection, per_level: a.per_level, seed: a.seed, ..Default::default() };
            let mut times = Vec::new();
            let mut last = None;
            for _ in 0..a.repeat.max(1) {
                let e = Explorer::fit(&art.memory, enc, layer, &params)?;
                times.push(e.seconds);
                last = Some(e);
            }
            times.sort_by(f64::total_cmp);
            let Some(e) = last else { continue };
            let agree: Vec<String> = e.spaces.iter().map(|s| format!("{:.3}", s.kind_agreement)).collect();
            println!(
                "| {layer} | {projection:?} | {} | {:.2} | {} |",
                2 * e.sample.len(),
                times[times.len() / 2],
                agree.join(" | ")
            );
        }
    }
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
