//! Obviously-correct reference implementations (plain loops, f64 accumulation) that define
//! what every kernel must compute. Tests compare against them; they are not fast.

use crate::conv::ConvShape;

/// Dense convolution of one sample: `weights` is `[out, in/groups, kt, kh, kw]`, `input`
/// `[in, D, H, W]`; returns `[out, Do, Ho, Wo]`.
pub fn conv(shape: &ConvShape, weights: &[f32], input: &[f32]) -> Vec<f32> {
    let k = shape.kernel_volume();
    let ipg = shape.in_per_group();
    let mut y = vec![0.0f64; shape.out_channels * shape.output_positions()];
    for_each_mac(shape, |o, ci, tap, oi, ii| {
        y[oi] += f64::from(weights[o * ipg * k + ci * k + tap]) * f64::from(input[ii]);
    });
    y.into_iter().map(|v| v as f32).collect()
}

/// Calls `f(out_channel, in_channel, tap, output_index, input_index)` for every
/// multiply-accumulate of a convolution of one sample (taps landing in padding skipped).
fn for_each_mac(s: &ConvShape, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
    let out = s.output();
    let [d, h, w] = s.input;
    let (ipg, opg) = (s.in_per_group(), s.out_per_group());
    for o in 0..s.out_channels {
        let g = o / opg;
        for z in 0..out[0] {
            for yy in 0..out[1] {
                for xx in 0..out[2] {
                    let oi = o * s.output_positions() + (z * out[1] + yy) * out[2] + xx;
                    for ci in 0..ipg {
                        let c = g * ipg + ci;
                        for t0 in 0..s.kernel[0] {
                            for t1 in 0..s.kernel[1] {
                                for t2 in 0..s.kernel[2] {
                                    let at = |o: usize, t: usize, dim: usize| {
                                        (o * s.stride[dim] + t * s.dilation[dim]) as isize
                                            - s.padding[dim] as isize
                                    };
                                    let (iz, iy, ix) = (at(z, t0, 0), at(yy, t1, 1), at(xx, t2, 2));
                                    if iz < 0
                                        || iy < 0
                                        || ix < 0
                                        || iz >= d as isize
                                        || iy >= h as isize
                                        || ix >= w as isize
                                    {
                                        continue;
                                    }
                                    let tap = (t0 * s.kernel[1] + t1) * s.kernel[2] + t2;
                                    let ii =
                                        ((c * d + iz as usize) * h + iy as usize) * w + ix as usize;
                                    f(o, ci, tap, oi, ii);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The gradient of [`conv`] with respect to its input, for one sample: every output
/// gradient flows back through every weight that produced it.
pub fn conv_backward_data(shape: &ConvShape, weights: &[f32], output_grad: &[f32]) -> Vec<f32> {
    let k = shape.kernel_volume();
    let ipg = shape.in_per_group();
    let mut dx = vec![0.0f64; shape.in_channels * shape.input_plane()];
    for_each_mac(shape, |o, ci, tap, oi, ii| {
        dx[ii] += f64::from(weights[o * ipg * k + ci * k + tap]) * f64::from(output_grad[oi]);
    });
    dx.into_iter().map(|v| v as f32).collect()
}

/// The gradient of [`conv`] with respect to its weights, summed over a batch of `batch`
/// samples stored one after another in `input` and `output_grad`.
pub fn conv_backward_weights(
    shape: &ConvShape,
    batch: usize,
    input: &[f32],
    output_grad: &[f32],
) -> Vec<f32> {
    let k = shape.kernel_volume();
    let ipg = shape.in_per_group();
    let (x_img, y_img) =
        (shape.in_channels * shape.input_plane(), shape.out_channels * shape.output_positions());
    let mut dw = vec![0.0f64; shape.out_channels * ipg * k];
    for n in 0..batch {
        let (x, dy) = (&input[n * x_img..], &output_grad[n * y_img..]);
        for_each_mac(shape, |o, ci, tap, oi, ii| {
            dw[o * ipg * k + ci * k + tap] += f64::from(x[ii]) * f64::from(dy[oi]);
        });
    }
    dw.into_iter().map(|v| v as f32).collect()
}

/// `Y[m, n] = A[m, k] * B[k, n]`, all row-major.
pub fn gemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let acc: f64 = (0..k).map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j])).sum();
            y[i * n + j] = acc as f32;
        }
    }
    y
}

/// `y = A x` for a row-major `m x k` matrix.
pub fn gemv(m: usize, k: usize, a: &[f32], x: &[f32]) -> Vec<f32> {
    gemm(m, k, 1, a, x)
}

/// The error bound the kernels are held to: f32 accumulation of `terms` products of
/// magnitude at most `scale` carries a rounding error of at most about `terms * eps * scale`
/// (a worst-case bound; reassociation by vectorization stays within it).
pub fn tolerance(terms: usize, scale: f32) -> f32 {
    (terms as f32).max(1.0) * f32::EPSILON * scale.max(1e-6) * 2.0
}
