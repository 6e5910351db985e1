//! `unike`: the command line of UniKE Studio, thin over [`unike_pipeline`] (experiments) and [`unike_server`] (the
//! studio).
//!
//! ```text
//! unike answer --model <DIR|default> --image <PATH> (--prompt <RAW> | --question <TEXT>) [--max-new-tokens N] [--json]
//! unike bench [--methods a,b] [--task vqa|caption|cross] [--mode one-step|sequential] [--k K] [--n N] [--seed S]
//!             [--data DIR] [--json] [--shard I/N --shard-out FILE | --merge FILE,...]
//! unike bench-model [--model <DIR|default>] [--iters N] [--json]
//! unike bench-stack [--methods t-patcher,unike] [--stack 10] [--edits 7] [--answers 20] [--json]
//! unike soak [--addr A] [--visitors 8] [--minutes 5] [--pid PID] [--data-dir DIR]
//! unike gen-data [--seed S] --out DIR
//! unike serve [--addr 127.0.0.1:8080] [--model <DIR|default>] [--dist DIR] [--db URL] [--workers local|external]
//! unike worker --db URL [--data-dir DIR] [--model <DIR|default>] [--kinds interactive,runs] [--lease-s 30]
//! unike train-base [--seed S] [--out models/default] [--recipe default|smoke]
//! unike eval-base [--model <DIR|default>] [--n N] [--json] [--check]
//! unike reproduce --out DIR [--n N] [--seed S] [--methods a,b] [--only table1,fig4a,...]
//! unike build-memory [--model <DIR|default>] [--n N] [--seed S]
//! unike train-encoders [--model <DIR|default>] [--steps N] [--seed S]
//! unike train-method <ke|mend|serac> [--model <DIR|default>] [--data DIR] [--steps N] [--cases N] [--seed S]
//! unike build-stats [--model <DIR|default>] [--data DIR|FILE] [--cases N]
//! ```
//!
//! Errors exit non-zero with a one-line message on stderr.

mod answer;
mod bench_api;
mod bench_edit;
mod bench_model;
mod bench_shards;
mod bench_stack;
mod bench_workers;
mod eval_base;
mod explore;
mod gen_data;
mod knowledge_share;
mod plot;
mod plot_bench;
mod reproduce;
mod soak;
mod train_base;

use clap::{Parser, Subcommand};
use unike_pipeline::{key_stats, trained, unike_artifacts};

#[derive(Parser)]
#[command(name = "unike", version, about = "UniKE Studio: multimodal knowledge editing (answer, benchmark, serve)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer a question about an image with a model (greedy decoding).
    Answer(answer::AnswerArgs),
    /// Benchmark edit methods (MMEdit / VLKEB protocol): one-step, sequential or cross-task.
    Bench(bench_edit::BenchArgs),
    /// Benchmark the model path: forward tokens/s, greedy answer latency, peak memory.
    BenchModel(bench_model::BenchArgs),
    /// Time interactive edits on a stack of earlier edits, and answers under it.
    BenchStack(bench_stack::BenchStackArgs),
    /// Latency of a running studio's API (leaderboard, answers) under a loopback load.
    BenchApi(bench_api::BenchApiArgs),
    /// Simulated visitors doing the Playground loop against a running studio: latency, errors, memory and disk growth.
    Soak(soak::SoakArgs),
    /// Write the synthetic world's edit sets (MMEdit E-VQA / E-IC JSON with VLKEB port_new, PNG images).
    GenData(gen_data::GenDataArgs),
    /// Serve the studio (front end + JSON API).
    Serve(unike_server::ServeArgs),
    /// Compute the studio's answers, edits and benchmark-run shards from its database (`unike serve --workers external`).
    Worker(unike_server::workers::WorkerArgs),
    /// Time a benchmark run computed by 1, 2, 3, … worker processes (a throw-away studio), with the queue's overheads.
    BenchWorkers(bench_workers::BenchWorkersArgs),
    /// Train the default world model from scratch (deterministic by seed) and save it as a checkpoint.
    TrainBase(train_base::TrainArgs),
    /// Evaluate a world model: greedy exact match per split, and its answers to facts it never learned.
    EvalBase(eval_base::EvalArgs),
    /// UniKE: the mean knowledge share α its latent knowledge takes on each kind of probe.
    KnowledgeShare(knowledge_share::ShareArgs),
    /// The knowledge-space explorer's projections (paper Fig. 5a) as a table: fit time and how apart positive and
    /// negative states lie in the raw, semantic and truthfulness spaces.
    Explore(explore::ExploreArgs),
    /// Reproduce the paper's tables and Fig. 4 on the world: Markdown + JSON + PNG charts into --out.
    Reproduce(reproduce::ReproduceArgs),
    /// UniKE: collect the model's wrong answers on the world and their hidden states (in-context knowledge).
    BuildMemory(unike_artifacts::MemoryArgs),
    /// UniKE: train the truthfulness and semantic encoders on the memory (Eq. 4, 5) and fit W_ζ.
    TrainEncoders(unike_artifacts::EncoderArgs),
    /// Train a baseline's network on the training split (KE, MEND, SERAC) into MODEL/<method>/.
    TrainMethod(trained::TrainMethodArgs),
    /// ROME, MEMIT, AlphaEdit: estimate the FFN key statistics on the training split into MODEL/memit/.
    BuildStats(key_stats::StatsArgs),
}

/// glibc returns every freed block above its mmap threshold to the kernel, and tensors of a training step are just
/// such blocks: re-mapping them costs as much as the arithmetic (measured: 80 training steps 36 s → 21 s, system time
/// 19 s → 1 s). Keep them in the heap instead.
fn tune_allocator() {
    #[cfg(target_os = "linux")]
    // SAFETY: mallopt only sets allocator parameters; called first thing, before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

fn main() {
    tune_allocator();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Answer(a) => answer::run(a),
        Command::Bench(a) => bench_edit::run(a),
        Command::KnowledgeShare(a) => knowledge_share::run(a),
        Command::Explore(a) => explore::run(a),
        Command::BenchModel(a) => bench_model::run(a),
        Command::BenchApi(a) => bench_api::run(a),
        Command::BenchStack(a) => bench_stack::run(a),
        Command::Soak(a) => soak::run(a),
        Command::GenData(a) => gen_data::run(a),
        Command::Serve(a) => unike_server::run(a),
        Command::Worker(a) => unike_server::workers::run(a),
        Command::BenchWorkers(a) => bench_workers::run(a),
        Command::TrainBase(a) => train_base::run(a),
        Command::EvalBase(a) => eval_base::run(a),
        Command::Reproduce(a) => reproduce::run(a),
        Command::BuildMemory(a) => unike_artifacts::build_memory(a).map_err(Into::into),
        Command::TrainEncoders(a) => unike_artifacts::train_encoders(a).map_err(Into::into),
        Command::TrainMethod(a) => trained::train_method(a).map_err(Into::into),
        Command::BuildStats(a) => key_stats::build_stats(a).map_err(Into::into),
    };
    if let Err(e) = result {
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
