//! The unfold (im2col) of one image into a column block of a `K x ld` matrix, and its adjoint
//! the fold (col2im), vectorized.
//!
//! Row `(c, ky, kx)` of the unfolded matrix holds, for every output position `(oy, ox)`, the
//! input value that tap reads, zero where it falls in the padding. For stride 1 an output row
//! of it is a shifted input row: whole vectors are loaded directly, and the vectors crossing
//! the padding are loaded and stored under a lane mask (masked-off lanes are never touched,
//! so reading "before" a row is safe). Other strides, and stride-1 rows wider than
//! `MAX_ROW_VECTORS` vectors, go one value at a time.

use crate::conv::ConvShape;
use crate::simd::{Simd, simd_entry};

/// The valid output range `[lo, hi)` along one axis for tap offset `tap`: the outputs whose
/// input coordinate `o * stride + tap - pad` lies in `0..size`.
fn valid_range(out: usize, size: usize, stride: usize, tap: usize, pad: usize) -> (usize, usize) {
    let lo = if tap >= pad { 0 } else { (pad - tap).div_ceil(stride) };
    let hi = if size + pad > tap { ((size - 1 + pad - tap) / stride + 1).min(out) } else { 0 };
    (lo.min(hi), hi)
}

/// One tap row's geometry: the valid output rows and columns and the input offsets.
#[derive(Clone, Copy)]
pub(super) struct TapRow {
    row: usize,
    channel: usize,
    oy: (usize, usize),
    ox: (usize, usize),
    /// Input row of output row 0 (may be negative), and input column of output column 0.
    iy0: isize,
    ix0: isize,
}

/// Every unfolded row's geometry, in row order: computed once per pass and shared by the
/// images (the kernels loop over it without a closure, which would be compiled without the
/// caller's instruction set).
pub(super) fn tap_rows(s: &ConvShape) -> Vec<TapRow> {
    let [_, oh, ow] = s.output();
    let (kh, kw) = (s.kernel[1], s.kernel[2]);
    let mut rows = Vec::with_capacity(s.cols());
    for c in 0..s.in_channels {
        for ky in 0..kh {
            let ty = ky * s.dilation[1];
            let oy = valid_range(oh, s.input[1], s.stride[1], ty, s.padding[1]);
            for kx in 0..kw {
                let tx = kx * s.dilation[2];
                rows.push(TapRow {
                    row: (c * kh + ky) * kw + kx,
                    channel: c,
                    oy,
                    ox: valid_range(ow, s.input[2], s.stride[2], tx, s.padding[2]),
                    iy0: ty as isize - s.padding[1] as isize,
                    ix0: tx as isize - s.padding[2] as isize,
                });
            }
        }
    }
    rows
}

/// Writes image `x` (`[in, H, W]`) unfolded into columns `col0..col0 + Ho*Wo` of every row of
/// `cols` (`K x ld`).
pub(super) fn unfold(
    isa: crate::Isa,
    s: &ConvShape,
    taps: &[TapRow],
    x: &[f32],
    cols: &mut [f32],
    ld: usize,
    col0: usize,
) {
    let [_, oh, ow] = s.output();
    assert!(x.len() >= s.in_channels * s.input_plane());
    assert!(col0 + oh * ow <= ld && cols.len() >= s.cols() * ld);
    unfold_entry(isa, s, taps, x, cols, ld, col0);
}

simd_entry! {
    fn unfold_entry(s: &ConvShape, taps: &[TapRow], x: &[f32], cols: &mut [f32], ld: usize, col0: usize) => unfold_generic;
}

#[inline(always)]
fn unfold_generic<S: Simd>(
    s: &ConvShape,
    taps: &[TapRow],
    x: &[f32],
    cols: &mut [f32],
    ld: usize,
    col0: usize,
) {
    let [_, oh, ow] = s.output();
    let (h, w) = (s.input[1], s.input[2]);
    let (sy, sx) = (s.stride[1], s.stride[2]);
    for t in taps {
        let dst = &mut cols[t.row * ld + col0..t.row * ld + col0 + oh * ow];
        let plane = &x[t.channel * h * w..(t.channel + 1) * h * w];
        dst[..t.oy.0 * ow].fill(0.0);
        dst[t.oy.1 * ow..].fill(0.0);
        // The lane masks of a row's vectors depend on the tap only: computed once per tap row.
        let masks: [u16; MAX_ROW_VECTORS] =
            std::array::from_fn(|v| lane_mask(v * S::LANES, S::LANES, t.ox));
        let (lo, hi) = t.ox;
        for oy in t.oy.0..t.oy.1 {
            let iy = (oy * sy) as isize + t.iy0;
            let src = &plane[iy as usize * w..(iy as usize + 1) * w];
            let d = &mut dst[oy * ow..(oy + 1) * ow];
            if sx == 1 && ow <= MAX_ROW_VECTORS * S::LANES {
                shifted_copy::<S>(src, d, t.ix0, &masks);
            } else {
                d[..lo].iter_mut().for_each(|v| *v = 0.0);
                d[hi..].iter_mut().for_each(|v| *v = 0.0);
                for (ox, v) in d[lo..hi].iter_mut().enumerate() {
                    *v = src[(((lo + ox) * sx) as isize + t.ix0) as usize];
                }
            }
        }
    }
}

/// Output rows up to this many vectors wide take the vectorized shifted copy (512 values
/// at 16 lanes); wider rows the scalar path.
const MAX_ROW_VECTORS: usize = 32;

/// Lanes `i` of a vector starting at column `ox0` whose column lies in `[lo, hi)`.
#[inline(always)]
fn lane_mask(ox0: usize, lanes: usize, (lo, hi): (usize, usize)) -> u16 {
    let a = lo.saturating_sub(ox0).min(lanes);
    let b = hi.saturating_sub(ox0).min(lanes).max(a);
    let below = |n: usize| ((1u32 << n) - 1) as u16;
    below(b) & !below(a)
}

/// `d[ox] = src[ox + shift]` where vector `v`'s lane mask `masks[v]` allows, zero elsewhere
/// (`d` is one output row).
#[inline(always)]
fn shifted_copy<S: Simd>(src: &[f32], d: &mut [f32], shift: isize, masks: &[u16]) {
    let l = S::LANES;
    let full = if l == 16 { u16::MAX } else { (1u16 << l) - 1 };
    for (v, &mask) in masks.iter().enumerate().take(d.len().div_ceil(l)) {
        let ox0 = v * l;
        let width = (d.len() - ox0).min(l);
        // SAFETY: lanes in `mask` read src[ox + shift] with ox in the tap's valid range,
        // inside `src` by construction; masked-off lanes are not read (the pointer is formed
        // with wrapping arithmetic and may point before `src`). Stores cover
        // d[ox0..ox0 + width].
        unsafe {
            let p = src.as_ptr().wrapping_offset(ox0 as isize + shift);
            let val = if mask == full {
                S::load(p)
            } else if mask == 0 {
                S::zero()
            } else {
                S::load_masked(p, mask)
            };
            if width == l {
                S::store(d.as_mut_ptr().add(ox0), val);
            } else {
                S::store_partial(d.as_mut_ptr().add(ox0), val, width);
            }
        }
    }
}

/// The adjoint of [`unfold`]: overwrites image gradient `dx` (`[in, H, W]`) with the sum of
/// every entry of columns `col0..col0 + Ho*Wo` of `cols` at the input position it was read
/// from.
pub(super) fn fold(
    isa: crate::Isa,
    s: &ConvShape,
    taps: &[TapRow],
    cols: &[f32],
    ld: usize,
    col0: usize,
    dx: &mut [f32],
) {
    let [_, oh, ow] = s.output();
    assert!(dx.len() >= s.in_channels * s.input_plane());
    assert!(col0 + oh * ow <= ld && cols.len() >= s.cols() * ld);
    fold_entry(isa, s, taps, cols, ld, col0, dx);
}

simd_entry! {
    fn fold_entry(s: &ConvShape, taps: &[TapRow], cols: &[f32], ld: usize, col0: usize, dx: &mut [f32]) => fold_generic;
}

#[inline(always)]
fn fold_generic<S: Simd>(
    s: &ConvShape,
    taps: &[TapRow],
    cols: &[f32],
    ld: usize,
    col0: usize,
    dx: &mut [f32],
) {
    let [_, oh, ow] = s.output();
    let (h, w) = (s.input[1], s.input[2]);
    let (sy, sx) = (s.stride[1], s.stride[2]);
    dx[..s.in_channels * h * w].fill(0.0);
    for t in taps {
        let src = &cols[t.row * ld + col0..t.row * ld + col0 + oh * ow];
        let plane = &mut dx[t.channel * h * w..(t.channel + 1) * h * w];
        let masks: [u16; MAX_ROW_VECTORS] =
            std::array::from_fn(|v| lane_mask(v * S::LANES, S::LANES, t.ox));
        for oy in t.oy.0..t.oy.1 {
            let iy = ((oy * sy) as isize + t.iy0) as usize;
            let row = &mut plane[iy * w..(iy + 1) * w];
            let srow = &src[oy * ow..(oy + 1) * ow];
            if sx == 1 && ow <= MAX_ROW_VECTORS * S::LANES {
                shifted_add::<S>(srow, row, t.ix0, &masks);
            } else {
                for ox in t.ox.0..t.ox.1 {
                    row[((ox * sx) as isize + t.ix0) as usize] += srow[ox];
                }
            }
        }
    }
}

/// `row[ox + shift] += srow[ox]` where vector `v`'s lane mask `masks[v]` allows (`srow` is
/// one output row).
#[inline(always)]
fn shifted_add<S: Simd>(srow: &[f32], row: &mut [f32], shift: isize, masks: &[u16]) {
    let l = S::LANES;
    let full = if l == 16 { u16::MAX } else { (1u16 << l) - 1 };
    for (v, &mask) in masks.iter().enumerate().take(srow.len().div_ceil(l)) {
        if mask == 0 {
            continue;
        }
        let ox0 = v * l;
        let width = (srow.len() - ox0).min(l);
        // SAFETY: lanes in `mask` touch row[ox + shift] with ox in the tap's valid range,
        // inside `row` by construction; masked-off lanes are not accessed. `srow` reads cover
        // srow[ox0..ox0 + width].
        unsafe {
            let val = if width == l {
                S::load(srow.as_ptr().add(ox0))
            } else {
                S::load_partial(srow.as_ptr().add(ox0), width)
            };
            let p = row.as_mut_ptr().wrapping_offset(ox0 as isize + shift);
            if mask == full {
                S::store(p, S::add(S::load(p), val));
            } else {
                S::store_masked(p, S::add(S::load_masked(p, mask), val), mask);
            }
        }
    }
}
