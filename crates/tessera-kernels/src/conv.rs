//! Convolution shapes and the input layout that turns every convolution into an implicit
//! GEMM with contiguous loads.
//!
//! The trick (used by every conv kernel in this crate): pad the input once, and split it into
//! `stride_d * stride_h * stride_w` *phase planes*. Output position `(od, oh, ow)` is given the
//! flat index `p = od * Hq * Wq + oh * Wq + ow` on the phase-plane grid (`Hq`, `Wq` = padded
//! size / stride, rounded up). For every kernel tap and input channel the inputs that the
//! consecutive output positions need are then *consecutive* floats of one phase plane, starting
//! at a per-(channel, tap) offset. A convolution becomes `Y[rows, p] = sum_e W[rows, e] *
//! packed[offset[e] + p]`: a GEMM whose B matrix rows are slices of the packed input, read with
//! plain vector loads. Positions with `ow >= Wo` (or `oh >= Ho` inside a depth slice) are
//! computed and thrown away: `(Wq - Wo) / Wq` wasted work (3% for 56x56, 20% for 8x8), traded
//! for full-width vectors on small images and no im2col buffer (9x the input for 3x3).
//!
//! Without padding and with stride 1 the input already has this layout and is used in place;
//! for a 1x1 convolution the flat grid *is* the output, so nothing is copied at all. The
//! exception is planes of a multiple of 512 bytes with more than 8 channels (a 32x32 map, a
//! GEMM of 1024 or 128 columns): the same position of every channel then falls in one or a
//! few L1 sets, so such inputs are copied with a 64-byte gap after each channel. Measured on
//! Zen 3 (AVX2, 1 thread, min of runs): 1x1 16->96 at 32x32 131 -> 76 us, 24->144 243 -> 137
//! us, GEMM 1024^3 at 8x (BSR 8x4) 11.4 -> 4.7 ms; with 512-byte planes too (the 1 KiB rule
//! before), BERT's FC 3072x768 by 768x128 at 8x 1.51 -> 1.06 ms. A producer can write that
//! layout directly ([`InputLayout::as_target`]).

use serde::{Deserialize, Serialize};
use tessera_sparsity::{Layer, LayerGeometry};

use crate::error::{KernelError, Result};
use crate::isa::Isa;
use crate::simd::{Simd, simd_entry};

/// Shapes of one convolution. 2-D convolutions have depth 1 (kernel, stride, padding too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConvShape {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Channel groups.
    pub groups: usize,
    /// Input size `[depth, height, width]`.
    pub input: [usize; 3],
    /// Kernel size `[kt, kh, kw]`.
    pub kernel: [usize; 3],
    /// Stride per dimension.
    pub stride: [usize; 3],
    /// Zero padding per dimension (both sides).
    pub padding: [usize; 3],
    /// Dilation per dimension.
    pub dilation: [usize; 3],
}

impl ConvShape {
    /// A 2-D convolution with equal stride and padding in both dimensions.
    pub fn conv2d(
        in_channels: usize,
        out_channels: usize,
        hw: [usize; 2],
        kernel: [usize; 2],
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        ConvShape {
            in_channels,
            out_channels,
            groups: 1,
            input: [1, hw[0], hw[1]],
            kernel: [1, kernel[0], kernel[1]],
            stride: [1, stride, stride],
            padding: [0, padding, padding],
            dilation: [1, 1, 1],
        }
        .validated()
    }

    /// A 3-D convolution with equal stride and padding in every dimension.
    pub fn conv3d(
        in_channels: usize,
        out_channels: usize,
        dhw: [usize; 3],
        kernel: [usize; 3],
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        ConvShape {
            in_channels,
            out_channels,
            groups: 1,
            input: dhw,
            kernel,
            stride: [stride; 3],
            padding: [padding; 3],
            dilation: [1, 1, 1],
        }
        .validated()
    }

    /// The same convolution with `groups` channel groups.
    pub fn with_groups(mut self, groups: usize) -> Result<Self> {
        self.groups = groups;
        self.validated()
    }

    /// The same convolution with dilation `d` in height and width.
    pub fn with_dilation(mut self, d: usize) -> Result<Self> {
        self.dilation = [1, d, d];
        self.validated()
    }

    /// Checks every dimension and that the output is non-empty.
    pub fn validated(self) -> Result<Self> {
        let bad = |reason: String| Err(KernelError::InvalidShape { reason });
        if self.in_channels == 0 || self.out_channels == 0 || self.groups == 0 {
            return bad(format!("channels and groups must be non-zero: {self:?}"));
        }
        if !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return bad(format!(
                "{} groups must divide {} input and {} output channels",
                self.groups, self.in_channels, self.out_channels
            ));
        }
        for d in 0..3 {
            if self.input[d] == 0
                || self.kernel[d] == 0
                || self.stride[d] == 0
                || self.dilation[d] == 0
            {
                return bad(format!("sizes, strides and dilations must be non-zero: {self:?}"));
            }
            let span = self.dilation[d] * (self.kernel[d] - 1) + 1;
            if self.input[d] + 2 * self.padding[d] < span {
                return bad(format!(
                    "dimension {d}: kernel span {span} exceeds padded input {}",
                    self.input[d] + 2 * self.padding[d]
                ));
            }
        }
        Ok(self)
    }

    /// Output size `[depth, height, width]`.
    pub fn output(&self) -> [usize; 3] {
        std::array::from_fn(|d| {
            (self.input[d] + 2 * self.padding[d] - self.dilation[d] * (self.kernel[d] - 1) - 1)
                / self.stride[d]
                + 1
        })
    }

    /// Output positions per output channel.
    pub fn output_positions(&self) -> usize {
        self.output().iter().product()
    }

    /// Input values per channel.
    pub fn input_plane(&self) -> usize {
        self.input.iter().product()
    }

    /// Kernel taps per (filter, channel).
    pub fn kernel_volume(&self) -> usize {
        self.kernel.iter().product()
    }

    /// Input channels per group.
    pub fn in_per_group(&self) -> usize {
        self.in_channels / self.groups
    }

    /// Output channels per group.
    pub fn out_per_group(&self) -> usize {
        self.out_channels / self.groups
    }

    /// GEMM columns per row: input channels per group times kernel volume.
    pub fn cols(&self) -> usize {
        self.in_per_group() * self.kernel_volume()
    }

    /// Dense FLOPs (2 per MAC).
    pub fn flops(&self) -> u64 {
        2 * (self.out_channels * self.cols() * self.output_positions()) as u64
    }

    /// Whether this is a 2-D convolution (depth 1 throughout).
    pub fn is_2d(&self) -> bool {
        self.input[0] == 1 && self.kernel[0] == 1 && self.padding[0] == 0 && self.stride[0] == 1
    }

    /// The weight's geometry as tessera-sparsity sees it.
    pub fn geometry(&self) -> LayerGeometry {
        if self.is_2d() {
            LayerGeometry::Conv2d {
                out_channels: self.out_channels,
                in_channels: self.in_channels,
                kh: self.kernel[1],
                kw: self.kernel[2],
                groups: self.groups,
            }
        } else {
            LayerGeometry::Conv3d {
                out_channels: self.out_channels,
                in_channels: self.in_channels,
                kt: self.kernel[0],
                kh: self.kernel[1],
                kw: self.kernel[2],
            }
        }
    }

    /// A tessera-sparsity layer for this convolution (FLOPs use the output size).
    pub fn layer(&self, name: &str) -> Result<Layer> {
        Ok(Layer::new(name, self.geometry())?.with_output_positions(self.output_positions() as u64))
    }

    /// The packed-input layout of this convolution.
    pub fn layout(&self) -> InputLayout {
        InputLayout::new(self)
    }
}

/// Floats after each channel of a packed input whose planes are a multiple of 512 bytes.
const CHANNEL_GAP: usize = 16;

/// Where the packed input puts every value, and how flat output positions map back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputLayout {
    shape: ConvShape,
    /// Phase-plane size `[Dq, Hq, Wq]`.
    plane: [usize; 3],
    /// Floats per phase plane.
    plane_len: usize,
    /// Floats per channel (all phase planes).
    channel_len: usize,
    /// Whether the input is used as is (no padding, stride 1).
    in_place: bool,
    /// Length of the flat output grid (`Do * Hq * Wq`), including discarded positions.
    flat_len: usize,
    /// Computed ranges of flat positions, one per output depth slice.
    runs: Vec<(usize, usize)>,
    /// Whether the flat grid equals the output (nothing to compact).
    flat_is_output: bool,
    packed_len: usize,
    /// Per dimension, bit `p` set when some kernel tap reads phase `p` (a 1x1 stride-2
    /// convolution reads only phase 0: the other three quarters are never packed).
    read_phases: [u64; 3],
    /// Width phases packed: `(phase, first x, packed column, values per row)`.
    width_phases: Vec<(usize, usize, usize, usize)>,
    /// Where channel 0's first read value lies: 0 but for a view of another layout's phase
    /// plane ([`InputLayout::phase_view`]).
    base: usize,
    /// A view: the 1x1 strided convolution reads its input where a producer stored it for
    /// another convolution (`plane` is then that target's rows and row pitch).
    view: bool,
}

impl InputLayout {
    fn new(s: &ConvShape) -> Self {
        let padded: [usize; 3] = std::array::from_fn(|d| s.input[d] + 2 * s.padding[d]);
        let mut plane: [usize; 3] = std::array::from_fn(|d| padded[d].div_ceil(s.stride[d]));
        let in_place = s.padding == [0, 0, 0] && s.stride == [1, 1, 1];
        // Shared row padding: with unit width stride, a row's right padding can be the next
        // row's left padding, so rows hold `W + pw` floats instead of `W + 2 pw`. Fewer
        // discarded positions per row (8x8 with padding 1: 11% instead of 20%). One extra zero
        // row per plane absorbs the last row's overflow. Needs the kernel span to cover the
        // padding, otherwise rows would be shorter than output rows.
        let shared = !in_place
            && s.stride[2] == 1
            && s.padding[2] > 0
            && s.dilation[2] * (s.kernel[2] - 1) >= s.padding[2];
        if shared {
            plane[2] = s.input[2] + s.padding[2];
            plane[1] += 1;
        }
        let plane_len = plane.iter().product::<usize>();
        let phases = s.stride.iter().product::<usize>();
        // A channel stride that is a multiple of 512 bytes puts the same position of many
        // channels in a few L1 sets (4 KiB apart: all in one set, whose 8 ways hold 8
        // channels), and a kernel reads one position of every channel per step: read in place,
        // a 1x1 layer with 16 input channels on a 32x32 map missed L1 on most loads. Such an
        // input is copied with a 64-byte gap after each channel instead.
        let aliased = in_place && plane_len % 128 == 0 && s.in_channels > 8;
        let in_place = in_place && !aliased;
        let channel_len = plane_len * phases + if aliased { CHANNEL_GAP } else { 0 };
        let out = s.output();
        let runs = (0..out[0])
            .map(|od| (od * plane[1] * plane[2], (out[1] - 1) * plane[2] + out[2]))
            .collect();
        let flat_len = out[0] * plane[1] * plane[2];
        let flat_is_output = plane[1] == out[1] && plane[2] == out[2];
        // Slack after the last channel so that discarded positions may read past it.
        let slack = plane[1] * plane[2] + 2 * plane[2] + 256;
        let packed_len = s.in_channels * channel_len + slack;
        let read_phases: [u64; 3] = std::array::from_fn(|d| {
            (0..s.kernel[d]).fold(0u64, |m, t| m | 1 << ((t * s.dilation[d]) % s.stride[d]).min(63))
        });
        // Per width phase px read by some tap: the first x with (x + pw) % sw == px, its
        // packed column, and how many values a row gives it.
        let (sw, pw, w) = (s.stride[2], s.padding[2], s.input[2]);
        let width_phases = (0..sw)
            .filter(|&px| read_phases[2] >> px.min(63) & 1 == 1)
            .map(|px| (px, (px + sw - pw % sw) % sw))
            .filter(|&(_, x0)| x0 < w)
            .map(|(px, x0)| (px, x0, (x0 + pw) / sw, (w - x0).div_ceil(sw)))
            .collect();
        InputLayout {
            shape: *s,
            plane,
            plane_len,
            channel_len,
            in_place,
            flat_len,
            runs,
            flat_is_output,
            packed_len,
            read_phases,
            width_phases,
            base: 0,
            view: false,
        }
    }

    /// The input layout of a 2-D 1x1 convolution of stride `s` without padding that reads
    /// its input in place from `source`, a phase-split target of the same extent and stride
    /// (the packed input of a 3x3 stride-`s` convolution, as a downsampling block's producer
    /// stores it): such a convolution reads every `s`-th value of every `s`-th row, which is
    /// exactly one phase plane of `source` (rows of `source.row_pitch`, of which the first
    /// `W / s` hold outputs). Nothing is packed: the plan's 1x1 shortcut then runs on its
    /// producer's buffer (`len` floats: the source layout's packed length, slack included)
    /// instead of copying that plane first. `None` when the shapes do not fit.
    pub fn phase_view(shape: &ConvShape, source: &OutputTarget, len: usize) -> Option<Self> {
        let s = shape;
        let ps = source.phases?;
        let [sh, sw] = [s.stride[1], s.stride[2]];
        // Fields are public: refuse what `ConvShape::validated` would.
        if s.validated().is_err()
            || !s.is_2d()
            || s.kernel != [1, 1, 1]
            || s.padding != [0, 0, 0]
            || s.dilation != [1, 1, 1]
            || s.stride[0] != 1
            || ps.stride != [sh, sw]
            || source.dims != s.input
            || source.row_pitch == 0
        {
            return None;
        }
        // Output (y, x) reads input (sh y, sw x): padded (sh y + pad0, sw x + pad1), phase
        // (pad0 % sh, pad1 % sw), at plane row y + pad0 / sh and column x + pad1 / sw.
        let [p0, p1] = ps.pad;
        let plane_index = (p0 % sh) * sw + p1 % sw;
        let base =
            source.base + plane_index * ps.plane_len + (p0 / sh) * source.row_pitch + p1 / sw;
        let [_, oh, ow] = s.output();
        let (rows, pitch) = (source.rows, source.row_pitch);
        if oh == 0 || ow == 0 || ow > pitch || oh + p0 / sh > rows || p1 / sw + ow > pitch {
            return None;
        }
        let flat_len = rows * pitch;
        // Whole vectors past the last output row read on into the plane, the next phase
        // plane or the source's slack: the source's length must cover them.
        let reach = (s.in_channels - 1) * source.channel_stride + base + flat_len + 64;
        if len < reach {
            return None;
        }
        Some(InputLayout {
            shape: *s,
            plane: [1, rows, pitch],
            plane_len: ps.plane_len,
            channel_len: source.channel_stride,
            in_place: false,
            flat_len,
            runs: vec![(0, (oh - 1) * pitch + ow)],
            flat_is_output: false,
            packed_len: len,
            read_phases: [1; 3],
            width_phases: Vec::new(),
            base,
            view: true,
        })
    }

    /// Whether this layout reads another convolution's packed input in place
    /// ([`InputLayout::phase_view`]).
    pub fn is_view(&self) -> bool {
        self.view
    }

    /// The convolution this layout is the input of.
    pub fn shape(&self) -> &ConvShape {
        &self.shape
    }

    /// Length of the flat output grid per output channel.
    pub fn flat_len(&self) -> usize {
        self.flat_len
    }

    /// Ranges `(start, len)` of flat positions that hold real outputs (plus in-row waste).
    pub fn runs(&self) -> &[(usize, usize)] {
        &self.runs
    }

    /// Whether the input buffer is read in place (no packing).
    pub fn in_place(&self) -> bool {
        self.in_place
    }

    /// Whether the flat grid is the output itself (no compaction).
    pub fn flat_is_output(&self) -> bool {
        self.flat_is_output
    }

    /// Floats of packed input the scratch must hold (0 when read in place).
    pub fn packed_len(&self) -> usize {
        if self.in_place { 0 } else { self.packed_len }
    }

    /// Offset in the packed input of input channel `c` (all groups) and kernel tap
    /// `[kt, kh, kw]`, relative to flat output position 0.
    pub fn offset(&self, c: usize, tap: [usize; 3]) -> usize {
        let s = &self.shape;
        if self.in_place {
            let [_, h, w] = s.input;
            let a: [usize; 3] = std::array::from_fn(|d| tap[d] * s.dilation[d]);
            return c * s.input_plane() + a[0] * h * w + a[1] * w + a[2];
        }
        if self.view {
            // A 1x1 view: every channel's single tap is its phase plane's first output.
            return c * self.channel_len + self.base;
        }
        let a: [usize; 3] = std::array::from_fn(|d| tap[d] * s.dilation[d]);
        let phase = ((a[0] % s.stride[0]) * s.stride[1] + a[1] % s.stride[1]) * s.stride[2]
            + a[2] % s.stride[2];
        let q: [usize; 3] = std::array::from_fn(|d| a[d] / s.stride[d]);
        c * self.channel_len
            + phase * self.plane_len
            + (q[0] * self.plane[1] + q[1]) * self.plane[2]
            + q[2]
    }

    /// Distance between the offsets of consecutive input channels: `offset(c, t)` equals
    /// `c * channel_stride() + offset(0, t)`.
    pub fn channel_stride(&self) -> usize {
        if self.in_place { self.shape.input_plane() } else { self.channel_len }
    }

    /// Offset of GEMM column `col` (in-group channel x kernel volume + tap) for rows of
    /// channel group `group`.
    pub fn col_offset(&self, group: usize, col: usize) -> usize {
        let s = &self.shape;
        let k = s.kernel_volume();
        let (c, tap) = (col / k, col % k);
        let khw = s.kernel[1] * s.kernel[2];
        let t = [tap / khw, (tap % khw) / s.kernel[2], tap % s.kernel[2]];
        self.offset(group * s.in_per_group() + c, t)
    }

    /// Distance between consecutive output rows on the flat grid (the phase-plane width).
    pub fn output_row_pitch(&self) -> usize {
        self.plane[2]
    }

    /// For flat position `p`: the output index minus `p`, or `None` for a discarded position.
    pub fn output_delta(&self, p: usize) -> Option<isize> {
        let [_, oh, ow] = self.shape.output();
        let [z, y, x] = self.flat_coords(p)?;
        Some(((z * oh + y) * ow + x) as isize - p as isize)
    }

    /// For flat position `p`: its output coordinates `[z, y, x]`, or `None` for a discarded
    /// position.
    pub fn flat_coords(&self, p: usize) -> Option<[usize; 3]> {
        let [od, oh, ow] = self.shape.output();
        let slice = self.plane[1] * self.plane[2];
        let (z, rem) = (p / slice, p % slice);
        let (y, x) = (rem / self.plane[2], rem % self.plane[2]);
        (z < od && y < oh && x < ow).then_some([z, y, x])
    }

    /// Where a producer must write this layout's input so that [`InputLayout::pack`] can be
    /// skipped: the interior of the padded planes (the padding stays zero if nothing else
    /// writes there), for a strided 2-D layout the interiors of its phase planes
    /// ([`PhaseSplit`]; only where every phase is read). `None` for inputs read in place.
    pub fn as_target(&self) -> Option<OutputTarget> {
        let s = &self.shape;
        if self.in_place || self.view {
            return None;
        }
        if s.stride != [1, 1, 1] {
            return self.phase_target();
        }
        let [pd, ph, pw] = s.padding;
        Some(OutputTarget {
            dims: s.input,
            channel_stride: self.channel_len,
            base: (pd * self.plane[1] + ph) * self.plane[2] + pw,
            rows: self.plane[1],
            row_pitch: self.plane[2],
            phases: None,
        })
    }

    /// The target of a 2-D strided layout whose every phase plane some tap reads (a 3x3
    /// stride-2 convolution's): a producer storing there writes exactly what
    /// [`InputLayout::pack`] would (the padding stays as the buffer had it: zero). `None` when
    /// some phase is never read (a 1x1 stride-2 layer packs only a quarter of its input:
    /// storing the rest would be wasted) or the convolution is 3-D.
    fn phase_target(&self) -> Option<OutputTarget> {
        let s = &self.shape;
        let all_read = |d: usize| self.read_phases[d] == (1u64 << s.stride[d].min(63)) - 1;
        if s.input[0] != 1 || s.stride[0] != 1 || s.padding[0] != 0 || !all_read(1) || !all_read(2)
        {
            return None;
        }
        Some(OutputTarget {
            dims: s.input,
            channel_stride: self.channel_len,
            base: 0,
            rows: self.plane[1],
            row_pitch: self.plane[2],
            phases: Some(PhaseSplit {
                stride: [s.stride[1], s.stride[2]],
                pad: [s.padding[1], s.padding[2]],
                plane_len: self.plane_len,
            }),
        })
    }

    /// Writes the padded, phase-split copy of `input` (NCDHW, one sample) into `packed`, with
    /// the instruction set [`Isa::detect`] chooses.
    pub fn pack(&self, input: &[f32], packed: &mut [f32]) {
        self.pack_with(Isa::detect(), input, packed);
    }

    /// Whether [`InputLayout::pack_channels`] can pack disjoint channel ranges at once: a
    /// stride-1 layout that is not read in place (each channel's padded planes are written
    /// whole by its own range; the strided packers clear rows with whole vectors that spill
    /// into the next channel, which another thread may own).
    pub(crate) fn packs_by_channel(&self) -> bool {
        !self.in_place && self.shape.stride == [1, 1, 1]
    }

    /// Packs input channels `c0..c1` of a stride-1 layout ([`InputLayout::packs_by_channel`]):
    /// `packed` starts at channel `c0`'s packed floats and ends at channel `c1`'s start, or
    /// at the end of the whole buffer (slack included) when `c1` is the last channel; nothing
    /// outside it is written, so threads can pack disjoint ranges of one buffer.
    pub(crate) fn pack_channels(
        &self,
        isa: Isa,
        input: &[f32],
        packed: &mut [f32],
        (c0, c1): (usize, usize),
    ) {
        let s = &self.shape;
        let [d, h, w] = s.input;
        let (channel, cl) = (d * h * w, self.channel_len);
        if !self.packs_by_channel()
            || c0 >= c1
            || c1 > s.in_channels
            || input.len() < c1 * channel
            || packed.len() < (c1 - c0) * cl
        {
            // The kernels check their buffers before packing; keep this safe anyway.
            return;
        }
        let [_, hq, wq] = self.plane;
        let geometry = |channels| Stride1 {
            channels,
            dims: [d, h, w],
            pad: s.padding,
            plane: [hq, wq],
            channel_len: cl,
            planes: self.plane[0],
        };
        let src = &input[c0 * channel..];
        if c1 == s.in_channels {
            pack_stride1(isa, &geometry(c1 - c0), src, packed);
            return;
        }
        // Not the last range: the stores of all but its last channel may spill into that
        // last channel (written after them), and the last one stores masked, so nothing
        // past `c1`'s start is touched.
        let n = c1 - c0;
        if n > 1 {
            // The last channel's floats are the slack of the first `n - 1`.
            pack_stride1(isa, &geometry(n - 1), src, &mut packed[..n * cl]);
        }
        pack_stride1(
            isa,
            &geometry(1),
            &src[(n - 1) * channel..],
            &mut packed[(n - 1) * cl..n * cl],
        );
    }

    /// [`InputLayout::pack`] from an input stored in `source` (a producer's output target,
    /// e.g. another convolution's phase-split layout) instead of NCDHW: every plane row of
    /// every read phase written whole (values and zero padding), rows whose source values
    /// follow one another copied in vectors. A 1x1 stride-2 convolution reading the block
    /// input that a 3x3 stride-2 one's producer stored phase-split copies one phase plane's
    /// rows. `input` holds `in_channels` channels `source.channel_stride` apart.
    ///
    /// # Errors
    /// `InvalidShape` for a 3-D layout, an input read in place, or a source of another
    /// extent; `BufferLength` for buffers too short.
    pub fn pack_from(
        &self,
        isa: Isa,
        source: &OutputTarget,
        input: &[f32],
        packed: &mut [f32],
    ) -> crate::Result<()> {
        let s = &self.shape;
        if !s.is_2d() || self.in_place || self.view || source.dims != s.input {
            return Err(crate::KernelError::InvalidShape {
                reason: format!(
                    "packing a {:?} input of a {}layout from a target of {:?}",
                    s.input,
                    if self.in_place { "read-in-place " } else { "" },
                    source.dims
                ),
            });
        }
        let [_, h, w] = s.input;
        let channels = s.in_channels;
        if h * w == 0 || channels == 0 {
            return Ok(());
        }
        let need = (channels - 1) * source.channel_stride
            + (0..2)
                .flat_map(|a| (0..2).map(move |b| (a, b)))
                .map(|(a, b)| source.index([0, h.saturating_sub(1 + a), w.saturating_sub(1 + b)]))
                .max()
                .unwrap_or(0)
            + 1;
        if input.len() < need {
            return Err(crate::KernelError::BufferLength {
                what: "input",
                expected: need,
                found: input.len(),
            });
        }
        if packed.len() < channels * self.channel_len {
            return Err(crate::KernelError::BufferLength {
                what: "packed input",
                expected: channels * self.channel_len,
                found: packed.len(),
            });
        }
        pack_from_target(isa, self, source, input, packed);
        Ok(())
    }

    /// [`InputLayout::pack`] at instruction-set level `isa`.
    pub fn pack_with(&self, isa: Isa, input: &[f32], packed: &mut [f32]) {
        let s = &self.shape;
        if self.in_place {
            return;
        }
        if self.view {
            self.pack_view(input, packed);
            return;
        }
        let [d, h, w] = s.input;
        let [sd, sh, sw] = s.stride;
        let [pd, ph, pw] = s.padding;
        if s.stride == [1, 1, 1] {
            // One plane per channel: write every padded row whole (zeros and data), so each
            // float is written once and nothing else needs clearing. Vector copies and
            // stores: rows are 8-32 floats, and `copy_from_slice` / `fill` on run-time
            // lengths are `memcpy` / `memset` calls whose overhead was most of the time
            // (64 channels of 8 x 8: 3.9 us).
            self.pack_channels(isa, input, packed, (0, s.in_channels));
            return;
        }
        let [_, p1, p2] = self.plane;
        if s.is_2d()
            && sh == 2
            && sw == 2
            && input.len() >= s.in_channels * h * w
            && packed.len() >= s.in_channels * self.channel_len + 16
        {
            let g = Stride2 {
                channels: s.in_channels,
                dims: [h, w],
                pad: [ph, pw],
                plane: [p1, p2],
                plane_len: self.plane_len,
                channel_len: self.channel_len,
                read: [self.read_phases[1], self.read_phases[2]],
            };
            pack_stride2(isa, &g, input, packed);
            return;
        }
        packed[..self.packed_len].fill(0.0);
        let read = |dim: usize, p: usize| self.read_phases[dim] >> p.min(63) & 1 == 1;
        // Divisions hoisted out of the row loops (a division per row or value measured most of
        // a strided convolution's time: rows here are 8-32 floats long). Phases no kernel tap
        // reads are skipped.
        let phases = self.width_phases.as_slice();
        // Stride 2 reading both width phases: one pass splits each row into its even and odd
        // values (a vectorizable de-interleave; one strided copy per phase was 2x slower).
        let pair = match phases {
            [a, b] if sw == 2 && a.1 + b.1 == 1 => Some(if a.1 == 0 { (*a, *b) } else { (*b, *a) }),
            _ => None,
        };
        for c in 0..s.in_channels {
            let src = &input[c * d * h * w..(c + 1) * d * h * w];
            let dst = &mut packed[c * self.channel_len..(c + 1) * self.channel_len];
            for z in 0..d {
                let zp = z + pd;
                let (zq, zph) = (zp / sd, zp % sd);
                if !read(0, zph) {
                    continue;
                }
                let (mut yq, mut yph) = (ph / sh, ph % sh);
                for y in 0..h {
                    if read(1, yph) {
                        // Each source row is read once for all its width phases.
                        let row = &src[(z * h + y) * w..(z * h + y + 1) * w];
                        let row_base = (zph * sh + yph) * sw * self.plane_len + (zq * p1 + yq) * p2;
                        if let Some((even, odd)) = pair {
                            let e = row_base + even.0 * self.plane_len + even.2;
                            let o = row_base + odd.0 * self.plane_len + odd.2;
                            let (lo, hi) = dst.split_at_mut(e.max(o));
                            let (e_out, o_out) = if e < o {
                                (&mut lo[e..e + even.3], &mut hi[..odd.3])
                            } else {
                                (&mut hi[..even.3], &mut lo[o..o + odd.3])
                            };
                            deinterleave(isa, row, e_out, o_out);
                            yph += 1;
                            if yph == sh {
                                yph = 0;
                                yq += 1;
                            }
                            continue;
                        }
                        for &(px, x0, col, n) in phases {
                            let base = row_base + px * self.plane_len + col;
                            let out = &mut dst[base..base + n];
                            match sw {
                                1 => out.copy_from_slice(&row[x0..x0 + n]),
                                2 => every_nth::<2>(out, &row[x0..]),
                                3 => every_nth::<3>(out, &row[x0..]),
                                4 => every_nth::<4>(out, &row[x0..]),
                                _ => {
                                    for (d, &v) in out.iter_mut().zip(row[x0..].iter().step_by(sw))
                                    {
                                        *d = v;
                                    }
                                }
                            }
                        }
                    }
                    yph += 1;
                    if yph == sh {
                        yph = 0;
                        yq += 1;
                    }
                }
            }
        }
    }

    /// [`InputLayout::pack_with`] for a view: the values a 1x1 strided convolution reads,
    /// where its source layout keeps them (everything else zero). Plans never pack a view
    /// (its producer stores the source); this serves a kernel run on a plain input.
    fn pack_view(&self, input: &[f32], packed: &mut [f32]) {
        let s = &self.shape;
        let [_, h, w] = s.input;
        let [_, oh, ow] = s.output();
        let [sh, sw] = [s.stride[1], s.stride[2]];
        let len = self.packed_len.min(packed.len());
        packed[..len].fill(0.0);
        for c in 0..s.in_channels {
            for y in 0..oh {
                for x in 0..ow {
                    let at = c * self.channel_len + self.base + y * self.plane[2] + x;
                    if let (Some(v), Some(d)) =
                        (input.get((c * h + sh * y) * w + sw * x), packed.get_mut(at))
                    {
                        *d = *v;
                    }
                }
            }
        }
    }

    /// Copies the real outputs of one output channel from the flat grid `flat` to `out`
    /// (`Do * Ho * Wo` values).
    pub fn compact(&self, flat: &[f32], out: &mut [f32]) {
        let [od, oh, ow] = self.shape.output();
        for z in 0..od {
            for y in 0..oh {
                let src = z * self.plane[1] * self.plane[2] + y * self.plane[2];
                let dst = (z * oh + y) * ow;
                out[dst..dst + ow].copy_from_slice(&flat[src..src + ow]);
            }
        }
    }
}

/// Where a convolution stores output `(o, z, y, x)`:
/// `o * channel_stride + base + (z * rows + y) * row_pitch + x`, for `[z, y, x]` inside
/// `dims`. [`OutputTarget::dense`] is NCDHW; [`InputLayout::as_target`] is the padded input
/// layout of a next convolution, which then skips its packing
/// ([`crate::RowGroupConv::run_prepacked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputTarget {
    /// Output extent `[D, H, W]` per channel.
    pub dims: [usize; 3],
    /// Floats between channels.
    pub channel_stride: usize,
    /// Index of `(0, 0, 0)` within a channel.
    pub base: usize,
    /// Rows per depth slice.
    pub rows: usize,
    /// Floats between rows.
    pub row_pitch: usize,
    /// Rows and columns split into phase planes (a stride-2 convolution's packed input), or
    /// `None`.
    pub phases: Option<PhaseSplit>,
}

/// A 2-D target split into phase planes, as a strided convolution's packed input: output
/// `(y, x)` is padded position `(y + pad[0], x + pad[1])`, which lies in phase plane
/// `((y + pad[0]) % stride[0], (x + pad[1]) % stride[1])` (plane `py * stride[1] + px`,
/// planes `plane_len` floats apart) at its row `(y + pad[0]) / stride[0]` and column
/// `(x + pad[1]) / stride[1]`. Kernels store such a target a vector at a time with compress
/// stores (each phase's lanes of a row packed together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PhaseSplit {
    /// Row and column strides (phases per dimension), each at least 1.
    pub stride: [usize; 2],
    /// Row and column padding before the first output.
    pub pad: [usize; 2],
    /// Floats per phase plane.
    pub plane_len: usize,
}

impl OutputTarget {
    /// NCDHW: channels of `D * H * W` values, rows of `W`.
    pub fn dense(dims: [usize; 3]) -> Self {
        OutputTarget {
            dims,
            channel_stride: dims.iter().product(),
            base: 0,
            rows: dims[1],
            row_pitch: dims[2],
            phases: None,
        }
    }

    /// Index of `[z, y, x]` within a channel.
    pub fn index(&self, [z, y, x]: [usize; 3]) -> usize {
        match &self.phases {
            None => self.base + (z * self.rows + y) * self.row_pitch + x,
            Some(ps) => {
                let (yy, xx) = (y + ps.pad[0], x + ps.pad[1]);
                let [sy, sx] = ps.stride;
                let plane = (yy % sy) * sx + xx % sx;
                self.base
                    + plane * ps.plane_len
                    + (z * self.rows + yy / sy) * self.row_pitch
                    + xx / sx
            }
        }
    }

    /// Floats an output buffer of `channels` channels must hold.
    pub fn len(&self, channels: usize) -> usize {
        channels * self.channel_stride
    }
}

/// The geometry of a stride-1 pack.
struct Stride1 {
    channels: usize,
    dims: [usize; 3],
    pad: [usize; 3],
    /// Padded rows and row length of a plane.
    plane: [usize; 2],
    channel_len: usize,
    /// Planes (padded depth) per channel.
    planes: usize,
}

simd_entry! {
    fn pack_stride1(g: &Stride1, input: &[f32], packed: &mut [f32]) => pack_stride1_generic;
}

#[inline(always)]
fn pack_stride1_generic<S: Simd>(g: &Stride1, input: &[f32], packed: &mut [f32]) {
    // Whole-vector stores may run up to a vector past what they mean to write: every such
    // overrun lands on floats written later in this same pass (the next row, the bottom
    // padding, the next plane or channel) or in the slack after the last channel. Without
    // that slack, every store is masked instead.
    let slack = packed.len() >= g.channels * g.channel_len + S::LANES;
    // SAFETY: `pack_with` checked that `input` holds `channels` channels of d x h x w and
    // `packed` `channels` channels of `channel_len` floats (planes x hq x wq); `slack` was
    // checked above; every offset below stays inside the current channel's plane or source
    // (plus the overrun described above).
    unsafe {
        if slack {
            pack_planes::<S, true>(g, input.as_ptr(), packed.as_mut_ptr());
        } else {
            pack_planes::<S, false>(g, input.as_ptr(), packed.as_mut_ptr());
        }
    }
}

/// The planes of every channel; `OVER`: whole-vector stores (see `pack_stride1_generic`).
///
/// # Safety
/// As checked by `pack_stride1_generic`.
#[inline(always)]
unsafe fn pack_planes<S: Simd, const OVER: bool>(g: &Stride1, input: *const f32, packed: *mut f32) {
    let [d, h, w] = g.dims;
    let [pd, ph, pw] = g.pad;
    let [hq, wq] = g.plane;
    let plane = hq * wq;
    // SAFETY: as above.
    unsafe {
        for c in 0..g.channels {
            let src = input.add(c * d * h * w);
            let dst = packed.add(c * g.channel_len);
            for zq in 0..g.planes {
                let slice = dst.add(zq * plane);
                if zq < pd || zq >= pd + d {
                    zero_run::<S, OVER>(slice, plane);
                    continue;
                }
                let z = zq - pd;
                // Top padding rows and row 0's left padding; then per row its values and the
                // zeros up to the next row's values; then the bottom padding.
                zero_run::<S, OVER>(slice, ph * wq + pw);
                // The zeros after each row's values up to the next row's (none when the last
                // row ends the plane).
                let gap = wq - w;
                let mut at = slice.add(ph * wq + pw);
                let mut from = src.add(z * h * w);
                for y in 0..h {
                    copy_run::<S, OVER>(at, from, w);
                    let end = (ph + y + 1) * wq + pw;
                    zero_run::<S, OVER>(
                        at.add(w),
                        if end <= plane { gap } else { gap - (end - plane) },
                    );
                    at = at.add(wq);
                    from = from.add(w);
                }
                let bottom = (ph + h) * wq + pw;
                if bottom < plane {
                    zero_run::<S, OVER>(slice.add(bottom), plane - bottom);
                }
            }
        }
    }
}

/// Zeroes `n` floats at `p` with vector stores: whole vectors with `OVER` (up to
/// `LANES - 1` floats past `n`), the last one masked without.
///
/// # Safety
/// `p` must be valid for `n` writes (`n.next_multiple_of(LANES)` with `OVER`).
#[inline(always)]
unsafe fn zero_run<S: Simd, const OVER: bool>(p: *mut f32, n: usize) {
    let l = S::LANES;
    let mut i = 0;
    // SAFETY: caller's contract.
    unsafe {
        if OVER {
            while i < n {
                S::store(p.add(i), S::zero());
                i += l;
            }
            return;
        }
        while i + l <= n {
            S::store(p.add(i), S::zero());
            i += l;
        }
        if i < n {
            S::store_partial(p.add(i), S::zero(), n - i);
        }
    }
}

/// Copies `n` floats from `src` to `dst` with vector loads and stores (the last load masked);
/// with `OVER` the last store is a whole vector (up to `LANES - 1` floats past `n` at `dst`).
///
/// # Safety
/// `src` valid for `n` reads, `dst` for `n` writes (`n.next_multiple_of(LANES)` with `OVER`),
/// not overlapping.
#[inline(always)]
pub(crate) unsafe fn copy_run<S: Simd, const OVER: bool>(dst: *mut f32, src: *const f32, n: usize) {
    let l = S::LANES;
    let mut i = 0;
    // SAFETY: caller's contract.
    unsafe {
        while i + l <= n {
            S::store(dst.add(i), S::load(src.add(i)));
            i += l;
        }
        if i < n {
            let v = S::load_partial(src.add(i), n - i);
            if OVER {
                S::store(dst.add(i), v);
            } else {
                S::store_partial(dst.add(i), v, n - i);
            }
        }
    }
}

simd_entry! {
    fn pack_from_target(
        layout: &InputLayout,
        source: &OutputTarget,
        input: &[f32],
        packed: &mut [f32],
    ) => pack_from_target_generic;
}

/// [`InputLayout::pack_from`] after its checks: per read phase and plane row (the source
/// index computed once for all channels), each channel's zero columns, then the row's values
/// (a vector copy where their source indices are consecutive, else one by one).
#[inline(always)]
fn pack_from_target_generic<S: Simd>(
    layout: &InputLayout,
    source: &OutputTarget,
    input: &[f32],
    packed: &mut [f32],
) {
    let s = &layout.shape;
    let [_, h, w] = s.input;
    let [_, sh, sw] = s.stride;
    let [_, ph, pw] = s.padding;
    let [_, p1, p2] = layout.plane;
    let (cl, cs) = (layout.channel_len, source.channel_stride);
    for py in (0..sh).filter(|&py| layout.read_phases[1] >> py.min(63) & 1 == 1) {
        for px in (0..sw).filter(|&px| layout.read_phases[2] >> px.min(63) & 1 == 1) {
            let plane = (py * sw + px) * layout.plane_len;
            // Plane columns xq whose source x = xq * sw + px - pw lies in 0..w.
            let xa = pw.saturating_sub(px).div_ceil(sw).min(p2);
            let xb = (w + pw).saturating_sub(px).div_ceil(sw).clamp(xa, p2);
            let x_of = |xq: usize| xq * sw + px - pw;
            // Whether a row's values are consecutive in the source (the same for every row:
            // a target's index is a row part plus a column part).
            let consecutive = (xa..xb).all(|xq| {
                source.index([0, 0, x_of(xq)]) == source.index([0, 0, x_of(xa)]) + (xq - xa)
            });
            for yq in 0..p1 {
                let at = plane + yq * p2;
                let y = (yq * sh + py).checked_sub(ph).filter(|&y| y < h && xa < xb);
                let Some(y) = y else {
                    for c in 0..s.in_channels {
                        packed[c * cl + at..c * cl + at + p2].fill(0.0);
                    }
                    continue;
                };
                let first = source.index([0, y, x_of(xa)]);
                let n = xb - xa;
                for c in 0..s.in_channels {
                    let row = &mut packed[c * cl + at..c * cl + at + p2];
                    row[..xa].fill(0.0);
                    row[xb..].fill(0.0);
                    let src = &input[c * cs..];
                    if consecutive {
                        let from = &src[first..first + n];
                        // SAFETY: `from` and the row's columns `xa..xb` hold `n` floats each.
                        unsafe { copy_run::<S, false>(row.as_mut_ptr().add(xa), from.as_ptr(), n) };
                    } else {
                        for xq in xa..xb {
                            row[xq] = src[source.index([0, y, x_of(xq)])];
                        }
                    }
                }
            }
        }
    }
}

/// The geometry of a 2-D stride-2 pack.
struct Stride2 {
    channels: usize,
    dims: [usize; 2],
    pad: [usize; 2],
    /// Rows and columns of a phase plane.
    plane: [usize; 2],
    plane_len: usize,
    channel_len: usize,
    /// Bit `p` set when some tap reads row (column) phase `p`.
    read: [u64; 2],
}

simd_entry! {
    fn pack_stride2(g: &Stride2, input: &[f32], packed: &mut [f32]) => pack_stride2_generic;
}

/// Phase plane `(py, px)` row `yq` holds padded row `2 yq + py`, column `xq` padded column
/// `2 xq + px`: every other value of a source row, from two vector loads and one permute per
/// `LANES` values. Phases no tap reads are not written.
#[inline(always)]
fn pack_stride2_generic<S: Simd>(g: &Stride2, input: &[f32], packed: &mut [f32]) {
    let [h, w] = g.dims;
    let [ph, pw] = g.pad;
    let [p1, p2] = g.plane;
    let l = S::LANES;
    // SAFETY: `pack_with` checked the input (channels x h x w) and that `packed` holds every
    // channel plus a vector of slack; rows are zeroed in whole vectors whose overrun lands on
    // later rows, planes or channels (written after) or the slack; loads stay inside the
    // source row (partial loads at its end).
    unsafe {
        if g.read[1] == 0b11 {
            pack_stride2_column_pairs::<S>(g, input, packed);
            return;
        }
        for c in 0..g.channels {
            let src = input.as_ptr().add(c * h * w);
            let dst = packed.as_mut_ptr().add(c * g.channel_len);
            for py in 0..2 {
                if g.read[0] >> py & 1 == 0 {
                    continue;
                }
                for px in 0..2 {
                    if g.read[1] >> px & 1 == 0 {
                        continue;
                    }
                    let phase = dst.add((py * 2 + px) * g.plane_len);
                    // Columns whose source x = 2 xq + px - pw lies in 0..w.
                    let xq0 = pw.saturating_sub(px).div_ceil(2);
                    let xq1 = (w + pw).saturating_sub(px).div_ceil(2).min(p2);
                    for yq in 0..p1 {
                        let row = phase.add(yq * p2);
                        zero_run::<S, true>(row, p2);
                        let Some(y) = (2 * yq + py).checked_sub(ph).filter(|&y| y < h) else {
                            continue;
                        };
                        if xq0 >= xq1 {
                            continue;
                        }
                        let x0 = 2 * xq0 + px - pw;
                        let from = src.add(y * w + x0);
                        let to = row.add(xq0);
                        let n = xq1 - xq0;
                        let mut i = 0;
                        while i < n {
                            // Source values this chunk needs (every other one of them is
                            // kept); lanes past them load as zeros, so a short last chunk
                            // stores zeros over the right padding (and past the row, into
                            // floats written later).
                            let need = (2 * (n - i).min(l) - 1).min(w - x0 - 2 * i);
                            let (a, b) = load_two::<S>(from.add(2 * i), need);
                            S::store(to.add(i), S::deinterleave(a, b).0);
                            i += l;
                        }
                    }
                }
            }
        }
    }
}

/// Two vectors from `p`: its first `need` floats (up to `2 LANES`), the lanes past them zero.
///
/// # Safety
/// `p` must be readable for `need` floats.
#[inline(always)]
unsafe fn load_two<S: Simd>(p: *const f32, need: usize) -> (S::V, S::V) {
    let l = S::LANES;
    // SAFETY: the caller's contract; every load stops at `need` floats.
    unsafe {
        let a = if need >= l { S::load(p) } else { S::load_partial(p, need) };
        let b = if need >= 2 * l {
            S::load(p.add(l))
        } else if need > l {
            S::load_partial(p.add(l), need - l)
        } else {
            S::zero()
        };
        (a, b)
    }
}

/// [`pack_stride2_generic`] where both column phases are read (a 3x3 stride-2 layer): each
/// read phase plane is zeroed whole, once, then every source row is split once into its even
/// and odd values, which go to the two column phases' rows (the first kept column of one phase
/// reads the source column after the other's). Zeroing every row in vectors before writing it
/// and reading each source row once per phase took 3.6 us for a 16-channel 32x32 input, now
/// 2.7 us (`cargo run --release -p tessera-kernels --example pack_time`, min of runs; 32
/// channels at 16x16 2.8 -> 2.35 us). The exact stores at the end of each plane are masked
/// stores, which cost a tenth of it on Zen 4 (2.4 and 1.95 us with none, a version whose
/// overrun corrupted the other phase); copying through a buffer instead (a `memcpy` call) ran
/// 3.45 and 3.1 us.
///
/// # Safety
/// As [`pack_stride2_generic`]: `packed` holds every channel plus a vector of slack.
#[inline(always)]
unsafe fn pack_stride2_column_pairs<S: Simd>(g: &Stride2, input: &[f32], packed: &mut [f32]) {
    let [h, w] = g.dims;
    let [ph, pw] = g.pad;
    let [p1, p2] = g.plane;
    let l = S::LANES;
    // Per column phase: its kept columns xq0..xq1 and the source column of xq0.
    let cols: [(usize, usize, usize); 2] = std::array::from_fn(|px| {
        let xq0 = pw.saturating_sub(px).div_ceil(2);
        let xq1 = (w + pw).saturating_sub(px).div_ceil(2).min(p2);
        (xq0, xq1.max(xq0), (2 * xq0 + px).saturating_sub(pw))
    });
    // The phase whose first source column comes first; the other's is one later (or it has
    // no columns).
    let first = usize::from(cols[1].2 < cols[0].2);
    let second = 1 - first;
    let (f0, f1, x0) = cols[first];
    let (s0, s1, _) = cols[second];
    let (nf, ns) = (f1 - f0, s1 - s0);
    let pairs = nf.max(ns);
    // SAFETY: the caller's contract. Plane zeroing runs in whole vectors whose overrun lands
    // on later planes or channels (zeroed or written after) or the slack; a row's stores run
    // in whole vectors whose lanes past its values are zero and land on the same phase's later
    // rows (written after), except where a vector would run past the phase plane, stored
    // exactly (its overrun would land on the other column phase, written before); loads stay
    // inside the source row.
    unsafe {
        for c in 0..g.channels {
            let src = input.as_ptr().add(c * h * w);
            let dst = packed.as_mut_ptr().add(c * g.channel_len);
            for py in 0..2 {
                if g.read[0] >> py & 1 == 0 {
                    continue;
                }
                let planes = [dst.add(py * 2 * g.plane_len), dst.add((py * 2 + 1) * g.plane_len)];
                zero_run::<S, true>(planes[0], p1 * p2);
                zero_run::<S, true>(planes[1], p1 * p2);
                if pairs == 0 {
                    continue;
                }
                for yq in 0..p1 {
                    let Some(y) = (2 * yq + py).checked_sub(ph).filter(|&y| y < h) else {
                        continue;
                    };
                    let from = src.add(y * w + x0);
                    let (to_f, to_s) =
                        (planes[first].add(yq * p2 + f0), planes[second].add(yq * p2 + s0));
                    let mut i = 0;
                    while i < pairs {
                        // Source values this chunk holds: 2 per pair, up to the row's end;
                        // lanes past them load as zeros.
                        let need = (2 * (pairs - i).min(l)).min(w - x0 - 2 * i);
                        let (a, b) = load_two::<S>(from.add(2 * i), need);
                        let (even, odd) = S::deinterleave(a, b);
                        for (to, v, n, at) in [(to_f, even, nf, f0), (to_s, odd, ns, s0)] {
                            if i >= n {
                                continue;
                            }
                            if yq * p2 + at + i + l > p1 * p2 {
                                S::store_partial(to.add(i), v, n - i);
                            } else {
                                S::store(to.add(i), v);
                            }
                        }
                        i += l;
                    }
                }
            }
        }
    }
}

simd_entry! {
    /// `even[i] = row[2 i]`, `odd[i] = row[2 i + 1]` (`even` holds `ceil(len / 2)` values,
    /// `odd` `floor(len / 2)`): two vector loads, two permutes and two stores per `2 LANES`
    /// values.
    fn deinterleave(row: &[f32], even: &mut [f32], odd: &mut [f32]) => deinterleave_generic;
}

#[inline(always)]
pub(crate) fn deinterleave_generic<S: Simd>(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let pairs = row.len() / 2;
    let (e, o, r) = (&mut even[..pairs], &mut odd[..pairs], &row[..2 * pairs]);
    let l = S::LANES;
    let mut i = 0;
    // SAFETY: each iteration reads r[2i .. 2i + 2l] and writes e[i .. i + l], o[i .. i + l],
    // all inside the slices (i + l <= pairs).
    unsafe {
        while i + l <= pairs {
            let a = S::load(r.as_ptr().add(2 * i));
            let b = S::load(r.as_ptr().add(2 * i + l));
            let (ev, od) = S::deinterleave(a, b);
            S::store(e.as_mut_ptr().add(i), ev);
            S::store(o.as_mut_ptr().add(i), od);
            i += l;
        }
    }
    for j in i..pairs {
        e[j] = r[2 * j];
        o[j] = r[2 * j + 1];
    }
    if row.len() % 2 == 1 {
        even[pairs] = row[2 * pairs];
    }
}

/// `out[i] = src[i * N]` for every `i` of `out` (`src` must hold `(out.len() - 1) * N + 1`
/// values). Whole `N`-chunks first, which the compiler turns into vector shuffles.
#[inline(always)]
fn every_nth<const N: usize>(out: &mut [f32], src: &[f32]) {
    let whole = (src.len() / N).min(out.len());
    let (head, body) = (&mut out[..whole], &src[..whole * N]);
    for i in 0..whole {
        head[i] = body[i * N];
    }
    for (i, o) in out.iter_mut().enumerate().skip(whole) {
        *o = src[i * N];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packing from a target equals packing the plain input: from NCDHW itself, and from the
    /// phase-split layout a 3x3 stride-2 consumer's producer writes (what a 1x1 stride-2
    /// shortcut reading the same block input gets); a target of another extent and short
    /// buffers are typed errors.
    #[test]
    fn pack_from_a_target_matches_packing_the_plain_input() {
        for (c, h, w) in [(3usize, 8usize, 8usize), (2, 7, 9), (4, 32, 32), (1, 5, 1)] {
            let x: Vec<f32> = (0..c * h * w).map(|i| i as f32 + 1.0).collect();
            let phased = ConvShape::conv2d(c, 4, [h, w], [3, 3], 2, 1).unwrap().layout();
            let target = phased.as_target().unwrap();
            assert!(target.phases.is_some());
            let mut stored = vec![0.0; phased.packed_len()];
            phased.pack(&x, &mut stored);
            let readers = [
                ConvShape::conv2d(c, 4, [h, w], [1, 1], 2, 0).unwrap(),
                ConvShape::conv2d(c, 4, [h, w], [3, 3], 2, 1).unwrap(),
                ConvShape::conv2d(c, 4, [h, w], [3, 3], 1, 1).unwrap(),
                ConvShape::conv2d(c, 4, [h, w], [5, 5], 2, 2).unwrap(),
            ];
            for reader in readers {
                let layout = reader.layout();
                if layout.in_place() {
                    continue;
                }
                let mut want = vec![f32::NAN; layout.packed_len()];
                layout.pack(&x, &mut want);
                for isa in Isa::available() {
                    for (from, buf) in [(OutputTarget::dense([1, h, w]), &x), (target, &stored)] {
                        let mut got = vec![f32::NAN; layout.packed_len()];
                        layout.pack_from(isa, &from, buf, &mut got).unwrap();
                        // The floats a kernel reads: every channel's read phase planes (a 1x1
                        // stride-2 layer reads only the first; the pack's whole-vector zeroing
                        // spills into the others).
                        let cs = layout.channel_stride();
                        let read = if reader.kernel[2] == 1 { cs / 4 } else { cs };
                        let bad =
                            (0..c * cs).filter(|i| i % cs < read).find(|&i| got[i] != want[i]);
                        assert!(
                            bad.is_none(),
                            "{reader:?} from {from:?} {isa:?}: at {bad:?}: {:?} vs {:?}",
                            bad.map(|i| got[i]),
                            bad.map(|i| want[i])
                        );
                    }
                }
                let other = OutputTarget::dense([1, h + 1, w]);
                let mut got = vec![0.0; layout.packed_len()];
                assert!(layout.pack_from(Isa::PORTABLE, &other, &x, &mut got).is_err());
                let short = &stored[..(c - 1) * target.channel_stride + 1];
                assert!(layout.pack_from(Isa::PORTABLE, &target, short, &mut got).is_err());
                assert!(layout.pack_from(Isa::PORTABLE, &target, &stored, &mut got[..1]).is_err());
            }
        }
    }

    #[test]
    fn deinterleave_splits_even_and_odd() {
        // Lengths around one and two vector pairs of every instruction set.
        for isa in Isa::available() {
            for len in (1..40usize).chain([63, 64, 65, 97]) {
                let row: Vec<f32> = (0..len).map(|i| i as f32).collect();
                let (mut e, mut o) = (vec![0.0; len.div_ceil(2)], vec![0.0; len / 2]);
                deinterleave(isa, &row, &mut e, &mut o);
                assert_eq!(e, row.iter().step_by(2).copied().collect::<Vec<_>>(), "{isa:?}");
                let odd: Vec<f32> = row.iter().skip(1).step_by(2).copied().collect();
                assert_eq!(o, odd, "{isa:?}");
            }
        }
    }

    #[test]
    fn every_nth_matches_a_step_by_copy() {
        let src: Vec<f32> = (0..23).map(|i| i as f32).collect();
        for n in 1..=6 {
            let mut out = vec![0.0; n];
            every_nth::<3>(&mut out, &src[..(n - 1) * 3 + 1]);
            let want: Vec<f32> = src.iter().step_by(3).take(n).copied().collect();
            assert_eq!(out, want, "{n}");
        }
        let mut out = vec![0.0; 12];
        every_nth::<2>(&mut out, &src);
        assert_eq!(out, src.iter().step_by(2).copied().collect::<Vec<_>>());
    }

    /// Direct definition: input value read by output `o` at tap `t` of channel `c`.
    fn direct(s: &ConvShape, input: &[f32], c: usize, o: [usize; 3], t: [usize; 3]) -> f32 {
        let mut idx = [0isize; 3];
        for d in 0..3 {
            idx[d] = (o[d] * s.stride[d] + t[d] * s.dilation[d]) as isize - s.padding[d] as isize;
            if idx[d] < 0 || idx[d] >= s.input[d] as isize {
                return 0.0;
            }
        }
        let [_, h, w] = s.input;
        input[c * s.input_plane() + (idx[0] as usize * h + idx[1] as usize) * w + idx[2] as usize]
    }

    /// Packing disjoint channel ranges one after another, each into only its own part of the
    /// buffer, gives what one whole `pack_with` gives, and no range writes outside its part
    /// (threads pack ranges at once). Vector stores spill past a channel's last row, so the
    /// ranges end mid-buffer on maps of odd sizes, 1x1 maps and 3-D planes.
    #[test]
    fn channel_ranges_pack_like_the_whole_and_stay_in_their_part() {
        let shapes = [
            ConvShape::conv2d(7, 1, [5, 7], [3, 3], 1, 1).unwrap(),
            ConvShape::conv2d(5, 1, [1, 1], [3, 3], 1, 1).unwrap(),
            ConvShape::conv2d(9, 1, [2, 2], [3, 3], 1, 1).unwrap(),
            ConvShape::conv2d(6, 1, [3, 37], [3, 3], 1, 1).unwrap(),
            ConvShape::conv2d(4, 1, [8, 8], [5, 5], 1, 2).unwrap(),
            ConvShape::conv3d(5, 1, [3, 4, 5], [3, 3, 3], 1, 1).unwrap(),
        ];
        for (s, isa) in
            shapes.iter().flat_map(|&s| Isa::available().into_iter().map(move |i| (s, i)))
        {
            let l = s.layout();
            assert!(l.packs_by_channel(), "{s:?}");
            let input: Vec<f32> =
                (0..s.in_channels * s.input_plane()).map(|i| i as f32 + 1.0).collect();
            let mut whole = vec![f32::NAN; l.packed_len()];
            l.pack_with(isa, &input, &mut whole);
            let cl = l.channel_stride();
            for parts in 1..=s.in_channels {
                let mut packed = vec![f32::NAN; l.packed_len()];
                for t in 0..parts {
                    let c = s.in_channels;
                    let (c0, c1) = (t * c / parts, (t + 1) * c / parts);
                    let end = if c1 == c { packed.len() } else { c1 * cl };
                    // Sentinels around the part: what lies outside must stay untouched.
                    let before = packed.clone();
                    l.pack_channels(isa, &input, &mut packed[c0 * cl..end], (c0, c1));
                    for (i, (a, b)) in packed.iter().zip(&before).enumerate() {
                        if !(c0 * cl..end).contains(&i) {
                            assert!(
                                a.to_bits() == b.to_bits(),
                                "{s:?} {isa:?} part {t}/{parts}: float {i} written"
                            );
                        }
                    }
                }
                let n = s.in_channels * cl;
                for (i, (a, b)) in packed[..n].iter().zip(&whole[..n]).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits(),
                        "{s:?} {isa:?} {parts} parts: float {i}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn packed_offsets_read_what_the_definition_reads() {
        let shapes = [
            ConvShape::conv2d(2, 1, [5, 7], [3, 3], 1, 1).unwrap(),
            ConvShape::conv2d(2, 1, [7, 6], [3, 3], 2, 1).unwrap(),
            ConvShape::conv2d(1, 1, [9, 9], [3, 2], 3, 2).unwrap(),
            ConvShape::conv2d(1, 1, [6, 6], [3, 3], 1, 0).unwrap(),
            ConvShape::conv2d(1, 1, [8, 8], [3, 3], 1, 2).unwrap().with_dilation(2).unwrap(),
            ConvShape::conv3d(2, 1, [4, 5, 5], [3, 3, 3], 1, 1).unwrap(),
            ConvShape::conv3d(1, 1, [5, 6, 5], [3, 3, 3], 2, 1).unwrap(),
            // Rows of whole vectors plus a partial one, 5x5 padding 2.
            ConvShape::conv2d(3, 1, [4, 37], [3, 3], 1, 1).unwrap(),
            ConvShape::conv2d(2, 1, [6, 16], [5, 5], 1, 2).unwrap(),
            // Stride 2 over rows of more than two vectors; 1x1 stride 2 reads one phase.
            ConvShape::conv2d(2, 1, [5, 41], [3, 3], 2, 1).unwrap(),
            ConvShape::conv2d(2, 1, [6, 35], [1, 1], 2, 0).unwrap(),
            ConvShape::conv2d(3, 1, [8, 8], [3, 3], 2, 1).unwrap(),
            // Both column phases from one split of each source row: rows of whole vectors
            // (each phase's last row stored exactly), odd widths, padding 0 and 2.
            ConvShape::conv2d(2, 1, [9, 32], [3, 3], 2, 1).unwrap(),
            ConvShape::conv2d(2, 1, [6, 64], [3, 3], 2, 1).unwrap(),
            ConvShape::conv2d(2, 1, [7, 33], [3, 3], 2, 0).unwrap(),
            ConvShape::conv2d(2, 1, [9, 31], [5, 5], 2, 2).unwrap(),
            ConvShape::conv2d(3, 1, [4, 2], [3, 3], 2, 1).unwrap(),
        ];
        for (s, isa) in
            shapes.iter().flat_map(|&s| Isa::available().into_iter().map(move |i| (s, i)))
        {
            let l = s.layout();
            let input: Vec<f32> =
                (0..s.in_channels * s.input_plane()).map(|i| i as f32 + 1.0).collect();
            let mut packed = vec![f32::NAN; l.packed_len().max(1)];
            l.pack_with(isa, &input, &mut packed);
            let src: &[f32] = if l.in_place() { &input } else { &packed };
            let out = s.output();
            for c in 0..s.in_channels {
                for t0 in 0..s.kernel[0] {
                    for t1 in 0..s.kernel[1] {
                        for t2 in 0..s.kernel[2] {
                            let off = l.offset(c, [t0, t1, t2]);
                            for o0 in 0..out[0] {
                                for o1 in 0..out[1] {
                                    for o2 in 0..out[2] {
                                        let p = l.runs()[o0].0 + o1 * l.plane[2] + o2;
                                        assert_eq!(
                                            src[off + p],
                                            direct(&s, &input, c, [o0, o1, o2], [t0, t1, t2]),
                                            "{s:?} {isa:?}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn output_sizes_and_validation() {
        let s = ConvShape::conv2d(64, 64, [56, 56], [3, 3], 1, 1).unwrap();
        assert_eq!(s.output(), [1, 56, 56]);
        assert_eq!(s.flops(), 2 * 64 * 576 * 3136);
        assert_eq!(ConvShape::conv2d(3, 8, [32, 32], [3, 3], 2, 1).unwrap().output(), [1, 16, 16]);
        assert!(ConvShape::conv2d(3, 8, [2, 2], [5, 5], 1, 0).is_err());
        assert!(ConvShape::conv2d(3, 8, [8, 8], [3, 3], 1, 1).unwrap().with_groups(2).is_err());
        let l = ConvShape::conv2d(4, 4, [8, 8], [1, 1], 1, 0).unwrap().layout();
        assert!(l.in_place() && l.flat_is_output());
    }
}
