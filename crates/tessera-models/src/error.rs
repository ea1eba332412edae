//! The typed errors of `tessera-models`.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

/// What can go wrong building, training, checkpointing or exporting a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A configuration value is out of range.
    #[error("invalid config `{field}`: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },

    /// Reading tensor data out of burn failed.
    #[error("tensor `{what}`: {reason}")]
    Tensor {
        /// Which tensor.
        what: String,
        /// burn's message.
        reason: String,
    },

    /// A named weight does not exist in the model.
    #[error("model has no prunable weight `{path}`")]
    NoSuchWeight {
        /// The path asked for.
        path: String,
    },

    /// A checkpoint could not be written or read.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// An IR error during export.
    #[error(transparent)]
    Ir(#[from] tessera_ir::IrError),

    /// A sparsity error (scheme, mask, geometry).
    #[error(transparent)]
    Sparsity(#[from] tessera_sparsity::SparsityError),

    /// A data error (loading or batching a data set).
    #[error(transparent)]
    Data(#[from] tessera_data::DataError),
}

/// Reads a burn tensor's values as f32.
pub(crate) fn to_vec<const D: usize>(what: &str, t: burn::tensor::Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| ModelError::Tensor { what: what.to_string(), reason: format!("{e:?}") })
}
