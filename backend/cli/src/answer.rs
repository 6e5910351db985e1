//! `unike answer`: one greedy answer, as text or as a JSON object (the contract other tools depend on).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{ArgGroup, Args};
use serde::Serialize;
use unike_core::hooks::Hooks;
use unike_core::model::GenerateOptions;

use unike_pipeline::load;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("input").required(true).args(["prompt", "question"])))]
pub struct AnswerArgs {
    #[command(flatten)]
    pub model: load::ModelArgs,
    /// Image file (PNG or JPEG).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Raw prompt, tokenized verbatim after `<image>` expansion.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Question, wrapped in the model's prompt template.
    #[arg(long)]
    pub question: Option<String>,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Print one JSON object instead of the answer text.
    #[arg(long)]
    pub json: bool,
}

/// The `--json` object.
#[derive(Serialize)]
struct AnswerJson {
    model: String,
    prompt: String,
    input_ids: Vec<u32>,
    first_logits: Vec<f32>,
    answer_ids: Vec<u32>,
    answer: String,
    stopped_on_eos: bool,
    load_ms: f64,
    answer_ms: f64,
}

pub fn run(args: AnswerArgs) -> Result<()> {
    if args.max_new_tokens == 0 {
        anyhow::bail!("--max-new-tokens must be at least 1");
    }
    let load::Loaded { dir, ckpt, processor, model, device: dev, load_ms } = args.model.load()?;

    let prompt = match (&args.prompt, &args.question) {
        (Some(p), _) => p.clone(),
        (None, Some(q)) => processor.question_prompt(q, args.image.is_some()),
        (None, None) => unreachable!("clap requires --prompt or --question"),
    };
    let t1 = Instant::now();
    let pixels = match &args.image {
        Some(p) => Some(processor.load_image(p, &dev)?),
        None => None,
    };
    let ids = processor.encode(&prompt, pixels.as_ref())?;
    let opts = GenerateOptions { max_new_tokens: args.max_new_tokens, eos_token_ids: ckpt.eos_token_ids()? };
    let gen = model.generate(&ids, pixels.as_ref(), &Hooks::none(), &opts).context("generation failed")?;
    let answer = processor.decode(&gen.tokens)?;
    let answer_ms = t1.elapsed().as_secs_f64() * 1e3;
    if args.json {
        let out = AnswerJson {
            model: dir.display().to_string(),
            prompt,
            input_ids: ids,
            first_logits: gen.first_logits,
            answer_ids: gen.tokens,
            answer,
            stopped_on_eos: gen.stopped_on_eos,
            load_ms,
            answer_ms,
        };
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("{}", answer.trim());
    }
    Ok(())
}
