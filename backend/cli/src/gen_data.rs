//! `unike gen-data`: the synthetic world's MMEdit / VLKEB edit sets, deterministic by seed.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use unike_core::world::{export, World};

#[derive(Args, Debug)]
pub struct GenDataArgs {
    /// World seed (the default model is trained on seed 0).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (created if missing).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: GenDataArgs) -> Result<()> {
    let world = World::generate(args.seed);
    let summary = export::write(&world, &args.out)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
