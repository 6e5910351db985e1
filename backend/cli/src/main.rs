//! `unike`: the command line of UniKE Studio.
//!
//! ```text
//! unike answer --model <DIR|default> --image <PATH> (--prompt <RAW> | --question <TEXT>) [--max-new-tokens N] [--json]
//! unike bench-model [--model <DIR|default>] [--iters N] [--json]
//! unike gen-data [--seed S] --out DIR
//! unike serve [--addr 127.0.0.1:8080] [--model <DIR|default>] [--dist DIR]
//! ```
//!
//! Errors exit non-zero with a one-line message on stderr.

mod answer;
mod bench;
mod device;
mod gen_data;
mod model_dir;
mod serve;

use clap::{Parser, Subcommand};

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
    /// Benchmark the model path: forward tokens/s, greedy answer latency, peak memory.
    BenchModel(bench::BenchArgs),
    /// Write the synthetic world's edit sets (MMEdit E-VQA / E-IC JSON with VLKEB port_new, PNG images).
    GenData(gen_data::GenDataArgs),
    /// Serve the studio (front end + JSON API).
    Serve(serve::ServeArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Answer(a) => answer::run(a),
        Command::BenchModel(a) => bench::run(a),
        Command::GenData(a) => gen_data::run(a),
        Command::Serve(a) => serve::run(a),
    };
    if let Err(e) = result {
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
