//! Lowering one weighted layer to a kernel: the storage format and kernel follow from the
//! weight's tessera-sparsity scheme and the layer's shape.
//!
//! | scheme | format -> kernel |
//! |---|---|
//! | dense | row groups of 8 filters (direct convolution); ungrouped on small maps (<= 16 output positions, or <= 64 with a kernel larger than 1x1): the channel-vector kernel; depthwise 2-D: the depthwise kernel from 4 channels up (and, with fewer, when strided, on maps of >= 1024 positions or on maps it holds in registers: stride 1, <= 8x8), else row groups (one filter per group) |
//! | unstructured | CSR -> row-group engine |
//! | block-punched | block-punched -> row-group engine (filters of a block share kept columns) |
//! | KGS (conv3d) | KGS -> row-group engine |
//! | block (BSR) | BSR -> row-group engine |
//! | BCR | BCR-compact -> BCR block kernel (convolutions; linear layers where its GEMV takes the balanced-block form, else BCR as row groups) |
//! | pattern (+ connectivity), 3x3, ungrouped | FKW -> pattern kernel |
//! | anything else (filter, channel, N:M, polarized, ...) | masked row groups: only kept columns of each group of 8 filters |
//!
//! A format that refuses the mask (a structure the scheme should have produced but did not)
//! falls back to masked row groups with a warning: the plan stays correct, only slower.

use tessera_ir::{Node, Op, Param, Shapes};
use tessera_kernels::formats::bcr::{BcrCompact, BcrConv, BcrInput};
use tessera_kernels::formats::block_punched::{BlockPunched, Kgs};
use tessera_kernels::formats::bsr::Bsr;
use tessera_kernels::formats::csr::Csr;
use tessera_kernels::formats::fkw::{Fkw, FkwConv, FkwOrder};
use tessera_kernels::{
    ChannelVectorConv, ConvScratch, ConvShape, DepthwiseConv, DepthwiseScratch, Epilogue,
    InputLayout, Isa, KernelError, OutputTarget, RowGroupConv, RowGroupInput, RowGroupMatrix,
};
use tessera_sparsity::{Mask, PatternLibrary, Scheme};

use crate::error::{Result, kernel_error, unsupported};

type KernelResult<T> = std::result::Result<T, KernelError>;

/// Filters per row group of the dense and masked fallbacks.
const GROUP_ROWS: usize = 8;

/// Most bytes of kept weights for which a block-format row-group convolution on an 8-wide
/// map runs at 8 lanes on an AVX-512 CPU whose 16-lane FMAs run at half rate (see
/// [`conv_isa`]).
const NARROW_ROWS_MAX_BYTES: usize = 64 * 1024;

/// The instruction set a convolution step runs at when the CPU's best is `isa`: AVX2's 8
/// lanes instead of AVX-512's 16 for the row-group kernel (CSR, or, unless 16-lane FMAs run
/// at full rate, block formats with at most [`NARROW_ROWS_MAX_BYTES`] of weights: see
/// [`narrow_rows`]) on 2D maps 8 wide read directly from a padded or
/// strided input. There the 16-lane tiles run over the flat grid (an 8x8 map with its shared
/// padding column is 71 positions: 5 vectors, 80 lanes for 64 outputs), where 8-lane tiles are
/// whole output rows stored plainly; and on a CPU whose AVX-512 executes as two 256-bit halves
/// (Zen 4: one 16-lane FMA per cycle, two 8-lane ones) 8 lanes lose no FMA throughput.
/// Measured on Zen 4, 1 thread, `bench models --threads 1 --rates 8` alternating builds
/// (per-layer step medians, three runs each): ResNet-20's 64@8x8 layers block-punched 8x
/// 7.6-8.6 -> 6.9-7.4 us (67-73% -> 75-80% of their FLOP reduction), CSR 8x 20.7-21.7 ->
/// 12.0-13.4 us; VGG-11's 256@8x8 CSR 171 / 333 -> 111 / 248 us; whole plans ResNet-20
/// block-punched 0.134 -> 0.130 ms, unstructured 0.329-0.335 -> 0.280-0.282, VGG-11
/// unstructured 2.07-2.11 -> 1.91-1.99. Not taken: block-punched with larger weights, which
/// streams them once per tile from L2 where 8-lane tiles are smaller (VGG-11's 256@8x8, 295 KB
/// at 8x: 109 -> 124 us), and BCR (ResNet-20's 64@8x8 8.2-9.4 -> 8.7-9.8 us, VGG-11's 256@8x8
/// 128-130 -> 128-149). Maps 16 or 32 wide are whole vectors at 16 lanes (rows, stacked rows).
/// Where a 16-lane FMA issues as fast as an 8-lane one ([`Isa::full_width_fma`]: two 512-bit
/// FMA pipes), 8 lanes halve a block format's arithmetic per cycle and it keeps 16 lanes;
/// CSR, one FMA per loaded input vector and weight, still gains from 8-lane rows. Xeon with
/// AVX-512 (Sapphire Rapids generation), 1 thread, `bench models --only resnet20 --only vgg11
/// --threads 1 --rates 8 --schemes block-punched:8x4,unstructured,bcr:8x32`, two runs each
/// way alternating (`TESSERA_KERNELS_FMA512=half` for 8 lanes): ResNet-20's 64@8x8 layers
/// block-punched 8x 7.7-8.3 -> 5.3-6.5 us (47-59% -> 61-80% of their FLOP reduction), whole
/// plan 0.122-0.126 -> 0.110-0.112 ms (4.43-4.44x -> 4.82-5.00x); 16-lane CSR was slower
/// (unstructured 8x ResNet-20 1.94-1.96x -> 1.72-1.77x, VGG-11 1.26-1.33x -> 1.15-1.20x).
pub(crate) fn conv_isa(kernel: &ConvKernel, isa: Isa) -> Isa {
    let narrow = isa.at_most_8_lanes();
    if narrow == isa {
        return isa;
    }
    let eight_wide =
        |s: &ConvShape, layout: &InputLayout| s.is_2d() && s.output()[2] == 8 && !layout.in_place();
    match kernel {
        ConvKernel::Rows { conv, .. }
            if conv.input() == RowGroupInput::Direct && eight_wide(conv.shape(), conv.layout()) =>
        {
            let m = conv.matrix();
            let csr = m.groups() == m.rows();
            if narrow_rows(csr, m.bytes().values, isa.full_width_fma()) { narrow } else { isa }
        }
        _ => isa,
    }
}

/// Whether a row-group convolution on an 8-wide map runs at 8 lanes on an AVX-512 CPU (see
/// [`conv_isa`]): CSR always; a block format with at most [`NARROW_ROWS_MAX_BYTES`] of
/// weights unless 16-lane FMAs run at full rate (`full_width_fma`).
fn narrow_rows(csr: bool, weight_bytes: usize, full_width_fma: bool) -> bool {
    csr || (weight_bytes <= NARROW_ROWS_MAX_BYTES && !full_width_fma)
}

/// A convolution kernel with its packed weights and scratch.
#[derive(Debug)]
pub(crate) enum ConvKernel {
    /// The row-group engine (direct convolution over kept columns).
    Rows { conv: Box<RowGroupConv>, scratch: ConvScratch },
    /// The FKW pattern kernel.
    Fkw { conv: Box<FkwConv>, scratch: ConvScratch },
    /// The BCR block kernel.
    Bcr { conv: Box<BcrConv>, scratch: ConvScratch },
    /// The depthwise stencil kernel (dense depthwise convolutions).
    Depthwise { conv: Box<DepthwiseConv>, scratch: DepthwiseScratch },
    /// The channel-vector kernel (dense convolutions on small maps).
    ChannelVector { conv: Box<ChannelVectorConv>, scratch: ConvScratch },
}

impl ConvKernel {
    /// The input layout of a kernel that can run on an input a producer wrote pre-packed (see
    /// [`ConvKernel::run_prepacked`]); `None` for the others.
    pub(crate) fn prepackable_layout(&self) -> Option<&InputLayout> {
        match self {
            ConvKernel::Rows { conv, .. } => Some(conv.layout()),
            ConvKernel::Bcr { conv, .. } => Some(conv.layout()),
            ConvKernel::Fkw { conv, .. } => Some(conv.layout()),
            ConvKernel::ChannelVector { conv, .. } => Some(conv.layout()),
            _ => None,
        }
    }

    /// Reads its input in place from one phase plane of `source` (`len` floats per sample),
    /// where a 1x1 strided convolution's input lies in a producer's phase-split store
    /// ([`InputLayout::phase_view`]); `false` (nothing changed) for other convolutions and
    /// kernels (the row-group engine and BCR take it).
    pub(crate) fn read_phase_plane(&mut self, source: &OutputTarget, len: usize) -> bool {
        let shape = match self {
            ConvKernel::Rows { conv, .. } => *conv.shape(),
            ConvKernel::Bcr { conv, .. } => *conv.shape(),
            _ => return false,
        };
        let Some(view) = InputLayout::phase_view(&shape, source, len) else { return false };
        // The scratch follows the layout (a plain run packs the view).
        match self {
            ConvKernel::Rows { conv, scratch } => {
                let ok = conv.set_input_layout(view).is_ok();
                if ok {
                    *scratch = ConvScratch::for_conv(conv);
                }
                ok
            }
            ConvKernel::Bcr { conv, scratch } => {
                let ok = conv.set_input_layout(view).is_ok();
                if ok {
                    *scratch = conv.scratch();
                }
                ok
            }
            _ => false,
        }
    }

    /// Where the kernel reads a fused residual, for kernels that can read one laid out
    /// otherwise than the output (the row-group engine, BCR and FKW); `None` for the others.
    pub(crate) fn residual_target(&self) -> Option<OutputTarget> {
        match self {
            ConvKernel::Rows { conv, .. } => Some(*conv.residual_layout()),
            ConvKernel::Bcr { conv, .. } => Some(*conv.residual_layout()),
            ConvKernel::Fkw { conv, .. } => Some(*conv.residual_layout()),
            _ => None,
        }
    }

    /// Reads a fused residual laid out as `layout` from now on (kept when the output is
    /// retargeted); `false` (nothing changed) for kernels that cannot, or a layout their
    /// tiles cannot address.
    pub(crate) fn set_residual_target(&mut self, layout: OutputTarget) -> bool {
        match self {
            ConvKernel::Rows { conv, .. } => conv.set_residual_layout(Some(layout)).is_ok(),
            ConvKernel::Bcr { conv, .. } => conv.set_residual_layout(Some(layout)).is_ok(),
            ConvKernel::Fkw { conv, .. } => conv.set_residual_layout(Some(layout)).is_ok(),
            _ => false,
        }
    }

    /// Stores this kernel's outputs to `target` from now on and returns the floats they span
    /// there; `None` (nothing changed) for kernels that always store NCDHW, or a target that
    /// does not fit the output. A phase-split target (a stride-2 consumer's input) is taken
    /// only by kernels that store it as whole vectors at `isa`: block-punched and BCR tiles of
    /// one output row deinterleaved (ResNet-20's 16@32x32 at 8x, block-punched: +0.7 us
    /// stored against -2.5 us for the stride-2 consumer, which no longer packs its input;
    /// `examples/phase_split.rs` in tessera-kernels). Compress stores lane by lane (FKW's
    /// pattern rows, CSR rows of 8-vector tiles) cost the producer about what the consumer
    /// saves or more (in whole plans, FKW: +5 us against -3 us; CSR: +4 against -3.7).
    pub(crate) fn retarget(&mut self, target: OutputTarget, isa: Isa) -> Option<usize> {
        let split = target.phases.is_some();
        let channels = match self {
            ConvKernel::Rows { conv, .. } => {
                let before = *conv.output_target();
                conv.set_output_target(target).ok()?;
                if split && !conv.stores_whole_vectors(isa) {
                    // Back to the target it had (which fitted).
                    conv.set_output_target(before).ok()?;
                    return None;
                }
                conv.shape().out_channels
            }
            ConvKernel::Bcr { conv, .. } => {
                conv.set_output_target(target).ok()?;
                conv.shape().out_channels
            }
            ConvKernel::Fkw { .. } if split => return None,
            ConvKernel::Fkw { conv, .. } => {
                conv.set_output_target(target).ok()?;
                conv.shape().out_channels
            }
            // Only targets keeping each channel's outputs contiguous (a 1x1 convolution's
            // input with a gap between channels), which `set_output_target` checks.
            ConvKernel::Depthwise { conv, .. } => {
                conv.set_output_target(target).ok()?;
                conv.shape().out_channels
            }
            _ => return None,
        };
        Some(target.len(channels))
    }

    /// Runs on an input in [`ConvKernel::prepackable_layout`] (no packing), the epilogue fused.
    pub(crate) fn run_prepacked(
        &mut self,
        isa: Isa,
        packed: &[f32],
        output: &mut [f32],
        threads: usize,
        epilogue: Epilogue<'_>,
    ) -> KernelResult<()> {
        match self {
            ConvKernel::Rows { conv, scratch } => {
                conv.run_prepacked(isa, packed, output, scratch, threads, epilogue)
            }
            ConvKernel::Bcr { conv, scratch } => {
                conv.run_prepacked(isa, packed, output, scratch, threads, epilogue)
            }
            ConvKernel::Fkw { conv, scratch } => {
                conv.run_prepacked(isa, packed, output, scratch, threads, epilogue)
            }
            ConvKernel::ChannelVector { conv, scratch } => {
                conv.run_prepacked(isa, packed, output, scratch, threads, epilogue)
            }
            _ => {
                Err(KernelError::InvalidShape { reason: "this kernel packs its own input".into() })
            }
        }
    }
}

/// A fully connected kernel (one vector at a time).
#[derive(Debug)]
pub(crate) enum LinearKernel {
    /// Dense GEMV.
    Dense { weights: Vec<f32>, rows: usize, cols: usize },
    /// Row-group GEMV.
    Rows(Box<RowGroupMatrix>),
    /// BCR-compact GEMV on balanced blocks ([`BcrConv::balanced_gemv`]).
    Bcr(Box<BcrConv>),
}

/// Kernel label and storage format, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Choice {
    pub kernel: &'static str,
    pub format: &'static str,
}

/// The convolution geometry of a conv node reading `input` of shape `[N, C, spatial...]`.
pub(crate) fn conv_shape(node: &Node, weight: &Param, input: &[usize]) -> Result<ConvShape> {
    let Op::Conv { stride, padding, dilation, groups, .. } = &node.op else {
        return Err(unsupported(node, "not a convolution"));
    };
    let ws = &weight.tensor.shape;
    let spatial = ws.len().saturating_sub(2);
    if !(spatial == 2 || spatial == 3) || input.len() != ws.len() {
        return Err(unsupported(node, "only 2-D and 3-D convolutions are lowered"));
    }
    // Pad 2-D attributes to the kernels' [depth, height, width].
    let lift = |v: &[usize], fill: usize| -> [usize; 3] {
        if spatial == 2 { [fill, v[0], v[1]] } else { [v[0], v[1], v[2]] }
    };
    let dims = &input[2..];
    let shape = ConvShape {
        in_channels: input[1],
        out_channels: ws[0],
        groups: *groups,
        input: lift(dims, 1),
        kernel: lift(&ws[2..], 1),
        stride: lift(stride, 1),
        padding: lift(padding, 0),
        dilation: lift(dilation, 1),
    };
    shape.validated().map_err(kernel_error(&node.name))
}

/// Masked row groups: every group of up to 8 filters (inside a channel group) keeps the
/// columns any of its filters keeps.
fn masked_rows(shape: &ConvShape, w: &[f32], mask: Option<&Mask>) -> Result<RowGroupMatrix> {
    let groups =
        RowGroupMatrix::uniform_groups(shape.out_channels, shape.out_per_group(), GROUP_ROWS);
    RowGroupMatrix::from_dense(shape.out_channels, shape.cols(), w, mask, &groups)
        .map_err(kernel_error("masked rows"))
}

/// The pattern library of a pattern scheme: the scheme's own, else the distinct kept-tap
/// sets of the mask (each must be a 4-tap pattern with the centre).
fn library_of(scheme_library: Option<&PatternLibrary>, mask: &Mask) -> Option<PatternLibrary> {
    if let Some(l) = scheme_library {
        return Some(l.clone());
    }
    let mut seen: Vec<u16> = Vec::new();
    for k in 0..mask.len() / 9 {
        let bits = (0..9).fold(0u16, |b, t| b | u16::from(mask.get(9 * k + t)) << t);
        if bits != 0 && !seen.contains(&bits) {
            seen.push(bits);
        }
    }
    seen.sort_unstable();
    PatternLibrary::new(seen).ok()
}

fn rows_kernel(node: &str, m: RowGroupMatrix, shape: ConvShape) -> Result<ConvKernel> {
    bind_rows(m, shape).map_err(kernel_error(node))
}

fn bind_rows(m: RowGroupMatrix, shape: ConvShape) -> KernelResult<ConvKernel> {
    let conv = RowGroupConv::new(m, shape)?;
    let scratch = ConvScratch::for_conv(&conv);
    Ok(ConvKernel::Rows { conv: Box::new(conv), scratch })
}

/// Masked row groups of a `[rows, cols]` fully connected weight (groups of 8 rows).
fn masked_linear(rows: usize, cols: usize, w: &[f32], mask: &Mask) -> KernelResult<LinearKernel> {
    let groups = RowGroupMatrix::uniform_groups(rows, rows, GROUP_ROWS);
    Ok(LinearKernel::Rows(Box::new(RowGroupMatrix::from_dense(
        rows,
        cols,
        w,
        Some(mask),
        &groups,
    )?)))
}

/// The kernel of a dense convolution: the row-group engine with every weight kept (direct
/// convolution). Not im2col + GEMM, although it is up to 1.25x faster on small feature maps
/// (conv3x3 256@8x8): the `gemm` crate allocates its packing buffers on every call, and a
/// plan's run allocates nothing.
fn dense_conv(node: &str, shape: ConvShape, w: &[f32]) -> Result<(ConvKernel, Choice)> {
    // Depthwise: one filter per group, labelled apart for the latency model.
    if shape.in_per_group() == 1 && shape.groups > 1 {
        if stencil_first(&shape) {
            return stencil(node, shape, w);
        }
        return Ok((
            rows_kernel(node, masked_rows(&shape, w, None)?, shape)?,
            Choice { kernel: "depthwise", format: "row groups" },
        ));
    }
    if channel_vector_first(&shape) {
        return channel_vector(node, shape, w);
    }
    Ok((
        rows_kernel(node, masked_rows(&shape, w, None)?, shape)?,
        Choice { kernel: "direct", format: "dense" },
    ))
}

/// Whether a dense convolution gets the channel-vector kernel rather than the row-group
/// engine when nothing is timed: ungrouped, on maps of at most 16 output positions, or 64
/// with a kernel larger than 1x1. Measured (`examples/channel_vector_crossover`, 1 thread,
/// channel-vector / row-group time): 0.26-0.30 on 2x2 maps, 0.51-0.58 on VGG's 3x3 layers at
/// 4x4, 0.71-0.85 on 3x3 layers at 8x8 (64-256 channels) and LeNet-5's 5x5 conv2, 0.77-0.91 on
/// MobileNetV2's 1x1 layers at 4x4; 0.95-1.14 on 1x1 at 7x7, 1.32 on 1x1 at 8x8, 0.95-1.00 on
/// 3x3 at 16x16 and 1.67 at 32x32 with 16 channels. The tuner times both either way.
///
/// With 8-lane vectors (AVX2), output rows of exactly 8 positions are stacked two per
/// row-group tile (plain stores, no padding columns computed), and there the row-group engine
/// caught up: on Zen 3, channel-vector / row-group time 1.01-1.10 on 3x3 layers at 8x8
/// (ResNet-20's 64@8x8, VGG's 128->256 and 256->256), while 4x4 and 2x2 stay 0.29-0.52. Those
/// layers go to the row-group engine there. On larger maps with 8-lane vectors the
/// channel-vector kernel wins on layers of [`CHANNEL_VECTOR_WIDE_INPUTS`] or more input
/// channels with a kernel larger than 1x1 (Zen 3, `examples/channel_vector_crossover`:
/// 0.89-0.94 at 16x16, 0.85 on 64 channels at 32x32, 0.73-0.75 at 28x28 and 56x56, 0.98 at
/// 112x112; 1.00-1.13 with 16 or 32 channels at 16x16 and 32x32), so there it gets them.
pub(crate) fn channel_vector_first(shape: &ConvShape) -> bool {
    let p = shape.output_positions();
    let eight_lanes = Isa::detect().lanes() == 8;
    let stacked_rows = eight_lanes && shape.output()[2] == 8;
    let spatial = shape.kernel_volume() > 1;
    let wide_inputs = eight_lanes && spatial && shape.in_per_group() >= CHANNEL_VECTOR_WIDE_INPUTS;
    shape.groups == 1
        && (p <= 16 || (p <= 64 && spatial && !stacked_rows) || (wide_inputs && !stacked_rows))
}

/// Input channels from which an 8-lane CPU gives the channel-vector kernel every dense
/// ungrouped layer with a kernel larger than 1x1 (see [`channel_vector_first`]).
const CHANNEL_VECTOR_WIDE_INPUTS: usize = 64;

/// Largest map (output positions) on which the tuner also times the channel-vector kernel
/// (layers that [`channel_vector_first`] gives it, whatever their map, time the direct kernel
/// beside it).
const CHANNEL_VECTOR_MAX_POSITIONS: usize = 256;

/// The channel-vector kernel of an ungrouped convolution (`w` dense, zeros included).
fn channel_vector(node: &str, shape: ConvShape, w: &[f32]) -> Result<(ConvKernel, Choice)> {
    let conv = ChannelVectorConv::new(shape, w).map_err(kernel_error(node))?;
    let scratch = conv.scratch(std::thread::available_parallelism().map_or(1, |n| n.get()));
    Ok((
        ConvKernel::ChannelVector { conv: Box::new(conv), scratch },
        Choice { kernel: "channel-vector", format: "dense" },
    ))
}

/// Channels from which a depthwise layer gets the stencil kernel on any map: it runs its
/// channel-interleaved method there (`DepthwiseConv::method`), which on AVX-512 took 0.59-0.67
/// of the row-group time at stride 1 on 14x14, 0.62-0.78 on 28x28, 0.40-0.60 on 7x7 and 8x8,
/// 0.14-0.25 on 2x2 and 4x4 (`examples/depthwise_crossover`, 12-960 channels).
const INTERLEAVED_MIN_CHANNELS: usize = 4;

/// Output positions from which a stride-1 depthwise layer gets the stencil kernel.
const STENCIL_MIN_POSITIONS: usize = 1024;

/// Whether a dense depthwise layer gets the stencil kernel rather than the row-group engine
/// when nothing is timed. The stencil wins on strided layers and large maps
/// (`examples/depthwise_crossover`: 0.70-0.94x of the row-group time at stride 2, ~0.8x on
/// 28x28 and larger maps; MobileNetV2's dense plan on 32x32 inputs 2.66 -> 2.06 ms); on small
/// stride-1 maps the row-group engine reads its input pre-packed by the producer and won in a
/// MobileNetV2 plan on 28x28 inputs (7x7 maps: 7.2 vs 12.8 us; 28x28: equal). Maps of at most
/// 8x8 (stride 1) go to the depthwise kernel too: on AVX-512 it keeps whole planes in
/// registers (`examples/depthwise_crossover`: 0.22-0.36 of the row-group time at 4x4, 0.48-0.87
/// at 7x7, 0.29-0.44 at 2x2). Those crossovers are AVX-512's: with 8-lane vectors (AVX2) the
/// stencil kernel wins on every 2-D depthwise layer (`examples/depthwise_crossover` on Zen 3:
/// 0.53-0.60 of the row-group time at stride 1 on 14x14 and 28x28, 0.56-0.93 on 2x2-8x8), so
/// without AVX-512 on this CPU the table gives it all of them; there it runs its
/// channel-interleaved method (`DepthwiseConv::method`), 0.09-0.71 of the padded planes' time
/// from 12 channels up. Since that 8-lane method runs on AVX-512 CPUs too (and wins there on
/// maps of at most 8x8 and at stride 2), the stencil kernel gets every depthwise layer of 4
/// channels or more on them as well ([`INTERLEAVED_MIN_CHANNELS`]; MobileNetV2's dense plan on
/// 32x32 inputs, 1 thread, Xeon: depthwise layers 0.49 -> 0.36 ms in all, the plan 1.83 ->
/// 1.63 ms). The tuner times both either way.
pub(crate) fn stencil_first(shape: &ConvShape) -> bool {
    shape.is_2d()
        && (Isa::detect().lanes() < 16
            || shape.out_channels >= INTERLEAVED_MIN_CHANNELS
            || shape.stride[1] > 1
            || shape.stride[2] > 1
            || shape.output_positions() >= STENCIL_MIN_POSITIONS
            || DepthwiseConv::in_registers(shape))
}

/// The depthwise stencil kernel of a 2-D depthwise layer.
fn stencil(node: &str, shape: ConvShape, w: &[f32]) -> Result<(ConvKernel, Choice)> {
    let conv = DepthwiseConv::new(shape, w).map_err(kernel_error(node))?;
    let scratch = conv.scratch(std::thread::available_parallelism().map_or(1, |n| n.get()));
    Ok((
        ConvKernel::Depthwise { conv: Box::new(conv), scratch },
        Choice { kernel: "depthwise", format: "dense" },
    ))
}

/// Every kernel that can run this convolution, the table's choice first: then the row-group
/// engine for a dense depthwise layer, the channel-vector kernel or the direct one for a dense
/// ungrouped layer on a map of at most 256 positions (whichever the table did not pick), and,
/// for a pruned weight, masked row groups and the dense direct kernel on the pruned weights
/// (at low sparsity the dense kernel can win), BCR's row-group form and the pattern kernel's
/// other order. The tuner times them.
pub(crate) fn conv_candidates(
    node: &Node,
    param: &Param,
    shape: ConvShape,
    threads: usize,
) -> Result<Vec<(ConvKernel, Choice)>> {
    let name = node.name.as_str();
    let w = &param.tensor.data;
    let mut out = vec![conv_kernel_gathering(node, param, shape, threads)?];
    if param.sparsity.is_none() && shape.in_per_group() == 1 && shape.groups > 1 && shape.is_2d() {
        // Both depthwise engines, whichever the table put first.
        if matches!(out[0].0, ConvKernel::Depthwise { .. }) {
            out.push((
                rows_kernel(name, masked_rows(&shape, w, None)?, shape)?,
                Choice { kernel: "depthwise", format: "row groups" },
            ));
        } else {
            out.push(stencil(name, shape, w)?);
        }
    }
    let first_is_channel_vector = matches!(out[0].0, ConvKernel::ChannelVector { .. });
    if param.sparsity.is_none()
        && shape.groups == 1
        && (shape.output_positions() <= CHANNEL_VECTOR_MAX_POSITIONS || first_is_channel_vector)
    {
        if first_is_channel_vector {
            out.push((
                rows_kernel(name, masked_rows(&shape, w, None)?, shape)?,
                Choice { kernel: "direct", format: "dense" },
            ));
        } else {
            out.push(channel_vector(name, shape, w)?);
        }
    }
    if let ConvKernel::Fkw { conv, .. } = &out[0].0 {
        // The pattern kernel's other order (the table's is picked by mean run length).
        let (order, format) = match conv.order() {
            FkwOrder::ChannelMajor => (FkwOrder::FilterMajor, "FKW, filter-major"),
            FkwOrder::FilterMajor => (FkwOrder::ChannelMajor, "FKW, channel-major"),
            FkwOrder::SmallMap => (FkwOrder::FilterMajor, "FKW, filter-major"),
        };
        let other = FkwConv::with_order(conv.weights().clone(), shape, Some(order))
            .map_err(kernel_error(name))?;
        let scratch = other.scratch_for(threads);
        out.push((
            ConvKernel::Fkw { conv: Box::new(other), scratch },
            Choice { kernel: "pattern", format },
        ));
    }
    if let Some(sp) = &param.sparsity {
        if out[0].1.format != "masked" {
            out.push((
                rows_kernel(name, masked_rows(&shape, w, Some(&sp.mask))?, shape)?,
                Choice { kernel: "row-groups", format: "masked" },
            ));
        }
        if let Scheme::Bcr { block } = &sp.scheme {
            let layer = shape.layer(name).map_err(kernel_error(name))?;
            if let Ok(f) = BcrCompact::encode(&layer, w, &sp.mask, block.rows(), block.cols()) {
                out.push((
                    rows_kernel(name, f.to_row_groups(), shape)?,
                    Choice { kernel: "row-groups", format: "BCR rows" },
                ));
            }
        }
        out.push(dense_conv(name, shape, w)?);
    }
    out.into_iter()
        .map(|(k, c)| {
            Ok((direct_input_above_one_thread(k, threads).map_err(kernel_error(name))?, c))
        })
        .collect()
}

/// Every kernel that can run this fully connected layer, the table's choice first (then the
/// dense GEMV on the pruned weights, and masked row groups).
pub(crate) fn linear_candidates(
    node: &Node,
    param: &Param,
    isa: Isa,
) -> Result<Vec<(LinearKernel, Choice)>> {
    let mut out = vec![linear_kernel(node, param, isa)?];
    if let Some(sp) = &param.sparsity {
        let s = &param.tensor.shape;
        let (rows, cols) = (s[0], s[1]);
        if let LinearKernel::Bcr(conv) = &out[0].0 {
            out.push((
                LinearKernel::Rows(Box::new(conv.matrix().to_row_groups())),
                Choice { kernel: "row-groups gemv", format: "BCR rows" },
            ));
        }
        if out[0].1.format != "masked" {
            out.push((
                masked_linear(rows, cols, &param.tensor.data, &sp.mask)
                    .map_err(kernel_error(&node.name))?,
                Choice { kernel: "row-groups gemv", format: "masked" },
            ));
        }
        out.push((
            LinearKernel::Dense { weights: param.tensor.data.clone(), rows, cols },
            Choice { kernel: "gemv", format: "dense" },
        ));
    }
    Ok(out)
}

/// Chooses, encodes and binds the kernel of a convolution whose weight is `param`.
pub(crate) fn conv_kernel(
    node: &Node,
    param: &Param,
    shape: ConvShape,
    threads: usize,
) -> Result<(ConvKernel, Choice)> {
    let (kernel, choice) = conv_kernel_gathering(node, param, shape, threads)?;
    Ok((direct_input_above_one_thread(kernel, threads).map_err(kernel_error(&node.name))?, choice))
}

/// Above one thread, convolutions read their packed input itself, not a gathered copy
/// (`RowGroupInput::Gathered`, `BcrConv::with_input`, chosen by the kernels for small
/// maps): the copy is a parallel pass of its own, whose halves each thread then reads from
/// the other core. Measured on VGG-11 at 8x (`bench models --only vgg11 --rates 8`, ms, two
/// runs each, gathered vs not): BCR 8x32 0.71-0.73 vs 0.83-0.88 on 1 thread but 0.57-0.58
/// vs 0.54-0.56 on 2; block-punched 8x4 0.51 vs 0.56 on 1, 0.39-0.40 vs 0.36-0.38 on 2.
/// The row-group quad form (`RowGroupInput::Quad`, at most 4 positions) too, though it cuts
/// the FMAs by 4: on 2 threads it was no faster (block-punched 8x at 512@2x2, seven
/// alternating runs of `examples/bcr_small_map`, min us: quad 42.5-67.6 and once 234,
/// direct 46.0-52.7; on 1 thread 50 against 87). BCR's quad form (`BcrInput::Quad`) stays:
/// since its rows hold each position once and its gather reads one window per channel it
/// is faster on 2 threads too (BCR 8x at 512@2x2, `bcr_small_map -- 512 2 512 3 3 bcr|bcr-direct
/// 2`, three alternating runs, min us: quad 46.0-62.4, direct 79.6-103.4).
fn direct_input_above_one_thread(kernel: ConvKernel, threads: usize) -> KernelResult<ConvKernel> {
    if threads <= 1 {
        return Ok(kernel);
    }
    Ok(match kernel {
        ConvKernel::Rows { conv, .. } if conv.gathered() => {
            let conv =
                RowGroupConv::with_gathered_input(conv.matrix().clone(), *conv.shape(), false)?;
            let scratch = ConvScratch::for_conv(&conv);
            ConvKernel::Rows { conv: Box::new(conv), scratch }
        }
        ConvKernel::Bcr { conv, .. } if conv.input() == BcrInput::Gathered => {
            let conv = BcrConv::with_input(conv.matrix().clone(), *conv.shape(), BcrInput::Direct)?;
            let scratch = conv.scratch();
            ConvKernel::Bcr { conv: Box::new(conv), scratch }
        }
        other => other,
    })
}

/// [`conv_kernel`] with the kernels' own choice of input form.
fn conv_kernel_gathering(
    node: &Node,
    param: &Param,
    shape: ConvShape,
    threads: usize,
) -> Result<(ConvKernel, Choice)> {
    let name = node.name.as_str();
    let w = &param.tensor.data;
    let Some(sp) = &param.sparsity else {
        return dense_conv(name, shape, w);
    };
    let layer = shape.layer(name).map_err(kernel_error(name))?;
    let mask = &sp.mask;
    // Ok(None): the scheme has no format of its own; Err: its format refused the mask.
    let encoded: KernelResult<Option<(ConvKernel, Choice)>> = (|| {
        let rows =
            |m, format| Ok(Some((bind_rows(m, shape)?, Choice { kernel: "row-groups", format })));
        match &sp.scheme {
            Scheme::Unstructured => {
                rows(Csr::encode(shape.out_channels, shape.cols(), w, mask)?.to_row_groups(), "CSR")
            }
            Scheme::BlockPunched { block, .. } => rows(
                BlockPunched::encode(&layer, w, mask, block.rows(), block.cols())?.to_row_groups(),
                "block-punched",
            ),
            Scheme::Kgs { group, .. } => rows(
                Kgs::encode(&layer, w, mask, group.rows(), group.cols())?.to_row_groups(),
                "KGS",
            ),
            Scheme::Block { block, .. } => rows(
                Bsr::encode(&layer, w, mask, block.rows(), block.cols())?.to_row_groups(),
                "BSR",
            ),
            Scheme::Bcr { block } => {
                let f = BcrCompact::encode(&layer, w, mask, block.rows(), block.cols())?;
                let conv = BcrConv::new(f, shape)?;
                let scratch = conv.scratch();
                Ok(Some((
                    ConvKernel::Bcr { conv: Box::new(conv), scratch },
                    Choice { kernel: "bcr-blocks", format: "BCR-compact" },
                )))
            }
            Scheme::Pattern(ps)
                if shape.kernel == [1, 3, 3] && shape.groups == 1 && shape.is_2d() =>
            {
                let Some(lib) = library_of(ps.library.as_ref(), mask) else {
                    return Err(KernelError::InvalidShape {
                        reason: "the mask's kernels are not 4-tap patterns".into(),
                    });
                };
                let conv = FkwConv::new(Fkw::encode(&layer, w, mask, &lib)?, shape)?;
                let scratch = conv.scratch_for(threads);
                Ok(Some((
                    ConvKernel::Fkw { conv: Box::new(conv), scratch },
                    Choice { kernel: "pattern", format: "FKW" },
                )))
            }
            _ => Ok(None),
        }
    })();
    match encoded {
        Ok(Some(k)) => return Ok(k),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(node = name, scheme = %sp.scheme, error = %e, "falling back to masked row groups");
        }
    }
    Ok((
        rows_kernel(name, masked_rows(&shape, w, Some(mask))?, shape)?,
        Choice { kernel: "row-groups", format: "masked" },
    ))
}

/// Chooses and encodes the kernel of a fully connected layer `[out, in]` for `isa`.
pub(crate) fn linear_kernel(
    node: &Node,
    param: &Param,
    isa: Isa,
) -> Result<(LinearKernel, Choice)> {
    let name = node.name.as_str();
    let s = &param.tensor.shape;
    if s.len() != 2 {
        return Err(unsupported(node, format!("weight of shape {s:?}, expected [out, in]")));
    }
    let (rows, cols) = (s[0], s[1]);
    let w = &param.tensor.data;
    let Some(sp) = &param.sparsity else {
        return Ok((
            LinearKernel::Dense { weights: w.clone(), rows, cols },
            Choice { kernel: "gemv", format: "dense" },
        ));
    };
    let layer = tessera_sparsity::Layer::linear(name, rows, cols)
        .map_err(|e| crate::error::unsupported(node, e.to_string()))?;
    let mask = &sp.mask;
    // Ok(None): the scheme has no format of its own; Err: its format refused the mask. BCR
    // runs its block kernel's GEMV where that takes the balanced-block form (LSTM gates
    // 4096 x 2048 at 10x: 129-131 us against 181-183 as row groups, `bcr_gemv` example),
    // else as row groups (the general BCR GEMV: 227-240 us there).
    let encoded: KernelResult<Option<(LinearKernel, Choice)>> = (|| {
        let rows_of = |m, format| {
            Ok(Some((
                LinearKernel::Rows(Box::new(m)),
                Choice { kernel: "row-groups gemv", format },
            )))
        };
        match &sp.scheme {
            Scheme::Unstructured => {
                rows_of(Csr::encode(rows, cols, w, mask)?.to_row_groups(), "CSR")
            }
            Scheme::Block { block, .. } => rows_of(
                Bsr::encode(&layer, w, mask, block.rows(), block.cols())?.to_row_groups(),
                "BSR",
            ),
            Scheme::BlockPunched { block, .. } => rows_of(
                BlockPunched::encode(&layer, w, mask, block.rows(), block.cols())?.to_row_groups(),
                "block-punched",
            ),
            Scheme::Bcr { block } => {
                let m = BcrCompact::encode(&layer, w, mask, block.rows(), block.cols())?;
                let conv = BcrConv::gemm(m, 1)?;
                if conv.balanced_gemv(isa) {
                    let choice = Choice { kernel: "bcr gemv", format: "BCR-compact" };
                    Ok(Some((LinearKernel::Bcr(Box::new(conv)), choice)))
                } else {
                    rows_of(conv.matrix().to_row_groups(), "BCR rows")
                }
            }
            _ => Ok(None),
        }
    })();
    match encoded {
        Ok(Some(chosen)) => return Ok(chosen),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(node = name, scheme = %sp.scheme, error = %e, "falling back to masked row groups");
        }
    }
    Ok((
        masked_linear(rows, cols, w, mask).map_err(kernel_error(name))?,
        Choice { kernel: "row-groups gemv", format: "masked" },
    ))
}

/// Shape of value `name`, or an error naming the node.
pub(crate) fn shape_of<'a>(shapes: &'a Shapes, node: &Node, name: &str) -> Result<&'a [usize]> {
    shapes
        .get(name)
        .map(Vec::as_slice)
        .ok_or_else(|| unsupported(node, format!("no shape inferred for `{name}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both sides of the FMA-width rule, whichever this CPU is: CSR narrows everywhere, small
    /// block formats only where 16-lane FMAs run at half rate, large ones never.
    #[test]
    fn narrow_rows_follow_the_fma_width() {
        let (small, large) = (NARROW_ROWS_MAX_BYTES, NARROW_ROWS_MAX_BYTES + 1);
        for full in [false, true] {
            assert!(narrow_rows(true, small, full));
            assert!(narrow_rows(true, large, full));
            assert!(!narrow_rows(false, large, full));
            assert_eq!(narrow_rows(false, small, full), !full);
        }
    }
}
