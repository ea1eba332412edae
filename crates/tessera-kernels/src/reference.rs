//! Obviously-correct reference implementations (plain loops, f64 accumulation) that define
//! what every kernel must compute. Tests compare against them; they are not fast.

use crate::conv::ConvShape;

/// Dense convolution of one sample: `weights` is `[out, in/groups, kt, kh, kw]`, `input`
/// `[in, D, H, W]`; returns `[out, Do, Ho, Wo]`.
pub fn conv(shape: &ConvShape, weights: &[f32], input: &[f32]) -> Vec<f32> {
    let s = shape;
    let out = s.output();
    let [d, h, w] = s.input;
    let (ipg, opg) = (s.in_per_group(), s.out_per_group());
    let k = s.kernel_volume();
    let mut y = vec![0.0f32; s.out_channels * s.output_positions()];
    for o in 0..s.out_channels {
        let g = o / opg;
        for z in 0..out[0] {
            for yy in 0..out[1] {
                for xx in 0..out[2] {
                    let mut acc = 0.0f64;
                    for ci in 0..ipg {
                        let c = g * ipg + ci;
                        for t0 in 0..s.kernel[0] {
                            for t1 in 0..s.kernel[1] {
                                for t2 in 0..s.kernel[2] {
                                    let iz = (z * s.stride[0] + t0 * s.dilation[0]) as isize
                                        - s.padding[0] as isize;
                                    let iy = (yy * s.stride[1] + t1 * s.dilation[1]) as isize
                                        - s.padding[1] as isize;
                                    let ix = (xx * s.stride[2] + t2 * s.dilation[2]) as isize
                                        - s.padding[2] as isize;
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
                                    let wv = weights[o * ipg * k + ci * k + tap];
                                    let xv = input[((c * d + iz as usize) * h + iy as usize) * w
                                        + ix as usize];
                                    acc += f64::from(wv) * f64::from(xv);
                                }
                            }
                        }
                    }
                    y[o * s.output_positions() + (z * out[1] + yy) * out[2] + xx] = acc as f32;
                }
            }
        }
    }
    y
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
