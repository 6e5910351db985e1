//! Question-answer samples of the world: the training distribution (only trained facts, trained paraphrases and
//! train-pool renderings) and the held-out evaluation splits of `unike eval-base`.

use image::RgbImage;

use super::context::{copy_split, follow_split, ignore_split, training_context_sample, ContextShares, Turn};
use super::rng::Rng;
use super::scene::{caption, questions, CAPTION_PROMPTS};
use super::{Hop, Pool, Relation, World, N_ENTITIES};

/// What a sample asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    EntityFact,
    Hop,
    TextFact,
    Caption,
    SceneQuestion,
}

/// A question (with its image, if any) and the answer the model should give, after in-context demonstrations
/// when `context` is not empty (their images come first, in order).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// What the query asks about.
    pub kind: Kind,
    pub question: String,
    pub answer: String,
    pub image: Option<RgbImage>,
    pub context: Vec<Turn>,
    /// Each turn after the first, and the query, opens with `<s>` (as when demonstrations are encoded on their own
    /// and prepended, IKE's prefixes); training mixes both so the model reads either.
    pub bos_per_turn: bool,
    /// The query's answer is a demonstration's (a relevant demonstration, a drill's re-asked fact, a repetition), not
    /// the world's: what the decision term of training (`train::decision`) reads. False for samples without
    /// demonstrations, distracted ones and contexts of irrelevant demonstrations.
    pub copied: bool,
}

impl Sample {
    /// A sample without demonstrations.
    pub fn plain(kind: Kind, question: impl Into<String>, answer: impl Into<String>, image: Option<RgbImage>) -> Self {
        Self {
            kind,
            question: question.into(),
            answer: answer.into(),
            image,
            context: vec![],
            bos_per_turn: false,
            copied: false,
        }
    }

    /// The query alone: the same question, answer and image without the demonstrations.
    pub fn alone(&self) -> Self {
        Self::plain(self.kind, self.question.clone(), self.answer.clone(), self.image.clone())
    }

    /// Every image of the sample in prompt order: the demonstrations', then the query's.
    pub fn images(&self) -> impl Iterator<Item = &RgbImage> {
        self.context.iter().filter_map(|t| t.image.as_ref()).chain(self.image.as_ref())
    }
}

/// Evaluation splits of the base model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// Trained facts, trained paraphrases, renderings from the training pool.
    FactsSeen,
    /// Trained facts and paraphrases on renderings never trained on.
    RenderingsUnseen,
    /// Trained facts with the (entity, paraphrase) pair never trained.
    ParaphrasesHeldout,
    /// Every text-only fact.
    TextFacts,
    /// Captions of scenes never trained on.
    Captions,
    /// Facts never trained (the model should answer confidently, and wrongly).
    Unknown,
    /// A relevant counterfactual demonstration (another rendering and paraphrase): the answer is the demonstration's.
    ContextFollow,
    /// One to three irrelevant demonstrations, at least one hard: the answer is the world's.
    ContextIgnore,
    /// `ContextFollow` with the demonstration on the query's own image and question (a diagnostic, no floor).
    ContextCopy,
}

impl Split {
    pub const ALL: [Split; 9] = [
        Split::FactsSeen,
        Split::RenderingsUnseen,
        Split::ParaphrasesHeldout,
        Split::TextFacts,
        Split::Captions,
        Split::ContextFollow,
        Split::ContextIgnore,
        Split::ContextCopy,
        Split::Unknown,
    ];

    /// The name `eval-base` reports.
    pub fn name(self) -> &'static str {
        match self {
            Split::FactsSeen => "facts_seen",
            Split::RenderingsUnseen => "renderings_unseen",
            Split::ParaphrasesHeldout => "paraphrases_heldout",
            Split::TextFacts => "text_facts",
            Split::Captions => "captions",
            Split::Unknown => "unknown_facts",
            Split::ContextFollow => "context_follow",
            Split::ContextIgnore => "context_ignore",
            Split::ContextCopy => "context_copy",
        }
    }
}

fn known_facts(world: &World, unknown: bool) -> Vec<(usize, Relation)> {
    (0..N_ENTITIES)
        .flat_map(|e| Relation::ALL.map(|r| (e, r)))
        .filter(|&(e, r)| world.is_unknown(e, r) == unknown)
        .collect()
}

/// A trained paraphrase index of (e, r), drawn uniformly.
fn trained_paraphrase(world: &World, e: usize, r: Relation, rng: &mut Rng) -> usize {
    let n = r.paraphrases().len();
    (world.held_out_paraphrase(e, r) + 1 + rng.below(n - 1)) % n
}

/// One sample of the training distribution, with weights of the kinds
/// `[fact, hop, text, caption, scene question, in-context]`.
pub fn training_sample(world: &World, weights: [f32; 6], rng: &mut Rng) -> Sample {
    training_sample_eased(world, weights, 0.0, &ContextShares::default(), rng)
}

/// [`training_sample`] with in-context samples at curriculum ease `ease` (see
/// [`super::context::training_context_sample`]) made as `shares` says.
pub fn training_sample_eased(
    world: &World,
    weights: [f32; 6],
    ease: f32,
    shares: &ContextShares,
    rng: &mut Rng,
) -> Sample {
    let total: f32 = weights.iter().sum();
    let mut x = rng.unit() * total;
    let mut kind = weights.len() - 1;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            kind = i;
            break;
        }
        x -= w;
    }
    if kind == weights.len() - 1 {
        return training_context_sample(world, ease, shares, rng);
    }
    let mut sample = plain_training_sample(world, kind, rng);
    if shares.distract > 0.0 && rng.unit() < shares.distract {
        sample.context = crate::world::context::distractors(world, rng);
        sample.bos_per_turn = rng.unit() < 0.5;
    }
    sample
}

/// A sample without demonstrations of mix kind `kind` (0 to 4).
fn plain_training_sample(world: &World, kind: usize, rng: &mut Rng) -> Sample {
    match kind {
        0 => loop {
            let (e, r) = (rng.below(N_ENTITIES), *rng.choose(&Relation::ALL));
            if world.is_unknown(e, r) {
                continue;
            }
            let p = trained_paraphrase(world, e, r, rng);
            let image = world.render_entity(e, Pool::Train, rng.next_u64());
            break Sample::plain(Kind::EntityFact, r.paraphrases()[p], world.answer(e, r), Some(image));
        },
        1 => loop {
            let (e, h) = (rng.below(N_ENTITIES), *rng.choose(&Hop::ALL));
            if !world.hop_known(e, h) {
                continue;
            }
            let answer = world.hop_answer(e, h, None).unwrap_or_default();
            let image = world.render_entity(e, Pool::Train, rng.next_u64());
            break Sample::plain(Kind::Hop, h.question(), answer, Some(image));
        },
        2 => {
            let f = rng.choose(&world.text_facts).clone();
            Sample::plain(Kind::TextFact, f.question, f.answer, None)
        }
        3 => {
            let (objs, image) = world.scene(Pool::Train, rng.next_u64());
            Sample::plain(Kind::Caption, *rng.choose(&CAPTION_PROMPTS), caption(&objs), Some(image))
        }
        _ => {
            let (objs, image) = world.scene(Pool::Train, rng.next_u64());
            let (q, a) = rng.choose(&questions(&objs)).clone();
            Sample::plain(Kind::SceneQuestion, q, a, Some(image))
        }
    }
}

/// `n` samples of an evaluation split (all of them for `TextFacts`), deterministic by the world's seed.
pub fn eval_split(world: &World, split: Split, n: usize) -> Vec<Sample> {
    let mut rng = Rng::derive(world.seed, "eval-split", split as u64);
    let fact = |rng: &mut Rng, facts: &[(usize, Relation)], pool: Pool, held_out: bool| {
        let (e, r) = *rng.choose(facts);
        let p = if held_out { world.held_out_paraphrase(e, r) } else { trained_paraphrase(world, e, r, rng) };
        let image = world.render_entity(e, pool, rng.next_u64());
        Sample::plain(Kind::EntityFact, r.paraphrases()[p], world.answer(e, r), Some(image))
    };
    match split {
        Split::FactsSeen | Split::RenderingsUnseen | Split::ParaphrasesHeldout | Split::Unknown => {
            let facts = known_facts(world, split == Split::Unknown);
            let pool = if split == Split::RenderingsUnseen { Pool::Eval } else { Pool::Train };
            (0..n).map(|_| fact(&mut rng, &facts, pool, split == Split::ParaphrasesHeldout)).collect()
        }
        Split::TextFacts => world
            .text_facts
            .iter()
            .map(|f| Sample::plain(Kind::TextFact, f.question.as_str(), f.answer.as_str(), None))
            .collect(),
        Split::Captions => (0..n as u64)
            .map(|i| {
                let (objs, image) = world.scene(Pool::Eval, 5_000_000 + i);
                let prompt = CAPTION_PROMPTS[i as usize % CAPTION_PROMPTS.len()];
                Sample::plain(Kind::Caption, prompt, caption(&objs), Some(image))
            })
            .collect(),
        Split::ContextFollow => follow_split(world, n),
        Split::ContextIgnore => ignore_split(world, n),
        Split::ContextCopy => copy_split(world, n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_never_sees_unknown_facts_or_held_out_pairs() {
        let w = World::generate(0);
        let mut rng = Rng::new(9);
        let mut kinds = std::collections::HashSet::new();
        for _ in 0..3000 {
            let s = training_sample(&w, [4.0, 1.0, 2.0, 1.0, 1.0, 1.0], &mut rng);
            kinds.insert(s.kind);
            if s.kind == Kind::EntityFact && s.context.is_empty() {
                // Find the (entity, relation) by answer and question; no held-out or unknown pair may appear.
                let r = Relation::ALL.iter().find(|r| r.paraphrases().contains(&s.question.as_str())).copied();
                let r = r.expect("a relation paraphrase");
                let p = r.paraphrases().iter().position(|q| *q == s.question).unwrap_or(0);
                // Answers like jobs are shared by several characters: at least one owner must be a trained pair.
                assert!((0..N_ENTITIES)
                    .any(|e| w.answer(e, r) == s.answer && !w.is_unknown(e, r) && w.held_out_paraphrase(e, r) != p));
            }
            assert!(!s.answer.is_empty());
        }
        assert_eq!(kinds.len(), 5);
    }

    #[test]
    fn eval_splits_have_their_sizes_and_are_deterministic() {
        let w = World::generate(0);
        for split in Split::ALL {
            let a = eval_split(&w, split, 50);
            let b = eval_split(&w, split, 50);
            let want = if split == Split::TextFacts { w.text_facts.len() } else { 50 };
            assert_eq!(a.len(), want, "{}", split.name());
            assert!(a
                .iter()
                .zip(&b)
                .all(|(x, y)| x.question == y.question && x.answer == y.answer && x.image == y.image));
        }
        // Held-out paraphrase samples use the held-out question of a known fact.
        for s in eval_split(&w, Split::ParaphrasesHeldout, 100) {
            let r = Relation::ALL.iter().find(|r| r.paraphrases().contains(&s.question.as_str())).copied().unwrap();
            let p = r.paraphrases().iter().position(|q| *q == s.question).unwrap();
            assert!((0..N_ENTITIES).any(|e| w.answer(e, r) == s.answer && w.held_out_paraphrase(e, r) == p));
        }
    }
}
