//! The output-channel-vectorized convolution: dense weights on small feature maps.
//!
//! The row-group engine vectorizes over output *positions*: a tile of 16-32 positions per
//! vector, a broadcast weight per multiply-add. On a 2x2 or 4x4 map (VGG's last 512-channel
//! layers, MobileNetV2's 1x1 layers at 4x4) most lanes hold padding or nothing, and every
//! FMA costs a weight broadcast: VGG-11's 512-channel 3x3 layer at 2x2 ran in 0.62 ms here
//! against ONNX Runtime's 0.30. This kernel vectorizes over output *channels* instead:
//!
//! * Weights are packed once into panels of 64 output channels, each stored as four
//!   sub-panels of 16 channels, `[panel][sub-panel][column][16]` (zero past the last
//!   channel): for every GEMM column (input channel x tap) a panel's weights are 4 AVX-512
//!   vectors, one from each sub-panel's contiguous stream, and an AVX2 block of 16 channels
//!   reads a single stream.
//! * A register tile is up to 4 vectors of channels x up to 6 output positions (24
//!   accumulators): per column, 4 weight loads, one broadcast input value per position and
//!   24 FMAs. The input values come straight from the padded, phase-split input copy of
//!   [`crate::conv`] (a column's offset plus a position's offset), so nothing is unfolded.
//! * Columns are taken in blocks of 128 (32 KiB of a panel's weights) so that maps of
//!   more than 6 positions re-read them from L1, not from memory; partial sums wait in a
//!   per-thread buffer between blocks.
//! * The epilogue adds the bias, clamps (ReLU / ReLU6) and writes the `[channel][position]`
//!   output.
//! * A producer may write the padded input for it ([`ChannelVectorConv::run_prepacked`]):
//!   plans then skip the packing pass.
//!
//! On AVX2 (16 registers) a tile is 2 vectors x up to 6 positions. Threads take contiguous
//! ranges of channel blocks; with fewer blocks than threads, each block's positions are split
//! between them (ResNet-20's 64-channel layers are one AVX-512 block, and ran on one thread of
//! two, 1.01-1.22x faster than on 1; its dense plan on 2 threads 0.449 -> 0.400 ms). Only
//! ungrouped convolutions (any kernel, stride, padding, dilation, 2-D or 3-D); the lowering
//! gives it dense layers whose maps are small.

// The inner functions are `unsafe fn`s over raw pointers whose bounds `run` checked once.
#![allow(unsafe_op_in_unsafe_fn)]

use crate::conv::{ConvShape, InputLayout};
use crate::error::{KernelError, Result};
use crate::isa::Isa;
use crate::rowgroup::{Clamp, ConvScratch, Epilogue, check_len, check_prepacked, pack_input};
use crate::simd::{Simd, simd_entry};
use crate::threads::{SendPtr, run_parallel};

/// Output channels per packed weight panel (4 AVX-512 vectors).
pub const PANEL: usize = 64;

/// Output channels per sub-panel: a panel stores its channels 16 at a time, each sub-panel
/// column after column, so a block of 16 channels (two AVX2 vectors) reads one contiguous
/// stream of weights and a 64-channel AVX-512 block reads four. With `[column][64]` rows, an
/// AVX2 block read one line of every 256-byte row, a stride the hardware prefetchers followed
/// poorly (VGG's 512-channel layers stream 9.4 MB of weights per run). Measured on Zen 3 (AVX2,
/// 1 thread, min of 300 runs, alternating binaries): 512->512 3x3 at 4x4 1050 -> 822 us, at 2x2
/// 403 -> 225 us, 256->512 at 4x4 487 -> 408 us (the row layout with a software prefetch 16
/// columns ahead, which the sub-panels made a loss: 867 and 296 us with it).
const SUB: usize = 16;

/// Most output positions per register tile.
const TILE_POSITIONS: usize = 6;

/// Most output positions per register tile of `vectors` vectors of channels: 5 for 4
/// vectors, whose 4 x 6 accumulators, 4 weight vectors and 6 broadcasts would exceed the
/// 32 AVX-512 registers (LLVM spilled two accumulators to the stack every column, and when
/// the stack slot straddled a cache line its store-to-load forwarding failed: ResNet-20's
/// dense 64@8x8 layers 0.045 -> 0.060 ms in a build whose frames moved the slot).
fn tile_positions(vectors: usize) -> usize {
    if vectors >= 4 { TILE_POSITIONS - 1 } else { TILE_POSITIONS }
}

/// GEMM columns per cache block: a panel's 128 x 64 weights are 32 KiB, which stay in L1 while
/// every position tile reads them.
const K_BLOCK: usize = 128;

/// A dense convolution vectorized over output channels, with its packed weights.
#[derive(Debug, Clone)]
pub struct ChannelVectorConv {
    shape: ConvShape,
    layout: InputLayout,
    /// GEMM columns (input channels x kernel volume).
    cols: usize,
    /// Offset in the packed input of every GEMM column, relative to position 0.
    col_offsets: Vec<u32>,
    /// Offset in the packed input of every output position (column 0).
    pos_offsets: Vec<u32>,
    /// `[panel][sub-panel][column][SUB]`, zero past the last output channel.
    weights: Vec<f32>,
    /// Channel blocks at 8 and 16 lanes per vector (made once: a run allocates nothing).
    blocks: [Vec<Block>; 2],
}

impl ChannelVectorConv {
    /// Packs `weights` (`[out, in, k...]`, dense) for `shape`.
    ///
    /// # Errors
    /// `InvalidShape` for grouped convolutions or inputs too large for 32-bit offsets;
    /// `BufferLength` for weights of the wrong length.
    pub fn new(shape: ConvShape, weights: &[f32]) -> Result<Self> {
        let shape = shape.validated()?;
        if shape.groups != 1 {
            return Err(KernelError::InvalidShape {
                reason: format!(
                    "the channel-vector kernel runs ungrouped convolutions; got {} groups",
                    shape.groups
                ),
            });
        }
        let cols = shape.cols();
        check_len("weights", shape.out_channels * cols, weights.len())?;
        let layout = shape.layout();
        let reach = layout.packed_len().max(shape.in_channels * shape.input_plane());
        if u32::try_from(reach).is_err() {
            return Err(KernelError::InvalidShape {
                reason: format!("an input of {reach} floats exceeds 32-bit offsets"),
            });
        }
        let col_offsets = (0..cols).map(|j| layout.col_offset(0, j) as u32).collect();
        let [od, oh, ow] = shape.output();
        let pitch = layout.output_row_pitch();
        let mut pos_offsets = Vec::with_capacity(od * oh * ow);
        for &(start, _) in layout.runs() {
            for y in 0..oh {
                pos_offsets.extend((0..ow).map(|x| (start + y * pitch + x) as u32));
            }
        }
        let panels = shape.out_channels.div_ceil(PANEL);
        let mut packed = vec![0.0f32; panels * cols * PANEL];
        for (o, row) in weights.chunks_exact(cols).enumerate() {
            let (panel, lane) = (o / PANEL, o % PANEL);
            for (j, &w) in row.iter().enumerate() {
                packed[panel * cols * PANEL + (lane / SUB) * cols * SUB + j * SUB + lane % SUB] = w;
            }
        }
        let blocks = [blocks(shape.out_channels, 8), blocks(shape.out_channels, 16)];
        Ok(ChannelVectorConv {
            shape,
            layout,
            cols,
            col_offsets,
            pos_offsets,
            weights: packed,
            blocks,
        })
    }

    /// The convolution's shape.
    pub fn shape(&self) -> &ConvShape {
        &self.shape
    }

    /// Output positions per channel.
    fn positions(&self) -> usize {
        self.pos_offsets.len()
    }

    /// Floats of partial sums one thread needs.
    fn acc_len(&self) -> usize {
        self.positions() * PANEL
    }

    /// Scratch for runs on up to `threads` threads: the packed input and one partial-sum
    /// buffer per thread.
    pub fn scratch(&self, threads: usize) -> ConvScratch {
        ConvScratch::with_lengths((self.layout.packed_len(), threads.max(1) * self.acc_len()))
    }

    /// `output = epilogue(conv(input))` for one sample: `input` `[in, spatial...]`, `output`
    /// `[out, output positions]`. Runs on `min(threads, buffers in scratch)` threads.
    ///
    /// # Errors
    /// `BufferLength` when a buffer does not match the shape or the bias has not one value per
    /// output channel.
    pub fn run(
        &self,
        isa: Isa,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut ConvScratch,
        threads: usize,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        let (x, acc) = pack_input(&self.layout, &self.shape, isa, input, scratch, threads)?;
        self.execute(isa, x, output, acc, threads, epilogue)
    }

    /// [`ChannelVectorConv::run`] on an input already in this convolution's packed layout
    /// ([`ChannelVectorConv::layout`]: `layout().packed_len()` floats, padding zero, or the
    /// plain input when the layout reads it in place), as a producer retargeted to
    /// `layout().as_target()` writes it: no packing.
    ///
    /// # Errors
    /// As [`ChannelVectorConv::run`], for the packed input's length.
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
        self.execute(isa, packed, output, acc, threads, epilogue)
    }

    /// The packed input layout its tiles read.
    pub fn layout(&self) -> &InputLayout {
        &self.layout
    }

    /// The tiles on `x` (the packed input, or the input read in place).
    fn execute(
        &self,
        isa: Isa,
        x: &[f32],
        output: &mut [f32],
        acc: &mut [f32],
        threads: usize,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        let s = &self.shape;
        check_len("output", s.out_channels * self.positions(), output.len())?;
        if let Some(b) = epilogue.bias {
            check_len("bias", s.out_channels, b.len())?;
        }
        if let Some(r) = epilogue.residual {
            check_len("residual", output.len(), r.len())?;
        }
        let buffers = acc.len() / self.acc_len().max(1);
        if buffers == 0 {
            return Err(KernelError::BufferLength {
                what: "channel-vector partial sums",
                expected: self.acc_len(),
                found: acc.len(),
            });
        }
        let blocks = &self.blocks[usize::from(isa.lanes() == 16)];
        // Fewer channel blocks than threads (64 output channels are one AVX-512 block): each
        // block's positions are split into parts, one work unit each.
        let parts = if blocks.len() >= threads {
            1
        } else {
            (threads / blocks.len()).min(self.positions().div_ceil(TILE_POSITIONS)).max(1)
        };
        let units = blocks.len() * parts;
        let threads = threads.clamp(1, buffers).min(units);
        let chunk = units.div_ceil(threads);
        let job = Job {
            c: self,
            x: x.as_ptr(),
            y: SendPtr(output.as_mut_ptr()),
            acc: SendPtr(acc.as_mut_ptr()),
            blocks,
            parts,
            bias: epilogue.bias,
            clamp: epilogue.clamp,
            residual: epilogue.residual,
        };
        run_parallel(threads, |t| {
            let lo = (t * chunk).min(units);
            let hi = ((t + 1) * chunk).min(units);
            channel_blocks(isa, &job, t, lo, hi);
        });
        Ok(())
    }
}

/// A block of output channels one register tile covers: its panel, first lane in the panel
/// and vectors (`lanes` each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    panel: usize,
    lane: usize,
    vectors: usize,
}

/// Vectors per register tile at `lanes` per vector.
fn max_vectors(lanes: usize) -> usize {
    if lanes >= 16 { PANEL / lanes } else { 2 }
}

/// The channel blocks of `channels` outputs at `lanes` per vector (the last one narrower).
fn blocks(channels: usize, lanes: usize) -> Vec<Block> {
    let width = max_vectors(lanes) * lanes;
    let mut out = Vec::with_capacity(channels.div_ceil(width));
    let mut c = 0;
    while c < channels {
        let n = (channels - c).min(width);
        out.push(Block { panel: c / PANEL, lane: c % PANEL, vectors: n.div_ceil(lanes) });
        c += n;
    }
    out
}

/// Everything one run shares between threads (read-only; outputs at disjoint channels).
struct Job<'a> {
    c: &'a ChannelVectorConv,
    x: *const f32,
    y: SendPtr,
    /// One partial-sum buffer per thread.
    acc: SendPtr,
    blocks: &'a [Block],
    /// Position parts per block: work unit `u` is block `u / parts`, part `u % parts`.
    parts: usize,
    bias: Option<&'a [f32]>,
    clamp: Clamp,
    /// Added before the clamp, `[out, positions]`.
    residual: Option<&'a [f32]>,
}

// SAFETY: `x` is only read; each thread writes its own (channels, positions) of `y` and its
// own buffer.
unsafe impl Sync for Job<'_> {}

simd_entry! {
    fn channel_blocks(job: &Job<'_>, thread: usize, lo: usize, hi: usize) => channel_blocks_generic;
}

#[inline(always)]
fn channel_blocks_generic<S: Simd>(job: &Job<'_>, thread: usize, lo: usize, hi: usize) {
    // SAFETY: `run` checked the buffers: thread `thread` owns acc[thread * acc_len ..]
    // (thread < buffers), the units' (channels, positions) of `y` are its own, and every
    // input offset is inside the packed input (layout).
    unsafe {
        let acc = job.acc.0.add(thread * job.c.acc_len());
        let p = job.c.positions();
        for u in lo..hi {
            let part = u % job.parts;
            let (q0, q1) = (p * part / job.parts, p * (part + 1) / job.parts);
            block::<S>(job, job.blocks[u / job.parts], acc, q0, q1);
        }
    }
}

/// Positions `q0..q1` of one channel block: every column block, every position tile, then
/// the epilogue.
#[inline(always)]
unsafe fn block<S: Simd>(job: &Job<'_>, b: Block, acc: *mut f32, q0: usize, q1: usize) {
    let c = job.c;
    let p = c.positions();
    let tiles = (q1 - q0).div_ceil(tile_positions(b.vectors));
    let panel = c.weights.as_ptr().add(b.panel * c.cols * PANEL);
    let mut k0 = 0;
    while k0 < c.cols {
        let k1 = (k0 + K_BLOCK).min(c.cols);
        let first = k0 == 0;
        let mut p0 = q0;
        for t in 0..tiles {
            // Balanced tiles: 16 positions are 6 + 5 + 5, not 6 + 6 + 4.
            let n = (q1 - p0).div_ceil(tiles - t);
            let tile = Tile { c, x: job.x, w: panel, lane: b.lane, acc, p0, k0, k1, first };
            dispatch::<S>(&tile, b.vectors, n);
            p0 += n;
        }
        k0 = k1;
    }
    // Epilogue: bias, clamp, transpose into [channel][position].
    let channels =
        (job.c.shape.out_channels - (b.panel * PANEL + b.lane)).min(b.vectors * S::LANES);
    let first_channel = b.panel * PANEL + b.lane;
    for j in 0..channels {
        let o = first_channel + j;
        let bias = job.bias.map_or(0.0, |bs| bs[o]);
        let y = job.y.0.add(o * p);
        let res = job.residual.map(|r| &r[o * p..(o + 1) * p]);
        for q in q0..q1 {
            let v = *acc.add(q * PANEL + j) + bias + res.map_or(0.0, |r| r[q]);
            *y.add(q) = job.clamp.apply(v);
        }
    }
}

/// A register tile's operands: positions `p0..` of a channel block, columns `k0..k1`.
struct Tile<'a> {
    c: &'a ChannelVectorConv,
    x: *const f32,
    /// The block's panel.
    w: *const f32,
    /// The block's first channel in its panel.
    lane: usize,
    acc: *mut f32,
    p0: usize,
    k0: usize,
    k1: usize,
    /// Whether this is the first column block (start from zero, not from `acc`).
    first: bool,
}

macro_rules! dispatch_tile {
    ($tile:expr, $nv:expr, $pt:expr; $($v:literal: $($p:literal)*;)*) => {
        match ($nv, $pt) {
            $($(($v, $p) => $tile.run::<S, $v, $p>(),)*)*
            _ => {}
        }
    };
}

#[inline(always)]
unsafe fn dispatch<S: Simd>(tile: &Tile<'_>, vectors: usize, positions: usize) {
    dispatch_tile!(tile, vectors, positions;
        1: 1 2 3 4 5 6;
        2: 1 2 3 4 5 6;
        3: 1 2 3 4 5 6;
        4: 1 2 3 4 5 6;);
}

impl Tile<'_> {
    /// `NV` vectors of channels x `PT` positions.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // `v` and `q` index several arrays at once
    unsafe fn run<S: Simd, const NV: usize, const PT: usize>(&self) {
        let l = S::LANES;
        let mut acc = [[S::zero(); PT]; NV];
        if !self.first {
            for q in 0..PT {
                for v in 0..NV {
                    acc[v][q] = S::load(self.acc.add((self.p0 + q) * PANEL + v * l));
                }
            }
        }
        let mut offs = [0usize; PT];
        for q in 0..PT {
            offs[q] = self.c.pos_offsets[self.p0 + q] as usize;
        }
        let cols = &self.c.col_offsets[self.k0..self.k1];
        // Vector v's weights of column k0: its sub-panel's stream, at its offset in it.
        let mut woff = [0usize; NV];
        for v in 0..NV {
            let lane = self.lane + v * l;
            woff[v] = (lane / SUB) * self.c.cols * SUB + lane % SUB;
        }
        let mut w = self.w.add(self.k0 * SUB);
        for &col in cols {
            let base = self.x.add(col as usize);
            let mut wv = [S::zero(); NV];
            for v in 0..NV {
                wv[v] = S::load(w.add(woff[v]));
            }
            for q in 0..PT {
                let xq = S::splat(*base.add(offs[q]));
                for v in 0..NV {
                    acc[v][q] = S::fma(wv[v], xq, acc[v][q]);
                }
            }
            w = w.add(SUB);
        }
        for q in 0..PT {
            for v in 0..NV {
                S::store(self.acc.add((self.p0 + q) * PANEL + v * l), acc[v][q]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;

    fn seeded(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn check(shape: ConvShape, clamp: Clamp, threads: usize) {
        let w = seeded(shape.out_channels * shape.cols(), 1);
        let x = seeded(shape.in_channels * shape.input_plane(), 2);
        let bias = seeded(shape.out_channels, 3);
        let residual = seeded(shape.out_channels * shape.output_positions(), 4);
        let conv = ChannelVectorConv::new(shape, &w).expect("bind");
        let mut want = reference::conv(&shape, &w, &x);
        let p = shape.output_positions();
        for (o, row) in want.chunks_exact_mut(p).enumerate() {
            for (q, v) in row.iter_mut().enumerate() {
                *v += bias[o] + residual[o * p + q];
                *v = match clamp {
                    Clamp::None => *v,
                    Clamp::Relu => v.max(0.0),
                    Clamp::Relu6 => v.clamp(0.0, 6.0),
                };
            }
        }
        for isa in Isa::available() {
            let mut scratch = conv.scratch(threads);
            let mut y = vec![f32::NAN; shape.out_channels * p];
            let ep = Epilogue { bias: Some(&bias), clamp, residual: Some(&residual) };
            conv.run(isa, &x, &mut y, &mut scratch, threads, ep).expect("run");
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{isa:?} {shape:?} output {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn small_maps_match_the_reference() {
        // 2x2 and 4x4 maps (1 and 3 position tiles), channels not a multiple of any vector.
        check(ConvShape::conv2d(40, 72, [2, 2], [3, 3], 1, 1).expect("shape"), Clamp::Relu, 1);
        check(ConvShape::conv2d(24, 130, [4, 4], [3, 3], 1, 1).expect("shape"), Clamp::None, 2);
        // Column blocks: more than K_BLOCK columns, partial sums carried between them.
        check(ConvShape::conv2d(33, 64, [3, 3], [3, 3], 1, 1).expect("shape"), Clamp::Relu6, 1);
        // 1x1 read in place, 7x7 maps (49 positions, 9 tiles).
        check(ConvShape::conv2d(150, 17, [7, 7], [1, 1], 1, 0).expect("shape"), Clamp::Relu, 2);
        // Strided, dilated, 5x5 without padding.
        check(ConvShape::conv2d(8, 20, [9, 9], [3, 3], 2, 1).expect("shape"), Clamp::None, 1);
        let dilated = ConvShape::conv2d(6, 9, [8, 8], [3, 3], 1, 2)
            .and_then(|s| s.with_dilation(2))
            .expect("shape");
        check(dilated, Clamp::Relu, 1);
        check(ConvShape::conv2d(20, 50, [12, 12], [5, 5], 1, 0).expect("shape"), Clamp::None, 2);
        // 3-D.
        check(ConvShape::conv3d(5, 18, [3, 4, 4], [3, 3, 3], 1, 1).expect("shape"), Clamp::Relu, 1);
        // Fewer channel blocks than threads: positions split between them (64 channels are
        // one AVX-512 block; 17 are one or two, on 3 threads; 2x2 has one position tile).
        check(ConvShape::conv2d(32, 64, [8, 8], [3, 3], 1, 1).expect("shape"), Clamp::Relu, 2);
        check(ConvShape::conv2d(16, 17, [7, 7], [3, 3], 1, 1).expect("shape"), Clamp::None, 3);
        check(ConvShape::conv2d(8, 16, [2, 2], [3, 3], 1, 1).expect("shape"), Clamp::Relu, 2);
    }

    #[test]
    fn blocks_cover_every_channel_once() {
        for lanes in [8, 16] {
            for channels in [1, 7, 8, 15, 16, 17, 63, 64, 65, 130, 512] {
                let bs = blocks(channels, lanes);
                let mut next = 0;
                for b in &bs {
                    assert_eq!(b.panel * PANEL + b.lane, next, "{lanes} lanes, {channels}");
                    assert!(b.vectors >= 1 && b.vectors <= max_vectors(lanes));
                    assert!(b.lane + b.vectors * lanes <= PANEL, "a block stays in its panel");
                    next += (b.vectors * lanes).min(channels - next);
                }
                assert_eq!(next, channels);
            }
        }
    }

    #[test]
    fn grouped_and_short_inputs_are_refused() {
        let grouped = ConvShape::conv2d(8, 8, [4, 4], [3, 3], 1, 1)
            .and_then(|s| s.with_groups(2))
            .expect("s");
        assert!(matches!(
            ChannelVectorConv::new(grouped, &[0.0; 8 * 4 * 9]),
            Err(KernelError::InvalidShape { .. })
        ));
        let shape = ConvShape::conv2d(4, 4, [2, 2], [3, 3], 1, 1).expect("shape");
        assert!(matches!(
            ChannelVectorConv::new(shape, &[0.0; 10]),
            Err(KernelError::BufferLength { what: "weights", .. })
        ));
        let conv = ChannelVectorConv::new(shape, &[0.0; 4 * 4 * 9]).expect("bind");
        let mut scratch = conv.scratch(1);
        let mut y = vec![0.0; 16];
        let err = conv.run(Isa::detect(), &[0.0; 15], &mut y, &mut scratch, 1, Epilogue::default());
        assert!(matches!(err, Err(KernelError::BufferLength { what: "input", .. })));
        let short = Epilogue { residual: Some(&[0.0; 15]), ..Default::default() };
        let err = conv.run(Isa::detect(), &[0.0; 16], &mut y, &mut scratch, 1, short);
        assert!(matches!(err, Err(KernelError::BufferLength { what: "residual", .. })));
        let short = Epilogue { bias: Some(&[0.0; 3]), ..Default::default() };
        let err = conv.run(Isa::detect(), &[0.0; 16], &mut y, &mut scratch, 1, short);
        assert!(matches!(err, Err(KernelError::BufferLength { what: "bias", .. })));
        // A pre-packed input must span the packed layout (padding included).
        let packed = vec![0.0; conv.layout().packed_len() - 1];
        let ep = Epilogue::default();
        let err = conv.run_prepacked(Isa::detect(), &packed, &mut y, &mut scratch, 1, ep);
        assert!(matches!(err, Err(KernelError::BufferLength { what: "packed input", .. })));
    }
}
