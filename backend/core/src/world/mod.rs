//! The synthetic visual world: the default data of UniKE Studio and our offline stand-in for MMEdit and VLKEB
//! (DESIGN.md "The synthetic world").
//!
//! 200 imaged characters, each with a visual identity (glyph shape × colour × stripes, [`render`]) recognisable
//! across unlimited renderings, and five relations ([`Relation`]): name, team, job, favourite food, birth city.
//! Teams, cities and countries carry text-only facts, so team → city → country chains give 2- and 3-hop
//! portability questions ([`Hop`]). Scenes give captions and counting / colour / position questions ([`scene`]).
//!
//! Splits, all a pure function of the seed:
//! - renderings come from two disjoint seed pools, [`Pool::Train`] (fresh ones every training step) and
//!   [`Pool::Eval`] (never trained: rephrased images and `renderings_unseen`);
//! - each (entity, relation) has one held-out paraphrase (never trained with that entity, trained with others);
//! - about a fifth of the (entity, relation) facts, names excepted, are *unknown*: never trained at all, so the model
//!   answers them with a confident wrong value (hallucination triplets for UniKE's in-context memory).

pub mod context;
pub mod export;
pub mod facts;
pub mod lexicon;
pub mod render;
pub mod rng;
pub mod samples;
pub mod scene;
pub mod tokenizer;

use std::collections::BTreeSet;

use image::RgbImage;

pub use facts::{Hop, Relation, TextFact};
use lexicon::*;
use rng::Rng;

/// Number of imaged entities.
pub const N_ENTITIES: usize = 200;
const N_TEAMS: usize = 60;
const N_CITIES: usize = 40;
const N_COUNTRIES: usize = 12;
/// Fraction of (entity, relation) facts, names excepted, that are never trained.
const UNKNOWN_FRACTION: f32 = 0.2;

/// An imaged character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    pub name: String,
    pub shape: usize,
    pub colour: usize,
    pub striped: bool,
    pub team: usize,
    pub job: usize,
    pub food: usize,
    pub city: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    pub name: String,
    pub city: usize,
    pub mascot: usize,
    pub colour: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct City {
    pub name: String,
    pub country: usize,
    pub river: String,
    pub landmark: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Country {
    pub name: String,
    pub capital: usize,
    pub continent: usize,
    pub language: usize,
    pub currency: usize,
}

/// Which seed pool a rendering comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    Train,
    Eval,
}

/// The whole world.
#[derive(Debug, Clone)]
pub struct World {
    pub seed: u64,
    pub entities: Vec<Entity>,
    pub teams: Vec<Team>,
    pub cities: Vec<City>,
    pub countries: Vec<Country>,
    pub text_facts: Vec<TextFact>,
    unknown: BTreeSet<(usize, Relation)>,
    /// [`World::vocabulary`] in order, built on first use (training draws random words from it per sample).
    words: std::sync::OnceLock<Vec<String>>,
}

impl World {
    /// Generates the world of `seed`.
    pub fn generate(seed: u64) -> Self {
        let mut rng = Rng::derive(seed, "world", 0);
        let mut taken: BTreeSet<String> = BTreeSet::new();
        let country_names = invent_names(&mut rng, N_COUNTRIES, 3, &mut taken);
        let city_names = invent_names(&mut rng, N_CITIES, 2, &mut taken);
        let rivers = invent_names(&mut rng, N_CITIES, 2, &mut taken);
        let person_names = invent_names(&mut rng, N_ENTITIES, 2, &mut taken);

        let cities: Vec<City> = city_names
            .into_iter()
            .zip(rivers)
            .enumerate()
            .map(|(i, (name, river))| City {
                name,
                country: i % N_COUNTRIES,
                river: format!("the {river}"),
                landmark: rng.below(LANDMARKS.len()),
            })
            .collect();
        let countries: Vec<Country> = country_names
            .into_iter()
            .enumerate()
            .map(|(i, name)| Country {
                name,
                capital: i, // city i lies in country i (cities are assigned round-robin)
                continent: rng.below(CONTINENTS.len()),
                language: rng.below(LANGUAGES.len()),
                currency: rng.below(CURRENCIES.len()),
            })
            .collect();
        let mut team_names: Vec<String> =
            TEAM_ADJECTIVES.iter().flat_map(|a| TEAM_ANIMALS.iter().map(move |b| format!("the {a} {b}"))).collect();
        rng.shuffle(&mut team_names);
        let teams: Vec<Team> = team_names
            .into_iter()
            .take(N_TEAMS)
            .map(|name| Team {
                name,
                city: rng.below(N_CITIES),
                mascot: rng.below(MASCOTS.len()),
                colour: rng.below(COLOURS.len()),
            })
            .collect();
        // Identities: every (shape, colour, stripes) combination once, in a seeded order.
        let mut identities: Vec<(usize, usize, bool)> = (0..SHAPES.len())
            .flat_map(|s| (0..COLOURS.len()).flat_map(move |c| [(s, c, false), (s, c, true)]))
            .collect();
        rng.shuffle(&mut identities);
        let entities: Vec<Entity> = person_names
            .into_iter()
            .zip(identities)
            .map(|(name, (shape, colour, striped))| Entity {
                name,
                shape,
                colour,
                striped,
                team: rng.below(N_TEAMS),
                job: rng.below(JOBS.len()),
                food: rng.below(FOODS.len()),
                city: rng.below(N_CITIES),
            })
            .collect();
        let mut unknown = BTreeSet::new();
        for e in 0..N_ENTITIES {
            for r in Relation::ALL {
                if r != Relation::Name
                    && Rng::derive(seed, "unknown", (e * 8 + r.index()) as u64).unit() < UNKNOWN_FRACTION
                {
                    unknown.insert((e, r));
                }
            }
        }
        let mut world =
            Self { seed, entities, teams, cities, countries, text_facts: vec![], unknown, words: Default::default() };
        world.text_facts = world.make_text_facts();
        world
    }

    fn make_text_facts(&self) -> Vec<TextFact> {
        let mut out = Vec::new();
        let mut f = |q: String, a: String| out.push(TextFact { question: q, answer: a });
        for t in &self.teams {
            let city = &self.cities[t.city];
            f(format!("which city are {} based in?", t.name), city.name.clone());
            f(format!("what is the mascot of {}?", t.name), MASCOTS[t.mascot].into());
            f(format!("what colour do {} wear?", t.name), COLOURS[t.colour].0.into());
            f(format!("in which country do {} play?", t.name), self.countries[city.country].name.clone());
        }
        for c in &self.cities {
            f(format!("in which country is {}?", c.name), self.countries[c.country].name.clone());
            f(format!("which river flows through {}?", c.name), c.river.clone());
            f(format!("what is {} famous for?", c.name), LANDMARKS[c.landmark].into());
        }
        for c in &self.countries {
            f(format!("what is the capital of {}?", c.name), self.cities[c.capital].name.clone());
            f(format!("on which continent is {}?", c.name), CONTINENTS[c.continent].into());
            f(format!("what language is spoken in {}?", c.name), LANGUAGES[c.language].into());
            f(format!("what is the currency of {}?", c.name), CURRENCIES[c.currency].into());
        }
        for a in 0..=10 {
            for b in 0..=10 {
                f(format!("what is {} plus {}?", NUMBERS[a], NUMBERS[b]), NUMBERS[a + b].into());
            }
        }
        out
    }

    /// The answer of `relation` for entity `e`.
    pub fn answer(&self, e: usize, relation: Relation) -> String {
        let ent = &self.entities[e];
        match relation {
            Relation::Name => ent.name.clone(),
            Relation::Team => self.teams[ent.team].name.clone(),
            Relation::Job => JOBS[ent.job].into(),
            Relation::Food => FOODS[ent.food].into(),
            Relation::City => self.cities[ent.city].name.clone(),
        }
    }

    /// Every possible answer of `relation` (edit targets are drawn from here).
    pub fn answer_pool(&self, relation: Relation) -> Vec<String> {
        match relation {
            Relation::Name => self.entities.iter().map(|e| e.name.clone()).collect(),
            Relation::Team => self.teams.iter().map(|t| t.name.clone()).collect(),
            Relation::Job => JOBS.iter().map(|s| s.to_string()).collect(),
            Relation::Food => FOODS.iter().map(|s| s.to_string()).collect(),
            Relation::City => self.cities.iter().map(|c| c.name.clone()).collect(),
        }
    }

    /// The answer of a multi-hop question for entity `e`, optionally with `relation` of `e` replaced by `edited`
    /// (an answer from [`World::answer_pool`]).
    pub fn hop_answer(&self, e: usize, hop: Hop, edited: Option<&str>) -> Option<String> {
        let ent = &self.entities[e];
        let team = match (hop.relation(), edited) {
            (Relation::Team, Some(t)) => self.teams.iter().position(|x| x.name == t)?,
            _ => ent.team,
        };
        let city = match (hop.relation(), edited) {
            (Relation::City, Some(c)) => self.cities.iter().position(|x| x.name == c)?,
            _ => ent.city,
        };
        let team_country = self.cities[self.teams[team].city].country;
        let birth_country = self.cities[city].country;
        let continent = |c: usize| CONTINENTS[self.countries[c].continent].to_string();
        let capital_river = |c: usize| self.cities[self.countries[c].capital].river.clone();
        Some(match hop {
            Hop::TeamCity => self.cities[self.teams[team].city].name.clone(),
            Hop::TeamCountry => self.countries[team_country].name.clone(),
            Hop::TeamContinent => continent(team_country),
            Hop::TeamCapitalRiver => capital_river(team_country),
            Hop::BirthCountry => self.countries[birth_country].name.clone(),
            Hop::BirthContinent => continent(birth_country),
            Hop::BirthCapitalRiver => capital_river(birth_country),
        })
    }

    /// True when the fact is never trained.
    pub fn is_unknown(&self, e: usize, relation: Relation) -> bool {
        self.unknown.contains(&(e, relation))
    }

    /// True when a multi-hop question's facts are all trained.
    pub fn hop_known(&self, e: usize, hop: Hop) -> bool {
        !self.is_unknown(e, hop.relation())
    }

    /// Index of the paraphrase of (e, relation) that is never trained.
    pub fn held_out_paraphrase(&self, e: usize, relation: Relation) -> usize {
        (e + 3 * relation.index()) % relation.paraphrases().len()
    }

    /// Rendering `index` of entity `e` from `pool` (disjoint seed streams).
    pub fn render_entity(&self, e: usize, pool: Pool, index: u64) -> RgbImage {
        let label = match pool {
            Pool::Train => "render-train",
            Pool::Eval => "render-eval",
        };
        let mut rng = Rng::derive(self.seed, label, (e as u64) << 32 | index);
        let ent = &self.entities[e];
        render::render_glyph(ent.shape, ent.colour, ent.striped, &mut rng)
    }

    /// Scene `index` from `pool`: its objects and a rendering.
    pub fn scene(&self, pool: Pool, index: u64) -> (Vec<render::SceneObject>, RgbImage) {
        let label = match pool {
            Pool::Train => "scene-train",
            Pool::Eval => "scene-eval",
        };
        let mut rng = Rng::derive(self.seed, label, index);
        let objs = scene::random_scene(&mut rng);
        let img = render::render_scene(&objs, &mut rng);
        (objs, img)
    }

    /// Another rendering of the same scene objects (a rephrased image for caption edits).
    pub fn rerender_scene(&self, objs: &[render::SceneObject], index: u64) -> RgbImage {
        let mut rng = Rng::derive(self.seed, "scene-rephrase", index);
        render::render_scene(objs, &mut rng)
    }

    /// [`World::vocabulary`] as a sorted list, computed once per world.
    pub fn words(&self) -> &[String] {
        self.words.get_or_init(|| self.vocabulary().into_iter().collect())
    }

    /// Every word the world can put in a prompt or an answer (for the tokenizer).
    pub fn vocabulary(&self) -> BTreeSet<String> {
        let mut text = String::new();
        for r in Relation::ALL {
            for p in r.paraphrases() {
                text.push_str(p);
                text.push(' ');
            }
            for a in self.answer_pool(r) {
                text.push_str(&a);
                text.push(' ');
            }
        }
        for h in Hop::ALL {
            text.push_str(h.question());
            text.push(' ');
        }
        for f in &self.text_facts {
            text.push_str(&f.question);
            text.push(' ');
            text.push_str(&f.answer);
            text.push(' ');
        }
        for p in scene::CAPTION_PROMPTS {
            text.push_str(p);
            text.push(' ');
        }
        for (i, s) in SHAPES.iter().enumerate() {
            let objs = [render::SceneObject { slot: 0, shape: i, colour: 0 }];
            text.push_str(&format!("{s} {} ", scene::caption(&objs)));
            for (q, a) in scene::questions(&objs) {
                text.push_str(&format!("{q} {a} "));
            }
        }
        for (c, _) in COLOURS {
            text.push_str(c);
            text.push(' ');
        }
        text.push_str(&format!("{} and ", scene::SLOTS.join(" ")));
        text.push_str(&NUMBERS.join(" "));
        split_words(&text).into_iter().collect()
    }
}

/// Splits text into the words the world tokenizer uses: runs of letters/digits, and single punctuation marks.
pub fn split_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        if ch.is_alphanumeric() {
            cur.push(ch);
        } else {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if !ch.is_whitespace() {
                out.push(ch.to_string());
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_is_deterministic_and_big_enough() {
        let a = World::generate(7);
        let b = World::generate(7);
        assert_eq!(a.entities, b.entities);
        assert_eq!(a.text_facts, b.text_facts);
        assert_eq!(a.render_entity(3, Pool::Eval, 2), b.render_entity(3, Pool::Eval, 2));
        assert_ne!(a.render_entity(3, Pool::Eval, 2), a.render_entity(3, Pool::Train, 2));
        assert!(a.entities.len() >= 200);
        assert!(a.text_facts.len() >= 500, "{}", a.text_facts.len());
        let ids: BTreeSet<_> = a.entities.iter().map(|e| (e.shape, e.colour, e.striped)).collect();
        assert_eq!(ids.len(), a.entities.len(), "identities are distinct");
        let names: BTreeSet<_> = a.entities.iter().map(|e| e.name.clone()).collect();
        assert_eq!(names.len(), a.entities.len());
        let unknown = (0..200).flat_map(|e| Relation::ALL.map(|r| (e, r))).filter(|&(e, r)| a.is_unknown(e, r)).count();
        assert!((100..250).contains(&unknown), "{unknown}");
        assert!(World::generate(8).entities != a.entities);
    }

    #[test]
    fn every_paraphrase_is_trained_with_some_entity() {
        let w = World::generate(1);
        for r in Relation::ALL {
            for p in 0..r.paraphrases().len() {
                assert!((0..N_ENTITIES).any(|e| w.held_out_paraphrase(e, r) != p));
                assert!((0..N_ENTITIES).any(|e| w.held_out_paraphrase(e, r) == p));
            }
        }
    }

    #[test]
    fn hops_follow_the_chain() {
        let w = World::generate(2);
        let e = &w.entities[5];
        let city = &w.cities[w.teams[e.team].city];
        assert_eq!(w.hop_answer(5, Hop::TeamCity, None).as_deref(), Some(city.name.as_str()));
        assert_eq!(w.hop_answer(5, Hop::TeamCountry, None), Some(w.countries[city.country].name.clone()));
        let other = w.teams[(e.team + 1) % w.teams.len()].clone();
        assert_eq!(w.hop_answer(5, Hop::TeamCity, Some(&other.name)), Some(w.cities[other.city].name.clone()));
        let vocab = w.vocabulary();
        assert!(vocab.contains("character") && vocab.contains(&e.name) && vocab.contains("?"));
    }
}
