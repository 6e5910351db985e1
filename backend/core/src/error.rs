//! Typed errors of the core library.

use std::path::PathBuf;

/// Every failure the core can report. Messages are one line and name the offending file or value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape mismatch, missing weight, device error).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),

    /// A file could not be read.
    #[error("cannot read {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },

    /// A configuration file is malformed or describes something unsupported.
    #[error("bad config {path}: {msg}")]
    Config { path: PathBuf, msg: String },

    /// A checkpoint directory is incomplete or inconsistent.
    #[error("bad checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },

    /// The tokenizer failed to load, encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// An image could not be decoded or preprocessed.
    #[error("bad image {path}: {msg}")]
    Image { path: PathBuf, msg: String },

    /// A data file (MMEdit / VLKEB JSON) is malformed.
    #[error("bad data file {path}: {msg}")]
    Data { path: PathBuf, msg: String },

    /// A saved artifact was written by an older form of its method that this version cannot apply; the holder can
    /// make it again from its provenance.
    #[error("{path} is outdated: {msg}")]
    Outdated { path: PathBuf, msg: String },

    /// A caller passed an argument that cannot work (wrong shape, wrong count of image tokens, ...).
    #[error("{0}")]
    Invalid(String),

    /// The caller asked to stop (a progress callback returned `false`).
    #[error("cancelled")]
    Cancelled,
}

/// Result alias of the core library.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), err: source }
    }
    pub(crate) fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config { path: path.into(), msg: msg.into() }
    }
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), msg: msg.into() }
    }
}
