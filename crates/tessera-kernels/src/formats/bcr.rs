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
//! Kernel (column-block-major in bands): binding lists every block's chunks of up to 4 kept
//! rows in column-block order, with the input offset of each kept column. A tile of output
//! positions (up to 2 vectors on AVX2, 5 on AVX-512; see the stores below) runs, band of
//! block rows by band (16 KiB of output tile), every block row of the band on one column
//! block before the next, so the few input channels a column block gathers from stay in L1
//! while all those block rows read them (block-row-major order streamed the whole input from L2 once per block row). A chunk
//! accumulates its `kr x V` sub-product in registers, every gathered input vector reused by
//! all its kept rows, and adds it into the band's tile: a contiguous buffer on the thread's
//! stack, stored to the output once per band (output rows 4 KiB apart, as in a GEMM of 1,024
//! positions, all fall in one L1 set: accumulating in place there ran 2.0x instead of 2.4x).
//! Measured at 8x (bcr:8x32 keeps 4 rows x 8 columns per block), 1 thread, min of runs on Zen
//! 3, us: the previous block-row-major kernel with the blocks of equal kept rows merged and
//! 2-row x 3-vector register tiles -> this one: conv3x3 256@8x8 283 -> 201, 128@16x16 255 ->
//! 169, 64@56x56 844-891 -> 566-588, conv1x1 256->64@56x56 412-446 -> 310, GEMM 1024^3
//! 9060-9840 -> 8400. Rejected: 4 rows x 3 vectors (LLVM rotates the 12 accumulators through
//! a stack slot every column: 250 against 232 us on 256@8x8); accumulators starting from the
//! output tile instead of zero (the same or slower).
//!
//! Binding also copies every chunk's weights into chunk order (a tile then streams them front
//! to back instead of jumping between blocks stored block-row-major; the bound kernel keeps
//! the compact values too, for GEMV and [`BcrConv::matrix`]), and lists per column
//! block the input lines its blocks read, which a tile prefetches for the next tile during its
//! first band: GEMM 1024^3 7620 -> 6700-6850 us, 256@8x8 201 -> 179, conv1x1 316 -> 278-288.
//! A row's first chunk in a band stores its sum into the tile instead of adding it (bind
//! time marks it; rows kept in no block are zeroed), where every band used to zero its whole
//! tile first: 16@32x32 11.2-11.4 -> 10.8-10.9 us (min of runs alternating the builds, AVX-512,
//! pack included), 32@16x16 8.3 -> 8.1-8.2, 64@8x8 and 256@8x8 within noise.
//! Rejected: non-temporal output stores (GEMM 6% faster, a 4 MB output with 128 input
//! channels 40% slower); bands outermost with tiles inside (GEMM 12% faster, BERT FC and
//! 1024 x 1024 x 256 3-8% slower).
//! Also rejected (AVX-512): a register form keeping a whole block row (8 rows x up to 3
//! vectors) in registers across its blocks, each block dispatched by a `match` on its
//! kept-row mask to a loop specialized to that mask (`seq_macro`), so no chunk is ever added
//! into a tile. One loop per 8-bit mask (256 per tile width) took LLVM over 15 minutes to
//! compile; split into the mask's two 4-row halves (15 loops each, inputs read twice) it
//! ran whole plans 1.4-1.8x slower at 8x (VGG-11 0.96 -> 1.71 ms, ResNet-20 0.17 -> 0.24 ms,
//! `bench models --rates 8 --schemes bcr:8x32`): a half block is 8 columns x 2 rows, about 24
//! cycles of FMAs, and the indirect jump before it, its target drawn from 15 along a
//! sequence of thousands of blocks per tile, mispredicts most of the time.
//!
//! Also rejected (AVX-512, Zen 4, 16@32x32 as in a plan, `in_plan_conv` example, 8.4-8.7
//! us): two row tiles run as one 4-vector tile so that each chunk's setup, offsets and
//! weights serve twice the FMAs (8.4-8.6 us), the column loop unrolled by two (9.1-9.2), no
//! prefetch of the next tile's lines (8.4-8.5). Neither chunks that store instead of adding,
//! input loads forced to 64-byte alignment, nor outputs stored to one L1-resident line (all
//! diagnostics giving wrong results) moved it by more than the noise, while half of each
//! chunk's columns took it to 6.2-6.8 us: the kernel runs its FMAs at about 65% of the
//! machine's 16-lane FMA rate (block-punched: 81%), for reasons not yet found.
//! Where the time goes there (`perf record` on `in_plan_conv 0 8`, timer samples, the same
//! machine): the column loop of the 4-row 2-vector chunks 60% of the samples (its 20,480 FMAs
//! at 5.2 of the run's 8.7 us: near the FMA rate), the chunks' adds into the tile and their
//! setup about 20%, the epilogue (tile rows to the next layer's padded input, bias, ReLU)
//! 11%. The same chunk stream alone (a standalone loop: 8 columns x 4 rows x 2 vectors, inputs
//! and tile in L1, sum added into tile rows) runs at 3.0-3.3 G vector FMAs/s, 82-90% of the
//! rate; with 16 columns per chunk at 3.65 (all of it), with 8 rows or 4 vectors per chunk at
//! 3.2-3.4, storing instead of adding 3.3: what a block of 8 kept columns costs per chunk, the
//! format fixes. A row's first write chosen by a select (add to a zero row) instead of a
//! branch on its bit: 8.8 us against 8.6-8.7, not kept. Runs chained as in a plan (each reading
//! the previous one's output) time as repeated runs do (median 8.7-9.0 us); a plan's per-layer
//! table reads 9.0-9.6 us for this layer, its medians and, on second convolutions, a fused
//! residual (+0.6 us alone) account for most of the difference.
//!
//! The epilogue (tile rows to the output) is a sixth of the layer there: without it (a
//! diagnostic) 16@32x32 ran 7.2-7.3 us against 8.6-8.8, 32@16x16 6.1-6.2 against 6.8-7.0,
//! 64@8x8 7.2-7.5 against 8.0-8.4. Tiles stored plainly (no segments) now run one loop per
//! epilogue combination (bias, residual, clamp as constants; `PlainRows`) instead of the
//! per-row store path with its run-time checks: 16@32x32 8.7-9.0 -> 8.3-8.8 us, the others
//! within noise; ResNet-20 at 8x (`bench models --only resnet20 --only vgg11 --threads 1
//! --rates 8 --schemes bcr:8x32`, three runs alternating the builds) 165.5 / 167.9 / 164.3 ->
//! 163.0 / 164.0 / 164.2 us, 4.47-4.55x -> 4.55-4.65x. Fetching the band's output lines for
//! writing (`prefetchw`) before its chunks ran did not help (8.3 -> 8.7-8.8 us), nor did
//! storing each row from its last chunk's registers (marked at bind time like the first),
//! so that no row went back to the tile: 16@32x32 8.5-9.1 -> 9.1-9.2 us, 64@8x8 7.9-8.3 ->
//! 11.6-11.7, stride-2 32->64@16x16 6.8-6.9 -> 8.5-8.9 (the epilogue in every chunk
//! instance, with its run-time checks, costs more than the tile round trip it saves).
//!
//! Stores: a band's tile goes to the output through the row-group engine's tile plans
//! (`TilePlan`: on AVX2 tiles within output rows, stacked rows on 8-wide maps, masked
//! stores where a tile straddles row ends; on AVX-512 whole rows of 32-wide maps and two
//! stacked rows of 16-wide maps, plain stores, or else the runs dealt evenly into tiles of up
//! to 5 vectors with masked stores), bias, residual and activation applied on the way
//! ([`BcrConv::run_fused`]), to NCDHW or to another layout ([`BcrConv::set_output_target`],
//! e.g. the next convolution's padded input, which then runs [`BcrConv::run_prepacked`]).
//! Before, tiles ran over the flat grid (padding columns included) into a flat buffer that a
//! second pass compacted, and the plan's epilogue was a third pass. Measured on the kernel
//! alone (bcr:8x32 at 8x, 1 thread, min of runs alternating the two builds, us): 3x3 16@32x32
//! 17.9 -> 17.3, 32@16x16 14.2 -> 12.7, 64@8x8 15.1 -> 11.2, 256@8x8 185 -> 147, 128@16x16
//! 170 -> 155; 64@56x56 560-598 -> 587-679 (rows of 56 end in a one-vector tile). In whole
//! plans (`bench models`, 1 thread): VGG-11 4.33x -> 4.88x, ResNet-20 2.77x -> 3.69x.
//! On AVX-512 the flat 5-vector tiles gave way to the row plans on 32- and 16-wide maps
//! (flat tiles store most vectors in two masked parts, compute the padding columns and read
//! a fused residual through segments): ResNet-20 at 8x (`bench models --only resnet20
//! --rates 8 --schemes bcr:8x32`, 1 thread, alternating builds) 0.177 / 0.177 -> 0.168 /
//! 0.170 ms (4.23x -> 4.42-4.47x), its 32@16x16 layers from 58-65% to 68-73% of their FLOP
//! reduction; alone (`in_plan_conv`) 16@32x32 as in a plan 8.8 -> 8.5 us.
//!
//! Small maps ([`BcrInput`]): on the flat grid a 4x4 map spans 19 positions (two AVX-512
//! vectors, half of them padding) and a 2x2 map 5 (one vector, a quarter used), and VGG-11's
//! 512-channel layers at those sizes ran at 33-35% of their FLOP reduction. From 64 output
//! channels, such inputs are gathered first (module `gather`) into one compact row per GEMM
//! column (`Gathered`, when that saves a third of the vectors: a 4x4 map is one vector), or,
//! for at most 4 positions, into rows of 4 floats (`Quad`): a vector is 4 kept rows x 4
//! positions, one FMA per kept column with its positions broadcast into every quarter and
//! its 4 weights spread one per quarter, each row's quarter added into a 4-float tile row (so
//! one band holds every block row and the weights stream in one sequence).
//! Measured (bcr:8x32 at 8x, 1 thread, min of runs, `cargo run -p tessera-kernels --example
//! bcr_small_map -- C HW OUT`, us, AVX-512): 256->512@4x4 85 -> 48-54, 512@4x4 160 -> 103-108,
//! 512@2x2 107-112 -> 80-84. On the way: the quad sum added with masked loads and stores 4r
//! floats before its row ran 162 (stalled on the masked loads); the gather copying rows with
//! `memcpy` took a third of the 4x4 layers' time. In whole plans the gather is a parallel
//! pass of its own, which paid on 1 thread only (tessera-codegen binds the direct form
//! above one thread; since the 16-byte quad rows below, not for the quad form): VGG-11 at
//! 8x, `bench models --only vgg11 --rates 8 --schemes bcr:8x32`, 1 thread 0.83-0.88 ->
//! 0.67-0.68 ms (3.4x -> 4.0-4.3x).
//! What bounds the quad form (`bcr_small_map`, 1 thread, AVX-512, Zen 4): 9.9 ns per chunk of
//! 8 FMAs on 512@2x2 (91 us; its chunks, offsets and weights, 1.85 MB, stream from L3) and
//! 10.9 ns on 256@2x2 (25 us, 0.46 MB, in L2): not the bytes. `perf` puts the samples on the
//! chunk's tail (the sum's permute, its quarter extracts and adds into the tile) as if chunks,
//! each a dependent chain of about 30 cycles (two 4-FMA chains, add, permute, extract, add),
//! ran one after another rather than overlapped; why they do not overlap is open. Tried and
//! dropped: each sum placed by two masked permutes (one index pair per 8-row mask) into its
//! block row's 8 rows x 4 positions, held in two registers while one block row runs all its
//! column blocks (512@2x2 91 -> 141 us: the gathered input then streams from L2 once per block
//! row), or added to those 32 tile floats in two 16-lane additions, column block by column
//! block as now (91 -> 103 us).
//! The quad rows used to hold each value 4 times (lane `4 p + r` of a vector was row `r` at
//! position `p`: one 64-byte input load and a 4-weight broadcast per FMA, the sum permuted to
//! (row, position) lanes per chunk). Gathered once, a column's row is 16 bytes, broadcast
//! into the quarters, and the weights take the permute instead (`Simd::splat_quarters`), so
//! each quarter already is a row: in a standalone replica of the chunk stream (one thread,
//! Zen 4) 9.7 -> 6.7 ns per chunk of 8 FMAs, the same with the data in L1, so the 64-byte
//! loads, not the bytes, set the old rate; the weights' permute costs nothing measurable
//! (broadcast-loaded weights without it: the same 6.7), the tail about 1.3 ns. Whole layer,
//! pack and gather included (`bcr_small_map`, min of runs, three rounds alternating the
//! builds): 512@2x2 88-89 -> 77-78 us. Not kept: four columns per step (slower), two chunks
//! interleaved (no change, as with the old form), and the same form for the row-group
//! engine's quad kernel, whose 64-byte loads each feed two FMAs (512@2x2 51-52 -> 53 us).
//!
//! GEMV (batch 1 FC and LSTM gates, memory bound): a block row's outputs live in one register
//! and each kept column's weights are expand-loaded into its kept rows' lanes, two columns
//! per AVX-512 vector when blocks have at most 8 rows, so the compact weights stream once.
//! When every block keeps the same rows and columns ([`BcrCompact::balanced`], which the
//! projection guarantees) and the column count is even, block rows walk their blocks with
//! running pointers and one load mask instead of looking up three slices per block, whose
//! bounds checks and remainder loops took as many instructions as the FMAs: bcr:8x32, 1
//! thread, min of runs (`cargo run --release -p tessera-kernels --example bcr_gemv -- ROWS
//! COLS SPARSITY`, us, AVX-512): 4096 x 2048 at 10x (3 rows x 8 columns per block) 227-240 ->
//! 129-131, at 8x 231 -> 131; 4096 x 4096 at 10x 473 (`bench kernels`) -> 261. Four
//! accumulators instead of two, and prefetching the weights 1-8 KiB ahead, changed nothing
//! or ran slower.

#![allow(unsafe_op_in_unsafe_fn)] // micro-kernels are unsafe fns made of pointer arithmetic

use tessera_sparsity::{Layer, Mask};

use crate::conv::{ConvShape, InputLayout, OutputTarget};
use crate::error::{KernelError, Result};
use crate::formats::{ByteSize, check_lengths, structure_error};
use crate::gather::{Gather, GatherForm};
use crate::isa::Isa;
use crate::rowgroup::{
    Clamp, ConvScratch, Epilogue, Out, RowGroupMatrix, Seg, TILE_V, TilePlan, address_residual,
    check_len, check_output, check_output_target, check_prepacked, clamp_as, pack_input,
    readdress_residual, store_row_fused,
};
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

    /// `(kept rows, kept columns)` when every stored block keeps the same numbers (balanced
    /// BCR, as tessera-sparsity projects it), `None` when blocks differ or none is stored.
    pub fn balanced(&self) -> Option<(usize, usize)> {
        let kr = self.row_ptr.get(1)? - self.row_ptr[0];
        let kc = self.col_ptr.get(1)? - self.col_ptr[0];
        (0..self.blocks())
            .all(|b| {
                self.row_ptr[b + 1] - self.row_ptr[b] == kr
                    && self.col_ptr[b + 1] - self.col_ptr[b] == kc
            })
            .then_some((kr as usize, kc as usize))
    }

    /// Kept rows and columns of stored block `b`.
    #[inline(always)]
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

/// Most vectors per tile of the block kernel with 8 and 16 lanes: up to [`BCR_RT`] kept rows
/// x this many vectors of accumulators, the input vectors and a broadcast: 4 x 2 + 2 + 1 of
/// AVX2's 16 registers (the row-group engine's [`TILE_V`], whose tile plans it shares), 4 x 5
/// + 5 + 1 of AVX-512's 32.
const BCR_V: [usize; 2] = [TILE_V, 5];

/// Bytes of output tile one band of block rows may hold ([`BandTile`], on the stack of each
/// thread; L1 is 32 KiB on Zen 3).
const BAND_BYTES: usize = 16 * 1024;

/// Most kept rows of a block computed together (a block keeping more is split into chunks,
/// each gathering the block's columns again).
const BCR_RT: usize = 4;

/// Tiles of each run of flat positions with at most `vmax` vectors of `lanes`, the run's
/// vectors dealt evenly: an 8x8 map with shared row padding is 71 positions, one tile of 5
/// vectors instead of 64 + 7, whose second tile paid a whole tile's broadcasts and dispatch
/// for 7 positions (a quarter of the kernel's time on conv3x3 256@8x8).
fn balanced_tiles(runs: &[(usize, usize)], lanes: usize, vmax: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for &(start, len) in runs {
        let vectors = len.div_ceil(lanes);
        let count = vectors.div_ceil(vmax);
        let mut p = 0;
        for t in 0..count {
            let v = vectors / count + usize::from(t < vectors % count);
            let n = (v * lanes).min(len - p);
            out.push((start + p, n));
            p += n;
        }
    }
    out
}

/// Most threads with a precomputed block-row schedule; more threads split contiguously.
const SCHEDULED_THREADS: usize = 8;

/// A [`BcrCompact`] bound to a convolution: input offsets of every kept column, the blocks in
/// column-block-major order, the tiles for each vector width with their store plans, and the
/// block-row schedules for GEMV, all computed once so runs never allocate.
#[derive(Debug, Clone)]
pub struct BcrConv {
    m: BcrCompact,
    shape: ConvShape,
    layout: InputLayout,
    /// Execution form: every block's chunks of kept rows, column block by column block.
    chunks: Chunks,
    /// The largest input offset of a kept column (how far past a position a tile reads).
    max_offset: usize,
    /// Where outputs go (NCDHW unless retargeted).
    target: OutputTarget,
    /// Tiles for 8 and 16 lanes and where each tile's lanes are stored.
    plans: [TilePlan; 2],
    /// `schedule[t - 1][i]`: block rows of thread `i` when running `t` threads (GEMV), dealt
    /// heaviest-first to the least-loaded thread (GRIM's reorder, used for load balance).
    schedule: Vec<Vec<Vec<u32>>>,
    /// Per block, its kept rows as a bit mask (GEMV's expand-loads; empty when blocks have
    /// more than 16 rows).
    row_masks: Vec<u16>,
    /// Every block's kept rows and columns when all blocks keep the same numbers
    /// ([`BcrCompact::balanced`]), at most 16 rows and an even number of columns: the GEMV
    /// then walks blocks with running pointers where two columns fit a vector
    /// ([`bcr_gemv_uniform_generic`]).
    uniform: Option<(usize, usize)>,
    /// Where a fused residual is read, when not laid out as the output (see
    /// [`BcrConv::set_residual_layout`]).
    residual: Option<OutputTarget>,
    /// How tiles read the input: `None` straight from the packed input
    /// ([`BcrInput::Direct`]), else through a gathered copy.
    gather: Option<Gather>,
}

/// How BCR's block kernel reads a convolution's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BcrInput {
    /// Straight from the packed input: a tile is a run of the flat grid, padding columns
    /// included (a 4x4 map with shared row padding spans 19 flat positions: two AVX-512
    /// vectors for 16 outputs).
    Direct,
    /// Each GEMM column's input at every output position gathered first into one compact row
    /// (an im2col with no padding column), so a tile is the output map itself: a 4x4 map is
    /// one vector.
    Gathered,
    /// Maps of at most 4 positions: a gathered row holds a column's positions, and a vector
    /// is 4 kept rows x 4 positions, so one FMA with the positions broadcast into every
    /// quarter and the column's 4 weights one per quarter does what took 4 FMAs on a
    /// quarter-used vector (2x2 maps: 5 flat positions, one AVX-512 vector each).
    Quad,
}

/// Up to [`BCR_RT`] kept rows of one block: a register tile over the block's kept columns.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    /// First of its rows in [`Chunks::rows`] and their count.
    rows_at: u32,
    rt: u32,
    /// The block's kept columns in [`Chunks::offsets`].
    cols_at: u32,
    kc: u32,
    /// Its first weight in [`Chunks::weights`]: `kc` columns of `rt` weights each.
    w_at: u32,
    /// Bit `i` set: this chunk is the first (in column-block order) to write its `i`-th row
    /// of the band's tile, and stores its sum there instead of adding it.
    first: u32,
}

/// The blocks of a [`BcrCompact`] bound to a convolution, in column-block-major order: a
/// tile runs every block row on one column block (a few input channels, whose gathered
/// vectors then stay in L1) before the next, adding each block into its kept rows of the
/// output tile (L1 too).
#[derive(Debug, Clone, Default)]
struct Chunks {
    /// Block rows.
    brows: usize,
    /// Chunks of column block `cb` and block row `br`: `ptr[cb * brows + br] ..
    /// ptr[cb * brows + br + 1]`.
    ptr: Vec<u32>,
    chunks: Vec<Chunk>,
    /// Kept rows (absolute output rows) of every chunk.
    rows: Vec<u32>,
    /// Input offset of every block's kept columns.
    offsets: Vec<u32>,
    /// Per column block, the input offsets (one per 64-byte line, relative to a tile's first
    /// position) its blocks read: `prefetch[prefetch_ptr[cb] .. prefetch_ptr[cb + 1]]`.
    prefetch_ptr: Vec<u32>,
    prefetch: Vec<u32>,
    /// Every chunk's weights, in chunk order: a tile streams them front to back, where the
    /// block values (block-row-major) were read with a jump per chunk.
    weights: Vec<f32>,
    /// Per block row, its rows no chunk writes (kept in no block; zeroed in the band's tile):
    /// `untouched[untouched_ptr[br] .. untouched_ptr[br + 1]]`.
    untouched_ptr: Vec<u32>,
    untouched: Vec<u32>,
}

impl Chunks {
    /// `col_offset(group, col)`: where GEMM column `col` of channel group `group` is read,
    /// relative to a tile's first position.
    fn new(
        m: &BcrCompact,
        col_offset: impl Fn(usize, usize) -> usize,
        out_per_group: usize,
    ) -> Result<Self> {
        let brows = m.block_ptr.len() - 1;
        let col_blocks = m.cols.div_ceil(m.bc).max(1);
        let too_large =
            || KernelError::InvalidShape { reason: "input too large for 32-bit offsets".into() };
        let u32_of = |v: usize| u32::try_from(v).map_err(|_| too_large());
        let mut out = Chunks {
            brows,
            ptr: vec![0; col_blocks * brows + 1],
            prefetch_ptr: vec![0],
            ..Chunks::default()
        };
        // Per block: (column block, block row, block).
        let mut order: Vec<(usize, usize, usize)> = Vec::with_capacity(m.blocks());
        for brow in 0..brows {
            for b in m.block_ptr[brow] as usize..m.block_ptr[brow + 1] as usize {
                order.push((m.block_col0[b] as usize / m.bc, brow, b));
            }
        }
        order.sort_unstable();
        let mut lines: Vec<u32> = Vec::new();
        // Rows a chunk already wrote: a band runs its column blocks in this order over whole
        // block rows, so the first chunk writing a row is the same in every band and tile.
        let mut touched = vec![false; m.block_row_start[brows] as usize];
        for (i, &(cb, brow, b)) in order.iter().enumerate() {
            let r0 = m.block_row_start[brow] as usize;
            let group = r0 / out_per_group;
            let c0 = m.block_col0[b] as usize;
            let (kr, kc, _) = m.block(b);
            let cols_at = u32_of(out.offsets.len())?;
            for &c in kc {
                out.offsets.push(u32_of(col_offset(group, c0 + c as usize))?);
            }
            for i in (0..kr.len()).step_by(BCR_RT) {
                let rt = (kr.len() - i).min(BCR_RT);
                let mut first = 0u32;
                for (bit, &r) in kr[i..i + rt].iter().enumerate() {
                    let row = r0 + r as usize;
                    if !touched[row] {
                        touched[row] = true;
                        first |= 1 << bit;
                    }
                }
                out.chunks.push(Chunk {
                    rows_at: u32_of(out.rows.len())?,
                    rt: rt as u32,
                    cols_at,
                    kc: kc.len() as u32,
                    w_at: u32_of(out.weights.len())?,
                    first,
                });
                let v = m.value_ptr[b];
                for j in 0..kc.len() {
                    let col = &m.values[v + j * kr.len()..v + (j + 1) * kr.len()];
                    out.weights.extend_from_slice(&col[i..i + rt]);
                }
                out.rows.extend(kr[i..i + rt].iter().map(|&r| (r0 + r as usize) as u32));
            }
            out.ptr[cb * brows + brow + 1] = out.chunks.len() as u32;
            lines.extend(&out.offsets[cols_at as usize..]);
            if order.get(i + 1).is_none_or(|next| next.0 != cb) {
                // The column block's last block: its distinct input lines.
                lines.sort_unstable();
                lines.dedup_by_key(|o| *o / 16);
                out.prefetch.append(&mut lines);
                // Column blocks without blocks before this one prefetch nothing.
                out.prefetch_ptr.resize(cb + 1, out.prefetch_ptr[out.prefetch_ptr.len() - 1]);
                out.prefetch_ptr.push(u32_of(out.prefetch.len())?);
            }
        }
        out.prefetch_ptr.resize(col_blocks + 1, out.prefetch_ptr[out.prefetch_ptr.len() - 1]);
        // The quad kernel loads 4 weights per column whatever its chunk's row count: the last
        // column of the last chunk may read past its weights.
        out.weights.extend([0.0; BCR_RT]);
        // Empty (column block, block row) pairs end where the previous pair ended.
        for i in 1..out.ptr.len() {
            out.ptr[i] = out.ptr[i].max(out.ptr[i - 1]);
        }
        out.untouched_ptr.push(0);
        for brow in 0..brows {
            let rows = m.block_row_start[brow] as usize..m.block_row_start[brow + 1] as usize;
            out.untouched.extend(rows.filter(|&r| !touched[r]).map(|r| r as u32));
            out.untouched_ptr.push(u32_of(out.untouched.len())?);
        }
        Ok(out)
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
        let input = choose_input(&shape);
        Self::with_input(m, shape, input)
    }

    /// [`BcrConv::new`] reading the input as `input` says (`new` picks by the map's size:
    /// [`BcrInput::Quad`] for at most 4 positions, [`BcrInput::Gathered`] when gathering saves
    /// a third of the vectors, both from 64 output channels up, where the kernel's work per
    /// gathered value pays for the gather). The gathered forms need a 2D convolution with one
    /// channel group, and `Quad` at most 4 output positions.
    pub fn with_input(m: BcrCompact, shape: ConvShape, input: BcrInput) -> Result<Self> {
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
        let gather = match input {
            BcrInput::Direct => None,
            BcrInput::Gathered => Some(Gather::new(&shape, &layout, GatherForm::Compact, "BCR")?),
            BcrInput::Quad => Some(Gather::new(&shape, &layout, GatherForm::Quad, "BCR")?),
        };
        let chunks = match &gather {
            None => Chunks::new(&m, |g, c| layout.col_offset(g, c), shape.out_per_group())?,
            Some(g) => Chunks::new(&m, |_, c| c * g.stride, shape.out_per_group())?,
        };
        let target = OutputTarget::dense(shape.output());
        let plans = tile_plans(gather.as_ref().map_or(&layout, |g| &g.layout), &target, &gather);
        let max_offset = chunks.offsets.iter().max().map_or(0, |&o| o as usize);
        let schedule = (1..=SCHEDULED_THREADS).map(|t| lpt(&m, t)).collect();
        let row_masks = if m.br <= 16 {
            (0..m.blocks()).map(|b| m.block(b).0.iter().fold(0u16, |a, &r| a | 1 << r)).collect()
        } else {
            Vec::new()
        };
        let uniform = m.balanced().filter(|&(_, kc)| m.br <= 16 && kc > 0 && kc % 2 == 0);
        Ok(BcrConv {
            m,
            shape,
            layout,
            chunks,
            max_offset,
            target,
            plans,
            schedule,
            row_masks,
            uniform,
            residual: None,
            gather,
        })
    }

    /// Reads its input laid out as `layout` from now on (as
    /// [`crate::RowGroupConv::set_input_layout`]: e.g. [`InputLayout::phase_view`], run by
    /// [`BcrConv::run_prepacked`]); output target and residual layout kept. An error (nothing
    /// changed) for a gathered input, a layout of another convolution, or one whose tiles
    /// cannot address the residual.
    pub fn set_input_layout(&mut self, layout: InputLayout) -> Result<()> {
        if self.gather.is_some() || layout.shape() != &self.shape {
            return Err(KernelError::InvalidShape {
                reason: "only a direct BCR convolution takes another layout of its input".into(),
            });
        }
        let chunks =
            Chunks::new(&self.m, |g, c| layout.col_offset(g, c), self.shape.out_per_group())?;
        let mut plans = tile_plans(&layout, &self.target, &None);
        if let Some(residual) = &self.residual {
            address_residual(&mut plans, &layout, residual)?;
        }
        self.max_offset = chunks.offsets.iter().max().map_or(0, |&o| o as usize);
        self.chunks = chunks;
        self.plans = plans;
        self.layout = layout;
        Ok(())
    }

    /// How tiles read the input.
    pub fn input(&self) -> BcrInput {
        match &self.gather {
            None => BcrInput::Direct,
            Some(g) if g.quad => BcrInput::Quad,
            Some(_) => BcrInput::Gathered,
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
        let mut plans = tile_plans(self.plan_layout(), &target, &self.gather);
        if let Some(residual) = &self.residual {
            address_residual(&mut plans, self.plan_layout(), residual)?;
        }
        self.plans = plans;
        self.target = target;
        Ok(())
    }

    /// Reads a fused residual laid out as `layout` (`None`: as the output) from now on; as
    /// [`crate::RowGroupConv::set_residual_layout`].
    pub fn set_residual_layout(&mut self, layout: Option<OutputTarget>) -> Result<()> {
        let output = self.shape.output();
        let plan_layout = self.gather.as_ref().map_or(&self.layout, |g| &g.layout);
        let (plans, residual) = (&mut self.plans, &mut self.residual);
        readdress_residual(plans, plan_layout, output, &self.target, residual, layout)
    }

    /// Where a fused residual is read from (the output target unless
    /// [`BcrConv::set_residual_layout`] set another).
    pub fn residual_layout(&self) -> &OutputTarget {
        self.residual.as_ref().unwrap_or(&self.target)
    }

    /// Where outputs are stored.
    pub fn output_target(&self) -> &OutputTarget {
        &self.target
    }

    /// The input layout (packed by [`BcrConv::run`], or written by a producer through
    /// [`InputLayout::as_target`] for [`BcrConv::run_prepacked`]).
    pub fn layout(&self) -> &InputLayout {
        &self.layout
    }

    /// The convolution.
    pub fn shape(&self) -> &ConvShape {
        &self.shape
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

    /// Scratch for [`BcrConv::run`] and [`BcrConv::run_prepacked`]: the packed input and the
    /// gathered one (outputs are stored in place).
    pub fn scratch(&self) -> ConvScratch {
        let gathered = self.gather.as_ref().map_or(0, Gather::len);
        ConvScratch::with_lengths((self.layout.packed_len(), gathered))
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
        self.run_fused(isa, input, output, scratch, threads, Epilogue::default())
    }

    /// [`BcrConv::run`], applying `epilogue` (bias, residual, activation) to each output as
    /// its band of the tile is stored: no pass over the output after the kernel.
    pub fn run_fused(
        &self,
        isa: Isa,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut ConvScratch,
        threads: usize,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        let (x, gathered) = pack_input(&self.layout, &self.shape, isa, input, scratch, threads)?;
        self.execute_on(isa, x, gathered, output, threads, epilogue)
    }

    /// [`BcrConv::run_fused`] on an input already in this convolution's packed layout
    /// (`layout().packed_len()` floats, padding zero), as a producer retargeted to
    /// `layout().as_target()` writes it: no packing (`scratch` holds the gathered input of
    /// [`BcrInput::Gathered`] and [`BcrInput::Quad`]).
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

    /// Runs the tiles on `x` (the packed input), gathered first into `gathered` when the
    /// input form asks for it.
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
        let plan = &self.plans[usize::from(isa.lanes() == 16)];
        let job = BcrJob {
            c: self,
            plan,
            quad: self.gather.as_ref().is_some_and(|g| g.quad),
            x: x.as_ptr(),
            x_len: x.len(),
            y: SendPtr(output.as_mut_ptr()),
            ystride: self.target.channel_stride,
            rstride: self.residual_layout().channel_stride,
            epilogue,
        };
        let tiles = plan.tiles.len();
        let threads = threads.clamp(1, crate::threads::MAX_THREADS);
        let brows = self.chunks.brows;
        if threads == 1 || tiles >= 4 * threads {
            let chunk = tiles.div_ceil(threads);
            run_parallel(threads, |t| {
                let lo = (t * chunk).min(tiles);
                let hi = ((t + 1) * chunk).min(tiles);
                bcr_tiles(isa, &job, lo, hi, 0, brows);
            });
        } else {
            // Few positions: every thread runs all tiles on a contiguous share of block rows,
            // balanced by kept weights.
            let m = &self.m;
            let bounds = crate::threads::split_by_cost(brows, threads, |b| {
                m.value_ptr[m.block_ptr[b + 1] as usize] - m.value_ptr[m.block_ptr[b] as usize] + 8
            });
            run_parallel(threads, |t| bcr_tiles(isa, &job, 0, tiles, bounds[t], bounds[t + 1]));
        }
        Ok(())
    }

    /// Whether [`gemv`](Self::gemv) runs the balanced-block form on `isa` (every block keeps
    /// the same numbers of rows and of columns, the columns even, and two columns of a block
    /// fit a vector): the form that outruns the same weights as row groups (LSTM gates 4096 x
    /// 2048 at 10x, `bcr_gemv` example: 129-131 against 181-183 us).
    pub fn balanced_gemv(&self, isa: Isa) -> bool {
        self.uniform.is_some() && 2 * self.m.br <= isa.lanes()
    }

    /// `y = W x` for one vector.
    pub fn gemv(&self, isa: Isa, x: &[f32], y: &mut [f32], threads: usize) -> Result<()> {
        check_len("x", self.m.cols, x.len())?;
        check_len("y", self.m.rows, y.len())?;
        let threads = threads.clamp(1, SCHEDULED_THREADS);
        let mine = &self.schedule[threads - 1];
        let yp = SendPtr(y.as_mut_ptr());
        let masks = &self.row_masks;
        if let Some((kr, kc)) = self.uniform.filter(|_| self.balanced_gemv(isa)) {
            let m = &self.m;
            run_parallel(threads, |t| bcr_gemv_uniform(isa, m, masks, (kr, kc), x, yp, &mine[t]));
        } else if self.m.br <= isa.lanes() {
            run_parallel(threads, |t| bcr_gemv_expand(isa, &self.m, masks, x, yp, &mine[t]));
        } else {
            run_parallel(threads, |t| bcr_gemv(isa, &self.m, x, yp, &mine[t]));
        }
        Ok(())
    }
}

/// The input form [`BcrConv::new`] picks for `shape` (see [`BcrConv::with_input`]).
fn choose_input(shape: &ConvShape) -> BcrInput {
    if shape.groups != 1 || !shape.is_2d() || shape.out_channels < 64 {
        return BcrInput::Direct;
    }
    let positions = shape.output_positions();
    if positions <= 4 {
        return BcrInput::Quad;
    }
    // AVX-512 vectors per tile sweep, on the flat grid and gathered.
    let vectors = |runs: &[(usize, usize)]| -> usize {
        balanced_tiles(runs, 16, BCR_V[1]).iter().map(|&(_, n)| n.div_ceil(16)).sum()
    };
    let flat = vectors(shape.layout().runs());
    if 3 * vectors(&[(0, positions)]) <= 2 * flat { BcrInput::Gathered } else { BcrInput::Direct }
}

/// The AVX2 and AVX-512 tile plans of a layout storing to `target`. On 8 lanes, the row-group
/// engine's: tiles within output rows (plain stores, no padding column computed), stacked
/// rows on 8-wide maps, flat tiles with masked stores elsewhere. On 16 lanes, the flat
/// positions' runs dealt evenly into tiles of up to 5 vectors ([`balanced_tiles`]), stored
/// plainly where the flat grid is the output (1x1 convolutions, GEMM), else with masked
/// stores (native on AVX-512) unless the row-group engine's two-vector plan stores all its
/// tiles plainly (32-wide maps: a row per tile; 16-wide maps: two stacked rows).
/// Quad: one tile of the whole map on both (its vectors hold 4 positions each).
fn tile_plans(
    layout: &InputLayout,
    target: &OutputTarget,
    gather: &Option<Gather>,
) -> [TilePlan; 2] {
    if let Some(g) = gather.as_ref().filter(|g| g.quad) {
        let one = [(0, g.positions)];
        return [
            TilePlan::from_tiles(layout, 8, 1, &one, target),
            TilePlan::from_tiles(layout, 16, 1, &one, target),
        ];
    }
    let tiles = balanced_tiles(layout.runs(), 16, BCR_V[1]);
    let mut wide = TilePlan::from_tiles(layout, 16, BCR_V[1], &tiles, target);
    if gather.is_none() && (0..wide.tiles.len()).any(|ti| !wide.plain(ti)) {
        let rows = TilePlan::with_target(layout, 16, 2, target);
        if (0..rows.tiles.len()).all(|ti| rows.plain(ti)) {
            wide = rows;
        }
    }
    [TilePlan::with_target(layout, 8, BCR_V[0], target), wide]
}

struct BcrJob<'a> {
    c: &'a BcrConv,
    plan: &'a TilePlan,
    /// The input is gathered for [`rmw_quad`].
    quad: bool,
    x: *const f32,
    /// Floats readable from `x`: a tile whose whole vectors, shifted by any kept column's
    /// offset, stay below it loads them whole.
    x_len: usize,
    /// The output (`out_channels` rows `ystride` apart, laid out as the target).
    y: SendPtr,
    ystride: usize,
    /// Distance between a fused residual's rows.
    rstride: usize,
    epilogue: Epilogue<'a>,
}

// SAFETY: `x` is only read; `y` is written at disjoint (row, position) regions per thread, and
// the epilogue's slices are only read.
unsafe impl Sync for BcrJob<'_> {}

simd_entry! {
    fn bcr_tiles(job: &BcrJob<'_>, t0: usize, t1: usize, b0: usize, b1: usize) => bcr_tiles_generic;
}

/// Tiles `t0..t1` of the plan on block rows `b0..b1`, each at the fewest vectors that hold its
/// positions.
#[inline(always)]
fn bcr_tiles_generic<S: Simd>(job: &BcrJob<'_>, t0: usize, t1: usize, b0: usize, b1: usize) {
    let vmax = BCR_V[usize::from(S::LANES == 16)];
    let plan = job.plan;
    let mut tile = std::mem::MaybeUninit::<BandTile>::uninit();
    for ti in t0..t1 {
        let (p0, n) = plan.tiles[ti];
        let vectors = n.div_ceil(S::LANES).clamp(1, vmax);
        let (x_step, y_step) = plan.steps[ti];
        let x_step = x_step as usize;
        // A partial tile (a row's last) loads whole vectors when they stay inside `x`: its
        // discarded lanes are computed but never stored (the plan's stores select lanes).
        let last = p0 + (vectors - 1) * x_step + S::LANES;
        let load_whole = n == vectors * S::LANES || last + job.c.max_offset <= job.x_len;
        // A deinterleaved pair (phase-split target) is one or two whole vectors.
        let pair = plan.pairs[ti].filter(|_| vectors <= 2 && !job.quad);
        let (segs, shift): (&[Seg], isize) = match plan.uniform[ti] {
            Some(d) => (&[], d as isize),
            None if pair.is_some() => (&[], 0),
            None => (&plan.segs[plan.seg_ptr[ti] as usize..plan.seg_ptr[ti + 1] as usize], 0),
        };
        let (rshift, rstep) = match plan.uniform[ti].or(pair.map(|_| 0)) {
            Some(_) => (plan.residual[ti].0 as isize, plan.residual[ti].1 as isize),
            None => (0, S::LANES as isize),
        };
        let at = TileAt {
            p0,
            n,
            x_step,
            y_step: y_step as isize,
            segs,
            shift,
            pair,
            rshift,
            rstep,
            next: plan.tiles.get(ti + 1).map(|t| t.0),
        };
        if job.quad {
            // One tile of at most 4 positions, whose vectors hold 4 positions x 4 rows.
            bcr_tile::<S, 1, true, true, false>(job, &mut tile, &at, b0, b1);
            continue;
        }
        if at.pair.is_some() {
            // Deinterleaved pairs (one or two whole vectors) in instances of their own, so
            // that the others carry no pair check per row (0.2-0.4 us of a stride-1 layer's
            // 7 us).
            match (vectors, load_whole) {
                (1, true) => bcr_tile::<S, 1, true, false, true>(job, &mut tile, &at, b0, b1),
                (1, false) => bcr_tile::<S, 1, false, false, true>(job, &mut tile, &at, b0, b1),
                (_, true) => bcr_tile::<S, 2, true, false, true>(job, &mut tile, &at, b0, b1),
                (_, false) => bcr_tile::<S, 2, false, false, true>(job, &mut tile, &at, b0, b1),
            }
            continue;
        }
        macro_rules! tile {
            ($($v:literal)*) => {
                match (vectors, load_whole) {
                    $(
                        ($v, true) => bcr_tile::<S, $v, true, false, false>(job, &mut tile, &at, b0, b1),
                        ($v, false) => bcr_tile::<S, $v, false, false, false>(job, &mut tile, &at, b0, b1),
                    )*
                    _ => {}
                }
            };
        }
        tile!(1 2 3 4 5);
    }
}

/// One tile of the plan: `n` positions from flat position `p0`, its vectors `x_step` apart in
/// the flat grid (`LANES` but for stacked rows), stored by `segs` (masked stores) or, when
/// there are none, whole at `p + shift`, vectors `y_step` apart.
struct TileAt<'a> {
    p0: usize,
    n: usize,
    x_step: usize,
    y_step: isize,
    segs: &'a [Seg],
    shift: isize,
    /// The deinterleaved halves' offsets of a pair tile (phase-split target).
    pair: Option<crate::rowgroup::Split>,
    /// A fused residual's shift and, without segments, vector step.
    rshift: isize,
    rstep: isize,
    /// The next tile's first position (its input lines are prefetched).
    next: Option<usize>,
}

/// A band's output tile, contiguous: output rows are often a multiple of 4 KiB apart (a GEMM
/// of 1,024 positions), so a tile kept in place puts every row in one L1 set, and a band of
/// 256 rows thrashed it (GEMM 1024^3 2.0x against 2.4x block row by block row).
/// Sized for the tallest block row (256 rows) at the widest tile (5 AVX-512 vectors), so
/// every band fits it; bands hold [`BAND_BYTES`] but for such block rows. Left uninitialized:
/// each band's rows are first written by their first chunk (or zeroed when none writes them).
#[repr(C, align(64))]
struct BandTile([f32; BAND_TILE_FLOATS]);

/// Floats of a [`BandTile`].
const BAND_TILE_FLOATS: usize = 256 * 80;

/// One tile `V` vectors wide on block rows `b0..b1`, band of block rows by band (a band's tile
/// fits [`BandTile`], in L1): every column block's chunks into the band's tile (a row's first
/// chunk stores, later ones add; rows no chunk writes are zeroed), then the tile to the output
/// with the epilogue (bias, residual, activation) through the plan's stores. `QUAD`: the
/// input is gathered in rows of 4 positions and chunks run [`rmw_quad`] (`V` is 1). `PAIR`:
/// the tile is a phase-split target's deinterleaved pair (`TileAt::pair`; `V` is 1 or 2).
#[inline(always)]
fn bcr_tile<S: Simd, const V: usize, const LOAD_FULL: bool, const QUAD: bool, const PAIR: bool>(
    job: &BcrJob<'_>,
    tile: &mut std::mem::MaybeUninit<BandTile>,
    at: &TileAt<'_>,
    b0: usize,
    b1: usize,
) {
    let m = &job.c.m;
    let ch = &job.c.chunks;
    let l = S::LANES;
    let col_blocks = (ch.ptr.len() - 1) / ch.brows.max(1);
    // Quad tiles hold at most 4 positions: rows of 4 floats, so one band covers 8 times the
    // block rows and the chunks' weights stream in one sequence, not one per band.
    let astride = if QUAD { BCR_RT } else { V * l };
    let band = (BAND_BYTES / (4 * astride * m.br)).max(1);
    let (p0, n) = (at.p0, at.n);
    // SAFETY: rows of b0..b1 are output rows, stored only at the plan's lanes of this tile
    // (inside the output, stride ystride; the residual at the plan's residual shifts and
    // deltas, stride rstride); a band's rows fit the tile (astride floats each; a band is
    // one block row, at most 256 rows x 80 floats, when several would exceed BAND_BYTES);
    // quad rows are read back partially, only their `n` written lanes; offsets stay inside
    // the input for valid positions (layout) and for whole vectors when LOAD_FULL (checked
    // against x_len); chunk rows are rows of these block rows; weights hold `kc` columns of
    // `rt` weights from `w_at` (and 4 more floats: the weights' padding).
    unsafe {
        let xp: [*const f32; V] = std::array::from_fn(|v| job.x.add(p0 + v * at.x_step));
        for s0 in (b0..b1).step_by(band) {
            let s1 = (s0 + band).min(b1);
            let (r0, r1) = (m.block_row_start[s0] as usize, m.block_row_start[s1] as usize);
            let t = tile.as_mut_ptr().cast::<f32>();
            // Each row's first chunk stores into the tile; rows no chunk writes are zeroed.
            let (u0, u1) = (ch.untouched_ptr[s0] as usize, ch.untouched_ptr[s1] as usize);
            for &r in &ch.untouched[u0..u1] {
                std::ptr::write_bytes(t.add((r as usize - r0) * astride), 0, astride);
            }
            let y = t.wrapping_sub(r0 * astride);
            for cb in 0..col_blocks {
                if let Some(next) = at.next.filter(|_| s0 == b0) {
                    // The next tile's input lines of this column block, while this one
                    // computes (rows of a large input, channels apart, missed L2 each).
                    let lines = &ch.prefetch
                        [ch.prefetch_ptr[cb] as usize..ch.prefetch_ptr[cb + 1] as usize];
                    let next = job.x.wrapping_add(next);
                    for &o in lines {
                        crate::simd::prefetch(next.wrapping_add(o as usize));
                    }
                }
                let (c0, c1) =
                    (ch.ptr[cb * ch.brows + s0] as usize, ch.ptr[cb * ch.brows + s1] as usize);
                for c in &ch.chunks[c0..c1] {
                    let offs = &ch.offsets[c.cols_at as usize..(c.cols_at + c.kc) as usize];
                    let rows = ch.rows.as_ptr().add(c.rows_at as usize);
                    let w = ch.weights.as_ptr().add(c.w_at as usize);
                    let f = c.first;
                    if QUAD {
                        rmw_quad::<S>(offs, w, job.x, y, astride, rows, c.rt as usize, f);
                        continue;
                    }
                    match c.rt {
                        1 => rmw::<S, 1, V, LOAD_FULL>(offs, w, &xp, y, astride, rows, n, f),
                        2 => rmw::<S, 2, V, LOAD_FULL>(offs, w, &xp, y, astride, rows, n, f),
                        3 => rmw::<S, 3, V, LOAD_FULL>(offs, w, &xp, y, astride, rows, n, f),
                        _ => rmw::<S, 4, V, LOAD_FULL>(offs, w, &xp, y, astride, rows, n, f),
                    }
                }
            }
            if !QUAD && !PAIR && at.segs.is_empty() {
                // Plain stores: one loop per epilogue combination, nothing decided per row.
                let ep = &job.epilogue;
                let rows = PlainRows {
                    tile: t,
                    astride,
                    rows: r0..r1,
                    y: job.y.0.wrapping_offset(p0 as isize + at.shift),
                    ystride: job.ystride,
                    step: at.y_step,
                    bias: ep.bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                    res: ep.residual.map_or(std::ptr::null(), |r| {
                        r.as_ptr().wrapping_offset(p0 as isize + at.rshift)
                    }),
                    rstride: job.rstride,
                    rstep: at.rstep,
                    clamp: ep.clamp,
                };
                match (ep.bias.is_some(), ep.residual.is_some(), ep.clamp.kind()) {
                    (false, false, 0) => rows.store::<S, V, false, false, 0>(),
                    (false, false, 1) => rows.store::<S, V, false, false, 1>(),
                    (false, false, _) => rows.store::<S, V, false, false, 2>(),
                    (false, true, 0) => rows.store::<S, V, false, true, 0>(),
                    (false, true, 1) => rows.store::<S, V, false, true, 1>(),
                    (false, true, _) => rows.store::<S, V, false, true, 2>(),
                    (true, false, 0) => rows.store::<S, V, true, false, 0>(),
                    (true, false, 1) => rows.store::<S, V, true, false, 1>(),
                    (true, false, _) => rows.store::<S, V, true, false, 2>(),
                    (true, true, 0) => rows.store::<S, V, true, true, 0>(),
                    (true, true, 1) => rows.store::<S, V, true, true, 1>(),
                    (true, true, _) => rows.store::<S, V, true, true, 2>(),
                }
                continue;
            }
            for r in r0..r1 {
                let src = t.add((r - r0) * astride);
                let mut a = [S::zero(); V];
                for (v, av) in a.iter_mut().enumerate() {
                    // A quad row holds its `n` positions only.
                    *av = if QUAD { S::load_partial(src, n) } else { S::load(src.add(v * l)) };
                }
                let offset = (r * job.ystride + p0) as isize + at.shift;
                let out = Out {
                    pair: if PAIR { at.pair } else { None },
                    y: job.y.0.wrapping_offset(offset),
                    stride: job.ystride,
                    n,
                    segs: at.segs,
                    step: at.y_step,
                    rstride: job.rstride,
                    rstep: at.rstep,
                };
                let roffset = (r * job.rstride + p0) as isize + at.rshift;
                // Whole vectors: a tile without segments is stored whole at one shift.
                store_row_fused::<S, V, true>(&out, roffset, r, &a, &job.epilogue);
            }
        }
    }
}

/// A band's tile rows on their way to an output without segments (whole vectors at one
/// shift, `step` apart), with the epilogue: `clamp((sum + bias[row]) + residual)`, each part
/// only with its flag, in the order (and so to the bit) of [`store_row_fused`].
struct PlainRows {
    /// The band's first row in the tile; rows `astride` floats apart.
    tile: *const f32,
    astride: usize,
    /// Output rows of the band.
    rows: std::ops::Range<usize>,
    /// Row 0's first stored vector (rows `ystride` apart).
    y: *mut f32,
    ystride: usize,
    step: isize,
    /// One value per output row, or null.
    bias: *const f32,
    /// The residual's row 0 at the tile's first vector (rows `rstride`, vectors `rstep`
    /// apart), or null.
    res: *const f32,
    rstride: usize,
    rstep: isize,
    clamp: Clamp,
}

impl PlainRows {
    /// # Safety
    /// The tile holds the band's rows (`V` whole vectors each); every stored vector is
    /// writable; with `BIAS` the bias holds every row's value, with `RES` the residual is
    /// readable wherever a vector is stored.
    #[inline(always)]
    unsafe fn store<S: Simd, const V: usize, const BIAS: bool, const RES: bool, const CLAMP: u8>(
        &self,
    ) {
        let l = S::LANES;
        let (lo, hi) = self.clamp.bounds::<S>();
        let mut src = self.tile;
        for r in self.rows.clone() {
            let bv = if BIAS { S::splat(*self.bias.add(r)) } else { S::zero() };
            let yp = self.y.wrapping_add(r * self.ystride);
            let rp = self.res.wrapping_add(r * self.rstride);
            for v in 0..V {
                let x = S::load(src.add(v * l));
                let x = if BIAS { S::add(x, bv) } else { x };
                let x =
                    if RES { S::add(x, S::load(rp.offset(v as isize * self.rstep))) } else { x };
                let x = clamp_as::<S, CLAMP>(x, lo, hi);
                S::store(yp.offset(v as isize * self.step), x);
            }
            src = src.add(self.astride);
        }
    }
}

/// Accumulates `RT` kept rows of one block over its kept columns, `V` vectors of positions
/// (vector `v` read from `x[v]`; loaded whole when `LOAD_FULL`, else the last vector's first
/// `n - (V - 1) * lanes` lanes), and adds into whole vectors of `y`'s rows. `n` must be in
/// `(V - 1) * lanes + 1 ..= V * lanes`. Rows whose bit is set in `first` get the sum stored
/// instead of added (their first write in the band's tile).
///
/// # Safety
/// As the row-group micro-kernel; `rows` holds `RT` rows of `y` (stride `ystride`, `V`
/// vectors writable each), `w` holds `offs.len()` columns of `RT` weights.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rmw<S: Simd, const RT: usize, const V: usize, const LOAD_FULL: bool>(
    offs: &[u32],
    w: *const f32,
    x: &[*const f32; V],
    y: *mut f32,
    ystride: usize,
    rows: *const u32,
    n: usize,
    first: u32,
) {
    let l = S::LANES;
    // Only the last vector may be partial (the caller picks V = ceil(n / lanes)): a
    // loop-invariant count, not a per-vector test inside the column loop.
    let tail = n - (V - 1) * l;
    let mut acc = [[S::zero(); V]; RT];
    let mut wp = w;
    for &off in offs {
        let off = off as usize;
        let mut xv = [S::zero(); V];
        for (v, xvv) in xv.iter_mut().enumerate() {
            *xvv = if LOAD_FULL || v + 1 < V {
                S::load(x[v].add(off))
            } else {
                S::load_partial(x[v].add(off), tail)
            };
        }
        for (rr, a) in acc.iter_mut().enumerate() {
            let wv = S::splat(*wp.add(rr));
            for (av, &xx) in a.iter_mut().zip(&xv) {
                *av = S::fma(wv, xx, *av);
            }
        }
        // Wrapping: after the last entry this points past the weights and is never read.
        wp = wp.wrapping_add(RT);
    }
    for (rr, a) in acc.iter().enumerate() {
        let yp = y.add(*rows.add(rr) as usize * ystride);
        if first & (1 << rr) != 0 {
            for (v, &av) in a.iter().enumerate() {
                S::store(yp.add(v * l), av);
            }
        } else {
            for (v, &av) in a.iter().enumerate() {
                S::store(yp.add(v * l), S::add(S::load(yp.add(v * l)), av));
            }
        }
    }
}

/// [`rmw`] for the quad input ([`BcrInput::Quad`]): a kernel column's gathered row is its
/// (at most 4) positions, broadcast into every quarter of a vector, and its weights are
/// spread one row per quarter ([`Simd::splat_quarters`]), so lane `4 r + p` of the sum is row
/// `r` at position `p` and quarter `r` goes to row `r`'s tile row as it is. On 8 lanes rows
/// 0-1 and 2-3 take a vector each. Two chains alternate columns.
///
/// # Safety
/// As [`rmw`]; `x + off` holds 4 floats for every `off` in `offs`, `w` holds `offs.len()`
/// columns of `rt` weights and 4 floats are readable from the last column's first.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rmw_quad<S: Simd>(
    offs: &[u32],
    w: *const f32,
    x: *const f32,
    y: *mut f32,
    ystride: usize,
    rows: *const u32,
    rt: usize,
    first: u32,
) {
    let l = S::LANES;
    // Rows per vector and vectors per sum (4 x 1 on 16 lanes, 2 x 2 on 8).
    let (per, parts) = (l / 4, 16 / l);
    let mut even = [S::zero(); 2];
    let mut odd = [S::zero(); 2];
    let mut wp = w;
    let mut pairs = offs.chunks_exact(2);
    for o in pairs.by_ref() {
        let (x0, x1) = (S::broadcast4(x.add(o[0] as usize)), S::broadcast4(x.add(o[1] as usize)));
        for h in 0..parts {
            even[h] = S::fma(S::splat_quarters(wp.add(h * per)), x0, even[h]);
            odd[h] = S::fma(S::splat_quarters(wp.add(rt + h * per)), x1, odd[h]);
        }
        // Wrapping: after the last pair this may point past the weights and is not read.
        wp = wp.wrapping_add(2 * rt);
    }
    if let [o] = pairs.remainder() {
        let x0 = S::broadcast4(x.add(*o as usize));
        for (h, e) in even.iter_mut().enumerate().take(parts) {
            *e = S::fma(S::splat_quarters(wp.add(h * per)), x0, *e);
        }
    }
    let row = |r: usize| y.add(*rows.add(r) as usize * ystride);
    for h in 0..parts {
        let sum = S::add(even[h], odd[h]);
        if rt == BCR_RT {
            // Unrolled: each quarter's extract is a constant.
            for q in 0..per {
                let r = h * per + q;
                S::quarter_add(row(r), sum, q, first & (1 << r) != 0);
            }
        } else {
            for q in 0..per.min(rt.saturating_sub(h * per)) {
                let r = h * per + q;
                S::quarter_add(row(r), sum, q, first & (1 << r) != 0);
            }
        }
    }
}

simd_entry! {
    fn bcr_gemv_uniform(m: &BcrCompact, masks: &[u16], kept: (usize, usize), x: &[f32], y: SendPtr, block_rows: &[u32]) => bcr_gemv_uniform_generic;
}

/// [`bcr_gemv_expand_generic`]'s two-columns-per-vector form for blocks that all keep `kr` rows
/// and `kc` columns (`kc` even, `2 * br <= LANES`): block `b`'s kept columns start at `b * kc`
/// and its weights at `b * kr * kc`, so a block row walks its blocks with running pointers
/// and one load mask, where the general form looks up three slices per block (their bounds
/// checks and remainder loops were as many instructions as the FMAs' own).
#[inline(always)]
fn bcr_gemv_uniform_generic<S: Simd>(
    m: &BcrCompact,
    masks: &[u16],
    (kr, kc): (usize, usize),
    x: &[f32],
    y: SendPtr,
    block_rows: &[u32],
) {
    for &brow in block_rows {
        let brow = brow as usize;
        let (r0, r1) = (m.block_row_start[brow] as usize, m.block_row_start[brow + 1] as usize);
        let (b0, b1) = (m.block_ptr[brow] as usize, m.block_ptr[brow + 1] as usize);
        // SAFETY: blocks b0..b1 each hold kc kept columns from b * kc and kr * kc weights from
        // b * kr * kc (`BcrConv::new` took this form only when `balanced` found every block
        // with these counts, and encode stores blocks in order), 2 * kr <= LANES lanes per
        // expand-load (kr <= br); `x` is read at block_col0[b] + a kept column (< cols =
        // x.len(), checked by the caller); rows r0..r1 (<= LANES / 2) of `y` belong to this
        // thread's block rows.
        unsafe {
            let (mut a0, mut a1) = (S::zero(), S::zero());
            let mut wp = m.values.as_ptr().add(b0 * kr * kc);
            let mut cp = m.kept_cols.as_ptr().add(b0 * kc);
            let half_lanes = S::LANES / 2;
            for b in b0..b1 {
                let half = *masks.get_unchecked(b);
                let mask = half | half << half_lanes;
                let xb = x.as_ptr().add(*m.block_col0.get_unchecked(b) as usize);
                let col = |k: usize| *xb.add(*cp.add(k) as usize);
                let mut j = 0;
                while j + 4 <= kc {
                    let x01 = S::splat_halves(col(j), col(j + 1));
                    let x23 = S::splat_halves(col(j + 2), col(j + 3));
                    a0 = S::fma(S::expand_load(wp, mask, 2 * kr), x01, a0);
                    a1 = S::fma(S::expand_load(wp.add(2 * kr), mask, 2 * kr), x23, a1);
                    wp = wp.add(4 * kr);
                    j += 4;
                }
                if j < kc {
                    let x01 = S::splat_halves(col(j), col(j + 1));
                    a0 = S::fma(S::expand_load(wp, mask, 2 * kr), x01, a0);
                    wp = wp.add(2 * kr);
                }
                cp = cp.add(kc);
            }
            let sum = S::fold_halves(S::add(a0, a1));
            S::store_partial(y.0.add(r0), sum, r1 - r0);
        }
    }
}

simd_entry! {
    fn bcr_gemv_expand(m: &BcrCompact, masks: &[u16], x: &[f32], y: SendPtr, block_rows: &[u32]) => bcr_gemv_expand_generic;
}

/// GEMV for blocks of at most `LANES` rows: a block row's outputs are one register (four, to
/// hide the FMA latency), and each kept column's `kr` weights are expand-loaded into the lanes
/// of the block's kept rows (AVX-512 `vexpandps`; a scalar loop elsewhere), times the
/// broadcast input. The weights stream once, compact, which is what a memory-bound GEMV needs;
/// the general kernel below pays a scalar product per kept weight when `kr` is under a vector.
#[inline(always)]
fn bcr_gemv_expand_generic<S: Simd>(
    m: &BcrCompact,
    masks: &[u16],
    x: &[f32],
    y: SendPtr,
    block_rows: &[u32],
) {
    for &brow in block_rows {
        let brow = brow as usize;
        let (r0, r1) = (m.block_row_start[brow] as usize, m.block_row_start[brow + 1] as usize);
        // SAFETY: four accumulators of one vector; `expand_load` reads `kr` weights per column
        // (the column's stored weights), `x` is read at the block's kept columns (< cols =
        // x.len(), checked by the caller), and rows r0..r1 (<= LANES) of `y` belong to this
        // thread's block rows.
        unsafe {
            // Four named accumulators: an array of them is kept on the stack.
            let (mut a0, mut a1, mut a2, mut a3) = (S::zero(), S::zero(), S::zero(), S::zero());
            let blocks = m.block_ptr[brow] as usize..m.block_ptr[brow + 1] as usize;
            if 2 * m.br <= S::LANES {
                // Two columns per vector: the low half of the lanes holds a block row's outputs
                // for one kept column, the high half for the next (consecutive columns'
                // weights are contiguous, so one expand-load takes both).
                for b in blocks {
                    let (kr, kc, w) = m.block(b);
                    let half = masks[b];
                    let mask = half | half << (S::LANES / 2);
                    let nr = kr.len();
                    let xb = x.as_ptr().add(m.block_col0[b] as usize);
                    let mut wp = w.as_ptr();
                    let mut pairs = kc.chunks_exact(4);
                    for c in pairs.by_ref() {
                        let col = |k: usize| *xb.add(c[k] as usize);
                        let x01 = S::splat_halves(col(0), col(1));
                        let x23 = S::splat_halves(col(2), col(3));
                        a0 = S::fma(S::expand_load(wp, mask, 2 * nr), x01, a0);
                        a1 = S::fma(S::expand_load(wp.add(2 * nr), mask, 2 * nr), x23, a1);
                        wp = wp.add(4 * nr);
                    }
                    let mut rest = pairs.remainder().chunks_exact(2);
                    for c in rest.by_ref() {
                        let x01 = S::splat_halves(*xb.add(c[0] as usize), *xb.add(c[1] as usize));
                        a2 = S::fma(S::expand_load(wp, mask, 2 * nr), x01, a2);
                        wp = wp.add(2 * nr);
                    }
                    for &c in rest.remainder() {
                        let x0 = S::splat_halves(*xb.add(c as usize), 0.0);
                        a3 = S::fma(S::expand_load(wp, half, nr), x0, a3);
                    }
                }
                let sum = S::fold_halves(S::add(S::add(a0, a1), S::add(a2, a3)));
                S::store_partial(y.0.add(r0), sum, r1 - r0);
                continue;
            }
            for b in blocks {
                let (kr, kc, w) = m.block(b);
                let mask = masks[b];
                let nr = kr.len();
                let xb = x.as_ptr().add(m.block_col0[b] as usize);
                let mut wp = w.as_ptr();
                let mut cols = kc.chunks_exact(4);
                for c in cols.by_ref() {
                    let col = |k: usize| S::splat(*xb.add(c[k] as usize));
                    a0 = S::fma(S::expand_load(wp, mask, nr), col(0), a0);
                    a1 = S::fma(S::expand_load(wp.add(nr), mask, nr), col(1), a1);
                    a2 = S::fma(S::expand_load(wp.add(2 * nr), mask, nr), col(2), a2);
                    a3 = S::fma(S::expand_load(wp.add(3 * nr), mask, nr), col(3), a3);
                    wp = wp.add(4 * nr);
                }
                for &c in cols.remainder() {
                    a0 = S::fma(S::expand_load(wp, mask, nr), S::splat(*xb.add(c as usize)), a0);
                    wp = wp.add(nr);
                }
            }
            let sum = S::add(S::add(a0, a1), S::add(a2, a3));
            let yp = y.0.add(r0);
            if r1 - r0 == S::LANES {
                S::store(yp, sum);
            } else {
                S::store_partial(yp, sum, r1 - r0);
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

#[cfg(test)]
mod tests {
    use super::{balanced_tiles, tile_plans};
    use crate::conv::{ConvShape, OutputTarget};

    /// 16-lane plans: a row per tile on 32-wide 3x3 maps and two stacked rows on 16-wide
    /// ones (plain stores, no padding column computed), but flat tiles of up to 5 vectors
    /// where the flat grid is the output (1x1: every tile stores plainly anyway) or rows are
    /// neither (8x8, whose flat tiles take masked stores).
    #[test]
    fn wide_plans_tile_rows_only_where_flat_tiles_straddle_them() {
        let plan = |c: usize, hw: usize, k: usize| {
            let shape = ConvShape::conv2d(c, 8, [hw, hw], [k, k], 1, k / 2).unwrap();
            let [plans_8, plans_16] =
                tile_plans(&shape.layout(), &OutputTarget::dense(shape.output()), &None);
            assert!(!plans_8.tiles.is_empty());
            plans_16
        };
        let widths =
            |p: &crate::rowgroup::TilePlan| -> Vec<usize> { p.tiles.iter().map(|t| t.1).collect() };
        let rows = plan(4, 32, 3);
        assert!(widths(&rows).iter().all(|&n| n == 32) && rows.uniform.iter().all(Option::is_some));
        let stacked = plan(4, 16, 3);
        assert!(stacked.steps.iter().all(|&(x, y)| (x, y) == (17, 16)), "{:?}", stacked.steps);
        let one_by_one = plan(4, 56, 1);
        assert_eq!(widths(&one_by_one).iter().max(), Some(&80));
        assert!(one_by_one.uniform.iter().all(Option::is_some));
        let small = plan(4, 8, 3);
        assert!(widths(&small).iter().max().is_some_and(|&n| n > 32));
        assert!(small.uniform.iter().any(Option::is_none));
    }

    /// Tiles cover every position of every run once, in order, never cross a run, hold at
    /// most `vmax` vectors, are as few as that allows, and differ by at most one vector.
    #[test]
    fn balanced_tiles_cover_runs_with_fewest_even_tiles() {
        for lanes in [8, 16] {
            for vmax in 1..=5 {
                for len in [1, 7, 15, 16, 17, 64, 71, 80, 81, 271, 3191] {
                    let runs = [(0, len), (len + 9, len)];
                    let tiles = balanced_tiles(&runs, lanes, vmax);
                    let mut covered = Vec::new();
                    for &(start, rl) in &runs {
                        let mine: Vec<_> =
                            tiles.iter().filter(|t| t.0 >= start && t.0 < start + rl).collect();
                        let vectors: Vec<usize> =
                            mine.iter().map(|t| t.1.div_ceil(lanes)).collect();
                        assert_eq!(mine.len(), len.div_ceil(lanes).div_ceil(vmax), "{len}");
                        assert!(vectors.iter().all(|&v| (1..=vmax).contains(&v)));
                        let (lo, hi) = (vectors.iter().min(), vectors.iter().max());
                        assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "{vectors:?}");
                        for t in mine {
                            assert!(t.0 + t.1 <= start + rl);
                            covered.extend(t.0..t.0 + t.1);
                        }
                    }
                    let want: Vec<usize> = runs.iter().flat_map(|&(s, l)| s..s + l).collect();
                    assert_eq!(covered, want, "lanes {lanes} vmax {vmax} len {len}");
                }
            }
        }
    }
}
