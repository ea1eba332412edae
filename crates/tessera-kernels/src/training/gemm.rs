//! Register-tiled GEMM micro-kernels for the training convolutions, in the two shapes they
//! need, with no operand packing:
//!
//! * [`gemm_nn`]: `C (m x n) [+]= A (m x k) . B (k x n)`, `B` and `C` row-major (the unfolded
//!   input or the output gradient, contiguous along output positions), `A` at any strides
//!   (the weights or their transpose). Tiles of `MR` rows x `NV` vectors of columns: per `k`
//!   step `NV` vector loads of `B`, `MR` broadcasts of `A`, `MR x NV` FMAs.
//! * [`gemm_nt`]: `C (m x n) [+]= A (m x k) . B^T` with `B` stored `n x k`, both row-major:
//!   the weight gradient, a dot product along output positions per (output channel, unfolded
//!   row). Tiles of `MR x NR` vector accumulators over `k`, summed across lanes at the end.
//!
//! Why not the `gemm` crate for everything: it packs both operands for every call, and the
//! training shapes of small networks have one small dimension (16-64 channels) with one long
//! one, so each packed value feeds only a handful of FMAs; packing cost as much as the
//! arithmetic (perf on a ResNet-20 step: `pack_lhs` 10% of the step). These operands are
//! already contiguous where the kernels read them. Once an operand these kernels re-read per
//! row tile outgrows L2 (wide layers: 128+ channels), the crate's cache blocking wins, and
//! [`gemm_packed`] runs it (the choice is made per pass in the parent module).

use crate::simd::{Simd, simd_entry};

/// A row-major or strided read-only matrix: element `(i, j)` at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl Strided<'_> {
    /// Whether every element of an `rows x cols` view lies inside `data`.
    fn covers(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `C (m x n, row stride ldc) = [C +] A (m x k) . B (k x n, row stride ldb)`.
///
/// Panics (a caller bug, never input-dependent) if an operand's slice is too short for its
/// extent.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_nn(
    isa: crate::Isa,
    m: usize,
    n: usize,
    k: usize,
    a: Strided<'_>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let b_view = Strided { data: b, rs: ldb, cs: 1 };
    assert!(
        a.covers(m, k) && b_view.covers(k, n) && (m == 0 || n == 0 || (m - 1) * ldc + n <= c.len())
    );
    if m == 0 || n == 0 {
        return;
    }
    nn_entry(isa, m, n, k, a, b, ldb, c, ldc, accumulate);
}

simd_entry! {
    fn nn_entry(m: usize, n: usize, k: usize, a: Strided<'_>, b: &[f32], ldb: usize, c: &mut [f32], ldc: usize, accumulate: bool) => nn_generic;
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn nn_generic<S: Simd>(
    m: usize,
    n: usize,
    k: usize,
    a: Strided<'_>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let op = NnOp { k, a, b: b.as_ptr(), ldb, c: c.as_mut_ptr(), ldc, accumulate };
    // 16 lanes: 6 x 4 = 24 of 32 registers hold accumulators; 8 lanes: 4 x 3 = 12 of 16.
    if S::LANES == 16 { nn_columns::<S, 6, 4>(&op, m, n) } else { nn_columns::<S, 4, 3>(&op, m, n) }
}

/// The operands of one [`gemm_nn`] call, with extents checked by the entry point.
struct NnOp<'a> {
    k: usize,
    a: Strided<'a>,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
}

#[inline(always)]
fn nn_columns<S: Simd, const MR: usize, const NV: usize>(op: &NnOp<'_>, m: usize, n: usize) {
    let l = S::LANES;
    let mut j = 0;
    while j + NV * l <= n {
        nn_rows::<S, MR, NV>(op, m, j, l);
        j += NV * l;
    }
    while j < n {
        let width = (n - j).min(l);
        nn_rows::<S, MR, 1>(op, m, j, width);
        j += width;
    }
}

/// Every row tile for the column block starting at `j` (`NV` full vectors, or one vector of
/// `width` lanes when `NV == 1`).
#[inline(always)]
fn nn_rows<S: Simd, const MR: usize, const NV: usize>(
    op: &NnOp<'_>,
    m: usize,
    j: usize,
    width: usize,
) {
    let mut i = 0;
    while i + MR <= m {
        nn_tile::<S, MR, NV>(op, i, j, width);
        i += MR;
    }
    match m - i {
        0 => {}
        1 => nn_tile::<S, 1, NV>(op, i, j, width),
        2 => nn_tile::<S, 2, NV>(op, i, j, width),
        3 => nn_tile::<S, 3, NV>(op, i, j, width),
        4 => nn_tile::<S, 4, NV>(op, i, j, width),
        _ => nn_tile::<S, 5, NV>(op, i, j, width),
    }
}

#[inline(always)]
fn nn_tile<S: Simd, const R: usize, const NV: usize>(
    op: &NnOp<'_>,
    i: usize,
    j: usize,
    width: usize,
) {
    let l = S::LANES;
    let partial = width < l;
    // SAFETY: the entry point checked that A covers m x k, B covers k x n and C covers
    // m x n at their strides; this tile reads rows i..i+R < m of A and C, columns
    // j..j+NV*l <= n of B and C (or j..j+width with masked loads and stores).
    unsafe {
        let mut acc = [[S::zero(); NV]; R];
        if op.accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                let cp = op.c.add((i + r) * op.ldc + j);
                for (v, a) in row.iter_mut().enumerate() {
                    *a = if partial { S::load_partial(cp, width) } else { S::load(cp.add(v * l)) };
                }
            }
        }
        let a_ptr = op.a.data.as_ptr();
        for p in 0..op.k {
            let bp = op.b.add(p * op.ldb + j);
            let bv: [S::V; NV] = std::array::from_fn(|v| {
                if partial { S::load_partial(bp, width) } else { S::load(bp.add(v * l)) }
            });
            for (r, row) in acc.iter_mut().enumerate() {
                let av = S::splat(*a_ptr.add((i + r) * op.a.rs + p * op.a.cs));
                for (v, a) in row.iter_mut().enumerate() {
                    *a = S::fma(av, bv[v], *a);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            let cp = op.c.add((i + r) * op.ldc + j);
            for (v, a) in row.iter().enumerate() {
                if partial {
                    S::store_partial(cp, *a, width);
                } else {
                    S::store(cp.add(v * l), *a);
                }
            }
        }
    }
}

/// `C (m x n, row stride ldc) = [C +] A (m x k, row stride lda) . B^T`, `B` stored `n x k`
/// with row stride `ldb`.
///
/// Panics (a caller bug) if an operand's slice is too short for its extent.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_nt(
    isa: crate::Isa,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let av = Strided { data: a, rs: lda, cs: 1 };
    let bv = Strided { data: b, rs: ldb, cs: 1 };
    assert!(
        av.covers(m, k) && bv.covers(n, k) && (m == 0 || n == 0 || (m - 1) * ldc + n <= c.len())
    );
    if m == 0 || n == 0 {
        return;
    }
    nt_entry(isa, m, n, k, a, lda, b, ldb, c, ldc, accumulate);
}

simd_entry! {
    fn nt_entry(m: usize, n: usize, k: usize, a: &[f32], lda: usize, b: &[f32], ldb: usize, c: &mut [f32], ldc: usize, accumulate: bool) => nt_generic;
}

/// The operands of one [`gemm_nt`] call, with extents checked by the entry point.
struct NtOp {
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn nt_generic<S: Simd>(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let op = NtOp { k, a: a.as_ptr(), lda, b: b.as_ptr(), ldb, c: c.as_mut_ptr(), ldc, accumulate };
    // 16 lanes: 4 x 4 accumulators + 8 loads of 32 registers; 8 lanes: 3 x 3 + 6 of 16.
    if S::LANES == 16 { nt_blocks::<S, 4, 4>(&op, m, n) } else { nt_blocks::<S, 3, 3>(&op, m, n) }
}

#[inline(always)]
fn nt_blocks<S: Simd, const MR: usize, const NR: usize>(op: &NtOp, m: usize, n: usize) {
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(MR);
        let mut j = 0;
        while j < n {
            let cols = (n - j).min(NR);
            if rows == MR && cols == NR {
                nt_tile::<S, MR, NR>(op, i, j);
            } else {
                // Edge tiles: one row x one column at a time (a small share of the work).
                for ii in i..i + rows {
                    for jj in j..j + cols {
                        nt_tile::<S, 1, 1>(op, ii, jj);
                    }
                }
            }
            j += cols;
        }
        i += rows;
    }
}

#[inline(always)]
fn nt_tile<S: Simd, const R: usize, const CN: usize>(op: &NtOp, i: usize, j: usize) {
    let l = S::LANES;
    // SAFETY: the entry point checked that A covers m x k, B covers n x k and C covers m x n;
    // this tile reads rows i..i+R < m of A, rows j..j+CN < n of B, columns 0..k of both
    // (the last vector masked to k), and writes C's (i..i+R, j..j+CN).
    unsafe {
        let mut acc = [[S::zero(); CN]; R];
        let mut p = 0;
        while p + l <= op.k {
            let bv: [S::V; CN] = std::array::from_fn(|c| S::load(op.b.add((j + c) * op.ldb + p)));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = S::load(op.a.add((i + r) * op.lda + p));
                for (c, a) in row.iter_mut().enumerate() {
                    *a = S::fma(av, bv[c], *a);
                }
            }
            p += l;
        }
        if p < op.k {
            let t = op.k - p;
            let bv: [S::V; CN] =
                std::array::from_fn(|c| S::load_partial(op.b.add((j + c) * op.ldb + p), t));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = S::load_partial(op.a.add((i + r) * op.lda + p), t);
                for (c, a) in row.iter_mut().enumerate() {
                    *a = S::fma(av, bv[c], *a);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                let dst = op.c.add((i + r) * op.ldc + j + c);
                let s = S::hsum(*a);
                *dst = if op.accumulate { *dst + s } else { s };
            }
        }
    }
}

/// `C (m x n, row stride ldc) = [C +] A . B` with both operands at any strides, by the
/// `gemm` crate (packed, cache-blocked), single-threaded. For operands that outgrow L2,
/// where the unpacked kernels above would stream them from memory once per row tile.
///
/// Panics (a caller bug) if an operand's slice is too short for its extent.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_packed(
    m: usize,
    n: usize,
    k: usize,
    a: Strided<'_>,
    b: Strided<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    assert!(a.covers(m, k) && b.covers(k, n) && (m == 0 || n == 0 || (m - 1) * ldc + n <= c.len()));
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the assertion above keeps every strided access of A (m x k), B (k x n) and
    // C (m x n, row stride ldc) inside its slice; `read_dst` only when C holds a product.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Isa;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i + seed) * 7919 % 251) as f32 / 125.0) - 1.0).collect()
    }

    /// Both kernels against plain loops, on every instruction set this CPU has, over sizes
    /// that exercise full tiles, row and column remainders and partial vectors.
    #[test]
    fn kernels_match_plain_loops_on_every_isa() {
        for isa in Isa::available() {
            for (m, n, k) in
                [(1, 1, 1), (6, 64, 9), (7, 70, 13), (16, 1024, 144), (13, 33, 40), (5, 3, 17)]
            {
                // nn with A transposed (rs 1, cs m) and accumulation on top of C's content.
                let a = values(m * k, 1);
                let b = values(k * n, 2);
                let c0 = values(m * n, 3);
                let mut c = c0.clone();
                gemm_nn(isa, m, n, k, Strided { data: &a, rs: 1, cs: m }, &b, n, &mut c, n, true);
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = f64::from(c0[i * n + j])
                            + (0..k)
                                .map(|p| f64::from(a[p * m + i]) * f64::from(b[p * n + j]))
                                .sum::<f64>();
                        assert!(
                            (f64::from(c[i * n + j]) - want).abs() < 1e-3,
                            "{isa} nn {m}x{n}x{k} at ({i},{j})"
                        );
                    }
                }
                // nt, overwriting.
                let bt = values(n * k, 4);
                let mut c = vec![f32::NAN; m * n];
                gemm_nt(isa, m, n, k, &a, k, &bt, k, &mut c, n, false);
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|p| f64::from(a[i * k + p]) * f64::from(bt[j * k + p]))
                            .sum();
                        assert!(
                            (f64::from(c[i * n + j]) - want).abs() < 1e-3,
                            "{isa} nt {m}x{n}x{k} at ({i},{j})"
                        );
                    }
                }
            }
        }
    }
}
