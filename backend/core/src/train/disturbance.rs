//! Where an irrelevant demonstration disturbs the recall (a diagnostic for issue 14's `context_ignore`; tests only).
//!
//! `eval-base --breakdown` shows that a hard irrelevant demonstration rarely gets copied: it turns the recall into
//! another answer of the right type. This probe asks *where* that enters, by activation patching (Meng et al., 2022;
//! here the clean run's states restore a corrupted one): for each query that the model answers with the world's answer
//! alone but not behind the demonstration, the self-attention outputs of a region of the query's positions are
//! replaced, in the run with the demonstration, by those of the run without it, and the answer is checked again
//! (teacher-forced: every answer id and `</s>` the argmax). A region whose patch restores the answer is where the
//! demonstration's influence comes in. The query's positions are the ids both runs share at their end.

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::{Device, Tensor};

    use crate::error::{Error, Result};
    use crate::hooks::{AttnContext, AttnHook, Capture, CapturePoint, Hooks};
    use crate::train::batch::{make_batch, Batch};
    use crate::train::test_support::Probed;
    use crate::world::context::{hard_split, HardKind};
    use crate::world::tokenizer::IMAGE;

    /// Replaces the attention output of batch row 0 at `rows` by `values (rows.len(), d)`.
    #[derive(Debug)]
    struct Patch {
        rows: Vec<u32>,
        values: Tensor,
    }

    impl AttnHook for Patch {
        fn shift_attention(&self, _ctx: &AttnContext<'_>, attn: Tensor) -> Result<Tensor> {
            let a = attn.squeeze(0)?;
            let (s, _) = a.dims2()?;
            let idx = Tensor::new(self.rows.as_slice(), a.device())?;
            let mut mask = vec![1f32; s];
            for &r in &self.rows {
                mask[r as usize] = 0.0;
            }
            let keep = Tensor::from_vec(mask, (s, 1), a.device())?.to_dtype(a.dtype())?;
            let put = a.zeros_like()?.index_add(&idx, &self.values.to_dtype(a.dtype())?, 0)?;
            Ok(a.broadcast_mul(&keep)?.add(&put)?.unsqueeze(0)?)
        }
    }

    /// Final hidden states `(1, s, d)` of a one-sample batch under `hooks`, capturing into `capture`.
    fn run(p: &Probed, b: &Batch, hooks: &Hooks, capture: &mut Capture) -> Result<Tensor> {
        let m = &p.t.model;
        let image = b.pixels.as_ref().map(|px| m.project(&m.vision_features(px)?)).transpose()?;
        let embeds = m.embed_inputs(&b.ids, image.as_ref())?;
        m.forward_embeds(&embeds, 0, None, hooks, capture)
    }

    /// Whether every supervised id of the one-sample batch `b` is the argmax of the run's logits.
    fn right(p: &Probed, b: &Batch, hidden: &Tensor) -> Result<bool> {
        let logits = p.t.model.logits(hidden)?.squeeze(0)?;
        let picked = logits.index_select(&b.positions, 0)?.argmax(1)?.to_vec1::<u32>()?;
        Ok(picked == b.targets.to_vec1::<u32>()?)
    }

    /// The regions of the query: `(name, positions in the run with the demonstration, the same in the run without)`.
    fn regions(ids_ctx: &[u32], ids_clean: &[u32], answer_len: usize) -> Vec<(&'static str, Vec<u32>, Vec<u32>)> {
        // The shared suffix: the query's turn, its answer and `</s>` (the clean run's ids after `<s>`).
        let shared = ids_clean.len() - 1;
        let (oc, o0) = (ids_ctx.len() - shared, 1);
        assert_eq!(ids_ctx[oc..], ids_clean[o0..], "the query's ids differ behind the demonstration");
        let predicts = shared - answer_len - 2; // the id before the answer: it and after predict the answer and `</s>`
        let mut image = vec![];
        let mut text = vec![];
        let mut answer = vec![];
        for k in 0..shared {
            if k >= predicts {
                answer.push(k);
            } else if ids_clean[o0 + k] == IMAGE {
                image.push(k);
            } else {
                text.push(k);
            }
        }
        let all: Vec<usize> = (0..shared).collect();
        let map = |v: &[usize], o: usize| v.iter().map(|&k| (o + k) as u32).collect::<Vec<_>>();
        [("image", image), ("question text", text), ("answer-predicting", answer), ("whole query", all)]
            .into_iter()
            .map(|(n, v)| (n, map(&v, oc), map(&v, o0)))
            .collect()
    }

    /// `cargo test -p unike-core --release --lib -- --ignored --nocapture probe_disturbance` (`UNIKE_PROBE_MODEL=DIR`
    /// for another checkpoint than the shipped one).
    #[test]
    #[ignore]
    fn probe_disturbance() -> Result<()> {
        let p = Probed::load()?;
        let layers = p.t.config.text.num_hidden_layers;
        let seq = p.t.config.image_seq_length;
        let n = 300;
        for kind in [HardKind::SameEntity, HardKind::SameEntitySameImage, HardKind::SameRelation] {
            // restored[region][layer]: patched at that layer alone; the last column: at every layer.
            let mut restored: Vec<Vec<usize>> = vec![vec![0; layers + 1]; 4];
            let mut names = vec![];
            let (mut disturbed, mut clean_right) = (0, 0);
            for (s, _, _) in hard_split(&p.world, n, kind) {
                let clean = s.alone();
                let bc = make_batch(std::slice::from_ref(&s), &p.tok, &p.images, seq, 0.0, &Device::Cpu)?;
                let b0 = make_batch(std::slice::from_ref(&clean), &p.tok, &p.images, seq, 0.0, &Device::Cpu)?;
                let mut cap = Capture::at_layers(0..layers, CapturePoint::AttnOutput);
                let h0 = run(&p, &b0, &Hooks::none(), &mut cap)?;
                if !right(&p, &b0, &h0)? {
                    continue;
                }
                clean_right += 1;
                if right(&p, &bc, &run(&p, &bc, &Hooks::none(), &mut Capture::none())?)? {
                    continue;
                }
                disturbed += 1;
                let ids_c = bc.ids.squeeze(0)?.to_vec1::<u32>()?;
                let ids_0 = b0.ids.squeeze(0)?.to_vec1::<u32>()?;
                let answer_len = p.tok.encode(s.answer.as_str(), false).map_err(|e| Error::Tokenizer(e.to_string()))?;
                let regs = regions(&ids_c, &ids_0, answer_len.len());
                names = regs.iter().map(|r| r.0).collect();
                for (ri, (_, rows_c, rows_0)) in regs.iter().enumerate() {
                    let patch = |l: usize| -> Result<Arc<Patch>> {
                        let a = cap.get(l, CapturePoint::AttnOutput).ok_or_else(|| Error::Invalid(format!("{l}")))?;
                        let values = a.squeeze(0)?.index_select(&Tensor::new(rows_0.as_slice(), &Device::Cpu)?, 0)?;
                        Ok(Arc::new(Patch { rows: rows_c.clone(), values }))
                    };
                    for (l, count) in restored[ri].iter_mut().enumerate() {
                        let mut hooks = Hooks::none();
                        for at in if l == layers { 0..layers } else { l..l + 1 } {
                            hooks.add_attn(at, patch(at)?);
                        }
                        if right(&p, &bc, &run(&p, &bc, &hooks, &mut Capture::none())?)? {
                            *count += 1;
                        }
                    }
                }
            }
            println!("{}: {n} queries, {clean_right} right alone, {disturbed} of them disturbed", kind.name());
            println!(
                "  restored by patching {:>22}",
                (0..layers).map(|l| format!("L{l}   ")).collect::<String>() + "all"
            );
            for (ri, name) in names.iter().enumerate() {
                let f = |k: usize| format!("{:.2} ", k as f32 / disturbed.max(1) as f32);
                println!("  {name:>22} {}", restored[ri].iter().map(|&k| f(k) + " ").collect::<String>());
            }
        }
        Ok(())
    }
}
