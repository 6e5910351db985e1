//! The knowledge-space explorer (issue 20 §1; paper Fig. 5a): UniKE's in-context knowledge memory and a workspace's
//! UniKE edits projected to two dimensions in the raw, semantic and truthfulness spaces of one edited layer.

use serde::{Deserialize, Serialize};

/// Query of [`crate::routes::EXPLORER`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExplorerQuery {
    /// A layer of the memory (default: the last).
    #[serde(default)]
    pub layer: Option<usize>,
    /// `tsne` (default, as the paper) or `pca`.
    #[serde(default)]
    pub projection: Option<String>,
    /// A workspace whose UniKE edits to show (viewers of it only).
    #[serde(default)]
    pub workspace: Option<i64>,
    /// The entry whose retrieval to draw: `m:<memory index>` or `e:<edit id>`.
    #[serde(default)]
    pub focus: Option<String>,
    /// Entries retrieved for the focus (default: UniKE's K; at most [`FOCUS_K_MAX`]).
    #[serde(default)]
    pub k: Option<usize>,
}

/// The most entries a focus retrieves.
pub const FOCUS_K_MAX: usize = 64;

/// Whether a point is a state of the truthful or of the hallucinated answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum AnswerKind {
    /// `h_pos`: the question with the truthful answer (an edit: with its target).
    Positive,
    /// `h_neg`: the question with the model's own hallucinated answer.
    Negative,
}

/// A piece of knowledge shown: a memory triplet or a workspace's edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExplorerEntry {
    /// `m:<memory index>` or `e:<edit id>` (what `focus` takes).
    pub id: String,
    pub question: String,
    /// What the image shows (`entity 12, rendering 3`, `scene 7`; an edit: its image's name).
    pub image: String,
    /// Hallucination level of a memory triplet (`recognition`, `vision`, `reasoning`); `edit` for an edit.
    pub level: String,
    /// The truthful answer (an edit: its target).
    pub positive: String,
    /// The hallucinated answer (an edit: the answer before it, which has no state in the memory).
    pub negative: String,
    /// False for entries drawn only because the focus retrieved them (placed, not fitted; see the module docs of
    /// the projection).
    pub sampled: bool,
}

/// One point of a space: an entry's positive or negative state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExplorerPoint {
    /// Index into [`ExplorerView::entries`].
    pub entry: u32,
    pub kind: AnswerKind,
    pub x: f32,
    pub y: f32,
}

/// One space's picture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExplorerSpace {
    /// `raw`, `semantic` or `truthful`.
    pub space: String,
    pub title: String,
    pub points: Vec<ExplorerPoint>,
    /// Share of a fitted point's ten nearest points (2-D) of its own kind: 0.5 mixed, 1.0 apart.
    pub kind_agreement: f32,
}

/// One retrieved entry of the focus.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExplorerLink {
    /// Index into [`ExplorerView::entries`].
    pub entry: u32,
    /// Cosine of the centred `h_sem` states, as latent editing scores.
    pub score: f32,
}

/// The focus and what it retrieves (the memory plus the workspace's edits, best first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExplorerFocus {
    pub entry: u32,
    pub links: Vec<ExplorerLink>,
}

/// `GET` [`crate::routes::EXPLORER`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExplorerView {
    pub model: String,
    /// Layers of the memory (the layer selector).
    pub layers: Vec<usize>,
    pub layer: usize,
    /// `tsne` or `pca`.
    pub projection: String,
    /// Triplets in the memory, and sampled for the picture.
    pub memory_size: usize,
    pub sampled: usize,
    pub entries: Vec<ExplorerEntry>,
    /// Raw, semantic, truthfulness.
    pub spaces: Vec<ExplorerSpace>,
    pub focus: Option<ExplorerFocus>,
    /// Seconds the projection took when it was fitted (it is cached per model, layer and projection).
    pub fit_seconds: f64,
    /// Edits of the workspace that have no state in this space (not UniKE with latent knowledge, or whose patch is
    /// gone), by id.
    #[serde(default)]
    pub edits_without_states: Vec<i64>,
}
