//! Starting a training run from an earlier world checkpoint (`unike train-base --init DIR`): every tensor whose
//! name and shape match is copied; the token rows of `embed_tokens` and `lm_head` are matched by token text, so a
//! tokenizer that gained words keeps the rows of the words it had. Used for pilots of a new data mix on a model
//! that already knows the world; the shipped default model is trained from scratch.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use super::Trainable;
use crate::error::{Error, Result};

/// Token-indexed tensors (rows = vocabulary).
const TOKEN_ROWS: [&str; 2] = ["language_model.model.embed_tokens.weight", "language_model.lm_head.weight"];

const LAYERS: &str = "language_model.model.layers.";

enum Grown {
    Same,
    From(String),
    Fresh,
}

/// Where decoder tensor `name` comes from when the new decoder has `new` layers and the old one `old`: the same name
/// when they agree; otherwise old layer `i` becomes new layer `round(i (new - 1) / (old - 1))` (first and last stay
/// first and last) and the layers in between are fresh.
fn grown_source(name: &str, new: usize, old: usize) -> Grown {
    let Some(rest) = name.strip_prefix(LAYERS) else { return Grown::Same };
    if new == old || old < 2 || new < old {
        return Grown::Same;
    }
    let Some((index, tail)) = rest.split_once('.') else { return Grown::Same };
    let Ok(j) = index.parse::<usize>() else { return Grown::Same };
    // `UNIKE_GROW=append` (a pilot switch): old layer `i` stays layer `i`, the new layers go on top.
    let append = std::env::var("UNIKE_GROW").is_ok_and(|v| v == "append");
    let place = |i: usize| if append { i } else { ((i * (new - 1)) as f64 / (old - 1) as f64).round() as usize };
    match (0..old).find(|&i| place(i) == j) {
        Some(i) => Grown::From(format!("{LAYERS}{i}.{tail}")),
        None => Grown::Fresh,
    }
}

/// What [`init_from`] copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    pub copied: usize,
    /// Tensors kept at their fresh initialisation (absent or of another shape in the old checkpoint).
    pub fresh: Vec<String>,
    /// Tokens of the new vocabulary without a row in the old one.
    pub new_tokens: usize,
}

/// The decoder's attention heads of the checkpoint in `dir` (its `config.json`).
pub fn checkpoint_heads(dir: &Path) -> Result<usize> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let config = crate::model::LlavaConfig::from_json_str(&text).map_err(|m| Error::config(&path, m))?;
    Ok(config.text.num_attention_heads)
}

/// Copies the weights of the checkpoint in `dir` into `t` (see the module note). `tokenizer` is the new model's.
/// The attention weights' shapes do not depend on the head count, so a checkpoint with other heads than `t` is
/// refused (its weights would be read as other heads).
pub fn init_from(t: &Trainable, tokenizer: &Tokenizer, dir: &Path, device: &Device) -> Result<InitReport> {
    let heads = checkpoint_heads(dir)?;
    if heads != t.config.text.num_attention_heads {
        return Err(Error::Invalid(format!(
            "{} has {heads} attention heads per layer; the model to train has {}",
            dir.display(),
            t.config.text.num_attention_heads
        )));
    }
    let path = dir.join("model.safetensors");
    let old = candle_core::safetensors::load(&path, device)?;
    let tok_path = dir.join("tokenizer.json");
    let old_tok =
        Tokenizer::from_file(&tok_path).map_err(|e| Error::Tokenizer(format!("{}: {e}", tok_path.display())))?;
    let new_vocab = tokenizer.get_vocab(true);
    let old_vocab: HashMap<String, u32> = old_tok.get_vocab(true);
    let data = t.varmap.data().lock().map_err(|_| Error::Invalid("variable map poisoned".into()))?;
    let mut report = InitReport { copied: 0, fresh: vec![], new_tokens: 0 };
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let layers = |keys: &mut dyn Iterator<Item = &String>| {
        keys.filter_map(|k| k.strip_prefix(LAYERS)?.split('.').next()?.parse::<usize>().ok()).max().map_or(0, |m| m + 1)
    };
    let (new_layers, old_layers) = (layers(&mut data.keys()), layers(&mut old.keys()));
    for name in names {
        let var = &data[name];
        let source = match grown_source(name, new_layers, old_layers) {
            Grown::Same => Some(name.clone()),
            Grown::From(s) => Some(s),
            Grown::Fresh => None,
        };
        let Some(src) = source.as_ref().and_then(|s| old.get(s.as_str())) else {
            // A layer the old decoder did not have starts as the identity: its output projections are zero, so the
            // residual stream passes through unchanged until it learns something.
            if name.starts_with(LAYERS)
                && (name.ends_with("self_attn.o_proj.weight") || name.ends_with("mlp.down_proj.weight"))
            {
                var.set(&var.as_tensor().zeros_like()?)?;
            }
            report.fresh.push(name.clone());
            continue;
        };
        if src.shape() == var.shape() && !TOKEN_ROWS.contains(&name.as_str()) {
            var.set(src)?;
            report.copied += 1;
        } else if TOKEN_ROWS.contains(&name.as_str()) && src.dim(1)? == var.dim(1)? {
            let mut rows: Vec<Tensor> = Vec::with_capacity(var.dim(0)?);
            let fresh = var.as_tensor();
            let mut by_id: Vec<(&String, &u32)> = new_vocab.iter().collect();
            by_id.sort_by_key(|(_, id)| **id);
            for (i, (word, id)) in by_id.iter().enumerate() {
                if **id as usize != i {
                    return Err(Error::Invalid(format!("vocabulary ids are not dense at {i}")));
                }
                match old_vocab.get(word.as_str()) {
                    Some(&o) => rows.push(src.get(o as usize)?),
                    None => {
                        report.new_tokens += 1;
                        rows.push(fresh.get(i)?);
                    }
                }
            }
            var.set(&Tensor::stack(&rows, 0)?)?;
            report.copied += 1;
        } else {
            report.fresh.push(name.clone());
        }
    }
    // Each token table counted its new words once.
    report.new_tokens /= TOKEN_ROWS.len();
    Ok(report)
}
