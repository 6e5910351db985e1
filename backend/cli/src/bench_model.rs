//! `unike bench-model`: speed and memory of the model path on one machine, as a Markdown table (or JSON).
//!
//! Rows: vision + prefill forward (tokens/s), batched teacher-forced forward (tokens/s), cached greedy decoding
//! (tokens/s), end-to-end greedy answer latency (preprocess + tokenize + generate; median and p90), peak resident
//! memory (VmHWM). Every timing is the median over `--iters` runs after two warm-up runs.

use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;
use clap::Args;
use serde::Serialize;
use unike_core::hooks::{Capture, Hooks};
use unike_core::model::{GenerateOptions, Pixels};

use unike_pipeline::load;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: load::ModelArgs,
    /// Timed runs per row.
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// New tokens per greedy answer.
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: usize,
    /// Sequences in the batched forward.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only load the model and report load time, weight bytes and peak memory (for checkpoints too big to run).
    #[arg(long)]
    pub load_only: bool,
}

#[derive(Serialize)]
struct Report {
    model: String,
    device: String,
    dtype: String,
    threads: usize,
    prompt_tokens: usize,
    load_ms: f64,
    prefill_ms_median: f64,
    prefill_tokens_per_s: f64,
    batch: usize,
    batch_forward_ms_median: f64,
    batch_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    answer_ms_median: f64,
    answer_ms_p90: f64,
    answer_new_tokens: usize,
    peak_rss_mib: Option<f64>,
}

fn time<F: FnMut() -> Result<()>>(iters: usize, mut f: F) -> Result<Vec<f64>> {
    for _ in 0..2 {
        f()?;
    }
    let mut out = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// The `q` quantile of ascending `sorted` (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(args: BenchArgs) -> Result<()> {
    anyhow::ensure!(
        args.iters > 0 && args.batch > 0 && args.max_new_tokens > 1,
        "--iters, --batch must be > 0 and --max-new-tokens > 1"
    );
    let load::Loaded { dir, ckpt, processor, model, device: dev, load_ms } = args.model.load()?;
    if args.load_only {
        let weights_mib = ckpt.num_parameters() as f64 * model.dtype().size_in_bytes() as f64 / (1024.0 * 1024.0);
        let files_mib =
            ckpt.weight_files().iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len() as f64).sum::<f64>()
                / (1024.0 * 1024.0);
        let rss = peak_rss_mib();
        let out = serde_json::json!({
            "model": dir.display().to_string(), "dtype": format!("{:?}", model.dtype()).to_lowercase(),
            "parameters": ckpt.num_parameters(), "load_ms": load_ms, "weight_files_mib": files_mib,
            "weights_in_memory_mib": weights_mib, "peak_rss_mib": rss,
        });
        if args.json {
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!("| measure | value |\n|---|---|");
            println!("| parameters | {} |", ckpt.num_parameters());
            println!("| load (open + map + materialise) | {load_ms:.0} ms |");
            println!("| weight files on disk | {files_mib:.0} MiB |");
            println!("| weights in memory ({:?}) | {weights_mib:.0} MiB |", model.dtype());
            match rss {
                Some(m) => println!("| peak resident memory (VmHWM) | {m:.0} MiB |"),
                None => println!("| peak resident memory | n/a on this OS |"),
            }
        }
        return Ok(());
    }

    // A synthetic image at the tower's resolution (a gradient with a square), so no file is needed; a little wider
    // when the processor resizes, so resizing is part of the measured path.
    // Qwen2-VL takes any size (dynamic resolution): 56 px, four merged patches.
    let s = match ckpt.summary().image_size {
        0 => 56,
        n => n as u32,
    };
    let resizes = match processor.as_any().downcast_ref::<unike_core::model::Processor>() {
        Some(p) => p.image_processor().resize.is_some(),
        None => true,
    };
    let extra = if resizes { 7 } else { 0 };
    let img = image::RgbImage::from_fn(s + extra, s, |x, y| {
        let inside = x > s / 4 && x < 3 * s / 4 && y > s / 4 && y < 3 * s / 4;
        image::Rgb([(x * 255 / s) as u8, (y * 255 / s) as u8, if inside { 230 } else { 20 }])
    });
    let prompt = processor.question_prompt("what is in the picture?", true);
    let pixels = processor.preprocess(&img, &dev)?;
    let ids = processor.encode(&prompt, Some(&pixels))?;
    let n = ids.len();
    let hooks = Hooks::none();

    let prefill = time(args.iters, || {
        let t = Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?;
        let e = model.embed(&t, Some(&pixels))?;
        let h = model.forward_inputs(&e, None, &hooks, &mut Capture::none())?;
        model.logits(&h.narrow(1, n - 1, 1)?)?;
        Ok(())
    })?;
    let batch_ids = Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?.repeat((args.batch, 1))?;
    let batch_px = Pixels::cat(&vec![&pixels; args.batch])?;
    let batched = time(args.iters, || {
        model.forward(&batch_ids, batch_px.as_ref(), &hooks)?;
        Ok(())
    })?;
    let gen_n = GenerateOptions { max_new_tokens: args.max_new_tokens, eos_token_ids: vec![] };
    let gen_1 = GenerateOptions { max_new_tokens: 1, eos_token_ids: vec![] };
    let long = time(args.iters, || {
        model.generate(&ids, Some(&pixels), &hooks, &gen_n)?;
        Ok(())
    })?;
    let short = time(args.iters, || {
        model.generate(&ids, Some(&pixels), &hooks, &gen_1)?;
        Ok(())
    })?;
    let per_token_ms = (quantile(&long, 0.5) - quantile(&short, 0.5)).max(1e-9) / (args.max_new_tokens - 1) as f64;
    let eos = ckpt.eos_token_ids()?;
    let mut new_tokens = 0;
    let answer = time(args.iters, || {
        let px = processor.preprocess(&img, &dev)?;
        let ids = processor.encode(&prompt, Some(&px))?;
        let opts = GenerateOptions { max_new_tokens: args.max_new_tokens, eos_token_ids: eos.clone() };
        let g = model.generate(&ids, Some(&px), &hooks, &opts)?;
        processor.decode(&g.tokens)?;
        new_tokens = g.tokens.len();
        Ok(())
    })?;
    let report = Report {
        model: dir.display().to_string(),
        device: load::device_name(&dev),
        dtype: format!("{:?}", model.dtype()).to_lowercase(),
        threads: candle_core::utils::get_num_threads(),
        prompt_tokens: n,
        load_ms,
        prefill_ms_median: quantile(&prefill, 0.5),
        prefill_tokens_per_s: n as f64 / quantile(&prefill, 0.5) * 1e3,
        batch: args.batch,
        batch_forward_ms_median: quantile(&batched, 0.5),
        batch_tokens_per_s: (n * args.batch) as f64 / quantile(&batched, 0.5) * 1e3,
        decode_tokens_per_s: 1e3 / per_token_ms,
        answer_ms_median: quantile(&answer, 0.5),
        answer_ms_p90: quantile(&answer, 0.9),
        answer_new_tokens: new_tokens,
        peak_rss_mib: peak_rss_mib(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let r = &report;
    println!(
        "model: {} ({}, {}, {} threads), prompt {} tokens incl. image, {} timed runs per row\n",
        r.model, r.device, r.dtype, r.threads, r.prompt_tokens, args.iters
    );
    println!("| measure | value |\n|---|---|");
    println!("| load (open + map + materialise) | {:.1} ms |", r.load_ms);
    println!(
        "| prefill forward (vision + decoder), median | {:.2} ms = {:.0} tokens/s |",
        r.prefill_ms_median, r.prefill_tokens_per_s
    );
    println!(
        "| batched forward, batch {}, median | {:.2} ms = {:.0} tokens/s |",
        r.batch, r.batch_forward_ms_median, r.batch_tokens_per_s
    );
    println!("| cached greedy decoding | {:.0} tokens/s |", r.decode_tokens_per_s);
    println!(
        "| greedy answer ({} new tokens), median / p90 | {:.2} / {:.2} ms |",
        r.answer_new_tokens, r.answer_ms_median, r.answer_ms_p90
    );
    match r.peak_rss_mib {
        Some(m) => println!("| peak resident memory (VmHWM) | {m:.1} MiB |"),
        None => println!("| peak resident memory | n/a on this OS |"),
    }
    Ok(())
}
