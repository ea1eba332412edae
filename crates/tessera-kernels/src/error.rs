//! The typed errors of `tessera-kernels`.

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, KernelError>;

/// What can go wrong when encoding formats or running kernels.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// A shape is inconsistent or empty.
    #[error("invalid shape: {reason}")]
    InvalidShape {
        /// What is wrong.
        reason: String,
    },

    /// A buffer has the wrong length.
    #[error("{what}: expected {expected} values, got {found}")]
    BufferLength {
        /// Which buffer ("input", "output", "weights", "scratch").
        what: &'static str,
        /// Required length.
        expected: usize,
        /// Actual length.
        found: usize,
    },

    /// A mask does not have the structure a format needs.
    #[error("layer `{layer}`: the mask is not {format}-structured: {reason}")]
    WrongStructure {
        /// The layer.
        layer: String,
        /// The format ("block-punched 8x4", "BCR 4x16", ...).
        format: String,
        /// The first violation found.
        reason: String,
    },

    /// An epilogue asked a kernel for something it does not fuse.
    #[error("the {kernel} kernel does not fuse {what}")]
    UnsupportedEpilogue {
        /// The kernel.
        kernel: &'static str,
        /// What it was asked to fuse.
        what: &'static str,
    },

    /// An instruction set was requested that this CPU lacks (or that does not exist).
    #[error("instruction set `{name}`: {reason}")]
    UnsupportedIsa {
        /// The requested name.
        name: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// An error from tessera-sparsity (geometry, masks).
    #[error(transparent)]
    Sparsity(#[from] tessera_sparsity::SparsityError),
}
