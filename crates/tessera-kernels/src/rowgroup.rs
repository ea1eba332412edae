//! The row-group engine: the execution format and kernels behind block-punched, BSR, KGS,
//! CSR, filter/channel/column-pruned and dense layers.
//!
//! A [`RowGroupMatrix`] splits the GEMM rows into groups of consecutive rows that share one
//! list of kept columns ("entries"); each entry stores the group's `R` weights contiguously.
//! Block-punched blocks (8 filters sharing kernel positions), KGS groups, BSR block-rows and
//! whole dense rows all have exactly this shape; CSR is the special case `R = 1`.
//!
//! The kernel computes an output tile of `RT` rows x `3 * LANES` positions in registers: for
//! every entry it loads three input vectors (contiguous, thanks to the packed conv layout of
//! [`crate::conv`]) and issues `3 * RT` FMAs with the entry's broadcast weights. Every input
//! vector is reused by all `RT` filters of the group: the register-level load reuse that makes
//! structured sparsity run at dense speed, which is the seeds' central claim. Work is split
//! between threads by output positions (every thread runs every row group on its own
//! positions, so the split is balanced whatever the sparsity of each group), or, when there are
//! too few positions, by row groups balanced on their stored weights.
//!
//! Groups of several rows walk tiles first (every group on a tile, then the next tile: the
//! tile's input stays in L1). One-row groups (CSR rows, depthwise filters) walk a group's tiles
//! before the next group's, in chunks of tiles covering 128 KiB of input when the input is
//! larger than L2 and its channels feed several rows (`tiles_per_chunk`). The epilogue (bias,
//! fused residual, ReLU/ReLU6) is applied in registers before the store (`store`), through
//! the tile plans of `tile_plan`.
//!
//! Small maps may be read through a gathered copy of the input (module `gather`,
//! [`RowGroupConv::with_gathered_input`]; `new` gathers from 64 output channels in groups of
//! several rows where that saves a third of the AVX-512 vectors): a 4x4 map is then one
//! vector per tile instead of two. Block-punched 8x4 at 8x, 1 thread (`cargo run -p
//! tessera-kernels --example structured_conv_min`, min of runs, us): 256->512@4x4 54 -> 46,
//! 512@4x4 100 -> 94; dense rows 365 -> 247 and 750 -> 532.
//!
//! Maps of at most 4 positions (a 2x2 map is 5 flat positions: one vector a quarter used,
//! one FMA per row per entry) read the quad form ([`RowGroupInput::Quad`]: each value 4
//! times), where a vector is 4 positions x 4 rows and an entry of 8 rows costs 2 FMAs, with
//! each half's 4 weights broadcast from one load (`micro_quad`). Block-punched 8x4 at 8x,
//! 512@2x2, 1 thread (`cargo run --release -p tessera-kernels --example bcr_small_map --
//! 512 2 512 3 3 direct|quad`, min of runs, us, pack and gather included): 87.0 -> 49.7
//! (256@2x2 22.9 -> 15.1; dense rows in `structured_conv_min` 648 -> 375); on 2 threads
//! not reliably faster (46-53 -> 43-68 in seven alternating runs each, once 234: the gather
//! is a parallel pass of its own and each thread reads what the other gathered), so
//! tessera-codegen binds the direct input there. In VGG-11's plan at 8x its two 2x2 layers went
//! from 49% / 53% to 67% / 79% of their FLOP reduction (`cargo xtask bench models --only
//! vgg11 --rates 8 --schemes block-punched:8x4`, 1 thread). What is left is about 3.6 cycles
//! an entry (two FMAs, an input vector and two 4-float broadcasts), the gather (7.7 cycles a
//! column, mostly its stores' misses) and, outside plans, the pack.

#![allow(unsafe_op_in_unsafe_fn)] // micro-kernels are unsafe fns made of pointer arithmetic

mod store;
mod tile_plan;

pub use store::{Clamp, Epilogue};
pub(crate) use store::{Out, clamp_as, store_row, store_row_fused};
use store::{RowEpilogue, store_row_residual};
use store::{store_pair_rows, store_whole};
pub(crate) use tile_plan::{Seg, Split, TilePlan};

use tessera_sparsity::Mask;

use crate::conv::{ConvShape, InputLayout, OutputTarget};
use crate::error::{KernelError, Result};
use crate::gather::{Gather, GatherForm};
use crate::isa::Isa;
use crate::simd::{Simd, simd_entry};
use crate::threads::{SendPtr, run_parallel, split_by_cost};

/// Rows split into groups that share their kept columns; see the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct RowGroupMatrix {
    rows: usize,
    cols: usize,
    /// First row of each group, plus `rows` at the end.
    group_start: Vec<u32>,
    /// First entry of each group, plus the entry count at the end.
    entry_ptr: Vec<u32>,
    /// GEMM column of each entry.
    col: Vec<u32>,
    /// First weight of each group, plus the weight count at the end.
    weight_ptr: Vec<usize>,
    /// Entry-major weights: group g's entry e holds rows `group_start[g]..` contiguously.
    weights: Vec<f32>,
}

impl RowGroupMatrix {
    /// Builds the matrix from a dense row-major `rows x cols` weight, grouping rows as
    /// `group_rows` (consecutive, in order, covering all rows). A group's entries are the
    /// columns where any of its rows is kept by `mask` (every non-zero when `mask` is `None`);
    /// rows of a group that do not keep an entry store a zero there.
    pub fn from_dense(
        rows: usize,
        cols: usize,
        weights: &[f32],
        mask: Option<&Mask>,
        group_rows: &[usize],
    ) -> Result<Self> {
        if weights.len() != rows * cols {
            return Err(KernelError::BufferLength {
                what: "weights",
                expected: rows * cols,
                found: weights.len(),
            });
        }
        if let Some(m) = mask
            && m.len() != rows * cols
        {
            return Err(KernelError::BufferLength {
                what: "mask",
                expected: rows * cols,
                found: m.len(),
            });
        }
        if group_rows.iter().sum::<usize>() != rows || group_rows.contains(&0) {
            return Err(KernelError::InvalidShape {
                reason: format!(
                    "row groups {group_rows:?} must be non-empty and cover {rows} rows"
                ),
            });
        }
        let kept = |i: usize| match mask {
            Some(m) => m.get(i),
            None => weights[i] != 0.0,
        };
        let mut m = RowGroupMatrix {
            rows,
            cols,
            group_start: vec![0],
            entry_ptr: vec![0],
            col: Vec::new(),
            weight_ptr: vec![0],
            weights: Vec::new(),
        };
        let mut r0 = 0;
        for &len in group_rows {
            for c in 0..cols {
                if (r0..r0 + len).any(|r| kept(r * cols + c)) {
                    m.col.push(c as u32);
                    m.weights.extend(
                        (r0..r0 + len)
                            .map(|r| if kept(r * cols + c) { weights[r * cols + c] } else { 0.0 }),
                    );
                }
            }
            r0 += len;
            m.group_start.push(r0 as u32);
            m.entry_ptr.push(m.col.len() as u32);
            m.weight_ptr.push(m.weights.len());
        }
        Ok(m)
    }

    /// Assembles a matrix from its arrays (formats build their execution form with this).
    pub(crate) fn from_parts(
        rows: usize,
        cols: usize,
        group_start: Vec<u32>,
        entry_ptr: Vec<u32>,
        col: Vec<u32>,
        weight_ptr: Vec<usize>,
        weights: Vec<f32>,
    ) -> Self {
        debug_assert_eq!(group_start.len(), entry_ptr.len());
        debug_assert_eq!(*weight_ptr.last().unwrap_or(&0), weights.len());
        RowGroupMatrix { rows, cols, group_start, entry_ptr, col, weight_ptr, weights }
    }

    /// Groups of `size` rows that never cross a boundary of `rows_per_segment` (a conv's output
    /// channels per group); the last group of a segment may be shorter.
    pub fn uniform_groups(rows: usize, rows_per_segment: usize, size: usize) -> Vec<usize> {
        let seg = rows_per_segment.max(1);
        let mut out = Vec::new();
        for s in 0..rows.div_ceil(seg) {
            let seg_rows = seg.min(rows - s * seg);
            let mut r = 0;
            while r < seg_rows {
                out.push(size.min(seg_rows - r));
                r += size;
            }
        }
        out
    }

    /// GEMM rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// GEMM columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of row groups.
    pub fn groups(&self) -> usize {
        self.group_start.len() - 1
    }

    /// Stored weights (kept weights plus the zeros of rows that lack a group entry).
    pub fn stored(&self) -> usize {
        self.weights.len()
    }

    /// Bytes of weights and of index data (group starts, entry pointers, columns).
    pub fn bytes(&self) -> crate::formats::ByteSize {
        crate::formats::ByteSize {
            values: 4 * self.weights.len(),
            index: 4 * (self.group_start.len() + self.entry_ptr.len() + self.col.len())
                + 8 * self.weight_ptr.len(),
        }
    }

    /// The dense row-major weight.
    pub fn decode(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        for g in 0..self.groups() {
            let (r0, r1) = (self.group_start[g] as usize, self.group_start[g + 1] as usize);
            let r = r1 - r0;
            for (k, e) in (self.entry_ptr[g] as usize..self.entry_ptr[g + 1] as usize).enumerate() {
                let c = self.col[e] as usize;
                for i in 0..r {
                    out[(r0 + i) * self.cols + c] = self.weights[self.weight_ptr[g] + k * r + i];
                }
            }
        }
        out
    }

    /// Multiply-accumulates per output position (stored weights, zeros included).
    pub fn macs_per_position(&self) -> usize {
        self.weights.len()
    }
}

/// What a [`RowGroupConv`]'s tiles read (see [`RowGroupConv::with_input`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowGroupInput {
    /// The packed input itself.
    Direct,
    /// A gathered copy: one compact row per GEMM column (module `gather`), so that tiles
    /// cover the output map without the flat grid's padding columns.
    Gathered,
    /// A gathered copy holding each value 4 times, for at most 4 output positions: a vector
    /// is 4 positions x 4 rows, so an entry costs one FMA per 4 rows instead of one per row
    /// (see `micro_quad`).
    Quad,
}

/// A [`RowGroupMatrix`] bound to a convolution: entry offsets into the packed input, and for
/// each vector width the tiles of output positions with their store plans.
#[derive(Debug, Clone)]
pub struct RowGroupConv {
    matrix: RowGroupMatrix,
    shape: ConvShape,
    layout: InputLayout,
    offsets: Vec<u32>,
    /// The largest of `offsets` (how far past a position an entry reads).
    max_offset: usize,
    /// Where outputs go (NCDHW unless retargeted).
    target: OutputTarget,
    /// Tile plans for 8 and 16 lanes.
    plans: [TilePlan; 2],
    /// Tiles per chunk of each plan (see [`tiles_per_chunk`]).
    chunk_tiles: [usize; 2],
    /// Where a fused residual is read, when not laid out as the output (see
    /// [`RowGroupConv::set_residual_layout`]).
    residual: Option<OutputTarget>,
    /// Tiles read a gathered copy of the input (see [`RowGroupConv::with_gathered_input`]).
    gather: Option<Gather>,
    /// For 1x1 layers of several-row groups: the distinct entry offsets (input channels any
    /// group reads), dealt out to the groups in order (`prefetch[prefetch_ptr[g] ..
    /// prefetch_ptr[g + 1]]`), each prefetching its share of the next tile's lines (see
    /// [`spread_prefetches`]).
    prefetch: Vec<u32>,
    prefetch_ptr: Vec<u32>,
}

/// Every entry's offset into the input as `layout` (or the gathered copy) lays it out, group
/// by group; an error for a group crossing a channel-group boundary or an offset past 32 bits.
fn entry_offsets(
    matrix: &RowGroupMatrix,
    opg: usize,
    layout: &InputLayout,
    gather: Option<&Gather>,
) -> Result<Vec<u32>> {
    let mut offsets = Vec::with_capacity(matrix.col.len());
    for g in 0..matrix.groups() {
        let (r0, r1) = (matrix.group_start[g] as usize, matrix.group_start[g + 1] as usize);
        if r0 / opg != (r1 - 1) / opg {
            return Err(KernelError::InvalidShape {
                reason: format!(
                    "row group {r0}..{r1} crosses a channel-group boundary ({opg} rows per group)"
                ),
            });
        }
        for e in matrix.entry_ptr[g]..matrix.entry_ptr[g + 1] {
            let col = matrix.col[e as usize] as usize;
            let off = match gather {
                Some(gather) => col * gather.stride,
                None => layout.col_offset(r0 / opg, col),
            };
            offsets.push(u32::try_from(off).map_err(|_| KernelError::InvalidShape {
                reason: "input too large for 32-bit offsets".into(),
            })?);
        }
    }
    Ok(offsets)
}

/// The distinct offsets of `offsets` dealt to `matrix`'s groups in proportion to their
/// entries (a group's compute time), as [`RowGroupConv`] keeps them for 1x1 layers of
/// several-row groups whose entries read each channel [`SPREAD_MIN_READS`] times or more;
/// empty otherwise (each group then prefetches its own entries' lines).
///
/// Prefetching the next tile's lines once per entry issues each line as many times as groups
/// read its channel: 16 times on GEMM 1024^3 at 8x (block 8x4: 128 groups of 8 rows, 128 kept
/// columns each), where the prefetch loop took a quarter of the samples. Dealt out, every
/// line is prefetched once per tile, spread over the tile's groups: 2.73-2.86 -> 2.22-2.32 ms
/// (min of runs, alternating builds, AVX-512; 1,008 positions 2.60-2.64 -> 1.78-1.88). On
/// conv1x1 256->64@56x56 at 8x (8 groups, 1.5 reads per channel) it ran 158-167 -> 190-208
/// us, so each group keeps prefetching its own lines there. (Issuing each entry's prefetch
/// inside the entry loop, between its FMAs, instead of in one burst before the group ran that
/// layer 155-166 -> 170-193 us.)
fn spread_prefetches(
    matrix: &RowGroupMatrix,
    shape: &ConvShape,
    offsets: &[u32],
) -> (Vec<u32>, Vec<u32>) {
    if shape.kernel_volume() != 1 || matrix.groups() == matrix.rows {
        return (Vec::new(), Vec::new());
    }
    let mut lines = offsets.to_vec();
    lines.sort_unstable();
    lines.dedup();
    if offsets.len() < SPREAD_MIN_READS * lines.len() {
        return (Vec::new(), Vec::new());
    }
    let entries = offsets.len().max(1);
    let ptr = (0..=matrix.groups())
        .map(|g| (matrix.entry_ptr[g] as usize * lines.len() / entries) as u32)
        .collect();
    (lines, ptr)
}

/// Reads per distinct input channel from which a 1x1 layer's prefetches are dealt out (see
/// [`spread_prefetches`]).
const SPREAD_MIN_READS: usize = 4;

/// Scratch for [`RowGroupConv::run`]: the packed input and the flat output grid, each
/// starting on a 64-byte boundary (kernels read-modify-write whole vectors of the output
/// buffers, and a vector straddling two cache lines costs two accesses: aligning FKW's
/// partial-sum buffer alone measured 1.15-1.3x faster).
#[derive(Debug, Clone, Default)]
pub struct ConvScratch {
    packed: Vec<f32>,
    flat: Vec<f32>,
    lens: (usize, usize),
}

/// Floats of slack per buffer for starting it on a 64-byte boundary.
const ALIGN_SLACK: usize = 16;

/// `len` floats of `buf` from its first 64-byte boundary (from its start when there is no
/// room: the kernels' length checks then report the short buffer).
fn aligned(buf: &mut [f32], len: usize) -> &mut [f32] {
    let a = buf.as_ptr().align_offset(64);
    let skip = if a <= ALIGN_SLACK && buf.len() >= len + a { a } else { 0 };
    let end = (skip + len).min(buf.len());
    &mut buf[skip..end]
}

impl ConvScratch {
    /// Scratch sized for `conv`; reuse it across calls (the kernels never allocate).
    pub fn for_conv(conv: &RowGroupConv) -> Self {
        Self::with_lengths(conv.scratch_len())
    }

    /// Scratch of `(packed input, flat output)` floats.
    pub(crate) fn with_lengths((packed, flat): (usize, usize)) -> Self {
        ConvScratch {
            packed: vec![0.0; packed + ALIGN_SLACK],
            flat: vec![0.0; flat + ALIGN_SLACK],
            lens: (packed, flat),
        }
    }

    /// The packed-input and flat-output buffers, 64-byte aligned.
    pub(crate) fn parts(&mut self) -> (&mut [f32], &mut [f32]) {
        (aligned(&mut self.packed, self.lens.0), aligned(&mut self.flat, self.lens.1))
    }
}

impl RowGroupConv {
    /// Binds `matrix` (rows = output channels, cols = in_per_group x kernel volume) to `shape`.
    /// Row groups must not cross channel-group boundaries.
    pub fn new(matrix: RowGroupMatrix, shape: ConvShape) -> Result<Self> {
        let input = choose_input(&matrix, &shape);
        Self::with_input(matrix, shape, input)
    }

    /// [`RowGroupConv::new`], its tiles reading a gathered copy of the input (`gather`:
    /// [`RowGroupInput::Gathered`]) or the packed input itself.
    pub fn with_gathered_input(
        matrix: RowGroupMatrix,
        shape: ConvShape,
        gather: bool,
    ) -> Result<Self> {
        let input = if gather { RowGroupInput::Gathered } else { RowGroupInput::Direct };
        Self::with_input(matrix, shape, input)
    }

    /// [`RowGroupConv::new`] with its tiles reading `input`. [`RowGroupInput::Gathered`] and
    /// [`RowGroupInput::Quad`] need a 2D convolution with one channel group; `Quad` also at
    /// most 4 output positions and row groups of a multiple of 4 rows. `new` picks `Quad` for
    /// such maps from 64 output channels, `Gathered` from 64 output channels in groups of
    /// several rows where that saves a third of the AVX-512 vectors (a 4x4 map: one vector
    /// per tile instead of two), else `Direct`.
    pub fn with_input(
        matrix: RowGroupMatrix,
        shape: ConvShape,
        input: RowGroupInput,
    ) -> Result<Self> {
        if matrix.rows != shape.out_channels || matrix.cols != shape.cols() {
            return Err(KernelError::InvalidShape {
                reason: format!(
                    "a {}x{} weight does not fit {} output channels x {} columns",
                    matrix.rows,
                    matrix.cols,
                    shape.out_channels,
                    shape.cols()
                ),
            });
        }
        let opg = shape.out_per_group();
        let layout = shape.layout();
        let gather = match input {
            RowGroupInput::Direct => None,
            RowGroupInput::Gathered | RowGroupInput::Quad => {
                let form = if input == RowGroupInput::Quad {
                    GatherForm::QuadRepeated
                } else {
                    GatherForm::Compact
                };
                Some(Gather::new(&shape, &layout, form, "row-group")?)
            }
        };
        if input == RowGroupInput::Quad
            && let Some(g) = (0..matrix.groups()).find(|&g| !quad_rows(&matrix, g))
        {
            let (r0, r1) = (matrix.group_start[g], matrix.group_start[g + 1]);
            return Err(KernelError::InvalidShape {
                reason: format!(
                    "the quad row-group kernel takes groups of a multiple of 4 rows, not rows {r0}..{r1}"
                ),
            });
        }
        let offsets = entry_offsets(&matrix, opg, &layout, gather.as_ref())?;
        let single = matrix.groups() == matrix.rows;
        let target = OutputTarget::dense(shape.output());
        let plans = row_plans(gather.as_ref().map_or(&layout, |g| &g.layout), single, &target);
        let positions = shape.output_positions();
        if input == RowGroupInput::Quad && plans.iter().any(|p| p.tiles != [(0, positions)]) {
            // `micro_quad` computes the whole map as one tile from position 0.
            return Err(KernelError::InvalidShape {
                reason: format!(
                    "the quad row-group kernel needs one tile of {positions} positions"
                ),
            });
        }
        let max_offset = offsets.iter().max().map_or(0, |&o| o as usize);
        let chunk_tiles = plans.each_ref().map(|p| tiles_per_chunk(&matrix, &shape, &layout, p));
        let (prefetch, prefetch_ptr) = spread_prefetches(&matrix, &shape, &offsets);
        Ok(RowGroupConv {
            matrix,
            shape,
            layout,
            offsets,
            max_offset,
            target,
            plans,
            chunk_tiles,
            residual: None,
            gather,
            prefetch,
            prefetch_ptr,
        })
    }

    /// Reads its input laid out as `layout` from now on: another layout of this
    /// convolution's input, e.g. [`InputLayout::phase_view`] (a 1x1 stride-2 shortcut
    /// reading the phase plane its block's producer stored), run by
    /// [`RowGroupConv::run_prepacked`]. The output target and residual layout are kept. An
    /// error (nothing changed) for a gathered input, a layout of another convolution, or one
    /// whose tiles cannot address the residual.
    pub fn set_input_layout(&mut self, layout: InputLayout) -> Result<()> {
        if self.gather.is_some() || layout.shape() != &self.shape {
            return Err(KernelError::InvalidShape {
                reason: "only a direct row-group convolution takes another layout of its input"
                    .into(),
            });
        }
        let offsets = entry_offsets(&self.matrix, self.shape.out_per_group(), &layout, None)?;
        let single = self.matrix.groups() == self.matrix.rows;
        let mut plans = row_plans(&layout, single, &self.target);
        if let Some(residual) = &self.residual {
            address_residual(&mut plans, &layout, residual)?;
        }
        self.chunk_tiles =
            plans.each_ref().map(|p| tiles_per_chunk(&self.matrix, &self.shape, &layout, p));
        (self.prefetch, self.prefetch_ptr) = spread_prefetches(&self.matrix, &self.shape, &offsets);
        self.max_offset = offsets.iter().max().map_or(0, |&o| o as usize);
        self.offsets = offsets;
        self.plans = plans;
        self.layout = layout;
        Ok(())
    }

    /// Whether tiles read a gathered copy of the input ([`RowGroupInput::Gathered`] or
    /// [`RowGroupInput::Quad`]).
    pub fn gathered(&self) -> bool {
        self.gather.is_some()
    }

    /// What the tiles read.
    pub fn input(&self) -> RowGroupInput {
        match &self.gather {
            None => RowGroupInput::Direct,
            Some(g) if g.quad => RowGroupInput::Quad,
            Some(_) => RowGroupInput::Gathered,
        }
    }

    /// The layout the tile plans run on: the packed input's, or the gathered map's.
    fn plan_layout(&self) -> &InputLayout {
        self.gather.as_ref().map_or(&self.layout, |g| &g.layout)
    }

    /// Stores outputs to `target` from now on (e.g. the next convolution's
    /// [`InputLayout::as_target`]); its extent must be this convolution's output.
    pub fn set_output_target(&mut self, target: OutputTarget) -> Result<()> {
        check_output_target(&target, self.shape.output())?;
        let single = self.matrix.groups() == self.matrix.rows;
        let mut plans = row_plans(self.plan_layout(), single, &target);
        if let Some(residual) = &self.residual {
            address_residual(&mut plans, self.plan_layout(), residual)?;
        }
        self.plans = plans;
        self.target = target;
        Ok(())
    }

    /// Reads a fused residual ([`Epilogue::residual`]) laid out as `layout` (of this
    /// convolution's output extent; `None`: as the output) from now on, e.g. the padded
    /// input layout that the block input of a residual network was stored in for its first
    /// convolution ([`InputLayout::as_target`]), so that it need not also be stored plainly.
    /// An error (nothing changed) when the extent differs or the tiles cannot address it.
    pub fn set_residual_layout(&mut self, layout: Option<OutputTarget>) -> Result<()> {
        let output = self.shape.output();
        let plan_layout = self.gather.as_ref().map_or(&self.layout, |g| &g.layout);
        let (plans, residual) = (&mut self.plans, &mut self.residual);
        readdress_residual(plans, plan_layout, output, &self.target, residual, layout)
    }

    /// Where a fused residual is read from (the output target unless
    /// [`RowGroupConv::set_residual_layout`] set another).
    pub fn residual_layout(&self) -> &OutputTarget {
        self.residual.as_ref().unwrap_or(&self.target)
    }

    /// Where outputs are stored.
    pub fn output_target(&self) -> &OutputTarget {
        &self.target
    }

    /// Whether every tile is stored as whole vectors at `isa` (plain stores, or a phase-split
    /// target's deinterleaved halves) rather than lane by lane with masked or compress stores.
    /// A phase-split target (the input of a stride-2 consumer) pays only then: its compress
    /// stores cost a producer more than the consumer saves (unstructured CSR rows, 8 vectors a
    /// tile, on ResNet-20's 16@32x32: +4 us stored, -3.7 us read).
    pub fn stores_whole_vectors(&self, isa: Isa) -> bool {
        let plan = &self.plans[usize::from(isa.lanes() == 16)];
        (0..plan.tiles.len()).all(|ti| plan.plain(ti))
    }

    /// The input layout (packed by [`RowGroupConv::run`], or written by a producer through
    /// [`InputLayout::as_target`] for [`RowGroupConv::run_prepacked`]).
    pub fn layout(&self) -> &InputLayout {
        &self.layout
    }

    /// A GEMM `Y[rows, n] = W * X[cols, n]` (X and Y row-major, "feature-major" activations)
    /// as a 1x1 convolution over `n` positions.
    pub fn gemm(matrix: RowGroupMatrix, n: usize) -> Result<Self> {
        let shape = ConvShape::conv2d(matrix.cols, matrix.rows, [1, n], [1, 1], 1, 0)?;
        Self::new(matrix, shape)
    }

    /// The matrix.
    pub fn matrix(&self) -> &RowGroupMatrix {
        &self.matrix
    }

    /// The convolution.
    pub fn shape(&self) -> &ConvShape {
        &self.shape
    }

    /// Floats of (packed input, second buffer) scratch this convolution needs: outputs are
    /// written in place, so the second holds the gathered input, if any.
    pub fn scratch_len(&self) -> (usize, usize) {
        (self.layout.packed_len(), self.gather.as_ref().map_or(0, Gather::len))
    }

    /// Runs the convolution on one sample: `input` is `[in_channels, D, H, W]`, `output`
    /// `[out_channels, Do, Ho, Wo]`. `threads` >= 1 workers of the global rayon pool.
    pub fn run(
        &self,
        isa: Isa,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut ConvScratch,
        threads: usize,
    ) -> Result<()> {
        self.run_fused(isa, input, output, scratch, threads, Epilogue::default())
    }

    /// [`RowGroupConv::run`], applying `epilogue` (bias, activation) to each output value
    /// in registers before it is stored.
    pub fn run_fused(
        &self,
        isa: Isa,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut ConvScratch,
        threads: usize,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        let (x, flat) = pack_input(&self.layout, &self.shape, isa, input, scratch, threads)?;
        check_len("gathered-input scratch", self.scratch_len().1, flat.len())?;
        self.execute_on(isa, x, flat, output, threads, epilogue)
    }

    /// [`RowGroupConv::run_fused`] on an input already in this convolution's packed layout
    /// (`layout().packed_len()` floats, padding zero), as a producer retargeted to
    /// `layout().as_target()` writes it: no packing (`scratch` holds the gathered input, if
    /// any).
    pub fn run_prepacked(
        &self,
        isa: Isa,
        packed: &[f32],
        output: &mut [f32],
        scratch: &mut ConvScratch,
        threads: usize,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        check_prepacked(&self.layout, &self.shape, packed.len())?;
        let (_, gathered) = scratch.parts();
        self.execute_on(isa, packed, gathered, output, threads, epilogue)
    }

    /// Runs the tiles on `x` (the packed input), gathered first into `gathered` if this
    /// convolution gathers.
    fn execute_on(
        &self,
        isa: Isa,
        x: &[f32],
        gathered: &mut [f32],
        output: &mut [f32],
        threads: usize,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        let s = &self.shape;
        check_output(
            &self.target,
            self.residual.as_ref(),
            s.out_channels,
            output.len(),
            &epilogue,
        )?;
        let x = crate::gather::tile_input(self.gather.as_ref(), isa, x, gathered, threads)?;
        let wide = usize::from(isa.lanes() == 16);
        let plan = &self.plans[wide];
        let job = Job {
            m: &self.matrix,
            offsets: &self.offsets,
            x: x.as_ptr(),
            x_len: x.len(),
            max_offset: self.max_offset,
            y: SendPtr(output.as_mut_ptr()),
            ystride: self.target.channel_stride,
            rstride: self.residual_layout().channel_stride,
            plan,
            chunk_tiles: self.chunk_tiles[wide],
            // A 1x1 layer (or GEMM) over an input larger than L2 reads it from L3 or memory
            // once, a line per channel per tile: more streams than the hardware prefetcher
            // follows (block-punched 8x4 8x, 256->64@56x56: 258-262 -> 245-249 us on Zen 3). Where
            // taps of one channel share lines (3x3), the prefetches are redundant and
            // measured 5% slower.
            prefetch_ahead: s.kernel_volume() == 1 && 4 * x.len() > L2_BYTES,
            prefetch: &self.prefetch,
            prefetch_ptr: &self.prefetch_ptr,
            stream_weights: plan.tiles.len() <= 2
                && 4 * self.matrix.weights.len() > STREAMED_WEIGHT_BYTES,
            // (The plain flat stores read the residual alike: not with a layout of its own.)
            direct: self.plan_layout().flat_is_output()
                && self.target == OutputTarget::dense(s.output())
                && self.residual.is_none(),
            quad: self.gather.as_ref().is_some_and(|g| g.quad),
            epilogue,
        };
        execute(isa, &job, threads);
        Ok(())
    }
}

/// The AVX2 and AVX-512 tile plans of a row-group convolution over `layout` storing to
/// `target` (`single`: one row per group).
fn row_plans(layout: &InputLayout, single: bool, target: &OutputTarget) -> [TilePlan; 2] {
    [8, 16]
        .map(|l| TilePlan::with_target(layout, l, tile_vectors(layout, l, single, target), target))
}

/// Whether group `g` of `m` suits the quad kernel: a multiple of 4 rows.
fn quad_rows(m: &RowGroupMatrix, g: usize) -> bool {
    (m.group_start[g + 1] - m.group_start[g]).is_multiple_of(4)
}

/// What [`RowGroupConv::new`] reads: a 2D convolution with one channel group and at least 64
/// output channels in groups of several rows (each gathered value then feeds many rows) is
/// gathered [`RowGroupInput::Quad`] at up to 4 positions when its groups are multiples of 4
/// rows, [`RowGroupInput::Gathered`] when that makes a third fewer AVX-512 vectors per sweep
/// of the map; every other reads its input directly.
fn choose_input(m: &RowGroupMatrix, shape: &ConvShape) -> RowGroupInput {
    if shape.groups != 1 || !shape.is_2d() || shape.out_channels < 64 || m.groups() == m.rows {
        return RowGroupInput::Direct;
    }
    if shape.output_positions() <= 4 && (0..m.groups()).all(|g| quad_rows(m, g)) {
        return RowGroupInput::Quad;
    }
    if gathering_saves_vectors(shape) { RowGroupInput::Gathered } else { RowGroupInput::Direct }
}

/// Whether a gathered map takes a third fewer AVX-512 vectors per sweep than the flat grid.
fn gathering_saves_vectors(shape: &ConvShape) -> bool {
    let target = OutputTarget::dense(shape.output());
    let vectors = |layout: &InputLayout| -> usize {
        let plan =
            TilePlan::with_target(layout, 16, tile_vectors(layout, 16, false, &target), &target);
        plan.tiles.iter().map(|&(_, n)| if n <= 16 { 1 } else { plan.vectors }).sum()
    };
    let [_, oh, ow] = shape.output();
    let map = ConvShape::conv2d(shape.cols(), shape.out_channels, [oh, ow], [1, 1], 1, 0);
    map.is_ok_and(|map| 3 * vectors(&map.layout()) <= 2 * vectors(&shape.layout()))
}

/// `set_residual_layout` of the kernels that store through [`TilePlan`]s (row groups, BCR,
/// FKW): re-addresses `plans`' residual reads for `new` (`None`: the output `target`) and
/// records it in `residual`; nothing changes on an error (another extent than `output`, or
/// tiles that cannot address it).
pub(crate) fn readdress_residual(
    plans: &mut [TilePlan; 2],
    layout: &InputLayout,
    output: [usize; 3],
    target: &OutputTarget,
    residual: &mut Option<OutputTarget>,
    new: Option<OutputTarget>,
) -> Result<()> {
    let wanted = new.unwrap_or(*target);
    check_output_target(&wanted, output)?;
    if new.is_some_and(|n| n.phases.is_some()) {
        return Err(KernelError::InvalidShape {
            reason: "a fused residual cannot be read from a phase-split layout".into(),
        });
    }
    let mut next = plans.clone();
    address_residual(&mut next, layout, &wanted)?;
    *plans = next;
    *residual = new;
    Ok(())
}

/// Points the AVX2 and AVX-512 tile plans' residual reads at `residual` (see
/// [`TilePlan::set_residual`]); an error when a plan's tiles cannot address it.
pub(crate) fn address_residual(
    plans: &mut [TilePlan; 2],
    layout: &InputLayout,
    residual: &OutputTarget,
) -> Result<()> {
    for (plan, lanes) in plans.iter_mut().zip([8, 16]) {
        if !plan.set_residual(layout, lanes, residual) {
            return Err(KernelError::InvalidShape {
                reason: format!(
                    "a residual laid out with rows {} apart and channels {} apart cannot be read by this output's tiles",
                    residual.row_pitch, residual.channel_stride
                ),
            });
        }
    }
    Ok(())
}

/// Refuses an output target that does not hold outputs of extent `output` disjointly: rows
/// must not overlap and every channel's outputs must stay inside its stride, so channels (and
/// threads' rows) write disjoint ranges of a buffer of `target.len(channels)` floats.
pub(crate) fn check_output_target(target: &OutputTarget, output: [usize; 3]) -> Result<()> {
    let [d, h, w] = target.dims;
    let fits = target.dims == output
        && match &target.phases {
            None => {
                target.row_pitch >= w
                    && target.rows >= h
                    && (d * h * w == 0
                        || target.index([d - 1, h - 1, w - 1]) < target.channel_stride)
            }
            // Every phase plane holds its rows and columns, and the planes the channel.
            Some(ps) => {
                let [sy, sx] = ps.stride;
                d == 1
                    && sy >= 1
                    && sx >= 1
                    && (h * w == 0
                        || (h - 1 + ps.pad[0]) / sy < target.rows
                            && (w - 1 + ps.pad[1]) / sx < target.row_pitch)
                    && target.rows * target.row_pitch <= ps.plane_len
                    && target.base + sy * sx * ps.plane_len <= target.channel_stride
            }
        };
    if fits {
        return Ok(());
    }
    Err(KernelError::InvalidShape {
        reason: format!(
            "an output target of {:?} (base {}, rows {}, row pitch {}, channel stride {}) does \
             not hold outputs of {output:?} disjointly",
            target.dims, target.base, target.rows, target.row_pitch, target.channel_stride,
        ),
    })
}

/// The buffer checks of a run storing to `target`: the output holds `target.len(channels)`
/// floats, the bias one value per channel, the residual as many floats as the output.
pub(crate) fn check_output(
    target: &OutputTarget,
    residual: Option<&OutputTarget>,
    channels: usize,
    output: usize,
    epilogue: &Epilogue<'_>,
) -> Result<()> {
    check_len("output", target.len(channels), output)?;
    if let Some(b) = epilogue.bias {
        check_len("bias", channels, b.len())?;
    }
    if let Some(r) = epilogue.residual {
        if residual.is_none() && target.phases.is_some() {
            // Tiles read a residual by lanes in output order; a phase split reorders them.
            return Err(KernelError::InvalidShape {
                reason: "a fused residual laid out as a phase-split output target; give the \
                         kernel a residual layout of its own"
                    .into(),
            });
        }
        match residual {
            // Laid out as the output: as long as the output buffer.
            None => check_len("residual", output, r.len())?,
            // A layout of its own, e.g. a packed input layout, whose buffer has slack past
            // its channels' span.
            Some(layout) if r.len() < layout.len(channels) => {
                let expected = layout.len(channels);
                return Err(KernelError::BufferLength {
                    what: "residual",
                    expected,
                    found: r.len(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Packed inputs of at least this many floats are packed by all of a kernel's threads, each
/// a range of channels, when the layout allows it ([`InputLayout::packs_by_channel`]).
/// Packed by the calling thread alone, the whole copy sat in that core's cache, and the other
/// thread's tiles read all of it from there each call: on 2-core Zen 4, block-punched 8x
/// 128@16x16 took 77 us on 2 threads, 46 us on an input packed once beforehand, 88 us on one
/// thread. One more dispatch costs about a microsecond, so small inputs pack on one thread.
const PARALLEL_PACK_FLOATS: usize = 4096;

/// A kernel's `run`: checks `input` (NCDHW, one sample), packs it into the scratch's first
/// part (`layout.packed_len()` floats) unless the layout reads it in place, and returns the
/// input the tiles read with the scratch's second part (the kernel's own buffer). The packing
/// is shared by `threads` threads where it is large enough ([`PARALLEL_PACK_FLOATS`]).
pub(crate) fn pack_input<'a>(
    layout: &InputLayout,
    shape: &ConvShape,
    isa: Isa,
    input: &'a [f32],
    scratch: &'a mut ConvScratch,
    threads: usize,
) -> Result<(&'a [f32], &'a mut [f32])> {
    check_len("input", shape.in_channels * shape.input_plane(), input.len())?;
    let (packed, rest) = scratch.parts();
    check_len("packed-input scratch", layout.packed_len(), packed.len())?;
    let channels = shape.in_channels;
    let threads = threads.clamp(1, crate::threads::MAX_THREADS).min(channels);
    if threads > 1 && layout.packs_by_channel() && layout.packed_len() >= PARALLEL_PACK_FLOATS {
        let cl = layout.channel_stride();
        let (base, total) = (SendPtr(packed.as_mut_ptr()), packed.len());
        run_parallel(threads, |t| {
            // The whole `SendPtr` (a closure would capture only its `Sync`-less field).
            let base: SendPtr = base;
            let (c0, c1) = (t * channels / threads, (t + 1) * channels / threads);
            let end = if c1 == channels { total } else { c1 * cl };
            // SAFETY: thread `t` gets floats `c0 * cl..end` of `packed` (checked to hold
            // every channel above), disjoint from every other thread's range, and
            // `pack_channels` writes nothing outside the slice it is given.
            let dst = unsafe { std::slice::from_raw_parts_mut(base.0.add(c0 * cl), end - c0 * cl) };
            layout.pack_channels(isa, input, dst, (c0, c1));
        });
    } else {
        layout.pack_with(isa, input, packed);
    }
    let x: &[f32] = if layout.in_place() { input } else { packed };
    Ok((x, rest))
}

/// The length check of a pre-packed input: the layout's packed length, or the plain input's
/// when the layout reads it in place.
pub(crate) fn check_prepacked(layout: &InputLayout, shape: &ConvShape, len: usize) -> Result<()> {
    if layout.in_place() {
        check_len("input", shape.in_channels * shape.input_plane(), len)
    } else {
        check_len("packed input", layout.packed_len(), len)
    }
}

pub(crate) fn check_len(what: &'static str, expected: usize, found: usize) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(KernelError::BufferLength { what, expected, found })
    }
}

/// Everything one kernel invocation needs (shared read-only between threads).
struct Job<'a> {
    m: &'a RowGroupMatrix,
    offsets: &'a [u32],
    x: *const f32,
    /// Floats readable from `x`, and the largest entry offset: a tile whose whole vectors,
    /// shifted by any offset, stay below `x_len` may load them whole.
    x_len: usize,
    max_offset: usize,
    /// The output (`out_channels` rows of `ystride` positions).
    y: SendPtr,
    ystride: usize,
    /// Distance between a fused residual's rows.
    rstride: usize,
    plan: &'a TilePlan,
    /// One-row groups walk their tiles in chunks of this many (see [`tiles_per_chunk`]).
    chunk_tiles: usize,
    /// Prefetch the next tile's input lines (see [`RowGroupConv::execute_on`]): the group's
    /// share of `prefetch` when `prefetch_ptr` is not empty, else its own entries' lines.
    prefetch_ahead: bool,
    prefetch: &'a [u32],
    prefetch_ptr: &'a [u32],
    /// Prefetch the weights [`WEIGHT_PREFETCH_FLOATS`] ahead of each entry: a map of at most
    /// two tiles reads each weight once or twice, so a layer of more than
    /// [`STREAMED_WEIGHT_BYTES`] streams them (from L3 in a plan whose weights exceed L2).
    stream_weights: bool,
    /// The flat grid is the output: plain stores.
    direct: bool,
    /// The input is gathered [`RowGroupInput::Quad`]: one tile, run by `micro_quad`.
    quad: bool,
    /// Applied to every output before it is stored.
    epilogue: Epilogue<'a>,
}

// SAFETY: the raw pointers are only read (x) or written at disjoint positions per thread (y).
unsafe impl Sync for Job<'_> {}

/// Weight bytes from which a layer whose map is at most two tiles prefetches its weights
/// (VGG-11's 256- and 512-channel layers at 4x4 and 2x2 at 8x: 0.6-1.2 MB).
const STREAMED_WEIGHT_BYTES: usize = 256 << 10;

/// How far ahead of an entry its group's weights are prefetched (2 KiB: a 1-4 vector tile
/// takes 8-32 FMAs per 32-byte entry, so the line arrives some hundreds of cycles later,
/// about an L3 access). Block-punched 8x4 at 8x, weights evicted from L2 before each run
/// (`examples/cold_weights`, min of runs, three alternating runs of each build, us):
/// 512@2x2 72-73 -> 69-70, 512@4x4 88-93 -> 83-89, 256->512@4x4 unchanged (43-46); in
/// VGG-11's plan its 2x2 layers 3-4% faster. 256 and 2,048 floats ahead were no better.
const WEIGHT_PREFETCH_FLOATS: usize = 512;

/// Vectors per tile row: 8 rows x 2 = 16 accumulators (AVX2: row chunks of at most 4 rows,
/// 8 accumulators of its 16 registers).
pub(crate) const TILE_V: usize = 2;

/// Vectors per tile row on AVX-512 for long runs of positions: 8 rows x 3 = 24 accumulators
/// with three input vectors and a broadcast in 32 registers. Each entry of a row group costs 8
/// broadcasts and `8 V` FMAs, so at 2 vectors the load ports (2 x-loads + 8 broadcasts per
/// 16 FMAs) bind before the FMA units and at 3 they do not; the price is the last tile of each
/// run, computed 3 vectors wide. Measured (min of runs, block-punched 8x, 1 thread): conv1x1
/// 256->64 at 56x56 109 -> 94-101 us and conv3x3 64@56x56 190 -> 179-182 us, but 8x8 and
/// 16x16 maps (71 and 271 positions) 3-8% slower, hence only runs of >= [`WIDE_RUN`] positions.
const WIDE_TILE_V: usize = 3;

/// Shortest run of flat positions given [`WIDE_TILE_V`] tiles (32 AVX-512 vectors).
const WIDE_RUN: usize = 512;

/// Vectors per tile for a layout:
/// * one when every run of positions fits one vector (a 4x4 map of a 1x1 convolution is 16
///   positions: a two-vector tile computes 16 discarded ones; 124 -> 95 us on MobileNetV2's
///   320 -> 1280 head);
/// * with one filter per group (`single`: depthwise, unstructured rows), up to 8 (AVX-512) or
///   4 (AVX2) vectors: a one-row tile of two vectors is two chains of dependent FMAs, bound
///   by their latency (a 144-channel depthwise 3x3 at 32x32: 80 us for 1.3 M MACs);
/// * on AVX-512, [`TILE_V`] when every output row is exactly one or two vectors (16x16 and
///   32x32 maps: rows stacked two per tile, or one row per tile, all stored whole; see
///   `tile_plan`);
/// * [`WIDE_TILE_V`] on AVX-512 when every run is at least [`WIDE_RUN`] positions;
/// * else [`TILE_V`].
pub(crate) fn tile_vectors(
    layout: &InputLayout,
    lanes: usize,
    single: bool,
    target: &OutputTarget,
) -> usize {
    let longest = layout.runs().iter().map(|&(_, len)| len).max().unwrap_or(0);
    let shortest = layout.runs().iter().map(|&(_, len)| len).min().unwrap_or(0);
    if longest <= lanes {
        1
    } else if single {
        let cap = if lanes >= 16 { 8 } else { 4 };
        longest.div_ceil(lanes).next_power_of_two().clamp(TILE_V, cap)
    } else if lanes == 16
        && tile_plan::uniform_row_length(layout, target)
            .is_some_and(|w| w == lanes || w == 2 * lanes)
    {
        TILE_V
    } else if lanes >= 16 && shortest >= WIDE_RUN {
        WIDE_TILE_V
    } else {
        TILE_V
    }
}

/// About the L2 cache of one core (512 KiB on Zen 3; 1-2 MiB on newer cores, where the
/// measures that take it as their threshold cost little): inputs larger than this are walked
/// in chunks by one-row groups and prefetched a tile ahead by 1x1 layers.
const L2_BYTES: usize = 512 << 10;
/// A chunk's share of the input: a quarter of the L2, leaving room for the output rows and
/// the weights.
const CHUNK_BYTES: usize = 128 << 10;
/// Groups reading an input channel, on average, for chunking to pay.
const CHUNK_MIN_REUSE: usize = 4;

/// How many consecutive tiles of `plan` one-row groups (unstructured CSR rows, depthwise
/// filters) walk before the next group: all of them unless the input is larger than L2 and
/// its channels are each read by several groups. Then a group walking the whole map streams
/// the planes it reads from L3 and the next group streams them again (conv3x3 64@56x56 at 90%,
/// 58 entries a row: 0.93 -> 0.80 ms in chunks of 128 KiB of input, Zen 3); where each
/// channel is read by a few groups only (conv1x1 256->64 at 95%: 3.2), the long streams are
/// faster than chunks whose first reads miss (0.23 against 0.27 ms).
fn tiles_per_chunk(
    m: &RowGroupMatrix,
    shape: &ConvShape,
    layout: &InputLayout,
    plan: &TilePlan,
) -> usize {
    let n_tiles = plan.tiles.len();
    let input_bytes = 4 * shape.in_channels * layout.channel_stride();
    if m.groups() != m.rows || input_bytes <= L2_BYTES {
        return n_tiles;
    }
    let k = shape.kernel_volume();
    let mut reads = 0;
    let mut seen = vec![usize::MAX; shape.in_per_group()];
    for g in 0..m.groups() {
        for e in m.entry_ptr[g]..m.entry_ptr[g + 1] {
            let c = m.col[e as usize] as usize / k;
            if seen[c] != g {
                seen[c] = g;
                reads += 1;
            }
        }
    }
    if reads < CHUNK_MIN_REUSE * shape.in_channels {
        return n_tiles;
    }
    n_tiles.div_ceil(input_bytes.div_ceil(CHUNK_BYTES))
}

fn execute(isa: Isa, job: &Job<'_>, threads: usize) {
    let n_tiles = job.plan.tiles.len();
    let groups = job.m.groups();
    let threads = threads.min(crate::threads::MAX_THREADS);
    if threads <= 1 {
        run_tiles(isa, job, 0, n_tiles, 0, groups);
    } else if n_tiles >= 4 * threads {
        let chunk = n_tiles.div_ceil(threads);
        run_parallel(threads, |t| {
            run_tiles(isa, job, (t * chunk).min(n_tiles), ((t + 1) * chunk).min(n_tiles), 0, groups)
        });
    } else {
        let w = &job.m.weight_ptr;
        let bounds = split_by_cost(groups, threads, |g| w[g + 1] - w[g] + 16);
        run_parallel(threads, |t| run_tiles(isa, job, 0, n_tiles, bounds[t], bounds[t + 1]));
    }
}

simd_entry! {
    fn run_tiles(job: &Job<'_>, t0: usize, t1: usize, g0: usize, g1: usize) => run_tiles_generic;
}

#[inline(always)]
fn run_tiles_generic<S: Simd>(job: &Job<'_>, t0: usize, t1: usize, g0: usize, g1: usize) {
    let m = job.m;
    if m.groups() == m.rows {
        // One filter per group (depthwise, or unstructured rows): walking a group's tiles
        // before the next group's keeps what it reads in cache (a depthwise filter reads one
        // channel's plane; tiles first would read every channel and all the weights per
        // tile), within chunks of tiles whose input fits in L2 (see `tiles_per_chunk`).
        let per = job.chunk_tiles.max(1);
        let mut c0 = t0;
        while c0 < t1 {
            let c1 = (c0 + per).min(t1);
            for g in g0..g1 {
                for ti in c0..c1 {
                    tile_group::<S>(job, ti, g);
                }
            }
            c0 = c1;
        }
    } else {
        for ti in t0..t1 {
            for g in g0..g1 {
                tile_group::<S>(job, ti, g);
            }
        }
    }
}

/// Tile `ti` of the plan for the rows of group `g`.
#[inline(always)]
fn tile_group<S: Simd>(job: &Job<'_>, ti: usize, g: usize) {
    let m = job.m;
    let plan = job.plan;
    let width = plan.vectors * S::LANES;
    let (p0, n) = plan.tiles[ti];
    // A run's short last tile computes one vector, not the plan's width (an 8x8 map with
    // shared row padding is 71 positions: 32 + 32 + 7).
    let vectors = if n <= S::LANES { 1 } else { plan.vectors };
    // Tiles stored whole at one shift take the flat output's plain stores, shifted.
    let (x_step, y_step) = plan.steps[ti];
    // A deinterleaved pair (phase-split target) is one or two whole vectors.
    let pair = plan.pairs[ti].filter(|_| !job.direct && vectors <= 2);
    let (segs, shift): (&[Seg], isize) = match (job.direct, plan.uniform[ti]) {
        (true, _) => (&[], 0),
        (false, Some(d)) => (&[], d as isize),
        (false, None) if pair.is_some() => (&[], 0),
        (false, None) => (&plan.segs[plan.seg_ptr[ti] as usize..plan.seg_ptr[ti + 1] as usize], 0),
    };
    // A full tile lies inside one run, so its loads and stores stay in bounds; the last
    // tile of a run touches only its valid positions (no store may spill into the next
    // run, which another thread may own).
    let full = n == width;
    // A short tile (a row's last) loads whole vectors when they stay inside `x`: the lanes
    // past `n` are computed but never stored, since the plan's segments store only valid
    // positions (not so for the direct flat output, whose stores follow `full`). Per-lane
    // loads in the entry loop measured 10-15% of a 28-wide map's time on AVX2.
    let load_whole =
        full || (!segs.is_empty() && p0 + vectors * S::LANES + job.max_offset <= job.x_len);
    let (r0, r1) = (m.group_start[g] as usize, m.group_start[g + 1] as usize);
    let (e0, e1) = (m.entry_ptr[g] as usize, m.entry_ptr[g + 1] as usize);
    let rows = GroupRows {
        job,
        r0,
        r: r1 - r0,
        w: &m.weights[m.weight_ptr[g]..m.weight_ptr[g + 1]],
        offs: &job.offsets[e0..e1],
        prefetch: if job.prefetch_ptr.is_empty() {
            &job.offsets[e0..e1]
        } else {
            &job.prefetch[job.prefetch_ptr[g] as usize..job.prefetch_ptr[g + 1] as usize]
        },
        p0,
        n,
        segs,
        shift,
        pair,
        x_step: x_step as usize,
        // The flat output is the grid: its vectors are as far apart as the grid's.
        y_step: if job.direct { x_step as isize } else { y_step as isize },
        residual: if job.direct {
            (0, x_step as isize)
        } else {
            let (rshift, rstep) = plan.residual[ti];
            (rshift as isize, rstep as isize)
        },
    };
    // One row loop per variant (not one loop dispatching per chunk): the partial variants'
    // loop-invariant store masks are then computed in their own loops' preheaders, not
    // before every tile's rows whatever the variant (a quarter of a dense 1x1 layer's time
    // with 16 columns on AVX2).
    // SAFETY: as in `GroupRows::run`.
    unsafe {
        // Stacked rows get their own instances: a run-time vector step in every tile's loads
        // measured slower in whole plans (an address computation per entry). Rows contiguous
        // in the flat grid but not in the output (a 16-wide map read in place, stored into a
        // padded layout) are stacked too: their stores step by `y_step`.
        if job.quad {
            rows.run_quad::<S>();
            return;
        }
        let stacked =
            x_step as usize != S::LANES || (segs.is_empty() && rows.y_step != S::LANES as isize);
        if pair.is_some() {
            // Deinterleaved pairs in instances of their own, so that the others carry no
            // pair code: a run-time pair check in every instance cost 3-5% of stride-1
            // block-punched layers (16@32x32 as in a plan: 6.1 -> 6.4 us).
            match (vectors, load_whole, stacked) {
                (1, true, _) => rows.run::<S, 1, true, false, true>(),
                (1, false, _) => rows.run::<S, 1, false, false, true>(),
                (_, true, true) => rows.run::<S, TILE_V, true, true, true>(),
                (_, true, false) => rows.run::<S, TILE_V, true, false, true>(),
                // Unreached (a pair of two vectors is a full tile).
                (_, false, _) => rows.run::<S, TILE_V, false, false, true>(),
            }
            return;
        }
        match (vectors, load_whole, stacked) {
            // Wide tiles: one row at a time.
            (8, true, _) => rows.run::<S, 8, true, false, false>(),
            (8, false, _) => rows.run::<S, 8, false, false, false>(),
            (4, true, false) => rows.run::<S, 4, true, false, false>(),
            (4, false, false) => rows.run::<S, 4, false, false, false>(),
            (4, true, true) => rows.run::<S, 4, true, true, false>(),
            (4, false, true) => rows.run::<S, 4, false, true, false>(),
            (1, true, _) => rows.run::<S, 1, true, false, false>(),
            (1, false, _) => rows.run::<S, 1, false, false, false>(),
            (WIDE_TILE_V, true, _) => rows.run::<S, WIDE_TILE_V, true, false, false>(),
            (WIDE_TILE_V, false, _) => rows.run::<S, WIDE_TILE_V, false, false, false>(),
            (_, true, true) => rows.run::<S, TILE_V, true, true, false>(),
            (_, true, false) => rows.run::<S, TILE_V, true, false, false>(),
            // Unreached (a stacked tile short of `TILE_V` rows is one vector wide), but kept
            // so that no stacked tile can run with contiguous vector offsets.
            (_, false, true) => rows.run::<S, TILE_V, false, true, false>(),
            (_, false, false) => rows.run::<S, TILE_V, false, false, false>(),
        }
    }
}

/// The rows of one group on one tile.
struct GroupRows<'a> {
    job: &'a Job<'a>,
    /// First row and row count.
    r0: usize,
    r: usize,
    /// The group's weights (entry-major, stride `r`) and entry offsets.
    w: &'a [f32],
    offs: &'a [u32],
    /// Input offsets whose lines this group prefetches for the next tile.
    prefetch: &'a [u32],
    /// The tile's first position and valid positions.
    p0: usize,
    n: usize,
    /// The tile's masked stores, or none for plain stores shifted by `shift` (or the
    /// deinterleaved halves of a `pair`).
    segs: &'a [Seg],
    shift: isize,
    pair: Option<Split>,
    /// Distance between the tile's vectors in the grid and in the output (`LANES` but for
    /// stacked rows).
    x_step: usize,
    y_step: isize,
    /// For plain stores (no segments), a fused residual's shift and vector step.
    residual: (isize, isize),
}

impl GroupRows<'_> {
    /// Where the group's rows from its row `i` on store this tile, and their epilogue.
    ///
    /// # Safety
    /// Row `r0 + i` is an output row (and has a bias, when there is one).
    #[inline(always)]
    unsafe fn rows_from<const PAIR: bool>(&self, i: usize) -> (Out<'_>, RowEpilogue) {
        let job = self.job;
        let (r0, p0) = (self.r0, self.p0);
        let yp = job.y.0.add((r0 + i) * job.ystride).wrapping_add(p0).wrapping_offset(self.shift);
        let (rshift, rstep) = if self.segs.is_empty() { self.residual } else { (0, 0) };
        let out = Out {
            pair: if PAIR { self.pair } else { None },
            y: yp,
            stride: job.ystride,
            n: self.n,
            segs: self.segs,
            step: self.y_step,
            rstride: job.rstride,
            rstep,
        };
        let ep = RowEpilogue {
            bias: job.epilogue.bias.map(|b| b.as_ptr().add(r0 + i)),
            clamp: job.epilogue.clamp,
            // The tile's first row and position in the residual's layout (segments add their
            // `rdelta`).
            residual: job.epilogue.residual.map(|r| {
                r.as_ptr()
                    .wrapping_add((r0 + i) * job.rstride)
                    .wrapping_add(p0)
                    .wrapping_offset(rshift)
            }),
        };
        (out, ep)
    }

    /// The group's rows on the quad input, 8 at a time, then 4 (groups are multiples of 4
    /// rows: checked at bind time).
    ///
    /// # Safety
    /// As [`GroupRows::run`], the input holding 16 floats at every entry offset.
    #[inline(always)]
    unsafe fn run_quad<S: Simd>(&self) {
        let job = self.job;
        let mut i = 0;
        while i + 4 <= self.r {
            let (out, ep) = self.rows_from::<false>(i);
            let (wp, pf) = (self.w.as_ptr().add(i), job.stream_weights);
            if self.r - i >= 8 {
                micro_quad::<S, 2>(self.offs, wp, self.r, job.x, &out, &ep, pf);
                i += 8;
            } else {
                micro_quad::<S, 1>(self.offs, wp, self.r, job.x, &out, &ep, pf);
                i += 4;
            }
        }
    }

    /// Chunks of 8 (AVX-512), 4, 2 and 1 rows of a `V`-vector tile; one row at a time for wide
    /// tiles (`V >= 4`).
    ///
    /// # Safety
    /// Every valid position of a run, shifted by any entry's offset, is inside `x` (the
    /// layout's construction), and so is every lane of a tile loaded whole (`FULL`: the caller
    /// checks it against `x_len`); rows `i..i + rt` of the group are inside its weights
    /// (stride `r`); stores go to rows `r0 + i..` of the output at the tile's valid positions
    /// only (plain stores when the flat grid is the output, the tile plan's masked stores
    /// otherwise).
    #[inline(always)]
    unsafe fn run<
        S: Simd,
        const V: usize,
        const FULL: bool,
        const STACKED: bool,
        const PAIR: bool,
    >(
        &self,
    ) {
        let job = self.job;
        if job.prefetch_ahead {
            // The next tile's input lines, one per entry (a channel each): the tile after
            // this one in the run starts `V` vectors on.
            let width = V * S::LANES;
            let ahead = job.x.wrapping_add(self.p0 + width);
            for &off in self.prefetch {
                let line = ahead.wrapping_add(off as usize);
                for l in (0..width).step_by(16) {
                    crate::simd::prefetch(line.wrapping_add(l));
                }
            }
        }
        let mut i = 0;
        while i < self.r {
            let left = self.r - i;
            let rt = if V >= 4 {
                1
            } else if left >= 8 && S::LANES == 16 {
                8
            } else if left >= 4 {
                4
            } else if left >= 2 {
                2
            } else {
                1
            };
            let wp = self.w.as_ptr().add(i);
            let xp = job.x.add(self.p0);
            let (out, ep) = self.rows_from::<PAIR>(i);
            let (offs, r) = (self.offs, self.r);
            let (xs, pf) = (self.x_step, job.stream_weights);
            match rt {
                8 => micro::<S, 8, V, FULL, STACKED, PAIR>(offs, wp, r, xp, xs, &out, &ep, pf),
                4 => micro::<S, 4, V, FULL, STACKED, PAIR>(offs, wp, r, xp, xs, &out, &ep, pf),
                2 => micro::<S, 2, V, FULL, STACKED, PAIR>(offs, wp, r, xp, xs, &out, &ep, pf),
                _ => micro::<S, 1, V, FULL, STACKED, PAIR>(offs, wp, r, xp, xs, &out, &ep, pf),
            }
            i += rt;
        }
    }
}

/// Entries in flight in `micro_quad`: each has its own accumulators.
const QUAD_U: usize = 4;

/// Lane `p` of row `r`'s vector takes lane `4 p + r` of a quad sum (16 lanes: one AVX-512
/// vector, or two AVX2 vectors concatenated); lanes past 4 are zeroed.
const QUAD_ROW: [[u32; 16]; 4] = {
    let mut idx = [[0u32; 16]; 4];
    let mut r = 0;
    while r < 4 {
        let mut p = 0;
        while p < 4 {
            idx[r][p] = (4 * p + r) as u32;
            p += 1;
        }
        r += 1;
    }
    idx
};

/// `4 H` rows (`H` of 1 or 2) at up to 4 positions on the quad input ([`RowGroupInput::Quad`]):
/// lane `4 p + r` of a 16-lane sum is row `r` of a 4-row half at position `p`. Per entry, one
/// load of its gathered values (each position's 4 times) and per half one FMA with the half's
/// 4 weights broadcast from one load: 2 FMAs for 8 rows where the flat-grid kernel issues 8,
/// each on a vector a quarter used (a 2x2 map is 5 flat positions). Entries rotate through
/// [`QUAD_U`] sets of accumulators (8 chains of FMAs for 8 rows; with 2 sets, 4 chains, 512@2x2
/// ran 52.7 against 49.7 us). Each row's positions are then
/// permuted to lanes `0..n` and stored through `out` like any tile row (with `n <= 4`).
///
/// # Safety
/// For every entry `e`, `x + offs[e]` must hold 16 floats; `w` must hold `offs.len()` entries
/// of stride `wstride >= 4 H`; every address `out` selects must be writable.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_quad<S: Simd, const H: usize>(
    offs: &[u32],
    w: *const f32,
    wstride: usize,
    x: *const f32,
    out: &Out<'_>,
    ep: &RowEpilogue,
    stream_weights: bool,
) {
    let l = S::LANES;
    let parts = 16 / l;
    let mut acc = [[[S::zero(); 2]; H]; QUAD_U];
    let mut wp = w;
    let mut runs = offs.chunks_exact(QUAD_U);
    for o in runs.by_ref() {
        if stream_weights {
            crate::simd::prefetch(wp.wrapping_add(WEIGHT_PREFETCH_FLOATS));
        }
        for (u, au) in acc.iter_mut().enumerate() {
            let xp = x.add(o[u] as usize);
            let wu = wp.add(u * wstride);
            let mut xv = [S::zero(); 2];
            for (part, xx) in xv.iter_mut().enumerate().take(parts) {
                *xx = S::load(xp.add(part * l));
            }
            for (h, ah) in au.iter_mut().enumerate() {
                let wv = S::broadcast4(wu.add(4 * h));
                for part in 0..parts {
                    ah[part] = S::fma(wv, xv[part], ah[part]);
                }
            }
        }
        // Wrapping: after the last run this may point past the weights and is not read.
        wp = wp.wrapping_add(QUAD_U * wstride);
    }
    for (u, o) in runs.remainder().iter().enumerate() {
        let xp = x.add(*o as usize);
        let wu = wp.add(u * wstride);
        for (h, ah) in acc[u].iter_mut().enumerate() {
            let wv = S::broadcast4(wu.add(4 * h));
            for (part, a) in ah.iter_mut().enumerate().take(parts) {
                *a = S::fma(wv, S::load(xp.add(part * l)), *a);
            }
        }
    }
    for h in 0..H {
        let mut sum = [S::zero(); 2];
        for (part, s) in sum.iter_mut().enumerate().take(parts) {
            let mut t = acc[0][h][part];
            for au in &acc[1..] {
                t = S::add(t, au[h][part]);
            }
            *s = t;
        }
        for (r, idx) in QUAD_ROW.iter().enumerate() {
            let rr = 4 * h + r;
            let mut a = [S::permute2_maskz(sum[0], sum[parts - 1], idx, 0x000f)];
            ep.apply::<S, 1>(rr, &mut a);
            if let Some(res) = ep.residual {
                store_row_residual::<S, 1, false>(out, rr, &a, res, ep.clamp);
            } else {
                store_row::<S, 1, false>(out, rr, &a);
            }
        }
    }
}

/// `RT` rows x `V * LANES` positions. With `FULL`, every lane is loaded whole (all positions
/// are valid, or the lanes past `n` are readable and `out` has segments, which store only
/// valid positions); otherwise only the first `n` are loaded. Stores follow `out` (plain when it
/// has no segments, masked per segment otherwise). With `STACKED`, vector `v` is read at
/// `v * xs` and stored at `v * out.step` (stacked rows); otherwise both are `v * LANES`.
/// With `PAIR` (and only then), `out` may carry a phase-split pair (`Out::pair`).
/// `stream_weights`: prefetch the weights [`WEIGHT_PREFETCH_FLOATS`] ahead of each entry.
///
/// # Safety
/// For every entry `e`, `x + offs[e]` must be readable for the touched positions; `w` must hold
/// `offs.len()` entries of stride `wstride` with `RT <= wstride`; every address `out` selects
/// must be writable.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<
    S: Simd,
    const RT: usize,
    const V: usize,
    const FULL: bool,
    const STACKED: bool,
    const PAIR: bool,
>(
    offs: &[u32],
    w: *const f32,
    wstride: usize,
    x: *const f32,
    xs: usize,
    out: &Out<'_>,
    ep: &RowEpilogue,
    stream_weights: bool,
) {
    let n = out.n;
    let l = S::LANES;
    // Contiguous vectors but in stacked tiles: a constant step, folded into the addressing.
    let (xs, ys) = if STACKED { (xs, out.step) } else { (l, l as isize) };
    // The bias starts the accumulators (`b + w0 x0 + ...`: the first FMA adds it for free)
    // instead of an add per vector in the epilogue, where every vector op takes an FMA port
    // on AVX-512; the stores below then see no bias.
    let mut acc = [[S::zero(); V]; RT];
    if let Some(b) = ep.bias {
        for (rr, a) in acc.iter_mut().enumerate() {
            *a = [S::splat(*b.add(rr)); V];
        }
    }
    let ep = &RowEpilogue { bias: None, clamp: ep.clamp, residual: ep.residual };
    let mut wp = w;
    for &off in offs {
        if stream_weights {
            crate::simd::prefetch(wp.wrapping_add(WEIGHT_PREFETCH_FLOATS));
        }
        let xp = x.add(off as usize);
        // A plain loop, not `array::from_fn`: a closure is a separate function without the
        // caller's target features, so its intrinsics might not inline.
        let mut xv = [S::zero(); V];
        for (v, xvv) in xv.iter_mut().enumerate() {
            *xvv = if FULL {
                S::load(xp.add(v * xs))
            } else {
                let rem = n.saturating_sub(v * l);
                if rem >= l {
                    S::load(xp.add(v * xs))
                } else if rem > 0 {
                    S::load_partial(xp.add(v * xs), rem)
                } else {
                    S::zero()
                }
            };
        }
        for (rr, a) in acc.iter_mut().enumerate() {
            let wv = S::splat(*wp.add(rr));
            for v in 0..V {
                a[v] = S::fma(wv, xv[v], a[v]);
            }
        }
        // Wrapping: after the last entry this points past the weights and is never read.
        wp = wp.wrapping_add(wstride);
    }
    if let (true, Some(split)) = (PAIR && FULL && V <= 2 && out.segs.is_empty(), out.pair) {
        // A phase-split target's rows, deinterleaved: straight-line too (through the rolled
        // loop below, a 16@32x32 block-punched layer at 8x took 8.5 us, against 6.9).
        store_pair_rows::<S, RT, V>(&acc, out, split, ep.residual, ep.clamp);
        return;
    }
    if !PAIR && FULL && out.segs.is_empty() {
        // Whole vectors to the flat output: a straight line of stores (the general loop
        // below stays rolled, its accumulators spilled to the stack and reloaded). Bias,
        // residual and clamp chosen once per tile, not per vector: a branch per vector kept
        // the accumulators on the stack (ResNet-20's 16@32x32 layer at 8x with bias and
        // ReLU: 11.7 -> 9.4 us). The bias is already in the accumulators.
        let (r, c) = (ep.residual.unwrap_or(std::ptr::null()), ep.clamp);
        match (ep.residual.is_some(), c.kind()) {
            (false, 0) => store_whole::<S, RT, V, false, 0>(&acc, out, ys, r, c),
            (false, 1) => store_whole::<S, RT, V, false, 1>(&acc, out, ys, r, c),
            (false, _) => store_whole::<S, RT, V, false, 2>(&acc, out, ys, r, c),
            (true, 0) => store_whole::<S, RT, V, true, 0>(&acc, out, ys, r, c),
            (true, 1) => store_whole::<S, RT, V, true, 1>(&acc, out, ys, r, c),
            (true, _) => store_whole::<S, RT, V, true, 2>(&acc, out, ys, r, c),
        }
        return;
    }
    // The rows are stored by a rolled loop, which indexes them at run time, so they must be in
    // memory: a copy taken once here. Indexing `acc` itself kept it in memory, and LLVM stored
    // every accumulator to the stack after each FMA of the entry loop (AVX-512's 8 x 3 tile:
    // dense 3x3 16@32x32 75 -> 32 us, 64@56x56 3750 -> 1480 us, 1 thread, Xeon with AVX-512).
    let mut rows_out = std::hint::black_box(acc);
    for (rr, a) in rows_out.iter_mut().enumerate() {
        ep.apply::<S, V>(rr, a);
        if let Some(res) = ep.residual {
            store_row_residual::<S, V, FULL>(out, rr, a, res, ep.clamp);
        } else {
            store_row::<S, V, FULL>(out, rr, a);
        }
    }
}

/// `y = W x` for one vector `x` (length `cols`): vectorized across the rows of each group.
pub fn gemv(isa: Isa, m: &RowGroupMatrix, x: &[f32], y: &mut [f32], threads: usize) -> Result<()> {
    check_len("x", m.cols, x.len())?;
    check_len("y", m.rows, y.len())?;
    let threads = threads.clamp(1, crate::threads::MAX_THREADS);
    let bounds = split_by_cost(m.groups(), threads, |g| m.weight_ptr[g + 1] - m.weight_ptr[g] + 8);
    let yp = SendPtr(y.as_mut_ptr());
    // Each thread writes only the rows of its groups bounds[t]..bounds[t+1].
    run_parallel(threads, |t| gemv_groups(isa, m, x, yp, bounds[t], bounds[t + 1]));
    Ok(())
}

simd_entry! {
    fn gemv_groups(m: &RowGroupMatrix, x: &[f32], y: SendPtr, g0: usize, g1: usize) => gemv_groups_generic;
}

#[inline(always)]
fn gemv_groups_generic<S: Simd>(m: &RowGroupMatrix, x: &[f32], y: SendPtr, g0: usize, g1: usize) {
    let l = S::LANES;
    for g in g0..g1 {
        let (r0, r1) = (m.group_start[g] as usize, m.group_start[g + 1] as usize);
        let r = r1 - r0;
        let (e0, e1) = (m.entry_ptr[g] as usize, m.entry_ptr[g + 1] as usize);
        let cols = &m.col[e0..e1];
        let w = &m.weights[m.weight_ptr[g]..m.weight_ptr[g + 1]];
        if r == 1 {
            // A plain sparse dot product, four accumulators.
            let mut s = [0.0f32; 4];
            let mut k = 0;
            while k + 4 <= cols.len() {
                for (j, sj) in s.iter_mut().enumerate() {
                    *sj += w[k + j] * x[cols[k + j] as usize];
                }
                k += 4;
            }
            let mut t = (s[0] + s[1]) + (s[2] + s[3]);
            for j in k..cols.len() {
                t += w[j] * x[cols[j] as usize];
            }
            // SAFETY: row r0 < rows belongs to this thread's groups.
            unsafe { *y.0.add(r0) = t };
            continue;
        }
        let mut i = 0;
        while i < r {
            let n = (r - i).min(l);
            // SAFETY: entry k's weights for rows i..i+n lie at w[k*r + i ..], inside `w`; rows
            // r0+i..r0+i+n of `y` belong to this thread's groups.
            unsafe {
                let (mut a, mut b) = (S::zero(), S::zero());
                let mut k = 0;
                while k + 2 <= cols.len() {
                    let wa = if n == l {
                        S::load(w.as_ptr().add(k * r + i))
                    } else {
                        S::load_partial(w.as_ptr().add(k * r + i), n)
                    };
                    let wb = if n == l {
                        S::load(w.as_ptr().add((k + 1) * r + i))
                    } else {
                        S::load_partial(w.as_ptr().add((k + 1) * r + i), n)
                    };
                    a = S::fma(wa, S::splat(x[cols[k] as usize]), a);
                    b = S::fma(wb, S::splat(x[cols[k + 1] as usize]), b);
                    k += 2;
                }
                if k < cols.len() {
                    let wa = if n == l {
                        S::load(w.as_ptr().add(k * r + i))
                    } else {
                        S::load_partial(w.as_ptr().add(k * r + i), n)
                    };
                    a = S::fma(wa, S::splat(x[cols[k] as usize]), a);
                }
                S::store_partial(y.0.add(r0 + i), S::add(a, b), n);
            }
            i += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunked walk is taken exactly where the input outgrows L2 and its channels are
    /// read by several one-row groups: not for block rows, depthwise filters, small maps, or
    /// a 1x1 layer whose channels feed few rows.
    #[test]
    fn one_row_groups_chunk_large_inputs_with_reuse() {
        let conv = |shape: ConvShape, keep: f64, group: usize| {
            let mut rng = <rand::rngs::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
            let cols = shape.cols();
            let w: Vec<f32> =
                (0..shape.out_channels * cols)
                    .map(|_| {
                        if rand::RngExt::random_range(&mut rng, 0.0..1.0) < keep {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .collect();
            let groups =
                RowGroupMatrix::uniform_groups(shape.out_channels, shape.out_per_group(), group);
            let m =
                RowGroupMatrix::from_dense(shape.out_channels, cols, &w, None, &groups).unwrap();
            RowGroupConv::new(m, shape).unwrap()
        };
        let chunked = |c: &RowGroupConv| {
            (0..2).map(|i| c.chunk_tiles[i] < c.plans[i].tiles.len()).collect::<Vec<_>>()
        };
        // 64 channels of 56x56 (800 KB), 9 taps of 58 channels a row at 90%: chunked, in
        // chunks of at most 128 KiB of input.
        let big = ConvShape::conv2d(64, 64, [56, 56], [3, 3], 1, 1).unwrap();
        let c = conv(big, 0.1, 1);
        assert_eq!(chunked(&c), [true, true]);
        let chunks = c.plans[0].tiles.len().div_ceil(c.chunk_tiles[0]);
        // About 860 KB of padded input over 128 KiB: 7 chunks (6 if the tiles round so).
        assert!((6..=7).contains(&chunks), "{chunks} chunks");
        // The same weights in blocks of 8 rows walk tiles first anyway.
        assert_eq!(chunked(&conv(big, 0.1, 8)), [false, false]);
        // A small map stays whole.
        let small = ConvShape::conv2d(64, 64, [16, 16], [3, 3], 1, 1).unwrap();
        assert_eq!(chunked(&conv(small, 0.1, 1)), [false, false]);
        // Depthwise: each channel read by one filter.
        let dw =
            ConvShape::conv2d(64, 64, [56, 56], [3, 3], 1, 1).unwrap().with_groups(64).unwrap();
        assert_eq!(chunked(&conv(dw, 1.0, 1)), [false, false]);
        // 1x1, 256 channels into 64 rows at 95%: each channel read by about 3 rows.
        let pointwise = ConvShape::conv2d(256, 64, [56, 56], [1, 1], 1, 0).unwrap();
        assert_eq!(chunked(&conv(pointwise, 0.05, 1)), [false, false]);
        assert_eq!(chunked(&conv(pointwise, 0.25, 1)), [true, true]);
    }

    /// 1x1 layers whose channels are read by many groups deal every distinct line to exactly
    /// one group, in order and in proportion to the groups' entries; others keep per-entry
    /// prefetches (empty lists).
    #[test]
    fn prefetches_are_dealt_once_per_line_where_groups_share_channels() {
        let conv = |shape: ConvShape, keep_every: usize| {
            let cols = shape.cols();
            // Group g of 8 rows keeps columns c with (c + g) % keep_every == 0.
            let w: Vec<f32> = (0..shape.out_channels * cols)
                .map(|i| f32::from(u8::from((i % cols + i / cols / 8).is_multiple_of(keep_every))))
                .collect();
            let groups = RowGroupMatrix::uniform_groups(shape.out_channels, shape.out_channels, 8);
            let m =
                RowGroupMatrix::from_dense(shape.out_channels, cols, &w, None, &groups).unwrap();
            RowGroupConv::new(m, shape).unwrap()
        };
        // 128 rows (16 groups) over 64 channels, each group keeping every 4th: each channel
        // is read by 4 groups.
        let gemm = ConvShape::conv2d(64, 128, [1, 1024], [1, 1], 1, 0).unwrap();
        let c = conv(gemm, 4);
        let mut distinct = c.offsets.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 64);
        assert_eq!(c.prefetch, distinct, "each line once, in order");
        assert_eq!(c.prefetch_ptr.len(), c.matrix.groups() + 1);
        assert_eq!((c.prefetch_ptr[0], c.prefetch_ptr[16]), (0, 64));
        assert!(c.prefetch_ptr.windows(2).all(|w| w[1] - w[0] == 4), "{:?}", c.prefetch_ptr);
        // Every 8th column: each channel read by 2 groups, below the threshold.
        let c = conv(gemm, 8);
        assert!(c.prefetch.is_empty() && c.prefetch_ptr.is_empty());
        // 3x3: taps of one channel share lines; never dealt.
        let c = conv(ConvShape::conv2d(64, 128, [8, 8], [3, 3], 1, 1).unwrap(), 4);
        assert!(c.prefetch.is_empty() && c.prefetch_ptr.is_empty());
    }
}
