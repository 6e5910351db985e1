//! Question-answer samples of the world: the training distribution (only trained facts, trained paraphrases and
//! train-pool renderings) and the held-out evaluation splits of `unike eval-base`.

use image::RgbImage;

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

/// A question (with its image, if any) and the answer the model should give.
#[derive(Debug, Clone)]
pub struct Sample {
    pub kind: Kind,
    pub question: String,
    pub answer: String,
    pub image: Option<RgbImage>,
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
}

impl Split {
    pub const ALL: [Split; 6] = [
        Split::FactsSeen,
        Split::RenderingsUnseen,
        Split::ParaphrasesHeldout,
        Split::TextFacts,
        Split::Captions,
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

/// One sample of the training distribution, with weights of the kinds `[fact, hop, text, caption, scene question]`.
pub fn training_sample(world: &World, weights: [f32; 5], rng: &mut Rng) -> Sample {
    let total: f32 = weights.iter().sum();
    let mut x = rng.unit() * total;
    let mut kind = 4;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            kind = i;
            break;
        }
        x -= w;
    }
    match kind {
        0 => loop {
            let (e, r) = (rng.below(N_ENTITIES), *rng.choose(&Relation::ALL));
            if world.is_unknown(e, r) {
                continue;
            }
            let p = trained_paraphrase(world, e, r, rng);
            let image = world.render_entity(e, Pool::Train, rng.next_u64());
            break Sample {
                kind: Kind::EntityFact,
                question: r.paraphrases()[p].into(),
                answer: world.answer(e, r),
                image: Some(image),
            };
        },
        1 => loop {
            let (e, h) = (rng.below(N_ENTITIES), *rng.choose(&Hop::ALL));
            if !world.hop_known(e, h) {
                continue;
            }
            let answer = world.hop_answer(e, h, None).unwrap_or_default();
            let image = world.render_entity(e, Pool::Train, rng.next_u64());
            break Sample { kind: Kind::Hop, question: h.question().into(), answer, image: Some(image) };
        },
        2 => {
            let f = rng.choose(&world.text_facts).clone();
            Sample { kind: Kind::TextFact, question: f.question, answer: f.answer, image: None }
        }
        3 => {
            let (objs, image) = world.scene(Pool::Train, rng.next_u64());
            Sample {
                kind: Kind::Caption,
                question: rng.choose(&CAPTION_PROMPTS).to_string(),
                answer: caption(&objs),
                image: Some(image),
            }
        }
        _ => {
            let (objs, image) = world.scene(Pool::Train, rng.next_u64());
            let (q, a) = rng.choose(&questions(&objs)).clone();
            Sample { kind: Kind::SceneQuestion, question: q, answer: a, image: Some(image) }
        }
    }
}

/// `n` samples of an evaluation split (all of them for `TextFacts`), deterministic by the world's seed.
pub fn eval_split(world: &World, split: Split, n: usize) -> Vec<Sample> {
    let mut rng = Rng::derive(world.seed, "eval-split", split as u64);
    let fact = |rng: &mut Rng, facts: &[(usize, Relation)], pool: Pool, held_out: bool| {
        let (e, r) = *rng.choose(facts);
        let p = if held_out { world.held_out_paraphrase(e, r) } else { trained_paraphrase(world, e, r, rng) };
        Sample {
            kind: Kind::EntityFact,
            question: r.paraphrases()[p].into(),
            answer: world.answer(e, r),
            image: Some(world.render_entity(e, pool, rng.next_u64())),
        }
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
            .map(|f| Sample {
                kind: Kind::TextFact,
                question: f.question.clone(),
                answer: f.answer.clone(),
                image: None,
            })
            .collect(),
        Split::Captions => (0..n as u64)
            .map(|i| {
                let (objs, image) = world.scene(Pool::Eval, 5_000_000 + i);
                Sample {
                    kind: Kind::Caption,
                    question: CAPTION_PROMPTS[i as usize % CAPTION_PROMPTS.len()].into(),
                    answer: caption(&objs),
                    image: Some(image),
                }
            })
            .collect(),
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
            let s = training_sample(&w, [4.0, 1.0, 2.0, 1.0, 1.0], &mut rng);
            kinds.insert(s.kind);
            if s.kind == Kind::EntityFact {
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
