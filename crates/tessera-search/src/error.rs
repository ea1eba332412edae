//! Typed errors of the search: each names the layer, field or file at fault and what was
//! expected.

use std::path::PathBuf;

use thiserror::Error;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, SearchError>;

/// The error an [`crate::Evaluator`] returns: anything, boxed (the concrete evaluators live
/// in other crates).
pub type EvalError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SearchError {
    /// A setting is out of range.
    #[error("search config: `{field}`: {reason}")]
    Config {
        /// The field.
        field: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// A layer of the search space is unusable.
    #[error("layer `{layer}`: {reason}")]
    Layer {
        /// The layer.
        layer: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// A candidate does not fit the space (wrong length, option out of range).
    #[error("candidate: {0}")]
    Candidate(String),
    /// The Gaussian process's kernel matrix is not positive definite even with jitter.
    #[error(
        "Gaussian process: kernel matrix of {points} points is not positive definite (largest jitter {jitter:e})"
    )]
    NotPositiveDefinite {
        /// Points fitted.
        points: usize,
        /// The largest jitter tried.
        jitter: f64,
    },
    /// The evaluation log cannot be read, written or resumed from.
    #[error("evaluation log {path}: {reason}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// The evaluator failed on a candidate.
    #[error("evaluating candidate {index} ({candidate}): {source}")]
    Evaluation {
        /// Evaluation index.
        index: usize,
        /// The candidate's choices.
        candidate: String,
        /// The evaluator's error.
        source: EvalError,
    },
    /// A sparsity scheme rejected a layer in a way that is not "cannot tile" or "cannot
    /// reach this rate".
    #[error(transparent)]
    Sparsity(#[from] tessera_sparsity::SparsityError),
}

impl SearchError {
    /// A config error.
    pub fn config(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        SearchError::Config { field: field.into(), reason: reason.to_string() }
    }

    pub(crate) fn log(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        SearchError::Log { path: path.to_path_buf(), reason: reason.to_string() }
    }
}
