//! The in-context evaluation splits of `unike eval-base` (issue 14): `context_copy`, `context_follow`,
//! `context_ignore`, and the `--breakdown` diagnoses (one hard or control demonstration; two demonstrations told
//! apart by one cue). Built from the same probes and demonstrations as the training samples of [`super`], on the
//! evaluation pool of renderings.

use super::*;
/// Known (entity, relation) facts, names included.
fn facts(world: &World, known_only: bool) -> Vec<(usize, Relation)> {
    (0..N_ENTITIES)
        .flat_map(|e| Relation::ALL.map(|r| (e, r)))
        .filter(|&(e, r)| !known_only || !world.is_unknown(e, r))
        .collect()
}

/// `context_copy` (a diagnostic of the curriculum, no floor): as `context_follow`, but the demonstration shows the
/// query's own image and asks its own question, so following it is copying an exact repetition.
pub fn copy_split(world: &World, n: usize) -> Vec<Sample> {
    follow_split(world, n)
        .into_iter()
        .map(|mut s| {
            s.context[0].image = s.image.clone();
            s.context[0].question = s.question.clone();
            s
        })
        .collect()
}

/// `context_follow`: one relevant counterfactual demonstration (alternately a question-answer and a new fact) on a
/// rendering never trained; the query uses another unseen rendering and another paraphrase.
pub fn follow_split(world: &World, n: usize) -> Vec<Sample> {
    let mut rng = Rng::derive(world.seed, "eval-context-follow", 0);
    let all = facts(world, false);
    (0..n)
        .map(|i| {
            let (e, r) = *rng.choose(&all);
            let pq = paraphrase(world, e, r, None, &mut rng);
            let q = entity_probe(world, e, r, pq, Pool::Eval, rng.next_u64());
            let pd = paraphrase(world, e, r, Some(pq), &mut rng);
            let d = entity_probe(world, e, r, pd, Pool::Eval, rng.next_u64());
            let answer = counterfactual(world, &q, &mut rng);
            let form = if i % 2 == 0 { TurnForm::Qa } else { TurnForm::Fact };
            let context = vec![turn(form, &d, answer.clone())];
            Sample { copied: true, ..sample(q, answer, context) }
        })
        .collect()
}

/// `context_ignore`: 1–3 irrelevant demonstrations with counterfactual answers, the first of them hard (the same
/// relation about another entity, or the same entity with another relation), on unseen renderings; the answer is the
/// world's.
pub fn ignore_split(world: &World, n: usize) -> Vec<Sample> {
    let mut rng = Rng::derive(world.seed, "eval-context-ignore", 0);
    let known = facts(world, true);
    (0..n)
        .map(|_| {
            let (e, r) = *rng.choose(&known);
            let pq = paraphrase(world, e, r, None, &mut rng);
            let q = entity_probe(world, e, r, pq, Pool::Eval, rng.next_u64());
            let k = 1 + rng.below(3);
            let context = (0..k)
                .map(|i| {
                    let mut p = irrelevant(world, &q, (i == 0).then_some(0.5), &mut rng);
                    if let (Subject::Entity(e2, r2), Some(_)) = (p.subject, &p.image) {
                        let para = r2.paraphrases().iter().position(|x| *x == p.question).unwrap_or(0);
                        p = entity_probe(world, e2, r2, para, Pool::Eval, rng.next_u64());
                    }
                    let answer = counterfactual(world, &p, &mut rng);
                    turn(form(&mut rng), &p, answer)
                })
                .collect();
            let truth = q.truth.clone();
            sample(q, truth, context)
        })
        .collect()
}

/// Which comparison a hard irrelevant demonstration demands (the `context_ignore` breakdown of `unike eval-base
/// --breakdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HardKind {
    /// The same relation about another entity: only the two images tell them apart.
    SameRelation,
    /// The same entity with another relation: only the two questions tell them apart.
    SameEntity,
    /// Controls: the same entity with another relation, the demonstration's answer the world's own (not
    /// counterfactual); and another entity with another relation (an easy irrelevant demonstration).
    SameEntityTrue,
    OtherBoth,
    /// Control: a text fact (no image) with the world's answer, only shifting the query's positions.
    TextDemo,
    /// Control: the same entity with another relation (a counterfactual answer) on the query's *own* image, pixel
    /// for pixel: tells whether a second rendering of the entity is what disturbs the recall (then this scores
    /// high) or the match of the entity itself (then it scores as low as `SameEntity`, or lower).
    SameEntitySameImage,
}

impl HardKind {
    pub const ALL: [HardKind; 6] = [
        HardKind::SameRelation,
        HardKind::SameEntity,
        HardKind::SameEntityTrue,
        HardKind::SameEntitySameImage,
        HardKind::OtherBoth,
        HardKind::TextDemo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HardKind::SameRelation => "same_relation_other_entity",
            HardKind::SameEntity => "same_entity_other_relation",
            HardKind::SameEntityTrue => "same_entity_other_rel_true",
            HardKind::SameEntitySameImage => "same_entity_same_image",
            HardKind::OtherBoth => "other_entity_other_relation",
            HardKind::TextDemo => "text_fact_no_image",
        }
    }
}

/// A diagnostic split: one hard irrelevant demonstration of `kind` (a counterfactual answer, an unseen rendering),
/// then the query on another unseen rendering; the answer is the world's. Each sample also returns the
/// demonstration's answer and the world's answer to the query's question about the demonstration's entity, to tell
/// copying and recalling the wrong image from other errors.
pub fn hard_split(world: &World, n: usize, kind: HardKind) -> Vec<(Sample, String, String)> {
    let mut rng = Rng::derive(world.seed, "eval-context-hard", kind as u64);
    let known = facts(world, true);
    (0..n)
        .map(|i| {
            let (e, r) = *rng.choose(&known);
            let pq = paraphrase(world, e, r, None, &mut rng);
            let q = entity_probe(world, e, r, pq, Pool::Eval, rng.next_u64());
            let (e2, r2) = match kind {
                HardKind::SameRelation => ((e + 1 + rng.below(N_ENTITIES - 1)) % N_ENTITIES, r),
                HardKind::SameEntity | HardKind::SameEntityTrue | HardKind::SameEntitySameImage => {
                    let others: Vec<Relation> = Relation::ALL.into_iter().filter(|x| *x != r).collect();
                    (e, *rng.choose(&others))
                }
                HardKind::OtherBoth | HardKind::TextDemo => {
                    let others: Vec<Relation> = Relation::ALL.into_iter().filter(|x| *x != r).collect();
                    ((e + 1 + rng.below(N_ENTITIES - 1)) % N_ENTITIES, *rng.choose(&others))
                }
            };
            let para = paraphrase(world, e2, r2, None, &mut rng);
            let mut d = if kind == HardKind::TextDemo {
                text_probe(world, rng.below(world.text_facts.len()))
            } else {
                entity_probe(world, e2, r2, para, Pool::Eval, rng.next_u64())
            };
            if kind == HardKind::SameEntitySameImage {
                d.image = q.image.clone();
            }
            let answer = match kind {
                HardKind::SameEntityTrue => world.answer(e2, r2),
                HardKind::TextDemo => d.truth.clone(),
                _ => counterfactual(world, &d, &mut rng),
            };
            let form = if i % 2 == 0 { TurnForm::Qa } else { TurnForm::Fact };
            let truth = q.truth.clone();
            let recalled = world.answer(e2, r);
            (sample(q, truth, vec![turn(form, &d, answer.clone())]), answer, recalled)
        })
        .collect()
}

/// Which cue alone tells the relevant demonstration from its twin in a [`pick_split`] sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickCue {
    /// The relevant one shows the query's own image; the twin another entity's; both ask the query's question.
    ExactImage,
    /// The relevant one shows another rendering of the query's entity; the twin another entity's; both ask the
    /// query's question.
    Rendering,
    /// Both show the query's own image; the relevant one asks the query's question, the twin another relation's.
    Question,
}

impl PickCue {
    pub const ALL: [PickCue; 3] = [PickCue::ExactImage, PickCue::Rendering, PickCue::Question];

    pub fn name(self) -> &'static str {
        match self {
            PickCue::ExactImage => "pick_by_exact_image",
            PickCue::Rendering => "pick_by_rendering",
            PickCue::Question => "pick_by_question",
        }
    }
}

/// A diagnostic split: two demonstrations with different counterfactual answers, the relevant one and a twin that
/// differs from it only by `cue`, in random order; the answer is the relevant one's. Each sample also returns the
/// twin's answer.
pub fn pick_split(world: &World, n: usize, cue: PickCue) -> Vec<(Sample, String)> {
    let mut rng = Rng::derive(world.seed, "eval-context-pick", cue as u64);
    let all = facts(world, false);
    (0..n)
        .map(|i| {
            let (e, r) = *rng.choose(&all);
            let pq = paraphrase(world, e, r, None, &mut rng);
            let q = entity_probe(world, e, r, pq, Pool::Eval, rng.next_u64());
            let other = (e + 1 + rng.below(N_ENTITIES - 1)) % N_ENTITIES;
            let (relevant, twin) = match cue {
                PickCue::ExactImage | PickCue::Rendering => {
                    let mut d = q.clone();
                    if cue == PickCue::Rendering {
                        d.image = Some(world.render_entity(e, Pool::Eval, rng.next_u64()));
                    }
                    let mut t = entity_probe(world, other, r, pq, Pool::Eval, rng.next_u64());
                    t.question = q.question.clone();
                    (d, t)
                }
                PickCue::Question => {
                    let others: Vec<Relation> = Relation::ALL.into_iter().filter(|x| *x != r).collect();
                    let r2 = *rng.choose(&others);
                    let p2 = paraphrase(world, e, r2, None, &mut rng);
                    let mut t = entity_probe(world, e, r2, p2, Pool::Eval, 0);
                    t.image = q.image.clone();
                    (q.clone(), t)
                }
            };
            let a = counterfactual(world, &relevant, &mut rng);
            let mut b = counterfactual(world, &twin, &mut rng);
            while b == a {
                b = counterfactual(world, &twin, &mut rng);
            }
            let form = if i % 2 == 0 { TurnForm::Qa } else { TurnForm::Fact };
            let mut context = vec![turn(form, &relevant, a.clone()), turn(form, &twin, b.clone())];
            if rng.unit() < 0.5 {
                context.reverse();
            }
            (Sample { copied: true, ..sample(q, a, context) }, b)
        })
        .collect()
}
