//! Writes a contact sheet of the synthetic world: rows of entities (six renderings each, eval pool) and scenes.
//!
//! `cargo run --release -p unike-core --example world_sheet -- OUT.png [SEED]`

use anyhow::{Context, Result};
use image::{imageops, RgbImage};
use unike_core::world::{Pool, World};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args.next().context("usage: world_sheet OUT.png [SEED]")?;
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(0);
    let w = World::generate(seed);
    let (cols, rows, s, zoom) = (8u32, 10u32, 32u32, 3u32);
    let mut sheet = RgbImage::new(cols * s * zoom, rows * s * zoom);
    for r in 0..rows {
        for c in 0..cols {
            let img = if r < 8 {
                let e = (r * 23) as usize % w.entities.len();
                w.render_entity(e, Pool::Eval, c as u64)
            } else {
                w.scene(Pool::Eval, (r * cols + c) as u64).1
            };
            let big = imageops::resize(&img, s * zoom, s * zoom, imageops::FilterType::Nearest);
            imageops::replace(&mut sheet, &big, (c * s * zoom) as i64, (r * s * zoom) as i64);
        }
    }
    sheet.save(&out)?;
    for r in 0..8u32 {
        let e = &w.entities[(r * 23) as usize % w.entities.len()];
        println!("row {r}: {} ({} {} {})", e.name, e.shape, e.colour, if e.striped { "striped" } else { "solid" });
    }
    Ok(())
}
