//! FKW (filter-kernel-weight) storage and the pattern convolution kernel (PatDNN).
//!
//! For pattern + connectivity pruned 3x3 convolutions: every kept kernel holds 4 weights in
//! one of the library's patterns. Arrays, as PatDNN describes them:
//! * `reorder[F]`: filters sorted by kept-kernel count, heaviest first (filter kernel reorder:
//!   similar work sits together and threads get balanced shares);
//! * `offset[F + 1]`: first kernel of each reordered filter;
//! * `stride[F][P + 1]`: inside a filter, kernels are grouped by pattern; pattern `p`'s kernels
//!   are `offset[f] + stride[f][p] .. offset[f] + stride[f][p + 1]`;
//! * `index[kernels]`: the input channel of each kernel (`u16`);
//! * `weights[kernels][4]`: the 4 kept weights in the pattern's tap order;
//! * the pattern table (`P` 9-bit masks).
//!
//! Index cost: 2 bytes per kernel (4 weights) against CSR's 4 bytes per weight.
//!
//! Kernel: binding sorts the kernels into one of three execution orders ([`FkwOrder`]) and
//! precomputes, per kernel or per run, the packed-input offsets of its pattern's 4 taps (the
//! pattern specialization: a pattern is 4 offsets fixed at bind time, so one loop serves every
//! pattern with no per-pattern dispatch). Output tiles are up to 3 vectors: 24 positions on
//! AVX2, 48 on AVX-512 (32 for layers of more than 341 filters, whose partial sums would
//! outgrow `ACC_BYTES`).
//! * **Channel-major** (register-level load reuse): kernels in input-channel order, grouped by
//!   pattern. A run of same-pattern kernels on one channel loads the pattern's 4 tap vectors
//!   (x 3) into registers once, and every kernel of the run, whatever its filter, is 4
//!   broadcasts and 12 FMAs plus a read-modify-write of its filter's partial sums in an
//!   L1-resident tile buffer (rows on 128-byte boundaries: aligning that buffer alone measured
//!   1.15-1.3x faster at 8x).
//!   On AVX-512 its **register form** loads all 9 tap vectors of a channel (x 3: 27 of the 32
//!   registers) once for all of the channel's runs, and each run's body is specialized to its
//!   pattern (a jump per run over the 56 candidates, `candidate_arms!`): per channel 27 loads
//!   instead of 12 per run, the taps never reloaded when runs are short. Measured (8x, 1
//!   thread, min of runs, Sapphire Rapids, `--example pattern_min`, us, before -> after with
//!   3-vector tiles): 256@8x8 97-108 -> 85-86, 128@16x16 87-99 -> 77-78, 64@56x56 378-417 ->
//!   298-306; the register form alone at 2 vectors 335-343 on 64@56x56, 4-vector tiles
//!   without it 341-361. Its per-run jump is not what bounds it: a 64@56x56 layer whose
//!   every channel has the same 8 runs of 2 (every branch predictable) ran as fast as a
//!   random one of as many kernels (301-332 against 293-344 us). The filter-major order also
//!   takes 3-vector tiles on AVX-512: ResNet-20 pattern 8x (`bench models`, 1 thread) 0.212
//!   -> 0.190 ms.
//! * **Filter-major**: per block of input channels whose taps fit L1, every filter in turn
//!   with 4 accumulators per vector in registers, each kernel's taps read as FMA memory
//!   operands: one load per FMA but no partial-sum traffic and no per-run loop, which wins when
//!   runs are short (few filters per channel and pattern).
//!
//! Measured (conv3x3 at 8x, 1 thread, min of runs on Zen 3 AVX2, us): 256 channels on 8x8 307
//! with the previous kernel (all 9 taps of a channel in registers, one vector wide, and the
//! run body instantiated per each of the 56 4-tap patterns with a jump table per run) -> 171
//! channel-major; 128 on 16x16 282 -> 188; 64 on 56x56 1030 -> 806; 16 on 32x32 39-58 -> 23
//! filter-major. Measured and rejected: the per-pattern instantiation on top of the 3-vector
//! runs (equal: the jump per run costs what the loaded offsets do); a filter-major order
//! everywhere (load-bound: 258 us on 256@8x8); splitting each row's vectors evenly over its
//! tiles (3 + 2 + 2 instead of 3 + 3 + 1 on 56-wide rows: equal). Earlier, one vector wide: the
//! filter-major loop about 2x slower; a pattern-major order (one dispatch per pattern per
//! tile), 2.6-4.1x against 3.2-4.4x; staging tap rows in L1 and reading each kernel's taps by
//! index, 1.9-2.3x; weight broadcasts by register shuffles, within noise.
//!
//! * **Small-map** (AVX-512, maps of at most 4 output positions, e.g. VGG's 2x2 layers,
//!   where a vector of flat positions holds 6 useful lanes of 16): lane `4 q + j` of a vector
//!   is position `q`'s tap `j`, so one kernel is one FMA: per channel its padded patch (16 or
//!   32 floats) is loaded once, per run it is permuted by the pattern's lane table, and each
//!   kernel multiplies that by its 4 weights repeated (a 16-byte broadcast) into its filter's
//!   partial sums; each quad's sum is an output. 512@2x2 at 8x (min of runs, us): 88-93
//!   channel-major, 173-176 filter-major -> 69-70, 62-63 with 12-byte runs; a filter-major
//!   form of the same lanes (patch loaded and permuted per kernel) ran 78-80.
//!
//! Stores apply the epilogue (bias, residual, activation: [`FkwConv::run_fused`]) and follow
//! the tile plan to NCDHW or to an output target ([`FkwConv::set_output_target`], e.g. the
//! next convolution's padded input, read with [`FkwConv::run_prepacked`]), so plans need no
//! pass over a pattern layer's output and put pattern layers on pre-packed edges: ResNet-20
//! pattern 8x, 1 thread (`bench models`), 1.66-1.73x -> 2.49x end to end, its 16@32x32 layers
//! 43-44 -> 28 us.

#![allow(unsafe_op_in_unsafe_fn)]

use tessera_sparsity::{Layer, LayerGeometry, Mask, PatternLibrary};

use crate::conv::{ConvShape, InputLayout, OutputTarget};
use crate::error::{KernelError, Result};
use crate::formats::{ByteSize, check_lengths, structure_error};
use crate::isa::Isa;
use crate::rowgroup::{
    ConvScratch, Epilogue, Out, Seg, TilePlan, address_residual, check_output, check_output_target,
    check_prepacked, pack_input, readdress_residual, store_row_fused,
};
use crate::simd::{Simd, simd_entry};
use crate::threads::{SendPtr, run_parallel};

/// Calls `$arms!` with every candidate pattern (`tessera_sparsity::all_pattern_candidates`, in its
/// order) as `index => (taps)`: the match arms of [`channel_registers`].
macro_rules! candidate_arms {
    ($arms:ident) => {
        $arms! {
            0 => (0, 1, 2, 4),
            1 => (0, 1, 3, 4),
            2 => (0, 2, 3, 4),
            3 => (1, 2, 3, 4),
            4 => (0, 1, 4, 5),
            5 => (0, 2, 4, 5),
            6 => (1, 2, 4, 5),
            7 => (0, 3, 4, 5),
            8 => (1, 3, 4, 5),
            9 => (2, 3, 4, 5),
            10 => (0, 1, 4, 6),
            11 => (0, 2, 4, 6),
            12 => (1, 2, 4, 6),
            13 => (0, 3, 4, 6),
            14 => (1, 3, 4, 6),
            15 => (2, 3, 4, 6),
            16 => (0, 4, 5, 6),
            17 => (1, 4, 5, 6),
            18 => (2, 4, 5, 6),
            19 => (3, 4, 5, 6),
            20 => (0, 1, 4, 7),
            21 => (0, 2, 4, 7),
            22 => (1, 2, 4, 7),
            23 => (0, 3, 4, 7),
            24 => (1, 3, 4, 7),
            25 => (2, 3, 4, 7),
            26 => (0, 4, 5, 7),
            27 => (1, 4, 5, 7),
            28 => (2, 4, 5, 7),
            29 => (3, 4, 5, 7),
            30 => (0, 4, 6, 7),
            31 => (1, 4, 6, 7),
            32 => (2, 4, 6, 7),
            33 => (3, 4, 6, 7),
            34 => (4, 5, 6, 7),
            35 => (0, 1, 4, 8),
            36 => (0, 2, 4, 8),
            37 => (1, 2, 4, 8),
            38 => (0, 3, 4, 8),
            39 => (1, 3, 4, 8),
            40 => (2, 3, 4, 8),
            41 => (0, 4, 5, 8),
            42 => (1, 4, 5, 8),
            43 => (2, 4, 5, 8),
            44 => (3, 4, 5, 8),
            45 => (0, 4, 6, 8),
            46 => (1, 4, 6, 8),
            47 => (2, 4, 6, 8),
            48 => (3, 4, 6, 8),
            49 => (4, 5, 6, 8),
            50 => (0, 4, 7, 8),
            51 => (1, 4, 7, 8),
            52 => (2, 4, 7, 8),
            53 => (3, 4, 7, 8),
            54 => (4, 5, 7, 8),
            55 => (4, 6, 7, 8),
        }
    };
}

/// Pattern + connectivity weights of a 3x3 convolution.
#[derive(Debug, Clone, PartialEq)]
pub struct Fkw {
    rows: usize,
    in_per_group: usize,
    out_per_group: usize,
    patterns: Vec<u16>,
    reorder: Vec<u32>,
    offset: Vec<u32>,
    stride: Vec<u32>,
    index: Vec<u16>,
    weights: Vec<f32>,
}

fn taps(pattern: u16) -> [usize; 4] {
    let mut out = [0; 4];
    let mut k = 0;
    for t in 0..9 {
        if pattern >> t & 1 == 1 && k < 4 {
            out[k] = t;
            k += 1;
        }
    }
    out
}

impl Fkw {
    /// Encodes a 3x3 convolution whose every kernel is either pruned or one pattern of
    /// `library` (what `pattern:K[+connectivity]` projections produce).
    pub fn encode(
        layer: &Layer,
        weights: &[f32],
        mask: &Mask,
        library: &PatternLibrary,
    ) -> Result<Self> {
        check_lengths(layer, weights, mask)?;
        let LayerGeometry::Conv2d { kh: 3, kw: 3, .. } = layer.geometry else {
            return Err(structure_error(
                layer,
                "FKW".into(),
                "FKW stores 3x3 2-D convolution kernels".into(),
            ));
        };
        let g = &layer.geometry;
        let (rows, ipg) = (g.rows(), g.in_per_group());
        if ipg > u16::MAX as usize + 1 {
            return Err(KernelError::InvalidShape {
                reason: format!("{ipg} input channels exceed u16 indices"),
            });
        }
        let patterns = library.patterns().to_vec();
        let np = patterns.len();
        // Per filter: (pattern id, channel) of every kept kernel.
        let mut kernels: Vec<Vec<(usize, usize)>> = vec![Vec::new(); rows];
        for (r, ks) in kernels.iter_mut().enumerate() {
            for c in 0..ipg {
                let base = (r * ipg + c) * 9;
                let bits = (0..9).fold(0u16, |b, t| b | u16::from(mask.get(base + t)) << t);
                if bits == 0 {
                    continue;
                }
                let Some(p) = patterns.iter().position(|&q| q == bits) else {
                    return Err(structure_error(
                        layer,
                        format!("FKW with library {library}"),
                        format!(
                            "kernel (filter {r}, channel {c}) keeps taps {bits:#05x}, which is not a library pattern"
                        ),
                    ));
                };
                ks.push((p, c));
            }
            ks.sort_unstable();
        }
        let mut reorder: Vec<u32> = (0..rows as u32).collect();
        reorder.sort_by_key(|&r| (std::cmp::Reverse(kernels[r as usize].len()), r));
        let mut out = Fkw {
            rows,
            in_per_group: ipg,
            out_per_group: g.out_per_group(),
            patterns,
            reorder,
            offset: vec![0],
            stride: Vec::with_capacity(rows * (np + 1)),
            index: Vec::new(),
            weights: Vec::new(),
        };
        for &r in &out.reorder {
            let ks = &kernels[r as usize];
            let mut counts = vec![0u32; np + 1];
            for &(p, c) in ks {
                counts[p + 1] += 1;
                out.index.push(c as u16);
                let base = (r as usize * ipg + c) * 9;
                out.weights.extend(taps(out.patterns[p]).iter().map(|&t| weights[base + t]));
            }
            for p in 0..np {
                counts[p + 1] += counts[p];
            }
            out.stride.extend_from_slice(&counts);
            out.offset.push(out.index.len() as u32);
        }
        Ok(out)
    }

    /// Kept kernels.
    pub fn kernels(&self) -> usize {
        self.index.len()
    }

    /// The dense OIHW weight.
    pub fn decode(&self) -> Vec<f32> {
        let np = self.patterns.len();
        let mut out = vec![0.0; self.rows * self.in_per_group * 9];
        for (f, &r) in self.reorder.iter().enumerate() {
            let k0 = self.offset[f] as usize;
            for p in 0..np {
                let t = taps(self.patterns[p]);
                for k in k0 + self.stride[f * (np + 1) + p] as usize
                    ..k0 + self.stride[f * (np + 1) + p + 1] as usize
                {
                    let base = (r as usize * self.in_per_group + self.index[k] as usize) * 9;
                    for (j, &tap) in t.iter().enumerate() {
                        out[base + tap] = self.weights[4 * k + j];
                    }
                }
            }
        }
        out
    }

    /// Size: values; `u16` channel per kernel; `u32` reorder, offsets and per-pattern strides;
    /// the pattern table.
    pub fn bytes(&self) -> ByteSize {
        ByteSize {
            values: 4 * self.weights.len(),
            index: 2 * self.index.len()
                + 4 * (self.reorder.len() + self.offset.len() + self.stride.len())
                + 2 * self.patterns.len(),
        }
    }

    /// Binds the weights to a 3x3 convolution.
    pub fn bind(self, shape: ConvShape) -> Result<FkwConv> {
        FkwConv::new(self, shape)
    }
}

/// How [`FkwConv`] orders its work on a tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FkwOrder {
    /// Input channel by input channel: every run of same-pattern kernels on a channel loads
    /// the pattern's 4 tap vectors once and adds each kernel into its filter's partial sums
    /// (an L1 buffer, one read-modify-write per vector). Best when runs are long (many
    /// filters per channel and pattern).
    ChannelMajor,
    /// Filter by filter over blocks of input channels whose taps stay in L1: 4 accumulators
    /// per vector stay in registers and each kernel's taps are FMA memory operands. No
    /// partial-sum traffic and one loop per filter, but one load per FMA: best when runs are
    /// short.
    FilterMajor,
    /// For maps of at most 4 output positions whose every tap of every position lies within
    /// 32 floats of its channel's start in the packed input (a 2x2 map with padding 1: a 4x4
    /// patch); chosen on 16-lane machines. The channel-major runs, where a run's vector has
    /// lane `4 q + j` = output position `q`'s tap `j` (its channel's patch permuted by the
    /// pattern's lane table), and each kernel is one FMA of that vector by its 4 weights
    /// repeated (one 16-byte broadcast) into its filter's partial sums; the sums of each group
    /// of 4 lanes are the outputs. The other orders fill a vector with the map's flat
    /// positions: 6 of 16 lanes on a 2x2 map.
    SmallMap,
}

/// Output positions of a [`FkwOrder::SmallMap`] layer at most: 4 lanes per position.
const SMALL_MAP_POSITIONS: usize = 4;

/// Floats per filter of the small-map order's partial sums (one 16-lane vector).
const SMALL_MAP_STRIDE: usize = 16;

/// Shortest mean run (kept kernels per input channel and pattern) that takes
/// [`FkwOrder::ChannelMajor`] even when the filter-major order would need one channel block
/// only (with more blocks, its per-filter-and-block overhead loses anyway). On AVX-512 the
/// register form of the channel-major order timed alone beat the filter-major order at every
/// run length (Sapphire Rapids, 8x, min of runs, us: 16@32x32 11.1-11.8 against 11.6,
/// 32@16x16 7.8 against 9.7, 64@8x8 7.5 against 11.3), but inside ResNet-20 (`bench models`,
/// pattern 8x, 1 thread) the same rule made the whole model slower, 0.190 -> 0.219-0.229 ms
/// (its 64@8x8 layers 9.7-10.3 -> 12.6-14.3 us), so the threshold holds there too. Measured
/// at 8x on Zen 3 (1 thread, min of runs, us, channel-major / filter-major): 256 filters on 8x8 (mean
/// run 9) 171 / 258; 128 on 16x16 (4.5) 188 / 248; 64 on 56x56 (2.2, 3 blocks) 806 / 919; 64
/// on 32x32 (2 blocks) 273 / 285; 64 on 16x16 (2 blocks) 64 / 67; 64 on 8x8 (1 block) 24.6 /
/// 18.3; 48 on 16x16 (1.7) 41 / 37; 32 on 32x32 (1.1) 94 / 74; 32 on 16x16 23 / 18; 16 on
/// 32x32 (0.6) 28.5 / 23.
const CHANNEL_MAJOR_RUN: f64 = 3.0;

/// Bytes of input one channel block may span at the widest tile: the block's taps stay in L1
/// (32 KiB on Zen 3) beside the kernel stream while every filter of the block reads them.
/// (8 and 64 KiB measured 0-10% slower or the same.)
const BLOCK_INPUT_BYTES: usize = 16 * 1024;

/// Bytes of partial sums (filters x widest tile) beyond which AVX-512 tiles are 2 vectors
/// wide, not 3: at 512 filters a 48-position buffer is 96 KiB (512@4x4, 8x: 137-151 us at 2
/// vectors, 149-170 at 3 with the wider buffer).
const ACC_BYTES: usize = 64 * 1024;

/// Vectors per AVX-512 tile for `rows` filters (see [`ACC_BYTES`]).
fn vectors16(rows: usize) -> usize {
    if rows * 48 * 4 <= ACC_BYTES { 3 } else { 2 }
}

/// Floats per row of the partial-sum buffer for `rows` filters: the widest tile at either
/// width (3 x 8 lanes, or [`vectors16`] x 16), rows on cache-line boundaries.
fn acc_stride(rows: usize) -> usize {
    16 * vectors16(rows)
}

/// Tiles of positions per thread below which [`FkwConv::run`] uses fewer threads (every
/// thread streams all the weights for its share of tiles). It was 8 when one thread packed
/// the input and the others read it from that core's cache: on Zen 3 (1 -> 2 threads, 8x)
/// 256@8x8 (8 tiles) went 163 -> 191 us then. With the input packed by the threads that read
/// it, one tile per thread pays on 2-vCPU Zen 4 (`cargo xtask bench kernels --only conv3x3
/// --threads 2`, 8x, runs alternated): AVX-512 128@16x16 (6 tiles) 110-116 -> 74-75 us,
/// 256@8x8 (2 tiles) 124-126 -> 96-114; AVX2 256@8x8 142-146 -> 115-116.
pub const MIN_TILES_PER_THREAD: usize = 1;

/// A run of kernels on one input channel sharing a pattern: its kernels and its pattern (12
/// bytes: with per-run tap offsets, 28, the run stream was as large as the weights' on short
/// runs, and inside a model both stream from L3).
#[derive(Debug, Clone)]
struct Run {
    start: u32,
    end: u32,
    /// The run's pattern among the candidates (`tessera_sparsity::all_pattern_candidates`, every
    /// 4-tap pattern with the centre), or `u8::MAX` for one outside them.
    candidate: u8,
    /// The run's pattern in the library (at most 56 patterns).
    pattern: u8,
}

/// The runs of one input channel in the channel-major order: the channel's offset in the
/// packed input and its runs `start..end`.
#[derive(Debug, Clone, Copy)]
struct ChannelRuns {
    base: u32,
    start: u32,
    end: u32,
}

/// The channel-major order: runs in channel order; per kernel its output row and 4 weights.
#[derive(Debug, Clone)]
struct ChannelMajorRuns {
    runs: Vec<Run>,
    /// Per kernel its output row (filters fit `u16`: checked at bind).
    k_row: Vec<u16>,
    k_w: Vec<[f32; 4]>,
    /// Per library pattern, its 4 taps' packed-input offsets from a channel's base.
    pattern_offsets: Vec<[u32; 4]>,
    /// Runs per channel, for the register form that loads a channel's 9 taps once.
    channels: Vec<ChannelRuns>,
    /// Packed-input offsets of the 9 taps from a channel's base.
    taps9: [u32; 9],
    /// Every run's pattern is a candidate (the register form handles it).
    all_candidates: bool,
}

/// The small-map order ([`FkwOrder::SmallMap`]): the channel-major runs, each run's
/// permuted patch shared by its kernels.
#[derive(Debug, Clone)]
struct SmallMapRuns {
    cm: ChannelMajorRuns,
    /// Per library pattern: lane `4 q + j` reads the channel's patch at this offset (position
    /// `q`'s tap `j`; 0 for lanes past the last position).
    lanes: Vec<[u32; 16]>,
    /// Lanes of real positions (`4 q + j` for `q` below the position count).
    lane_mask: u16,
    /// Flat positions of the outputs.
    positions: Vec<usize>,
    /// Whether a patch spans two vectors (32 floats) rather than one.
    two: bool,
}

/// The kernels in execution order.
#[derive(Debug, Clone)]
enum Schedule {
    /// See [`SmallMapRuns`].
    SmallMap(SmallMapRuns),
    /// See [`ChannelMajorRuns`].
    ChannelMajor(ChannelMajorRuns),
    /// Kernels of channel block `b` and output row `r` are `ptr[b * rows + r] ..
    /// ptr[b * rows + r + 1]`; per kernel its 4 tap offsets (channel included) and weights.
    FilterMajor { blocks: usize, ptr: Vec<u32>, k_off: Vec<[u32; 4]>, k_w: Vec<[f32; 4]> },
}

/// An [`Fkw`] bound to a convolution, in the execution order of its [`FkwOrder`].
#[derive(Debug, Clone)]
pub struct FkwConv {
    f: Fkw,
    shape: ConvShape,
    layout: InputLayout,
    schedule: Schedule,
    /// Where outputs go (NCDHW unless retargeted).
    target: OutputTarget,
    /// Tiles of up to 3 x 8 lanes and 3 (or 2, see [`ACC_BYTES`]) x 16 lanes, and where
    /// their lanes are stored.
    plans: [TilePlan; 2],
    /// Where a fused residual is read, when not laid out as the output (see
    /// [`FkwConv::set_residual_layout`]).
    residual: Option<OutputTarget>,
}

/// The tile plans of a layout storing to `target`.
fn fkw_plans(layout: &InputLayout, target: &OutputTarget, rows: usize) -> [TilePlan; 2] {
    [8, 16].map(|l| TilePlan::with_vectors_to(layout, l, max_vectors(l, rows), target))
}

/// Most vectors per tile at `lanes` for `rows` filters: 4 tap registers per vector in the
/// channel-major order (12 of 16 AVX2 registers at 3; on AVX-512 a channel's 9 taps, 27 of 32
/// registers at 3), 4 accumulators per vector in the filter-major one.
fn max_vectors(lanes: usize, rows: usize) -> usize {
    if lanes == 16 { vectors16(rows) } else { 3 }
}

/// The flat positions of a layout's outputs and whether a patch spans two vectors, when
/// [`FkwOrder::SmallMap`] can run it: at most [`SMALL_MAP_POSITIONS`] outputs, a packed input,
/// every tap of every output within 32 floats of its channel's start, and that many floats
/// readable from the last channel's start.
fn small_map_positions(
    layout: &InputLayout,
    tap_offsets: &[usize; 9],
    channel_stride: usize,
    channels: usize,
) -> Option<(Vec<usize>, bool)> {
    if layout.in_place() {
        return None;
    }
    let positions: Vec<usize> =
        (0..layout.flat_len()).filter(|&p| layout.flat_coords(p).is_some()).collect();
    if positions.is_empty() || positions.len() > SMALL_MAP_POSITIONS {
        return None;
    }
    // (Strided layouts split taps over phase planes: tap 8 is not always the farthest.)
    let farthest = tap_offsets.iter().max().copied().unwrap_or(0);
    let span = positions.iter().map(|p| p + farthest).max().unwrap_or(0) + 1;
    let read = if span <= 16 { 16 } else { 32 };
    let readable = channels.saturating_sub(1) * channel_stride + read <= layout.packed_len();
    (span <= 32 && readable).then_some((positions, read == 32))
}

/// The channel-major schedule of `items` (sorted by channel, pattern, row).
fn channel_major(
    items: &[Item],
    patterns: &[u16],
    channel_stride: usize,
    tap_offsets: [usize; 9],
) -> ChannelMajorRuns {
    let candidates = tessera_sparsity::all_pattern_candidates();
    let candidate_of: Vec<u8> = patterns
        .iter()
        .map(|p| candidates.iter().position(|c| c == p).map_or(u8::MAX, |i| i as u8))
        .collect();
    let mut runs: Vec<Run> = Vec::new();
    let mut channels: Vec<ChannelRuns> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        match runs.last_mut() {
            Some(r) if i > 0 && (items[i - 1].0, items[i - 1].1) == (it.0, it.1) => r.end += 1,
            _ => runs.push(Run {
                start: i as u32,
                end: i as u32 + 1,
                candidate: candidate_of[it.1],
                pattern: it.1 as u8,
            }),
        }
        let run = runs.len() as u32;
        match channels.last_mut() {
            Some(c) if i > 0 && items[i - 1].0 == it.0 => c.end = run,
            _ => channels.push(ChannelRuns {
                base: (it.0 * channel_stride) as u32,
                start: run - 1,
                end: run,
            }),
        }
    }
    ChannelMajorRuns {
        all_candidates: runs.iter().all(|r| r.candidate != u8::MAX),
        runs,
        k_row: items.iter().map(|it| it.2 as u16).collect(),
        k_w: items.iter().map(|it| it.4).collect(),
        pattern_offsets: patterns.iter().map(|&p| taps(p).map(|t| tap_offsets[t] as u32)).collect(),
        channels,
        taps9: tap_offsets.map(|t| t as u32),
    }
}

/// Every kernel of `f` as (channel over all groups, pattern, output row, tap offsets,
/// weights), in the FKW order.
type Item = (usize, usize, u32, [u32; 4], [f32; 4]);

impl FkwConv {
    /// Binds `f` to `shape`, which must be a 3x3 2-D convolution of matching channels, in the
    /// order its mean run length favours (see [`FkwOrder`]).
    pub fn new(f: Fkw, shape: ConvShape) -> Result<Self> {
        Self::with_order(f, shape, None)
    }

    /// [`FkwConv::new`] in a given order (`None`: chosen by mean run length and channel
    /// blocks).
    pub fn with_order(f: Fkw, shape: ConvShape, order: Option<FkwOrder>) -> Result<Self> {
        if shape.kernel != [1, 3, 3]
            || !shape.is_2d()
            || f.rows != shape.out_channels
            || f.in_per_group != shape.in_per_group()
        {
            return Err(KernelError::InvalidShape {
                reason: format!(
                    "FKW weights of {} filters x {} channels do not fit {shape:?}",
                    f.rows, f.in_per_group
                ),
            });
        }
        if f.rows > u16::MAX as usize + 1 {
            return Err(KernelError::InvalidShape {
                reason: format!("{} filters exceed the kernels' u16 row indices", f.rows),
            });
        }
        if let Some(p) = f.patterns.iter().find(|p| p.count_ones() != 4) {
            return Err(KernelError::InvalidShape {
                reason: format!("FKW pattern {p:#05x} does not keep 4 taps"),
            });
        }
        let layout = shape.layout();
        let tap_offsets: [usize; 9] = std::array::from_fn(|t| layout.offset(0, [0, t / 3, t % 3]));
        let channel_stride = layout.channel_stride();
        if shape.in_channels * channel_stride + tap_offsets[8] > u32::MAX as usize {
            return Err(KernelError::InvalidShape {
                reason: format!("{shape:?}: packed input exceeds u32 offsets"),
            });
        }
        let np = f.patterns.len();
        let pattern_taps: Vec<[usize; 4]> = f.patterns.iter().map(|&p| taps(p)).collect();
        let mut items: Vec<Item> = Vec::with_capacity(f.index.len());
        for (fi, &row) in f.reorder.iter().enumerate() {
            let group_base = (row as usize / f.out_per_group) * f.in_per_group;
            let k0 = f.offset[fi] as usize;
            for (p, t) in pattern_taps.iter().enumerate() {
                for k in k0 + f.stride[fi * (np + 1) + p] as usize
                    ..k0 + f.stride[fi * (np + 1) + p + 1] as usize
                {
                    let ch = group_base + f.index[k] as usize;
                    let off = t.map(|t| (ch * channel_stride + tap_offsets[t]) as u32);
                    let w = std::array::from_fn(|j| f.weights[4 * k + j]);
                    items.push((ch, p, row, off, w));
                }
            }
        }
        items.sort_by_key(|it| (it.0, it.1, it.2));
        let run_count = items.windows(2).filter(|w| (w[0].0, w[0].1) != (w[1].0, w[1].1)).count()
            + usize::from(!items.is_empty());
        // Channel blocks of the filter-major order: as many channels as keep the widest
        // tile's taps within budget, balanced.
        let span = 4 * (tap_offsets[8] + acc_stride(f.rows));
        let per_block = (BLOCK_INPUT_BYTES / span).max(1);
        let blocks = shape.in_channels.div_ceil(per_block).max(1);
        let per_block = shape.in_channels.div_ceil(blocks);
        let long_runs = items.len() as f64 >= CHANNEL_MAJOR_RUN * run_count.max(1) as f64;
        let small_map =
            small_map_positions(&layout, &tap_offsets, channel_stride, shape.in_channels);
        let order = order.unwrap_or(if small_map.is_some() && Isa::detect().lanes() == 16 {
            FkwOrder::SmallMap
        } else if long_runs || blocks > 1 {
            FkwOrder::ChannelMajor
        } else {
            FkwOrder::FilterMajor
        });
        let schedule = match order {
            FkwOrder::SmallMap => {
                let Some((positions, two)) = small_map else {
                    return Err(KernelError::InvalidShape {
                        reason: format!(
                            "{shape:?}: the small-map order needs at most {SMALL_MAP_POSITIONS} output positions whose taps lie within 32 floats of their channel's start"
                        ),
                    });
                };
                let lanes = pattern_taps
                    .iter()
                    .map(|t| {
                        std::array::from_fn(|lane| {
                            let (q, j) = (lane / 4, lane % 4);
                            positions.get(q).map_or(0, |&p| (tap_offsets[t[j]] + p) as u32)
                        })
                    })
                    .collect();
                Schedule::SmallMap(SmallMapRuns {
                    cm: channel_major(&items, &f.patterns, channel_stride, tap_offsets),
                    lanes,
                    lane_mask: ((1u32 << (4 * positions.len())) - 1) as u16,
                    positions,
                    two,
                })
            }
            FkwOrder::ChannelMajor => Schedule::ChannelMajor(channel_major(
                &items,
                &f.patterns,
                channel_stride,
                tap_offsets,
            )),
            FkwOrder::FilterMajor => {
                items.sort_by_key(|it| (it.0 / per_block, it.2, it.0));
                let rows = f.rows;
                let mut ptr = vec![0u32; blocks * rows + 1];
                for it in &items {
                    ptr[it.0 / per_block * rows + it.2 as usize + 1] += 1;
                }
                for i in 0..blocks * rows {
                    ptr[i + 1] += ptr[i];
                }
                Schedule::FilterMajor {
                    blocks,
                    ptr,
                    k_off: items.iter().map(|it| it.3).collect(),
                    k_w: items.iter().map(|it| it.4).collect(),
                }
            }
        };
        let target = OutputTarget::dense(shape.output());
        let plans = fkw_plans(&layout, &target, f.rows);
        Ok(FkwConv { f, shape, layout, schedule, target, plans, residual: None })
    }

    /// Stores outputs to `target` from now on (e.g. the next convolution's
    /// [`InputLayout::as_target`]); its extent must be this convolution's output.
    pub fn set_output_target(&mut self, target: OutputTarget) -> Result<()> {
        check_output_target(&target, self.shape.output())?;
        let mut plans = fkw_plans(&self.layout, &target, self.f.rows);
        if let Some(residual) = &self.residual {
            address_residual(&mut plans, &self.layout, residual)?;
        }
        self.plans = plans;
        self.target = target;
        Ok(())
    }

    /// Reads a fused residual laid out as `layout` (`None`: as the output) from now on; as
    /// [`crate::RowGroupConv::set_residual_layout`].
    pub fn set_residual_layout(&mut self, layout: Option<OutputTarget>) -> Result<()> {
        let output = self.shape.output();
        let (plans, residual) = (&mut self.plans, &mut self.residual);
        readdress_residual(plans, &self.layout, output, &self.target, residual, layout)
    }

    /// Where a fused residual is read from (the output target unless
    /// [`FkwConv::set_residual_layout`] set another).
    pub fn residual_layout(&self) -> &OutputTarget {
        self.residual.as_ref().unwrap_or(&self.target)
    }

    /// Where outputs are stored.
    pub fn output_target(&self) -> &OutputTarget {
        &self.target
    }

    /// The input layout (packed by [`FkwConv::run`], or written by a producer through
    /// [`InputLayout::as_target`] for [`FkwConv::run_prepacked`]).
    pub fn layout(&self) -> &InputLayout {
        &self.layout
    }

    /// The convolution.
    pub fn shape(&self) -> &ConvShape {
        &self.shape
    }

    /// The weights.
    pub fn weights(&self) -> &Fkw {
        &self.f
    }

    /// The execution order.
    pub fn order(&self) -> FkwOrder {
        match self.schedule {
            Schedule::ChannelMajor(_) => FkwOrder::ChannelMajor,
            Schedule::SmallMap(_) => FkwOrder::SmallMap,
            Schedule::FilterMajor { .. } => FkwOrder::FilterMajor,
        }
    }

    /// Input-channel blocks of the filter-major order (None for channel-major): each tile
    /// computes every filter on one block before the next, so the block's input stays in L1.
    pub fn channel_blocks(&self) -> Option<usize> {
        match self.schedule {
            Schedule::FilterMajor { blocks, .. } => Some(blocks),
            Schedule::ChannelMajor(_) | Schedule::SmallMap(_) => None,
        }
    }

    /// Floats of partial-sum buffer one thread needs (none for one filter-major block).
    fn acc_len(&self) -> usize {
        match self.schedule {
            Schedule::FilterMajor { blocks: 1, .. } => 0,
            Schedule::SmallMap(_) => self.f.rows * SMALL_MAP_STRIDE,
            _ => self.f.rows * acc_stride(self.f.rows),
        }
    }

    /// Scratch for [`FkwConv::run`] with up to `threads` threads: the packed input and one
    /// partial-sum buffer per thread.
    pub fn scratch_for(&self, threads: usize) -> ConvScratch {
        ConvScratch::with_lengths((self.layout.packed_len(), threads.max(1) * self.acc_len()))
    }

    /// Scratch for up to two threads.
    pub fn scratch(&self) -> ConvScratch {
        self.scratch_for(2)
    }

    /// Runs the convolution on one sample, on up to `threads` threads: one per
    /// [`MIN_TILES_PER_THREAD`] tiles of positions.
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

    /// [`FkwConv::run`], applying `epilogue` (bias, residual, activation) to each output as
    /// it is stored: no pass over the output after the kernel.
    pub fn run_fused(
        &self,
        isa: Isa,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut ConvScratch,
        threads: usize,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        // Packed by the threads that then read it: packed on two and read by one, half the
        // input crosses between cores (256@8x8, 8x: 121 -> 138 us on Zen 4).
        let packing = self.threads_used(isa, threads);
        let (x, acc) = pack_input(&self.layout, &self.shape, isa, input, scratch, packing)?;
        self.execute_on(isa, x, output, acc, threads, epilogue)
    }

    /// The threads [`FkwConv::run`] computes on when given `threads`: at most one per
    /// [`MIN_TILES_PER_THREAD`] tiles of the plan for `isa`.
    fn threads_used(&self, isa: Isa, threads: usize) -> usize {
        let n_tiles = self.plans[usize::from(isa.lanes() == 16)].tiles.len();
        threads.max(1).min((n_tiles / MIN_TILES_PER_THREAD).max(1))
    }

    /// [`FkwConv::run_fused`] on an input already in this convolution's packed layout
    /// (`layout().packed_len()` floats, padding zero), as a producer retargeted to
    /// `layout().as_target()` writes it: no packing.
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
        let (_, acc) = scratch.parts();
        self.execute_on(isa, packed, output, acc, threads, epilogue)
    }

    fn execute_on(
        &self,
        isa: Isa,
        x: &[f32],
        output: &mut [f32],
        acc: &mut [f32],
        threads: usize,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        let s = &self.shape;
        let threads = threads.max(1);
        check_output(
            &self.target,
            self.residual.as_ref(),
            s.out_channels,
            output.len(),
            &epilogue,
        )?;
        // The scratch starts on a 64-byte boundary and rows are 128 bytes, so every
        // read-modify-write of a partial-sum row touches whole cache lines.
        if acc.len() < threads * self.acc_len() {
            return Err(KernelError::BufferLength {
                what: "FKW partial-sum scratch",
                expected: threads * self.acc_len(),
                found: acc.len(),
            });
        }
        let plan = &self.plans[usize::from(isa.lanes() == 16)];
        let job = FkwJob {
            c: self,
            x: x.as_ptr(),
            y: SendPtr(output.as_mut_ptr()),
            ystride: self.target.channel_stride,
            rstride: self.residual_layout().channel_stride,
            plan,
            // (The plain flat stores read the residual alike: not with a layout of its own.)
            direct: self.layout.flat_is_output()
                && self.target == OutputTarget::dense(s.output())
                && self.residual.is_none(),
            acc: SendPtr(acc.as_mut_ptr()),
            epilogue,
        };
        let n_tiles = plan.tiles.len();
        let threads = self.threads_used(isa, threads);
        let chunk = n_tiles.div_ceil(threads);
        run_parallel(threads, |t| {
            fkw_tiles(isa, &job, t, (t * chunk).min(n_tiles), ((t + 1) * chunk).min(n_tiles))
        });
        Ok(())
    }
}

struct FkwJob<'a> {
    c: &'a FkwConv,
    x: *const f32,
    y: SendPtr,
    ystride: usize,
    /// Distance between a fused residual's rows.
    rstride: usize,
    plan: &'a TilePlan,
    direct: bool,
    acc: SendPtr,
    /// Applied to every output as it is stored.
    epilogue: Epilogue<'a>,
}

// SAFETY: `x` is only read; each thread writes disjoint positions of `y` and its own part of
// `acc`.
unsafe impl Sync for FkwJob<'_> {}

simd_entry! {
    fn fkw_tiles(job: &FkwJob<'_>, thread: usize, t0: usize, t1: usize) => fkw_tiles_generic;
}

/// Tiles `t0..t1`, each at the fewest vectors that hold its positions.
#[inline(always)]
fn fkw_tiles_generic<S: Simd>(job: &FkwJob<'_>, thread: usize, t0: usize, t1: usize) {
    // SAFETY: thread `thread` owns acc[thread * acc_len ..][.. acc_len] (checked in run).
    let acc = unsafe { job.acc.0.add(thread * job.c.acc_len()) };
    let l = S::LANES;
    // A packed input has slack after its last channel, so a partial tile may load whole
    // vectors (its discarded lanes are never stored); an input read in place may not.
    let over_read = !job.c.layout.in_place();
    for ti in t0..t1 {
        let n = job.plan.tiles[ti].1;
        let (vectors, full) = (n.div_ceil(l), n.is_multiple_of(l));
        // Plans have tiles of at most 3 vectors (see `max_vectors`).
        match (vectors.min(3), full, over_read) {
            (1, true, _) => fkw_tile::<S, 1, true, true>(job, acc, ti),
            (1, false, true) => fkw_tile::<S, 1, true, false>(job, acc, ti),
            (1, false, false) => fkw_tile::<S, 1, false, false>(job, acc, ti),
            (2, true, _) => fkw_tile::<S, 2, true, true>(job, acc, ti),
            (2, false, true) => fkw_tile::<S, 2, true, false>(job, acc, ti),
            (2, false, false) => fkw_tile::<S, 2, false, false>(job, acc, ti),
            (_, true, _) => fkw_tile::<S, 3, true, true>(job, acc, ti),
            (_, false, true) => fkw_tile::<S, 3, true, false>(job, acc, ti),
            (_, false, false) => fkw_tile::<S, 3, false, false>(job, acc, ti),
        }
    }
}

/// Tile `ti`, `V` vectors wide (`FULL`: every lane a position; `LOAD_FULL`: whole vectors
/// may be loaded), in the conv's order.
#[inline(always)]
fn fkw_tile<S: Simd, const V: usize, const LOAD_FULL: bool, const FULL: bool>(
    job: &FkwJob<'_>,
    acc: *mut f32,
    ti: usize,
) {
    let c = job.c;
    let l = S::LANES;
    let rows = c.f.rows;
    let plan = job.plan;
    let stride = acc_stride(rows);
    let (p0, n) = plan.tiles[ti];
    let segs: &[Seg] = if job.direct {
        &[]
    } else {
        &plan.segs[plan.seg_ptr[ti] as usize..plan.seg_ptr[ti + 1] as usize]
    };
    // Row `r` to the output with the epilogue. A macro, not a closure: a closure is compiled
    // without the caller's target features, and its intrinsics would not inline (2.7x slower
    // on a 16@32x32 layer with the epilogue).
    macro_rules! store {
        ($r:expr, $s:expr) => {{
            let offset = ($r * job.ystride + p0) as isize;
            // Segments read the residual at their `rdelta` from the row's start there.
            let out = Out {
                pair: None,
                y: job.y.0.wrapping_offset(offset),
                stride: 0,
                n,
                segs,
                step: l as isize,
                rstride: 0,
                rstep: l as isize,
            };
            let roffset = ($r * job.rstride + p0) as isize;
            store_row_fused::<S, V, FULL>(&out, roffset, $r, $s, &job.epilogue)
        }};
    }
    // SAFETY: tap offsets address the packed input of the tile's positions (whole vectors
    // when LOAD_FULL: the packed input has slack after its last channel); `acc` holds rows x
    // acc_stride(rows) floats unless the schedule is one filter-major block; the tile plan stores
    // only each row's output positions of this tile.
    unsafe {
        let x = job.x.add(p0);
        match &c.schedule {
            Schedule::SmallMap(sm) => {
                // Lane `p - p0` of the tile takes the sum of position `p`'s 4 lanes.
                let mut place = [0u32; 16];
                let mut place_mask = 0u16;
                for (q, &p) in sm.positions.iter().enumerate() {
                    if p >= p0 && p - p0 < n.min(16) {
                        place[p - p0] = 4 * q as u32;
                        place_mask |= 1 << (p - p0);
                    }
                }
                std::ptr::write_bytes(acc, 0, rows * SMALL_MAP_STRIDE);
                if S::LANES == 16 && V == 1 {
                    if sm.two {
                        small_map_runs::<S, true>(sm, job.x, acc);
                    } else {
                        small_map_runs::<S, false>(sm, job.x, acc);
                    }
                } else {
                    small_map_runs_lanes(sm, job.x, acc);
                }
                for r in 0..rows {
                    let mut s = [S::zero(); V];
                    let a = acc.add(r * SMALL_MAP_STRIDE);
                    if S::LANES == 16 && V == 1 {
                        let sums = S::sum_quads(S::load(a));
                        s[0] = S::permute_maskz(sums, &place, place_mask);
                    } else {
                        // Lane by lane: position q's sum is at lane 4 q.
                        let mut out = [0.0f32; 48];
                        for (q, &p) in sm.positions.iter().enumerate() {
                            if p >= p0 && p - p0 < n.min(V * l) {
                                out[p - p0] = *a.add(4 * q);
                            }
                        }
                        for (v, sv) in s.iter_mut().enumerate() {
                            *sv = S::load(out.as_ptr().add(v * l));
                        }
                    }
                    store!(r, &s);
                }
            }
            Schedule::ChannelMajor(cm) => {
                for r in 0..rows {
                    std::ptr::write_bytes(acc.add(r * stride), 0, V * l);
                }
                let ChannelMajorRuns { runs, k_row, k_w, channels, pattern_offsets, .. } = cm;
                if S::LANES == 16 && V >= 2 && LOAD_FULL && cm.all_candidates {
                    channel_registers::<S, V>(x, cm, acc, stride);
                } else {
                    for ch in channels {
                        for run in &runs[ch.start as usize..ch.end as usize] {
                            let (k0, k1) = (run.start as usize, run.end as usize);
                            let off = pattern_offsets[run.pattern as usize].map(|o| ch.base + o);
                            let taps = load_taps::<S, V, LOAD_FULL>(x, n, &off);
                            add_run::<S, V>(&taps, &k_row[k0..k1], &k_w[k0..k1], acc, stride);
                        }
                    }
                }
                for r in 0..rows {
                    let mut s = [S::zero(); V];
                    for (v, sv) in s.iter_mut().enumerate() {
                        *sv = S::load(acc.add(r * stride + v * l));
                    }
                    store!(r, &s);
                }
            }
            Schedule::FilterMajor { blocks, ptr, k_off, k_w } => {
                for b in 0..*blocks {
                    let last = b + 1 == *blocks;
                    for r in 0..rows {
                        let (k0, k1) = (ptr[b * rows + r] as usize, ptr[b * rows + r + 1] as usize);
                        let mut s =
                            filter_block::<S, V, LOAD_FULL>(x, n, &k_off[k0..k1], &k_w[k0..k1]);
                        let a = acc.add(r * stride);
                        if b > 0 {
                            for (v, sv) in s.iter_mut().enumerate() {
                                *sv = S::add(*sv, S::load(a.add(v * l)));
                            }
                        }
                        if last {
                            store!(r, &s);
                        } else {
                            for (v, &sv) in s.iter().enumerate() {
                                S::store(a.add(v * l), sv);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One vector of `n` positions at `p` (`n >= LANES` or `LOAD_FULL`: a whole vector).
///
/// # Safety
/// `p` is readable for `min(n, LANES)` floats (`LANES` when `LOAD_FULL`).
#[inline(always)]
unsafe fn load_tile_vector<S: Simd, const LOAD_FULL: bool>(p: *const f32, n: usize) -> S::V {
    if LOAD_FULL || n >= S::LANES { S::load(p) } else { S::load_partial(p, n) }
}

/// The 4 tap vectors (x `V`) of a run at tile input `x`.
///
/// # Safety
/// As [`load_tile_vector`] for each tap and vector.
#[inline(always)]
unsafe fn load_taps<S: Simd, const V: usize, const LOAD_FULL: bool>(
    x: *const f32,
    n: usize,
    off: &[u32; 4],
) -> [[S::V; V]; 4] {
    let l = S::LANES;
    let mut taps = [[S::zero(); V]; 4];
    // Plain loops, not `array::from_fn`: closures are separate functions without the
    // caller's target features, and their intrinsics would not inline.
    for (j, tj) in taps.iter_mut().enumerate() {
        let p = x.add(off[j] as usize);
        for (v, tv) in tj.iter_mut().enumerate() {
            *tv = load_tile_vector::<S, LOAD_FULL>(p.add(v * l), n - v * l);
        }
    }
    taps
}

/// Adds every kernel of a same-pattern run into its filter's partial sums: 4 broadcasts and
/// 4 chained FMAs per vector into the loaded sums (every FP op a useful MAC; the tree form,
/// two products and three adds, measured the same or slower).
///
/// # Safety
/// `acc` holds `stride`-float rows for every row in `rows`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `v` indexes four arrays at once
unsafe fn add_run<S: Simd, const V: usize>(
    taps: &[[S::V; V]; 4],
    rows: &[u16],
    ws: &[[f32; 4]],
    acc: *mut f32,
    stride: usize,
) {
    let l = S::LANES;
    for (&row, w) in rows.iter().zip(ws) {
        let a = acc.add(row as usize * stride);
        // One weight broadcast live at a time: 12 tap registers, 3 sums and a weight fill
        // AVX2's 16 (four live broadcasts spilled a tap).
        let mut s = [S::zero(); V];
        for v in 0..V {
            s[v] = S::load(a.add(v * l));
        }
        for j in 0..4 {
            let wj = S::splat(w[j]);
            for v in 0..V {
                s[v] = S::fma(wj, taps[j][v], s[v]);
            }
        }
        for v in 0..V {
            S::store(a.add(v * l), s[v]);
        }
    }
}

/// The channel-major order with a channel's 9 taps (`V` vectors each: at 3, 27 of AVX-512's
/// 32 registers) loaded once for all its runs, every run's body specialized to its pattern's
/// taps (one jump per run over the 56 candidates): per channel `9 V` loads instead of `4 V`
/// per run.
///
/// # Safety
/// As [`load_taps`] for whole vectors at every channel base + tap offset; `acc` as in
/// [`add_run`].
#[inline(always)]
unsafe fn channel_registers<S: Simd, const V: usize>(
    x: *const f32,
    cm: &ChannelMajorRuns,
    acc: *mut f32,
    stride: usize,
) {
    let l = S::LANES;
    let ChannelMajorRuns { runs, k_row, k_w, channels, taps9, .. } = cm;
    for ch in channels {
        let xc = x.add(ch.base as usize);
        let mut t = [[S::zero(); V]; 9];
        for (j, tj) in t.iter_mut().enumerate() {
            let p = xc.add(taps9[j] as usize);
            for (v, tv) in tj.iter_mut().enumerate() {
                *tv = S::load(p.add(v * l));
            }
        }
        for run in &runs[ch.start as usize..ch.end as usize] {
            let (k0, k1) = (run.start as usize, run.end as usize);
            let (rows, ws) = (&k_row[k0..k1], &k_w[k0..k1]);
            macro_rules! arms {
                ($($i:literal => ($a:literal, $b:literal, $c:literal, $d:literal)),* $(,)?) => {
                    match run.candidate {
                        $($i => add_run_taps::<S, V, $a, $b, $c, $d>(&t, rows, ws, acc, stride),)*
                        _ => {}
                    }
                };
            }
            candidate_arms!(arms);
        }
    }
}

/// [`add_run`] with the taps `A < B < C < D` of a channel's 9 in registers.
///
/// # Safety
/// As [`add_run`].
#[inline(always)]
unsafe fn add_run_taps<
    S: Simd,
    const V: usize,
    const A: usize,
    const B: usize,
    const C: usize,
    const D: usize,
>(
    t: &[[S::V; V]; 9],
    rows: &[u16],
    ws: &[[f32; 4]],
    acc: *mut f32,
    stride: usize,
) {
    add_run::<S, V>(&[t[A], t[B], t[C], t[D]], rows, ws, acc, stride);
}

/// The small-map order's runs on 16 lanes: per channel its patch (one or two vectors), per
/// run the patch permuted by the pattern's lane table (lane `4 q + j`: position `q`'s tap
/// `j`), per kernel that vector times its weights repeated (one 16-byte broadcast) added to
/// its filter's partial sums.
///
/// # Safety
/// 16 (32 when `TWO`) floats readable at `x` + each channel's base; `acc` holds
/// [`SMALL_MAP_STRIDE`] floats per filter.
#[inline(always)]
unsafe fn small_map_runs<S: Simd, const TWO: bool>(
    sm: &SmallMapRuns,
    x: *const f32,
    acc: *mut f32,
) {
    let ChannelMajorRuns { runs, k_row, k_w, channels, .. } = &sm.cm;
    let (lanes, mask) = (sm.lanes.as_ptr(), sm.lane_mask);
    for ch in channels {
        let p = x.add(ch.base as usize);
        let a = S::load(p);
        let b = if TWO { S::load(p.add(16)) } else { a };
        for run in &runs[ch.start as usize..ch.end as usize] {
            // SAFETY: every run's pattern indexes `lanes` (built per library pattern).
            let idx = &*lanes.add(run.pattern as usize);
            let g = if TWO {
                S::permute2_maskz(a, b, idx, mask)
            } else {
                S::permute_maskz(a, idx, mask)
            };
            let (k0, k1) = (run.start as usize, run.end as usize);
            for (&row, w) in k_row[k0..k1].iter().zip(&k_w[k0..k1]) {
                let s = acc.add(row as usize * SMALL_MAP_STRIDE);
                S::store(s, S::fma(g, S::broadcast4(w.as_ptr()), S::load(s)));
            }
        }
    }
}

/// [`small_map_runs`] lane by lane, for vector widths it has no vector form for (a
/// [`FkwOrder::SmallMap`] conv run at another instruction set than the one it was bound
/// for): lane `4 q` of each filter's partial sums gets position `q`'s output.
///
/// # Safety
/// As [`small_map_runs`].
unsafe fn small_map_runs_lanes(sm: &SmallMapRuns, x: *const f32, acc: *mut f32) {
    let ChannelMajorRuns { runs, k_row, k_w, channels, .. } = &sm.cm;
    for ch in channels {
        let p = x.add(ch.base as usize);
        for run in &runs[ch.start as usize..ch.end as usize] {
            let lanes = &sm.lanes[run.pattern as usize];
            for k in run.start as usize..run.end as usize {
                let (s, w) = (acc.add(k_row[k] as usize * SMALL_MAP_STRIDE), &k_w[k]);
                for q in 0..sm.positions.len() {
                    let tap = |j: usize| w[j] * *p.add(lanes[4 * q + j] as usize);
                    *s.add(4 * q) += (tap(0) + tap(1)) + (tap(2) + tap(3));
                }
            }
        }
    }
}

/// One filter's kernels of one channel block on a tile of `V` vectors (`n` positions): each
/// kernel's 4 taps are read straight from the input (FMA memory operands, L1 hits within the
/// block) into 4 accumulators per vector, so no FMA waits on another of the same kernel.
///
/// # Safety
/// `x` + every offset is readable for `n` floats (`V * LANES` when `LOAD_FULL`).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `j` and `v` index several arrays at once
unsafe fn filter_block<S: Simd, const V: usize, const LOAD_FULL: bool>(
    x: *const f32,
    n: usize,
    offs: &[[u32; 4]],
    ws: &[[f32; 4]],
) -> [S::V; V] {
    let l = S::LANES;
    let mut a = [[S::zero(); V]; 4];
    for (o, w) in offs.iter().zip(ws) {
        for j in 0..4 {
            let wj = S::splat(w[j]);
            let p = x.add(o[j] as usize);
            for v in 0..V {
                let xv = load_tile_vector::<S, LOAD_FULL>(p.add(v * l), n - v * l);
                a[j][v] = S::fma(wj, xv, a[j][v]);
            }
        }
    }
    let mut s = [S::zero(); V];
    for v in 0..V {
        s[v] = S::add(S::add(a[0][v], a[1][v]), S::add(a[2][v], a[3][v]));
    }
    s
}
