//! The typed errors of `tessera-ir`. Errors about the graph name the node or parameter.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, IrError>;

/// What can go wrong when building, validating, loading or running a graph.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IrError {
    /// A file operation failed.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The JSON graph is malformed (not the right structure).
    #[error("{path}: {reason}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The file's format version is not one this build reads.
    #[error(
        "{path}: format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u64,
        /// The version supported.
        supported: u64,
    },

    /// A node's `op` is not a known operation.
    #[error("node `{node}`: unknown op `{op}`")]
    UnknownOp {
        /// The node.
        node: String,
        /// The op name found.
        op: String,
    },

    /// A node's attributes are malformed.
    #[error("node `{node}`: {reason}")]
    BadNode {
        /// The node.
        node: String,
        /// What is wrong.
        reason: String,
    },

    /// A node reads a value that no earlier node or graph input produces.
    #[error("node `{node}`: input `{input}` is not produced by any earlier node or graph input")]
    DanglingInput {
        /// The node.
        node: String,
        /// The missing value.
        input: String,
    },

    /// Two nodes (or a node and an input) produce the same value name.
    #[error("value `{name}` is produced twice")]
    DuplicateValue {
        /// The value.
        name: String,
    },

    /// A graph output is not produced by any node or input.
    #[error("graph output `{name}` is not produced by any node or input")]
    DanglingOutput {
        /// The value.
        name: String,
    },

    /// A node refers to a parameter the graph does not have.
    #[error("node `{node}`: parameter `{param}` does not exist")]
    MissingParam {
        /// The node.
        node: String,
        /// The parameter.
        param: String,
    },

    /// Shapes do not fit the op.
    #[error("node `{node}`: {reason}")]
    ShapeMismatch {
        /// The node.
        node: String,
        /// What does not fit.
        reason: String,
    },

    /// A parameter's data or mask has the wrong size or type.
    #[error("parameter `{param}`: {reason}")]
    BadParam {
        /// The parameter.
        param: String,
        /// What is wrong.
        reason: String,
    },

    /// A parameter holds NaN or infinity (checked when loading with `reject_non_finite`).
    #[error("parameter `{param}`: value {index} is {value}")]
    NonFinite {
        /// The parameter.
        param: String,
        /// Flat index.
        index: usize,
        /// The value.
        value: f32,
    },

    /// The safetensors file is malformed.
    #[error("{path}: safetensors: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The interpreter was given inputs that do not match the graph.
    #[error("input `{input}`: {reason}")]
    BadInput {
        /// The input.
        input: String,
        /// What is wrong.
        reason: String,
    },

    /// An error from tessera-sparsity (schemes, masks).
    #[error(transparent)]
    Sparsity(#[from] tessera_sparsity::SparsityError),
}

impl IrError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        IrError::Io { path: path.into(), action, source }
    }
}
