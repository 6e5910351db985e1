//! Greedy decoding's options and result ([`super::VisionLanguageModel::generate`]: the prompt is run once
//! (prefill), then one token per step with a KV cache).

/// Stopping rules of greedy decoding.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// At most this many new tokens (an EOS counts).
    pub max_new_tokens: usize,
    /// Stop after emitting any of these.
    pub eos_token_ids: Vec<u32>,
}

/// Result of greedy decoding.
#[derive(Debug, Clone)]
pub struct Generation {
    /// New tokens, including the EOS that stopped decoding (as transformers' `generate` returns them).
    pub tokens: Vec<u32>,
    /// Vocabulary logits at the last prompt position, f32.
    pub first_logits: Vec<f32>,
    /// True when decoding stopped on an EOS token.
    pub stopped_on_eos: bool,
}
