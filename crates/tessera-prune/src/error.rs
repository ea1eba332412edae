//! The typed errors of `tessera-prune`.

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, PruneError>;

/// What can go wrong planning or running a pruning pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PruneError {
    /// A setting is out of range or inconsistent.
    #[error("invalid {field}: {reason}")]
    Config {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },

    /// A layer cannot take the scheme its rule gives it.
    #[error("layer `{layer}`: {reason}")]
    Layer {
        /// The layer's weight path.
        layer: String,
        /// Why.
        reason: String,
    },

    /// A scheme rejected a projection.
    #[error(transparent)]
    Sparsity(#[from] tessera_sparsity::SparsityError),

    /// Model building, training, loading or export failed.
    #[error(transparent)]
    Model(#[from] tessera_models::ModelError),

    /// Data loading failed.
    #[error(transparent)]
    Data(#[from] tessera_data::DataError),
}

impl PruneError {
    /// A config error on `field`.
    pub fn config(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        PruneError::Config { field: field.into(), reason: reason.to_string() }
    }
}

impl From<PruneError> for tessera_models::ModelError {
    /// Hooks report through the training loop's error type.
    fn from(e: PruneError) -> Self {
        match e {
            PruneError::Model(m) => m,
            other => tessera_models::ModelError::Config {
                field: "pruning hook",
                reason: other.to_string(),
            },
        }
    }
}
