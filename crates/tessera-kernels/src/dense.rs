//! Dense baselines: GEMM from the `gemm` crate, a GEMV of our own, and convolutions as
//! im2col + GEMM. Every speed-up this crate reports is measured against the fastest of these
//! and the row-group kernel run with every weight kept.
//!
//! Why `gemm` (faer's): pure Rust (no system BLAS to install on a fresh machine), maintained,
//! runtime dispatch to AVX2 / AVX-512 micro-kernels, and within a few percent of OpenBLAS on
//! large single-thread SGEMM here; burn's flex backend uses the same crate. Rejected: OpenBLAS
//! via `cblas` (system library and build-time C compilation), `matrixmultiply` (no AVX-512).

#![allow(unsafe_op_in_unsafe_fn)]

use crate::conv::ConvShape;
use crate::error::Result;
use crate::isa::Isa;
use crate::rowgroup::check_len;
use crate::simd::{Simd, simd_entry};
use crate::threads::{SendPtr, run_parallel, split_by_cost};

/// `C[m, n] = A[m, k] * B[k, n]` (row-major), overwriting `c`.
pub fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    threads: usize,
) -> Result<()> {
    check_len("A", m * k, a.len())?;
    check_len("B", k * n, b.len())?;
    check_len("C", m * n, c.len())?;
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the three buffers have the lengths checked above; strides describe row-major
    // m x k, k x n and m x n matrices; `read_dst = false` ignores c's previous content.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

/// `y = A x` for a row-major `m x k` matrix: a streaming dot product per row, four rows at a
/// time so each `x` vector load serves four rows. Memory bound for large `A`.
pub fn sgemv(
    isa: Isa,
    m: usize,
    k: usize,
    a: &[f32],
    x: &[f32],
    y: &mut [f32],
    threads: usize,
) -> Result<()> {
    check_len("A", m * k, a.len())?;
    check_len("x", k, x.len())?;
    check_len("y", m, y.len())?;
    let blocks = m.div_ceil(4);
    let threads = threads.clamp(1, crate::threads::MAX_THREADS);
    let bounds = split_by_cost(blocks, threads, |_| 1);
    let yp = SendPtr(y.as_mut_ptr());
    // Thread t writes rows of its blocks only.
    run_parallel(threads, |t| {
        gemv_rows(isa, m, k, a, x, yp, 4 * bounds[t], (4 * bounds[t + 1]).min(m))
    });
    Ok(())
}

simd_entry! {
    fn gemv_rows(m: usize, k: usize, a: &[f32], x: &[f32], y: SendPtr, r0: usize, r1: usize) => gemv_rows_generic;
}

#[inline(always)]
fn gemv_rows_generic<S: Simd>(
    m: usize,
    k: usize,
    a: &[f32],
    x: &[f32],
    y: SendPtr,
    r0: usize,
    r1: usize,
) {
    let l = S::LANES;
    let _ = m;
    let mut r = r0;
    while r < r1 {
        let rows = (r1 - r).min(4);
        // SAFETY: rows r..r+rows < m exist in `a` (k values each); loads cover j..j+l <= k in
        // the vector loop and single values in the tail; y[r..r+rows] belongs to this thread.
        unsafe {
            let mut acc = [S::zero(); 4];
            let mut j = 0;
            while j + l <= k {
                let xv = S::load(x.as_ptr().add(j));
                for (i, a_i) in acc.iter_mut().enumerate().take(rows) {
                    *a_i = S::fma(S::load(a.as_ptr().add((r + i) * k + j)), xv, *a_i);
                }
                j += l;
            }
            for (i, a_i) in acc.iter().enumerate().take(rows) {
                let mut s = S::hsum(*a_i);
                for jj in j..k {
                    s += a[(r + i) * k + jj] * x[jj];
                }
                *y.0.add(r + i) = s;
            }
        }
        r += rows;
    }
}

/// Dense convolution as im2col + GEMM, per channel group. `scratch` holds [`im2col_len`]
/// floats (none for 1x1 stride-1 unpadded convolutions, which multiply the input directly).
///
/// The unfolded matrix is cut from the packed conv layout ([`crate::conv`]): every row of it
/// is a run of contiguous copies, one per output row, instead of a bounds check per element.
pub fn conv_im2col(
    shape: &ConvShape,
    weights: &[f32],
    input: &[f32],
    output: &mut [f32],
    scratch: &mut [f32],
    threads: usize,
) -> Result<()> {
    let s = shape;
    check_len("weights", s.out_channels * s.cols(), weights.len())?;
    check_len("input", s.in_channels * s.input_plane(), input.len())?;
    check_len("output", s.out_channels * s.output_positions(), output.len())?;
    check_len("im2col scratch", im2col_len(s), scratch.len())?;
    let (p, k) = (s.output_positions(), s.cols());
    let opg = s.out_per_group();
    if is_direct(s) {
        for g in 0..s.groups {
            let in_g = &input[g * s.in_per_group() * s.input_plane()
                ..(g + 1) * s.in_per_group() * s.input_plane()];
            sgemm(
                opg,
                k,
                p,
                &weights[g * opg * k..(g + 1) * opg * k],
                in_g,
                &mut output[g * opg * p..(g + 1) * opg * p],
                threads,
            )?;
        }
        return Ok(());
    }
    let layout = s.layout();
    let (packed, col) = scratch.split_at_mut(layout.packed_len());
    layout.pack(input, packed);
    let x: &[f32] = if layout.in_place() { input } else { packed };
    let [_, oh, ow] = s.output();
    let row_pitch = layout.output_row_pitch();
    for g in 0..s.groups {
        for (j, dst) in col.chunks_exact_mut(p).enumerate().take(k) {
            let off = layout.col_offset(g, j);
            for (od, &(start, _)) in layout.runs().iter().enumerate() {
                for y in 0..oh {
                    let src = off + start + y * row_pitch;
                    let d = (od * oh + y) * ow;
                    dst[d..d + ow].copy_from_slice(&x[src..src + ow]);
                }
            }
        }
        sgemm(
            opg,
            k,
            p,
            &weights[g * opg * k..(g + 1) * opg * k],
            col,
            &mut output[g * opg * p..(g + 1) * opg * p],
            threads,
        )?;
    }
    Ok(())
}

fn is_direct(s: &ConvShape) -> bool {
    s.kernel == [1, 1, 1] && s.stride == [1, 1, 1] && s.padding == [0, 0, 0]
}

/// Scratch floats [`conv_im2col`] needs: the packed input and the unfolded matrix.
pub fn im2col_len(shape: &ConvShape) -> usize {
    if is_direct(shape) {
        0
    } else {
        shape.layout().packed_len() + shape.cols() * shape.output_positions()
    }
}
