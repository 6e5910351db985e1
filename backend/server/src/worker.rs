//! The interactive model worker: one thread owns the built edit methods and the loaded patches and runs every answer
//! and edit, fed by a bounded queue (a full queue is a 503, never a blocked async handler). candle never runs inside
//! an async handler.
//!
//! Stacks are not kept per workspace: every job names its stack (patch directories, bottom first) as the database
//! has it, and the worker assembles it from patches it already holds or loads them from disk, so a restart, an undo
//! or a teammate's edit can never leave the worker with a stale stack.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use unike_core::data::Task;
use unike_core::edit::registry::{self, MethodInputs};
use unike_core::edit::{EditContext, EditMethod, EditRequest, EditSequence, Patch, PatchStack};
use unike_core::eval::Evaluator;
use unike_core::hooks::Hooks;
use unike_core::model::{GenerateOptions, Pixels};
use unike_core::Error as CoreError;
use unike_shared::playground::{Probe, ProbeKind};

use super::error::{ApiErr, ApiResult};
use super::patch_cache::LruCache;

#[path = "worker_inspect.rs"]
mod inspect;
use unike_pipeline::load::Loaded;

type CoreResult<T> = std::result::Result<T, CoreError>;

/// Longest generated answer, in tokens.
const MAX_NEW_TOKENS: usize = 24;

/// One patch of a stack: where it is saved and the method that made it (whose networks loading may need).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StackEntry {
    pub dir: PathBuf,
    pub method: String,
}

/// What a probe expects after the edit.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Expect {
    /// The edit's target.
    Target,
    /// The answer it gave before the edit.
    Unchanged,
    /// A given answer (portability).
    Answer(String),
}

/// A probe to run before and after an edit.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    pub question: String,
    pub image: Option<PathBuf>,
    pub image_url: Option<String>,
    pub expect: Expect,
}

/// An edit to compute, with its probes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EditJob {
    pub method: String,
    pub question: String,
    pub target: String,
    pub image: Option<PathBuf>,
    pub seed: u64,
    pub probes: Vec<ProbeSpec>,
    /// Where to save the patch (`DIR.safetensors` + `DIR.json`).
    pub save_to: PathBuf,
}

/// What an edit did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EditOutcome {
    pub before: String,
    pub after: String,
    pub edit_ms: f64,
    pub probes: Vec<Probe>,
    /// The patch's in-context demonstrations (its provenance's).
    #[serde(default)]
    pub demonstrations: Vec<String>,
}

enum Job {
    Answer {
        stack: Vec<StackEntry>,
        image: Option<PathBuf>,
        question: String,
        reply: oneshot::Sender<CoreResult<String>>,
    },
    Edit {
        stack: Vec<StackEntry>,
        job: Box<EditJob>,
        reply: oneshot::Sender<CoreResult<EditOutcome>>,
    },
    /// Build (or train) a method's artifacts ahead of the first edit.
    Warm {
        method: String,
    },
}

/// Handle of the model worker: this process's thread, or worker processes through the database
/// ([`crate::remote`]).
#[derive(Clone)]
pub struct Worker {
    tx: Option<SyncSender<Job>>,
    remote: Option<Arc<crate::remote::Remote>>,
}

impl Worker {
    /// Starts the worker on `loaded`; `data` is the world's data directory (training split: the memory of unrelated
    /// inputs), `root` the repository root (hyper-parameter files).
    /// `patch_cache` bounds the loaded patches kept between jobs, in parameters; `method_cache` the built methods, in
    /// bytes of what each holds beyond the model ([`EditMethod::resident_bytes`]).
    pub fn spawn(
        loaded: Arc<Loaded>,
        data: PathBuf,
        root: PathBuf,
        model_name: String,
        queue: usize,
        patch_cache: usize,
        method_cache: usize,
    ) -> Self {
        let (tx, rx) = sync_channel::<Job>(queue);
        std::thread::Builder::new()
            .name("unike-model".into())
            .spawn(move || {
                let mut st = State {
                    loaded,
                    data,
                    root,
                    model_name,
                    memory: None,
                    methods: LruCache::new(method_cache.max(1)),
                    patches: LruCache::new(patch_cache),
                    memory_texts: None,
                };
                for job in rx {
                    // A panic is our bug, not the user's: its job's reply is dropped (a 500) and the worker goes on
                    // with the next job instead of leaving every later request without a model.
                    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
                        // A job whose requester is gone (the client disconnected) is skipped: it would only keep
                        // everyone else waiting.
                        Job::Answer { stack, image, question, reply } => {
                            if !reply.is_closed() {
                                let _ = reply.send(st.answer_job(&stack, image.as_deref(), &question));
                            }
                        }
                        Job::Edit { stack, job, reply } => {
                            if !reply.is_closed() {
                                let out = st.edit_job(&stack, &job);
                                if reply.send(out).is_err() {
                                    // Nobody will record the patch it saved.
                                    for f in Patch::files(&job.save_to) {
                                        let _ = std::fs::remove_file(f);
                                    }
                                }
                            }
                        }
                        Job::Warm { method } => {
                            if let Err(e) = st.method(&method) {
                                eprintln!("studio: preparing {method} failed: {e}");
                            }
                        }
                    }));
                    if let Err(p) = done {
                        eprintln!("studio: the model worker recovered from a panic: {}", panic_message(&*p));
                    }
                }
            })
            .expect("spawning the model worker thread");
        Self { tx: Some(tx), remote: None }
    }

    /// A handle whose jobs worker processes compute (`--workers external`).
    pub fn remote(remote: crate::remote::Remote) -> Self {
        Self { tx: None, remote: Some(Arc::new(remote)) }
    }

    fn submit(&self, job: Job) -> ApiResult<()> {
        let Some(tx) = &self.tx else { return Err(ApiErr::internal("no model thread in this process")) };
        tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => ApiErr::unavailable("the model is busy; try again in a moment"),
            TrySendError::Disconnected(_) => ApiErr::internal("the model worker stopped"),
        })
    }

    /// Asks the worker to prepare `method` (e.g. build UniKE's memory) in the background.
    pub fn warm(&self, method: &str) {
        if self.tx.is_some() {
            let _ = self.submit(Job::Warm { method: method.to_string() });
        }
    }

    /// The model's greedy answer under `stack`.
    pub async fn answer(&self, stack: Vec<StackEntry>, image: Option<PathBuf>, question: String) -> ApiResult<String> {
        if let Some(r) = &self.remote {
            return r.answer(stack, image, question).await;
        }
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Answer { stack, image, question, reply })?;
        Ok(rx.await.map_err(|_| ApiErr::internal("the model worker dropped a job"))??)
    }

    /// Computes, saves and probes an edit on top of `stack`.
    pub async fn edit(&self, stack: Vec<StackEntry>, job: EditJob) -> ApiResult<EditOutcome> {
        if let Some(r) = &self.remote {
            return r.edit(stack, job).await;
        }
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Edit { stack, job: Box::new(job), reply })?;
        Ok(rx.await.map_err(|_| ApiErr::internal("the model worker dropped a job"))??)
    }
}

struct State {
    loaded: Arc<Loaded>,
    data: PathBuf,
    root: PathBuf,
    model_name: String,
    memory: Option<Vec<EditSequence>>,
    /// Built methods by canonical name ([`registry::canonical_name`]), weighing together at most `method_cache` bytes
    /// of what they hold beyond the model (the least recently used are dropped and rebuilt when asked for again;
    /// one method over the budget is kept alone): every UniKE variant is a method of its own.
    methods: LruCache<String, Box<dyn EditMethod>>,
    patches: LruCache<PathBuf, Patch>,
    /// The questions and answers of UniKE's memory (what its retrieval indices name), read once it is built.
    memory_texts: Option<Vec<unike_core::edit::unike::memory::Triplet>>,
}

/// The message of a caught panic.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Errors of preparing a method (building UniKE's memory, training a network) are the server's, not the user's: they
/// keep their core error when they have one and are otherwise I/O-like faults (a 500, logged), never a 400.
fn pipeline_to_core(e: unike_pipeline::Error) -> CoreError {
    match e {
        unike_pipeline::Error::Core(c) => c,
        e => CoreError::Io {
            path: PathBuf::from("(preparing an edit method)"),
            err: std::io::Error::other(e.to_string()),
        },
    }
}

impl State {
    fn eos(&self) -> CoreResult<Vec<u32>> {
        self.loaded.ckpt.eos_token_ids()
    }

    fn method(&mut self, name: &str) -> CoreResult<&dyn EditMethod> {
        let key = registry::canonical_name(name)?;
        let name = key.as_str();
        if self.methods.get(&key).is_none() {
            if registry::split_name(name).0 == "unike" {
                unike_pipeline::unike_artifacts::ensure(&self.loaded).map_err(pipeline_to_core)?;
            }
            let world = unike_pipeline::data::DataSource::from_dir(&self.data, "the model's world".into());
            unike_pipeline::trained::ensure(&self.loaded, &[name.to_string()], &world).map_err(pipeline_to_core)?;
            if self.memory.is_none() {
                let mut ev = Evaluator::new(&*self.loaded.model, &*self.loaded.processor, self.eos()?);
                let cases = world.memory_cases(Task::Vqa, 64).map_err(pipeline_to_core)?;
                let m = unike_pipeline::bench::memory_sequences(&mut ev, &cases).map_err(pipeline_to_core)?;
                self.memory = Some(m);
            }
            let eos =
                *self.eos()?.first().ok_or_else(|| CoreError::Invalid("the model has no end-of-sequence id".into()))?;
            // IKE's demonstration pool: the world's training split, VQA and captions interleaved.
            let demonstrations =
                if name == "ike" { world.training_cases(usize::MAX).map_err(pipeline_to_core)? } else { vec![] };
            let inputs = MethodInputs {
                root: &self.root,
                model: &self.model_name,
                memory: self.memory.clone().unwrap_or_default(),
                demonstrations,
                eos,
                backbone: &*self.loaded.model,
                model_dir: &self.loaded.dir,
            };
            let m = registry::build(name, inputs)?;
            let weight = m.resident_bytes().max(1);
            self.methods.insert(key.clone(), m, weight);
        }
        self.methods.get(&key).map(|m| m.as_ref()).ok_or_else(|| CoreError::Invalid(format!("method {name} missing")))
    }

    fn stack(&mut self, entries: &[StackEntry]) -> CoreResult<PatchStack> {
        let mut stack = PatchStack::new();
        for e in entries {
            if let Some(p) = self.patches.get(&e.dir) {
                stack.push(p.clone());
                continue;
            }
            // Undoing an edit removes its patch: a request queued before the undo finds it gone.
            if Patch::files(&e.dir).iter().any(|f| !f.is_file()) {
                return Err(CoreError::Invalid(
                    "the workspace's stack changed while this request waited (an edit was undone); try again".into(),
                ));
            }
            let deps = self.method(&e.method)?.patch_deps();
            let p = match Patch::load_with(&e.dir, &*self.loaded.model, &deps) {
                Err(CoreError::Outdated { .. }) => self.remake(e, &stack)?,
                other => other?,
            };
            stack.push(p.clone());
            let size = p.num_parameters();
            self.patches.insert(e.dir.clone(), p, size);
        }
        Ok(stack)
    }

    /// An outdated patch (its method changed form since it was saved) made again from its provenance on the stack
    /// below it, and saved in its place: the edit keeps its place, question, image and target.
    fn remake(&mut self, e: &StackEntry, below: &PatchStack) -> CoreResult<Patch> {
        let prov = Patch::provenance_of(&e.dir)?;
        let image = prov.image.as_ref().map(PathBuf::from);
        let request = EditRequest {
            question: prov.prompt.clone(),
            image: self.pixels(image.as_deref())?,
            image_path: prov.image.clone(),
            target: prov.target.clone(),
            seed: prov.seed,
        };
        let loaded = self.loaded.clone();
        let method = self.method(&e.method)?;
        let ctx = EditContext { model: &*loaded.model, processor: &*loaded.processor, stack: below };
        let mut patch = method.edit(&ctx, &request)?;
        patch.provenance.author = prov.author;
        patch.save(&e.dir)?;
        eprintln!("studio: made the outdated {} patch {} again", e.method, e.dir.display());
        Ok(patch)
    }

    fn pixels(&self, image: Option<&Path>) -> CoreResult<Option<Pixels>> {
        image.map(|p| self.loaded.processor.load_image(p, &self.loaded.device)).transpose()
    }

    fn greedy(&self, question: &str, pixels: Option<&Pixels>, hooks: &Hooks) -> CoreResult<String> {
        let p = &self.loaded.processor;
        let ids = p.encode(&p.question_prompt(question, pixels.is_some()), pixels)?;
        let opts = GenerateOptions { max_new_tokens: MAX_NEW_TOKENS, eos_token_ids: self.eos()? };
        let gen = self.loaded.model.generate(&ids, pixels, hooks, &opts)?;
        Ok(p.decode(&gen.tokens)?.trim().to_string())
    }

    /// The checkpoint's first end-of-sequence id.
    fn first_eos(&self) -> CoreResult<u32> {
        self.eos()?
            .first()
            .copied()
            .ok_or_else(|| CoreError::Invalid("the checkpoint has no end-of-sequence id".into()))
    }

    fn answer_job(&mut self, stack: &[StackEntry], image: Option<&Path>, question: &str) -> CoreResult<String> {
        let hooks = self.stack(stack)?.hooks()?;
        let px = self.pixels(image)?;
        self.greedy(question, px.as_ref(), &hooks)
    }

    fn edit_job(&mut self, entries: &[StackEntry], job: &EditJob) -> CoreResult<EditOutcome> {
        let stack = self.stack(entries)?;
        let before_hooks = stack.hooks()?;
        let px = self.pixels(job.image.as_deref())?;
        let probe_px: Vec<Option<Pixels>> =
            job.probes.iter().map(|p| self.pixels(p.image.as_deref())).collect::<CoreResult<_>>()?;
        let before = self.greedy(&job.question, px.as_ref(), &before_hooks)?;
        let probes_before: Vec<String> = job
            .probes
            .iter()
            .zip(&probe_px)
            .map(|(p, x)| self.greedy(&p.question, x.as_ref(), &before_hooks))
            .collect::<CoreResult<_>>()?;
        let request = EditRequest {
            question: job.question.clone(),
            image: px.clone(),
            image_path: job.image.as_ref().map(|p| p.display().to_string()),
            target: job.target.clone(),
            seed: job.seed,
        };
        let t = Instant::now();
        let patch = {
            let loaded = self.loaded.clone();
            let method = self.method(&job.method)?;
            let ctx = EditContext { model: &*loaded.model, processor: &*loaded.processor, stack: &stack };
            method.edit(&ctx, &request)?
        };
        let edit_ms = t.elapsed().as_secs_f64() * 1e3;
        if let Some(parent) = job.save_to.parent() {
            std::fs::create_dir_all(parent).map_err(|err| CoreError::Io { path: parent.to_path_buf(), err })?;
        }
        patch.save(&job.save_to)?;
        let mut after_stack = stack.clone();
        after_stack.push(patch.clone());
        let size = patch.num_parameters();
        self.patches.insert(job.save_to.clone(), patch.clone(), size);
        let after_hooks = after_stack.hooks()?;
        let after = self.greedy(&job.question, px.as_ref(), &after_hooks)?;
        let norm = |s: &str| s.trim().trim_end_matches('.').to_lowercase();
        if !patch.latent.is_empty() {
            self.load_memory_texts();
        }
        let own = (job.question.as_str(), job.target.as_str());
        let read = |q: &str, x: Option<&Pixels>, expected: &str| {
            self.readings(q, x, expected, (&before_hooks, &after_hooks), &patch, own)
        };
        let first = read(&job.question, px.as_ref(), &job.target)?;
        let mut probes = vec![Probe {
            kind: ProbeKind::Reliability,
            question: job.question.clone(),
            image_url: None,
            expected: job.target.clone(),
            before: before.clone(),
            after: after.clone(),
            pass: norm(&after) == norm(&job.target),
            tokens: first.tokens,
            neurons: first.neurons,
            scope: first.scope,
            knowledge_share: first.knowledge_share,
            retrieved: first.retrieved,
        }];
        for ((spec, x), b) in job.probes.iter().zip(&probe_px).zip(probes_before) {
            let a = self.greedy(&spec.question, x.as_ref(), &after_hooks)?;
            let expected = match &spec.expect {
                Expect::Target => job.target.clone(),
                Expect::Unchanged => b.clone(),
                Expect::Answer(s) => s.clone(),
            };
            let r = read(&spec.question, x.as_ref(), &expected)?;
            probes.push(Probe {
                kind: spec.kind,
                question: spec.question.clone(),
                image_url: spec.image_url.clone(),
                pass: norm(&a) == norm(&expected),
                tokens: r.tokens,
                neurons: r.neurons,
                scope: r.scope,
                knowledge_share: r.knowledge_share,
                retrieved: r.retrieved,
                expected,
                before: b,
                after: a,
            });
        }
        Ok(EditOutcome { before, after, edit_ms, probes, demonstrations: patch.provenance.demonstrations.clone() })
    }
}
