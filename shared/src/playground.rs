//! The Playground: the world's image gallery, answers, applied edits with their probes, the edit stack.

use serde::{Deserialize, Serialize};

/// Edit methods, as the API names them (UniKE variants: `unike:<variant>`). `none` is the unedited model (its patch
/// is empty): the baseline row of a benchmark.
pub const METHODS: [&str; 15] = [
    "unike",
    "t-patcher",
    "serac",
    "mend",
    "ke",
    "ft",
    "ike",
    "ft-vision",
    "lora",
    "grace",
    "wise",
    "rome",
    "memit",
    "alphaedit",
    "none",
];

/// Limits the server enforces on user input.
pub const TEXT_MAX: usize = 300;
/// Largest accepted image upload, in bytes (before base64).
pub const IMAGE_MAX_BYTES: usize = 2 * 1024 * 1024;

/// One gallery entry: an image of the synthetic world with the edit case it comes from (question, the model's answer
/// in the data, a counterfactual target), which the Playground offers as a starting point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GalleryItem {
    /// Stable id (`vqa-12`, `caption-3`).
    pub id: String,
    /// `vqa` or `caption`.
    pub task: String,
    /// Where the PNG is served.
    pub url: String,
    pub question: String,
    pub target: String,
    /// The ground truth before any edit, where the data records it.
    pub pre_edit: Option<String>,
}

/// An image: one of the gallery's, or an upload (PNG or JPEG, base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ImageRef {
    Gallery { id: String },
    Upload { base64: String },
}

/// `POST` answer body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AnswerRequest {
    pub image: Option<ImageRef>,
    pub question: String,
}

/// The model's greedy answer under the workspace's patch stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AnswerResponse {
    pub answer: String,
    /// Edits applied when it answered.
    pub edits: usize,
    pub ms: f64,
}

/// `POST` apply-edit body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EditRequest {
    pub image: Option<ImageRef>,
    pub question: String,
    pub target: String,
    /// `unike`, `ft`, `ke`, `t-patcher`, `mend`, `ike`, `serac`, `ft-vision`, `lora`, `grace`, `wise`, `rome`, `memit`, `alphaedit` or
    /// `unike:<variant>`.
    pub method: String,
    #[serde(default)]
    pub seed: u64,
}

/// What a probe checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// The edit question itself: answers the target.
    Reliability,
    /// A rephrased question, same image: answers the target.
    TGenerality,
    /// The same question about another image of the same entity: answers the target.
    MGenerality,
    /// An unrelated text question: answer unchanged.
    TLocality,
    /// An unrelated image question: answer unchanged.
    MLocality,
    /// A question whose answer follows from the edit (one hop): answers the data's answer.
    Portability,
}

/// One probe after an edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Probe {
    pub kind: ProbeKind,
    pub question: String,
    /// Image URL, if the probe has one.
    pub image_url: Option<String>,
    /// What passing means: the target, the pre-edit answer (locality) or the portability answer.
    pub expected: String,
    pub before: String,
    pub after: String,
    pub pass: bool,
    /// The expected answer token by token (then the end of sequence), with the probability the model gives each,
    /// teacher-forced, before and after the edit (empty where the expected answer is empty, and in edits stored
    /// before it was computed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenProbability>,
    /// The edit's extra FFN neurons (T-Patcher, UniKE) on this probe after the edit: each one's largest
    /// pre-activation over the probe's positions; it adds its value only where that is above zero (empty for methods
    /// without neurons).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neurons: Vec<NeuronActivation>,
    /// SERAC: the scope classifier's probability that this probe is about the edit, and the threshold from which the
    /// counterfactual model answers it (absent for other methods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<ScopeScore>,
    /// UniKE: the share α of the retrieved in-context knowledge on this probe after the edit (mean over the edited
    /// layers and the positions predicting the answer; absent for methods without latent knowledge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge_share: Option<f64>,
    /// UniKE: the in-context knowledge this probe retrieves after the edit (at the edit's top layer, for the position
    /// predicting the answer's first token), best first: memory entries and the edit's own (empty for methods without
    /// latent knowledge).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retrieved: Vec<RetrievedKnowledge>,
}

/// One piece of in-context knowledge a probe retrieves (UniKE's latent in-context editing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RetrievedKnowledge {
    pub layer: usize,
    /// The entry's question and truthful answer (the edit's own: its question and target).
    pub question: String,
    pub answer: String,
    /// True for the edit's own entry, false for the shared memory's.
    pub own: bool,
    /// Cosine of the centred question states it is ranked by.
    pub score: f64,
}

/// SERAC's scope score of a probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ScopeScore {
    pub score: f64,
    pub threshold: f64,
}

/// One extra neuron of an edit on a probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NeuronActivation {
    pub layer: usize,
    pub neuron: usize,
    pub pre_activation: f64,
    pub fired: bool,
}

/// One token of a probe's expected answer and its probability before and after the edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TokenProbability {
    /// The token as text (`</s>`-like end-of-sequence tokens as the tokenizer writes them).
    pub token: String,
    pub before: f64,
    pub after: f64,
}

impl Probe {
    /// The probability of the whole expected answer (the product over its tokens, end of sequence included) before
    /// and after the edit; `None` without tokens.
    pub fn answer_probability(&self) -> Option<(f64, f64)> {
        if self.tokens.is_empty() {
            return None;
        }
        Some(self.tokens.iter().fold((1.0, 1.0), |(b, a), t| (b * t.before, a * t.after)))
    }
}

/// An edit on a workspace's patch stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AppliedEdit {
    pub id: i64,
    pub method: String,
    pub question: String,
    pub target: String,
    pub image_url: Option<String>,
    pub seed: u64,
    pub author: String,
    pub created_at: String,
    /// The edit question's answer before and after.
    pub before: String,
    pub after: String,
    pub edit_ms: f64,
    pub probes: Vec<Probe>,
    /// In-context methods (IKE, SERAC): the demonstrations the edit puts in front of a prompt, one line each, with
    /// the retrieved ones' similarity (empty for other methods, and in edits stored before it was recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub demonstrations: Vec<String>,
}

/// A workspace's patch stack, bottom first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EditStack {
    pub edits: Vec<AppliedEdit>,
}

/// `POST` import body / export result: MMEdit-format cases (`src`, `pred`, `alt`, `rephrase`, `image`,
/// `image_rephrase`, `loc`, `loc_ans`, `m_loc`, `m_loc_q`, `m_loc_a`), as the JSON array the data sets use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CaseImport {
    pub cases: Vec<MmEditCase>,
}

/// Import result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ImportSummary {
    pub imported: usize,
}

/// A stored edit case of a workspace (authored in the Playground or imported).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EditCaseRow {
    pub id: i64,
    pub question: String,
    pub target: String,
    pub image_url: Option<String>,
    pub rephrase: Option<String>,
    pub source: String,
}

/// One MMEdit E-VQA / E-IC case (the fields the studio reads and writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MmEditCase {
    pub src: String,
    #[serde(default)]
    pub pred: Option<String>,
    pub alt: String,
    #[serde(default)]
    pub rephrase: Option<String>,
    pub image: String,
    #[serde(default)]
    pub image_rephrase: Option<String>,
    #[serde(default)]
    pub loc: Option<String>,
    #[serde(default)]
    pub loc_ans: Option<String>,
    #[serde(default)]
    pub m_loc: Option<String>,
    #[serde(default)]
    pub m_loc_q: Option<String>,
    #[serde(default)]
    pub m_loc_a: Option<String>,
}
