//! Errors of compiling and running plans: each names the node (or buffer) at fault.

use thiserror::Error;

/// What went wrong.
#[derive(Debug, Error)]
pub enum CodegenError {
    /// The graph itself is invalid.
    #[error(transparent)]
    Ir(#[from] tessera_ir::IrError),
    /// A node the planner cannot lower (yet), with the reason.
    #[error("node `{node}` ({op}): {reason}")]
    Unsupported {
        /// Node name.
        node: String,
        /// Op name.
        op: &'static str,
        /// Why.
        reason: String,
    },
    /// A kernel refused the layer (encoding or binding).
    #[error("node `{node}`: {source}")]
    Kernel {
        /// Node name.
        node: String,
        /// The kernel error.
        #[source]
        source: tessera_kernels::KernelError,
    },
    /// A caller buffer of the wrong length.
    #[error("{what}: expected {expected} floats, found {found}")]
    BufferLength {
        /// Which buffer.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Length given.
        found: usize,
    },
    /// The tuning cache file cannot be read or written.
    #[error("tuning cache {path}: {reason}")]
    TuneCache {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// A file cannot be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Bad compile options.
    #[error("compile option `{field}`: {reason}")]
    Options {
        /// The option.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Result alias.
pub type Result<T> = std::result::Result<T, CodegenError>;

pub(crate) fn unsupported(node: &tessera_ir::Node, reason: impl Into<String>) -> CodegenError {
    CodegenError::Unsupported { node: node.name.clone(), op: node.op.name(), reason: reason.into() }
}

pub(crate) fn kernel_error(node: &str) -> impl Fn(tessera_kernels::KernelError) -> CodegenError {
    let node = node.to_string();
    move |source| CodegenError::Kernel { node: node.clone(), source }
}
