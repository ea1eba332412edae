//! Block sparse rows (BSR): whole `br x bc` blocks of the GEMM view, the storage of the
//! `block` scheme and of block-punched 1x1 / FC layers.
//!
//! `block_row_ptr[block_rows + 1]`, `block_col[blocks]` (block column index), and
//! `values[blocks][bc][br]`: each block is stored **column-major**, so the `br` weights of one
//! column are contiguous; that is what the row-group kernel broadcasts from. Blocks never cross
//! a channel group's rows; edge blocks of layers the blocks do not divide are zero-padded.

use tessera_sparsity::{Layer, Mask};

use crate::error::{KernelError, Result};
use crate::formats::{ByteSize, check_lengths, structure_error};
use crate::rowgroup::RowGroupMatrix;

/// A BSR matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Bsr {
    rows: usize,
    cols: usize,
    br: usize,
    bc: usize,
    /// First row of each block row, plus `rows`.
    block_row_start: Vec<u32>,
    block_row_ptr: Vec<u32>,
    block_col: Vec<u32>,
    values: Vec<f32>,
}

impl Bsr {
    /// Encodes `weights` (GEMM view of `layer`) keeping the blocks that `mask` keeps. Every
    /// block must be kept or pruned whole.
    pub fn encode(
        layer: &Layer,
        weights: &[f32],
        mask: &Mask,
        br: usize,
        bc: usize,
    ) -> Result<Self> {
        let g = &layer.geometry;
        let (rows, cols) = (g.rows(), g.cols());
        check_lengths(layer, weights, mask)?;
        if br == 0 || bc == 0 {
            return Err(KernelError::InvalidShape { reason: format!("block {br}x{bc}") });
        }
        let groups = RowGroupMatrix::uniform_groups(rows, g.out_per_group(), br);
        let mut out = Bsr {
            rows,
            cols,
            br,
            bc,
            block_row_start: vec![0],
            block_row_ptr: vec![0],
            block_col: Vec::new(),
            values: Vec::new(),
        };
        let mut r0 = 0;
        for len in groups {
            for (bj, c0) in (0..cols).step_by(bc).enumerate() {
                let c1 = (c0 + bc).min(cols);
                let first = mask.get(r0 * cols + c0);
                for r in r0..r0 + len {
                    for c in c0..c1 {
                        if mask.get(r * cols + c) != first {
                            return Err(structure_error(
                                layer,
                                format!("BSR {br}x{bc}"),
                                format!(
                                    "block at rows {r0}..{} columns {c0}..{c1} is partly kept (row {r}, column {c})",
                                    r0 + len
                                ),
                            ));
                        }
                    }
                }
                if first {
                    out.block_col.push(bj as u32);
                    for c in c0..c0 + bc {
                        for r in r0..r0 + br {
                            out.values.push(if r < r0 + len && c < c1 {
                                weights[r * cols + c]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            }
            r0 += len;
            out.block_row_start.push(r0 as u32);
            out.block_row_ptr.push(out.block_col.len() as u32);
        }
        Ok(out)
    }

    /// Stored blocks.
    pub fn blocks(&self) -> usize {
        self.block_col.len()
    }

    /// The dense row-major matrix.
    pub fn decode(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for b in 0..self.block_row_ptr.len() - 1 {
            let (r0, r1) = (self.block_row_start[b] as usize, self.block_row_start[b + 1] as usize);
            for k in self.block_row_ptr[b] as usize..self.block_row_ptr[b + 1] as usize {
                let c0 = self.block_col[k] as usize * self.bc;
                let vals = &self.values[k * self.br * self.bc..(k + 1) * self.br * self.bc];
                for j in 0..self.bc.min(self.cols - c0) {
                    for i in 0..r1 - r0 {
                        out[(r0 + i) * self.cols + c0 + j] = vals[j * self.br + i];
                    }
                }
            }
        }
        out
    }

    /// Size: values (padded blocks included), 4-byte block columns and block-row pointers.
    pub fn bytes(&self) -> ByteSize {
        ByteSize {
            values: 4 * self.values.len(),
            index: 4 * (self.block_row_ptr.len() + self.block_col.len()),
        }
    }

    /// The execution form: one group per block row, one entry per column of a kept block.
    pub fn to_row_groups(&self) -> RowGroupMatrix {
        let mut entry_ptr = vec![0u32];
        let mut col = Vec::new();
        let mut weight_ptr = vec![0usize];
        let mut weights = Vec::new();
        for b in 0..self.block_row_ptr.len() - 1 {
            let len = (self.block_row_start[b + 1] - self.block_row_start[b]) as usize;
            for k in self.block_row_ptr[b] as usize..self.block_row_ptr[b + 1] as usize {
                let c0 = self.block_col[k] as usize * self.bc;
                for j in 0..self.bc.min(self.cols - c0) {
                    col.push((c0 + j) as u32);
                    let v = &self.values[k * self.br * self.bc + j * self.br..];
                    weights.extend_from_slice(&v[..len]);
                }
            }
            entry_ptr.push(col.len() as u32);
            weight_ptr.push(weights.len());
        }
        RowGroupMatrix::from_parts(
            self.rows,
            self.cols,
            self.block_row_start.clone(),
            entry_ptr,
            col,
            weight_ptr,
            weights,
        )
    }
}
