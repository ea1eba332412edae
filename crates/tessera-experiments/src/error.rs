//! The typed errors of `tessera-experiments`.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ExperimentError>;

/// What can go wrong finding, configuring, running or recording an experiment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExperimentError {
    /// No experiment of that name is registered.
    #[error("no experiment named `{name}`; known: {known}")]
    UnknownExperiment {
        /// The name asked for.
        name: String,
        /// The registered names, comma-separated.
        known: String,
    },

    /// An option or config value is invalid.
    #[error("invalid {field}: {reason}")]
    Config {
        /// The option or config field.
        field: String,
        /// Why.
        reason: String,
    },

    /// Reading or writing a result file failed.
    #[error("{path}: {reason}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },

    /// Drawing a plot failed.
    #[error("plot {name}: {reason}")]
    Plot {
        /// The plot's file name.
        name: String,
        /// plotters' message.
        reason: String,
    },

    /// Data loading failed.
    #[error(transparent)]
    Data(#[from] tessera_data::DataError),

    /// Model building, training or export failed.
    #[error(transparent)]
    Model(#[from] tessera_models::ModelError),

    /// A pruning run failed.
    #[error(transparent)]
    Prune(#[from] tessera_prune::PruneError),

    /// The IR rejected a graph.
    #[error(transparent)]
    Ir(#[from] tessera_ir::IrError),

    /// The ReRAM simulator rejected a model or setting.
    #[error(transparent)]
    Reram(#[from] tessera_reram::ReramError),

    /// A search failed (space, log, evaluation).
    #[error(transparent)]
    Search(#[from] tessera_search::SearchError),
}

impl ExperimentError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        ExperimentError::Io { path: path.into(), reason: reason.to_string() }
    }

    /// A config error on `field`.
    pub fn config(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        ExperimentError::Config { field: field.into(), reason: reason.to_string() }
    }
}
