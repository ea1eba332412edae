//! Compressed sparse rows: `row_ptr[rows + 1]`, `col_idx[nnz]`, `values[nnz]`.
//!
//! The format of unstructured sparsity and the baseline structured sparsity must beat. Its
//! execution form is a [`RowGroupMatrix`] with one row per group, built without copying the
//! pattern's logic: the arrays are the same.

use tessera_sparsity::Mask;

use crate::error::{KernelError, Result};
use crate::formats::ByteSize;
use crate::rowgroup::RowGroupMatrix;

/// A CSR matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Csr {
    rows: usize,
    cols: usize,
    row_ptr: Vec<u32>,
    col_idx: Vec<u32>,
    values: Vec<f32>,
}

impl Csr {
    /// Encodes the kept positions of a row-major `rows x cols` weight (the mask's support; a
    /// kept zero is stored).
    pub fn encode(rows: usize, cols: usize, weights: &[f32], mask: &Mask) -> Result<Self> {
        if weights.len() != rows * cols || mask.len() != rows * cols {
            return Err(KernelError::BufferLength {
                what: "weights/mask",
                expected: rows * cols,
                found: weights.len().min(mask.len()),
            });
        }
        let mut row_ptr = Vec::with_capacity(rows + 1);
        let mut col_idx = Vec::with_capacity(mask.count());
        let mut values = Vec::with_capacity(mask.count());
        row_ptr.push(0);
        let mut ones = mask.iter_ones().peekable();
        for r in 0..rows {
            while let Some(&i) = ones.peek() {
                if i >= (r + 1) * cols {
                    break;
                }
                col_idx.push((i - r * cols) as u32);
                values.push(weights[i]);
                ones.next();
            }
            row_ptr.push(col_idx.len() as u32);
        }
        Ok(Csr { rows, cols, row_ptr, col_idx, values })
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Stored non-zeros.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// The dense row-major matrix.
    pub fn decode(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for r in 0..self.rows {
            for k in self.row_ptr[r] as usize..self.row_ptr[r + 1] as usize {
                out[r * self.cols + self.col_idx[k] as usize] = self.values[k];
            }
        }
        out
    }

    /// Size: 4-byte values, 4-byte column indices and row pointers.
    pub fn bytes(&self) -> ByteSize {
        ByteSize {
            values: 4 * self.values.len(),
            index: 4 * (self.row_ptr.len() + self.col_idx.len()),
        }
    }

    /// The execution form (one row per group).
    pub fn to_row_groups(&self) -> RowGroupMatrix {
        RowGroupMatrix::from_parts(
            self.rows,
            self.cols,
            (0..=self.rows as u32).collect(),
            self.row_ptr.clone(),
            self.col_idx.clone(),
            self.row_ptr.iter().map(|&p| p as usize).collect(),
            self.values.clone(),
        )
    }
}
