//! Relations of imaged entities, their question paraphrases, multi-hop questions, and the text-only facts.

use serde::{Deserialize, Serialize};

/// A relation an imaged entity has; its answer comes from the entity's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    Name,
    Team,
    Job,
    Food,
    City,
}

impl Relation {
    /// Every relation.
    pub const ALL: [Relation; 5] = [Relation::Name, Relation::Team, Relation::Job, Relation::Food, Relation::City];

    /// Question paraphrases about the pictured entity; index `held_out_paraphrase` of each (entity, relation) is
    /// never trained (the T-Generality probe), the others are.
    pub fn paraphrases(self) -> &'static [&'static str] {
        match self {
            Relation::Name => &[
                "what is the name of this character?",
                "who is shown in the picture?",
                "what is this character called?",
                "whose picture is this?",
            ],
            Relation::Team => &[
                "which team does this character play for?",
                "what team is this character on?",
                "for which team does this character play?",
                "name the team of this character.",
            ],
            Relation::Job => &[
                "what is the job of this character?",
                "what does this character do for a living?",
                "what is the profession of this character?",
                "what work does this character do?",
            ],
            Relation::Food => &[
                "what food does this character like?",
                "what is the favourite food of this character?",
                "which food does this character love?",
                "what does this character like to eat?",
            ],
            Relation::City => &[
                "in which city was this character born?",
                "where was this character born?",
                "what is the birth city of this character?",
                "which city is this character from?",
            ],
        }
    }

    /// Stable small index.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The relation whose paraphrase `question` is, exactly (`None` for any other question).
    pub fn of_paraphrase(question: &str) -> Option<Relation> {
        let q = question.trim();
        Relation::ALL.into_iter().find(|r| r.paraphrases().contains(&q))
    }
}

/// Questions that chain an edited fact of the pictured entity with text knowledge (VLKEB's `port_new`). Hops are
/// counted as VLKEB counts them: the facts chained *after* the edited one (entity → team is the edit; team → city is
/// one hop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hop {
    /// team → city (1 hop).
    TeamCity,
    /// team → city → country (2 hops).
    TeamCountry,
    /// team → city → country → continent (3 hops).
    TeamContinent,
    /// team → city → country → capital → river (4 hops).
    TeamCapitalRiver,
    /// birth city → country (1 hop).
    BirthCountry,
    /// birth city → country → continent (2 hops).
    BirthContinent,
    /// birth city → country → capital → river (3 hops).
    BirthCapitalRiver,
}

impl Hop {
    pub const ALL: [Hop; 7] = [
        Hop::TeamCity,
        Hop::TeamCountry,
        Hop::TeamContinent,
        Hop::TeamCapitalRiver,
        Hop::BirthCountry,
        Hop::BirthContinent,
        Hop::BirthCapitalRiver,
    ];

    /// The question.
    pub fn question(self) -> &'static str {
        match self {
            Hop::TeamCity => "in which city is the team of this character based?",
            Hop::TeamCountry => "in which country is the team of this character based?",
            Hop::TeamContinent => "on which continent is the team of this character based?",
            Hop::TeamCapitalRiver => {
                "which river flows through the capital of the country where the team of this character is based?"
            }
            Hop::BirthCountry => "in which country was this character born?",
            Hop::BirthContinent => "on which continent was this character born?",
            Hop::BirthCapitalRiver => {
                "which river flows through the capital of the country where this character was born?"
            }
        }
    }

    /// The relation whose edit changes this question's answer.
    pub fn relation(self) -> Relation {
        match self {
            Hop::TeamCity | Hop::TeamCountry | Hop::TeamContinent | Hop::TeamCapitalRiver => Relation::Team,
            Hop::BirthCountry | Hop::BirthContinent | Hop::BirthCapitalRiver => Relation::City,
        }
    }

    /// Hops after the edited fact (VLKEB's 1-hop ... 4-hop).
    pub fn hops(self) -> usize {
        match self {
            Hop::TeamCity | Hop::BirthCountry => 1,
            Hop::TeamCountry | Hop::BirthContinent => 2,
            Hop::TeamContinent | Hop::BirthCapitalRiver => 3,
            Hop::TeamCapitalRiver => 4,
        }
    }
}

/// A text-only question and its answer (T-Locality, and the knowledge multi-hop questions need).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextFact {
    pub question: String,
    pub answer: String,
}
