//! The MMEdit / VLKEB evaluation harness: pre-edit outputs computed once before any edit, then one-step editing
//! (every edit on a fresh stack), sequential editing (K edits stacked, then every case of the sequence evaluated) or
//! VLKEB's sequential editing with a gap (one continuous stream of edits; each case scored right after exactly G
//! later edits). Cross-task editing is sequential editing over a list that mixes VQA and caption cases. Portability
//! is reported per number of hops too.
//!
//! Token metrics follow [`MetricConvention::V2`] (see [`super::metrics`]): answer tokens only; T-Locality top-1 and
//! M-Locality element-wise top-10 agreement at the locality answer's positions; the unedited model's portability.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use unike_shared::{BenchResult, HopScore, MetricConvention, MetricSet, Timing};

use super::metrics::{agreement, answer_scores, token_accuracy, top_k_agreement, EditMetric, Mean};
use crate::data::EditCase;
use crate::edit::{EditContext, EditMethod, EditRequest, EditSequence, PatchStack, Prediction};
use crate::error::{Error, Result};
use crate::hooks::Hooks;
use crate::model::{GenerateOptions, ModelProcessor, Pixels, VisionLanguageModel};

/// Editing mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each edit on the unedited model.
    OneStep,
    /// `k` edits stacked, then all `k` evaluated.
    Sequential(usize),
    /// VLKEB's gap protocol: one stream of edits, never reset; case `i` is scored right after edit `i + g`, so the
    /// last `g` cases of the stream are edited and never scored.
    SequentialGap(usize),
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::OneStep => "one-step",
            Mode::Sequential(_) => "sequential",
            Mode::SequentialGap(_) => "sequential-gap",
        }
    }

    /// Edits per sequence; the gap in [`Mode::SequentialGap`].
    pub fn k(self) -> usize {
        match self {
            Mode::OneStep => 1,
            Mode::Sequential(k) => k.max(1),
            Mode::SequentialGap(g) => g,
        }
    }

    /// Cases a run of `n` scored cases edits: `n + g` for the gap protocol, else `n`.
    pub fn stream_len(self, n: usize) -> usize {
        match self {
            Mode::SequentialGap(g) => n + g,
            _ => n,
        }
    }
}

/// Ids compared per answer position by M-Locality (EasyEdit's multimodal locality: top-10).
pub const M_LOCALITY_TOP_K: usize = 10;

/// A locality probe with its pre-edit behaviour, computed once before any edit.
struct LocalityProbe {
    /// The probe with its reference answer (agreement is scored at its answer positions, not at its end of sequence).
    seq: EditSequence,
    /// Pre-edit top-1 token at each answer position.
    pre_top1: Vec<u32>,
    /// Pre-edit top-1 token at each answer position and at the end of sequence (the old convention v1).
    pre_top1_v1: Vec<u32>,
    /// Pre-edit top-k ids (highest logit first) at each answer position; empty for T-Locality.
    pre_top: Vec<Vec<u32>>,
    /// The probe with the pre-edit greedy answer (exact match: the post-edit model reproduces it).
    pre_greedy: EditSequence,
}

/// An edit case tokenized, with its pre-edit outputs (locality probes, the unedited model's portability).
pub struct PreparedCase {
    request: EditRequest,
    reliability: EditSequence,
    t_generality: EditSequence,
    m_generality: EditSequence,
    t_locality: LocalityProbe,
    m_locality: LocalityProbe,
    portability: Vec<EditSequence>,
    /// Each portability question's number of hops, as the data names it (`1-hop`, ...).
    portability_hops: Vec<String>,
    /// The unedited model's token accuracy, exact match and token accuracy of the old convention v1 (the end of
    /// sequence scored) on each portability question.
    portability_base: Vec<(f32, bool, f32)>,
    /// The unedited model's top-1 tokens at the target's positions of the edit question (teacher-forced), as text.
    answer_before: String,
}

impl PreparedCase {
    /// The edit request.
    pub fn request(&self) -> &EditRequest {
        &self.request
    }

    /// The five probes of MMEdit's metrics, in [`super::share::PROBE_KINDS`] order: the edit, its rephrased
    /// question, its other image, the unrelated text question and the unrelated image question.
    pub fn probes(&self) -> [&EditSequence; 5] {
        [&self.reliability, &self.t_generality, &self.m_generality, &self.t_locality.seq, &self.m_locality.seq]
    }

    /// Every sequence scored after the edit with the top-k it needs, in [`Evaluator::score`]'s order.
    fn sequences(&self) -> Vec<(&EditSequence, usize)> {
        let mut v = vec![
            (&self.reliability, 0),
            (&self.t_generality, 0),
            (&self.m_generality, 0),
            (&self.t_locality.seq, 0),
            (&self.t_locality.pre_greedy, 0),
            (&self.m_locality.seq, M_LOCALITY_TOP_K),
            (&self.m_locality.pre_greedy, 0),
        ];
        v.extend(self.portability.iter().map(|p| (p, 0)));
        v
    }
}

/// Sequences per forward pass when scoring.
const BATCH: usize = 32;

/// The model, its processor, its end-of-sequence ids and a cache of preprocessed images.
pub struct Evaluator<'a> {
    pub model: &'a dyn VisionLanguageModel,
    pub processor: &'a dyn ModelProcessor,
    pub eos: Vec<u32>,
    images: HashMap<PathBuf, Pixels>,
}

impl<'a> Evaluator<'a> {
    pub fn new(model: &'a dyn VisionLanguageModel, processor: &'a dyn ModelProcessor, eos: Vec<u32>) -> Self {
        Self { model, processor, eos, images: HashMap::new() }
    }

    /// The preprocessed image of a file (cached).
    pub fn pixels(&mut self, path: &Path) -> Result<Pixels> {
        if let Some(t) = self.images.get(path) {
            return Ok(t.clone());
        }
        let t = self.processor.load_image(path, self.model.device())?;
        self.images.insert(path.to_path_buf(), t.clone());
        Ok(t)
    }

    fn seq(&mut self, question: &str, image: Option<&Path>, answer: &str) -> Result<EditSequence> {
        let pixels = image.map(|p| self.pixels(p)).transpose()?;
        EditSequence::new(self.processor, question, pixels.as_ref(), answer, self.eos[0])
    }

    /// A locality probe with the unedited model's top-1 (and, `k > 0`, top-`k`) ids at its answer positions.
    fn locality(&mut self, question: &str, image: Option<&Path>, answer: &str, k: usize) -> Result<LocalityProbe> {
        let seq = self.seq(question, image, answer)?;
        let none = Hooks::none();
        let pred = EditSequence::predict_batch(self.model, &[(&seq, k)], &none, 1)?
            .pop()
            .ok_or_else(|| Error::Invalid("no prediction for a locality probe".into()))?;
        let pre_top1 = pred.argmax[..seq.answer().len()].to_vec();
        let pre_top1_v1 = pred.argmax.clone();
        let opts = GenerateOptions { max_new_tokens: 24, eos_token_ids: self.eos.clone() };
        let gen = self.model.generate(&seq.ids[..seq.prompt_len], seq.pixels.as_ref(), &none, &opts)?;
        let pre_greedy = seq.with_answer(&gen.tokens);
        Ok(LocalityProbe { seq, pre_top1, pre_top1_v1, pre_top: pred.top, pre_greedy })
    }

    /// Tokenizes `case` and computes its pre-edit outputs on the unedited model: the locality probes' top-1 / top-10
    /// ids and greedy answers, and the portability questions' scores (VLKEB's base).
    pub fn prepare(&mut self, case: &EditCase, seed: u64) -> Result<PreparedCase> {
        let image = self.pixels(&case.image)?;
        let request = EditRequest {
            question: case.prompt.clone(),
            image: Some(image),
            image_path: Some(case.image.display().to_string()),
            target: case.target.clone(),
            seed,
        };
        let portability: Vec<EditSequence> = case
            .portability
            .iter()
            .map(|p| self.seq(&p.question, Some(&case.image), &p.answer))
            .collect::<Result<_>>()?;
        // The edit question first, then the portability questions, in one batch on the unedited model.
        let reliability = self.seq(&case.prompt, Some(&case.image), &case.target)?;
        let asks: Vec<(&EditSequence, usize)> =
            std::iter::once(&reliability).chain(&portability).map(|p| (p, 0)).collect();
        let preds = EditSequence::predict_batch(self.model, &asks, &Hooks::none(), BATCH)?;
        let first = preds.first().ok_or_else(|| Error::Invalid("no prediction for the edit question".into()))?;
        let answer_before = self.top1_text(first, &reliability)?;
        let portability_base = preds[1..]
            .iter()
            .zip(&portability)
            .map(|(pred, seq)| {
                let (token, exact) = answer_scores(&pred.argmax, seq.targets());
                (token, exact, token_accuracy(&pred.argmax, seq.targets()))
            })
            .collect();
        Ok(PreparedCase {
            answer_before,
            reliability,
            t_generality: self.seq(&case.rephrase_prompt, Some(&case.image), &case.target)?,
            m_generality: self.seq(&case.prompt, Some(&case.rephrase_image), &case.target)?,
            t_locality: self.locality(&case.loc_question, None, &case.loc_answer, 0)?,
            m_locality: self.locality(
                &case.m_loc_question,
                Some(&case.m_loc_image),
                &case.m_loc_answer,
                M_LOCALITY_TOP_K,
            )?,
            portability,
            portability_hops: case.portability.iter().map(|p| p.hop.clone()).collect(),
            portability_base,
            request,
        })
    }

    /// `seq`'s top-1 tokens at its answer's positions in `pred` (teacher-forced), as text.
    fn top1_text(&self, pred: &Prediction, seq: &EditSequence) -> Result<String> {
        let n = seq.answer().len().min(pred.argmax.len());
        Ok(self.processor.decode(&pred.argmax[..n])?.trim().to_string())
    }

    /// Scores `cases` under `hooks` into the running means, every probe of every case batched.
    ///
    /// Token scores: answer tokens only (the end of sequence is not scored); T-Locality: top-1 agreement with the
    /// unedited model at each answer position of the probe; M-Locality: its top-10 lists compared slot by slot there
    /// (and, as `m_locality_top1`, the top-1 agreement). Exact match of a greedy answer is read off teacher forcing:
    /// greedy decoding produces the reference (then stops) exactly when the reference's every token and its end of
    /// sequence are the argmax at their positions.
    fn score(&self, cases: &[&PreparedCase], first: usize, hooks: &Hooks, sums: &mut Sums) -> Result<()> {
        let asks: Vec<(&EditSequence, usize)> = cases.iter().flat_map(|c| c.sequences()).collect();
        let preds = EditSequence::predict_batch(self.model, &asks, hooks, BATCH)?;
        let mut at = 0;
        for (i, case) in cases.iter().enumerate() {
            sums.case = first + i;
            let mut next = || {
                at += 1;
                (&preds[at - 1], asks[at - 1].0)
            };
            let accuracy = |sums: &mut Sums, m: EditMetric, (pred, seq): (&Prediction, &EditSequence)| {
                let (token, exact) = answer_scores(&pred.argmax, seq.targets());
                sums.update(m, token, exact);
                sums.update_v1(m, token_accuracy(&pred.argmax, seq.targets()));
            };
            let reliability = next();
            accuracy(sums, EditMetric::Reliability, reliability);
            sums.answers.push((first + i, self.top1_text(reliability.0, reliability.1)?));
            accuracy(sums, EditMetric::TGenerality, next());
            accuracy(sums, EditMetric::MGenerality, next());
            let (post, _) = next();
            let (greedy, g) = next();
            let exact = greedy.argmax.as_slice() == g.targets();
            sums.update(EditMetric::TLocality, agreement(&case.t_locality.pre_top1, &post.argmax), exact);
            sums.update_v1(EditMetric::TLocality, agreement(&case.t_locality.pre_top1_v1, &post.argmax));
            let (post, _) = next();
            let (greedy, g) = next();
            let exact = greedy.argmax.as_slice() == g.targets();
            let probe = &case.m_locality;
            sums.update(EditMetric::MLocality, top_k_agreement(&probe.pre_top, &post.top), exact);
            sums.update(EditMetric::MLocalityTop1, agreement(&probe.pre_top1, &post.argmax), exact);
            sums.update_v1(EditMetric::MLocality, agreement(&probe.pre_top1_v1, &post.argmax));
            for hop in &case.portability_hops {
                let (pred, seq) = next();
                accuracy(sums, EditMetric::Portability, (pred, seq));
                let (token, exact) = answer_scores(&pred.argmax, seq.targets());
                sums.hops.push((hop.clone(), token, exact));
            }
        }
        Ok(())
    }
}

/// The metric updates of a run, in order (replayed into means, so that merging chunks computed on different threads
/// gives the same floating-point sums as one thread).
#[derive(Default, Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Sums {
    /// The case (index into the run's cases) the next updates belong to.
    #[serde(skip)]
    case: usize,
    updates: Vec<(usize, EditMetric, f32, bool)>,
    /// The old convention's token scores (v1: the end of sequence scored, M-Locality as top-1 agreement), in order.
    updates_v1: Vec<(EditMetric, f32)>,
    /// Portability token score and exact match per question with its number of hops, in order.
    hops: Vec<(String, f32, bool)>,
    /// Per scored case, the top-1 tokens at the target's positions of the edit question after the edit.
    #[serde(default)]
    answers: Vec<(usize, String)>,
}

impl Sums {
    fn update(&mut self, m: EditMetric, token: f32, exact: bool) {
        self.updates.push((self.case, m, token, exact));
    }

    fn update_v1(&mut self, m: EditMetric, token: f32) {
        self.updates_v1.push((m, token));
    }

    pub(super) fn merge(&mut self, other: Sums) {
        self.updates.extend(other.updates);
        self.updates_v1.extend(other.updates_v1);
        self.hops.extend(other.hops);
        self.answers.extend(other.answers);
    }

    /// Means of the old convention v1.
    fn token_v1(&self) -> [Mean; N_METRICS] {
        let mut means: [Mean; N_METRICS] = Default::default();
        for &(m, token) in &self.updates_v1 {
            means[m as usize].update(token);
        }
        means
    }

    /// Means of the field's token-level convention.
    fn token(&self) -> [Mean; N_METRICS] {
        let mut means: [Mean; N_METRICS] = Default::default();
        for &(_, m, token, _) in &self.updates {
            means[m as usize].update(token);
        }
        means
    }

    /// Per case, its mean token score of each metric (`None` where it has no such probe).
    fn per_case(&self, n: usize) -> Vec<[Option<f64>; N_METRICS]> {
        let mut means: Vec<[Mean; N_METRICS]> = (0..n).map(|_| Default::default()).collect();
        for &(c, m, token, _) in &self.updates {
            means[c][m as usize].update(token);
        }
        means.iter().map(|ms| std::array::from_fn(|i| ms[i].value().map(|v| v * 100.0))).collect()
    }

    /// Means of exact match.
    fn exact(&self) -> [Mean; N_METRICS] {
        let mut means: [Mean; N_METRICS] = Default::default();
        for &(_, m, _, exact) in &self.updates {
            means[m as usize].update(f32::from(u8::from(exact)));
        }
        means
    }
}

/// Metrics per case and per run ([`EditMetric`] order).
const N_METRICS: usize = EditMetric::ALL.len();

/// The result's metrics from `means`, with the unedited model's portability `base` (a mean of fractions) and, for
/// the token convention, M-Locality's top-1 variant.
fn metric_set(means: &[Mean; N_METRICS], base: &Mean, with_top1: bool) -> MetricSet {
    let opt = |x: EditMetric| means[x as usize].value().map(|v| v * 100.0);
    let pct = |x: EditMetric| opt(x).unwrap_or(0.0);
    MetricSet {
        reliability: pct(EditMetric::Reliability),
        t_generality: pct(EditMetric::TGenerality),
        m_generality: pct(EditMetric::MGenerality),
        t_locality: pct(EditMetric::TLocality),
        m_locality: pct(EditMetric::MLocality),
        portability: opt(EditMetric::Portability),
        portability_base: base.value().map(|v| v * 100.0),
        m_locality_top1: if with_top1 { opt(EditMetric::MLocalityTop1) } else { None },
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// What one chunk (a fresh stack of `k` edits) produced: its edit times and its metric updates in order.
struct ChunkOutcome {
    edit_ms: Vec<f64>,
    sums: Sums,
}

/// Edits one chunk of cases (the run's cases from `first`) onto a fresh stack, then scores them under it.
fn run_chunk(
    ev: &Evaluator<'_>,
    method: &dyn EditMethod,
    chunk: &[PreparedCase],
    first: usize,
) -> Result<ChunkOutcome> {
    let mut stack = PatchStack::new();
    let mut edit_ms = Vec::with_capacity(chunk.len());
    for case in chunk {
        let t = Instant::now();
        let ctx = EditContext { model: ev.model, processor: ev.processor, stack: &stack };
        let patch = method.edit(&ctx, &case.request)?;
        edit_ms.push(t.elapsed().as_secs_f64() * 1e3);
        stack.push(patch);
    }
    let hooks = stack.hooks()?;
    let mut sums = Sums::default();
    ev.score(&chunk.iter().collect::<Vec<_>>(), first, &hooks, &mut sums)?;
    Ok(ChunkOutcome { edit_ms, sums })
}

/// Runs `method` over `cases` (already prepared, pre-edit outputs included) in `mode`; `progress(done, total)` after
/// every evaluated chunk; when it returns `false` no further chunk starts and the run ends with [`Error::Cancelled`].
///
/// Chunks (one edit in one-step mode, `k` in sequential mode) start from a fresh stack, so they are independent: up
/// to `threads` worker threads take them in turn. The metrics are merged in chunk order, so the numbers do not depend
/// on `threads`; only the edit times do (the workers share the machine's memory bandwidth).
pub fn run(
    ev: &Evaluator<'_>,
    method: &dyn EditMethod,
    cases: &[PreparedCase],
    mode: Mode,
    task: &str,
    threads: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<BenchResult> {
    Ok(run_detailed(ev, method, cases, mode, task, threads, progress)?.0)
}

/// One case's scores in a run: its edit time and, per metric ([`EditMetric`] order), its token score in percent.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseScore {
    pub edit_ms: f64,
    pub token: [Option<f64>; EditMetric::ALL.len()],
    /// The top-1 tokens at the target's positions of the edit question (teacher-forced, as reliability is scored)
    /// before and after the edit, as text.
    pub answer_before: Option<String>,
    pub answer_after: Option<String>,
}

/// One-step and sequential runs: independent chunks of `mode.k()` cases, each on a fresh stack, taken by up to
/// `threads` workers; the metric updates merged in chunk order and the edit times in case order.
pub(super) fn run_chunks(
    ev: &Evaluator<'_>,
    method: &dyn EditMethod,
    cases: &[PreparedCase],
    base: usize,
    mode: Mode,
    threads: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<(Sums, Vec<f64>)> {
    let chunks: Vec<&[PreparedCase]> = cases.chunks(mode.k()).collect();
    let mut outcomes: Vec<Option<ChunkOutcome>> = (0..chunks.len()).map(|_| None).collect();
    let next = AtomicUsize::new(0);
    let mut failure: Option<(usize, Error)> = None;
    let mut cancelled = false;
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        for _ in 0..threads.clamp(1, chunks.len().max(1)) {
            let (tx, next, chunks) = (tx.clone(), &next, &chunks);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(chunk) = chunks.get(i) else { break };
                if tx.send((i, run_chunk(ev, method, chunk, base + i * mode.k()))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut done = 0;
        for (i, outcome) in rx {
            match outcome {
                Ok(o) => {
                    done += chunks[i].len();
                    outcomes[i] = Some(o);
                    if !cancelled && !progress(done, cases.len()) {
                        cancelled = true;
                        next.store(chunks.len(), Ordering::SeqCst);
                    }
                }
                Err(e) => {
                    // Stop handing out chunks; report the earliest failing chunk, whatever the scheduling.
                    next.store(chunks.len(), Ordering::SeqCst);
                    if failure.as_ref().is_none_or(|(j, _)| i < *j) {
                        failure = Some((i, e));
                    }
                }
            }
        }
    });
    if let Some((_, e)) = failure {
        return Err(e);
    }
    if cancelled {
        return Err(Error::Cancelled);
    }
    let mut sums = Sums::default();
    let mut edit_ms = Vec::with_capacity(cases.len());
    for o in outcomes.into_iter().flatten() {
        sums.merge(o.sums);
        edit_ms.extend(o.edit_ms);
    }
    Ok((sums, edit_ms))
}

/// VLKEB's gap protocol ([`Mode::SequentialGap`]): `cases` edited in order onto one stack; right after edit `t >= g`,
/// case `t - g` is scored under the stack as it stands. Returns the updates of the first `len - g` cases, every
/// edit's time, and how many cases were scored.
pub(super) fn run_stream(
    ev: &Evaluator<'_>,
    method: &dyn EditMethod,
    cases: &[PreparedCase],
    g: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<(Sums, Vec<f64>, usize)> {
    let scored = cases.len().saturating_sub(g);
    if scored == 0 {
        return Err(Error::Invalid(format!(
            "the gap protocol with a gap of {g} scores the cases followed by {g} more edits: it needs more than {g} \
             cases, not {}",
            cases.len()
        )));
    }
    let mut stack = PatchStack::new();
    let mut sums = Sums::default();
    let mut edit_ms = Vec::with_capacity(cases.len());
    for (t, case) in cases.iter().enumerate() {
        let start = Instant::now();
        let patch =
            method.edit(&EditContext { model: ev.model, processor: ev.processor, stack: &stack }, &case.request)?;
        edit_ms.push(start.elapsed().as_secs_f64() * 1e3);
        stack.push(patch);
        if let Some(i) = t.checked_sub(g) {
            ev.score(&[&cases[i]], i, &stack.hooks()?, &mut sums)?;
            if !progress(i + 1, scored) {
                return Err(Error::Cancelled);
            }
        }
    }
    Ok((sums, edit_ms, scored))
}

/// Portability per number of hops: the scored questions' means after the edit and the unedited model's on them.
fn hop_scores(sums: &Sums, cases: &[CaseMeta]) -> Vec<HopScore> {
    let mut by: std::collections::BTreeMap<&str, [Mean; 4]> = std::collections::BTreeMap::new();
    for (hop, token, exact) in &sums.hops {
        let m = by.entry(hop.as_str()).or_default();
        m[0].update(*token);
        m[1].update(f32::from(u8::from(*exact)));
    }
    for (hop, &(token, exact, _)) in cases.iter().flat_map(|c| c.portability_hops.iter().zip(&c.portability_base)) {
        let m = by.entry(hop.as_str()).or_default();
        m[2].update(token);
        m[3].update(f32::from(u8::from(exact)));
    }
    by.into_iter()
        .map(|(hop, m)| {
            let pct = |i: usize| m[i].value().map_or(0.0, |v| v * 100.0);
            HopScore {
                hop: hop.to_string(),
                questions: m[2].count(),
                token: pct(0),
                token_base: pct(2),
                exact: pct(1),
                exact_base: pct(3),
            }
        })
        .collect()
}

/// [`run`], with every case's scores too (the scored cases: all of them, or the first `len - g` of a gap stream).
pub fn run_detailed(
    ev: &Evaluator<'_>,
    method: &dyn EditMethod,
    cases: &[PreparedCase],
    mode: Mode,
    task: &str,
    threads: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<(BenchResult, Vec<CaseScore>)> {
    let (sums, edit_ms, scored) = match mode {
        Mode::SequentialGap(g) => run_stream(ev, method, cases, g, progress)?,
        _ => {
            let (sums, edit_ms) = run_chunks(ev, method, cases, 0, mode, threads, progress)?;
            (sums, edit_ms, cases.len())
        }
    };
    let metas: Vec<CaseMeta> = cases[..scored].iter().map(PreparedCase::meta).collect();
    Ok(finish(method.name(), task, mode, &sums, edit_ms, &metas))
}

/// What the result of a run needs of each scored case besides its updates: its portability questions' hops and the
/// unedited model's scores on them.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct CaseMeta {
    portability_hops: Vec<String>,
    portability_base: Vec<(f32, bool, f32)>,
    #[serde(default)]
    answer_before: String,
}

impl PreparedCase {
    pub(super) fn meta(&self) -> CaseMeta {
        CaseMeta {
            portability_hops: self.portability_hops.clone(),
            portability_base: self.portability_base.clone(),
            answer_before: self.answer_before.clone(),
        }
    }
}

/// The result of a run from its updates in case order, every edit's time (in case order) and its scored cases.
pub(super) fn finish(
    method: &str,
    task: &str,
    mode: Mode,
    sums: &Sums,
    mut edit_ms: Vec<f64>,
    cases: &[CaseMeta],
) -> (BenchResult, Vec<CaseScore>) {
    let scored = cases.len();
    let after: std::collections::HashMap<usize, &String> = sums.answers.iter().map(|(c, a)| (*c, a)).collect();
    let per_case: Vec<CaseScore> = sums
        .per_case(scored)
        .into_iter()
        .zip(&edit_ms)
        .enumerate()
        .map(|(i, (token, &edit_ms))| CaseScore {
            edit_ms,
            token,
            answer_before: cases.get(i).map(|c| c.answer_before.clone()),
            answer_after: after.get(&i).map(|a| a.to_string()),
        })
        .collect();
    edit_ms.sort_by(f64::total_cmp);
    // The unedited model's portability, over the same questions (every case's, in order).
    let (mut base_token, mut base_exact, mut base_token_v1) = (Mean::default(), Mean::default(), Mean::default());
    for &(token, exact, token_v1) in cases.iter().flat_map(|c| &c.portability_base) {
        base_token.update(token);
        base_exact.update(f32::from(u8::from(exact)));
        base_token_v1.update(token_v1);
    }
    let result = BenchResult {
        method: method.to_string(),
        task: task.to_string(),
        mode: mode.name().to_string(),
        k: mode.k(),
        n: cases.len(),
        convention: MetricConvention::CURRENT,
        metrics: metric_set(&sums.token(), &base_token, true),
        metrics_v1: Some(metric_set(&sums.token_v1(), &base_token_v1, false)),
        exact_match: metric_set(&sums.exact(), &base_exact, false),
        portability_hops: hop_scores(sums, cases),
        timing: Timing { edit_ms_median: percentile(&edit_ms, 0.5), edit_ms_p90: percentile(&edit_ms, 0.9) },
    };
    (result, per_case)
}
