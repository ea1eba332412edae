//! Sparse storage formats. Each encodes from a dense weight plus a tessera-sparsity mask
//! (checking that the mask has the structure the format needs), decodes back to dense, and
//! reports its size split into weight bytes and index bytes.

use serde::{Deserialize, Serialize};

/// Bytes a format occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ByteSize {
    /// Bytes of stored weight values.
    pub values: usize,
    /// Bytes of index data (pointers, column indices, positions, pattern ids).
    pub index: usize,
}

impl ByteSize {
    /// Total bytes.
    pub fn total(&self) -> usize {
        self.values + self.index
    }

    /// Index bytes per stored value byte.
    pub fn index_overhead(&self) -> f64 {
        self.index as f64 / self.values.max(1) as f64
    }
}

pub mod bcr;
pub mod block_punched;
pub mod bsr;
pub mod csr;
pub mod fkw;

use tessera_sparsity::{Layer, Mask};

use crate::error::{KernelError, Result};

/// Checks that `weights` and `mask` match `layer`'s size.
pub(crate) fn check_lengths(layer: &Layer, weights: &[f32], mask: &Mask) -> Result<()> {
    let n = layer.geometry.len();
    for (what, found) in [("weights", weights.len()), ("mask", mask.len())] {
        if found != n {
            return Err(KernelError::BufferLength { what, expected: n, found });
        }
    }
    Ok(())
}

/// The error for a mask without the structure a format needs.
pub(crate) fn structure_error(layer: &Layer, format: String, reason: String) -> KernelError {
    KernelError::WrongStructure { layer: layer.name.clone(), format, reason }
}
