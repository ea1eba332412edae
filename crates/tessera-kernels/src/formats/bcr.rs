//! BCR-compact storage and kernels (GRIM's block column-row sparsity).
//!
//! The GEMM view is cut into `br x bc` blocks; a block's kept weights form a dense sub-matrix
//! `kept_rows x kept_cols`. Stored per non-empty block: its first column, the kept rows and
//! columns as `u8` offsets inside the block (GRIM's column index array; the per-block column
//! count is its "stride", the register-load count), and the dense `kc x kr` sub-matrix
//! column-major (each kept column's `kr` weights contiguous). Block rows are additionally
//! listed heaviest first (`order`, GRIM's reorder pass), which is the order threads take them in
//! when work is split by block rows.
//!
//! Kernel: binding merges, inside each block row, the blocks that keep the same rows into one
//! sub-matrix (their kept columns concatenated: GRIM's "same rows, same register tile"). For a
//! tile of output positions and a block row, zero the rows' tile, then for every merged
//! sub-matrix accumulate its product in registers (`RT` kept rows x `BCR_V * LANES` positions;
//! every gathered input vector reused by all kept rows) and add it into the kept rows. Merging
//! matters: at 8x an 8x8 block keeps about 2 rows x 4 columns, so per-block accumulation paid
//! one read-modify-write of the output tile per 4 columns; merged, the 28 possible 2-row sets
//! of a block row each gather tens of columns.

#![allow(unsafe_op_in_unsafe_fn)] // micro-kernels are unsafe fns made of pointer arithmetic

use tessera_sparsity::{Layer, Mask};

use crate::conv::{ConvShape, InputLayout};
use crate::error::{KernelError, Result};
use crate::formats::{ByteSize, check_lengths, structure_error};
use crate::isa::Isa;
use crate::rowgroup::{ConvScratch, RowGroupMatrix, check_len};
use crate::simd::{Simd, simd_entry};
use crate::threads::{SendPtr, run_parallel};

/// BCR-compact weights.
#[derive(Debug, Clone, PartialEq)]
pub struct BcrCompact {
    rows: usize,
    cols: usize,
    br: usize,
    bc: usize,
    block_row_start: Vec<u32>,
    /// Per block row: first stored block.
    block_ptr: Vec<u32>,
    /// Per block: first GEMM column.
    block_col0: Vec<u32>,
    /// Per block: first kept row / kept column / value.
    row_ptr: Vec<u32>,
    col_ptr: Vec<u32>,
    value_ptr: Vec<usize>,
    kept_rows: Vec<u8>,
    kept_cols: Vec<u8>,
    values: Vec<f32>,
    /// Block rows, heaviest first.
    order: Vec<u32>,
}

impl BcrCompact {
    /// Encodes a BCR `br x bc` mask: each block's kept set must be a product of kept rows and
    /// kept columns (blocks may differ in both). Blocks are at most 256 x 256.
    pub fn encode(
        layer: &Layer,
        weights: &[f32],
        mask: &Mask,
        br: usize,
        bc: usize,
    ) -> Result<Self> {
        check_lengths(layer, weights, mask)?;
        if br == 0 || bc == 0 || br > 256 || bc > 256 {
            return Err(KernelError::InvalidShape {
                reason: format!("BCR block {br}x{bc} (sides 1..=256)"),
            });
        }
        let g = &layer.geometry;
        let (rows, cols) = (g.rows(), g.cols());
        let mut out = BcrCompact {
            rows,
            cols,
            br,
            bc,
            block_row_start: vec![0],
            block_ptr: vec![0],
            block_col0: Vec::new(),
            row_ptr: vec![0],
            col_ptr: vec![0],
            value_ptr: vec![0],
            kept_rows: Vec::new(),
            kept_cols: Vec::new(),
            values: Vec::new(),
            order: Vec::new(),
        };
        let mut r0 = 0;
        for len in RowGroupMatrix::uniform_groups(rows, g.out_per_group(), br) {
            for c0 in (0..cols).step_by(bc) {
                let c1 = (c0 + bc).min(cols);
                let kr: Vec<usize> =
                    (r0..r0 + len).filter(|&r| (c0..c1).any(|c| mask.get(r * cols + c))).collect();
                if kr.is_empty() {
                    continue;
                }
                let kc: Vec<usize> =
                    (c0..c1).filter(|&c| (r0..r0 + len).any(|r| mask.get(r * cols + c))).collect();
                for &r in &kr {
                    for &c in &kc {
                        if !mask.get(r * cols + c) {
                            return Err(structure_error(
                                layer,
                                format!("BCR {br}x{bc}"),
                                format!(
                                    "block at rows {r0}..{} columns {c0}..{c1}: row {r} and column {c} are kept but not weight ({r}, {c})",
                                    r0 + len
                                ),
                            ));
                        }
                    }
                }
                out.block_col0.push(c0 as u32);
                out.kept_rows.extend(kr.iter().map(|&r| (r - r0) as u8));
                out.kept_cols.extend(kc.iter().map(|&c| (c - c0) as u8));
                for &c in &kc {
                    out.values.extend(kr.iter().map(|&r| weights[r * cols + c]));
                }
                out.row_ptr.push(out.kept_rows.len() as u32);
                out.col_ptr.push(out.kept_cols.len() as u32);
                out.value_ptr.push(out.values.len());
            }
            r0 += len;
            out.block_row_start.push(r0 as u32);
            out.block_ptr.push(out.block_col0.len() as u32);
        }
        let mut order: Vec<u32> = (0..out.block_row_start.len() as u32 - 1).collect();
        let work = |b: u32| {
            out.value_ptr[out.block_ptr[b as usize + 1] as usize]
                - out.value_ptr[out.block_ptr[b as usize] as usize]
        };
        order.sort_by_key(|&b| (std::cmp::Reverse(work(b)), b));
        out.order = order;
        Ok(out)
    }

    /// Stored (non-empty) blocks.
    pub fn blocks(&self) -> usize {
        self.block_col0.len()
    }

    /// Stored weights.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Kept rows and columns of stored block `b`.
    fn block(&self, b: usize) -> (&[u8], &[u8], &[f32]) {
        (
            &self.kept_rows[self.row_ptr[b] as usize..self.row_ptr[b + 1] as usize],
            &self.kept_cols[self.col_ptr[b] as usize..self.col_ptr[b + 1] as usize],
            &self.values[self.value_ptr[b]..self.value_ptr[b + 1]],
        )
    }

    /// The dense row-major matrix.
    pub fn decode(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for brow in 0..self.block_ptr.len() - 1 {
            let r0 = self.block_row_start[brow] as usize;
            for b in self.block_ptr[brow] as usize..self.block_ptr[brow + 1] as usize {
                let c0 = self.block_col0[b] as usize;
                let (kr, kc, v) = self.block(b);
                for (j, &c) in kc.iter().enumerate() {
                    for (i, &r) in kr.iter().enumerate() {
                        out[(r0 + r as usize) * self.cols + c0 + c as usize] = v[j * kr.len() + i];
                    }
                }
            }
        }
        out
    }

    /// Size: values; one byte per kept row and column per block; 4-byte block column, block
    /// pointers and the reorder array.
    pub fn bytes(&self) -> ByteSize {
        ByteSize {
            values: 4 * self.values.len(),
            index: self.kept_rows.len()
                + self.kept_cols.len()
                + 4 * (self.block_ptr.len()
                    + self.block_col0.len()
                    + self.row_ptr.len()
                    + self.col_ptr.len()
                    + self.order.len()),
        }
    }

    /// An execution form for the row-group engine: each block row becomes one row group whose
    /// entries are the kept columns of its blocks, with zeros for the block's unkept rows.
    /// It wastes `br / kr` of the work but keeps every output row in registers, which wins
    /// over the block kernel when sub-matrices are small; the plan's tuner picks.
    pub fn to_row_groups(&self) -> RowGroupMatrix {
        let mut group_start = vec![0u32];
        let mut entry_ptr = vec![0u32];
        let mut col = Vec::new();
        let mut weight_ptr = vec![0usize];
        let mut weights = Vec::new();
        for brow in 0..self.block_ptr.len() - 1 {
            let (r0, r1) =
                (self.block_row_start[brow] as usize, self.block_row_start[brow + 1] as usize);
            for b in self.block_ptr[brow] as usize..self.block_ptr[brow + 1] as usize {
                let c0 = self.block_col0[b] as usize;
                let (kr, kc, v) = self.block(b);
                for (j, &c) in kc.iter().enumerate() {
                    col.push((c0 + c as usize) as u32);
                    let start = weights.len();
                    weights.resize(start + (r1 - r0), 0.0);
                    for (i, &r) in kr.iter().enumerate() {
                        weights[start + r as usize] = v[j * kr.len() + i];
                    }
                }
            }
            group_start.push(r1 as u32);
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

    /// Binds the matrix to a convolution (or, with [`BcrConv::gemm`], a GEMM).
    pub fn bind(self, shape: ConvShape) -> Result<BcrConv> {
        BcrConv::new(self, shape)
    }
}

/// Vectors per tile row of the block kernel: each broadcast weight serves this many vectors,
/// which is what amortizes BCR's one-broadcast-per-kept-weight cost.
const BCR_V: usize = 4;

/// Most threads with a precomputed block-row schedule; more threads split contiguously.
const SCHEDULED_THREADS: usize = 8;

/// A [`BcrCompact`] bound to a convolution: input offsets of every kept column, the tiles for
/// each vector width, and the block-row schedules, all computed once so runs never allocate.
#[derive(Debug, Clone)]
pub struct BcrConv {
    m: BcrCompact,
    shape: ConvShape,
    layout: InputLayout,
    /// Execution form: the blocks of each block row merged by kept-row set.
    merged: Merged,
    /// Tiles for 8 and 16 lanes.
    tiles: [Vec<(usize, usize)>; 2],
    /// `schedule[t - 1][i]`: block rows of thread `i` when running `t` threads, dealt
    /// heaviest-first to the least-loaded thread (GRIM's reorder, used for load balance).
    schedule: Vec<Vec<Vec<u32>>>,
    /// Every block row in order (one thread).
    all_rows: Vec<u32>,
}

/// The sub-matrices of a [`BcrCompact`] bound to a convolution, with the blocks of a block row
/// that keep the same rows merged into one (kept columns concatenated in column order).
#[derive(Debug, Clone, Default)]
struct Merged {
    /// Per block row: first merged sub-matrix.
    brow_ptr: Vec<u32>,
    /// Per sub-matrix: first kept row / input offset / weight.
    row_ptr: Vec<u32>,
    col_ptr: Vec<u32>,
    w_ptr: Vec<usize>,
    /// Kept rows (absolute output rows).
    rows: Vec<u32>,
    /// Input offset of each kept column.
    offsets: Vec<u32>,
    /// Weights, column-major per sub-matrix (each column's kept rows contiguous).
    weights: Vec<f32>,
}

impl Merged {
    fn new(m: &BcrCompact, layout: &InputLayout, out_per_group: usize) -> Result<Self> {
        let mut out = Merged {
            brow_ptr: vec![0],
            row_ptr: vec![0],
            col_ptr: vec![0],
            w_ptr: vec![0],
            ..Merged::default()
        };
        for brow in 0..m.block_ptr.len() - 1 {
            let r0 = m.block_row_start[brow] as usize;
            let group = r0 / out_per_group;
            // Blocks by kept-row set, in order of first appearance (deterministic).
            let mut sets: Vec<(&[u8], Vec<usize>)> = Vec::new();
            for b in m.block_ptr[brow] as usize..m.block_ptr[brow + 1] as usize {
                let kr = m.block(b).0;
                match sets.iter_mut().find(|(k, _)| *k == kr) {
                    Some((_, blocks)) => blocks.push(b),
                    None => sets.push((kr, vec![b])),
                }
            }
            for (kr, blocks) in sets {
                out.rows.extend(kr.iter().map(|&r| (r0 + r as usize) as u32));
                for b in blocks {
                    let c0 = m.block_col0[b] as usize;
                    let (_, kc, w) = m.block(b);
                    for &c in kc {
                        let off = layout.col_offset(group, c0 + c as usize);
                        out.offsets.push(u32::try_from(off).map_err(|_| {
                            KernelError::InvalidShape {
                                reason: "input too large for 32-bit offsets".into(),
                            }
                        })?);
                    }
                    out.weights.extend_from_slice(w);
                }
                out.row_ptr.push(out.rows.len() as u32);
                out.col_ptr.push(out.offsets.len() as u32);
                out.w_ptr.push(out.weights.len());
            }
            out.brow_ptr.push(out.row_ptr.len() as u32 - 1);
        }
        Ok(out)
    }

    /// Sub-matrix `g`: kept rows, input offsets, weights.
    fn sub(&self, g: usize) -> (&[u32], &[u32], &[f32]) {
        (
            &self.rows[self.row_ptr[g] as usize..self.row_ptr[g + 1] as usize],
            &self.offsets[self.col_ptr[g] as usize..self.col_ptr[g + 1] as usize],
            &self.weights[self.w_ptr[g]..self.w_ptr[g + 1]],
        )
    }
}

/// Deals block rows (heaviest first, `order`) to `threads` threads, each to the least loaded.
fn lpt(m: &BcrCompact, threads: usize) -> Vec<Vec<u32>> {
    let mut load = vec![0usize; threads];
    let mut mine: Vec<Vec<u32>> = vec![Vec::new(); threads];
    for &b in &m.order {
        let w = m.value_ptr[m.block_ptr[b as usize + 1] as usize]
            - m.value_ptr[m.block_ptr[b as usize] as usize]
            + 8;
        let t = (0..threads).min_by_key(|&t| load[t]).unwrap_or(0);
        load[t] += w;
        mine[t].push(b);
    }
    mine
}

impl BcrConv {
    /// Binds `m` to `shape` (rows = output channels, cols = in_per_group x kernel volume).
    pub fn new(m: BcrCompact, shape: ConvShape) -> Result<Self> {
        if m.rows != shape.out_channels || m.cols != shape.cols() {
            return Err(KernelError::InvalidShape {
                reason: format!(
                    "a {}x{} weight does not fit {} outputs x {} columns",
                    m.rows,
                    m.cols,
                    shape.out_channels,
                    shape.cols()
                ),
            });
        }
        let layout = shape.layout();
        let merged = Merged::new(&m, &layout, shape.out_per_group())?;
        let tiles = [
            crate::rowgroup::tiles(layout.runs(), 8 * BCR_V),
            crate::rowgroup::tiles(layout.runs(), 16 * BCR_V),
        ];
        let schedule = (1..=SCHEDULED_THREADS).map(|t| lpt(&m, t)).collect();
        let all_rows = (0..m.block_ptr.len() as u32 - 1).collect();
        Ok(BcrConv { m, shape, layout, merged, tiles, schedule, all_rows })
    }

    /// `Y[rows, n] = W X[cols, n]` as a 1x1 convolution over `n` positions.
    pub fn gemm(m: BcrCompact, n: usize) -> Result<Self> {
        let shape = ConvShape::conv2d(m.cols, m.rows, [1, n], [1, 1], 1, 0)?;
        Self::new(m, shape)
    }

    /// The matrix.
    pub fn matrix(&self) -> &BcrCompact {
        &self.m
    }

    /// Scratch for [`BcrConv::run`].
    pub fn scratch(&self) -> ConvScratch {
        ConvScratch::with_lengths(crate::rowgroup::scratch_len(&self.layout, self.m.rows))
    }

    /// Runs the convolution on one sample (same buffers as [`crate::RowGroupConv::run`]).
    pub fn run(
        &self,
        isa: Isa,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut ConvScratch,
        threads: usize,
    ) -> Result<()> {
        let s = &self.shape;
        check_len("input", s.in_channels * s.input_plane(), input.len())?;
        check_len("output", s.out_channels * s.output_positions(), output.len())?;
        let (packed, flat) = scratch.parts();
        let (pl, fl) = crate::rowgroup::scratch_len(&self.layout, self.m.rows);
        check_len("packed-input scratch", pl, packed.len())?;
        check_len("flat-output scratch", fl, flat.len())?;
        self.layout.pack(input, packed);
        let x = if self.layout.in_place() { input.as_ptr() } else { packed.as_ptr() };
        let (y, ystride) = if self.layout.flat_is_output() {
            (SendPtr(output.as_mut_ptr()), s.output_positions())
        } else {
            (SendPtr(flat.as_mut_ptr()), crate::rowgroup::flat_stride(&self.layout))
        };
        let tiles = &self.tiles[usize::from(isa.lanes() == 16)];
        let job = BcrJob { c: self, x, y, ystride };
        let threads = threads.max(1);
        if threads == 1 || tiles.len() >= 4 * threads {
            let chunk = tiles.len().div_ceil(threads);
            run_parallel(threads, |t| {
                let lo = (t * chunk).min(tiles.len());
                let hi = ((t + 1) * chunk).min(tiles.len());
                bcr_tiles(isa, &job, &tiles[lo..hi], &self.all_rows);
            });
        } else if threads <= SCHEDULED_THREADS {
            // Few positions: every thread runs all tiles on its scheduled block rows.
            let mine = &self.schedule[threads - 1];
            run_parallel(threads, |t| bcr_tiles(isa, &job, tiles, &mine[t]));
        } else {
            let threads = threads.min(crate::threads::MAX_THREADS);
            let m = &self.m;
            let bounds = crate::threads::split_by_cost(self.all_rows.len(), threads, |b| {
                m.value_ptr[m.block_ptr[b + 1] as usize] - m.value_ptr[m.block_ptr[b] as usize] + 8
            });
            run_parallel(threads, |t| {
                bcr_tiles(isa, &job, tiles, &self.all_rows[bounds[t]..bounds[t + 1]])
            });
        }
        if !self.layout.flat_is_output() {
            let opos = s.output_positions();
            for r in 0..s.out_channels {
                self.layout.compact(
                    &flat[r * ystride..(r + 1) * ystride],
                    &mut output[r * opos..(r + 1) * opos],
                );
            }
        }
        Ok(())
    }

    /// `y = W x` for one vector.
    pub fn gemv(&self, isa: Isa, x: &[f32], y: &mut [f32], threads: usize) -> Result<()> {
        check_len("x", self.m.cols, x.len())?;
        check_len("y", self.m.rows, y.len())?;
        let threads = threads.clamp(1, SCHEDULED_THREADS);
        let mine = &self.schedule[threads - 1];
        let yp = SendPtr(y.as_mut_ptr());
        run_parallel(threads, |t| bcr_gemv(isa, &self.m, x, yp, &mine[t]));
        Ok(())
    }
}

struct BcrJob<'a> {
    c: &'a BcrConv,
    x: *const f32,
    y: SendPtr,
    ystride: usize,
}

// SAFETY: `x` is only read; `y` is written at disjoint (row, position) regions per thread.
unsafe impl Sync for BcrJob<'_> {}

simd_entry! {
    fn bcr_tiles(job: &BcrJob<'_>, tiles: &[(usize, usize)], block_rows: &[u32]) => bcr_tiles_generic;
}

#[inline(always)]
fn bcr_tiles_generic<S: Simd>(job: &BcrJob<'_>, tiles: &[(usize, usize)], block_rows: &[u32]) {
    let m = &job.c.m;
    let merged = &job.c.merged;
    let width = BCR_V * S::LANES;
    for &(p0, n) in tiles {
        let full = n == width;
        for &brow in block_rows {
            let brow = brow as usize;
            let (r0, r1) = (m.block_row_start[brow] as usize, m.block_row_start[brow + 1] as usize);
            // SAFETY: rows r0..r1 and positions p0..p0+n are inside the output (stride ystride).
            unsafe {
                for r in r0..r1 {
                    let yp = job.y.0.add(r * job.ystride + p0);
                    std::ptr::write_bytes(yp, 0, n);
                }
            }
            for g in merged.brow_ptr[brow] as usize..merged.brow_ptr[brow + 1] as usize {
                let (kr, offs, w) = merged.sub(g);
                let mut i = 0;
                while i < kr.len() {
                    let left = kr.len() - i;
                    // RT x BCR_V accumulators: up to 6 x 4 on AVX-512 (24 of 32 registers, so a
                    // sub-matrix of up to 6 kept rows gathers its columns once), 2 x 4 on AVX2.
                    let rt = if S::LANES == 16 { left.min(6) } else { left.min(2) };
                    // SAFETY: offsets stay inside the input for valid positions (layout); the
                    // kept rows are rows of this block row; weights hold one column of stride
                    // kr per offset.
                    unsafe {
                        let rows: [usize; 8] =
                            std::array::from_fn(|k| kr[i + k.min(rt - 1)] as usize);
                        let wp = w.as_ptr().add(i);
                        let xp = job.x.add(p0);
                        let y = job.y.0.add(p0);
                        macro_rules! call {
                            ($($r:literal)*) => {
                                match (rt, full) {
                                    $(
                                        ($r, true) => rmw::<S, $r, true>(offs, wp, kr.len(), xp, y, job.ystride, &rows, n),
                                        ($r, false) => rmw::<S, $r, false>(offs, wp, kr.len(), xp, y, job.ystride, &rows, n),
                                    )*
                                    _ => {}
                                }
                            };
                        }
                        call!(1 2 3 4 5 6);
                    }
                    i += rt;
                }
            }
        }
    }
}

/// Accumulates `RT` kept rows of one block over its kept columns and adds into the output.
///
/// # Safety
/// As the row-group micro-kernel; `rows[..RT]` are output rows, `w` holds `offs.len()` columns
/// of stride `wstride >= RT`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rmw<S: Simd, const RT: usize, const FULL: bool>(
    offs: &[u32],
    w: *const f32,
    wstride: usize,
    x: *const f32,
    y: *mut f32,
    ystride: usize,
    rows: &[usize; 8],
    n: usize,
) {
    let l = S::LANES;
    let mut acc = [[S::zero(); BCR_V]; RT];
    let mut wp = w;
    for &off in offs {
        let xp = x.add(off as usize);
        let mut xv = [S::zero(); BCR_V];
        for (v, xvv) in xv.iter_mut().enumerate() {
            let rem = n.saturating_sub(v * l);
            *xvv = if FULL || rem >= l {
                S::load(xp.add(v * l))
            } else if rem > 0 {
                S::load_partial(xp.add(v * l), rem)
            } else {
                S::zero()
            };
        }
        for (rr, a) in acc.iter_mut().enumerate() {
            let wv = S::splat(*wp.add(rr));
            for (av, &xx) in a.iter_mut().zip(&xv) {
                *av = S::fma(wv, xx, *av);
            }
        }
        // Wrapping: after the last entry this points past the weights and is never read.
        wp = wp.wrapping_add(wstride);
    }
    for (rr, a) in acc.iter().enumerate() {
        let yp = y.add(rows[rr] * ystride);
        for (v, &av) in a.iter().enumerate() {
            let rem = n.saturating_sub(v * l);
            if FULL || rem >= l {
                S::store(yp.add(v * l), S::add(S::load(yp.add(v * l)), av));
            } else if rem > 0 {
                S::store_partial(
                    yp.add(v * l),
                    S::add(S::load_partial(yp.add(v * l), rem), av),
                    rem,
                );
            }
        }
    }
}

simd_entry! {
    fn bcr_gemv(m: &BcrCompact, x: &[f32], y: SendPtr, block_rows: &[u32]) => bcr_gemv_generic;
}

#[inline(always)]
fn bcr_gemv_generic<S: Simd>(m: &BcrCompact, x: &[f32], y: SendPtr, block_rows: &[u32]) {
    let mut local = [0.0f32; 256];
    for &brow in block_rows {
        let brow = brow as usize;
        let (r0, r1) = (m.block_row_start[brow] as usize, m.block_row_start[brow + 1] as usize);
        let acc = &mut local[..r1 - r0];
        acc.fill(0.0);
        for b in m.block_ptr[brow] as usize..m.block_ptr[brow + 1] as usize {
            let c0 = m.block_col0[b] as usize;
            let (kr, kc, w) = m.block(b);
            let nr = kr.len();
            // Sub-matrix times gathered x, vectorized over the kept rows.
            let mut part = [0.0f32; 256];
            for (j, &c) in kc.iter().enumerate() {
                let xv = x[c0 + c as usize];
                let col = &w[j * nr..(j + 1) * nr];
                let mut i = 0;
                // SAFETY: i + LANES <= nr keeps the loads and stores inside `col` and `part`.
                unsafe {
                    while i + S::LANES <= nr {
                        let v = S::fma(
                            S::load(col.as_ptr().add(i)),
                            S::splat(xv),
                            S::load(part.as_ptr().add(i)),
                        );
                        S::store(part.as_mut_ptr().add(i), v);
                        i += S::LANES;
                    }
                }
                for k in i..nr {
                    part[k] += col[k] * xv;
                }
            }
            for (i, &r) in kr.iter().enumerate() {
                acc[r as usize] += part[i];
            }
        }
        for (i, &v) in acc.iter().enumerate() {
            // SAFETY: rows r0..r1 belong to this thread's block rows.
            unsafe { *y.0.add(r0 + i) = v };
        }
    }
}
