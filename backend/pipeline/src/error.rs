//! The pipeline's errors. [`Error::Input`] is a user's mistake (a flag, a path, a file, a value): the CLI prints it,
//! the studio answers it with a 4xx. Everything else is the machinery's.

/// Errors of the experiment pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A user's mistake, with the message that says which and what to do.
    #[error("{0}")]
    Input(String),
    /// Something the pipeline needs is missing or inconsistent (not the user's input).
    #[error("{0}")]
    State(String),
    #[error(transparent)]
    Core(#[from] unike_core::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("progress bar template: {0}")]
    Template(#[from] indicatif::style::TemplateError),
}

impl Error {
    /// Whether the error is the user's to fix (bad input) rather than the machinery's.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Error::Input(_)
                | Error::Core(
                    unike_core::Error::Data { .. } | unike_core::Error::Image { .. } | unike_core::Error::Invalid(_)
                )
        )
    }

    /// Whether a benchmark was cancelled by its observer.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Core(unike_core::Error::Cancelled))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `Err(Error::Input(format!(...)))`.
macro_rules! input {
    ($($arg:tt)*) => { return Err($crate::error::Error::Input(format!($($arg)*))) };
}
pub(crate) use input;
