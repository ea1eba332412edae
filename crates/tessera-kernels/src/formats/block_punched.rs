//! Block-punched storage (and KGS, its 3-D kernel-group sibling).
//!
//! Block-punched: the weight is cut into blocks of `br` filters x `bc` input channels; inside a
//! block all `br * bc` kernels keep the same kernel positions. Stored per block: the kept
//! positions (`u16` each) and, per kept position, the `bc` channels' `br` filter weights
//! contiguously (`values[position][channel][filter]`). Index cost: one `u16` per kept
//! position per block, against CSR's `u32` per weight: for 8x4 blocks that is 2 bytes per 32
//! weights.
//!
//! KGS (RT3D): kernel groups of `gm` filters x `gn` channels of a 3-D convolution share kept
//! *spatial* positions `(kh, kw)` across all `kt` time slices, as RT3D's public code does: a
//! kept position covers `kt` taps. Same storage, a position just spans `kt` taps.
//!
//! Execution: one row group per block row whose entries are the kept (channel, tap) columns of
//! its blocks, i.e. the row-group kernel with every input vector reused by the block's filters.

use tessera_sparsity::{Layer, LayerGeometry, Mask};

use crate::error::{KernelError, Result};
use crate::formats::{ByteSize, check_lengths, structure_error};
use crate::rowgroup::RowGroupMatrix;

/// What one kept position covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    /// One kernel tap (block-punched).
    Tap,
    /// One spatial position across `kt` time slices of `khw` taps each (KGS).
    AcrossTime { kt: usize, khw: usize },
}

impl Span {
    fn positions(self, k: usize) -> usize {
        match self {
            Span::Tap => k,
            Span::AcrossTime { khw, .. } => khw,
        }
    }

    fn taps(self, p: usize) -> impl Iterator<Item = usize> {
        let (n, step) = match self {
            Span::Tap => (1, 0),
            Span::AcrossTime { kt, khw } => (kt, khw),
        };
        (0..n).map(move |t| p + t * step)
    }
}

/// Block-punched weights.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockPunched {
    rows: usize,
    cols: usize,
    in_per_group: usize,
    k: usize,
    br: usize,
    bc: usize,
    span: Span,
    block_row_start: Vec<u32>,
    /// Per block (block-row major, then channel block): first kept position.
    pos_ptr: Vec<u32>,
    positions: Vec<u16>,
    /// Per block, first value.
    value_ptr: Vec<usize>,
    values: Vec<f32>,
}

impl BlockPunched {
    /// Encodes a block-punched `br x bc` mask of a conv or linear layer.
    pub fn encode(
        layer: &Layer,
        weights: &[f32],
        mask: &Mask,
        br: usize,
        bc: usize,
    ) -> Result<Self> {
        Self::encode_with(layer, weights, mask, br, bc, Span::Tap, "block-punched")
    }

    fn encode_with(
        layer: &Layer,
        weights: &[f32],
        mask: &Mask,
        br: usize,
        bc: usize,
        span: Span,
        name: &str,
    ) -> Result<Self> {
        check_lengths(layer, weights, mask)?;
        if br == 0 || bc == 0 {
            return Err(KernelError::InvalidShape { reason: format!("block {br}x{bc}") });
        }
        let g = &layer.geometry;
        let (rows, cols, ipg, k) = (g.rows(), g.cols(), g.in_per_group(), g.kernel_volume());
        if k > u16::MAX as usize {
            return Err(KernelError::InvalidShape {
                reason: format!("{k} kernel positions exceed u16"),
            });
        }
        let mut out = BlockPunched {
            rows,
            cols,
            in_per_group: ipg,
            k,
            br,
            bc,
            span,
            block_row_start: vec![0],
            pos_ptr: vec![0],
            positions: Vec::new(),
            value_ptr: vec![0],
            values: Vec::new(),
        };
        let format = format!("{name} {br}x{bc}");
        let mut r0 = 0;
        for len in RowGroupMatrix::uniform_groups(rows, g.out_per_group(), br) {
            for c0 in (0..ipg).step_by(bc) {
                let c1 = (c0 + bc).min(ipg);
                for p in 0..span.positions(k) {
                    let first = mask.get(r0 * cols + c0 * k + p);
                    for r in r0..r0 + len {
                        for c in c0..c1 {
                            for tap in span.taps(p) {
                                if mask.get(r * cols + c * k + tap) != first {
                                    return Err(structure_error(
                                        layer,
                                        format,
                                        format!(
                                            "block rows {r0}..{} channels {c0}..{c1}: position {p} is kept for some kernels and not others (row {r}, channel {c}, tap {tap})",
                                            r0 + len
                                        ),
                                    ));
                                }
                            }
                        }
                    }
                    if first {
                        out.positions.push(p as u16);
                        for tap in span.taps(p) {
                            for c in c0..c1 {
                                out.values.extend(
                                    (r0..r0 + len).map(|r| weights[r * cols + c * k + tap]),
                                );
                            }
                        }
                    }
                }
                out.pos_ptr.push(out.positions.len() as u32);
                out.value_ptr.push(out.values.len());
            }
            r0 += len;
            out.block_row_start.push(r0 as u32);
        }
        Ok(out)
    }

    fn channel_blocks(&self) -> usize {
        self.in_per_group.div_ceil(self.bc)
    }

    /// Kept positions over all blocks.
    pub fn kept_positions(&self) -> usize {
        self.positions.len()
    }

    /// The dense row-major GEMM-view weight.
    pub fn decode(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        self.for_each_entry(|r0, len, col, w| {
            for i in 0..len {
                out[(r0 + i) * self.cols + col] = w[i];
            }
        });
        out
    }

    /// Calls `f(first_row, rows, column, weights)` for every stored entry, in execution order.
    fn for_each_entry(&self, mut f: impl FnMut(usize, usize, usize, &[f32])) {
        let cb = self.channel_blocks();
        for br_i in 0..self.block_row_start.len() - 1 {
            let r0 = self.block_row_start[br_i] as usize;
            let len = self.block_row_start[br_i + 1] as usize - r0;
            for j in 0..cb {
                let b = br_i * cb + j;
                let (c0, c1) = (j * self.bc, ((j + 1) * self.bc).min(self.in_per_group));
                let mut v = self.value_ptr[b];
                for &p in &self.positions[self.pos_ptr[b] as usize..self.pos_ptr[b + 1] as usize] {
                    for tap in self.span.taps(p as usize) {
                        for c in c0..c1 {
                            f(r0, len, c * self.k + tap, &self.values[v..v + len]);
                            v += len;
                        }
                    }
                }
            }
        }
    }

    /// Size: values, one `u16` per kept position per block, a `u32` pointer per block.
    pub fn bytes(&self) -> ByteSize {
        ByteSize {
            values: 4 * self.values.len(),
            index: 2 * self.positions.len() + 4 * (self.pos_ptr.len() + self.block_row_start.len()),
        }
    }

    /// The execution form: one group per block row.
    pub fn to_row_groups(&self) -> RowGroupMatrix {
        let mut group_start = vec![0u32];
        let mut entry_ptr = vec![0u32];
        let mut col = Vec::new();
        let mut weight_ptr = vec![0usize];
        let mut weights = Vec::new();
        let mut current = 0usize;
        self.for_each_entry(|r0, len, c, w| {
            while r0 > current {
                // Close the previous block row (possibly one without entries).
                let next = self.block_row_start[group_start.len()] as usize;
                group_start.push(next as u32);
                entry_ptr.push(col.len() as u32);
                weight_ptr.push(weights.len());
                current = next;
            }
            col.push(c as u32);
            weights.extend_from_slice(&w[..len]);
        });
        while group_start.len() < self.block_row_start.len() {
            group_start.push(self.block_row_start[group_start.len()]);
            entry_ptr.push(col.len() as u32);
            weight_ptr.push(weights.len());
        }
        RowGroupMatrix::from_parts(
            self.rows,
            self.cols,
            group_start,
            entry_ptr,
            col,
            weight_ptr,
            weights,
        )
    }
}

/// KGS weights of a 3-D convolution: see the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Kgs(BlockPunched);

impl Kgs {
    /// Encodes a KGS `gm x gn` mask (spatial positions shared across time in each group).
    pub fn encode(
        layer: &Layer,
        weights: &[f32],
        mask: &Mask,
        gm: usize,
        gn: usize,
    ) -> Result<Self> {
        let (kt, khw) = match layer.geometry {
            LayerGeometry::Conv3d { kt, kh, kw, .. } => (kt, kh * kw),
            LayerGeometry::Conv2d { kh, kw, .. } => (1, kh * kw),
            LayerGeometry::Linear { .. } => {
                return Err(structure_error(
                    layer,
                    format!("KGS {gm}x{gn}"),
                    "KGS needs a convolution".into(),
                ));
            }
        };
        BlockPunched::encode_with(layer, weights, mask, gm, gn, Span::AcrossTime { kt, khw }, "KGS")
            .map(Kgs)
    }

    /// Kept spatial positions over all groups.
    pub fn kept_positions(&self) -> usize {
        self.0.kept_positions()
    }

    /// The dense row-major GEMM-view weight.
    pub fn decode(&self) -> Vec<f32> {
        self.0.decode()
    }

    /// Size: values, one `u16` per kept spatial position per group, a pointer per group.
    pub fn bytes(&self) -> ByteSize {
        self.0.bytes()
    }

    /// The execution form: one group per kernel-group row.
    pub fn to_row_groups(&self) -> RowGroupMatrix {
        self.0.to_row_groups()
    }
}
