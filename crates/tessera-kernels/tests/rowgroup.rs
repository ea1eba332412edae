//! The row-group kernels against the dense reference, for every instruction set this CPU has:
//! random conv shapes (odd sizes, strides, padding, dilation, groups, 3-D), GEMM and GEMV,
//! sparsity from 0% to 99% with empty rows and groups.
//!
//! Tolerance: each output is a sum of at most `cols` products; the kernels accumulate in f32
//! in a different order from the f64 reference, so the error is bounded by
//! `reference::tolerance(cols, sum |w| |x|)` (a worst-case rounding bound).

use proptest::prelude::*;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tessera_kernels::{ConvScratch, ConvShape, Isa, RowGroupConv, RowGroupMatrix, reference};

fn random(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Zeroes weights with probability `sparsity`, and whole rows now and then.
fn sparsify(w: &mut [f32], rows: usize, sparsity: f64, rng: &mut ChaCha8Rng) {
    let cols = w.len() / rows;
    for r in 0..rows {
        let empty_row = rng.random_range(0.0..1.0) < 0.1;
        for v in &mut w[r * cols..(r + 1) * cols] {
            if empty_row || rng.random_range(0.0..1.0) < sparsity {
                *v = 0.0;
            }
        }
    }
}

fn assert_close(got: &[f32], want: &[f32], bound: impl Fn(usize) -> f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= bound(i), "{what}: output {i}: got {g}, want {w}");
    }
}

/// Per-output bound: cols * eps * sum|w||x| over the row is at most cols * eps * (max row L1 of
/// w) * max|x|.
fn bound_for(w: &[f32], rows: usize, x_max: f32) -> f32 {
    let cols = w.len() / rows.max(1);
    let l1 = (0..rows)
        .map(|r| w[r * cols..(r + 1) * cols].iter().map(|v| v.abs()).sum::<f32>())
        .fold(0.0, f32::max);
    reference::tolerance(cols, l1 * x_max) + 1e-6
}

fn check_conv(shape: ConvShape, sparsity: f64, group_size: usize, seed: u64, threads: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = random(shape.out_channels * shape.cols(), &mut rng);
    sparsify(&mut w, shape.out_channels, sparsity, &mut rng);
    let x = random(shape.in_channels * shape.input_plane(), &mut rng);
    let want = reference::conv(&shape, &w, &x);
    let groups =
        RowGroupMatrix::uniform_groups(shape.out_channels, shape.out_per_group(), group_size);
    let m =
        RowGroupMatrix::from_dense(shape.out_channels, shape.cols(), &w, None, &groups).unwrap();
    assert_eq!(m.decode(), w, "decode must give back the weights");
    let conv = RowGroupConv::new(m, shape).unwrap();
    let tol = bound_for(&w, shape.out_channels, 1.0);
    for isa in Isa::available() {
        let mut y = vec![f32::NAN; want.len()];
        let mut scratch = ConvScratch::for_conv(&conv);
        conv.run(isa, &x, &mut y, &mut scratch, threads).unwrap();
        assert_close(
            &y,
            &want,
            |_| tol,
            &format!("{isa} {shape:?} groups of {group_size}, {threads} threads"),
        );
        // A second run with the same scratch gives the same bits (no state leaks between calls).
        let mut y2 = vec![0.0; want.len()];
        conv.run(isa, &x, &mut y2, &mut scratch, threads).unwrap();
        assert_eq!(y, y2);
    }
    // The dense baseline (im2col + GEMM) computes the same convolution.
    let mut y = vec![f32::NAN; want.len()];
    let mut col = vec![f32::NAN; tessera_kernels::dense::im2col_len(&shape)];
    tessera_kernels::dense::conv_im2col(&shape, &w, &x, &mut y, &mut col, threads).unwrap();
    assert_close(&y, &want, |_| tol, &format!("im2col+gemm {shape:?}"));
}

fn conv_shape() -> impl Strategy<Value = ConvShape> {
    let two_d = (
        1usize..6,
        1usize..4,
        1usize..12,
        1usize..12,
        1usize..4,
        1usize..4,
        1usize..3,
        0usize..3,
        1usize..3,
        1usize..3,
    )
        .prop_filter_map(
            "valid conv",
            |(cin, cout_mul, h, w, kh, kw, stride, pad, groups, dil)| {
                let groups = if cin % groups == 0 { groups } else { 1 };
                let s = ConvShape {
                    in_channels: cin * groups,
                    out_channels: cout_mul * groups * 3,
                    groups,
                    input: [1, h, w],
                    kernel: [1, kh, kw],
                    stride: [1, stride, stride],
                    padding: [0, pad, pad],
                    dilation: [1, dil, dil],
                };
                s.validated().ok()
            },
        );
    let three_d = (1usize..4, 1usize..10, 2usize..6, 3usize..8, 3usize..8, 1usize..3, 0usize..2)
        .prop_filter_map("valid conv3d", |(cin, cout, d, h, w, stride, pad)| {
            ConvShape::conv3d(cin, cout, [d, h, w], [3, 3, 3], stride, pad).ok()
        });
    prop_oneof![3 => two_d, 1 => three_d]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 60, ..ProptestConfig::default() })]

    #[test]
    fn conv_matches_reference(
        shape in conv_shape(),
        sparsity in prop::sample::select(vec![0.0, 0.5, 0.9, 0.99]),
        group_size in prop::sample::select(vec![1usize, 2, 3, 4, 8, 16]),
        seed in any::<u64>(),
        threads in 1usize..3,
    ) {
        check_conv(shape, sparsity, group_size, seed, threads);
    }

    #[test]
    fn gemm_and_gemv_match_reference(
        (rows, cols, n) in (1usize..40, 1usize..70, 1usize..100),
        sparsity in prop::sample::select(vec![0.0, 0.75, 0.95, 1.0]),
        group_size in prop::sample::select(vec![1usize, 4, 8, 16, 32]),
        seed in any::<u64>(),
        threads in 1usize..3,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut w = random(rows * cols, &mut rng);
        sparsify(&mut w, rows, sparsity, &mut rng);
        let x = random(cols * n, &mut rng);
        let m = RowGroupMatrix::from_dense(rows, cols, &w, None, &RowGroupMatrix::uniform_groups(rows, rows, group_size)).unwrap();
        let tol = bound_for(&w, rows, 1.0);
        let want = reference::gemm(rows, cols, n, &w, &x);
        let conv = RowGroupConv::gemm(m.clone(), n).unwrap();
        for isa in Isa::available() {
            let mut y = vec![f32::NAN; rows * n];
            let mut scratch = ConvScratch::for_conv(&conv);
            conv.run(isa, &x, &mut y, &mut scratch, threads).unwrap();
            assert_close(&y, &want, |_| tol, &format!("gemm {isa}"));
            let mut yv = vec![f32::NAN; rows];
            tessera_kernels::rowgroup::gemv(isa, &m, &x[..cols], &mut yv, threads).unwrap();
            let wantv = reference::gemv(rows, cols, &w, &x[..cols]);
            assert_close(&yv, &wantv, |_| tol, &format!("gemv {isa}"));
        }
    }
}

#[test]
fn named_shapes_at_high_sparsity() {
    for (shape, g) in [
        (ConvShape::conv2d(16, 16, [56, 56], [3, 3], 1, 1).unwrap(), 8),
        (ConvShape::conv2d(32, 16, [8, 8], [3, 3], 1, 1).unwrap(), 8),
        (ConvShape::conv2d(32, 8, [14, 14], [1, 1], 1, 0).unwrap(), 4),
        (ConvShape::conv2d(8, 8, [15, 15], [3, 3], 2, 1).unwrap(), 8),
        (ConvShape::conv2d(8, 8, [10, 10], [3, 3], 1, 1).unwrap().with_groups(8).unwrap(), 1),
        (ConvShape::conv3d(4, 8, [4, 7, 7], [3, 3, 3], 1, 1).unwrap(), 4),
    ] {
        for sparsity in [0.0, 0.875, 0.99] {
            check_conv(shape, sparsity, g, 7, 2);
        }
    }
}

/// One-row groups (unstructured CSR rows) on inputs larger than L2 walk their tiles in
/// chunks, group by group within a chunk, on one thread and on two (each thread chunks its own
/// share of the tiles); a 1x1 layer read by few rows per channel walks them whole.
#[test]
fn csr_rows_on_inputs_larger_than_l2_match_the_reference() {
    let big = ConvShape::conv2d(32, 16, [64, 64], [3, 3], 1, 1).unwrap();
    let pointwise = ConvShape::conv2d(40, 12, [60, 60], [1, 1], 1, 0).unwrap();
    for (shape, sparsity) in [(big, 0.9), (big, 0.5), (pointwise, 0.9)] {
        for threads in [1, 2] {
            check_conv(shape, sparsity, 1, 11, threads);
        }
    }
}

#[test]
fn wrong_buffer_lengths_are_errors() {
    let shape = ConvShape::conv2d(2, 2, [4, 4], [3, 3], 1, 1).unwrap();
    let m = RowGroupMatrix::from_dense(2, 18, &[0.5; 36], None, &[2]).unwrap();
    let conv = RowGroupConv::new(m, shape).unwrap();
    let mut scratch = ConvScratch::for_conv(&conv);
    let mut y = vec![0.0; 32];
    assert!(conv.run(Isa::PORTABLE, &[0.0; 31], &mut y, &mut scratch, 1).is_err());
    assert!(conv.run(Isa::PORTABLE, &[0.0; 32], &mut y[..31], &mut scratch, 1).is_err());
    let mut small = ConvScratch::default();
    assert!(conv.run(Isa::PORTABLE, &[0.0; 32], &mut y, &mut small, 1).is_err());
    let bad = RowGroupMatrix::from_dense(2, 17, &[0.5; 34], None, &[2]).unwrap();
    assert!(RowGroupConv::new(bad, shape).is_err());
    assert!(RowGroupMatrix::from_dense(2, 18, &[0.5; 36], None, &[1]).is_err());
}

/// Bias, residual (optional) and activation, fused, on every output: plain stores (1x1), the
/// tile plan's masked stores (padded and strided maps, where the residual is read under the
/// same masks) and 1-2 threads.
#[test]
fn fused_epilogue_is_bias_then_activation_on_every_output() {
    use tessera_kernels::{Clamp, Epilogue};
    let shapes = [
        ConvShape::conv2d(6, 11, [7, 9], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(8, 16, [10, 10], [3, 3], 2, 1).unwrap(),
        ConvShape::conv2d(4, 8, [6, 6], [1, 1], 1, 0).unwrap(),
        // Rows of 32 and 16 outputs: 8-lane tiles within rows, stored whole at one shift.
        ConvShape::conv2d(8, 8, [4, 32], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(5, 12, [5, 16], [3, 3], 1, 1).unwrap(),
        // Output rows of exactly one 8-lane vector: stacked-row tiles.
        ConvShape::conv2d(6, 16, [7, 8], [3, 3], 1, 1).unwrap(),
    ];
    for (si, shape) in shapes.into_iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(40 + si as u64);
        let mut w = random(shape.out_channels * shape.cols(), &mut rng);
        // Empty rows too: their outputs are the clamped bias alone.
        sparsify(&mut w, shape.out_channels, 0.8, &mut rng);
        let x: Vec<f32> = random(shape.in_channels * shape.input_plane(), &mut rng)
            .iter()
            .map(|v| 4.0 * v)
            .collect();
        let bias: Vec<f32> = random(shape.out_channels, &mut rng).iter().map(|v| 3.0 * v).collect();
        let residual = random(shape.out_channels * shape.output_positions(), &mut rng);
        let groups = RowGroupMatrix::uniform_groups(shape.out_channels, shape.out_per_group(), 8);
        let m = RowGroupMatrix::from_dense(shape.out_channels, shape.cols(), &w, None, &groups)
            .unwrap();
        let conv = RowGroupConv::new(m, shape).unwrap();
        let positions = shape.output_positions();
        let n = shape.out_channels * positions;
        for isa in Isa::available() {
            let mut scratch = ConvScratch::for_conv(&conv);
            let mut plain = vec![0.0; n];
            conv.run(isa, &x, &mut plain, &mut scratch, 1).unwrap();
            for (clamp, f) in [
                (Clamp::None, (|v: f32| v) as fn(f32) -> f32),
                (Clamp::Relu, |v: f32| v.max(0.0)),
                (Clamp::Relu6, |v: f32| v.clamp(0.0, 6.0)),
            ] {
                for ((threads, res), with_bias) in
                    [(1, None), (2, None), (1, Some(&residual)), (2, Some(&residual))]
                        .into_iter()
                        .flat_map(|t| [(t, true), (t, false)])
                {
                    let mut fused = vec![f32::NAN; n];
                    let residual = res.map(Vec::as_slice);
                    let b = with_bias.then_some(bias.as_slice());
                    let ep = Epilogue { bias: b, clamp, residual };
                    conv.run_fused(isa, &x, &mut fused, &mut scratch, threads, ep).unwrap();
                    for (i, (&got, &p)) in fused.iter().zip(&plain).enumerate() {
                        let r = residual.map_or(0.0, |r| r[i]);
                        let want = f(p + b.map_or(0.0, |b| b[i / positions]) + r);
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{shape:?} {isa:?} {clamp:?} {threads} res {} bias {with_bias}: \
                             output {i}: {got} vs {want}",
                            res.is_some()
                        );
                    }
                }
            }
            // A bias of the wrong length is refused.
            let mut y = vec![0.0; n];
            let short = Epilogue { bias: Some(&bias[1..]), ..Default::default() };
            assert!(conv.run_fused(isa, &x, &mut y, &mut scratch, 1, short).is_err());
            // So is a residual of the wrong length.
            let short = Epilogue { residual: Some(&residual[1..]), ..Default::default() };
            assert!(matches!(
                conv.run_fused(isa, &x, &mut y, &mut scratch, 1, short),
                Err(tessera_kernels::KernelError::BufferLength { what: "residual", .. })
            ));
        }
    }
}

/// A convolution retargeted to write the next convolution's padded input layout, and the next
/// one run on it without packing, give the same outputs as the two run plainly; the padding
/// the producer never writes stays zero, and nothing outside its interior is touched.
#[test]
fn producer_writes_the_consumers_packed_layout() {
    use tessera_kernels::{Clamp, Epilogue};
    let cases = [
        // (producer, consumer): same extent, consumer stride 1 with padding.
        (
            ConvShape::conv2d(5, 12, [9, 7], [3, 3], 1, 1).unwrap(),
            ConvShape::conv2d(12, 8, [9, 7], [3, 3], 1, 1).unwrap(),
        ),
        (
            ConvShape::conv2d(6, 16, [12, 12], [3, 3], 2, 1).unwrap(),
            ConvShape::conv2d(16, 16, [6, 6], [5, 5], 1, 2).unwrap(),
        ),
        (
            ConvShape::conv3d(3, 8, [4, 6, 6], [3, 3, 3], 1, 1).unwrap(),
            ConvShape::conv3d(8, 4, [4, 6, 6], [3, 3, 3], 1, 1).unwrap(),
        ),
        // Output rows of two vectors and more: 8-lane tiles are cut at row ends.
        (
            ConvShape::conv2d(4, 12, [5, 20], [3, 3], 1, 1).unwrap(),
            ConvShape::conv2d(12, 8, [5, 20], [3, 3], 1, 1).unwrap(),
        ),
        (
            ConvShape::conv2d(3, 8, [8, 34], [3, 3], 2, 1).unwrap(),
            ConvShape::conv2d(8, 8, [4, 17], [3, 3], 1, 1).unwrap(),
        ),
        // Output rows of one 8-lane vector, into a padded consumer: stacked rows stored
        // at the consumer's row pitch.
        (
            ConvShape::conv2d(4, 16, [8, 8], [3, 3], 1, 1).unwrap(),
            ConvShape::conv2d(16, 8, [8, 8], [3, 3], 1, 1).unwrap(),
        ),
        (
            ConvShape::conv2d(3, 8, [15, 16], [3, 3], 2, 1).unwrap(),
            ConvShape::conv2d(8, 8, [8, 8], [5, 5], 1, 2).unwrap(),
        ),
        // A 1x1 consumer whose planes are a multiple of 1 KiB: its input is packed with a
        // gap after each channel (not read in place), and the producer writes that layout.
        (
            ConvShape::conv2d(4, 12, [16, 16], [3, 3], 1, 1).unwrap(),
            ConvShape::conv2d(12, 8, [16, 16], [1, 1], 1, 0).unwrap(),
        ),
    ];
    for (ci, (a, b)) in cases.into_iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(70 + ci as u64);
        let bind = |s: ConvShape, rng: &mut ChaCha8Rng| {
            let mut w = random(s.out_channels * s.cols(), rng);
            sparsify(&mut w, s.out_channels, 0.5, rng);
            let groups = RowGroupMatrix::uniform_groups(s.out_channels, s.out_per_group(), 8);
            let m = RowGroupMatrix::from_dense(s.out_channels, s.cols(), &w, None, &groups);
            RowGroupConv::new(m.unwrap(), s).unwrap()
        };
        let (first, second) = (bind(a, &mut rng), bind(b, &mut rng));
        let bias = random(a.out_channels, &mut rng);
        let x = random(a.in_channels * a.input_plane(), &mut rng);
        let ep = Epilogue { bias: Some(&bias), clamp: Clamp::Relu, residual: None };
        for isa in Isa::available() {
            // Plain: NCHW in between, the consumer packs.
            let mut mid = vec![0.0; a.out_channels * a.output_positions()];
            let mut sa = ConvScratch::for_conv(&first);
            first.run_fused(isa, &x, &mut mid, &mut sa, 1, ep).unwrap();
            let mut want = vec![0.0; b.out_channels * b.output_positions()];
            let mut sb = ConvScratch::for_conv(&second);
            second.run(isa, &mid, &mut want, &mut sb, 1).unwrap();
            // Fused edge: the producer stores into the consumer's packed layout.
            let target = second.layout().as_target().unwrap();
            let mut producer = first.clone();
            producer.set_output_target(target).unwrap();
            let mut packed = vec![0.0; second.layout().packed_len()];
            let used = target.len(a.out_channels);
            for threads in [1, 2] {
                let ep = Epilogue { bias: Some(&bias), clamp: Clamp::Relu, residual: None };
                producer.run_fused(isa, &x, &mut packed[..used], &mut sa, threads, ep).unwrap();
                // The producer's writes are exactly what packing its output would give.
                let mut repacked = vec![0.0; second.layout().packed_len()];
                second.layout().pack(&mid, &mut repacked);
                assert_eq!(packed, repacked, "case {ci} {isa} {threads} threads: packed layout");
                let mut got = vec![f32::NAN; want.len()];
                let none = Epilogue::default();
                second.run_prepacked(isa, &packed, &mut got, &mut sb, threads, none).unwrap();
                assert_eq!(got, want, "case {ci} {isa} {threads} threads");
            }
        }
        // A target of another extent is refused.
        let mut wrong = first.clone();
        let other = bind(ConvShape::conv2d(12, 8, [5, 5], [3, 3], 1, 1).unwrap(), &mut rng);
        if let Some(t) = other.layout().as_target()
            && t.dims != a.output()
        {
            assert!(wrong.set_output_target(t).is_err());
        }
    }
}

/// Tiles that hold only discarded positions (the gap between output rows of a strongly
/// dilated, padded convolution spans whole tiles) store nothing: outputs match the reference
/// on every instruction set, including the narrow-tile ones.
#[test]
fn tiles_of_discarded_positions_store_nothing() {
    let shape =
        ConvShape::conv2d(2, 8, [33, 33], [3, 3], 1, 24).unwrap().with_dilation(24).unwrap();
    for (sparsity, seed) in [(0.0, 1), (0.5, 2)] {
        check_conv(shape, sparsity, 8, seed, 1);
        check_conv(shape, sparsity, 8, seed, 2);
    }
}

/// An output target whose rows or channels would overlap (or overrun its channel stride) is
/// refused.
#[test]
fn overlapping_output_targets_are_refused() {
    use tessera_kernels::OutputTarget;
    let shape = ConvShape::conv2d(4, 8, [6, 6], [3, 3], 1, 1).unwrap();
    let w = vec![0.5f32; 8 * shape.cols()];
    let groups = RowGroupMatrix::uniform_groups(8, 8, 8);
    let m = RowGroupMatrix::from_dense(8, shape.cols(), &w, None, &groups).unwrap();
    let mut conv = RowGroupConv::new(m, shape).unwrap();
    let dims = shape.output();
    let ok =
        OutputTarget { dims, channel_stride: 64, base: 9, rows: 7, row_pitch: 7, phases: None };
    assert!(conv.set_output_target(ok).is_ok());
    for bad in [
        OutputTarget { channel_stride: 1, base: 0, rows: 0, ..ok },
        OutputTarget { rows: 5, ..ok },
        OutputTarget { row_pitch: 5, ..ok },
        OutputTarget { channel_stride: 40, ..ok },
        OutputTarget { dims: [1, 5, 6], ..ok },
    ] {
        assert!(conv.set_output_target(bad).is_err(), "{bad:?}");
    }
}

/// Maps whose output rows hold two 8-lane vectors or more: on 8 lanes the tiles are cut at
/// output row ends (no vector straddles two rows) and the padding columns are skipped.
/// Widths 16, 17, 18, 20, 28, 32 and 40, with padding, stride 2, dilation, 1x1 and 3-D, row
/// groups of 1 and 8, on 1 and 2 threads (on AVX-512 too: rows of 16 and 32 take the
/// two-vector plans of `tile_vectors`).
#[test]
fn row_aligned_tiles_on_wide_maps_match_the_reference() {
    let shapes = [
        ConvShape::conv2d(3, 9, [4, 16], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(2, 8, [3, 17], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(4, 16, [6, 28], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(3, 8, [7, 36], [3, 3], 2, 1).unwrap(),
        ConvShape::conv2d(2, 8, [6, 20], [3, 3], 1, 2).unwrap().with_dilation(2).unwrap(),
        ConvShape::conv2d(5, 8, [3, 40], [1, 1], 1, 0).unwrap(),
        // Planes of 512 bytes, 1 KiB and 4 KiB: packed with a gap after each channel.
        ConvShape::conv2d(10, 8, [8, 16], [1, 1], 1, 0).unwrap(),
        ConvShape::conv2d(12, 8, [16, 16], [1, 1], 1, 0).unwrap(),
        ConvShape::conv2d(9, 16, [32, 32], [1, 1], 1, 0).unwrap(),
        ConvShape::conv3d(2, 5, [3, 4, 18], [3, 3, 3], 1, 1).unwrap(),
        // AVX-512's stacked rows of 16 and row tiles of 32, 8 rows per register tile.
        ConvShape::conv2d(4, 16, [5, 16], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(4, 16, [5, 32], [3, 3], 1, 1).unwrap(),
    ];
    for (i, shape) in shapes.into_iter().enumerate() {
        for group_size in [1, 8] {
            for threads in [1, 2] {
                check_conv(shape, 0.5, group_size, 90 + i as u64, threads);
            }
        }
    }
}

/// Output rows of exactly one 8-lane vector between padding columns (8x8 maps; strided from
/// 16 wide; 5x5 kernels; an odd number of rows, so the last stacked tile has one row) with one
/// and 8 filters per group, on 1 and 2 threads.
#[test]
fn stacked_rows_on_eight_wide_maps_match_the_reference() {
    let shapes = [
        ConvShape::conv2d(16, 16, [8, 8], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(8, 24, [16, 16], [3, 3], 2, 1).unwrap(),
        ConvShape::conv2d(4, 8, [8, 8], [5, 5], 1, 2).unwrap(),
        ConvShape::conv2d(5, 9, [7, 8], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(3, 8, [9, 10], [3, 3], 1, 0).unwrap(),
        ConvShape::conv3d(2, 8, [3, 5, 8], [3, 3, 3], 1, 1).unwrap(),
    ];
    for (i, shape) in shapes.into_iter().enumerate() {
        for group_size in [1, 8] {
            for threads in [1, 2] {
                check_conv(shape, 0.6, group_size, 120 + i as u64, threads);
            }
        }
    }
}
