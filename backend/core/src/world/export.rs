//! `unike gen-data`: writes the world's edit sets in the MMEdit schema (E-VQA, E-IC) with VLKEB's `port_new`,
//! PNG images, and train / eval splits (characters split by parity of their index; scenes by index range).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::lexicon::NUMBERS;
use super::rng::Rng;
use super::scene::{caption, questions, CAPTION_PROMPTS};
use super::{Hop, Pool, Relation, World, N_ENTITIES};
use crate::data::{write_records, MmeditRecord, PortEntry, PortQa};
use crate::error::{Error, Result};

/// Edit cases per known (character, relation) fact.
const TARGETS_PER_FACT: usize = 2;
/// Caption edit cases per split.
const CAPTION_CASES: usize = 600;

/// What `gen-data` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub seed: u64,
    pub files: BTreeMap<String, usize>,
    pub images: usize,
}

struct Writer<'a> {
    world: &'a World,
    out: &'a Path,
    images: usize,
}

impl Writer<'_> {
    fn save(&mut self, rel: &str, img: &image::RgbImage) -> Result<String> {
        let p = self.out.join(rel);
        if !p.exists() {
            img.save(&p).map_err(|e| Error::Image { path: p.clone(), msg: e.to_string() })?;
            self.images += 1;
        }
        Ok(rel.to_string())
    }

    fn entity_image(&mut self, e: usize, k: u64) -> Result<String> {
        let img = self.world.render_entity(e, Pool::Eval, k);
        self.save(&format!("images/entity_{e:03}_{k}.png"), &img)
    }

    /// A record whose locality probes are a random text fact and a question about scene `scene_index`.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        rng: &mut Rng,
        scene_index: u64,
        src: &str,
        pred: String,
        alt: String,
        rephrase: &str,
        image: String,
        image_rephrase: String,
        port_new: Vec<PortEntry>,
    ) -> Result<MmeditRecord> {
        let f = rng.choose(&self.world.text_facts).clone();
        let (objs, img) = self.world.scene(Pool::Eval, scene_index);
        let (m_loc_q, m_loc_a) = rng.choose(&questions(&objs)).clone();
        let m_loc = self.save(&format!("images/scene_{scene_index}.png"), &img)?;
        Ok(MmeditRecord {
            src: src.into(),
            pred: Some(pred),
            alt,
            rephrase: rephrase.into(),
            image,
            image_rephrase,
            loc: f.question,
            loc_ans: f.answer,
            m_loc,
            m_loc_q,
            m_loc_a,
            port_new,
        })
    }

    fn vqa(&mut self, eval: bool) -> Result<Vec<MmeditRecord>> {
        let w = self.world;
        let mut rng = Rng::derive(w.seed, if eval { "vqa-eval" } else { "vqa-train" }, 0);
        let mut out = Vec::new();
        for e in (0..N_ENTITIES).filter(|e| (e % 2 == 1) == eval) {
            for r in Relation::ALL {
                if w.is_unknown(e, r) {
                    continue;
                }
                let truth = w.answer(e, r);
                let mut targets: Vec<String> = w.answer_pool(r).into_iter().filter(|a| *a != truth).collect();
                rng.shuffle(&mut targets);
                let paras = r.paraphrases();
                let held = w.held_out_paraphrase(e, r);
                for target in targets.into_iter().take(TARGETS_PER_FACT) {
                    let src = paras[(held + 1 + rng.below(paras.len() - 1)) % paras.len()];
                    let image = self.entity_image(e, 0)?;
                    let image_rephrase = self.entity_image(e, 1 + rng.below(3) as u64)?;
                    let scene_index = (if eval { 1_000_000 } else { 0 }) + out.len() as u64;
                    let port_new = Hop::ALL
                        .iter()
                        .filter(|h| h.relation() == r && w.hop_known(e, **h))
                        .filter_map(|h| {
                            Some(PortEntry {
                                port_type: format!("{}-hop", h.hops()),
                                qa: PortQa {
                                    question: h.question().into(),
                                    answer: w.hop_answer(e, *h, Some(&target))?,
                                },
                            })
                        })
                        .collect();
                    let rec = self.record(
                        &mut rng,
                        scene_index,
                        src,
                        truth.clone(),
                        target,
                        paras[held],
                        image,
                        image_rephrase,
                        port_new,
                    )?;
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    fn captions(&mut self, eval: bool) -> Result<Vec<MmeditRecord>> {
        let w = self.world;
        let base: u64 = if eval { 3_000_000 } else { 2_000_000 };
        let mut rng = Rng::derive(w.seed, if eval { "ic-eval" } else { "ic-train" }, 0);
        let mut out = Vec::with_capacity(CAPTION_CASES);
        for i in 0..CAPTION_CASES as u64 {
            let (objs, img) = w.scene(Pool::Eval, base + i);
            let truth = caption(&objs);
            // The target: the caption of another scene with as many objects.
            let mut k = 0u64;
            let target = loop {
                let (other, _) = w.scene(Pool::Eval, base + 500_000 + i * 64 + k);
                k += 1;
                if other.len() == objs.len() && caption(&other) != truth {
                    break caption(&other);
                }
            };
            let image = self.save(&format!("images/scene_{}.png", base + i), &img)?;
            let re = w.rerender_scene(&objs, base + i);
            let image_rephrase = self.save(&format!("images/scene_{}_re.png", base + i), &re)?;
            let rephrase = CAPTION_PROMPTS[1 + rng.below(CAPTION_PROMPTS.len() - 1)];
            let rec = self.record(
                &mut rng,
                base + 900_000 + i,
                CAPTION_PROMPTS[0],
                truth,
                target,
                rephrase,
                image,
                image_rephrase,
                vec![],
            )?;
            out.push(rec);
        }
        Ok(out)
    }
}

/// Writes `vqa_{train,eval}.json`, `caption_{train,eval}.json`, `world.json` and `images/` under `out`.
pub fn write(world: &World, out: &Path) -> Result<Summary> {
    std::fs::create_dir_all(out.join("images")).map_err(|e| Error::io(out, e))?;
    let mut w = Writer { world, out, images: 0 };
    let mut files = BTreeMap::new();
    for eval in [false, true] {
        let split = if eval { "eval" } else { "train" };
        let vqa = w.vqa(eval)?;
        write_records(&out.join(format!("vqa_{split}.json")), &vqa)?;
        files.insert(format!("vqa_{split}.json"), vqa.len());
        let ic = w.captions(eval)?;
        write_records(&out.join(format!("caption_{split}.json")), &ic)?;
        files.insert(format!("caption_{split}.json"), ic.len());
    }
    let entities: Vec<serde_json::Value> = (0..N_ENTITIES)
        .map(|e| {
            let ent = &world.entities[e];
            let facts: serde_json::Map<String, serde_json::Value> = Relation::ALL
                .iter()
                .map(|r| {
                    let key =
                        serde_json::to_value(r).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
                    (key, serde_json::json!({"answer": world.answer(e, *r), "known": !world.is_unknown(e, *r)}))
                })
                .collect();
            serde_json::json!({"index": e, "name": ent.name, "shape": super::lexicon::SHAPES[ent.shape],
                "colour": super::lexicon::COLOURS[ent.colour].0, "striped": ent.striped, "facts": facts})
        })
        .collect();
    let summary = serde_json::json!({"seed": world.seed, "entities": entities, "text_facts": world.text_facts,
        "numbers": NUMBERS});
    let p = out.join("world.json");
    std::fs::write(&p, serde_json::to_string_pretty(&summary).map_err(|e| Error::Invalid(e.to_string()))?)
        .map_err(|e| Error::io(&p, e))?;
    Ok(Summary { seed: world.seed, files, images: w.images })
}
