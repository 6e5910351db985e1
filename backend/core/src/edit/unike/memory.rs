//! UniKE's in-context knowledge (paper §3.3 and Appendix C): questions the model gets wrong, each a triplet
//! (Q, A_pos, A_neg) with A_neg the model's own hallucinated answer, and three hidden states per edited layer:
//! `h_sem` (the pre-attention state of the last question token), `h_pos` and `h_neg` (the pre-attention state of the
//! last answer token of Q + A_pos and of Q + A_neg). `(h_sem, h_pos)` are the key-value pairs of latent in-context
//! editing; all three train the encoders that disentangle truthfulness from semantics.
//!
//! On the synthetic world the hallucinations come at the paper's three levels: facts the model was never taught
//! (recognition), captions it gets wrong (vision extraction) and scene questions it gets wrong (reasoning).

use std::path::Path;

use candle_core::{DType, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::edit::EditSequence;
use crate::error::{Error, Result};
use crate::hooks::{Capture, CapturePoint, Hooks};
use crate::model::{ModelProcessor, VisionLanguageModel};
use crate::world::scene::{caption, questions, CAPTION_PROMPTS};
use crate::world::{Pool, Relation, World, N_ENTITIES};

const FORMAT: &str = "unike-memory/1";

/// One piece of in-context knowledge, as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Triplet {
    pub question: String,
    /// What the image shows (`entity 12, rendering 3` or `scene 7`).
    pub image: String,
    /// Hallucination level: `recognition`, `vision` or `reasoning`.
    pub level: String,
    pub pos: String,
    pub neg: String,
}

/// A question with its image and truthful answer, before the model is asked.
pub struct Candidate {
    pub question: String,
    pub image: RgbImage,
    pub image_label: String,
    pub level: &'static str,
    pub truth: String,
}

/// The memory: per edited layer, `h_sem`, `h_pos`, `h_neg` of shape `(n, d)` (f32), and the triplets they came from.
#[derive(Debug, Clone)]
pub struct KnowledgeMemory {
    pub layers: Vec<usize>,
    pub h_sem: Vec<Tensor>,
    pub h_pos: Vec<Tensor>,
    pub h_neg: Vec<Tensor>,
    pub triplets: Vec<Triplet>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryJson {
    format: String,
    layers: Vec<usize>,
    triplets: Vec<Triplet>,
}

/// Candidate questions of `world`, in a fixed order: wrong captions and scene answers first (training-pool scenes
/// `0..scenes`), then every never-taught fact with each of its paraphrases on training-pool renderings `0, 1, ...`.
pub fn world_candidates(world: &World, scenes: u64, renderings: u64) -> impl Iterator<Item = Candidate> + '_ {
    let scene_items = (0..scenes).flat_map(move |i| {
        let (objs, img) = world.scene(Pool::Train, 4_000_000 + i);
        let cap = Candidate {
            question: CAPTION_PROMPTS[(i % CAPTION_PROMPTS.len() as u64) as usize].to_string(),
            image: img.clone(),
            image_label: format!("scene {i}"),
            level: "vision",
            truth: caption(&objs),
        };
        let qs = questions(&objs);
        let (q, a) = qs[(i as usize * 7) % qs.len()].clone();
        let ask =
            Candidate { question: q, image: img, image_label: format!("scene {i}"), level: "reasoning", truth: a };
        [cap, ask]
    });
    let facts: Vec<(usize, Relation)> =
        (0..N_ENTITIES).flat_map(|e| Relation::ALL.map(|r| (e, r))).filter(|&(e, r)| world.is_unknown(e, r)).collect();
    let fact_items = (0..renderings).flat_map(move |k| {
        let facts = facts.clone();
        facts.into_iter().flat_map(move |(e, r)| {
            let img = world.render_entity(e, Pool::Train, 100 + k);
            r.paraphrases().iter().map(move |p| Candidate {
                question: p.to_string(),
                image: img.clone(),
                image_label: format!("entity {e}, rendering {}", 100 + k),
                level: "recognition",
                truth: world.answer(e, r),
            })
        })
    });
    scene_items.chain(fact_items)
}

/// Candidate questions of MMEdit-format cases, in order, for a model of any family: each case's multimodal
/// locality question with its image and ground-truth answer (`m_loc_q`, `m_loc`, `m_loc_a`: a real VQA pair, unlike
/// the case's counterfactual target), then its text locality question is skipped (no image). Unreadable images are
/// errors naming the file.
pub fn case_candidates(cases: &[crate::data::EditCase]) -> impl Iterator<Item = Result<Candidate>> + '_ {
    // Lazily: the memory stops asking once it has its wrong answers, so later images are never decoded.
    cases.iter().map(|c| {
        let bytes = std::fs::read(&c.m_loc_image).map_err(|e| Error::io(&c.m_loc_image, e))?;
        let image = image::load_from_memory(&bytes)
            .map_err(|e| Error::Image { path: c.m_loc_image.clone(), msg: e.to_string() })?
            .to_rgb8();
        Ok(Candidate {
            question: c.m_loc_question.clone(),
            image,
            image_label: c.m_loc_image.display().to_string(),
            level: "recognition",
            truth: c.m_loc_answer.clone(),
        })
    })
}

/// `h_sem` and the state of the last answer token at each layer of `layers`, each `(d)`, under `hooks`.
pub fn knowledge_states(
    model: &dyn VisionLanguageModel,
    seq: &EditSequence,
    layers: &[usize],
    hooks: &Hooks,
) -> Result<Vec<(Tensor, Tensor)>> {
    let mut cap = Capture::at_layers(layers.iter().copied(), CapturePoint::LayerInput);
    model.forward_inputs(&seq.inputs(model)?, None, hooks, &mut cap)?;
    // The sequence ends with end-of-sequence: the last answer token is the one before it.
    let last = seq.ids.len() - 2;
    layers
        .iter()
        .map(|&l| {
            let x = cap
                .get(l, CapturePoint::LayerInput)
                .ok_or_else(|| Error::Invalid(format!("layer {l} not captured")))?
                .squeeze(0)?
                .to_dtype(DType::F32)?;
            Ok((x.get(seq.prompt_len - 1)?, x.get(last)?))
        })
        .collect()
}

impl KnowledgeMemory {
    /// Asks the model every candidate (greedy) until `n` wrong answers are collected, and extracts their states at
    /// `layers`. `progress(collected, asked)` after each candidate.
    pub fn build(
        model: &dyn VisionLanguageModel,
        processor: &dyn ModelProcessor,
        eos: &[u32],
        candidates: impl Iterator<Item = Candidate>,
        layers: &[usize],
        n: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let none = Hooks::none();
        let mut rows: Vec<[Vec<Tensor>; 3]> = layers.iter().map(|_| [vec![], vec![], vec![]]).collect();
        let mut triplets = Vec::new();
        let eos0 = *eos.first().ok_or_else(|| Error::Invalid("no end-of-sequence id".into()))?;
        for (asked, c) in candidates.enumerate() {
            if triplets.len() >= n {
                break;
            }
            let pixels = processor.preprocess(&c.image, model.device())?;
            let pos = EditSequence::new(processor, &c.question, Some(&pixels), &c.truth, eos0)?;
            let neg = pos.greedy(model, processor, &none, eos)?;
            if neg.is_empty() || neg == c.truth {
                progress(triplets.len(), asked + 1);
                continue;
            }
            let neg_seq = EditSequence::new(processor, &c.question, Some(&pixels), &neg, eos0)?;
            let p = knowledge_states(model, &pos, layers, &none)?;
            let q = knowledge_states(model, &neg_seq, layers, &none)?;
            for (i, ((sem, hp), (_, hn))) in p.into_iter().zip(q).enumerate() {
                rows[i][0].push(sem);
                rows[i][1].push(hp);
                rows[i][2].push(hn);
            }
            triplets.push(Triplet {
                question: c.question,
                image: c.image_label,
                level: c.level.into(),
                pos: c.truth,
                neg,
            });
            progress(triplets.len(), asked + 1);
        }
        if triplets.is_empty() {
            return Err(Error::Invalid("the model answered every candidate right: no in-context knowledge".into()));
        }
        let mut out = Self { layers: layers.to_vec(), h_sem: vec![], h_pos: vec![], h_neg: vec![], triplets };
        for [s, p, q] in rows {
            out.h_sem.push(Tensor::stack(&s, 0)?);
            out.h_pos.push(Tensor::stack(&p, 0)?);
            out.h_neg.push(Tensor::stack(&q, 0)?);
        }
        Ok(out)
    }

    /// Number of triplets.
    pub fn len(&self) -> usize {
        self.triplets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.triplets.is_empty()
    }

    /// Index of `layer` among the memory's layers.
    pub fn layer_index(&self, layer: usize) -> Result<usize> {
        self.layers.iter().position(|l| *l == layer).ok_or_else(|| {
            Error::Invalid(format!("the knowledge memory has layers {:?}, not layer {layer}", self.layers))
        })
    }

    /// Writes `dir/memory.safetensors` and `dir/memory.json`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|err| Error::Io { path: dir.to_path_buf(), err })?;
        let mut tensors = std::collections::HashMap::new();
        for (i, l) in self.layers.iter().enumerate() {
            tensors.insert(format!("layers.{l}.h_sem"), self.h_sem[i].clone());
            tensors.insert(format!("layers.{l}.h_pos"), self.h_pos[i].clone());
            tensors.insert(format!("layers.{l}.h_neg"), self.h_neg[i].clone());
        }
        candle_core::safetensors::save(&tensors, dir.join("memory.safetensors"))?;
        let js = dir.join("memory.json");
        let json = MemoryJson { format: FORMAT.into(), layers: self.layers.clone(), triplets: self.triplets.clone() };
        let text = serde_json::to_string(&json).map_err(|e| Error::Data { path: js.clone(), msg: e.to_string() })?;
        std::fs::write(&js, text).map_err(|err| Error::Io { path: js, err })
    }

    /// `dir/memory.json`, checked for its format.
    fn read_json(dir: &Path) -> Result<MemoryJson> {
        let js = dir.join("memory.json");
        let text = std::fs::read_to_string(&js).map_err(|err| Error::Io { path: js.clone(), err })?;
        let json: MemoryJson =
            serde_json::from_str(&text).map_err(|e| Error::Data { path: js.clone(), msg: e.to_string() })?;
        if json.format != FORMAT {
            return Err(Error::Data { path: js, msg: format!("format {:?} is not {FORMAT:?}", json.format) });
        }
        Ok(json)
    }

    /// The triplets of the memory saved in `dir` (its `memory.json` alone), in memory order: what an index of
    /// retrieval names.
    pub fn triplets_of(dir: &Path) -> Result<Vec<Triplet>> {
        Ok(Self::read_json(dir)?.triplets)
    }

    /// Reads a memory written by [`KnowledgeMemory::save`].
    pub fn load(dir: &Path, device: &candle_core::Device) -> Result<Self> {
        let st = dir.join("memory.safetensors");
        let json = Self::read_json(dir)?;
        let mut tensors = candle_core::safetensors::load(&st, device)?;
        let mut out =
            Self { layers: json.layers.clone(), h_sem: vec![], h_pos: vec![], h_neg: vec![], triplets: json.triplets };
        for l in &json.layers {
            let mut take = |k: &str| {
                let key = format!("layers.{l}.{k}");
                let t = tensors
                    .remove(&key)
                    .ok_or_else(|| Error::Data { path: st.clone(), msg: format!("missing {key}") })?;
                if t.dim(0)? != out.triplets.len() {
                    return Err(Error::Data {
                        path: st.clone(),
                        msg: format!("{key} has {} rows, not {}", t.dim(0)?, out.triplets.len()),
                    });
                }
                Ok::<_, Error>(t.to_dtype(DType::F32)?)
            };
            let (s, p, n) = (take("h_sem")?, take("h_pos")?, take("h_neg")?);
            out.h_sem.push(s);
            out.h_pos.push(p);
            out.h_neg.push(n);
        }
        Ok(out)
    }
}
