//! Gathered inputs for small maps: every GEMM column's input at every output position copied
//! into one compact row (an im2col without padding columns), so that a kernel's tiles are the
//! output map itself instead of runs of the padded flat grid.
//!
//! On the flat grid a 4x4 map with shared row padding spans 19 positions (two AVX-512 vectors
//! for 16 outputs) and a 2x2 map 5 (one vector, a quarter used). Gathered, a 4x4 map is one
//! vector. The quad forms take at most 4 positions: [`GatherForm::Quad`] (BCR's
//! [`crate::formats::bcr::BcrInput::Quad`]) holds them in a row of 4 floats, which its kernel
//! broadcasts into every quarter of a vector; [`GatherForm::QuadRepeated`] (the row-group
//! engine's [`crate::RowGroupInput::Quad`]) holds each value 4 times, for vectors of 4
//! positions x 4 rows. The copy costs one pass over
//! `cols x positions` floats, which pays where many output rows reuse each gathered value.

#![allow(unsafe_op_in_unsafe_fn)] // the fill is pointer arithmetic checked by its caller

use crate::conv::{ConvShape, InputLayout};
use crate::error::{KernelError, Result};
use crate::isa::Isa;
use crate::simd::{Simd, simd_entry};
use crate::threads::{MAX_THREADS, SendPtr, run_parallel};

/// Floats per vector of the widest instruction set: a gathered buffer's slack, so tiles load
/// whole vectors.
const SLACK: usize = 16;

/// How a [`Gather`] lays out each GEMM column's gathered values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GatherForm {
    /// The output positions, compact.
    Compact,
    /// At most 4 positions in a row of 4 floats (zeros past the map).
    Quad,
    /// At most 4 positions, each value 4 times (rows of 16 floats, zeros past the map).
    QuadRepeated,
}

/// Where each gathered value comes from, bound once per convolution.
#[derive(Debug, Clone)]
pub(crate) struct Gather {
    /// A quad form (at most 4 positions, one tile of the whole map).
    pub(crate) quad: bool,
    /// Copies of each value in a quad form (1 or 4).
    copies: usize,
    /// Per GEMM column, its offset in the packed input (channel and tap).
    src: Vec<u32>,
    /// Per output row, its first position on the packed input's flat grid.
    row_at: Vec<u32>,
    /// Output map width (positions per output row).
    width: usize,
    /// Output positions.
    pub(crate) positions: usize,
    /// Quad: each position's place on the flat grid.
    quad_at: [u32; 4],
    /// Where a column's 16 gathered floats lie among the 32 from its first flat position,
    /// for maps that fit (their span at most 32 and one vector of gathered floats): lane `i`
    /// takes `perm.0[i]`, lanes outside the mask `perm.1` are zero.
    perm: Option<([u32; 16], u16)>,
    /// Quad forms where every input channel's taps read the same shape of window: the
    /// channel's gathered rows, a vector at a time, from the 32 floats at its first column.
    channel_perm: Option<ChannelPerm>,
    /// Floats per gathered column: the positions (compact), 4 (quad) or 16 (quad, repeated).
    pub(crate) stride: usize,
    /// Floats of packed input it reads (a shorter input is an error, not a wild read).
    reads: usize,
    /// The layout the tile plans run on: a 1x1 convolution over the output map.
    pub(crate) layout: InputLayout,
}

impl Gather {
    /// The gather of `shape`'s input packed as `layout`; `what` names the kernel in errors.
    /// Needs a 2D convolution with one channel group, and for a quad form at most 4 positions.
    pub(crate) fn new(
        shape: &ConvShape,
        layout: &InputLayout,
        form: GatherForm,
        what: &str,
    ) -> Result<Self> {
        let quad = form != GatherForm::Compact;
        let copies = if form == GatherForm::QuadRepeated { 4 } else { 1 };
        let refuse = |reason: String| Err(KernelError::InvalidShape { reason });
        if shape.groups != 1 || !shape.is_2d() {
            return refuse(format!(
                "a gathered {what} input needs a 2D convolution with one channel group, not {shape:?}"
            ));
        }
        let [_, oh, ow] = shape.output();
        let positions = oh * ow;
        if quad && positions > 4 {
            return refuse(format!(
                "the quad {what} kernel takes at most 4 positions, not {positions}"
            ));
        }
        let too_large =
            || KernelError::InvalidShape { reason: "input too large for 32-bit offsets".into() };
        let src = (0..shape.cols())
            .map(|c| u32::try_from(layout.col_offset(0, c)).map_err(|_| too_large()))
            .collect::<Result<Vec<u32>>>()?;
        let pitch = layout.output_row_pitch();
        let row_at = (0..oh)
            .map(|y| u32::try_from(y * pitch).map_err(|_| too_large()))
            .collect::<Result<Vec<u32>>>()?;
        let last = (oh.max(1) - 1) * pitch + ow;
        let reads = src.iter().max().map_or(0, |&o| o as usize + last);
        let map = ConvShape::conv2d(shape.cols(), shape.out_channels, [oh, ow], [1, 1], 1, 0)?;
        let mut quad_at = [0u32; 4];
        for (p, at) in quad_at.iter_mut().enumerate().take(positions.min(4)) {
            *at = row_at[p / ow] + (p % ow) as u32;
        }
        let stride = if quad { 4 * copies } else { positions };
        let perm = (last <= 32 && stride <= 16).then(|| {
            let (mut idx, mut mask) = ([0u32; 16], 0u16);
            for (i, slot) in idx.iter_mut().enumerate() {
                let p = if quad { i / copies } else { i };
                if p < positions {
                    *slot = row_at[p / ow] + (p % ow) as u32;
                    mask |= 1 << i;
                }
            }
            (idx, mask)
        });
        let channel_perm = quad
            .then(|| ChannelPerm::new(&src, shape.kernel_volume(), &quad_at, positions, copies))
            .flatten();
        Ok(Gather {
            quad,
            copies,
            channel_perm,
            src,
            row_at,
            width: ow,
            positions,
            quad_at,
            perm,
            stride,
            reads,
            layout: map.layout(),
        })
    }

    /// Floats of the gathered buffer.
    pub(crate) fn len(&self) -> usize {
        self.src.len() * self.stride + SLACK
    }

    /// Fills `out` (at least [`Gather::len`] floats) from `x`, the packed input, on `threads`
    /// threads (disjoint column ranges).
    pub(crate) fn fill(&self, isa: Isa, x: &[f32], out: &mut [f32], threads: usize) -> Result<()> {
        crate::rowgroup::check_len("gathered-input scratch", self.len(), out.len())?;
        if x.len() < self.reads {
            return Err(KernelError::BufferLength {
                what: "packed input",
                expected: self.reads,
                found: x.len(),
            });
        }
        let cols = self.src.len();
        let threads = threads.clamp(1, MAX_THREADS);
        // Whole channels per thread where they are gathered a channel at a time.
        let unit = self.channel_perm.as_ref().map_or(1, |cp| cp.taps);
        let per = (cols / unit).div_ceil(threads) * unit;
        let job =
            FillJob { g: self, x: x.as_ptr(), x_len: x.len(), out: SendPtr(out.as_mut_ptr()) };
        run_parallel(threads, |t| {
            fill_cols(isa, &job, (t * per).min(cols), ((t + 1) * per).min(cols));
        });
        Ok(())
    }
}

/// A [`ChannelPerm`]'s window: two vectors of the widest instruction set.
const WINDOW: usize = 32;

/// Per input channel of a quad gather: its `taps` consecutive columns read the same
/// positions relative to the channel's first column, all inside [`WINDOW`] floats, so one
/// window (two vector loads) serves them all and each vector of rows is one permute and one
/// store: 4 taps ([`GatherForm::Quad`]; lane `4 k + p` is tap `4 g + k` at position `p`) or 1
/// ([`GatherForm::QuadRepeated`]). Column by column, each tap loaded a window of its own
/// (512@2x2, 9 taps: 18 loads, 9 permutes, 9 stores per channel; now 2, 3, 3 for BCR's rows).
/// Measured (`bcr_small_map`, 1 thread, min of runs, three rounds alternating the builds,
/// pack included): BCR 8x 512@2x2 77.7-82.9 -> 70.7-71.6 us, block-punched 8x 51.4-51.6 ->
/// 46.7-47.8 us.
#[derive(Debug, Clone)]
struct ChannelPerm {
    /// Columns per channel (the kernel's volume).
    taps: usize,
    /// Taps per group: 4, or 1 for [`GatherForm::QuadRepeated`]'s 16-float rows.
    per_group: usize,
    /// Per group of `per_group` taps: the window lanes and the lanes set.
    groups: Vec<([u32; 16], u16)>,
}

impl ChannelPerm {
    /// `None` unless every channel's columns sit at the same offsets from its first one and
    /// each tap's positions (`quad_at`, `positions` of them) fit the window.
    fn new(
        src: &[u32],
        taps: usize,
        quad_at: &[u32; 4],
        positions: usize,
        copies: usize,
    ) -> Option<Self> {
        if taps == 0 || !src.len().is_multiple_of(taps) || positions > 4 || !matches!(copies, 1 | 4)
        {
            return None;
        }
        let rel: Vec<u32> =
            src[..taps].iter().map(|&o| o.checked_sub(src[0])).collect::<Option<_>>()?;
        let uniform = src.iter().step_by(taps).enumerate().all(|(c, &base)| {
            src[c * taps..(c + 1) * taps]
                .iter()
                .zip(&rel)
                .all(|(&o, &r)| o.checked_sub(base) == Some(r))
        });
        if !uniform {
            return None;
        }
        let last = quad_at[..positions].iter().max().copied().unwrap_or(0);
        let span = rel.iter().max()?.checked_add(last)?;
        if span as usize >= WINDOW {
            return None;
        }
        // A tap's row is 4 `copies` floats: 4 taps per vector, or 1 when repeated.
        let groups = rel
            .chunks(4 / copies)
            .map(|g| {
                let (mut idx, mut mask) = ([0u32; 16], 0u16);
                for (k, &r) in g.iter().enumerate() {
                    for (p, &at) in quad_at.iter().enumerate().take(positions) {
                        for i in 0..copies {
                            let lane = 4 * copies * k + copies * p + i;
                            idx[lane] = r + at;
                            mask |= 1 << lane;
                        }
                    }
                }
                (idx, mask)
            })
            .collect();
        Some(ChannelPerm { taps, per_group: 4 / copies, groups })
    }
}

/// What a kernel's tiles read: the packed input `x` itself, or, when it gathers, `gather`'s
/// copy of it filled into `buf`.
pub(crate) fn tile_input<'a>(
    gather: Option<&Gather>,
    isa: Isa,
    x: &'a [f32],
    buf: &'a mut [f32],
    threads: usize,
) -> Result<&'a [f32]> {
    match gather {
        None => Ok(x),
        Some(g) => {
            g.fill(isa, x, buf, threads)?;
            Ok(buf)
        }
    }
}

/// One [`Gather::fill`]: `x` holds `x_len >= reads` floats and `out` `len()`.
struct FillJob<'a> {
    g: &'a Gather,
    x: *const f32,
    x_len: usize,
    out: SendPtr,
}

// SAFETY: `x` is only read; threads write disjoint columns of `out`.
unsafe impl Sync for FillJob<'_> {}

simd_entry! {
    fn fill_cols(job: &FillJob<'_>, c0: usize, c1: usize) => fill_cols_generic;
}

/// Columns `c0..c1` of a [`FillJob`]. Where a column's floats fit two vectors from its first
/// flat position, a 16-lane level loads them and permutes them into place (2 loads, a
/// permute and a store per column: copying a 4x4 map row by row called `memcpy` four times
/// per column, a third of a 512-channel layer's time); else value by value, in a function of
/// its own: inside the loop, its state kept the loop's counters on the stack, each column
/// waiting on the last one's store of them (512@2x2 quad, 4,608 columns, from `perf`
/// shares of `examples/bcr_small_map`: 13.7 -> 9.6 us, 10.6 -> 7.7 cycles a column; the
/// rest is the stores' misses, 64 bytes a column).
#[inline(always)]
fn fill_cols_generic<S: Simd>(job: &FillJob<'_>, c0: usize, c1: usize) {
    let g = job.g;
    let out = job.out.0;
    let stride = g.stride;
    // Only the column's own floats: a whole vector would spill into the next column, which
    // another thread may have filled already.
    let store_mask = ((1u32 << stride.min(16)) - 1) as u16;
    // Whether the 32-float window from a column's first position lies inside `x`.
    let window_fits = |at: usize| at + WINDOW <= job.x_len;
    let fast = g.perm.filter(|_| S::LANES == 16);
    if let Some(cp) = g.channel_perm.as_ref().filter(|_| S::LANES == 16) {
        // Whole channels (`fill` splits by them).
        for ch in c0 / cp.taps..c1 / cp.taps {
            let col = ch * cp.taps;
            let at = g.src[col] as usize;
            // SAFETY: as below; the window lies inside `x` (checked), and each group's store
            // covers only its own taps' 4 floats each, inside this channel's columns.
            unsafe {
                if !window_fits(at) {
                    for c in col..col + cp.taps {
                        fill_col_by_value(g, job.x.add(g.src[c] as usize), out.add(c * stride));
                    }
                    continue;
                }
                let src = job.x.add(at);
                let (lo, hi) = (S::load(src), S::load(src.add(16)));
                let dst = out.add(col * stride);
                for (gi, (idx, mask)) in cp.groups.iter().enumerate() {
                    let n = (cp.taps - cp.per_group * gi).min(cp.per_group);
                    let v = S::permute2_maskz(lo, hi, idx, *mask);
                    if n == cp.per_group {
                        S::store(dst.add(16 * gi), v);
                    } else {
                        S::store_masked(dst.add(16 * gi), v, ((1u32 << (n * stride)) - 1) as u16);
                    }
                }
            }
        }
        return;
    }
    for (c, &at) in g.src.iter().enumerate().take(c1).skip(c0) {
        let at = at as usize;
        // SAFETY: column offsets plus the map's flat positions stay below `reads` (checked
        // by `fill`), and a whole 32-float window is read only inside `x`; column `c` of
        // `out` is `stride` floats from `c * stride`, inside `len()`.
        unsafe {
            let src = job.x.add(at);
            let dst = out.add(c * stride);
            match fast {
                Some((idx, mask)) if window_fits(at) => {
                    let v = S::permute2_maskz(S::load(src), S::load(src.add(16)), &idx, mask);
                    S::store_masked(dst, v, store_mask);
                }
                _ => fill_col_by_value(g, src, dst),
            }
        }
    }
}

/// One column of a [`Gather`] value by value (`src`: its first flat position in the packed
/// input, `dst`: its `stride` floats).
///
/// # Safety
/// As in [`fill_cols_generic`].
#[cold]
#[inline(never)]
unsafe fn fill_col_by_value(g: &Gather, src: *const f32, dst: *mut f32) {
    if g.quad {
        // `copies` of each position's value; positions past the map are zero.
        for (p, &at) in g.quad_at.iter().enumerate() {
            let v = if p < g.positions { *src.add(at as usize) } else { 0.0 };
            for r in 0..g.copies {
                *dst.add(g.copies * p + r) = v;
            }
        }
    } else {
        for (y, &at) in g.row_at.iter().enumerate() {
            for i in 0..g.width {
                *dst.add(y * g.width + i) = *src.add(at as usize + i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every column's row, value by value from its source offsets: the reference the fills
    /// (per channel, per column window, or value by value) must reproduce.
    fn by_value(g: &Gather, x: &[f32]) -> Vec<f32> {
        let mut want = vec![0.0f32; g.src.len() * g.stride];
        for (c, &at) in g.src.iter().enumerate() {
            for (p, &q) in g.quad_at.iter().enumerate().take(g.positions) {
                for r in 0..g.copies {
                    want[c * g.stride + g.copies * p + r] = x[at as usize + q as usize];
                }
            }
        }
        want
    }

    #[test]
    fn quad_fills_match_a_value_by_value_gather_on_every_level() {
        let shapes = [
            // 2x2 (4 positions), 1x3 (3) and a strided 2x2: one tap window per channel.
            ConvShape::conv2d(24, 16, [2, 2], [3, 3], 1, 1).unwrap(),
            ConvShape::conv2d(8, 16, [1, 3], [3, 3], 1, 1).unwrap(),
            ConvShape::conv2d(8, 24, [3, 4], [3, 3], 2, 1).unwrap(),
            // A 1x1 kernel: one tap per channel, the group's store masked to 4 floats.
            ConvShape::conv2d(16, 8, [2, 2], [1, 1], 1, 0).unwrap(),
        ];
        for shape in shapes {
            let layout = shape.layout();
            for form in [GatherForm::Quad, GatherForm::QuadRepeated] {
                let g = Gather::new(&shape, &layout, form, "test").unwrap();
                // The packed input (or, read in place, the input itself).
                let len = layout.packed_len().max(g.reads);
                let x: Vec<f32> = (0..len).map(|i| 1.0 + i as f32).collect();
                assert!(g.channel_perm.is_some(), "{form:?} {shape:?}");
                let want = by_value(&g, &x);
                for isa in Isa::available() {
                    for threads in [1, 2] {
                        let mut out = vec![f32::NAN; g.len()];
                        g.fill(isa, &x, &mut out, threads).unwrap();
                        assert_eq!(
                            out[..want.len()],
                            want[..],
                            "{form:?} {isa} {threads}t {shape:?}"
                        );
                    }
                }
            }
        }
    }
}
