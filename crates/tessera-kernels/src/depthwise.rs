//! The depthwise 2-D convolution kernel: one `kh x kw` filter per output channel, each reading
//! one input channel (`groups == in_channels`, any channel multiplier, stride, padding and
//! dilation).
//!
//! Depthwise layers have ~9 multiply-accumulates per output value, so the row-group engine,
//! built to share one input vector between the 8 filters of a group, wastes most of its work
//! on them (MobileNetV2's depthwise layers measured ~28 GFLOP/s there, an eighth of GEMM).
//! This kernel treats each channel as a 2-D stencil instead:
//!
//! 1. Pack the input channel into a zero-padded plane, each padded row split into `stride`
//!    phases (columns `q, q + s, q + 2s, ...`), so that every tap of every output row reads a
//!    *contiguous* run of the plane, also for stride 2. The padding and the slack past each
//!    row's end are written once, when the scratch is made; packing rewrites the data only.
//! 2. Compute tiles of up to 4 output rows x 2 vectors of output columns in registers: per
//!    tap, one broadcast weight and a load + FMA per accumulator. Eight independent
//!    accumulators hide the FMA latency; the loads hit L1 (a 28 x 28 plane is 3.6 KiB).
//!    Each tap's plane offset is computed once per layer (the tap loop used to divide by the
//!    stride for its phase: 144 channels at 32x32, AVX-512, 60 -> 48-50 us).
//! 3. Bias and ReLU / ReLU6 are applied before the store (no second pass over the output).
//!
//! On AVX-512, stride-1 maps of at most 8x8 skip the packed plane: each channel's input and
//! output planes fit in 4 vectors, and each tap's shifted plane is a masked two-source
//! permute of adjacent input vectors (`PlanePlan`), 3-4x faster than the row-group engine
//! at 4x4 and about 2x at 8x8.
//!
//! A third method replaces both (the default from 4 channels up): eight channels at a time
//! are transposed (8 x 8 register transposes) into one zero-padded plane whose every position
//! is a vector of the 8 channels — the NCHW8c layout ONNX Runtime converts whole graphs to,
//! here kept inside the kernel. Each output position is then one accumulator, each tap one
//! load + FMA with no lane wasted at any width or stride (a 4x4 map fills half a vector per
//! row in the padded planes), and 8 positions are transposed back per store. It runs 8-lane
//! (AVX2) code on AVX-512 CPUs too, and still wins there: 16-lane vectors along a map of 4-8
//! columns, or every other column at stride 2, are mostly idle lanes and permutes.
//! MobileNetV2's depthwise layers on Zen 3: 4.1-4.9x faster at 4x4 and stride 2 from 8x8,
//! 1.8-2.9x at 8x8, 1.2-1.7x at 32x32; on a Xeon (AVX-512) 2-5x at stride 2 and on maps of
//! at most 8x8, while padded planes keep stride-1 maps from 16x16 up, whose rows fill 16-lane
//! vectors ([`DepthwiseConv::method`] has the table).
//!
//! Threads split the output channels (blocks of 8 when interleaved) into contiguous ranges,
//! each with its own plane. Outputs go to NCHW or to a layout that keeps each channel's
//! outputs contiguous ([`DepthwiseConv::set_output_target`]), such as the input of a 1x1
//! convolution that puts a gap between channels, which then skips its copy.

// The inner functions are `unsafe fn`s over raw plane and output pointers whose bounds the
// geometry guarantees (checked once in `run`); marking each operation again adds nothing.
#![allow(unsafe_op_in_unsafe_fn)]

use crate::conv::{ConvShape, OutputTarget};
use crate::error::{KernelError, Result};
use crate::isa::Isa;
use crate::rowgroup::{Clamp, Epilogue, check_len};
use crate::simd::{Simd, simd_entry};
use crate::threads::{SendPtr, run_parallel};

/// Floats of slack past each phase row (a whole AVX-512 vector): loads of a row's last,
/// partial vector stay in bounds and read zeros.
const SLACK: usize = 16;

/// Output rows per register tile.
const TILE_ROWS: usize = 4;

/// Floats of slack in a scratch for aligning its planes to 64 bytes: a plane row then starts
/// on a line (rows are a multiple of 16 floats), and AVX-512 stride-1 3x3 tiles load whole
/// lines, shifting them in registers for the other two columns of taps, where unaligned
/// loads split across two lines for 2 of every 3 taps.
const PLANE_ALIGN: usize = 16;

/// Vectors of output columns per register tile.
const TILE_VECTORS: usize = 2;

/// The packed plane's geometry and the convolution's, as the inner loops use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    /// Input rows and columns.
    h: usize,
    w: usize,
    /// Padding (rows, columns).
    pad: [usize; 2],
    /// Kernel (rows, columns).
    k: [usize; 2],
    /// Stride (rows, columns).
    stride: [usize; 2],
    /// Dilation (rows, columns).
    dilation: [usize; 2],
    /// Output rows and columns.
    ho: usize,
    wo: usize,
    /// Floats per phase row of the plane.
    pitch: usize,
    /// Padded rows.
    rows: usize,
}

impl Geometry {
    fn of(s: &ConvShape) -> Self {
        let [_, ho, wo] = s.output();
        let [_, h, w] = s.input;
        let stride = [s.stride[1], s.stride[2]];
        let dilation = [s.dilation[1], s.dilation[2]];
        let k = [s.kernel[1], s.kernel[2]];
        let padded_w = w + 2 * s.padding[2];
        // The farthest a load reaches into a phase row: the last output vector's end plus the
        // largest tap offset.
        let reach = wo.div_ceil(SLACK) * SLACK + (k[1] - 1) * dilation[1] / stride[1];
        let pitch = (padded_w.div_ceil(stride[1]).max(reach) + SLACK).next_multiple_of(16);
        Geometry {
            h,
            w,
            pad: [s.padding[1], s.padding[2]],
            k,
            stride,
            dilation,
            ho,
            wo,
            pitch,
            rows: h + 2 * s.padding[1],
        }
    }

    /// Floats of one packed plane.
    fn plane_len(&self) -> usize {
        self.rows * self.stride[1] * self.pitch
    }

    /// Offset in the plane of padded row `r`, column phase `q`.
    fn row_offset(&self, r: usize, q: usize) -> usize {
        (r * self.stride[1] + q) * self.pitch
    }

    /// Per tap (row-major), its offset in the plane from padded row 0, phase 0, column 0.
    fn tap_offsets(&self) -> Vec<usize> {
        let (sx, [dy, dx]) = (self.stride[1], self.dilation);
        (0..self.k[0])
            .flat_map(|ky| (0..self.k[1]).map(move |kx| (ky, kx)))
            .map(|(ky, kx)| {
                let col = kx * dx;
                self.row_offset(ky * dy, col % sx) + col / sx
            })
            .collect()
    }
}

/// A depthwise convolution with its weights, ready to run.
#[derive(Debug, Clone)]
pub struct DepthwiseConv {
    shape: ConvShape,
    geometry: Geometry,
    /// `[out_channels, kh * kw]`.
    weights: Vec<f32>,
    /// Output channels per input channel.
    multiplier: usize,
    /// The register-plane plan, for maps whose input and output planes fit in 4 AVX-512
    /// vectors each (see [`PlanePlan`]).
    plane_plan: Option<PlanePlan>,
    /// The channel-interleaved layout (8 lanes), when its offsets fit in `u32`.
    interleaved: Option<Interleaved>,
    /// Per tap (row-major), where the padded planes read it relative to its output row's
    /// first tap: the phase row and column offset folded into one plane offset, so the
    /// tiles' tap loop does no division by the stride.
    tap_offsets: Vec<usize>,
    /// Where outputs go: NCHW unless retargeted ([`DepthwiseConv::set_output_target`]).
    target: OutputTarget,
}

/// How [`DepthwiseConv`] computes a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DepthwiseMethod {
    /// Each channel packed into a zero-padded, stride-phase-split plane; register tiles of
    /// output rows x column vectors (vectors along the map's width). Any instruction set.
    PaddedPlanes,
    /// Whole planes of maps up to 8x8 (stride 1) in AVX-512 registers, taps by masked
    /// two-source permutes. AVX-512 only.
    InRegisters,
    /// Eight channels at a time transposed into one zero-padded plane of 8-channel vectors
    /// (the NCHW8c layout ONNX Runtime converts whole graphs to), each output position one
    /// accumulator, each tap one load + FMA with no lane wasted at any width or stride;
    /// results transposed back. 8-lane code on every instruction set (AVX2's on AVX-512).
    ChannelInterleaved,
}

/// Most vectors of a plane the register-plane path holds (64 floats on AVX-512).
const PLANE_VECTORS: usize = 4;

/// Depthwise convolution of a small map entirely in registers (AVX-512): a channel's input
/// plane is at most 4 vectors, its output plane too, and each tap's contribution to an
/// output vector is one masked two-source permute of two adjacent input vectors (zero where
/// the tap reads padding) times the broadcast weight. No packed plane, no per-row work:
/// MobileNetV2's 960-channel 3x3 layers at 4x4 spent 42 us in the row-group engine for 138K
/// multiply-adds. Built only when every (tap, output vector) reads within two adjacent input
/// vectors (stride 1 on maps of up to 8x8; stride 2 from 8x8 does not fit).
#[derive(Debug, Clone, PartialEq)]
struct PlanePlan {
    in_vectors: usize,
    out_vectors: usize,
    /// Per tap, per output vector: the first of the two input vectors, lane indices into
    /// their concatenation and the lanes that read inside the input.
    steps: Vec<PlaneStep>,
}

#[derive(Debug, Clone, PartialEq)]
struct PlaneStep {
    src: usize,
    mask: u16,
    idx: [u32; 16],
}

impl PlanePlan {
    fn of(s: &ConvShape) -> Option<PlanePlan> {
        const L: usize = 16;
        let [_, h, w] = s.input;
        let [_, ho, wo] = s.output();
        let (in_vectors, out_vectors) = ((h * w).div_ceil(L), (ho * wo).div_ceil(L));
        if in_vectors > PLANE_VECTORS || out_vectors > PLANE_VECTORS {
            return None;
        }
        let mut steps = Vec::with_capacity(s.kernel_volume() * out_vectors);
        for ky in 0..s.kernel[1] {
            for kx in 0..s.kernel[2] {
                for j in 0..out_vectors {
                    let mut reads = [None; L];
                    for (l, r) in reads.iter_mut().enumerate() {
                        let o = j * L + l;
                        if o >= ho * wo {
                            continue;
                        }
                        let iy =
                            ((o / wo) * s.stride[1] + ky * s.dilation[1]).checked_sub(s.padding[1]);
                        let ix =
                            ((o % wo) * s.stride[2] + kx * s.dilation[2]).checked_sub(s.padding[2]);
                        if let (Some(iy), Some(ix)) = (iy, ix)
                            && iy < h
                            && ix < w
                        {
                            *r = Some(iy * w + ix);
                        }
                    }
                    let first = reads.iter().flatten().min().map_or(0, |&i| i / L);
                    let src = first.min(in_vectors - 1);
                    let mut step = PlaneStep { src, mask: 0, idx: [0; 16] };
                    for (l, r) in reads.iter().enumerate() {
                        if let Some(i) = *r {
                            if i / L > src + 1 || i < src * L {
                                return None;
                            }
                            step.idx[l] = (i - src * L) as u32;
                            step.mask |= 1 << l;
                        }
                    }
                    steps.push(step);
                }
            }
        }
        Some(PlanePlan { in_vectors, out_vectors, steps })
    }
}

/// Channels per block of the channel-interleaved method (the AVX2 vector).
const BLOCK: usize = 8;

/// The channel-interleaved method's plane: `rows x cols` padded positions of `BLOCK`
/// channels each, and the offset tables its loops read (all in floats).
#[derive(Debug, Clone, PartialEq)]
struct Interleaved {
    rows: usize,
    cols: usize,
    /// Per input position (row-major), where it lands in the plane.
    input_offsets: Vec<u32>,
    /// Per output position (row-major), where its first tap reads.
    output_offsets: Vec<u32>,
    /// Per tap (row-major), its offset from the output's first tap.
    tap_offsets: Vec<u32>,
    /// `[block][tap][lane]`: output channel `block * BLOCK + lane`'s weights, zero past the
    /// last channel.
    weights: Vec<f32>,
}

impl Interleaved {
    fn of(s: &ConvShape, g: &Geometry, weights: &[f32]) -> Option<Interleaved> {
        let rows =
            (g.h + 2 * g.pad[0]).max((g.ho - 1) * g.stride[0] + (g.k[0] - 1) * g.dilation[0] + 1);
        let cols =
            (g.w + 2 * g.pad[1]).max((g.wo - 1) * g.stride[1] + (g.k[1] - 1) * g.dilation[1] + 1);
        let at = |r: usize, q: usize| u32::try_from((r * cols + q) * BLOCK).ok();
        // The plane's end must be addressable too.
        at(rows, 0)?;
        let input_offsets = (0..g.h * g.w)
            .map(|i| at(i / g.w + g.pad[0], i % g.w + g.pad[1]))
            .collect::<Option<_>>()?;
        let output_offsets = (0..g.ho * g.wo)
            .map(|o| at((o / g.wo) * g.stride[0], (o % g.wo) * g.stride[1]))
            .collect::<Option<_>>()?;
        let taps = g.k[0] * g.k[1];
        let tap_offsets = (0..taps)
            .map(|t| at((t / g.k[1]) * g.dilation[0], (t % g.k[1]) * g.dilation[1]))
            .collect::<Option<_>>()?;
        let blocks = s.out_channels.div_ceil(BLOCK);
        let mut packed = vec![0.0; blocks * taps * BLOCK];
        for (o, w) in weights.chunks_exact(taps).enumerate() {
            let (b, lane) = (o / BLOCK, o % BLOCK);
            for (t, &v) in w.iter().enumerate() {
                packed[(b * taps + t) * BLOCK + lane] = v;
            }
        }
        Some(Interleaved {
            rows,
            cols,
            input_offsets,
            output_offsets,
            tap_offsets,
            weights: packed,
        })
    }

    fn plane_len(&self) -> usize {
        self.rows * self.cols * BLOCK
    }
}

/// Per-thread packed planes for one [`DepthwiseConv`]; the kernel never allocates.
#[derive(Debug, Clone, Default)]
pub struct DepthwiseScratch {
    planes: Vec<f32>,
    /// The geometry and layout whose zero padding `planes` holds (re-zeroed when another one
    /// uses it).
    geometry: Option<(Geometry, bool)>,
}

impl DepthwiseConv {
    /// A depthwise convolution of `shape` with `weights` laid out `[out, 1, 1, kh, kw]`.
    ///
    /// # Errors
    /// `InvalidShape` unless the shape is 2-D with one input channel per group
    /// (`groups == in_channels`); `BufferLength` for weights of the wrong length.
    pub fn new(shape: ConvShape, weights: &[f32]) -> Result<Self> {
        let shape = shape.validated()?;
        if !shape.is_2d() || shape.in_per_group() != 1 {
            return Err(KernelError::InvalidShape {
                reason: format!(
                    "the depthwise kernel needs a 2-D convolution with one input channel per group; got kernel {:?}, {} input channels in {} groups",
                    shape.kernel, shape.in_channels, shape.groups
                ),
            });
        }
        check_len("weights", shape.out_channels * shape.kernel_volume(), weights.len())?;
        let geometry = Geometry::of(&shape);
        Ok(DepthwiseConv {
            geometry,
            multiplier: shape.out_per_group(),
            weights: weights.to_vec(),
            plane_plan: PlanePlan::of(&shape),
            interleaved: Interleaved::of(&shape, &geometry, weights),
            tap_offsets: geometry.tap_offsets(),
            target: OutputTarget::dense(shape.output()),
            shape,
        })
    }

    /// The method [`run`](Self::run) uses on `isa`:
    /// [`ChannelInterleaved`](DepthwiseMethod::ChannelInterleaved) on every instruction set
    /// (on AVX-512 its 8-lane AVX2 code), unless fewer than 4 channels fill its 8 lanes on a
    /// map of more than 256 outputs (16 on AVX-512), or, on AVX-512, the map has 256 outputs
    /// or more at stride 1; then [`InRegisters`](DepthwiseMethod::InRegisters) on AVX-512
    /// where the maps fit, else [`PaddedPlanes`](DepthwiseMethod::PaddedPlanes).
    ///
    /// Measured on Zen 3 (AVX2, 1 thread, `examples/depthwise_crossover`, 3x3, 3-960
    /// channels, maps 2x2-28x28, strides 1 and 2): interleaved / padded planes 0.09-0.71 from
    /// 12 channels up (0.15-0.20 at 4x4 and smaller, 0.3-0.5 on 14x14 and 28x28), 0.46-0.95
    /// with 3 channels but 1.17 at 28x28, stride 1. On a Xeon with AVX-512 (same example),
    /// the 8-lane interleaved code against the 16-lane methods, from 12 channels up: 0.15-0.30
    /// of the padded planes' time on 2x2 and 4x4, 0.45-0.72 on 7x7 and 8x8, 0.38-0.72 at
    /// stride 2 on 14x14 and 28x28, 0.87-1.47 at stride 1 on 14x14 and 1.08-1.54 on 28x28
    /// (where 16-lane rows are full); 0.7-0.8 of the in-register planes' time at 4x4 and 8x8.
    pub fn method(&self, isa: Isa) -> DepthwiseMethod {
        // Fewer than 4 channels fill under half of the 8 lanes: the padded planes' vectors
        // along the map win on larger maps (from 8x8 at stride 1 with AVX-512's 16 lanes).
        let wide = isa.lanes() == 16;
        let positions = self.shape.output_positions();
        let narrow = self.shape.out_channels < BLOCK / 2 && positions > if wide { 16 } else { 256 };
        // With 16 lanes, rows of 16 and more columns at stride 1 fill the planes' vectors.
        let planes_fill = wide && self.shape.stride[1..] == [1, 1] && positions >= 256;
        if self.interleaved.is_some() && !narrow && !planes_fill {
            DepthwiseMethod::ChannelInterleaved
        } else if isa.lanes() == 16 && self.plane_plan.is_some() {
            DepthwiseMethod::InRegisters
        } else {
            DepthwiseMethod::PaddedPlanes
        }
    }

    /// Floats of one thread's plane (the larger of the two layouts).
    /// Floats of one thread's plane (the larger of the two layouts), a multiple of 16 so
    /// that every thread's plane starts on a 64-byte line (see [`PLANE_ALIGN`]).
    fn plane_len(&self) -> usize {
        self.geometry
            .plane_len()
            .max(self.interleaved.as_ref().map_or(0, Interleaved::plane_len))
            .next_multiple_of(16)
    }

    /// Stores outputs to `target` from now on (e.g. the next 1x1 convolution's packed input,
    /// whose channels are a gap apart): a layout that keeps each channel's `Ho x Wo` outputs
    /// contiguous and in order (rows of `Wo`, `base + Ho * Wo <= channel_stride`), which every
    /// method's stores address with one channel stride and offset. The output buffer of a run
    /// then holds `target.len(out_channels)` floats, and only the outputs are written.
    ///
    /// # Errors
    /// `InvalidShape` for a target of other dimensions or with padding between rows.
    pub fn set_output_target(&mut self, target: OutputTarget) -> Result<()> {
        let out = self.shape.output();
        let [_, ho, wo] = out;
        if target.dims != out
            || target.phases.is_some()
            || target.rows != ho
            || target.row_pitch != wo
            || target.base + ho * wo > target.channel_stride
        {
            return Err(KernelError::InvalidShape {
                reason: format!(
                    "depthwise outputs need a target keeping each channel's {ho}x{wo} outputs contiguous; got {target:?}"
                ),
            });
        }
        self.target = target;
        Ok(())
    }

    /// Where outputs are stored.
    pub fn output_target(&self) -> &OutputTarget {
        &self.target
    }

    /// Whether an AVX-512 run computes whole planes in registers (input and output maps of
    /// at most 64 positions whose taps each read within two adjacent vectors: stride 1 up to
    /// 8x8).
    pub fn in_registers(shape: &ConvShape) -> bool {
        PlanePlan::of(shape).is_some()
    }

    /// The convolution's shape.
    pub fn shape(&self) -> &ConvShape {
        &self.shape
    }

    /// Scratch for runs on up to `threads` threads.
    pub fn scratch(&self, threads: usize) -> DepthwiseScratch {
        let len = threads.max(1) * self.plane_len() + PLANE_ALIGN;
        DepthwiseScratch { planes: vec![0.0; len], geometry: None }
    }

    /// `output = epilogue(conv(input))` for one sample: `input` `[in, H, W]`, `output`
    /// `[out, Ho, Wo]`, by [`method`](Self::method). Runs on `min(threads, planes in
    /// scratch)` threads.
    ///
    /// # Errors
    /// `BufferLength` when a buffer does not match the shape, the scratch holds no plane, or
    /// the bias has not one value per output channel.
    pub fn run(
        &self,
        isa: Isa,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut DepthwiseScratch,
        threads: usize,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        self.run_with(self.method(isa), isa, input, output, scratch, threads, epilogue)
    }

    /// [`run`](Self::run) by a chosen method (to compare them).
    ///
    /// # Errors
    /// As [`run`](Self::run); `UnsupportedIsa` when `method` does not run on `isa` or this
    /// shape (see [`DepthwiseMethod`]).
    #[allow(clippy::too_many_arguments)] // `run`'s operands plus the method
    pub fn run_with(
        &self,
        method: DepthwiseMethod,
        isa: Isa,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut DepthwiseScratch,
        threads: usize,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        let available = match method {
            DepthwiseMethod::PaddedPlanes => true,
            DepthwiseMethod::InRegisters => isa.lanes() == 16 && self.plane_plan.is_some(),
            DepthwiseMethod::ChannelInterleaved => self.interleaved.is_some(),
        };
        if !available {
            return Err(KernelError::UnsupportedIsa {
                name: isa.to_string(),
                reason: format!(
                    "the depthwise method {method:?} does not run there on {:?}",
                    self.shape
                ),
            });
        }
        let s = &self.shape;
        let g = self.geometry;
        check_len("input", s.in_channels * s.input_plane(), input.len())?;
        check_len("output", self.target.len(s.out_channels), output.len())?;
        if let Some(b) = epilogue.bias {
            check_len("bias", s.out_channels, b.len())?;
        }
        if epilogue.residual.is_some() {
            return Err(KernelError::UnsupportedEpilogue {
                kernel: "depthwise",
                what: "a residual",
            });
        }
        let plane_len = self.plane_len();
        // The planes start at the scratch's first 64-byte line.
        let first = scratch.planes.as_ptr().align_offset(64).min(PLANE_ALIGN);
        let planes = scratch.planes.len().saturating_sub(PLANE_ALIGN) / plane_len.max(1);
        if planes == 0 {
            return Err(KernelError::BufferLength {
                what: "depthwise scratch",
                expected: plane_len + PLANE_ALIGN,
                found: scratch.planes.len(),
            });
        }
        let interleaved = method == DepthwiseMethod::ChannelInterleaved;
        if scratch.geometry != Some((g, interleaved)) {
            // Another geometry or layout wrote data where this one's padding is.
            scratch.planes.fill(0.0);
            scratch.geometry = Some((g, interleaved));
        }
        // Interleaved runs split blocks of channels between threads.
        let units = if interleaved { s.out_channels.div_ceil(BLOCK) } else { s.out_channels };
        let threads = threads.clamp(1, planes).min(units);
        let chunk = units.div_ceil(threads);
        let job = Job {
            c: self,
            x: input,
            y: SendPtr(output.as_mut_ptr()),
            ystride: self.target.channel_stride,
            ybase: self.target.base,
            planes: SendPtr(scratch.planes.as_mut_ptr().wrapping_add(first)),
            clamp: epilogue.clamp,
            bias: epilogue.bias,
        };
        run_parallel(threads, |t| {
            let lo = (t * chunk).min(units);
            let hi = ((t + 1) * chunk).min(units);
            match method {
                DepthwiseMethod::InRegisters => plane_channels(isa, &job, lo, hi),
                DepthwiseMethod::ChannelInterleaved => {
                    interleaved_blocks(isa.at_most_8_lanes(), &job, t, lo, hi)
                }
                DepthwiseMethod::PaddedPlanes => depthwise_channels(isa, &job, t, lo, hi),
            }
        });
        Ok(())
    }
}

/// Everything one run shares between threads (read-only, outputs at disjoint channels).
struct Job<'a> {
    c: &'a DepthwiseConv,
    x: &'a [f32],
    /// Output channel `o`'s `Ho x Wo` values start at `y + o * ystride + ybase`.
    y: SendPtr,
    ystride: usize,
    ybase: usize,
    /// One plane per thread.
    planes: SendPtr,
    clamp: Clamp,
    bias: Option<&'a [f32]>,
}

/// Writes input channel `c` of `x` into the padded, phase-split plane.
///
/// # Safety
/// `plane` must be valid for `g.plane_len()` writes.
unsafe fn pack(g: &Geometry, x: &[f32], c: usize, plane: *mut f32) {
    let src = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
    let s = g.stride[1];
    for (r, row) in src.chunks_exact(g.w).enumerate() {
        let pr = r + g.pad[0];
        if s == 1 {
            let dst = plane.add(g.row_offset(pr, 0) + g.pad[1]);
            std::ptr::copy_nonoverlapping(row.as_ptr(), dst, g.w);
        } else if s == 2 {
            // Even and odd source columns in one pass (vectorizes to shuffles); source
            // column j lands in phase (j + pad) % 2 at index (j + pad) / 2.
            let p = g.pad[1];
            let even = plane.add(g.row_offset(pr, p % 2) + p / 2);
            let odd = plane.add(g.row_offset(pr, (p + 1) % 2) + p.div_ceil(2));
            let pairs = g.w / 2;
            for i in 0..pairs {
                *even.add(i) = row[2 * i];
                *odd.add(i) = row[2 * i + 1];
            }
            if g.w % 2 == 1 {
                *even.add(pairs) = row[g.w - 1];
            }
        } else {
            // Phase q holds padded columns q, q + s, ...: one strided copy per phase (a
            // division per element made stride 2 slower than stride 1).
            for q in 0..s {
                // The first source column whose padded column is in phase q.
                let first = (q + s - g.pad[1] % s) % s;
                let dst = plane.add(g.row_offset(pr, q) + (first + g.pad[1]) / s);
                for (i, &v) in row.iter().skip(first).step_by(s).enumerate() {
                    *dst.add(i) = v;
                }
            }
        }
    }
}

/// [`pack`] for stride 2 with rows of at least `2 * LANES` values, by the packing's vector
/// even/odd split (`conv::deinterleave_generic`). [`pack`]'s scalar loop, compiled
/// without the kernel's target features, was a third of a stride-2 layer's time (on AVX2, min
/// of runs: 144 channels at 32x32 84.5 -> 54.6 us, 192 at 16x16 34.6 -> 25.6 us); on narrower
/// rows it stays, since this one inlined into the kernel measured slower there (576 channels
/// at 8x8: 41 -> 54 us).
///
/// # Safety
/// As [`pack`]; `S`'s instruction set must be available (callers are [`simd_entry!`]
/// kernels), `g.stride[1] == 2` and `g.w >= 2 * S::LANES`.
#[inline(always)]
unsafe fn pack_stride2<S: Simd>(g: &Geometry, x: &[f32], c: usize, plane: *mut f32) {
    let src = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
    let p = g.pad[1];
    for (r, row) in src.chunks_exact(g.w).enumerate() {
        let pr = r + g.pad[0];
        // Source column j lands in phase (j + pad) % 2 at index (j + pad) / 2. The two
        // phases' rows are disjoint ranges of the plane.
        let even = plane.add(g.row_offset(pr, p % 2) + p / 2);
        let odd = plane.add(g.row_offset(pr, (p + 1) % 2) + p.div_ceil(2));
        crate::conv::deinterleave_generic::<S>(
            row,
            std::slice::from_raw_parts_mut(even, g.w.div_ceil(2)),
            std::slice::from_raw_parts_mut(odd, g.w / 2),
        );
    }
}

/// [`pack`] for stride 1: each row copied with vector loads and stores, the last vector
/// partial (a `memcpy` call per row cost more than the copy on small planes). Measured on Zen 3
/// (AVX2, 1 thread, min of 300 runs, alternating binaries): 96 channels at 32x32 102 -> 94 us,
/// 192 at 16x16 57.4 -> 50.9 us, 384 at 8x8 34 -> 30 us.
///
/// # Safety
/// As [`pack`]; `S`'s instruction set must be available and `g.stride[1] == 1`.
#[inline(always)]
unsafe fn pack_stride1<S: Simd>(g: &Geometry, x: &[f32], c: usize, plane: *mut f32) {
    let src = x.as_ptr().add(c * g.h * g.w);
    for r in 0..g.h {
        let to = plane.add(g.row_offset(r + g.pad[0], 0) + g.pad[1]);
        crate::conv::copy_run::<S, false>(to, src.add(r * g.w), g.w);
    }
}

/// Output channels `lo..hi` on thread `thread`'s plane.
#[inline(always)]
fn depthwise_channels_generic<S: Simd>(job: &Job<'_>, thread: usize, lo: usize, hi: usize) {
    // SAFETY: `run` checked the input, output and scratch lengths against the geometry and
    // gives each thread its own plane (`thread < planes`) and output channels (`lo..hi`);
    // every plane offset and output offset below stays inside them (see `Geometry::of`).
    unsafe { channels::<S>(job, job.planes.0.add(thread * job.c.plane_len()), lo, hi) }
}

#[inline(always)]
unsafe fn channels<S: Simd>(job: &Job<'_>, plane: *mut f32, lo: usize, hi: usize) {
    let c = job.c;
    let g = &c.geometry;
    let taps = g.k[0] * g.k[1];
    let mut packed = usize::MAX;
    for o in lo..hi {
        let ci = o / c.multiplier;
        if ci != packed {
            if g.stride[1] == 2 && g.w >= 2 * S::LANES {
                pack_stride2::<S>(g, job.x, ci, plane);
            } else if g.stride[1] == 1 {
                pack_stride1::<S>(g, job.x, ci, plane);
            } else {
                pack(g, job.x, ci, plane);
            }
            packed = ci;
        }
        let bias = job.bias.map_or(0.0, |b| b[o]);
        let w = &c.weights[o * taps..(o + 1) * taps];
        let y = job.y.0.add(o * job.ystride + job.ybase);
        channel::<S>(g, &c.tap_offsets, plane, w, bias, job.clamp, y);
    }
}

simd_entry! {
    fn plane_channels(job: &Job<'_>, lo: usize, hi: usize) => plane_channels_generic;
}

/// Output channels `lo..hi` with whole planes in registers ([`PlanePlan`]; 16 lanes only).
#[inline(always)]
fn plane_channels_generic<S: Simd>(job: &Job<'_>, lo: usize, hi: usize) {
    let Some(plan) = job.c.plane_plan.as_ref().filter(|_| S::LANES == 16) else {
        return;
    };
    // SAFETY: `run` checked the input and output lengths; the plan's vectors cover exactly
    // the planes (partial loads and stores at their ends) and its indices stay below
    // `2 * LANES`.
    unsafe {
        match (plan.in_vectors, plan.out_vectors) {
            (1, 1) => plane_run::<S, 1, 1>(job, plan, lo, hi),
            (2, 2) => plane_run::<S, 2, 2>(job, plan, lo, hi),
            (3, 3) => plane_run::<S, 3, 3>(job, plan, lo, hi),
            (4, 4) => plane_run::<S, 4, 4>(job, plan, lo, hi),
            (_, 1) => plane_run::<S, 4, 1>(job, plan, lo, hi),
            (_, 2) => plane_run::<S, 4, 2>(job, plan, lo, hi),
            (_, 3) => plane_run::<S, 4, 3>(job, plan, lo, hi),
            _ => plane_run::<S, 4, 4>(job, plan, lo, hi),
        }
    }
}

/// `NI` input vectors (at least the plan's; extra ones load as zeros), `NO` output vectors
/// (exactly the plan's).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `j` indexes the accumulators and the plan's steps
unsafe fn plane_run<S: Simd, const NI: usize, const NO: usize>(
    job: &Job<'_>,
    plan: &PlanePlan,
    lo: usize,
    hi: usize,
) {
    let c = job.c;
    let (l, taps) = (S::LANES, c.shape.kernel_volume());
    let [_, h, w] = c.shape.input;
    let (n_in, n_out) = (h * w, c.shape.output_positions());
    for o in lo..hi {
        let src = job.x.as_ptr().add((o / c.multiplier) * n_in);
        // One vector past the plane (zero) so `src + 1` always exists.
        let mut x = [S::zero(); 5];
        for v in 0..NI.min(plan.in_vectors) {
            let rem = n_in - v * l;
            x[v] = if rem >= l {
                S::load(src.add(v * l))
            } else {
                S::load_partial(src.add(v * l), rem)
            };
        }
        let bias = job.bias.map_or(0.0, |b| b[o]);
        let mut acc = [S::splat(bias); NO];
        let wo = &c.weights[o * taps..(o + 1) * taps];
        for (t, &wt) in wo.iter().enumerate() {
            let wv = S::splat(wt);
            for j in 0..NO {
                let step = &plan.steps[t * plan.out_vectors + j];
                if step.mask == 0 {
                    continue;
                }
                // Compile-time indices: indexing `x` at run time would keep it in memory.
                let (a, b) = match step.src {
                    0 => (x[0], x[1]),
                    1 => (x[1], x[2]),
                    2 => (x[2], x[3]),
                    _ => (x[3], x[4]),
                };
                acc[j] = S::fma(wv, S::permute2_maskz(a, b, &step.idx, step.mask), acc[j]);
            }
        }
        let dst = job.y.0.add(o * job.ystride + job.ybase);
        for j in 0..NO {
            let v = job.clamp.apply_vec::<S>(acc[j]);
            let rem = n_out - j * l;
            if rem >= l {
                S::store(dst.add(j * l), v);
            } else {
                S::store_partial(dst.add(j * l), v, rem);
            }
        }
    }
}

simd_entry! {
    fn depthwise_channels(job: &Job<'_>, thread: usize, lo: usize, hi: usize) => depthwise_channels_generic;
}

simd_entry! {
    fn interleaved_blocks(job: &Job<'_>, thread: usize, lo: usize, hi: usize) => interleaved_blocks_generic;
}

/// Channel blocks `lo..hi` by the channel-interleaved method on thread `thread`'s plane
/// (8 lanes only: `run_with` passes an 8-lane level).
#[inline(always)]
fn interleaved_blocks_generic<S: Simd>(job: &Job<'_>, thread: usize, lo: usize, hi: usize) {
    let Some(il) = job.c.interleaved.as_ref().filter(|_| S::LANES == BLOCK) else {
        return;
    };
    // SAFETY: `run` checked the input, output and scratch lengths; each thread has its own
    // plane of at least `il.plane_len()` floats and its own blocks. Every offset in `il`'s
    // tables is below `il.plane_len() - BLOCK` (built from rows and columns inside the plane).
    unsafe {
        let plane = job.planes.0.add(thread * job.c.plane_len());
        for b in lo..hi {
            interleaved_block::<S>(job, il, plane, b);
        }
    }
}

/// One block of `BLOCK` output channels: transpose the inputs into the plane, then per
/// `BLOCK` output positions one accumulator each over every tap, transposed back on store.
/// Whole blocks (8 channels, 8 positions) take unrolled loads and stores; the last partial
/// block of channels or positions goes through `load_partial` / `store_partial`.
#[inline(always)]
unsafe fn interleaved_block<S: Simd>(job: &Job<'_>, il: &Interleaved, plane: *mut f32, b: usize) {
    let c = job.c;
    let s = &c.shape;
    let (n_in, n_out) = (s.input_plane(), s.output_positions());
    let o0 = b * BLOCK;
    let lanes = (s.out_channels - o0).min(BLOCK);
    let full = lanes == BLOCK;
    // Lane `i` reads input channel `(o0 + i) / multiplier`; lanes past the last channel
    // read zeros.
    let x = job.x.as_ptr();
    let mut src = [x; BLOCK];
    for (i, p) in src.iter_mut().enumerate().take(lanes) {
        *p = x.add(((o0 + i) / c.multiplier) * n_in);
    }
    let mut rows = [S::zero(); BLOCK];
    let input_offsets = il.input_offsets.as_ptr();
    let mut q = 0;
    while q < n_in {
        let n = (n_in - q).min(BLOCK);
        if full && n == BLOCK {
            for (r, p) in rows.iter_mut().zip(&src) {
                *r = S::load(p.add(q));
            }
        } else {
            for (i, r) in rows.iter_mut().enumerate() {
                *r = if i < lanes { S::load_partial(src[i].add(q), n) } else { S::zero() };
            }
        }
        S::transpose(&mut rows);
        for (j, &r) in rows.iter().enumerate().take(n) {
            S::store(plane.add(*input_offsets.add(q + j) as usize), r);
        }
        q += n;
    }

    let taps = il.tap_offsets.len();
    let w = il.weights.as_ptr().add(b * taps * BLOCK);
    let bias = match job.bias {
        Some(v) if full => S::load(v.as_ptr().add(o0)),
        Some(v) => S::load_partial(v.as_ptr().add(o0), lanes),
        None => S::zero(),
    };
    let (output_offsets, tap_offsets) = (il.output_offsets.as_ptr(), il.tap_offsets.as_ptr());
    let y = job.y.0.add(o0 * job.ystride + job.ybase);
    let mut p = 0;
    while p < n_out {
        let n = (n_out - p).min(BLOCK);
        // Past the last position, repeat it (computed, never stored).
        let mut base = [plane.cast_const(); BLOCK];
        for (j, bp) in base.iter_mut().enumerate() {
            *bp = plane.add(*output_offsets.add(p + j.min(n - 1)) as usize);
        }
        let mut acc = [bias; BLOCK];
        for t in 0..taps {
            let wv = S::load(w.add(t * BLOCK));
            let off = *tap_offsets.add(t) as usize;
            for (a, bp) in acc.iter_mut().zip(&base) {
                *a = S::fma(wv, S::load(bp.add(off)), *a);
            }
        }
        for a in &mut acc {
            *a = job.clamp.apply_vec::<S>(*a);
        }
        S::transpose(&mut acc);
        let dst = y.add(p);
        if full && n == BLOCK {
            for (i, &a) in acc.iter().enumerate() {
                S::store(dst.add(i * job.ystride), a);
            }
        } else {
            for (i, &a) in acc.iter().enumerate().take(lanes) {
                S::store_partial(dst.add(i * job.ystride), a, n);
            }
        }
        p += n;
    }
}

/// One output channel, tile by tile.
#[inline(always)]
unsafe fn channel<S: Simd>(
    g: &Geometry,
    taps: &[usize],
    plane: *const f32,
    w: &[f32],
    bias: f32,
    clamp: Clamp,
    y: *mut f32,
) {
    let vectors = g.wo.div_ceil(S::LANES);
    // Rows of one vector take tiles of up to 8 rows: 8 independent accumulator chains, where
    // 4 rows of one vector leave the FMA units waiting on their latency. Measured on Zen 3
    // (AVX2, 1 thread, `examples/depthwise_crossover`, two runs): 96 channels 7x7 stride 1
    // 16.7 -> 12.4 us, 8x8 stride 2 12.0 -> 10.0 us, 48 channels 8x8 stride 1 7.3 -> 5.7-6.6 us.
    let tile_rows = if vectors == 1 { 2 * TILE_ROWS } else { TILE_ROWS };
    // 16-lane stride-1 3x3 on a 64-byte aligned plane: whole-line loads, shifted in registers.
    let aligned = S::LANES == 16
        && g.k == [3, 3]
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
        && (plane as usize).is_multiple_of(64)
        && g.pitch.is_multiple_of(16);
    let mut oy = 0;
    while oy < g.ho {
        let rows = (g.ho - oy).min(tile_rows);
        let mut v = 0;
        while v < vectors {
            let n = (vectors - v).min(TILE_VECTORS);
            let t = Tile { g, taps, plane, w, bias, clamp, y, oy, x0: v * S::LANES };
            // The tile's rows and vectors as constants, for either tile method.
            macro_rules! dispatch {
                ($run:ident) => {
                    match (rows, n) {
                        (8, _) => t.$run::<S, 8, 1>(),
                        (7, _) => t.$run::<S, 7, 1>(),
                        (6, _) => t.$run::<S, 6, 1>(),
                        (5, _) => t.$run::<S, 5, 1>(),
                        (4, 2) => t.$run::<S, 4, 2>(),
                        (4, _) => t.$run::<S, 4, 1>(),
                        (3, 2) => t.$run::<S, 3, 2>(),
                        (3, _) => t.$run::<S, 3, 1>(),
                        (2, 2) => t.$run::<S, 2, 2>(),
                        (2, _) => t.$run::<S, 2, 1>(),
                        (_, 2) => t.$run::<S, 1, 2>(),
                        _ => t.$run::<S, 1, 1>(),
                    }
                };
            }
            if aligned {
                dispatch!(run_aligned);
            } else {
                dispatch!(run);
            }
            v += n;
        }
        oy += rows;
    }
}

/// Lane `i` takes lane `i + k` of the concatenation of two adjacent lines (`SHIFTED[k]`).
static SHIFTED: [[u32; 16]; 3] = {
    let mut out = [[0u32; 16]; 3];
    let mut k = 0;
    while k < 3 {
        let mut i = 0;
        while i < 16 {
            out[k][i] = (i + k) as u32;
            i += 1;
        }
        k += 1;
    }
    out
};

/// One register tile: output rows `oy..oy + R`, columns `x0..x0 + V * LANES` (clipped).
struct Tile<'a> {
    g: &'a Geometry,
    /// [`DepthwiseConv::tap_offsets`].
    taps: &'a [usize],
    plane: *const f32,
    w: &'a [f32],
    bias: f32,
    clamp: Clamp,
    y: *mut f32,
    oy: usize,
    x0: usize,
}

impl Tile<'_> {
    #[inline(always)]
    unsafe fn run<S: Simd, const R: usize, const V: usize>(&self) {
        let g = self.g;
        let mut acc = [[S::splat(self.bias); V]; R];
        // Each output row's first tap: its padded row, phase 0, the tile's first column.
        let rows: [*const f32; R] = std::array::from_fn(|r| {
            self.plane.add(g.row_offset((self.oy + r) * g.stride[0], 0) + self.x0)
        });
        for (&wt, &off) in self.w.iter().zip(self.taps) {
            let wv = S::splat(wt);
            for (row, acc_row) in rows.iter().zip(acc.iter_mut()) {
                let p = row.add(off);
                for (v, a) in acc_row.iter_mut().enumerate() {
                    *a = S::fma(wv, S::load(p.add(v * S::LANES)), *a);
                }
            }
        }
        self.store::<S, R, V>(&acc);
    }

    /// [`Tile::run`] for 3x3 at stride 1 with 16 lanes on a 64-byte aligned plane (every row
    /// a multiple of 16 floats): each of the `R + 2` input rows the tile reads is loaded as
    /// `V + 1` whole lines, and the taps one and two columns on are those lines shifted in
    /// registers (two-source permutes), so no load splits across lines; each input row then
    /// feeds the up to 3 output rows whose taps read it, the 9 weights held in registers.
    /// 144 channels at 32x32, AVX-512, 1 thread (pack included, a fifth of it): 48-50 -> 40-42
    /// us; 96 at 28x28 27-31 -> 25.
    ///
    /// # Safety
    /// As [`Tile::run`]; `x0` is a multiple of 16 and the plane rows hold `x0 + (V + 1) * 16`
    /// floats (the geometry's pitch covers the last vector's reach plus [`SLACK`]).
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // `i`, `r` and `v` index several arrays at once
    unsafe fn run_aligned<S: Simd, const R: usize, const V: usize>(&self) {
        let mut acc = [[S::splat(self.bias); V]; R];
        // A plain loop, not `array::from_fn`: a closure would not carry the target features.
        let mut w = [S::zero(); 9];
        for (wv, &wt) in w.iter_mut().zip(self.w) {
            *wv = S::splat(wt);
        }
        // One call per input row with its index a constant (a run-time row loop, not fully
        // unrolled, indexed the accumulators at run time and kept them on the stack).
        macro_rules! input_rows {
            ($($i:literal)*) => {
                $(
                    if $i < R + 2 {
                        self.input_row::<S, R, V, $i>(&mut acc, &w);
                    }
                )*
            };
        }
        input_rows!(0 1 2 3 4 5 6 7 8 9);
        self.store::<S, R, V>(&acc);
    }

    /// Input row `I` of an aligned tile (see [`Tile::run_aligned`]) into the output rows
    /// `I - 2 ..= I` that read it.
    ///
    /// # Safety
    /// As [`Tile::run_aligned`].
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // `j`, `kx`, `v` and `ky` index several arrays
    unsafe fn input_row<S: Simd, const R: usize, const V: usize, const I: usize>(
        &self,
        acc: &mut [[S::V; V]; R],
        w: &[S::V; 9],
    ) {
        let row = self.plane.add(self.g.row_offset(self.oy + I, 0) + self.x0);
        let mut x = [S::zero(); 3];
        for j in 0..=V {
            x[j] = S::load(row.add(j * 16));
        }
        for kx in 0..3 {
            for v in 0..V {
                let shifted = if kx == 0 {
                    x[v]
                } else {
                    S::permute2_maskz(x[v], x[v + 1], &SHIFTED[kx], !0)
                };
                for ky in 0..3 {
                    // Output row `I - ky` reads this row with its taps of kernel row `ky`.
                    if I >= ky && I - ky < R {
                        acc[I - ky][v] = S::fma(w[ky * 3 + kx], shifted, acc[I - ky][v]);
                    }
                }
            }
        }
    }

    /// Clamps and stores the tile's rows (masked where a row ends inside a vector).
    #[inline(always)]
    unsafe fn store<S: Simd, const R: usize, const V: usize>(&self, acc: &[[S::V; V]; R]) {
        let g = self.g;
        for (r, acc_row) in acc.iter().enumerate() {
            for (v, &a) in acc_row.iter().enumerate() {
                let a = self.clamp.apply_vec::<S>(a);
                let x = self.x0 + v * S::LANES;
                let dst = self.y.add((self.oy + r) * g.wo + x);
                let n = g.wo - x;
                if n >= S::LANES {
                    S::store(dst, a);
                } else {
                    S::store_partial(dst, a, n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 500.0).collect()
    }

    const METHODS: [DepthwiseMethod; 3] = [
        DepthwiseMethod::PaddedPlanes,
        DepthwiseMethod::InRegisters,
        DepthwiseMethod::ChannelInterleaved,
    ];

    /// Runs every method on every instruction set that has it, at several thread counts,
    /// against the reference convolution (bias and clamp applied to the reference by hand),
    /// one scratch shared by all (a method must not read another's leftovers as padding).
    fn check(shape: ConvShape) {
        let w = values(shape.out_channels * shape.kernel_volume(), 1);
        let x = values(shape.in_channels * shape.input_plane(), 2);
        let bias = values(shape.out_channels, 3);
        let conv = DepthwiseConv::new(shape, &w).unwrap();
        let plain = reference::conv(&shape, &w, &x);
        let positions = shape.output_positions();
        let tol = reference::tolerance(shape.kernel_volume(), 2.0);
        let mut scratch = conv.scratch(3);
        for isa in Isa::available() {
            for method in METHODS {
                let available = match method {
                    DepthwiseMethod::PaddedPlanes => true,
                    DepthwiseMethod::InRegisters => {
                        isa.lanes() == 16 && DepthwiseConv::in_registers(&shape)
                    }
                    DepthwiseMethod::ChannelInterleaved => conv.interleaved.is_some(),
                };
                for threads in [1, 2, 3] {
                    for clamp in [Clamp::None, Clamp::Relu, Clamp::Relu6] {
                        let mut y = vec![f32::NAN; plain.len()];
                        let ep = Epilogue { bias: Some(&bias), clamp, residual: None };
                        let run = conv.run_with(method, isa, &x, &mut y, &mut scratch, threads, ep);
                        if !available {
                            assert!(
                                matches!(run, Err(KernelError::UnsupportedIsa { .. })),
                                "{method:?} ran on {isa}"
                            );
                            continue;
                        }
                        run.unwrap();
                        for (i, (&got, &want)) in y.iter().zip(&plain).enumerate() {
                            let want = want + bias[i / positions];
                            let want = match clamp {
                                Clamp::None => want,
                                Clamp::Relu => want.max(0.0),
                                Clamp::Relu6 => want.clamp(0.0, 6.0),
                            };
                            assert!(
                                (got - want).abs() <= tol,
                                "{shape:?} {isa:?} {method:?} threads {threads} {clamp:?}: y[{i}] = {got}, want {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn retargeted_outputs_land_a_channel_stride_apart_and_nothing_else_is_written() {
        // Every method, on maps each one takes (4x4 in registers on AVX-512, stride 2, 14x14),
        // stores into channels 5 floats in and `Ho * Wo + 21` floats apart; the floats between
        // them keep their sentinel.
        for (c, hw, stride) in [(12, 4, 1), (20, 9, 2), (9, 14, 1)] {
            let shape = ConvShape::conv2d(c, c, [hw, hw], [3, 3], stride, 1)
                .unwrap()
                .with_groups(c)
                .unwrap();
            let w = values(c * 9, 4);
            let x = values(c * hw * hw, 5);
            let bias = values(c, 6);
            let plain = reference::conv(&shape, &w, &x);
            let positions = shape.output_positions();
            let [_, ho, wo] = shape.output();
            let target = OutputTarget {
                dims: shape.output(),
                channel_stride: positions + 21,
                base: 5,
                rows: ho,
                row_pitch: wo,
                phases: None,
            };
            let mut conv = DepthwiseConv::new(shape, &w).unwrap();
            conv.set_output_target(target).unwrap();
            let mut scratch = conv.scratch(2);
            let tol = reference::tolerance(9, 2.0);
            for isa in Isa::available() {
                for method in METHODS {
                    for threads in [1, 2] {
                        let mut y = vec![-7.5f32; target.len(c)];
                        let ep = Epilogue { bias: Some(&bias), clamp: Clamp::None, residual: None };
                        let run = conv.run_with(method, isa, &x, &mut y, &mut scratch, threads, ep);
                        if run.is_err() {
                            continue; // not this method's shape or instruction set
                        }
                        for (i, &got) in y.iter().enumerate() {
                            let (o, at) = (i / target.channel_stride, i % target.channel_stride);
                            if (5..5 + positions).contains(&at) {
                                let want = plain[o * positions + at - 5] + bias[o];
                                assert!(
                                    (got - want).abs() <= tol,
                                    "{shape:?} {isa} {method:?}: channel {o} output {}: {got} vs {want}",
                                    at - 5
                                );
                            } else {
                                assert_eq!(
                                    got, -7.5,
                                    "{shape:?} {isa} {method:?}: wrote float {i}"
                                );
                            }
                        }
                    }
                }
            }
        }
        // A target with padding between rows (the next 3x3 convolution's input) is refused.
        let shape = ConvShape::conv2d(8, 8, [6, 6], [3, 3], 1, 1).unwrap().with_groups(8).unwrap();
        let mut conv = DepthwiseConv::new(shape, &values(72, 1)).unwrap();
        let padded = OutputTarget {
            dims: [1, 6, 6],
            channel_stride: 64,
            base: 9,
            rows: 8,
            row_pitch: 8,
            phases: None,
        };
        assert!(matches!(conv.set_output_target(padded), Err(KernelError::InvalidShape { .. })));
        assert_eq!(conv.output_target(), &OutputTarget::dense([1, 6, 6]));
    }

    #[test]
    fn strided_packing_handles_every_padding_parity_and_odd_widths() {
        // Stride 2 (the even/odd split) and 3 (one strided copy per phase), padding 0-2 (odd
        // and even: which phase the first column lands in), odd and even widths, and rows of
        // 16 values or more (split by vector deinterleaves).
        for (hw, stride, pad) in [
            (7, 2, 0),
            (7, 2, 2),
            (8, 2, 0),
            (15, 2, 1),
            (9, 3, 1),
            (10, 3, 2),
            (16, 2, 1),
            (33, 2, 0),
            (34, 2, 2),
            (35, 2, 1),
        ] {
            check(
                ConvShape::conv2d(5, 5, [hw, hw], [3, 3], stride, pad)
                    .unwrap()
                    .with_groups(5)
                    .unwrap(),
            );
        }
    }

    #[test]
    fn a_residual_is_refused_with_a_typed_error() {
        let shape = ConvShape::conv2d(4, 4, [4, 4], [3, 3], 1, 1).unwrap().with_groups(4).unwrap();
        let conv = DepthwiseConv::new(shape, &[0.5; 36]).unwrap();
        let (x, res) = (vec![1.0; 64], vec![1.0; 64]);
        let mut y = vec![0.0; 64];
        let ep = Epilogue { residual: Some(&res), ..Default::default() };
        let err = conv.run(Isa::detect(), &x, &mut y, &mut conv.scratch(1), 1, ep);
        assert_eq!(
            err,
            Err(KernelError::UnsupportedEpilogue { kernel: "depthwise", what: "a residual" })
        );
    }

    #[test]
    fn small_maps_run_in_registers_and_match_the_reference() {
        // (channels, multiplier, h, w, kernel, stride, padding, dilation, in registers)
        let cases = [
            (20, 1, 4, 4, 3, 1, 1, 1, true),
            (17, 1, 8, 8, 3, 1, 1, 1, true),
            (9, 1, 7, 7, 3, 1, 1, 1, true),
            (5, 1, 2, 2, 3, 1, 1, 1, true),
            (6, 2, 6, 9, 3, 1, 1, 1, true),
            (4, 1, 8, 8, 5, 1, 2, 1, true),
            (4, 1, 8, 8, 3, 1, 2, 2, true),
            (3, 1, 5, 6, 3, 1, 0, 1, true),
            (3, 1, 8, 8, 3, 2, 1, 1, false),
            (3, 1, 16, 16, 3, 1, 1, 1, false),
        ];
        for (c, m, h, w, k, stride, pad, dil, registers) in cases {
            let shape = ConvShape::conv2d(c, c * m, [h, w], [k, k], stride, pad)
                .and_then(|s| s.with_groups(c))
                .and_then(|s| s.with_dilation(dil))
                .unwrap();
            assert_eq!(DepthwiseConv::in_registers(&shape), registers, "{shape:?}");
            // Every instruction set (the register path on AVX-512, the stencil elsewhere).
            check(shape);
        }
    }

    #[test]
    fn matches_the_reference_convolution_on_mobilenet_shapes() {
        // MobileNetV2's: stride 1 and 2, 3x3 padding 1, odd and vector-multiple widths.
        for (c, hw, stride) in [(8, 28, 1), (48, 28, 2), (24, 14, 1), (96, 7, 1), (16, 32, 2)] {
            check(
                ConvShape::conv2d(c, c, [hw, hw], [3, 3], stride, 1)
                    .unwrap()
                    .with_groups(c)
                    .unwrap(),
            );
        }
    }

    #[test]
    fn matches_the_reference_with_multiplier_dilation_large_kernels_and_no_padding() {
        check(ConvShape::conv2d(4, 8, [19, 23], [3, 3], 1, 1).unwrap().with_groups(4).unwrap());
        check(
            ConvShape::conv2d(6, 6, [20, 17], [3, 3], 1, 2)
                .unwrap()
                .with_groups(6)
                .unwrap()
                .with_dilation(2)
                .unwrap(),
        );
        check(ConvShape::conv2d(5, 5, [33, 40], [5, 5], 2, 2).unwrap().with_groups(5).unwrap());
        check(ConvShape::conv2d(3, 3, [9, 37], [3, 3], 3, 0).unwrap().with_groups(3).unwrap());
        check(ConvShape::conv2d(2, 2, [1, 1], [3, 3], 1, 1).unwrap().with_groups(2).unwrap());
        // Stride-1 3x3 (AVX-512 loads whole lines and shifts them): no padding, and rows of
        // three vectors (tiles of two, then one), 32 and 16 wide.
        check(ConvShape::conv2d(6, 6, [11, 35], [3, 3], 1, 0).unwrap().with_groups(6).unwrap());
        check(ConvShape::conv2d(4, 4, [13, 48], [3, 3], 1, 1).unwrap().with_groups(4).unwrap());
        check(ConvShape::conv2d(9, 9, [32, 32], [3, 3], 1, 1).unwrap().with_groups(9).unwrap());
        check(ConvShape::conv2d(5, 5, [16, 16], [3, 3], 1, 1).unwrap().with_groups(5).unwrap());
    }

    /// Output rows of one vector take tiles of up to 8 rows: heights 5 to 13 (one tile of 5-8
    /// rows, or 8 + 5) on widths of at most 8, stride 1 and 2.
    #[test]
    fn one_vector_rows_in_tiles_of_up_to_eight_match_the_reference() {
        for (h, w, stride) in [(5, 8, 1), (6, 5, 1), (7, 7, 1), (8, 8, 1), (13, 7, 1), (15, 15, 2)]
        {
            check(
                ConvShape::conv2d(3, 3, [h, w], [3, 3], stride, 1).unwrap().with_groups(3).unwrap(),
            );
        }
    }

    #[test]
    fn a_reused_scratch_keeps_its_padding_zero() {
        // A larger image packed into the scratch first must not leak into the padding of a
        // smaller geometry.
        let big = ConvShape::conv2d(2, 2, [16, 16], [3, 3], 1, 1).unwrap().with_groups(2).unwrap();
        let small =
            ConvShape::conv2d(2, 2, [14, 15], [3, 3], 1, 1).unwrap().with_groups(2).unwrap();
        let big_conv = DepthwiseConv::new(big, &values(18, 1)).unwrap();
        let small_conv = DepthwiseConv::new(small, &values(18, 1)).unwrap();
        let mut scratch = big_conv.scratch(1);
        let mut yb = vec![0.0; 2 * 256];
        let ep = Epilogue::default();
        big_conv.run(Isa::detect(), &values(512, 2), &mut yb, &mut scratch, 1, ep).unwrap();
        let x = values(2 * 14 * 15, 4);
        let mut y = vec![0.0; 2 * 14 * 15];
        small_conv.run(Isa::detect(), &x, &mut y, &mut scratch, 1, ep).unwrap();
        let want = reference::conv(&small, &values(18, 1), &x);
        assert!(y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4));
    }

    #[test]
    fn refuses_grouped_3d_and_misshapen_inputs() {
        let grouped =
            ConvShape::conv2d(8, 8, [8, 8], [3, 3], 1, 1).unwrap().with_groups(4).unwrap();
        assert!(matches!(
            DepthwiseConv::new(grouped, &[0.0; 8 * 2 * 9]),
            Err(KernelError::InvalidShape { .. })
        ));
        let dw = ConvShape::conv2d(4, 4, [8, 8], [3, 3], 1, 1).unwrap().with_groups(4).unwrap();
        assert!(matches!(
            DepthwiseConv::new(dw, &[0.0; 35]),
            Err(KernelError::BufferLength { what: "weights", expected: 36, found: 35 })
        ));
        let conv = DepthwiseConv::new(dw, &[0.0; 36]).unwrap();
        let mut y = vec![0.0; 4 * 64];
        let ep = Epilogue::default();
        let err = conv.run(Isa::detect(), &[0.0; 255], &mut y, &mut conv.scratch(1), 1, ep);
        assert!(matches!(err, Err(KernelError::BufferLength { what: "input", .. })));
        let err =
            conv.run(Isa::detect(), &[0.0; 256], &mut y, &mut DepthwiseScratch::default(), 1, ep);
        assert!(matches!(err, Err(KernelError::BufferLength { what: "depthwise scratch", .. })));
    }
}
