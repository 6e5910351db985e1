//! The knowledge-space explorer's projections (issue 20 §1, paper Fig. 5a) on a synthetic memory whose truthful and
//! hallucinated states differ along one direction: sampling per level, seeded and repeatable fits, exact PCA
//! placement, retrieval by the cosine of centred states, and the encoders' spaces doing what Fig. 5a shows.

use anyhow::Result;
use candle_core::{Device, Tensor};
use unike_core::edit::unike::encoders::{EncoderParams, Encoders};
use unike_core::edit::unike::explore::{
    features, kind_agreement, retrieve, sample, ExploreParams, Explorer, Projection, Space,
};
use unike_core::edit::unike::memory::{KnowledgeMemory, Triplet};
use unike_core::world::rng::Rng;

const D: usize = 16;
const LEVELS: [&str; 3] = ["recognition", "vision", "reasoning"];

/// `n` triplets: a random semantic state per question; the truthful answer's state adds a fixed direction, the
/// hallucinated one subtracts it (smaller than the semantic spread, so the raw states of one question stay close).
fn memory(n: usize) -> Result<KnowledgeMemory> {
    let mut rng = Rng::new(3);
    let truth: Vec<f32> = (0..D).map(|i| if i == 0 { 0.6 } else { 0.0 }).collect();
    let (mut sem, mut pos, mut neg) = (Vec::new(), Vec::new(), Vec::new());
    let mut triplets = Vec::new();
    for i in 0..n {
        let s: Vec<f32> = (0..D).map(|_| rng.normal()).collect();
        sem.extend(&s);
        pos.extend(s.iter().zip(&truth).map(|(a, t)| a + t + 0.05 * rng.normal()));
        neg.extend(s.iter().zip(&truth).map(|(a, t)| a - t + 0.05 * rng.normal()));
        triplets.push(Triplet {
            question: format!("question {i}"),
            image: format!("scene {i}"),
            // Levels of unequal size, as the real memory's.
            level: LEVELS[if i % 10 == 0 {
                1
            } else if i % 3 == 0 {
                2
            } else {
                0
            }]
            .into(),
            pos: format!("yes {i}"),
            neg: format!("no {i}"),
        });
    }
    let t = |v: Vec<f32>| Tensor::from_vec(v, (n, D), &Device::Cpu);
    Ok(KnowledgeMemory { layers: vec![1], h_sem: vec![t(sem)?], h_pos: vec![t(pos)?], h_neg: vec![t(neg)?], triplets })
}

fn encoders(mem: &KnowledgeMemory) -> Result<Encoders> {
    let params = EncoderParams { hidden: 32, steps: 1000, batch: 64, lr: 3e-3, temperature: 0.1, seed: 0 };
    Ok(Encoders::train(mem, &params, &mut |_, _, _| {})?.0)
}

#[test]
fn sampling_takes_each_level_up_to_its_share_in_memory_order() -> Result<()> {
    let mem = memory(200)?;
    let s = sample(&mem, 30, 0);
    let count = |l: &str| s.iter().filter(|&&i| mem.triplets[i].level == l).count();
    // vision has 20 triplets: all of them; the others 30 each.
    assert_eq!((count("recognition"), count("vision"), count("reasoning")), (30, 20, 30));
    assert!(s.windows(2).all(|w| w[0] < w[1]), "memory order, no repeats");
    assert_eq!(s, sample(&mem, 30, 0), "a seed draws one sample");
    assert_ne!(s, sample(&mem, 30, 1), "another seed, another sample");
    Ok(())
}

#[test]
fn fits_are_seeded_and_pca_places_states_exactly() -> Result<()> {
    let mem = memory(160)?;
    let enc = encoders(&mem)?;
    let layer = enc.layer(1)?;
    for projection in [Projection::Pca, Projection::Tsne] {
        let params = ExploreParams { projection, per_level: 40, ..Default::default() };
        let a = Explorer::fit(&mem, layer, 1, &params)?;
        let b = Explorer::fit(&mem, layer, 1, &params)?;
        assert_eq!(a.spaces.len(), 3);
        for (x, y) in a.spaces.iter().zip(&b.spaces) {
            assert_eq!(x.coords.len(), 2 * a.sample.len());
            assert_eq!(x.coords, y.coords, "{projection:?} {:?}: the same seed, another picture", x.space);
            assert!(x.coords.iter().all(|p| p[0].is_finite() && p[1].is_finite()));
        }
        // Placing the fitted positive states: exactly where PCA put them; near them under t-SNE.
        let idx = Tensor::new(a.sample.iter().map(|&i| i as u32).collect::<Vec<_>>().as_slice(), &Device::Cpu)?;
        let h = mem.h_pos[0].index_select(&idx, 0)?;
        for s in &a.spaces {
            let placed = s.place(&features(layer, s.space, &h)?)?;
            let m = a.sample.len();
            let off: Vec<f32> = placed
                .iter()
                .zip(&s.coords[..m])
                .map(|(p, c)| ((p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2)).sqrt() / s.extent)
                .collect();
            let worst = off.iter().copied().fold(0f32, f32::max);
            let median = {
                let mut o = off.clone();
                o.sort_by(f32::total_cmp);
                o[o.len() / 2]
            };
            match projection {
                Projection::Pca => assert!(worst < 1e-3, "{:?}: PCA placement off by {worst}", s.space),
                Projection::Tsne => assert!(median < 0.25, "{:?}: t-SNE placement off by {median} (median)", s.space),
            }
        }
    }
    Ok(())
}

#[test]
fn the_truthfulness_space_parts_what_the_semantic_space_mixes() -> Result<()> {
    let mem = memory(240)?;
    let enc = encoders(&mem)?;
    let layer = enc.layer(1)?;
    let params = ExploreParams { projection: Projection::Pca, per_level: 100, ..Default::default() };
    let fit = Explorer::fit(&mem, layer, 1, &params)?;
    let agree = |s: Space| fit.spaces.iter().find(|f| f.space == s).map(|f| kind_agreement(&f.coords)).unwrap_or(0.0);
    let (raw, sem, tru) = (agree(Space::Raw), agree(Space::Semantic), agree(Space::Truthful));
    // Each question's two states are neighbours in the raw and semantic pictures (the semantic encoder pulls them
    // together: more mixed than raw), apart in the truthfulness one (0.80 here after 1,000 steps; an encoder left
    // out would give the raw picture).
    assert!(tru > 0.75 && tru > raw + 0.15, "truthfulness space: {tru} (raw {raw})");
    assert!(sem < raw && sem < 0.6, "semantic {sem}, raw {raw}");
    Ok(())
}

#[test]
fn kind_agreement_reads_apart_and_mixed() {
    // Positives on the left, negatives on the right: apart.
    let apart: Vec<[f32; 2]> = (0..40).map(|i| [if i < 20 { -1.0 } else { 1.0 }, (i % 20) as f32 * 0.01]).collect();
    assert!((kind_agreement(&apart) - 1.0).abs() < 1e-6);
    // Each positive beside its negative along a line: mixed.
    let mixed: Vec<[f32; 2]> = (0..40).map(|i| [(i % 20) as f32 + if i < 20 { 0.0 } else { 0.1 }, 0.0]).collect();
    assert!(kind_agreement(&mixed) < 0.7, "{}", kind_agreement(&mixed));
}

#[test]
fn retrieval_ranks_memory_and_extra_entries_by_cosine_of_centred_states() -> Result<()> {
    let mem = memory(50)?;
    let centre = mem.h_sem[0].mean(0)?;
    let query = mem.h_sem[0].get(7)?;
    // An extra entry equal to the query (as an edit's own state): retrieved first, beside the memory's copy.
    let extra = query.unsqueeze(0)?;
    let got = retrieve(&mem.h_sem[0], Some(&extra), &centre, &query, 5)?;
    assert_eq!(got.len(), 5);
    let mut firsts = [got[0].index, got[1].index];
    firsts.sort_unstable();
    assert_eq!(firsts, [7, 50], "{got:?}");
    // The order is the brute-force cosine order.
    let rows: Vec<Vec<f32>> = mem.h_sem[0].broadcast_sub(&centre)?.to_vec2()?;
    let q: Vec<f32> = query.broadcast_sub(&centre)?.to_vec1()?;
    let cos = |r: &[f32]| {
        let dot: f32 = r.iter().zip(&q).map(|(a, b)| a * b).sum();
        dot / (r.iter().map(|a| a * a).sum::<f32>().sqrt() * q.iter().map(|a| a * a).sum::<f32>().sqrt())
    };
    let mut want: Vec<(f32, usize)> = rows.iter().enumerate().map(|(i, r)| (cos(r), i)).collect();
    want.sort_by(|a, b| b.0.total_cmp(&a.0));
    let memory_only = retrieve(&mem.h_sem[0], None, &centre, &query, 4)?;
    assert_eq!(
        memory_only.iter().map(|r| r.index).collect::<Vec<_>>(),
        want[..4].iter().map(|w| w.1).collect::<Vec<_>>()
    );
    for (r, w) in memory_only.iter().zip(&want) {
        assert!((r.score - w.0).abs() < 1e-3, "{} vs {}", r.score, w.0);
    }
    Ok(())
}
