//! The world's tokenizer, built with the `tokenizers` crate: word level over the world's vocabulary, whitespace
//! and isolated punctuation pre-tokenization, `<s>` prepended by the post-processor, and the special tokens
//! `<unk> <s> </s> <pad> <image>` at ids 0-4.

use std::collections::HashMap;

use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::World;
use crate::error::{Error, Result};

/// Special tokens, in id order.
pub const SPECIALS: [&str; 5] = ["<unk>", "<s>", "</s>", "<pad>", "<image>"];
/// Ids of the specials.
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
pub const PAD: u32 = 3;
pub const IMAGE: u32 = 4;

fn terr(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// Builds the tokenizer of `world` (plus the words of the llava-1.5 prompt template).
pub fn build(world: &World) -> Result<Tokenizer> {
    let mut vocab: HashMap<String, u32> = HashMap::new();
    for (i, s) in SPECIALS.iter().enumerate() {
        vocab.insert(s.to_string(), i as u32);
    }
    let mut words = world.vocabulary();
    // The llava-1.5 template and the new-fact demonstration (`model::processor::NEW_FACT`).
    for w in ["USER", "ASSISTANT", ":", "new", "fact"] {
        words.insert(w.to_string());
    }
    for w in words {
        let n = vocab.len() as u32;
        vocab.entry(w).or_insert(n);
    }
    let model =
        WordLevel::builder().vocab(vocab.into_iter().collect()).unk_token("<unk>".into()).build().map_err(terr)?;
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Sequence::new(vec![
        WhitespaceSplit.into(),
        Punctuation::new(SplitDelimiterBehavior::Isolated).into(),
    ])));
    let post = TemplateProcessing::builder()
        .try_single("<s> $A")
        .map_err(terr)?
        .try_pair("<s> $A <s> $B")
        .map_err(terr)?
        .special_tokens(vec![("<s>", BOS)])
        .build()
        .map_err(terr)?;
    tok.with_post_processor(Some(post));
    tok.add_special_tokens(SPECIALS.map(|s| AddedToken::from(s, true))).map_err(terr)?;
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_text_tokenizes_without_unknowns() {
        let w = World::generate(0);
        let tok = build(&w).unwrap();
        assert_eq!(tok.token_to_id("<image>"), Some(IMAGE));
        assert_eq!(tok.token_to_id("</s>"), Some(EOS));
        let q = format!("USER: <image><image>\n{} ASSISTANT:", w.entities[0].name);
        let enc = tok.encode(q.as_str(), true).unwrap();
        let ids = enc.get_ids();
        assert_eq!(ids[0], BOS);
        assert_eq!(ids.iter().filter(|&&i| i == IMAGE).count(), 2);
        assert!(!ids.contains(&0), "no <unk> in {:?}", enc.get_tokens());
        for f in &w.text_facts {
            let e = tok.encode(format!("{} {}", f.question, f.answer).as_str(), false).unwrap();
            assert!(!e.get_ids().contains(&0), "{:?}", e.get_tokens());
        }
        let team = &w.teams[0].name;
        let ids = tok.encode(team.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(&tok.decode(&ids, true).unwrap(), team);
    }
}
