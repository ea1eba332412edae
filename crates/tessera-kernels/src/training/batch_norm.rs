//! Batch normalization for training over an NCHW batch: the per-channel batch statistics, the
//! normalization, and the gradients with respect to the input, `gamma` and `beta`.
//!
//! Why here: burn 0.22 composes its training batch norm from generic tensor operations that
//! swap the batch and channel axes (a full copy of the activation each time) and runs the
//! backward the same way; on a ResNet-20 step that was about a fifth of the time. Here each
//! pass reads the activation once in its own layout: threads take contiguous image ranges,
//! per-channel sums are accumulated per plane in f32 vectors and across planes in f64, and
//! the elementwise passes are one or two fused multiply-adds per value with per-channel
//! coefficients, all in [`Simd`] vectors.
//!
//! With `M = N * H * W` values per channel, `xhat = (x - mean) / sqrt(var + eps)` (biased
//! variance, as PyTorch and burn normalize with):
//!
//! * forward: `y = gamma * xhat + beta`;
//! * backward: `dbeta = sum(dy)`, `dgamma = sum(dy * xhat)`,
//!   `dx = gamma / sqrt(var + eps) / M * (M * dy - dbeta - xhat * dgamma)`.

use super::for_image_ranges;
use crate::error::{KernelError, Result};
use crate::isa::Isa;
use crate::rowgroup::check_len;
use crate::simd::{Simd, simd_entry};

/// The shape of an NCHW batch as batch norm sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchNormShape {
    batch: usize,
    channels: usize,
    plane: usize,
}

impl BatchNormShape {
    /// Checks that every dimension is non-zero.
    pub fn new(batch: usize, channels: usize, plane: usize) -> Result<Self> {
        if batch == 0 || channels == 0 || plane == 0 {
            return Err(KernelError::InvalidShape {
                reason: format!(
                    "batch norm needs a non-empty batch: {batch} images x {channels} channels x {plane} values"
                ),
            });
        }
        Ok(BatchNormShape { batch, channels, plane })
    }

    /// Images.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Channels (one mean and variance each).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Values per channel per image (`H * W`).
    pub fn plane(&self) -> usize {
        self.plane
    }

    /// Values in the batch.
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.plane
    }

    /// Always false: [`BatchNormShape::new`], the only constructor, rejects empty shapes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn image(&self) -> usize {
        self.channels * self.plane
    }

    fn per_channel(&self) -> f64 {
        (self.batch * self.plane) as f64
    }
}

/// Per-channel mean and biased variance of `x`, written into `mean` and `var`.
pub fn batch_norm_statistics(
    shape: &BatchNormShape,
    x: &[f32],
    mean: &mut [f32],
    var: &mut [f32],
    threads: usize,
) -> Result<()> {
    check_len("input", shape.len(), x.len())?;
    check_len("mean", shape.channels, mean.len())?;
    check_len("variance", shape.channels, var.len())?;
    let isa = Isa::detect();
    // Sums of (x - pivot) and its square, the pivot a value of the channel: the variance
    // E[(x-p)^2] - E[x-p]^2 then loses nothing to cancellation when the mean is far from
    // zero relative to the spread (un-normalized inputs).
    let pivot: Vec<f32> = (0..shape.channels).map(|c| x[c * shape.plane]).collect();
    let sums = channel_sums(shape, threads, |n, c| {
        let at = n * shape.image() + c * shape.plane;
        let (s, q) = plane_sum_and_squares(isa, &x[at..at + shape.plane], pivot[c]);
        [f64::from(s), f64::from(q)]
    });
    let m = shape.per_channel();
    for (c, [s, q]) in sums.into_iter().enumerate() {
        let shift = s / m;
        mean[c] = (f64::from(pivot[c]) + shift) as f32;
        var[c] = (q / m - shift * shift).max(0.0) as f32;
    }
    Ok(())
}

/// `y = gamma * (x - mean) / sqrt(var + eps) + beta`, per channel, overwriting `y`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward(
    shape: &BatchNormShape,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    epsilon: f64,
    y: &mut [f32],
    threads: usize,
) -> Result<()> {
    check_len("input", shape.len(), x.len())?;
    check_len("output", shape.len(), y.len())?;
    for (what, v) in [("gamma", gamma), ("beta", beta), ("mean", mean), ("variance", var)] {
        check_len(what, shape.channels, v.len())?;
    }
    let isa = Isa::detect();
    // y = x * a + b with a = gamma / sqrt(var + eps), b = beta - mean * a.
    let coef: Vec<(f32, f32)> = (0..shape.channels)
        .map(|c| {
            let a = f64::from(gamma[c]) / (f64::from(var[c]) + epsilon).sqrt();
            (a as f32, (f64::from(beta[c]) - f64::from(mean[c]) * a) as f32)
        })
        .collect();
    for_image_ranges(shape.batch, threads, y, shape.image(), |n0, ys| {
        for (i, img) in ys.chunks_exact_mut(shape.image()).enumerate() {
            let xi = &x[(n0 + i) * shape.image()..(n0 + i + 1) * shape.image()];
            for ((yp, xp), &(a, b)) in
                img.chunks_exact_mut(shape.plane).zip(xi.chunks_exact(shape.plane)).zip(&coef)
            {
                plane_scale_shift(isa, xp, a, b, yp);
            }
        }
    });
    Ok(())
}

/// The gradients of [`batch_norm_forward`] (with the batch statistics of `x` as `mean` and
/// `var`) given the output gradient `dy`: overwrites `dx`, `dgamma` and `dbeta`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    shape: &BatchNormShape,
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    mean: &[f32],
    var: &[f32],
    epsilon: f64,
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    threads: usize,
) -> Result<()> {
    for (what, v) in [("input", x), ("output gradient", dy)] {
        check_len(what, shape.len(), v.len())?;
    }
    check_len("input gradient", shape.len(), dx.len())?;
    for (what, v) in [("gamma", gamma), ("mean", mean), ("variance", var)] {
        check_len(what, shape.channels, v.len())?;
    }
    check_len("gamma gradient", shape.channels, dgamma.len())?;
    check_len("beta gradient", shape.channels, dbeta.len())?;
    let isa = Isa::detect();
    // Pass 1: sum(dy) and sum(dy * (x - mean)) per channel.
    let sums = channel_sums(shape, threads, |n, c| {
        let at = n * shape.image() + c * shape.plane;
        let (s, d) = plane_sum_and_centered_dot(
            isa,
            &dy[at..at + shape.plane],
            &x[at..at + shape.plane],
            mean[c],
        );
        [f64::from(s), f64::from(d)]
    });
    let m = shape.per_channel();
    // Pass 2: dx = k1 * dy + k2 * x + k3, per channel.
    let mut coef = Vec::with_capacity(shape.channels);
    for (c, [sum_dy, dot]) in sums.into_iter().enumerate() {
        let inv_std = 1.0 / (f64::from(var[c]) + epsilon).sqrt();
        let g = f64::from(gamma[c]);
        dbeta[c] = sum_dy as f32;
        dgamma[c] = (dot * inv_std) as f32;
        // dx = g * inv_std * dy - g * inv_std^3 / M * dot * (x - mean) - g * inv_std / M * sum_dy
        let k1 = g * inv_std;
        let k2 = -g * inv_std * inv_std * inv_std * dot / m;
        let k3 = -g * inv_std * sum_dy / m - k2 * f64::from(mean[c]);
        coef.push((k1 as f32, k2 as f32, k3 as f32));
    }
    for_image_ranges(shape.batch, threads, dx, shape.image(), |n0, dxs| {
        for (i, img) in dxs.chunks_exact_mut(shape.image()).enumerate() {
            let at = (n0 + i) * shape.image();
            let (xi, dyi) = (&x[at..at + shape.image()], &dy[at..at + shape.image()]);
            for (((dp, xp), gp), &(k1, k2, k3)) in img
                .chunks_exact_mut(shape.plane)
                .zip(xi.chunks_exact(shape.plane))
                .zip(dyi.chunks_exact(shape.plane))
                .zip(&coef)
            {
                plane_input_grad(isa, gp, xp, (k1, k2, k3), dp);
            }
        }
    });
    Ok(())
}

/// Sums `f(image, channel)` (two values) over all images per channel, threads taking
/// contiguous image ranges and their partial sums added in f64.
fn channel_sums(
    shape: &BatchNormShape,
    threads: usize,
    f: impl Fn(usize, usize) -> [f64; 2] + Sync,
) -> Vec<[f64; 2]> {
    let threads = threads.clamp(1, shape.batch);
    let part = |t: usize| {
        let mut acc = vec![[0.0f64; 2]; shape.channels];
        for n in t * shape.batch / threads..(t + 1) * shape.batch / threads {
            for (c, a) in acc.iter_mut().enumerate() {
                let [p, q] = f(n, c);
                a[0] += p;
                a[1] += q;
            }
        }
        acc
    };
    let parts: Vec<Vec<[f64; 2]>> = if threads == 1 {
        vec![part(0)]
    } else {
        use rayon::prelude::*;
        (0..threads).into_par_iter().map(part).collect()
    };
    let mut total = vec![[0.0f64; 2]; shape.channels];
    for p in parts {
        for (t, v) in total.iter_mut().zip(p) {
            t[0] += v[0];
            t[1] += v[1];
        }
    }
    total
}

simd_entry! {
    /// Sum and sum of squares of `x - pivot` over a plane.
    fn plane_sum_and_squares(x: &[f32], pivot: f32) -> (f32, f32) => sum_and_squares_generic;
}

#[inline(always)]
fn sum_and_squares_generic<S: Simd>(x: &[f32], pivot: f32) -> (f32, f32) {
    let l = S::LANES;
    // SAFETY: vector loads cover x[i..i + l] with i + l <= x.len(); the tail is shifted into
    // a 16-float stack buffer and its first x.len() - i < l values loaded from there.
    unsafe {
        let (mut s, mut q) = (S::zero(), S::zero());
        let (p, neg) = (S::splat(pivot), S::splat(-1.0));
        let mut i = 0;
        while i + l <= x.len() {
            let v = S::fma(p, neg, S::load(x.as_ptr().add(i)));
            s = S::add(s, v);
            q = S::fma(v, v, q);
            i += l;
        }
        if i < x.len() {
            let t = x.len() - i;
            let mut tail = [0.0f32; 16];
            for (d, &v) in tail.iter_mut().zip(&x[i..]) {
                *d = v - pivot;
            }
            let v = S::load_partial(tail.as_ptr(), t);
            s = S::add(s, v);
            q = S::fma(v, v, q);
        }
        (S::hsum(s), S::hsum(q))
    }
}

simd_entry! {
    /// `(sum(dy), sum(dy * (x - mean)))` over a plane.
    fn plane_sum_and_centered_dot(dy: &[f32], x: &[f32], mean: f32) -> (f32, f32) => centered_dot_generic;
}

#[inline(always)]
fn centered_dot_generic<S: Simd>(dy: &[f32], x: &[f32], mean: f32) -> (f32, f32) {
    let l = S::LANES;
    let n = dy.len().min(x.len());
    // SAFETY: as in `sum_and_squares_generic`, over the first n values of both slices. The
    // masked tail loads zeros, and dy = 0 there adds nothing to either sum.
    unsafe {
        let (mut s, mut d) = (S::zero(), S::zero());
        let m = S::splat(mean);
        let neg = S::splat(-1.0);
        let mut i = 0;
        while i + l <= n {
            let g = S::load(dy.as_ptr().add(i));
            let c = S::fma(m, neg, S::load(x.as_ptr().add(i)));
            s = S::add(s, g);
            d = S::fma(g, c, d);
            i += l;
        }
        if i < n {
            let g = S::load_partial(dy.as_ptr().add(i), n - i);
            let c = S::fma(m, neg, S::load_partial(x.as_ptr().add(i), n - i));
            s = S::add(s, g);
            d = S::fma(g, c, d);
        }
        (S::hsum(s), S::hsum(d))
    }
}

simd_entry! {
    /// `out = a * x + b` over a plane.
    fn plane_scale_shift(x: &[f32], a: f32, b: f32, out: &mut [f32]) => scale_shift_generic;
}

#[inline(always)]
fn scale_shift_generic<S: Simd>(x: &[f32], a: f32, b: f32, out: &mut [f32]) {
    let l = S::LANES;
    let n = x.len().min(out.len());
    // SAFETY: loads and stores cover the first n values of `x` and `out` (the tail masked).
    unsafe {
        let (av, bv) = (S::splat(a), S::splat(b));
        let mut i = 0;
        while i + l <= n {
            S::store(out.as_mut_ptr().add(i), S::fma(S::load(x.as_ptr().add(i)), av, bv));
            i += l;
        }
        if i < n {
            let v = S::fma(S::load_partial(x.as_ptr().add(i), n - i), av, bv);
            S::store_partial(out.as_mut_ptr().add(i), v, n - i);
        }
    }
}

simd_entry! {
    /// `out = k1 * dy + k2 * x + k3` over a plane.
    fn plane_input_grad(dy: &[f32], x: &[f32], k: (f32, f32, f32), out: &mut [f32]) => input_grad_generic;
}

#[inline(always)]
fn input_grad_generic<S: Simd>(
    dy: &[f32],
    x: &[f32],
    (k1, k2, k3): (f32, f32, f32),
    out: &mut [f32],
) {
    let l = S::LANES;
    let n = dy.len().min(x.len()).min(out.len());
    // SAFETY: loads and stores cover the first n values of each slice (the tail masked).
    unsafe {
        let (a, b, c) = (S::splat(k1), S::splat(k2), S::splat(k3));
        let mut i = 0;
        while i + l <= n {
            let v =
                S::fma(S::load(dy.as_ptr().add(i)), a, S::fma(S::load(x.as_ptr().add(i)), b, c));
            S::store(out.as_mut_ptr().add(i), v);
            i += l;
        }
        if i < n {
            let t = n - i;
            let v = S::fma(
                S::load_partial(dy.as_ptr().add(i), t),
                a,
                S::fma(S::load_partial(x.as_ptr().add(i), t), b, c),
            );
            S::store_partial(out.as_mut_ptr().add(i), v, t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize, offset: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 1009) as f32 / 504.5) - 1.0 + offset)
            .collect()
    }

    /// Forward and backward against plain f64 loops of the textbook formulas, on one and
    /// three threads, with a channel mean 50x its spread (the pivoted one-pass variance must
    /// hold).
    #[test]
    fn matches_the_textbook_formulas() {
        let shape = BatchNormShape::new(5, 3, 37).unwrap();
        let x = values(shape.len(), 1, 30.0);
        let dy = values(shape.len(), 2, 0.0);
        let gamma = [0.5f32, -1.5, 2.0];
        let beta = [0.1f32, 0.0, -0.3];
        let eps = 1e-5;
        let m = (shape.batch * shape.plane) as f64;
        let at = |n: usize, c: usize, i: usize| n * 3 * 37 + c * 37 + i;
        for threads in [1, 3] {
            let (mut mean, mut var) = (vec![0.0; 3], vec![0.0; 3]);
            batch_norm_statistics(&shape, &x, &mut mean, &mut var, threads).unwrap();
            let mut y = vec![0.0; shape.len()];
            batch_norm_forward(&shape, &x, &gamma, &beta, &mean, &var, eps, &mut y, threads)
                .unwrap();
            let (mut dx, mut dg, mut db) = (vec![0.0; shape.len()], vec![0.0; 3], vec![0.0; 3]);
            batch_norm_backward(
                &shape, &x, &dy, &gamma, &mean, &var, eps, &mut dx, &mut dg, &mut db, threads,
            )
            .unwrap();
            for c in 0..3 {
                let vals: Vec<(usize, usize)> =
                    (0..shape.batch).flat_map(|n| (0..37).map(move |i| (n, i))).collect();
                let mu = vals.iter().map(|&(n, i)| f64::from(x[at(n, c, i)])).sum::<f64>() / m;
                let v = vals
                    .iter()
                    .map(|&(n, i)| (f64::from(x[at(n, c, i)]) - mu).powi(2))
                    .sum::<f64>()
                    / m;
                assert!(
                    (f64::from(mean[c]) - mu).abs() < 1e-5 && (f64::from(var[c]) - v).abs() < 1e-5
                );
                let inv = 1.0 / (v + eps).sqrt();
                let xhat = |n, i| (f64::from(x[at(n, c, i)]) - mu) * inv;
                let sum_dy: f64 = vals.iter().map(|&(n, i)| f64::from(dy[at(n, c, i)])).sum();
                let dot: f64 =
                    vals.iter().map(|&(n, i)| f64::from(dy[at(n, c, i)]) * xhat(n, i)).sum();
                assert!((f64::from(db[c]) - sum_dy).abs() < 1e-3, "dbeta {c}");
                assert!((f64::from(dg[c]) - dot).abs() < 1e-3, "dgamma {c}");
                let g = f64::from(gamma[c]);
                for &(n, i) in &vals {
                    let want_y = g * xhat(n, i) + f64::from(beta[c]);
                    assert!((f64::from(y[at(n, c, i)]) - want_y).abs() < 1e-4);
                    let want_dx =
                        g * inv / m * (m * f64::from(dy[at(n, c, i)]) - sum_dy - xhat(n, i) * dot);
                    assert!(
                        (f64::from(dx[at(n, c, i)]) - want_dx).abs() < 1e-4,
                        "dx ({n},{c},{i})"
                    );
                }
            }
        }
    }

    #[test]
    fn empty_shapes_and_short_buffers_are_typed_errors() {
        assert!(matches!(BatchNormShape::new(0, 3, 4), Err(KernelError::InvalidShape { .. })));
        let shape = BatchNormShape::new(2, 3, 4).unwrap();
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 2]);
        let err = batch_norm_statistics(&shape, &[0.0; 24], &mut m, &mut v, 1);
        assert!(matches!(err, Err(KernelError::BufferLength { what: "variance", .. })));
    }
}
