//! Typed errors of the simulator: each names the layer, field or file at fault and what was
//! expected.

use thiserror::Error;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ReramError>;

/// What went wrong.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReramError {
    /// A setting is out of range.
    #[error("crossbar config: `{field}`: {reason}")]
    Config {
        /// The field.
        field: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// A layer cannot be mapped.
    #[error("layer `{layer}`: {reason}")]
    Layer {
        /// The node (and weight) name.
        layer: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// A textual mapping name did not parse.
    #[error("unknown mapping `{0}` (expected offset, two-column, differential or polarized:M)")]
    MappingName(String),
    /// The graph itself is invalid, or the interpreter failed on a digital op.
    #[error(transparent)]
    Ir(#[from] tessera_ir::IrError),
    /// A kernel rejected its buffers (a bug if it happens).
    #[error(transparent)]
    Kernel(#[from] tessera_kernels::KernelError),
}
