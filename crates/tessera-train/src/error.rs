//! The typed errors of `tessera-train`.

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, TrainError>;

/// What can go wrong setting up or running sparse training.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A setting is out of range or inconsistent.
    #[error("invalid {field}: {reason}")]
    Config {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },

    /// A layer cannot be trained sparse with the scheme asked for.
    #[error("layer `{layer}`: {reason}")]
    Layer {
        /// The layer's weight path.
        layer: String,
        /// Why.
        reason: String,
    },

    /// A saved trainer state does not fit this trainer.
    #[error("sparse-training state: {reason}")]
    State {
        /// Why.
        reason: String,
    },

    /// A scheme rejected a projection.
    #[error(transparent)]
    Sparsity(#[from] tessera_sparsity::SparsityError),

    /// A storage format rejected a mask (memory accounting).
    #[error(transparent)]
    Kernels(#[from] tessera_kernels::KernelError),

    /// Model access or training failed.
    #[error(transparent)]
    Model(#[from] tessera_models::ModelError),
}

impl TrainError {
    /// A config error on `field`.
    pub fn config(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        TrainError::Config { field: field.into(), reason: reason.to_string() }
    }

    /// A layer error.
    pub fn layer(layer: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        TrainError::Layer { layer: layer.into(), reason: reason.to_string() }
    }
}

impl From<TrainError> for tessera_models::ModelError {
    /// Hooks report through the training loop's error type.
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Model(m) => m,
            other => tessera_models::ModelError::Config {
                field: "sparse-training hook",
                reason: other.to_string(),
            },
        }
    }
}
