//! The edit inspector's readings of one probe (issue 20 §2), computed by the model worker right after an edit: the
//! expected answer's token probabilities before and after, the patch's extra neurons on the probe (T-Patcher,
//! UniKE), SERAC's scope score, and UniKE's knowledge share and retrieved knowledge. The probe's teacher-forced
//! sequence is built once and read by each.

use unike_core::edit::inspect::{latent_retrieval, neuron_readings, serac_scope};
use unike_core::edit::unike::memory::KnowledgeMemory;
use unike_core::edit::unike::Artifacts;
use unike_core::edit::{EditSequence, Patch};
use unike_core::eval::share::knowledge_share;
use unike_core::hooks::Hooks;
use unike_core::model::Pixels;
use unike_shared::playground::{NeuronActivation, RetrievedKnowledge, ScopeScore, TokenProbability};

use super::{CoreResult, State};

/// Retrieved entries listed per probe.
const RETRIEVED_SHOWN: usize = 5;

/// What the inspector shows of one probe (the fields of [`unike_shared::playground::Probe`] it fills).
#[derive(Default)]
pub(super) struct Readings {
    pub tokens: Vec<TokenProbability>,
    pub neurons: Vec<NeuronActivation>,
    pub scope: Option<ScopeScore>,
    pub knowledge_share: Option<f64>,
    pub retrieved: Vec<RetrievedKnowledge>,
}

impl State {
    /// Reads UniKE's memory texts once they exist (a failure leaves retrieved entries unnamed, never fails an edit).
    pub(super) fn load_memory_texts(&mut self) {
        if self.memory_texts.is_none() {
            match KnowledgeMemory::triplets_of(&Artifacts::dir(&self.loaded.dir)) {
                Ok(t) => self.memory_texts = Some(t),
                Err(e) => eprintln!("studio: UniKE's memory texts could not be read: {e}"),
            }
        }
    }

    /// The readings of `question` (+ `pixels`) with answer `expected` for `patch`, under the stack `(before, after)`
    /// the patch; `own` is the edit's question and target (its own knowledge entry). Nothing for an empty expected
    /// answer.
    pub(super) fn readings(
        &self,
        question: &str,
        pixels: Option<&Pixels>,
        expected: &str,
        (before, after): (&Hooks, &Hooks),
        patch: &Patch,
        own: (&str, &str),
    ) -> CoreResult<Readings> {
        if expected.trim().is_empty() {
            return Ok(Readings::default());
        }
        let eos = self.first_eos()?;
        let p = &*self.loaded.processor;
        let model = &*self.loaded.model;
        let seq = EditSequence::new(p, question, pixels, expected, eos)?;
        let (b, a) = (seq.target_probabilities(model, before)?, seq.target_probabilities(model, after)?);
        let tokens = seq
            .targets()
            .iter()
            .zip(b.iter().zip(&a))
            .map(|(&id, (&b, &a))| {
                let token = if id == eos { "⟨end⟩".to_string() } else { p.decode(&[id])? };
                Ok(TokenProbability { token, before: f64::from(b), after: f64::from(a) })
            })
            .collect::<CoreResult<_>>()?;
        let neurons = neuron_readings(model, &seq, after, patch)?
            .into_iter()
            .map(|r| NeuronActivation {
                layer: r.layer,
                neuron: r.neuron,
                pre_activation: f64::from(r.pre_activation),
                fired: r.fired,
            })
            .collect();
        let scope = serac_scope(model, &seq, patch)?
            .map(|(score, threshold)| ScopeScore { score: f64::from(score), threshold: f64::from(threshold) });
        let (knowledge_share, retrieved) = if patch.latent.is_empty() {
            (None, Vec::new())
        } else {
            let share = knowledge_share(model, &seq, after)?.map(f64::from);
            let texts = self.memory_texts.as_deref().unwrap_or(&[]);
            let retrieved = latent_retrieval(model, &seq, after, patch, RETRIEVED_SHOWN)?
                .into_iter()
                .map(|r| {
                    let (question, answer) = match (r.own, texts.get(r.index)) {
                        (true, _) => (own.0.to_string(), own.1.to_string()),
                        (false, Some(t)) => (t.question.clone(), t.pos.clone()),
                        (false, None) => (format!("memory entry {}", r.index), String::new()),
                    };
                    RetrievedKnowledge { layer: r.layer, question, answer, own: r.own, score: f64::from(r.score) }
                })
                .collect();
            (share, retrieved)
        };
        Ok(Readings { tokens, neurons, scope, knowledge_share, retrieved })
    }
}
