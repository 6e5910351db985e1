//! In-context samples of the world (issue 14): a context of 1–4 demonstrations, then a query. The model learns to
//! *use* a relevant demonstration (same subject, another rendering and paraphrase, usually a counterfactual answer:
//! the query's answer is the demonstration's) and to *ignore* irrelevant ones, hard ones included (the same relation
//! about another entity, the same entity with another relation); the query's answer is then the world's.
//!
//! A demonstration is a single turn ([`TurnForm::Qa`] or [`TurnForm::Fact`]) or an IKE-style block: a new fact
//! followed by a question answered with it (EasyEdit's *copy* / *update* demonstrations) or by an unrelated question
//! answered as the world does (*retain*). Facts the world marks unknown are only ever shown with counterfactual
//! answers, so their truth stays untrained.

use image::RgbImage;

use super::lexicon::{COLOURS, CONTINENTS, CURRENCIES, LANDMARKS, LANGUAGES, MASCOTS, NUMBERS, SCENE_COLOURS};
use super::rng::Rng;
use super::samples::{Kind, Sample};
use super::scene::{caption, questions, CAPTION_PROMPTS, SLOTS};
use super::{Pool, Relation, World, N_ENTITIES};
use crate::model::processor::{TurnForm, TurnText};

mod splits;
pub use splits::{copy_split, follow_split, hard_split, ignore_split, pick_split, HardKind, PickCue};

/// One demonstration turn with its image.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub form: TurnForm,
    pub question: String,
    pub answer: String,
    pub image: Option<RgbImage>,
    /// Training also supervises this turn's answer: it follows from the turns before it (the second turn of an
    /// IKE-style block) or is the world's own answer to a plain question.
    pub supervised: bool,
}

impl Turn {
    /// The text parts, for [`crate::model::Processor::context_prompt`].
    pub fn text(&self) -> TurnText<'_> {
        TurnText { form: self.form, question: &self.question, answer: &self.answer, with_image: self.image.is_some() }
    }
}

/// What a question is about: contexts are relevant to a query exactly when they assert the same subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Entity(usize, Relation),
    /// A scene by its pool and index, and which question (usize::MAX: its caption).
    Scene(Pool, u64, usize),
    Text(usize),
}

/// A question about a subject, with the world's answer and the answers a counterfactual may take.
#[derive(Clone)]
struct Probe {
    subject: Subject,
    question: String,
    truth: String,
    /// True when the world's answer may be shown (false for never-trained facts).
    truth_showable: bool,
    image: Option<RgbImage>,
}

fn entity_probe(world: &World, e: usize, r: Relation, paraphrase: usize, pool: Pool, render: u64) -> Probe {
    Probe {
        subject: Subject::Entity(e, r),
        question: r.paraphrases()[paraphrase].to_string(),
        truth: world.answer(e, r),
        truth_showable: !world.is_unknown(e, r),
        image: Some(world.render_entity(e, pool, render)),
    }
}

/// A trained paraphrase of (e, r) other than `not` (when there is one).
fn paraphrase(world: &World, e: usize, r: Relation, not: Option<usize>, rng: &mut Rng) -> usize {
    let n = r.paraphrases().len();
    let held = world.held_out_paraphrase(e, r);
    let options: Vec<usize> = (0..n).filter(|&p| p != held && Some(p) != not).collect();
    *rng.choose(&options)
}

/// A scene question (`which` = index into its questions, usize::MAX = caption) of scene `index`, rendered anew
/// with `render` when given (another image of the same scene).
fn scene_probe(world: &World, pool: Pool, index: u64, which: usize, render: Option<u64>, rng: &mut Rng) -> Probe {
    let (objs, img) = world.scene(pool, index);
    let image = match render {
        Some(k) => world.rerender_scene(&objs, k),
        None => img,
    };
    let (question, truth) = if which == usize::MAX {
        (rng.choose(&CAPTION_PROMPTS).to_string(), caption(&objs))
    } else {
        let qs = questions(&objs);
        qs[which % qs.len()].clone()
    };
    Probe { subject: Subject::Scene(pool, index, which), question, truth, truth_showable: true, image: Some(image) }
}

fn text_probe(world: &World, i: usize) -> Probe {
    let f = &world.text_facts[i];
    Probe {
        subject: Subject::Text(i),
        question: f.question.clone(),
        truth: f.answer.clone(),
        truth_showable: true,
        image: None,
    }
}

/// The answers of the same type as `truth` (the counterfactual pool of a question).
fn answer_pool(world: &World, subject: Subject, truth: &str) -> Vec<String> {
    let words = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match subject {
        Subject::Entity(_, r) => world.answer_pool(r),
        Subject::Scene(..) if truth.starts_with("a ") => {
            // Captions: another caption of as many objects, from the scene vocabulary.
            let n = truth.split(" and ").count();
            (0..u64::MAX)
                .map(|k| super::scene::random_scene(&mut Rng::derive(world.seed, "context-caption", k)))
                .filter(|objs| objs.len() == n)
                .take(24)
                .map(|objs| caption(&objs))
                .collect()
        }
        Subject::Scene(..) if NUMBERS[..5].contains(&truth) => words(&NUMBERS[..5]),
        Subject::Scene(..) if SLOTS.contains(&truth) => words(&SLOTS),
        Subject::Scene(..) => SCENE_COLOURS.iter().map(|&c| COLOURS[c].0.to_string()).collect(),
        Subject::Text(_) => {
            let pools: [Vec<String>; 9] = [
                world.cities.iter().map(|c| c.name.clone()).collect(),
                world.countries.iter().map(|c| c.name.clone()).collect(),
                world.cities.iter().map(|c| c.river.clone()).collect(),
                words(&MASCOTS),
                COLOURS.iter().map(|c| c.0.to_string()).collect(),
                words(&LANDMARKS),
                words(&CONTINENTS),
                words(&LANGUAGES),
                words(&CURRENCIES),
            ];
            pools.into_iter().find(|p| p.iter().any(|a| a == truth)).unwrap_or_else(|| words(&NUMBERS))
        }
    }
}

/// A counterfactual answer of `probe`: from its answer pool, never the world's answer.
fn counterfactual(world: &World, probe: &Probe, rng: &mut Rng) -> String {
    let pool: Vec<String> =
        answer_pool(world, probe.subject, &probe.truth).into_iter().filter(|a| *a != probe.truth).collect();
    if pool.is_empty() {
        return NUMBERS[rng.below(NUMBERS.len())].to_string();
    }
    rng.choose(&pool).clone()
}

fn turn(form: TurnForm, probe: &Probe, answer: String) -> Turn {
    Turn { form, question: probe.question.clone(), answer, image: probe.image.clone(), supervised: false }
}

fn form(rng: &mut Rng) -> TurnForm {
    if rng.unit() < 0.5 {
        TurnForm::Qa
    } else {
        TurnForm::Fact
    }
}

/// The query of a context sample, by kind: entity fact (most), caption, scene question, text fact.
fn query(world: &World, rng: &mut Rng) -> Probe {
    let x = rng.unit();
    if x < 0.6 {
        let (e, r) = (rng.below(N_ENTITIES), *rng.choose(&Relation::ALL));
        let p = paraphrase(world, e, r, None, rng);
        entity_probe(world, e, r, p, Pool::Train, rng.next_u64())
    } else if x < 0.75 {
        let index = rng.next_u64();
        scene_probe(world, Pool::Train, index, usize::MAX, None, rng)
    } else if x < 0.87 {
        let (index, which) = (rng.next_u64(), rng.below(16));
        scene_probe(world, Pool::Train, index, which, None, rng)
    } else {
        text_probe(world, rng.below(world.text_facts.len()))
    }
}

/// Another question about the query's own subject: another rendering, usually another paraphrase.
fn same_subject(world: &World, q: &Probe, pool: Pool, rng: &mut Rng) -> Probe {
    match q.subject {
        Subject::Entity(e, r) => {
            let current = r.paraphrases().iter().position(|p| *p == q.question);
            let not = if rng.unit() < 0.75 { current } else { None };
            let p = paraphrase(world, e, r, not, rng);
            entity_probe(world, e, r, p, pool, rng.next_u64())
        }
        Subject::Scene(scene_pool, index, which) => {
            let render = rng.next_u64();
            let mut p = scene_probe(world, scene_pool, index, which, Some(render), rng);
            if which != usize::MAX {
                p.question = q.question.clone();
            }
            p
        }
        Subject::Text(i) => text_probe(world, i),
    }
}

/// An irrelevant question; `hard` ones (`Some(same_entity)`) share the query's relation (another entity) or, with
/// probability `same_entity`, its entity (another relation).
fn irrelevant(world: &World, q: &Probe, hard: Option<f32>, rng: &mut Rng) -> Probe {
    match (q.subject, hard) {
        (Subject::Entity(e, r), Some(same_entity)) => {
            if rng.unit() < 1.0 - same_entity {
                let other = (e + 1 + rng.below(N_ENTITIES - 1)) % N_ENTITIES;
                let p = paraphrase(world, other, r, None, rng);
                entity_probe(world, other, r, p, Pool::Train, rng.next_u64())
            } else {
                let others: Vec<Relation> = Relation::ALL.into_iter().filter(|x| *x != r).collect();
                let r2 = *rng.choose(&others);
                let p = paraphrase(world, e, r2, None, rng);
                entity_probe(world, e, r2, p, Pool::Train, rng.next_u64())
            }
        }
        (Subject::Scene(_, _, which), Some(_)) => {
            let index = rng.next_u64();
            scene_probe(world, Pool::Train, index, which, None, rng)
        }
        (Subject::Text(i), Some(_)) => {
            text_probe(world, (i + 1 + rng.below(world.text_facts.len() - 1)) % world.text_facts.len())
        }
        _ => loop {
            let p = query(world, rng);
            if p.subject != q.subject {
                break p;
            }
        },
    }
}

/// 1–3 easy irrelevant demonstrations (random subjects) to put in front of a plain question.
pub fn distractors(world: &World, rng: &mut Rng) -> Vec<Turn> {
    let n = 1 + rng.below(3);
    let mut out = Vec::new();
    for _ in 0..n {
        let anchor = query(world, rng);
        out.extend(irrelevant_demo(world, &anchor, None, rng));
    }
    out
}

/// An irrelevant demonstration: a single turn or an IKE-style block (new fact + update, or new fact + retain).
fn irrelevant_demo(world: &World, q: &Probe, hard: Option<f32>, rng: &mut Rng) -> Vec<Turn> {
    let p = irrelevant(world, q, hard, rng);
    let answer = if !p.truth_showable || rng.unit() < 0.6 { counterfactual(world, &p, rng) } else { p.truth.clone() };
    if rng.unit() < 0.25 {
        let second = if rng.unit() < 0.5 {
            let again = same_subject(world, &p, Pool::Train, rng);
            turn(TurnForm::Qa, &again, answer.clone())
        } else {
            let other = irrelevant(world, q, None, rng);
            if other.subject == p.subject || !other.truth_showable {
                return vec![turn(TurnForm::Fact, &p, answer)];
            }
            turn(TurnForm::Qa, &other, other.truth.clone())
        };
        let second = Turn { supervised: true, ..second };
        vec![turn(TurnForm::Fact, &p, answer), second]
    } else {
        let single = turn(form(rng), &p, answer);
        // A plain question answered as the world does is supervised as any question is.
        let supervised = single.form == TurnForm::Qa && single.answer == p.truth && p.truth_showable;
        vec![Turn { supervised, ..single }]
    }
}

/// The relevant demonstration of `q` with answer `answer`: one turn, or a new fact then a question using it.
fn relevant_demo(world: &World, q: &Probe, answer: &str, pool: Pool, rng: &mut Rng) -> Vec<Turn> {
    let d = same_subject(world, q, pool, rng);
    if rng.unit() < 0.35 {
        let again = same_subject(world, q, pool, rng);
        let second = Turn { supervised: true, ..turn(TurnForm::Qa, &again, answer.to_string()) };
        vec![turn(TurnForm::Fact, &d, answer.to_string()), second]
    } else {
        vec![turn(form(rng), &d, answer.to_string())]
    }
}

fn sample(q: Probe, answer: String, context: Vec<Turn>) -> Sample {
    let kind = match q.subject {
        Subject::Entity(..) => Kind::EntityFact,
        Subject::Scene(_, _, usize::MAX) => Kind::Caption,
        Subject::Scene(..) => Kind::SceneQuestion,
        Subject::Text(_) => Kind::TextFact,
    };
    Sample { kind, question: q.question, answer, image: q.image, context, bos_per_turn: false, copied: false }
}

/// One in-context training sample: 1–4 demonstrations (half the time one of them relevant, with a counterfactual
/// answer the query must give), then the query. `ease` is a curriculum knob: the probability that the relevant
/// demonstration shows the query's own image, and (independently) asks the query's own question, so that early in
/// training the relevant demonstration can be found by exact repetition before it must be found across renderings
/// and paraphrases. 0 is the target distribution.
pub fn training_context_sample(world: &World, ease: f32, shares: &ContextShares, rng: &mut Rng) -> Sample {
    let x = rng.unit();
    if x < shares.repeat {
        return repeat_sample(world, rng);
    }
    if x < shares.repeat + shares.drill {
        return drill_sample(world, ease, shares, rng);
    }
    let n = match rng.unit() {
        x if x < 0.35 => 1,
        x if x < 0.65 => 2,
        x if x < 0.85 => 3,
        _ => 4,
    };
    let relevant = rng.unit() < shares.relevant;
    let q = loop {
        let q = query(world, rng);
        // Without a relevant demonstration the answer is the world's: only facts the world may teach.
        if relevant || q.truth_showable {
            break q;
        }
    };
    let at = rng.below(n);
    let mut context = Vec::new();
    let mut answer = q.truth.clone();
    for i in 0..n {
        if relevant && i == at {
            // Mostly counterfactual; sometimes the truth restated (when the world may show it).
            answer =
                if q.truth_showable && rng.unit() < 0.15 { q.truth.clone() } else { counterfactual(world, &q, rng) };
            let mut demo = relevant_demo(world, &q, &answer, Pool::Train, rng);
            if rng.unit() < ease {
                demo[0].image = q.image.clone();
            }
            if rng.unit() < ease {
                demo[0].question = q.question.clone();
            }
            context.extend(demo);
        } else {
            let hard = rng.unit() < shares.hard;
            context.extend(irrelevant_demo(world, &q, hard.then_some(shares.hard_same_entity), rng));
        }
    }
    let mut s = sample(q, answer, context);
    s.bos_per_turn = rng.unit() < 0.5;
    s.copied = relevant;
    s
}

/// What in-context training samples are made of (part of the training recipe).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ContextShares {
    /// Share of repetitions (see [`repeat_sample`]).
    pub repeat: f32,
    /// Share of drills (see [`drill_sample`]).
    pub drill: f32,
    /// Of the remaining contexts, the share that holds a relevant demonstration (the others teach ignoring).
    pub relevant: f32,
    /// The share of irrelevant demonstrations that are hard (the query's relation about another entity, or its entity
    /// with another relation); the others are any other question.
    #[serde(default = "half")]
    pub hard: f32,
    /// Of the hard irrelevant demonstrations about an entity, the share about the query's own entity (another
    /// relation); the others ask the query's relation about another entity.
    #[serde(default = "half")]
    pub hard_same_entity: f32,
    /// The share of drills whose facts share the relation (told apart by their images only).
    #[serde(default)]
    pub drill_same_relation: f32,
    /// The share of drills whose facts share the entity (told apart by their questions only).
    #[serde(default)]
    pub drill_same_entity: f32,
    /// Of the drills on one entity or one relation, the share whose final query asks a fact the drill did not state
    /// (the entity's other relation, or the relation about another entity): after copying the re-asked facts, the
    /// world's answer must be recalled (older recipes: 0).
    #[serde(default)]
    pub drill_recall: f32,
    /// The share of *plain* samples (facts, hops, text facts, captions, scene questions) that get 1–3 easy irrelevant
    /// demonstrations in front, their answer unchanged: recall must work behind a prefix (older recipes: 0).
    #[serde(default)]
    pub distract: f32,
}

fn half() -> f32 {
    0.5
}

impl ContextShares {
    /// The shares the shipped default model was trained with (issue 14's run "full4"): more drills, mostly hard
    /// irrelevant demonstrations, drills told apart by their images (60 %) or their questions (20 %), and easy
    /// demonstrations in front of 40 % of plain samples.
    pub fn shipped() -> Self {
        Self {
            repeat: 0.2,
            drill: 0.4,
            relevant: 0.5,
            hard: 0.7,
            hard_same_entity: 0.5,
            drill_same_relation: 0.6,
            drill_same_entity: 0.2,
            drill_recall: 0.0,
            distract: 0.4,
        }
    }
}

impl Default for ContextShares {
    /// The shares of the first in-context recipes (2026-12-03).
    fn default() -> Self {
        Self {
            repeat: 0.2,
            drill: 0.3,
            relevant: 0.5,
            hard: 0.5,
            hard_same_entity: 0.5,
            drill_same_relation: 0.0,
            drill_same_entity: 0.0,
            drill_recall: 0.0,
            distract: 0.0,
        }
    }
}

/// A repetition: 1–3 text-only new facts whose questions are strings of 3–8 random words of the vocabulary, then
/// one of them asked again word for word: the answer can only be copied (the induction that language-model
/// pretraining gives real models; here the prompt's language-model term supervises the copied question too).
fn repeat_sample(world: &World, rng: &mut Rng) -> Sample {
    repeat_words(world, 1 + rng.below(3), 3, 8, rng)
}

fn repeat_words(world: &World, k: usize, min: usize, max: usize, rng: &mut Rng) -> Sample {
    let words = world.words();
    let turns: Vec<Turn> = (0..k)
        .map(|_| {
            let n = min + rng.below(max - min + 1);
            let question = (0..n).map(|_| rng.choose(words).clone()).collect::<Vec<_>>().join(" ");
            let answer = rng.choose(words).clone();
            Turn { form: form(rng), question, answer, image: None, supervised: false }
        })
        .collect();
    let pick = rng.below(k);
    let (question, answer) = (turns[pick].question.clone(), turns[pick].answer.clone());
    let mut s = Sample {
        kind: Kind::TextFact,
        question,
        answer,
        image: None,
        context: turns,
        bos_per_turn: false,
        copied: true,
    };
    s.bos_per_turn = rng.unit() < 0.5;
    s
}

/// A drill: 2–4 new facts with counterfactual answers (text facts, or entity facts on images), then the same facts
/// asked again in another order, every answer supervised: the densest lesson in reading a context. Re-asked entity
/// facts use another rendering (and with probability 1 - `ease`, another paraphrase).
fn drill_sample(world: &World, ease: f32, shares: &ContextShares, rng: &mut Rng) -> Sample {
    let k = 2 + rng.below(3);
    // Which facts are drilled: any (text facts or entity facts on images), or entity facts that share the relation
    // (only the images tell them apart), or the entity (only the questions do): the densest lesson in telling a
    // relevant demonstration from a hard irrelevant one.
    let x = rng.unit();
    let (with_images, same_relation, same_entity) = if x < shares.drill_same_relation {
        (true, Some(*rng.choose(&Relation::ALL)), None)
    } else if x < shares.drill_same_relation + shares.drill_same_entity {
        (true, None, Some(rng.below(N_ENTITIES)))
    } else {
        (rng.unit() < 0.4, None, None)
    };
    let k = if same_entity.is_some() { k.min(Relation::ALL.len()) } else { k };
    let mut probes: Vec<Probe> = Vec::with_capacity(k);
    while probes.len() < k {
        let p = if with_images {
            let e = same_entity.unwrap_or_else(|| rng.below(N_ENTITIES));
            let r = same_relation.unwrap_or_else(|| *rng.choose(&Relation::ALL));
            let para = paraphrase(world, e, r, None, rng);
            entity_probe(world, e, r, para, Pool::Train, rng.next_u64())
        } else {
            text_probe(world, rng.below(world.text_facts.len()))
        };
        if probes.iter().all(|x| x.subject != p.subject) {
            probes.push(p);
        }
    }
    // Distinct answers, so that answering from the wrong demonstration is an error.
    let mut answers: Vec<String> = Vec::with_capacity(k);
    for p in &probes {
        let mut a = counterfactual(world, p, rng);
        for _ in 0..8 {
            if !answers.contains(&a) {
                break;
            }
            a = counterfactual(world, p, rng);
        }
        answers.push(a);
    }
    let mut context: Vec<Turn> = probes.iter().zip(&answers).map(|(p, a)| turn(form(rng), p, a.clone())).collect();
    let mut order: Vec<usize> = (0..k).collect();
    for i in (1..k).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut asks: Vec<(Probe, String)> = order
        .into_iter()
        .map(|i| {
            let again =
                if rng.unit() < ease { probes[i].clone() } else { same_subject(world, &probes[i], Pool::Train, rng) };
            (again, answers[i].clone())
        })
        .collect();
    let (mut last, mut answer) = asks.pop().unwrap_or_else(|| (probes[0].clone(), answers[0].clone()));
    let mut copied = true;
    // Sometimes the query is a fact the drill did not state, about its entity or with its relation: after the
    // re-asked facts (copied), the world's answer (recalled). Draws nothing when the share is 0.
    if (same_entity.is_some() || same_relation.is_some())
        && shares.drill_recall > 0.0
        && rng.unit() < shares.drill_recall
    {
        if let Some(q) = undrilled(world, &probes, same_entity, same_relation, rng) {
            asks.push((last, answer));
            answer = q.truth.clone();
            last = q;
            copied = false;
        }
    }
    for (p, a) in asks {
        context.push(Turn { supervised: true, ..turn(TurnForm::Qa, &p, a) });
    }
    let mut s = sample(last, answer, context);
    s.bos_per_turn = rng.unit() < 0.5;
    s.copied = copied;
    s
}

/// A known fact that no probe of a one-entity or one-relation drill states: the drill's entity with another relation,
/// or the drill's relation about another entity (on a fresh rendering and a trained paraphrase).
fn undrilled(
    world: &World,
    probes: &[Probe],
    entity: Option<usize>,
    relation: Option<Relation>,
    rng: &mut Rng,
) -> Option<Probe> {
    let stated = |e: usize, r: Relation| probes.iter().any(|p| p.subject == Subject::Entity(e, r));
    let options: Vec<(usize, Relation)> = match (entity, relation) {
        (Some(e), _) => Relation::ALL.into_iter().filter(|&r| !stated(e, r)).map(|r| (e, r)).collect(),
        (None, Some(r)) => (0..N_ENTITIES)
            .filter(|&e| probes.iter().all(|p| !matches!(p.subject, Subject::Entity(x, _) if x == e)))
            .map(|e| (e, r))
            .collect(),
        (None, None) => Vec::new(),
    };
    let known: Vec<(usize, Relation)> = options.into_iter().filter(|&(e, r)| !world.is_unknown(e, r)).collect();
    if known.is_empty() {
        return None;
    }
    let (e, r) = *rng.choose(&known);
    let p = paraphrase(world, e, r, None, rng);
    Some(entity_probe(world, e, r, p, Pool::Train, rng.next_u64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_follow_their_rules() {
        let w = World::generate(0);
        let mut rng = Rng::new(4);
        let (mut relevant, mut ignored, mut supervised) = (0, 0, 0);
        let shares = ContextShares::shipped();
        for _ in 0..400 {
            let s = training_context_sample(&w, 0.0, &shares, &mut rng);
            supervised += s.context.iter().filter(|t| t.supervised).count();
            assert!((1..=8).contains(&s.context.len()));
            assert!(!s.answer.is_empty() && s.context.iter().all(|t| !t.answer.is_empty()));
            if s.context.iter().any(|t| t.answer == s.answer) {
                relevant += 1;
            } else {
                ignored += 1;
            }
        }
        // Repetitions and drills always hold the answer; of the other contexts, `relevant` hold a relevant one.
        let expected_ignored = 400.0 * (1.0 - shares.repeat - shares.drill) * (1.0 - shares.relevant);
        assert!((ignored as f32 - expected_ignored).abs() < 0.3 * expected_ignored, "{relevant} {ignored}");
        assert!(supervised > 50, "{supervised}");
        // With full ease the relevant demonstration repeats the query's image and question.
        let mut repeats = 0;
        for _ in 0..200 {
            let s = training_context_sample(&w, 1.0, &ContextShares::default(), &mut rng);
            repeats += usize::from(s.context.iter().any(|t| t.question == s.question && t.image == s.image));
        }
        assert!(repeats > 60, "{repeats}");
    }

    #[test]
    fn recall_drills_end_on_a_fact_they_did_not_state() {
        let w = World::generate(0);
        let base = ContextShares {
            repeat: 0.0,
            drill: 1.0,
            drill_same_relation: 0.0,
            drill_same_entity: 1.0,
            ..ContextShares::shipped()
        };
        // Without the share, no drill ends on an unstated fact (and the draws are the recipe's as before).
        let mut rng = Rng::new(9);
        for _ in 0..100 {
            let s = training_context_sample(&w, 0.0, &base, &mut rng);
            assert!(s.context.iter().any(|t| t.answer == s.answer && !t.supervised), "a drill copies a stated fact");
        }
        let shares = ContextShares { drill_recall: 1.0, ..base };
        let (mut recalled, mut copied) = (0, 0);
        for _ in 0..200 {
            let s = training_context_sample(&w, 0.0, &shares, &mut rng);
            let stated: Vec<&Turn> = s.context.iter().filter(|t| !t.supervised).collect();
            if stated.iter().any(|t| t.question == s.question || t.answer == s.answer) {
                copied += 1;
                continue;
            }
            recalled += 1;
            // The query asks an entity fact, answered as the world does for some character.
            let asked = Relation::ALL.into_iter().find(|r| r.paraphrases().contains(&s.question.as_str()));
            let r = asked.expect("the query asks an entity fact");
            assert!(s.image.is_some() && (0..N_ENTITIES).any(|e| w.answer(e, r) == s.answer), "{}", s.answer);
            // Every re-asked fact stays in the context, supervised.
            assert_eq!(s.context.iter().filter(|t| t.supervised).count(), stated.len());
        }
        // A drill of two to four facts on one entity leaves a relation unstated: nearly every drill recalls.
        assert!(recalled > 180, "{recalled} {copied}");
        // Drills on one relation end on another character's fact with that relation: the world's answer, which
        // the drill's counterfactual answers (same pool) only sometimes share.
        let shares = ContextShares { drill_same_relation: 1.0, drill_same_entity: 0.0, ..shares };
        let mut other = 0;
        for _ in 0..200 {
            let s = training_context_sample(&w, 0.0, &shares, &mut rng);
            let r = Relation::ALL.into_iter().find(|r| r.paraphrases().contains(&s.question.as_str()));
            let r = r.expect("the query asks an entity fact");
            assert!(s.context.iter().filter(|t| !t.supervised).all(|t| r.paraphrases().contains(&t.question.as_str())));
            other += usize::from(s.context.iter().all(|t| t.answer != s.answer));
        }
        assert!(other > 120, "{other}");
    }

    #[test]
    fn eval_splits_are_deterministic_and_well_formed() {
        let w = World::generate(0);
        let a = follow_split(&w, 30);
        assert_eq!(a, follow_split(&w, 30));
        for s in &a {
            let d = &s.context[0];
            assert_eq!(d.answer, s.answer);
            assert_ne!(d.question, s.question, "the query uses another paraphrase");
            assert_ne!(d.image, s.image, "and another rendering");
        }
        let b = ignore_split(&w, 30);
        for s in &b {
            assert!((1..=3).contains(&s.context.len()));
            assert!(s.context.iter().all(|t| t.answer != s.answer || t.question != s.question));
        }
    }
}
