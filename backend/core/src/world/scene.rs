//! Scenes: one to four small objects in the quadrants of an image, with a caption and general visual questions
//! (counting, colour, position): the captioning task and the M-Locality probes.

use super::lexicon::{COLOURS, NUMBERS, SCENE_COLOURS, SCENE_SHAPES, SHAPES};
use super::render::SceneObject;
use super::rng::Rng;

/// Caption prompt paraphrases.
pub const CAPTION_PROMPTS: [&str; 4] = [
    "describe the image.",
    "what does the picture show?",
    "write a caption for this picture.",
    "what can you see in the image?",
];
/// Names of the quadrants.
pub const SLOTS: [&str; 4] = ["top left", "top right", "bottom left", "bottom right"];

fn plural(shape: usize) -> String {
    match SHAPES[shape] {
        "cross" => "crosses".into(),
        "plus" => "pluses".into(),
        s => format!("{s}s"),
    }
}

/// A random scene of 1-4 objects in distinct quadrants, drawn from the scene shapes and colours.
pub fn random_scene(rng: &mut Rng) -> Vec<SceneObject> {
    let n = 1 + rng.below(4);
    let mut slots = [0usize, 1, 2, 3];
    rng.shuffle(&mut slots);
    let mut objs: Vec<SceneObject> = slots[..n]
        .iter()
        .map(|&slot| SceneObject { slot, shape: *rng.choose(&SCENE_SHAPES), colour: *rng.choose(&SCENE_COLOURS) })
        .collect();
    objs.sort_by_key(|o| o.slot);
    objs
}

/// The caption: objects in reading order, `a red circle and a blue square`.
pub fn caption(objs: &[SceneObject]) -> String {
    objs.iter().map(|o| format!("a {} {}", COLOURS[o.colour].0, SHAPES[o.shape])).collect::<Vec<_>>().join(" and ")
}

/// General visual questions with their answers: a count for every scene shape, the colour of each shape present
/// once, the position of each (colour, shape) present once.
pub fn questions(objs: &[SceneObject]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for &s in &SCENE_SHAPES {
        let k = objs.iter().filter(|o| o.shape == s).count();
        out.push((format!("how many {} are there?", plural(s)), NUMBERS[k].to_string()));
    }
    for o in objs {
        if objs.iter().filter(|p| p.shape == o.shape).count() == 1 {
            out.push((format!("what colour is the {}?", SHAPES[o.shape]), COLOURS[o.colour].0.to_string()));
        }
        if objs.iter().filter(|p| p.shape == o.shape && p.colour == o.colour).count() == 1 {
            out.push((format!("where is the {} {}?", COLOURS[o.colour].0, SHAPES[o.shape]), SLOTS[o.slot].to_string()));
        }
    }
    out
}
