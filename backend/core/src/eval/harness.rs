//! The MMEdit / VLKEB evaluation harness: pre-edit outputs computed once before any edit, then one-step editing
//! (every edit on a fresh stack) or sequential editing (K edits stacked, then every case of the sequence evaluated).
//! Cross-task editing is sequential editing over a list that mixes VQA and caption cases.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use candle_core::Tensor;
use unike_shared::{BenchResult, MetricSet, Timing};

use super::metrics::{agreement, token_accuracy, EditMetric, Mean};
use crate::data::EditCase;
use crate::edit::{EditContext, EditMethod, EditRequest, EditSequence, PatchStack};
use crate::error::{Error, Result};
use crate::hooks::Hooks;
use crate::model::{GenerateOptions, Llava, Processor};

/// Editing mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each edit on the unedited model.
    OneStep,
    /// `k` edits stacked, then all `k` evaluated.
    Sequential(usize),
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::OneStep => "one-step",
            Mode::Sequential(_) => "sequential",
        }
    }

    pub fn k(self) -> usize {
        match self {
            Mode::OneStep => 1,
            Mode::Sequential(k) => k.max(1),
        }
    }
}

/// A locality probe with its pre-edit behaviour.
struct LocalityProbe {
    /// The probe with its reference answer (token agreement is scored on it).
    seq: EditSequence,
    /// Pre-edit top-1 token at each answer position.
    pre_top1: Vec<u32>,
    /// The probe with the pre-edit greedy answer (exact match: the post-edit model reproduces it).
    pre_greedy: EditSequence,
}

/// An edit case tokenized, with its pre-edit locality outputs.
pub struct PreparedCase {
    request: EditRequest,
    reliability: EditSequence,
    t_generality: EditSequence,
    m_generality: EditSequence,
    t_locality: LocalityProbe,
    m_locality: LocalityProbe,
    portability: Vec<EditSequence>,
}

impl PreparedCase {
    /// Every sequence scored after the edit, in [`Evaluator::score`]'s order.
    fn sequences(&self) -> Vec<&EditSequence> {
        let mut v = vec![
            &self.reliability,
            &self.t_generality,
            &self.m_generality,
            &self.t_locality.seq,
            &self.t_locality.pre_greedy,
            &self.m_locality.seq,
            &self.m_locality.pre_greedy,
        ];
        v.extend(self.portability.iter());
        v
    }
}

/// Sequences per forward pass when scoring.
const BATCH: usize = 32;

/// The model, its processor, its end-of-sequence ids and a cache of preprocessed images.
pub struct Evaluator<'a> {
    pub model: &'a Llava,
    pub processor: &'a Processor,
    pub eos: Vec<u32>,
    images: HashMap<PathBuf, Tensor>,
}

impl<'a> Evaluator<'a> {
    pub fn new(model: &'a Llava, processor: &'a Processor, eos: Vec<u32>) -> Self {
        Self { model, processor, eos, images: HashMap::new() }
    }

    /// Pixel values `(1, 3, H, W)` of an image file (cached).
    pub fn pixels(&mut self, path: &Path) -> Result<Tensor> {
        if let Some(t) = self.images.get(path) {
            return Ok(t.clone());
        }
        let t = self.processor.image_processor().load_file(path, self.model.device())?.unsqueeze(0)?;
        self.images.insert(path.to_path_buf(), t.clone());
        Ok(t)
    }

    fn seq(&mut self, question: &str, image: Option<&Path>, answer: &str) -> Result<EditSequence> {
        let pixels = image.map(|p| self.pixels(p)).transpose()?;
        EditSequence::new(self.processor, question, pixels.as_ref(), answer, self.eos[0])
    }

    fn locality(&mut self, question: &str, image: Option<&Path>, answer: &str) -> Result<LocalityProbe> {
        let seq = self.seq(question, image, answer)?;
        let none = Hooks::none();
        let pre_top1 = seq.argmax(self.model, &none)?;
        let opts = GenerateOptions { max_new_tokens: 24, eos_token_ids: self.eos.clone() };
        let gen = self.model.generate(&seq.ids[..seq.prompt_len], seq.pixels.as_ref(), &none, &opts)?;
        let pre_greedy = seq.with_answer(&gen.tokens);
        Ok(LocalityProbe { seq, pre_top1, pre_greedy })
    }

    /// Tokenizes `case` and computes its pre-edit locality outputs (on the unedited model).
    pub fn prepare(&mut self, case: &EditCase, seed: u64) -> Result<PreparedCase> {
        let image = self.pixels(&case.image)?;
        let request = EditRequest {
            question: case.prompt.clone(),
            image: Some(image),
            image_path: Some(case.image.display().to_string()),
            target: case.target.clone(),
            seed,
        };
        Ok(PreparedCase {
            reliability: self.seq(&case.prompt, Some(&case.image), &case.target)?,
            t_generality: self.seq(&case.rephrase_prompt, Some(&case.image), &case.target)?,
            m_generality: self.seq(&case.prompt, Some(&case.rephrase_image), &case.target)?,
            t_locality: self.locality(&case.loc_question, None, &case.loc_answer)?,
            m_locality: self.locality(&case.m_loc_question, Some(&case.m_loc_image), &case.m_loc_answer)?,
            portability: case
                .portability
                .iter()
                .map(|p| self.seq(&p.question, Some(&case.image), &p.answer))
                .collect::<Result<_>>()?,
            request,
        })
    }

    /// Scores `cases` under `hooks` into the running means, every probe of every case batched.
    ///
    /// Exact match of a greedy answer is read off teacher forcing: greedy decoding produces the reference (then
    /// stops) exactly when the reference's every token and its end of sequence are the argmax at their positions.
    fn score(&self, cases: &[&PreparedCase], first: usize, hooks: &Hooks, sums: &mut Sums) -> Result<()> {
        let seqs: Vec<&EditSequence> = cases.iter().flat_map(|c| c.sequences()).collect();
        let tops = EditSequence::argmax_batch(self.model, &seqs, hooks, BATCH)?;
        let mut at = 0;
        for (i, case) in cases.iter().enumerate() {
            sums.case = first + i;
            let mut next = || {
                at += 1;
                (&tops[at - 1], seqs[at - 1])
            };
            let accuracy = |sums: &mut Sums, m: EditMetric, (top, seq): (&Vec<u32>, &EditSequence)| {
                sums.update(m, token_accuracy(top, seq.targets()), top.as_slice() == seq.targets());
            };
            accuracy(sums, EditMetric::Reliability, next());
            accuracy(sums, EditMetric::TGenerality, next());
            accuracy(sums, EditMetric::MGenerality, next());
            for (m, probe) in [(EditMetric::TLocality, &case.t_locality), (EditMetric::MLocality, &case.m_locality)] {
                let (top, _) = next();
                let (greedy, g) = next();
                sums.update(m, agreement(&probe.pre_top1, top), greedy.as_slice() == g.targets());
            }
            for _ in &case.portability {
                accuracy(sums, EditMetric::Portability, next());
            }
        }
        Ok(())
    }
}

/// The metric updates of a run, in order (replayed into means, so that merging chunks computed on different threads
/// gives the same floating-point sums as one thread).
#[derive(Default)]
struct Sums {
    /// The case (index into the run's cases) the next updates belong to.
    case: usize,
    updates: Vec<(usize, EditMetric, f32, bool)>,
}

impl Sums {
    fn update(&mut self, m: EditMetric, token: f32, exact: bool) {
        self.updates.push((self.case, m, token, exact));
    }

    fn merge(&mut self, other: Sums) {
        self.updates.extend(other.updates);
    }

    /// Means of the field's token-level convention.
    fn token(&self) -> [Mean; 6] {
        let mut means: [Mean; 6] = Default::default();
        for &(_, m, token, _) in &self.updates {
            means[m as usize].update(token);
        }
        means
    }

    /// Per case, its mean token score of each metric (`None` where it has no such probe).
    fn per_case(&self, n: usize) -> Vec<[Option<f64>; 6]> {
        let mut means: Vec<[Mean; 6]> = (0..n).map(|_| Default::default()).collect();
        for &(c, m, token, _) in &self.updates {
            means[c][m as usize].update(token);
        }
        means.iter().map(|ms| std::array::from_fn(|i| ms[i].value().map(|v| v * 100.0))).collect()
    }

    /// Means of exact match.
    fn exact(&self) -> [Mean; 6] {
        let mut means: [Mean; 6] = Default::default();
        for &(_, m, _, exact) in &self.updates {
            means[m as usize].update(f32::from(u8::from(exact)));
        }
        means
    }
}

fn metric_set(means: &[Mean; 6]) -> MetricSet {
    let pct = |x: EditMetric| means[x as usize].value().unwrap_or(0.0) * 100.0;
    MetricSet {
        reliability: pct(EditMetric::Reliability),
        t_generality: pct(EditMetric::TGenerality),
        m_generality: pct(EditMetric::MGenerality),
        t_locality: pct(EditMetric::TLocality),
        m_locality: pct(EditMetric::MLocality),
        portability: means[EditMetric::Portability as usize].value().map(|v| v * 100.0),
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
    pub token: [Option<f64>; 6],
}

/// [`run`], with every case's scores too.
pub fn run_detailed(
    ev: &Evaluator<'_>,
    method: &dyn EditMethod,
    cases: &[PreparedCase],
    mode: Mode,
    task: &str,
    threads: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<(BenchResult, Vec<CaseScore>)> {
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
                if tx.send((i, run_chunk(ev, method, chunk, i * mode.k()))).is_err() {
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
    let per_case: Vec<CaseScore> = sums
        .per_case(cases.len())
        .into_iter()
        .zip(&edit_ms)
        .map(|(token, &edit_ms)| CaseScore { edit_ms, token })
        .collect();
    edit_ms.sort_by(f64::total_cmp);
    let result = BenchResult {
        method: method.name().to_string(),
        task: task.to_string(),
        mode: mode.name().to_string(),
        k: mode.k(),
        n: cases.len(),
        metrics: metric_set(&sums.token()),
        exact_match: metric_set(&sums.exact()),
        timing: Timing { edit_ms_median: percentile(&edit_ms, 0.5), edit_ms_p90: percentile(&edit_ms, 0.9) },
    };
    Ok((result, per_case))
}
