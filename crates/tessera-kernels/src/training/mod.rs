//! Dense 2-D convolution for training: the forward pass and both gradients (with respect to
//! the input and to the weights) over a whole NCHW batch, as an unfold (im2col) plus one of
//! two register-tiled GEMM micro-kernels ([`gemm`]), with the images split across threads.
//!
//! Training cannot use the inference engines of this crate: the weights change every step (no
//! time to pack a sparse format) and the backward passes need the transposed products. With
//! `K = in x kh x kw` unfolded rows and `P = Ho x Wo` output positions per image:
//!
//! * forward: `Y (out x P) = W (out x K) . col(X) (K x P)`;
//! * input gradient: `dcol (K x P) = W^T (K x out) . dY (out x P)`, then the fold (col2im, the
//!   unfold's adjoint) adds `dcol` back into `dX`;
//! * weight gradient: `dW (out x K) += dY (out x P) . col(X)^T`, each thread summing its images
//!   into a private `dW` that is reduced at the end.
//!
//! Wide layers, whose re-read operand outgrows [`UNPACKED_OPERAND_BYTES`], run the packed,
//! cache-blocked `gemm` crate instead (measured: 0.7-0.96x of burn's flex on 128-512
//! channels with the unpacked kernels).
//!
//! Small feature maps (`P` under [`MIN_COLUMNS`]) are unfolded several images side by side so
//! GEMMs have at least that many columns (when the batch has the images) (a 64-channel 8x8 layer would otherwise run
//! GEMMs 64 columns wide); output gradients are copied side by side the same way. The unfold
//! and fold move whole vectors, masked at the padding, instead of one call per row segment.
//! Buffers' rows are padded off multiples of 4 KiB (see `leading_dim`).
//!
//! Threads split the batch into contiguous ranges, each running single-threaded kernels: at
//! training batch sizes both cores stay busy on large independent pieces. Each thread
//! allocates its unfold buffers once per call. Only groups = 1 is handled here (grouped and
//! depthwise convolutions keep their own kernels).

pub mod batch_norm;
mod gemm;
mod unfold;

use crate::conv::ConvShape;
use crate::error::{KernelError, Result};
use crate::isa::Isa;
use crate::rowgroup::check_len;
use gemm::{Strided, gemm_nn, gemm_nt, gemm_packed};

/// GEMMs get at least this many columns: images are unfolded side by side until they do.
pub const MIN_COLUMNS: usize = 256;

/// Operands the unpacked micro-kernels re-read per row tile stay under this many bytes;
/// larger ones go to the packed, cache-blocked `gemm` crate (half of this machine's L2).
pub const UNPACKED_OPERAND_BYTES: usize = 1 << 20;

/// A dense 2-D convolution over a batch of NCHW images, groups = 1.
///
/// Buffers are row-major: input `[batch, in, H, W]`, weights `[out, in, kh, kw]`, output
/// `[batch, out, Ho, Wo]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConv2d {
    batch: usize,
    shape: ConvShape,
}

/// Per-thread buffers: the unfolded chunk (`K x columns`) and a chunk of outputs or output
/// gradients side by side (`out x columns`).
struct Buffers {
    cols: Vec<f32>,
    rows: Vec<f32>,
}

impl BatchConv2d {
    /// Checks that `shape` is a valid 2-D, ungrouped convolution and `batch` is non-zero.
    pub fn new(batch: usize, shape: ConvShape) -> Result<Self> {
        let shape = shape.validated()?;
        let bad = |reason: String| Err(KernelError::InvalidShape { reason });
        if batch == 0 {
            return bad("a training convolution needs at least one image".to_string());
        }
        if !shape.is_2d() {
            return bad(format!("training convolutions are 2-D (depth 1): {shape:?}"));
        }
        if shape.groups != 1 {
            return bad(format!(
                "training convolutions here are ungrouped; got {} groups",
                shape.groups
            ));
        }
        Ok(BatchConv2d { batch, shape })
    }

    /// Images in the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The convolution of one image (depth 1, groups 1).
    pub fn shape(&self) -> &ConvShape {
        &self.shape
    }

    /// Floats in the input batch.
    pub fn input_len(&self) -> usize {
        self.batch * self.image_len()
    }

    /// Floats in the output batch.
    pub fn output_len(&self) -> usize {
        self.batch * self.shape.out_channels * self.shape.output_positions()
    }

    /// Floats in the weight tensor.
    pub fn weight_len(&self) -> usize {
        self.shape.out_channels * self.shape.cols()
    }

    /// Multiply-accumulates of one of the three passes (they are equal).
    pub fn macs(&self) -> u64 {
        self.batch as u64
            * self.shape.out_channels as u64
            * self.shape.cols() as u64
            * self.shape.output_positions() as u64
    }

    fn image_len(&self) -> usize {
        self.shape.in_channels * self.shape.input_plane()
    }

    /// Images unfolded side by side per GEMM.
    fn chunk(&self) -> usize {
        MIN_COLUMNS.div_ceil(self.shape.output_positions()).clamp(1, self.batch)
    }

    /// Row stride of the side-by-side buffers for `columns` columns: whole vectors plus one,
    /// and never a multiple of 4 KiB (rows 4 KiB apart share L1 sets, and a 144-row panel
    /// of them thrashed the cache: 3x slower measured at 32x32).
    fn leading_dim(columns: usize) -> usize {
        let ld = columns.next_multiple_of(16) + 16;
        if ld.is_multiple_of(1024) { ld + 16 } else { ld }
    }

    fn buffers(&self) -> Buffers {
        let ld = Self::leading_dim(self.chunk() * self.shape.output_positions());
        Buffers {
            cols: vec![0.0; self.shape.cols() * ld],
            rows: vec![0.0; self.shape.out_channels * ld],
        }
    }

    /// `output = conv(input, weights) + bias`, overwriting `output`.
    pub fn forward(
        &self,
        input: &[f32],
        weights: &[f32],
        bias: Option<&[f32]>,
        output: &mut [f32],
        threads: usize,
    ) -> Result<()> {
        check_len("input", self.input_len(), input.len())?;
        check_len("weights", self.weight_len(), weights.len())?;
        check_len("output", self.output_len(), output.len())?;
        if let Some(b) = bias {
            check_len("bias", self.shape.out_channels, b.len())?;
        }
        let isa = Isa::detect();
        let s = &self.shape;
        let (k, p, out) = (s.cols(), s.output_positions(), s.out_channels);
        let (x_img, y_img) = (self.image_len(), out * p);
        let chunk = self.chunk();
        let taps = unfold::tap_rows(s);
        let w = Strided { data: weights, rs: k, cs: 1 };
        for_image_ranges(self.batch, threads, output, y_img, |first, ys| {
            let mut buf = self.buffers();
            for (c, y) in ys.chunks_mut(chunk * y_img).enumerate() {
                let n0 = first + c * chunk;
                let nb = y.len() / y_img;
                let (n, ld) = (nb * p, Self::leading_dim(nb * p));
                for j in 0..nb {
                    let x = &input[(n0 + j) * x_img..(n0 + j + 1) * x_img];
                    unfold::unfold(isa, s, &taps, x, &mut buf.cols, ld, j * p);
                }
                // The unfolded chunk (K x n) is what the micro-kernel re-reads per row tile.
                let packed = k * n * 4 > UNPACKED_OPERAND_BYTES;
                let (dst, ldc): (&mut [f32], usize) =
                    if nb == 1 { (&mut *y, p) } else { (&mut buf.rows, ld) };
                if packed {
                    let b = Strided { data: &buf.cols, rs: ld, cs: 1 };
                    gemm_packed(out, n, k, w, b, dst, ldc, false);
                } else {
                    gemm_nn(isa, out, n, k, w, &buf.cols, ld, dst, ldc, false);
                }
                if nb > 1 {
                    scatter(&buf.rows, ld, y, out, p);
                }
                if let Some(b) = bias {
                    for img in y.chunks_exact_mut(y_img) {
                        for (row, &bv) in img.chunks_exact_mut(p).zip(b) {
                            row.iter_mut().for_each(|v| *v += bv);
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// The gradient with respect to the input: `input_grad = conv^T(output_grad, weights)`,
    /// overwriting `input_grad`.
    pub fn backward_data(
        &self,
        weights: &[f32],
        output_grad: &[f32],
        input_grad: &mut [f32],
        threads: usize,
    ) -> Result<()> {
        check_len("weights", self.weight_len(), weights.len())?;
        check_len("output gradient", self.output_len(), output_grad.len())?;
        check_len("input gradient", self.input_len(), input_grad.len())?;
        let isa = Isa::detect();
        let s = &self.shape;
        let (k, p, out) = (s.cols(), s.output_positions(), s.out_channels);
        let (x_img, y_img) = (self.image_len(), out * p);
        let chunk = self.chunk();
        let taps = unfold::tap_rows(s);
        // A = W^T: element (row r, channel o) at W[o * K + r].
        let w_t = Strided { data: weights, rs: 1, cs: k };
        for_image_ranges(self.batch, threads, input_grad, x_img, |first, dxs| {
            let mut buf = self.buffers();
            for (c, dx) in dxs.chunks_mut(chunk * x_img).enumerate() {
                let n0 = first + c * chunk;
                let nb = dx.len() / x_img;
                let (n, ld) = (nb * p, Self::leading_dim(nb * p));
                gather(&output_grad[n0 * y_img..(n0 + nb) * y_img], out, p, &mut buf.rows, ld);
                // W^T (K x out) is what the micro-kernel re-reads per column tile.
                if k * out * 4 > UNPACKED_OPERAND_BYTES {
                    let b = Strided { data: &buf.rows, rs: ld, cs: 1 };
                    gemm_packed(k, n, out, w_t, b, &mut buf.cols, ld, false);
                } else {
                    gemm_nn(isa, k, n, out, w_t, &buf.rows, ld, &mut buf.cols, ld, false);
                }
                for j in 0..nb {
                    unfold::fold(
                        isa,
                        s,
                        &taps,
                        &buf.cols,
                        ld,
                        j * p,
                        &mut dx[j * x_img..(j + 1) * x_img],
                    );
                }
            }
        });
        Ok(())
    }

    /// The gradients with respect to the weights (and the bias, when asked), overwriting both.
    pub fn backward_weights(
        &self,
        input: &[f32],
        output_grad: &[f32],
        weight_grad: &mut [f32],
        bias_grad: Option<&mut [f32]>,
        threads: usize,
    ) -> Result<()> {
        check_len("input", self.input_len(), input.len())?;
        check_len("output gradient", self.output_len(), output_grad.len())?;
        check_len("weight gradient", self.weight_len(), weight_grad.len())?;
        let s = &self.shape;
        let (k, p, out) = (s.cols(), s.output_positions(), s.out_channels);
        if let Some(db) = &bias_grad {
            check_len("bias gradient", out, db.len())?;
        }
        let isa = Isa::detect();
        let (x_img, y_img) = (self.image_len(), out * p);
        let chunk = self.chunk();
        let taps = unfold::tap_rows(s);
        let threads = threads.clamp(1, self.batch);
        let bounds = image_bounds(self.batch, threads);
        // One private weight gradient per thread after the first, summed at the end.
        let mut partials = vec![0.0f32; (threads - 1) * weight_grad.len()];
        {
            let mut targets: Vec<&mut [f32]> = vec![&mut *weight_grad];
            targets.extend(partials.chunks_exact_mut(self.weight_len()));
            let work = |t: usize, dw: &mut [f32]| {
                let mut buf = self.buffers();
                let mut n0 = bounds[t];
                let mut first = true;
                while n0 < bounds[t + 1] {
                    let nb = chunk.min(bounds[t + 1] - n0);
                    let (n, ld) = (nb * p, Self::leading_dim(nb * p));
                    for j in 0..nb {
                        let x = &input[(n0 + j) * x_img..(n0 + j + 1) * x_img];
                        unfold::unfold(isa, s, &taps, x, &mut buf.cols, ld, j * p);
                    }
                    gather(&output_grad[n0 * y_img..(n0 + nb) * y_img], out, p, &mut buf.rows, ld);
                    // dW (out x K) [+]= dY (out x n) . col^T, col stored K x n.
                    // The unfolded chunk (K x n) is what the micro-kernel re-reads per row tile.
                    if k * n * 4 > UNPACKED_OPERAND_BYTES {
                        let a = Strided { data: &buf.rows, rs: ld, cs: 1 };
                        let b = Strided { data: &buf.cols, rs: 1, cs: ld };
                        gemm_packed(out, k, n, a, b, dw, k, !first);
                    } else {
                        gemm_nt(isa, out, k, n, &buf.rows, ld, &buf.cols, ld, dw, k, !first);
                    }
                    first = false;
                    n0 += nb;
                }
                if first {
                    dw.fill(0.0);
                }
            };
            run_pieces(targets.into_iter().enumerate().collect(), work);
        }
        for part in partials.chunks_exact(self.weight_len()) {
            weight_grad.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
        if let Some(db) = bias_grad {
            db.fill(0.0);
            for dy in output_grad.chunks_exact(y_img) {
                for (d, row) in db.iter_mut().zip(dy.chunks_exact(p)) {
                    *d += row.iter().sum::<f32>();
                }
            }
        }
        Ok(())
    }
}

/// Copies `out x p` blocks of consecutive images (`src`, one image after another) side by
/// side into `dst` (`out x ld`, image `j` at column `j * p`).
fn gather(src: &[f32], out: usize, p: usize, dst: &mut [f32], ld: usize) {
    for (j, img) in src.chunks_exact(out * p).enumerate() {
        for (o, row) in img.chunks_exact(p).enumerate() {
            dst[o * ld + j * p..o * ld + (j + 1) * p].copy_from_slice(row);
        }
    }
}

/// The inverse of [`gather`]: side-by-side `src` (`out x ld`) into consecutive images.
fn scatter(src: &[f32], ld: usize, dst: &mut [f32], out: usize, p: usize) {
    for (j, img) in dst.chunks_exact_mut(out * p).enumerate() {
        for (o, row) in img.chunks_exact_mut(p).enumerate() {
            row.copy_from_slice(&src[o * ld + j * p..o * ld + (j + 1) * p]);
        }
    }
}

/// First image of each of `threads` contiguous, near-equal ranges (and the end).
fn image_bounds(batch: usize, threads: usize) -> Vec<usize> {
    (0..=threads).map(|t| t * batch / threads).collect()
}

/// Splits `out` (one `per_image` chunk per image) into contiguous image ranges and runs
/// `f(first_image, range)` for each, in parallel when `threads > 1`.
fn for_image_ranges(
    batch: usize,
    threads: usize,
    out: &mut [f32],
    per_image: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    let threads = threads.clamp(1, batch);
    if threads == 1 {
        f(0, out);
        return;
    }
    let bounds = image_bounds(batch, threads);
    let mut rest = out;
    let mut pieces = Vec::with_capacity(threads);
    for t in 0..threads {
        let (head, tail) = rest.split_at_mut((bounds[t + 1] - bounds[t]) * per_image);
        pieces.push((bounds[t], head));
        rest = tail;
    }
    run_pieces(pieces, f);
}

/// Runs `f(key, piece)` for every piece, the first on the calling thread and the others on
/// rayon's pool, and waits for all of them.
fn run_pieces<T: Send>(pieces: Vec<(usize, T)>, f: impl Fn(usize, T) + Sync) {
    let mut it = pieces.into_iter();
    let first = it.next();
    if it.len() == 0 {
        if let Some((key, piece)) = first {
            f(key, piece);
        }
        return;
    }
    rayon::scope(|scope| {
        for (key, piece) in it {
            let f = &f;
            scope.spawn(move |_| f(key, piece));
        }
        if let Some((key, piece)) = first {
            f(key, piece);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use proptest::prelude::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn shape(
        c: usize,
        o: usize,
        hw: [usize; 2],
        k: [usize; 2],
        st: [usize; 2],
        pad: [usize; 2],
        dil: usize,
    ) -> ConvShape {
        ConvShape {
            in_channels: c,
            out_channels: o,
            groups: 1,
            input: [1, hw[0], hw[1]],
            kernel: [1, k[0], k[1]],
            stride: [1, st[0], st[1]],
            padding: [0, pad[0], pad[1]],
            dilation: [1, dil, dil],
        }
    }

    fn close(got: &[f32], want: &[f32], terms: usize) {
        assert_eq!(got.len(), want.len());
        let tol = reference::tolerance(terms, 4.0);
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= tol, "index {i}: {a} vs {b} (tolerance {tol})");
        }
    }

    /// Checks the three passes against the plain-loop references for one shape.
    fn check(batch: usize, s: ConvShape, threads: usize, seed: u64) {
        let conv = BatchConv2d::new(batch, s).unwrap();
        let x = values(conv.input_len(), seed);
        let w = values(conv.weight_len(), seed + 1);
        let b = values(s.out_channels, seed + 2);
        let dy = values(conv.output_len(), seed + 3);
        let (x_img, y_img) =
            (s.in_channels * s.input_plane(), s.out_channels * s.output_positions());

        let mut y = vec![f32::NAN; conv.output_len()];
        conv.forward(&x, &w, Some(&b), &mut y, threads).unwrap();
        let mut want = Vec::new();
        for n in 0..batch {
            let mut yn = reference::conv(&s, &w, &x[n * x_img..(n + 1) * x_img]);
            for (o, row) in yn.chunks_exact_mut(s.output_positions()).enumerate() {
                row.iter_mut().for_each(|v| *v += b[o]);
            }
            want.extend(yn);
        }
        close(&y, &want, s.cols() + 1);

        let mut dx = vec![f32::NAN; conv.input_len()];
        conv.backward_data(&w, &dy, &mut dx, threads).unwrap();
        let mut want_dx = Vec::new();
        for n in 0..batch {
            want_dx.extend(reference::conv_backward_data(&s, &w, &dy[n * y_img..(n + 1) * y_img]));
        }
        close(&dx, &want_dx, s.out_channels * s.kernel_volume());

        let mut dw = vec![f32::NAN; conv.weight_len()];
        let mut db = vec![f32::NAN; s.out_channels];
        conv.backward_weights(&x, &dy, &mut dw, Some(&mut db), threads).unwrap();
        let want_dw = reference::conv_backward_weights(&s, batch, &x, &dy);
        close(&dw, &want_dw, batch * s.output_positions());
        let want_db: Vec<f32> = (0..s.out_channels)
            .map(|o| {
                (0..batch)
                    .flat_map(|n| {
                        let at = n * y_img + o * s.output_positions();
                        dy[at..at + s.output_positions()].iter().map(|&v| f64::from(v))
                    })
                    .sum::<f64>() as f32
            })
            .collect();
        close(&db, &want_db, batch * s.output_positions());
    }

    #[test]
    fn resnet_shapes_match_the_reference_on_one_and_two_threads() {
        // 3x3 same, 3x3 stride 2 (downsampling), 1x1 stride 2 shortcut, 1x1 pointwise.
        check(3, shape(4, 6, [9, 9], [3, 3], [1, 1], [1, 1], 1), 1, 1);
        check(3, shape(4, 6, [9, 9], [3, 3], [2, 2], [1, 1], 1), 2, 2);
        check(5, shape(4, 8, [8, 8], [1, 1], [2, 2], [0, 0], 1), 2, 3);
        check(2, shape(5, 3, [6, 7], [1, 1], [1, 1], [0, 0], 1), 2, 4);
        // Maps of at least MIN_COLUMNS positions: one image per GEMM, and the direct 1x1 path.
        check(3, shape(3, 5, [17, 18], [3, 3], [1, 1], [1, 1], 1), 2, 5);
        check(3, shape(3, 5, [16, 17], [1, 1], [1, 1], [0, 0], 1), 2, 6);
        // Operands past UNPACKED_OPERAND_BYTES take the packed gemm crate: the unfolded
        // image (288 x 1024 floats) in the forward and weight passes, W^T (288 x 1024) in the
        // input-gradient pass.
        check(1, shape(32, 4, [32, 32], [3, 3], [1, 1], [1, 1], 1), 1, 7);
        check(1, shape(32, 1024, [4, 4], [3, 3], [1, 1], [1, 1], 1), 2, 8);
    }

    #[test]
    fn the_three_passes_are_adjoint() {
        // <conv(x), dy> = <x, conv^T(dy)> = <w, dW(x, dy)>: a published identity that does not
        // go through the reference loops.
        let s = shape(3, 5, [7, 6], [3, 2], [2, 1], [1, 0], 1);
        let conv = BatchConv2d::new(2, s).unwrap();
        let (x, w, dy) = (
            values(conv.input_len(), 9),
            values(conv.weight_len(), 10),
            values(conv.output_len(), 11),
        );
        let mut y = vec![0.0; conv.output_len()];
        conv.forward(&x, &w, None, &mut y, 1).unwrap();
        let mut dx = vec![0.0; conv.input_len()];
        conv.backward_data(&w, &dy, &mut dx, 2).unwrap();
        let mut dw = vec![0.0; conv.weight_len()];
        conv.backward_weights(&x, &dy, &mut dw, None, 2).unwrap();
        let dot = |a: &[f32], b: &[f32]| {
            a.iter().zip(b).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum::<f64>()
        };
        let (a, b, c) = (dot(&y, &dy), dot(&x, &dx), dot(&w, &dw));
        assert!((a - b).abs() < 1e-3 * a.abs().max(1.0), "{a} vs {b}");
        assert!((a - c).abs() < 1e-3 * a.abs().max(1.0), "{a} vs {c}");
    }

    #[test]
    fn bad_shapes_and_buffers_are_typed_errors() {
        let s = shape(4, 6, [9, 9], [3, 3], [1, 1], [1, 1], 1);
        assert!(matches!(BatchConv2d::new(0, s), Err(KernelError::InvalidShape { .. })));
        let grouped = ConvShape { groups: 2, ..s };
        assert!(matches!(BatchConv2d::new(1, grouped), Err(KernelError::InvalidShape { .. })));
        let conv = BatchConv2d::new(2, s).unwrap();
        let mut y = vec![0.0; conv.output_len()];
        let err = conv.forward(&[0.0; 3], &vec![0.0; conv.weight_len()], None, &mut y, 1);
        assert!(matches!(err, Err(KernelError::BufferLength { what: "input", .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn random_shapes_match_the_reference(
            batch in 1usize..4, c in 1usize..5, o in 1usize..6,
            h in 3usize..9, w in 3usize..9, kh in 1usize..4, kw in 1usize..4,
            sy in 1usize..3, sx in 1usize..3, py in 0usize..3, px in 0usize..3,
            dil in 1usize..3, threads in 1usize..4, seed in 0u64..1000,
        ) {
            let s = shape(c, o, [h, w], [kh, kw], [sy, sx], [py, px], dil);
            prop_assume!(s.validated().is_ok());
            check(batch, s, threads, seed);
        }
    }
}
