//! The words of the synthetic world: glyph shapes and colours, answer pools, and invented proper names.

use std::collections::BTreeSet;

use super::rng::Rng;

/// Shapes an entity glyph can have (one part of its visual identity).
pub const SHAPES: [&str; 10] =
    ["circle", "square", "triangle", "wedge", "diamond", "plus", "cross", "ring", "slab", "pillar"];
/// Fill colours of glyphs and scene objects, with their RGB values.
pub const COLOURS: [(&str, [u8; 3]); 10] = [
    ("red", [220, 30, 30]),
    ("green", [30, 170, 40]),
    ("blue", [30, 60, 230]),
    ("yellow", [240, 220, 20]),
    ("cyan", [20, 210, 220]),
    ("magenta", [220, 30, 200]),
    ("orange", [250, 130, 10]),
    ("purple", [120, 40, 160]),
    ("white", [250, 250, 250]),
    ("black", [10, 10, 10]),
];
/// Shapes used in scenes (the easiest to tell apart when small).
pub const SCENE_SHAPES: [usize; 5] = [0, 1, 2, 5, 8];
/// Colours used in scenes.
pub const SCENE_COLOURS: [usize; 6] = [0, 1, 2, 3, 8, 9];
/// Number words.
pub const NUMBERS: [&str; 21] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
];
/// Jobs of characters.
pub const JOBS: [&str; 20] = [
    "baker", "pilot", "doctor", "farmer", "painter", "sailor", "teacher", "singer", "miner", "tailor", "judge",
    "nurse", "poet", "chef", "guard", "builder", "dancer", "fisher", "potter", "ranger",
];
/// Favourite foods of characters.
pub const FOODS: [&str; 20] = [
    "apples", "bread", "cheese", "soup", "rice", "noodles", "plums", "honey", "beans", "fish", "pears", "dates",
    "olives", "figs", "cake", "eggs", "nuts", "grapes", "melons", "pies",
];
/// Team name adjectives and animals (a team is "the <adjective> <animals>").
pub const TEAM_ADJECTIVES: [&str; 12] =
    ["iron", "silver", "golden", "swift", "brave", "wild", "silent", "northern", "royal", "stone", "storm", "red"];
pub const TEAM_ANIMALS: [&str; 10] =
    ["foxes", "hawks", "wolves", "bears", "owls", "lions", "sharks", "eagles", "tigers", "otters"];
/// Mascots, rivers, landmarks, continents, languages, currencies.
pub const MASCOTS: [&str; 12] = [
    "a dragon", "a robot", "a goat", "a knight", "a comet", "a ghost", "a giant", "a wizard", "a pirate", "a crab",
    "a bee", "a moose",
];
pub const CONTINENTS: [&str; 5] = ["arvania", "borelia", "cyndra", "dunmark", "esterra"];
pub const LANGUAGES: [&str; 8] = ["velsh", "oranic", "tesk", "mirish", "dalvic", "quenor", "sallic", "ruthan"];
pub const CURRENCIES: [&str; 8] = ["crowns", "marks", "shells", "beads", "florins", "coins", "pearls", "rings"];
pub const LANDMARKS: [&str; 10] = [
    "a tower",
    "a bridge",
    "a castle",
    "a lighthouse",
    "a temple",
    "a dam",
    "a market",
    "a harbour",
    "a palace",
    "a garden",
];

const ONSETS: [&str; 16] = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "br"];
const VOWELS: [&str; 6] = ["a", "e", "i", "o", "u", "ai"];
const CODAS: [&str; 6] = ["", "n", "r", "l", "s", "x"];

/// `n` distinct invented words of `syllables` syllables, none in `taken` (which they are added to).
pub fn invent_names(rng: &mut Rng, n: usize, syllables: usize, taken: &mut BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut w = String::new();
        for s in 0..syllables {
            w.push_str(ONSETS[rng.below(ONSETS.len())]);
            w.push_str(VOWELS[rng.below(VOWELS.len())]);
            if s + 1 == syllables {
                w.push_str(CODAS[rng.below(CODAS.len())]);
            }
        }
        if taken.insert(w.clone()) {
            out.push(w);
        }
    }
    out
}
