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
