//! One suite for every format x kernel x instruction set: masks come from tessera-sparsity's
//! projections (so the formats see the structures the pruners produce), weights are random,
//! shapes include odd sizes, empty rows and blocks, and sparsity from 0% to 99%. Every format
//! must round-trip (decode(encode(W, mask)) == W restricted to the mask), and every kernel must
//! match the f64 dense reference within the rounding bound explained in `tests/rowgroup.rs`.

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tessera_kernels::formats::bcr::{BcrCompact, BcrConv, BcrInput};
use tessera_kernels::formats::block_punched::{BlockPunched, Kgs};
use tessera_kernels::formats::bsr::Bsr;
use tessera_kernels::formats::csr::Csr;
use tessera_kernels::formats::fkw::{Fkw, FkwConv, FkwOrder};
use tessera_kernels::{ConvScratch, ConvShape, Isa, RowGroupConv, RowGroupMatrix, reference};
use tessera_sparsity::{Layer, Mask, Projection, Scheme, Target, Tiling};

fn weights(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn project(scheme: &str, layer: &Layer, w: &[f32], sparsity: f64) -> Projection {
    scheme
        .parse::<Scheme>()
        .unwrap()
        .project_with(layer, w, Target::Sparsity(sparsity), Tiling::Pad)
        .unwrap()
}

fn bound(w: &[f32], rows: usize) -> f32 {
    let cols = w.len() / rows;
    let l1 = (0..rows)
        .map(|r| w[r * cols..(r + 1) * cols].iter().map(|v| v.abs()).sum::<f32>())
        .fold(0.0, f32::max);
    reference::tolerance(cols, l1) + 1e-6
}

/// What a format produces from (layer, weights, mask).
enum Encoded {
    Groups(RowGroupMatrix),
    Bcr(BcrCompact),
    Fkw(Fkw),
}

fn check_conv(shape: ConvShape, values: &[f32], encoded: Encoded, what: &str) {
    let x = weights(shape.in_channels * shape.input_plane(), 99);
    let want = reference::conv(&shape, values, &x);
    let tol = bound(values, shape.out_channels);
    for isa in Isa::available() {
        for threads in [1, 2] {
            let mut y = vec![f32::NAN; want.len()];
            match &encoded {
                Encoded::Groups(m) => {
                    let conv = RowGroupConv::new(m.clone(), shape).unwrap();
                    let mut s = ConvScratch::for_conv(&conv);
                    conv.run(isa, &x, &mut y, &mut s, threads).unwrap();
                }
                Encoded::Bcr(m) => {
                    let conv = BcrConv::new(m.clone(), shape).unwrap();
                    let mut s = conv.scratch();
                    conv.run(isa, &x, &mut y, &mut s, threads).unwrap();
                }
                Encoded::Fkw(f) => {
                    // Every order that takes the shape, each checked (the channel-major one
                    // below, the others here).
                    for order in [FkwOrder::FilterMajor, FkwOrder::SmallMap, FkwOrder::ChannelMajor]
                    {
                        let Ok(conv) = FkwConv::with_order(f.clone(), shape, Some(order)) else {
                            assert_eq!(order, FkwOrder::SmallMap, "{what}: {order:?} refused");
                            continue;
                        };
                        assert_eq!(conv.order(), order);
                        let mut s = conv.scratch();
                        y.fill(f32::NAN);
                        conv.run(isa, &x, &mut y, &mut s, threads).unwrap();
                        if order != FkwOrder::ChannelMajor {
                            for (i, (g, w)) in y.iter().zip(&want).enumerate() {
                                assert!(
                                    (g - w).abs() <= tol,
                                    "{what} {order:?} {isa} {threads}t {shape:?}: output {i}: {g} vs {w}"
                                );
                            }
                        }
                    }
                }
            }
            for (i, (g, w)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= tol,
                    "{what} {isa} {threads}t {shape:?}: output {i}: {g} vs {w}"
                );
            }
        }
    }
}

fn check_gemv(rows: usize, cols: usize, values: &[f32], encoded: &Encoded, what: &str) {
    let x = weights(cols, 5);
    let want = reference::gemv(rows, cols, values, &x);
    let tol = bound(values, rows);
    for isa in Isa::available() {
        for threads in [1, 2] {
            let mut y = vec![f32::NAN; rows];
            match encoded {
                Encoded::Groups(m) => {
                    tessera_kernels::rowgroup::gemv(isa, m, &x, &mut y, threads).unwrap()
                }
                Encoded::Bcr(m) => {
                    BcrConv::gemm(m.clone(), 1).unwrap().gemv(isa, &x, &mut y, threads).unwrap()
                }
                Encoded::Fkw(_) => unreachable!("FKW is for 3x3 convolutions"),
            }
            for (i, (g, w)) in y.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= tol, "{what} gemv {isa} {threads}t: row {i}: {g} vs {w}");
            }
        }
    }
}

/// Encodes (layer, weights, mask) into a format's execution form, its decoded weights and
/// its index bytes.
type Encoder = fn(&Layer, &[f32], &Mask) -> (Encoded, Vec<f32>, usize);

/// A format under test: the scheme that produces its masks and how to encode and decode.
struct Format {
    name: &'static str,
    scheme: &'static str,
    encode: Encoder,
}

fn formats() -> Vec<Format> {
    vec![
        Format {
            name: "CSR",
            scheme: "unstructured",
            encode: |l, w, m| {
                let f = Csr::encode(l.geometry.rows(), l.geometry.cols(), w, m).unwrap();
                (Encoded::Groups(f.to_row_groups()), f.decode(), f.bytes().index)
            },
        },
        Format {
            name: "BSR",
            scheme: "block:4x4",
            encode: |l, w, m| {
                let f = Bsr::encode(l, w, m, 4, 4).unwrap();
                (Encoded::Groups(f.to_row_groups()), f.decode(), f.bytes().index)
            },
        },
        Format {
            name: "block-punched",
            scheme: "block-punched:4x2",
            encode: |l, w, m| {
                let f = BlockPunched::encode(l, w, m, 4, 2).unwrap();
                (Encoded::Groups(f.to_row_groups()), f.decode(), f.bytes().index)
            },
        },
        Format {
            name: "BCR",
            scheme: "bcr:4x8",
            encode: |l, w, m| {
                let f = BcrCompact::encode(l, w, m, 4, 8).unwrap();
                let d = f.decode();
                let i = f.bytes().index;
                (Encoded::Bcr(f), d, i)
            },
        },
    ]
}

#[test]
fn every_format_round_trips_and_runs_convs() {
    let shapes = [
        ConvShape::conv2d(8, 8, [9, 9], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(6, 12, [7, 10], [3, 3], 2, 1).unwrap(),
        ConvShape::conv2d(16, 8, [6, 6], [1, 1], 1, 0).unwrap(),
        ConvShape::conv2d(5, 7, [8, 8], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(8, 8, [8, 8], [3, 3], 1, 1).unwrap().with_groups(2).unwrap(),
        // A packed input of over 4096 floats, which 2 threads pack as two channel ranges
        // (19 and 18 channels of 15 x 17).
        ConvShape::conv2d(37, 8, [13, 15], [3, 3], 1, 1).unwrap(),
    ];
    for (si, shape) in shapes.into_iter().enumerate() {
        let layer = shape.layer("conv").unwrap();
        let w = weights(layer.geometry.len(), si as u64);
        for f in formats() {
            for sparsity in [0.0, 0.5, 0.875, 0.99] {
                let p = project(f.scheme, &layer, &w, sparsity);
                let (enc, decoded, _) = (f.encode)(&layer, &p.values, &p.mask);
                assert_eq!(decoded, p.values, "{} decode at {sparsity}", f.name);
                if let Encoded::Bcr(m) = &enc {
                    // BCR's second execution form must compute the same.
                    assert_eq!(m.to_row_groups().decode(), p.values);
                    check_conv(
                        shape,
                        &p.values,
                        Encoded::Groups(m.to_row_groups()),
                        &format!("BCR as row groups at {sparsity}"),
                    );
                }
                check_conv(shape, &p.values, enc, &format!("{} at {sparsity}", f.name));
            }
        }
    }
}

#[test]
fn every_format_runs_gemv_and_gemm() {
    for (rows, cols) in [(16, 24), (13, 37), (32, 64)] {
        let layer = Layer::linear("fc", rows, cols).unwrap();
        let w = weights(rows * cols, rows as u64);
        for f in formats() {
            for sparsity in [0.0, 0.75, 0.95] {
                let p = project(f.scheme, &layer, &w, sparsity);
                let (enc, decoded, _) = (f.encode)(&layer, &p.values, &p.mask);
                assert_eq!(decoded, p.values, "{} decode", f.name);
                check_gemv(rows, cols, &p.values, &enc, f.name);
                let n = 40;
                let shape = ConvShape::conv2d(cols, rows, [1, n], [1, 1], 1, 0).unwrap();
                check_conv(shape, &p.values, enc, &format!("{} gemm", f.name));
            }
        }
    }
}

/// Balanced BCR (every block keeps the same rows and columns, as the projection makes them)
/// takes the GEMV's running-pointer form when the column count is even: it must match the
/// reference like the general form, on whole blocks and with a short last block row.
#[test]
fn balanced_bcr_gemv_matches_the_reference() {
    let mut even = 0;
    for (rows, cols, sparsity) in
        [(24, 64, 0.875), (24, 64, 0.9), (40, 96, 0.8), (20, 64, 0.9), (16, 128, 0.95)]
    {
        let layer = Layer::linear("fc", rows, cols).unwrap();
        let w = weights(rows * cols, 7 + rows as u64);
        let p = project("bcr:8x32", &layer, &w, sparsity);
        let m = BcrCompact::encode(&layer, &p.values, &p.mask, 8, 32).unwrap();
        if let Some((kr, kc)) = m.balanced() {
            assert_eq!(m.nnz(), m.blocks() * kr * kc, "{rows}x{cols} at {sparsity}");
            even += usize::from(kc % 2 == 0);
        }
        check_gemv(rows, cols, &p.values, &Encoded::Bcr(m), &format!("bcr:8x32 {rows}x{cols}"));
    }
    assert!(even >= 3, "only {even} shapes ran the balanced form");

    // Vectors of the wrong length are refused, naming which.
    let layer = Layer::linear("fc", 24, 64).unwrap();
    let p = project("bcr:8x32", &layer, &weights(24 * 64, 3), 0.875);
    let m = BcrCompact::encode(&layer, &p.values, &p.mask, 8, 32).unwrap();
    let conv = BcrConv::gemm(m, 1).unwrap();
    let isa = Isa::detect();
    let (mut y, x) = (vec![0.0f32; 24], vec![0.0f32; 64]);
    for (xl, yl, what) in [(63, 24, "x"), (64, 23, "y")] {
        let got = conv.gemv(isa, &x[..xl], &mut y[..yl], 1);
        assert!(
            matches!(got, Err(tessera_kernels::KernelError::BufferLength { what: w, .. }) if w == what),
            "{what}: {got:?}"
        );
    }
}

fn scheme_projection(
    layer: &Layer,
    w: &[f32],
    library: &tessera_sparsity::PatternLibrary,
) -> Projection {
    let scheme: Scheme = format!("pattern:8+connectivity@{library}").parse().unwrap();
    scheme.project(layer, w, Target::Sparsity(0.875)).unwrap()
}

/// The automatic order: on 16-lane machines the small-map order for maps of at most 4
/// positions; otherwise channel-major for long runs of same-pattern kernels per channel (many
/// filters) or when the filter-major order would need several channel blocks; filter-major
/// for few filters on a map whose channels fit one block.
#[test]
fn fkw_order_follows_run_length_and_blocks() {
    let small_map =
        if Isa::detect().lanes() == 16 { FkwOrder::SmallMap } else { FkwOrder::ChannelMajor };
    for (filters, channels, hw, want) in [
        (256, 256, 8, FkwOrder::ChannelMajor),
        (16, 16, 32, FkwOrder::FilterMajor),
        (32, 32, 16, FkwOrder::FilterMajor),
        (64, 64, 56, FkwOrder::ChannelMajor),
        (512, 512, 2, small_map),
    ] {
        let shape = ConvShape::conv2d(channels, filters, [hw, hw], [3, 3], 1, 1).unwrap();
        let layer = shape.layer("conv").unwrap();
        let w = weights(layer.geometry.len(), 3);
        let library = tessera_sparsity::PatternLibrary::extract(8, [(&layer, &w[..])]).unwrap();
        let p = scheme_projection(&layer, &w, &library);
        let conv = FkwConv::new(Fkw::encode(&layer, &p.values, &p.mask, &library).unwrap(), shape)
            .unwrap();
        assert_eq!(conv.order(), want, "{filters} filters, {channels} channels on {hw}x{hw}");
    }
}

/// Every one of the 56 candidate patterns through both orders on every instruction set: the
/// AVX-512 register form has a code path per candidate (its taps fixed at compile time), so
/// a library of all 56, each pattern kept by some kernel, checks every path against the
/// dense reference, at 3-vector tiles (48 filters) and at 2 (352 filters: more partial sums
/// than 3-vector tiles keep); on a 2x2 map every order, the small-map one included, runs
/// every pattern's lane table.
/// More filters than the kernels' `u16` row indices hold is a typed error at bind, naming
/// the filter count.
#[test]
fn fkw_rejects_more_filters_than_u16_rows() {
    let filters = u16::MAX as usize + 2;
    let shape = ConvShape::conv2d(1, filters, [2, 2], [3, 3], 1, 1).unwrap();
    let layer = shape.layer("conv").unwrap();
    let w = weights(layer.geometry.len(), 17);
    let library = tessera_sparsity::PatternLibrary::extract(8, [(&layer, &w[..])]).unwrap();
    let scheme: Scheme = format!("pattern:8@{library}").parse().unwrap();
    let p = scheme.project(&layer, &w, Target::Sparsity(5.0 / 9.0)).unwrap();
    let f = Fkw::encode(&layer, &p.values, &p.mask, &library).unwrap();
    let err = FkwConv::new(f, shape).unwrap_err();
    assert!(
        matches!(&err, tessera_kernels::KernelError::InvalidShape { reason } if reason.contains(&filters.to_string()) && reason.contains("u16")),
        "{err}"
    );
}

#[test]
fn fkw_runs_every_candidate_pattern() {
    let library =
        tessera_sparsity::PatternLibrary::new(tessera_sparsity::all_pattern_candidates()).unwrap();
    assert_eq!(library.patterns().len(), 56);
    for (filters, channels, hw) in [(48, 24, 11), (352, 4, 5), (40, 20, 2)] {
        let shape = ConvShape::conv2d(channels, filters, [hw, hw], [3, 3], 1, 1).unwrap();
        let layer = shape.layer("conv").unwrap();
        let w = weights(layer.geometry.len(), 56 + filters as u64);
        let scheme: Scheme = format!("pattern:56@{library}").parse().unwrap();
        let p = scheme.project(&layer, &w, Target::Sparsity(5.0 / 9.0)).unwrap();
        let f = Fkw::encode(&layer, &p.values, &p.mask, &library).unwrap();
        let kept: std::collections::BTreeSet<u16> = (0..filters * channels)
            .map(|k| (0..9).fold(0u16, |b, t| b | u16::from(p.mask.get(k * 9 + t)) << t))
            .collect();
        assert_eq!(kept.len(), 56, "{filters}x{channels}: every candidate kept by some kernel");
        check_conv(shape, &p.values, Encoded::Fkw(f), &format!("FKW all candidates {filters}"));
    }
}

#[test]
fn fkw_round_trips_and_runs_pattern_convs() {
    let shapes = [
        ConvShape::conv2d(8, 8, [9, 9], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(6, 12, [7, 10], [3, 3], 2, 1).unwrap(),
        ConvShape::conv2d(16, 16, [8, 8], [3, 3], 1, 1).unwrap().with_groups(4).unwrap(),
        ConvShape::conv2d(4, 4, [12, 12], [3, 3], 1, 2).unwrap().with_dilation(2).unwrap(),
        ConvShape::conv2d(4, 5, [6, 7], [3, 3], 1, 0).unwrap(),
        // Long rows: the filter-major order splits the 20 channels into 3 blocks.
        ConvShape::conv2d(20, 8, [3, 200], [3, 3], 1, 1).unwrap(),
        // Small maps (the small-map order): a 2x2 map (a 16-float patch per channel), a 1x4
        // map (an 18-float patch: two vectors), a 1x1 map, a strided 2x2 output (its taps in
        // 4 phase planes: two vectors).
        ConvShape::conv2d(12, 20, [2, 2], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(8, 12, [1, 4], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(8, 8, [1, 1], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(6, 10, [4, 4], [3, 3], 2, 1).unwrap(),
    ];
    for (si, shape) in shapes.into_iter().enumerate() {
        let layer = shape.layer("conv").unwrap();
        let w = weights(layer.geometry.len(), 10 + si as u64);
        let library = tessera_sparsity::PatternLibrary::extract(8, [(&layer, &w[..])]).unwrap();
        for (text, sparsity) in [
            ("pattern:8", 0.5),
            ("pattern:8+connectivity", 0.875),
            ("pattern:8+connectivity", 0.97),
        ] {
            let scheme: Scheme = format!("{text}@{library}").parse().unwrap();
            let p = scheme.project(&layer, &w, Target::Sparsity(sparsity)).unwrap();
            let f = Fkw::encode(&layer, &p.values, &p.mask, &library).unwrap();
            assert_eq!(f.decode(), p.values, "FKW decode {text} at {sparsity}");
            let small = FkwConv::with_order(f.clone(), shape, Some(FkwOrder::SmallMap));
            assert_eq!(small.is_ok(), (6..10).contains(&si), "{shape:?}: small-map order");
            check_conv(shape, &p.values, Encoded::Fkw(f), &format!("FKW {text} at {sparsity}"));
        }
        if si == 5 {
            let p = scheme_projection(&layer, &w, &library);
            let f = Fkw::encode(&layer, &p.values, &p.mask, &library).unwrap();
            let conv = FkwConv::with_order(f, shape, Some(FkwOrder::FilterMajor)).unwrap();
            assert_eq!(conv.channel_blocks(), Some(3));
        }
        // A mask that is not a library pattern is rejected.
        let bad = project("unstructured", &layer, &w, 0.5);
        assert!(Fkw::encode(&layer, &bad.values, &bad.mask, &library).is_err());
    }
}

#[test]
fn kgs_round_trips_and_runs_conv3d() {
    for (shape, sparsity) in [
        (ConvShape::conv3d(8, 8, [4, 6, 6], [3, 3, 3], 1, 1).unwrap(), 0.5),
        (ConvShape::conv3d(4, 8, [5, 7, 6], [3, 3, 3], 1, 1).unwrap(), 0.9),
        (ConvShape::conv3d(4, 4, [4, 6, 6], [3, 3, 3], 2, 1).unwrap(), 0.0),
    ] {
        let layer = shape.layer("c3d").unwrap();
        let w = weights(layer.geometry.len(), 3);
        let p = project("kgs:4x2", &layer, &w, sparsity);
        let f = Kgs::encode(&layer, &p.values, &p.mask, 4, 2).unwrap();
        assert_eq!(f.decode(), p.values);
        check_conv(
            shape,
            &p.values,
            Encoded::Groups(f.to_row_groups()),
            &format!("KGS at {sparsity}"),
        );
        // Block-punched on a 3-D conv shares full 3-D positions instead.
        let p = project("block-punched:4x2", &layer, &w, sparsity);
        let f = BlockPunched::encode(&layer, &p.values, &p.mask, 4, 2).unwrap();
        assert_eq!(f.decode(), p.values);
        check_conv(shape, &p.values, Encoded::Groups(f.to_row_groups()), "block-punched 3-D");
    }
}

#[test]
fn wrong_structures_are_rejected_with_the_layer_name() {
    let layer = Layer::conv2d("features.2", 8, 4, 3, 3).unwrap();
    let w = weights(layer.geometry.len(), 1);
    let p = project("unstructured", &layer, &w, 0.7);
    for err in [
        Bsr::encode(&layer, &p.values, &p.mask, 4, 4).unwrap_err(),
        BlockPunched::encode(&layer, &p.values, &p.mask, 4, 2).unwrap_err(),
        BcrCompact::encode(&layer, &p.values, &p.mask, 4, 8).unwrap_err(),
        Kgs::encode(&layer, &p.values, &p.mask, 4, 2).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(msg.contains("features.2") && msg.contains("not"), "{msg}");
    }
    // A block-punched mask is not BSR-structured unless positions fill the blocks.
    let bp = project("block-punched:4x2", &layer, &w, 0.7);
    assert!(BlockPunched::encode(&layer, &bp.values, &bp.mask, 4, 2).is_ok());
    assert!(Bsr::encode(&layer, &bp.values, &bp.mask, 4, 18).is_err());
    assert!(Csr::encode(8, 36, &bp.values, &bp.mask).is_ok());
    assert!(Csr::encode(8, 35, &bp.values, &bp.mask).is_err());
}

#[test]
fn structured_formats_need_less_index_than_csr() {
    let layer = Layer::conv2d("c", 64, 64, 3, 3).unwrap();
    let w = weights(layer.geometry.len(), 4);
    let p = project("block-punched:8x4", &layer, &w, 0.875);
    let csr = Csr::encode(64, 576, &p.values, &p.mask).unwrap().bytes();
    let bp = BlockPunched::encode(&layer, &p.values, &p.mask, 8, 4).unwrap().bytes();
    assert_eq!(csr.values, bp.values);
    // CSR spends a 4-byte column per weight; block-punched a 2-byte position per 32 weights.
    assert!(bp.index * 10 < csr.index, "block-punched index {} vs CSR {}", bp.index, csr.index);
    assert!(csr.index_overhead() > 0.9);
    // FKW: a 2-byte channel per 4 weights plus per-filter pattern strides.
    let lib = tessera_sparsity::PatternLibrary::extract(8, [(&layer, &w[..])]).unwrap();
    let scheme: Scheme = format!("pattern:8+connectivity@{lib}").parse().unwrap();
    let p = scheme.project(&layer, &w, Target::Compression(8.0)).unwrap();
    let fkw = Fkw::encode(&layer, &p.values, &p.mask, &lib).unwrap().bytes();
    let csr = Csr::encode(64, 576, &p.values, &p.mask).unwrap().bytes();
    assert!(fkw.index * 3 < csr.index, "FKW index {} vs CSR {}", fkw.index, csr.index);
}

/// BCR's block kernel instantiates its micro-kernel per kept-row count (1..=4 per chunk) and
/// per tile width (1..=2 vectors on AVX2, 1..=5 on AVX-512, the last one partial or not): 8x16 blocks at low sparsity
/// keep up to 8 rows, and GEMMs of n positions from 5 to 150 give every width and tail.
#[test]
fn bcr_kernel_covers_every_row_count_and_tile_width() {
    let (rows, cols) = (24, 48);
    let layer = Layer::linear("fc", rows, cols).unwrap();
    let w = weights(rows * cols, 77);
    for sparsity in [0.1, 0.4, 0.7, 0.9] {
        let p = project("bcr:8x16", &layer, &w, sparsity);
        let m = BcrCompact::encode(&layer, &p.values, &p.mask, 8, 16).unwrap();
        assert_eq!(m.decode(), p.values);
        for n in [5, 16, 17, 40, 64, 71, 80, 81, 150] {
            let shape = ConvShape::conv2d(cols, rows, [1, n], [1, 1], 1, 0).unwrap();
            check_conv(
                shape,
                &p.values,
                Encoded::Bcr(m.clone()),
                &format!("BCR 8x16 at {sparsity}, n {n}"),
            );
        }
    }
    // GEMV: blocks of at most half a vector of rows take the two-columns-per-vector
    // expand-load kernel, of at most a vector the one-column one, taller blocks the general
    // one (which of 8x16 and 16x8 takes which depends on the instruction set's lanes).
    for (scheme, br, bc) in
        [("bcr:4x8", 4, 8), ("bcr:8x16", 8, 16), ("bcr:16x8", 16, 8), ("bcr:24x8", 24, 8)]
    {
        for sparsity in [0.3, 0.9] {
            let p = project(scheme, &layer, &w, sparsity);
            let m = BcrCompact::encode(&layer, &p.values, &p.mask, br, bc).unwrap();
            check_gemv(rows, cols, &p.values, &Encoded::Bcr(m), &format!("{scheme} at {sparsity}"));
        }
    }
    // Kept-row counts seen (a test of the test: the sweep must reach 5..=8).
    let p = project("bcr:8x16", &layer, &w, 0.1);
    let most = (0..rows / 8)
        .flat_map(|br| (0..cols / 16).map(move |bc| (br, bc)))
        .map(|(br, bc)| {
            (0..8)
                .filter(|r| (0..16).any(|c| p.mask.get((br * 8 + r) * cols + bc * 16 + c)))
                .count()
        })
        .max()
        .unwrap();
    assert!(most >= 7, "most kept rows {most}");
    // Rows no block keeps are zeroed in the band's tile rather than written by a first chunk
    // (the tile is reused uninitialized across tiles): the sweep must have such rows.
    let p = project("bcr:8x16", &layer, &w, 0.9);
    let empty = (0..rows).filter(|&r| (0..cols).all(|c| !p.mask.get(r * cols + c))).count();
    assert!(empty > 0, "no row pruned whole at 0.9");
}

/// Runs of at least 512 flat positions take 3-vector tiles on AVX-512 (`WIDE_TILE_V`): 15
/// filters give row chunks of 8, 4, 2 and 1, a 24x24 map with padding 599-position runs (last
/// tile partial), a 1x1 convolution on 32x32 a 1024-position run read in place.
#[test]
fn wide_tiles_on_long_runs_match_the_reference() {
    for (shape, scheme, br, bc) in [
        (ConvShape::conv2d(6, 15, [24, 24], [3, 3], 1, 1).unwrap(), "block-punched:8x2", 8, 2),
        (ConvShape::conv2d(16, 15, [32, 32], [1, 1], 1, 0).unwrap(), "block-punched:8x4", 8, 4),
        (ConvShape::conv2d(6, 15, [24, 24], [3, 3], 1, 1).unwrap(), "unstructured", 1, 1),
    ] {
        let layer = shape.layer("conv").unwrap();
        let w = weights(layer.geometry.len(), 21);
        for sparsity in [0.0, 0.75] {
            let p = project(scheme, &layer, &w, sparsity);
            let m = if scheme == "unstructured" {
                Csr::encode(layer.geometry.rows(), layer.geometry.cols(), &p.values, &p.mask)
                    .unwrap()
                    .to_row_groups()
            } else {
                BlockPunched::encode(&layer, &p.values, &p.mask, br, bc).unwrap().to_row_groups()
            };
            check_conv(shape, &p.values, Encoded::Groups(m), &format!("{scheme} at {sparsity}"));
        }
    }
}

/// The kernels with their own tile loops that fuse the epilogue and store to output targets.
trait FusedConv: Clone {
    fn scratch(&self) -> ConvScratch;
    fn layout(&self) -> &tessera_kernels::InputLayout;
    fn set_output_target(
        &mut self,
        target: tessera_kernels::OutputTarget,
    ) -> tessera_kernels::Result<()>;
    fn run_fused(
        &self,
        isa: Isa,
        x: &[f32],
        y: &mut [f32],
        s: &mut ConvScratch,
        threads: usize,
        ep: tessera_kernels::Epilogue<'_>,
    ) -> tessera_kernels::Result<()>;
    fn run_prepacked(
        &self,
        isa: Isa,
        packed: &[f32],
        y: &mut [f32],
        s: &mut ConvScratch,
        threads: usize,
        ep: tessera_kernels::Epilogue<'_>,
    ) -> tessera_kernels::Result<()>;
}

/// `FusedConv` for a kernel type whose inherent methods have the trait's signatures;
/// `$scratch` makes its scratch.
macro_rules! fused_conv {
    ($kernel:ty, $scratch:expr) => {
        impl FusedConv for $kernel {
            fn scratch(&self) -> ConvScratch {
                let make: fn(&$kernel) -> ConvScratch = $scratch;
                make(self)
            }
            fn layout(&self) -> &tessera_kernels::InputLayout {
                <$kernel>::layout(self)
            }
            fn set_output_target(
                &mut self,
                target: tessera_kernels::OutputTarget,
            ) -> tessera_kernels::Result<()> {
                <$kernel>::set_output_target(self, target)
            }
            fn run_fused(
                &self,
                isa: Isa,
                x: &[f32],
                y: &mut [f32],
                s: &mut ConvScratch,
                threads: usize,
                ep: tessera_kernels::Epilogue<'_>,
            ) -> tessera_kernels::Result<()> {
                <$kernel>::run_fused(self, isa, x, y, s, threads, ep)
            }
            fn run_prepacked(
                &self,
                isa: Isa,
                packed: &[f32],
                y: &mut [f32],
                s: &mut ConvScratch,
                threads: usize,
                ep: tessera_kernels::Epilogue<'_>,
            ) -> tessera_kernels::Result<()> {
                <$kernel>::run_prepacked(self, isa, packed, y, s, threads, ep)
            }
        }
    };
}

fused_conv!(RowGroupConv, |c| ConvScratch::for_conv(c));
fused_conv!(BcrConv, |c| c.scratch());
fused_conv!(FkwConv, |c| c.scratch());

/// A fused epilogue (bias, residual, activation) gives what the plain run followed by the
/// epilogue gives, and stores into the next convolution's packed layout are exactly what
/// packing the output gives, the consumer (the same kernel) run on them matching its plain
/// run; wrong lengths and targets are typed errors.
fn check_epilogue_and_packed_output<K: FusedConv>(
    shapes: &[ConvShape],
    bind: impl Fn(ConvShape, u64) -> K,
    what: &str,
) {
    use tessera_kernels::{Clamp, Epilogue};
    for (si, &shape) in shapes.iter().enumerate() {
        let conv = bind(shape, 30 + si as u64);
        let x: Vec<f32> = weights(shape.in_channels * shape.input_plane(), 31 + si as u64)
            .iter()
            .map(|v| 4.0 * v)
            .collect();
        let bias: Vec<f32> = weights(shape.out_channels, 32).iter().map(|v| 3.0 * v).collect();
        let positions = shape.output_positions();
        let n = shape.out_channels * positions;
        let residual = weights(n, 33);
        // The consumers: padded 3x3 convolutions on this one's output, stride 1 and stride 2
        // (phase planes, stored with compress stores).
        let [_, oh, ow] = shape.output();
        let nexts: Vec<(K, ConvShape)> = [1, 2]
            .map(|stride| {
                let next = ConvShape::conv2d(shape.out_channels, 8, [oh, ow], [3, 3], stride, 1);
                let next = next.unwrap();
                (bind(next, 34), next)
            })
            .into();
        for isa in Isa::available() {
            let mut scratch = conv.scratch();
            let mut plain = vec![0.0; n];
            conv.run_fused(isa, &x, &mut plain, &mut scratch, 1, Epilogue::default()).unwrap();
            for (clamp, f) in [
                (Clamp::None, (|v: f32| v) as fn(f32) -> f32),
                (Clamp::Relu, |v: f32| v.max(0.0)),
                (Clamp::Relu6, |v: f32| v.clamp(0.0, 6.0)),
            ] {
                for (threads, res, with_bias) in
                    [(1, false, true), (2, false, true), (1, true, true), (2, true, false)]
                {
                    let residual = res.then_some(residual.as_slice());
                    let b = with_bias.then_some(bias.as_slice());
                    let mut fused = vec![f32::NAN; n];
                    let ep = Epilogue { bias: b, clamp, residual };
                    conv.run_fused(isa, &x, &mut fused, &mut scratch, threads, ep).unwrap();
                    for (i, (&got, &p)) in fused.iter().zip(&plain).enumerate() {
                        let r = residual.map_or(0.0, |r| r[i]);
                        let want = f(p + b.map_or(0.0, |b| b[i / positions]) + r);
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{what} {shape:?} {isa:?} {clamp:?} {threads}t res {res} bias \
                             {with_bias}: output {i}: {got} vs {want}"
                        );
                    }
                }
            }
            // Stores into the consumers' packed layouts.
            let ep = Epilogue { bias: Some(&bias), clamp: Clamp::Relu, residual: None };
            let mut mid = vec![0.0; n];
            conv.run_fused(isa, &x, &mut mid, &mut scratch, 1, ep).unwrap();
            for (next, next_shape) in &nexts {
                let target = next.layout().as_target().unwrap();
                let strided = target.phases.is_some();
                let mut want = vec![0.0; 8 * next_shape.output_positions()];
                let mut next_scratch = next.scratch();
                let none = Epilogue::default();
                next.run_fused(isa, &mid, &mut want, &mut next_scratch, 1, none).unwrap();
                let mut repacked = vec![0.0; next.layout().packed_len()];
                next.layout().pack(&mid, &mut repacked);
                let mut producer = conv.clone();
                producer.set_output_target(target).unwrap();
                for threads in [1, 2] {
                    let mut packed = vec![0.0; next.layout().packed_len()];
                    let used = target.len(shape.out_channels);
                    producer
                        .run_fused(isa, &x, &mut packed[..used], &mut scratch, threads, ep)
                        .unwrap();
                    assert_eq!(
                        packed, repacked,
                        "{what} {shape:?} {isa:?} {threads}t stride-2 {strided}: packed layout"
                    );
                    let mut got = vec![f32::NAN; want.len()];
                    next.run_prepacked(isa, &packed, &mut got, &mut next_scratch, threads, none)
                        .unwrap();
                    assert_eq!(
                        got, want,
                        "{what} {shape:?} {isa:?} {threads}t stride-2 {strided}: consumer on packed"
                    );
                }
                if strided {
                    // A residual laid out as a phase-split output is refused, not misread.
                    let mut packed = vec![0.0; next.layout().packed_len()];
                    let used = target.len(shape.out_channels);
                    let r = vec![0.0; used];
                    let with_res = Epilogue { residual: Some(&r), ..ep };
                    let run =
                        producer.run_fused(isa, &x, &mut packed[..used], &mut scratch, 1, with_res);
                    assert!(run.is_err(), "{what} {shape:?}: residual in a phase-split target");
                }
            }
        }
        // Wrong lengths and a target of another extent are typed errors.
        let mut y = vec![0.0; n];
        let isa = Isa::detect();
        let mut scratch = conv.scratch();
        let short = Epilogue { bias: Some(&bias[1..]), ..Default::default() };
        assert!(conv.run_fused(isa, &x, &mut y, &mut scratch, 1, short).is_err());
        let short = Epilogue { residual: Some(&residual[1..]), ..Default::default() };
        assert!(matches!(
            conv.run_fused(isa, &x, &mut y, &mut scratch, 1, short),
            Err(tessera_kernels::KernelError::BufferLength { what: "residual", .. })
        ));
        let other = ConvShape::conv2d(4, 4, [oh + 1, ow], [3, 3], 1, 1).unwrap().layout();
        assert!(conv.clone().set_output_target(other.as_target().unwrap()).is_err());
    }
}

/// The row-group engine reading its input directly fuses the epilogue and stores to output
/// targets, the phase-split layouts of stride-2 consumers included: row tiles of two vectors
/// stored as deinterleaved halves (32-wide maps on AVX-512, 16-wide on AVX2), stacked and
/// flat tiles with compress stores.
#[test]
fn row_groups_fuse_the_epilogue_and_store_packed_outputs() {
    let shapes = [
        ConvShape::conv2d(16, 16, [4, 32], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(8, 16, [6, 16], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(6, 16, [10, 10], [3, 3], 2, 1).unwrap(),
    ];
    check_epilogue_and_packed_output(
        &shapes,
        |shape, seed| {
            let layer = shape.layer("conv").unwrap();
            let w = weights(layer.geometry.len(), seed);
            let bp = project("block-punched:8x4", &layer, &w, 0.75);
            let m = BlockPunched::encode(&layer, &bp.values, &bp.mask, 8, 4).unwrap();
            let direct = tessera_kernels::RowGroupInput::Direct;
            RowGroupConv::with_input(m.to_row_groups(), shape, direct).unwrap()
        },
        "block-punched direct",
    );
}

/// BCR and FKW fuse the epilogue and store to output targets: tiles within 32-wide output
/// rows, stacked rows (8-wide maps; BCR), flat tiles with masked stores (stride 2, 5-wide
/// maps), a 1x1 read in place (BCR), on 1 and 2 threads.
#[test]
fn bcr_and_fkw_fuse_the_epilogue_and_store_packed_outputs() {
    let shapes = [
        ConvShape::conv2d(16, 16, [4, 32], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(8, 24, [8, 8], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(6, 16, [10, 10], [3, 3], 2, 1).unwrap(),
        ConvShape::conv2d(12, 8, [5, 5], [1, 1], 1, 0).unwrap(),
    ];
    check_epilogue_and_packed_output(
        &shapes,
        |shape, seed| {
            let layer = shape.layer("conv").unwrap();
            let p = project("bcr:8x16", &layer, &weights(layer.geometry.len(), seed), 0.75);
            let m = BcrCompact::encode(&layer, &p.values, &p.mask, 8, 16).unwrap();
            BcrConv::new(m, shape).unwrap()
        },
        "BCR",
    );
    for order in [FkwOrder::ChannelMajor, FkwOrder::FilterMajor] {
        check_epilogue_and_packed_output(
            &shapes[..3],
            |shape, seed| {
                let layer = shape.layer("conv").unwrap();
                let w = weights(layer.geometry.len(), seed);
                let library =
                    tessera_sparsity::PatternLibrary::extract(8, [(&layer, &w[..])]).unwrap();
                let scheme: Scheme = format!("pattern:8+connectivity@{library}").parse().unwrap();
                let p = scheme.project(&layer, &w, Target::Sparsity(0.8)).unwrap();
                let f = Fkw::encode(&layer, &p.values, &p.mask, &library).unwrap();
                FkwConv::with_order(f, shape, Some(order)).unwrap()
            },
            &format!("FKW {order:?}"),
        );
    }
}

/// BCR's gathered inputs (`BcrInput::Gathered`: an im2col without padding columns;
/// `BcrInput::Quad`: rows of 4 positions, vectors of 4 kept rows x 4 positions) compute
/// what the dense reference does on maps of 1 to 36 positions (2x2 and 4x4 with padding, a
/// 1x3 row, stride 2, a 1x1 read in place), with blocks keeping 1 to 8 rows (chunks of 1 to 4
/// rows), on every instruction set and 1 and 2 threads; they fuse the epilogue and store to
/// packed targets like the direct kernel; `new` picks them by map size; and they refuse what
/// they cannot run (more than 4 positions for quad, channel groups).
#[test]
fn bcr_gathered_and_quad_inputs_match_the_reference() {
    let shapes = [
        ConvShape::conv2d(24, 16, [2, 2], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(16, 24, [1, 1], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(8, 16, [1, 3], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(16, 16, [4, 4], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(8, 24, [5, 5], [3, 3], 2, 1).unwrap(),
        ConvShape::conv2d(16, 8, [4, 4], [1, 1], 1, 0).unwrap(),
        ConvShape::conv2d(8, 16, [6, 6], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(8, 16, [3, 4], [3, 3], 2, 1).unwrap(),
    ];
    for (si, &shape) in shapes.iter().enumerate() {
        let layer = shape.layer("conv").unwrap();
        let w = weights(layer.geometry.len(), 40 + si as u64);
        let x = weights(shape.in_channels * shape.input_plane(), 50 + si as u64);
        let quad_ok = shape.output_positions() <= 4;
        for sparsity in [0.3, 0.75, 0.95] {
            let p = project("bcr:8x16", &layer, &w, sparsity);
            let m = BcrCompact::encode(&layer, &p.values, &p.mask, 8, 16).unwrap();
            let want = reference::conv(&shape, &p.values, &x);
            let tol = bound(&p.values, shape.out_channels);
            for input in [BcrInput::Direct, BcrInput::Gathered, BcrInput::Quad] {
                let bound_conv = BcrConv::with_input(m.clone(), shape, input);
                if input == BcrInput::Quad && !quad_ok {
                    assert!(bound_conv.is_err(), "quad on {shape:?}");
                    continue;
                }
                let conv = bound_conv.unwrap();
                assert_eq!(conv.input(), input);
                let mut s = conv.scratch();
                for isa in Isa::available() {
                    for threads in [1, 2] {
                        let mut y = vec![f32::NAN; want.len()];
                        conv.run(isa, &x, &mut y, &mut s, threads).unwrap();
                        for (i, (g, w)) in y.iter().zip(&want).enumerate() {
                            assert!(
                                (g - w).abs() <= tol,
                                "{input:?} {isa} {threads}t {shape:?} at {sparsity}: output {i}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
    for input in [BcrInput::Gathered, BcrInput::Quad] {
        check_epilogue_and_packed_output(
            &shapes[..3],
            |shape, seed| {
                let layer = shape.layer("conv").unwrap();
                let p = project("bcr:8x16", &layer, &weights(layer.geometry.len(), seed), 0.75);
                let m = BcrCompact::encode(&layer, &p.values, &p.mask, 8, 16).unwrap();
                BcrConv::with_input(m, shape, input).unwrap()
            },
            &format!("BCR {input:?}"),
        );
    }
    check_epilogue_and_packed_output(
        &shapes[3..],
        |shape, seed| {
            let layer = shape.layer("conv").unwrap();
            let p = project("bcr:8x16", &layer, &weights(layer.geometry.len(), seed), 0.75);
            let m = BcrCompact::encode(&layer, &p.values, &p.mask, 8, 16).unwrap();
            BcrConv::with_input(m, shape, BcrInput::Gathered).unwrap()
        },
        "BCR gathered",
    );
    // `new`'s choice: quad up to 4 positions, gathered where it saves a third of the AVX-512
    // vectors (4x4: 19 flat positions), direct otherwise and below 64 output channels.
    let picked = |c: usize, out: usize, hw: usize, groups: usize| {
        let shape =
            ConvShape::conv2d(c, out, [hw, hw], [3, 3], 1, 1).unwrap().with_groups(groups).unwrap();
        let layer = shape.layer("conv").unwrap();
        let p = project("bcr:8x16", &layer, &weights(layer.geometry.len(), 3), 0.875);
        let m = BcrCompact::encode(&layer, &p.values, &p.mask, 8, 16).unwrap();
        BcrConv::new(m, shape).unwrap().input()
    };
    assert_eq!(picked(64, 64, 2, 1), BcrInput::Quad);
    assert_eq!(picked(64, 64, 4, 1), BcrInput::Gathered);
    assert_eq!(picked(64, 64, 8, 1), BcrInput::Direct);
    assert_eq!(picked(16, 32, 2, 1), BcrInput::Direct);
    assert_eq!(picked(64, 64, 2, 2), BcrInput::Direct);
    let grouped = ConvShape::conv2d(16, 16, [2, 2], [3, 3], 1, 1).unwrap().with_groups(2).unwrap();
    let layer = grouped.layer("conv").unwrap();
    let p = project("bcr:8x16", &layer, &weights(layer.geometry.len(), 3), 0.5);
    let m = BcrCompact::encode(&layer, &p.values, &p.mask, 8, 16).unwrap();
    assert!(BcrConv::with_input(m, grouped, BcrInput::Gathered).is_err());
    // A scratch without room for the gathered input is a typed error naming it.
    let shape = shapes[0];
    let layer = shape.layer("conv").unwrap();
    let p = project("bcr:8x16", &layer, &weights(layer.geometry.len(), 3), 0.5);
    let m = BcrCompact::encode(&layer, &p.values, &p.mask, 8, 16).unwrap();
    let conv = BcrConv::with_input(m, shape, BcrInput::Quad).unwrap();
    let packed = vec![0.0; conv.layout().packed_len()];
    let mut y = vec![0.0; shape.out_channels * shape.output_positions()];
    let mut small =
        BcrConv::with_input(conv.matrix().clone(), shape, BcrInput::Direct).unwrap().scratch();
    let err = conv
        .run_prepacked(Isa::detect(), &packed, &mut y, &mut small, 1, Default::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            tessera_kernels::KernelError::BufferLength { what: "gathered-input scratch", .. }
        ),
        "{err}"
    );
}

/// Runs `conv` on `x` on every instruction set and 1 and 2 threads, each output within `tol`
/// of `want`.
fn assert_row_groups_match(conv: &RowGroupConv, x: &[f32], want: &[f32], tol: f32, what: &str) {
    let shape = conv.shape();
    let mut s = ConvScratch::for_conv(conv);
    for isa in Isa::available() {
        for threads in [1, 2] {
            let mut y = vec![f32::NAN; want.len()];
            conv.run(isa, x, &mut y, &mut s, threads).unwrap();
            for (i, (g, w)) in y.iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() <= tol,
                    "{what} {isa} {threads}t {shape:?}: output {i}: {g} vs {w}"
                );
            }
        }
    }
}

/// The row-group convolution `RowGroupConv::new` binds for a padded 3x3 layer of `c -> out`
/// channels on an `hw x hw` map pruned to 8x by `scheme` (unstructured or block-punched 8x4).
fn picked_by_new(c: usize, out: usize, hw: usize, scheme: &str) -> RowGroupConv {
    let shape = ConvShape::conv2d(c, out, [hw, hw], [3, 3], 1, 1).unwrap();
    let layer = shape.layer("conv").unwrap();
    let p = project(scheme, &layer, &weights(layer.geometry.len(), 3), 0.875);
    let g = &layer.geometry;
    let m = match scheme {
        "unstructured" => {
            Csr::encode(g.rows(), g.cols(), &p.values, &p.mask).unwrap().to_row_groups()
        }
        _ => BlockPunched::encode(&layer, &p.values, &p.mask, 8, 4).unwrap().to_row_groups(),
    };
    RowGroupConv::new(m, shape).unwrap()
}

/// The row-group engine on a gathered input (`with_gathered_input`) computes what the dense
/// reference does for block-punched groups of 8 rows, dense rows in groups of 8 and one-row
/// CSR groups, on the gathered-input test's maps, on every instruction set and 1 and 2
/// threads; it fuses the epilogue and stores to packed targets; and `new` gathers a 4x4 map
/// from 64 block-punched output channels but neither an 8x8 map, nor one-row groups, nor 16
/// output channels.
#[test]
fn row_groups_on_a_gathered_input_match_the_reference() {
    let shapes = [
        ConvShape::conv2d(24, 16, [2, 2], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(8, 16, [1, 3], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(16, 16, [4, 4], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(8, 24, [5, 5], [3, 3], 2, 1).unwrap(),
        ConvShape::conv2d(16, 8, [4, 4], [1, 1], 1, 0).unwrap(),
        ConvShape::conv2d(8, 16, [6, 6], [3, 3], 1, 1).unwrap(),
    ];
    let matrices = |shape: &ConvShape,
                    seed: u64|
     -> Vec<(&'static str, Vec<f32>, RowGroupMatrix)> {
        let layer = shape.layer("conv").unwrap();
        let g = &layer.geometry;
        let w = weights(g.len(), seed);
        let bp = project("block-punched:8x4", &layer, &w, 0.75);
        let bp_m =
            BlockPunched::encode(&layer, &bp.values, &bp.mask, 8, 4).unwrap().to_row_groups();
        let groups = RowGroupMatrix::uniform_groups(g.rows(), g.rows(), 8);
        let dense = RowGroupMatrix::from_dense(g.rows(), g.cols(), &w, None, &groups).unwrap();
        let un = project("unstructured", &layer, &w, 0.8);
        let csr = Csr::encode(g.rows(), g.cols(), &un.values, &un.mask).unwrap().to_row_groups();
        vec![("block-punched", bp.values, bp_m), ("dense rows", w, dense), ("CSR", un.values, csr)]
    };
    for (si, &shape) in shapes.iter().enumerate() {
        let x = weights(shape.in_channels * shape.input_plane(), 60 + si as u64);
        for (what, values, m) in matrices(&shape, 70 + si as u64) {
            let want = reference::conv(&shape, &values, &x);
            let tol = bound(&values, shape.out_channels);
            let conv = RowGroupConv::with_gathered_input(m, shape, true).unwrap();
            assert!(conv.gathered());
            assert_row_groups_match(&conv, &x, &want, tol, &format!("{what} gathered"));
        }
    }
    check_epilogue_and_packed_output(
        &shapes,
        |shape, seed| {
            let (_, _, m) = matrices(&shape, seed).swap_remove(0);
            RowGroupConv::with_gathered_input(m, shape, true).unwrap()
        },
        "block-punched gathered",
    );
    let picked = |c, out, hw, scheme| picked_by_new(c, out, hw, scheme).gathered();
    assert!(picked(64, 64, 4, "block-punched:8x4"));
    assert!(!picked(64, 64, 8, "block-punched:8x4"));
    assert!(picked(64, 64, 2, "block-punched:8x4")); // quad (the test below)
    assert!(!picked(64, 64, 4, "unstructured"));
    assert!(!picked(16, 16, 4, "block-punched:8x4"));
    let grouped = ConvShape::conv2d(16, 16, [2, 2], [3, 3], 1, 1).unwrap().with_groups(2).unwrap();
    let g = grouped.layer("conv").unwrap().geometry;
    let groups = RowGroupMatrix::uniform_groups(g.rows(), g.rows() / 2, 8);
    let w = weights(g.len(), 4);
    let m = RowGroupMatrix::from_dense(g.rows(), g.cols(), &w, None, &groups).unwrap();
    assert!(RowGroupConv::with_gathered_input(m, grouped, true).is_err());
}

/// The row-group engine on the quad input (`RowGroupInput::Quad`: each gathered value 4
/// times, vectors of 4 positions x 4 rows) computes what the dense reference does on maps of
/// 1 to 4 positions (3x3 padded, a strided 1x1, a 1-wide row), for block-punched groups of 8
/// rows, dense rows in groups of 8 + 4 (both halves of the kernel) and of 4, on every
/// instruction set and 1 and 2 threads; it fuses the epilogue and stores to packed targets;
/// it refuses one-row groups, groups of other than a multiple of 4 rows and maps of more than
/// 4 positions; and `new` picks it for a 2x2 map from 64 block-punched output channels but
/// not from 16, nor for one-row groups.
#[test]
fn row_groups_on_the_quad_input_match_the_reference() {
    use tessera_kernels::RowGroupInput;
    let shapes = [
        ConvShape::conv2d(24, 16, [2, 2], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(8, 16, [1, 3], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(16, 24, [4, 4], [1, 1], 2, 0).unwrap(),
        ConvShape::conv2d(12, 8, [1, 1], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(40, 32, [2, 2], [3, 3], 1, 1).unwrap(),
    ];
    let matrices = |shape: &ConvShape, seed: u64| -> Vec<(String, Vec<f32>, RowGroupMatrix)> {
        let layer = shape.layer("conv").unwrap();
        let g = &layer.geometry;
        let w = weights(g.len(), seed);
        let bp = project("block-punched:8x4", &layer, &w, 0.75);
        let bp_m =
            BlockPunched::encode(&layer, &bp.values, &bp.mask, 8, 4).unwrap().to_row_groups();
        let mut out = vec![("block-punched".to_string(), bp.values, bp_m)];
        // Groups of 8 + 4 + ... and of 4 rows (every row count here is a multiple of 4).
        for sizes in [vec![8, 4], vec![4]] {
            let mut groups = Vec::new();
            let (mut r, mut k) = (0, 0);
            while r < g.rows() {
                let n = sizes[k % sizes.len()].min(g.rows() - r);
                groups.push(n);
                r += n;
                k += 1;
            }
            let m = RowGroupMatrix::from_dense(g.rows(), g.cols(), &w, None, &groups).unwrap();
            out.push((format!("dense rows {groups:?}"), w.clone(), m));
        }
        out
    };
    for (si, &shape) in shapes.iter().enumerate() {
        let x = weights(shape.in_channels * shape.input_plane(), 80 + si as u64);
        for (what, values, m) in matrices(&shape, 90 + si as u64) {
            let want = reference::conv(&shape, &values, &x);
            let tol = bound(&values, shape.out_channels);
            let conv = RowGroupConv::with_input(m, shape, RowGroupInput::Quad).unwrap();
            assert_eq!(conv.input(), RowGroupInput::Quad);
            assert_row_groups_match(&conv, &x, &want, tol, &format!("{what} quad"));
        }
    }
    check_epilogue_and_packed_output(
        &shapes,
        |shape, seed| {
            let (_, _, m) = matrices(&shape, seed).swap_remove(0);
            RowGroupConv::with_input(m, shape, RowGroupInput::Quad).unwrap()
        },
        "block-punched quad",
    );
    // Refused: one-row groups, a group of 6 rows, 9 positions.
    let shape = ConvShape::conv2d(8, 12, [2, 2], [3, 3], 1, 1).unwrap();
    let layer = shape.layer("conv").unwrap();
    let g = &layer.geometry;
    let w = weights(g.len(), 5);
    let un = project("unstructured", &layer, &w, 0.8);
    let csr = Csr::encode(g.rows(), g.cols(), &un.values, &un.mask).unwrap().to_row_groups();
    assert!(RowGroupConv::with_input(csr, shape, RowGroupInput::Quad).is_err());
    let sixes = RowGroupMatrix::from_dense(g.rows(), g.cols(), &w, None, &[6, 6]).unwrap();
    let err = RowGroupConv::with_input(sixes, shape, RowGroupInput::Quad).unwrap_err();
    assert!(err.to_string().contains("multiple of 4 rows"), "{err}");
    let wide = ConvShape::conv2d(8, 8, [3, 3], [3, 3], 1, 1).unwrap();
    let wg = wide.layer("conv").unwrap().geometry;
    let m = RowGroupMatrix::from_dense(8, wg.cols(), &weights(wg.len(), 6), None, &[8]).unwrap();
    assert!(RowGroupConv::with_input(m, wide, RowGroupInput::Quad).is_err());
    let picked = |c, out, hw, scheme| picked_by_new(c, out, hw, scheme).input();
    assert_eq!(picked(64, 64, 2, "block-punched:8x4"), RowGroupInput::Quad);
    assert_eq!(picked(64, 64, 4, "block-punched:8x4"), RowGroupInput::Gathered);
    assert_eq!(picked(16, 16, 2, "block-punched:8x4"), RowGroupInput::Direct);
    assert_eq!(picked(64, 64, 2, "unstructured"), RowGroupInput::Direct);
}

/// A fused residual read from another layout (`set_residual_layout`: the padded input layout
/// of a 3x3 convolution on the output's extent, where a residual network's block input is
/// stored for its first convolution) adds exactly what the same residual stored plainly
/// adds, and an output stored into that layout is the plain output packed: for the row-group
/// engine (dense rows, block-punched groups of 8, unstructured one-row groups), BCR's block
/// kernel and the pattern (FKW) kernel in both orders, on tiles of whole rows (32-wide),
/// stacked rows (16- and 8-wide, and 16-wide rows read in place by 1x1 layers), and masked
/// segments (8x8, 5x5, stride 2), on every instruction set and 1 and 2 threads. A residual
/// too short for its layout is an error.
#[test]
fn residuals_read_from_a_padded_layout_match_plain_ones() {
    use tessera_kernels::{Clamp, Epilogue};
    let shapes = [
        ConvShape::conv2d(16, 16, [32, 32], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(16, 24, [16, 16], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(8, 16, [8, 8], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(6, 12, [5, 5], [3, 3], 1, 1).unwrap(),
        ConvShape::conv2d(8, 16, [16, 16], [3, 3], 2, 1).unwrap(),
        ConvShape::conv2d(16, 32, [32, 32], [1, 1], 2, 0).unwrap(),
        ConvShape::conv2d(16, 16, [16, 16], [1, 1], 1, 0).unwrap(),
    ];
    // (name, bind): each kernel under test, bound to a shape.
    type Bind = fn(ConvShape) -> Box<dyn ResidualConv>;
    let kernels: [(&str, Bind); 8] = [
        ("dense rows", |shape| {
            let layer = shape.layer("conv").unwrap();
            let g = &layer.geometry;
            let w = weights(g.len(), 4);
            let groups: Vec<usize> =
                (0..g.rows()).step_by(8).map(|r| (g.rows() - r).min(8)).collect();
            let m = RowGroupMatrix::from_dense(g.rows(), g.cols(), &w, None, &groups).unwrap();
            Box::new(RowGroupConv::new(m, shape).unwrap())
        }),
        ("block-punched 8x4", |shape| {
            let layer = shape.layer("conv").unwrap();
            let p = project("block-punched:8x4", &layer, &weights(layer.geometry.len(), 5), 0.75);
            let m = BlockPunched::encode(&layer, &p.values, &p.mask, 8, 4).unwrap();
            Box::new(RowGroupConv::new(m.to_row_groups(), shape).unwrap())
        }),
        ("unstructured", |shape| {
            let layer = shape.layer("conv").unwrap();
            let p = project("unstructured", &layer, &weights(layer.geometry.len(), 6), 0.75);
            let g = &layer.geometry;
            let m = Csr::encode(g.rows(), g.cols(), &p.values, &p.mask).unwrap();
            Box::new(RowGroupConv::new(m.to_row_groups(), shape).unwrap())
        }),
        ("BCR 8x16", |shape| {
            let layer = shape.layer("conv").unwrap();
            let p = project("bcr:8x16", &layer, &weights(layer.geometry.len(), 7), 0.75);
            let m = BcrCompact::encode(&layer, &p.values, &p.mask, 8, 16).unwrap();
            Box::new(BcrConv::new(m, shape).unwrap())
        }),
        ("BCR 8x16 gathered", |shape| {
            let layer = shape.layer("conv").unwrap();
            let p = project("bcr:8x16", &layer, &weights(layer.geometry.len(), 7), 0.75);
            let m = BcrCompact::encode(&layer, &p.values, &p.mask, 8, 16).unwrap();
            Box::new(BcrConv::with_input(m, shape, BcrInput::Gathered).unwrap())
        }),
        ("block-punched 8x4 gathered", |shape| {
            let layer = shape.layer("conv").unwrap();
            let p = project("block-punched:8x4", &layer, &weights(layer.geometry.len(), 5), 0.75);
            let m = BlockPunched::encode(&layer, &p.values, &p.mask, 8, 4).unwrap();
            Box::new(RowGroupConv::with_gathered_input(m.to_row_groups(), shape, true).unwrap())
        }),
        ("FKW channel-major", |shape| pattern_conv(shape, FkwOrder::ChannelMajor)),
        ("FKW filter-major", |shape| pattern_conv(shape, FkwOrder::FilterMajor)),
    ];
    for shape in shapes {
        let [_, oh, ow] = shape.output();
        let c = shape.out_channels;
        // The residual's layout: a padded 3x3 convolution's input on the output's extent.
        let holder = ConvShape::conv2d(c, 4, [oh, ow], [3, 3], 1, 1).unwrap().layout();
        let padded = holder.as_target().unwrap();
        let x = weights(shape.in_channels * shape.input_plane(), 8);
        let bias = weights(c, 9);
        let plain_residual = weights(c * oh * ow, 10);
        let mut packed_residual = vec![0.0; holder.packed_len()];
        holder.pack(&plain_residual, &mut packed_residual);
        for (name, bind) in &kernels {
            // Outputs stored plainly reading the residual from the padded layout (the last
            // block of a stage), and stored into the padded layout reading a plain residual.
            let dense = tessera_kernels::OutputTarget::dense([1, oh, ow]);
            let cases = [
                (None, padded, &plain_residual[..], &packed_residual[..]),
                (Some(padded), dense, &packed_residual[..padded.len(c)], &plain_residual[..]),
            ];
            for (out_target, layout, as_output, moved_residual) in cases {
                let mut plain = bind(shape);
                let mut moved = bind(shape);
                // The residual layout set before the output moves (as a plan pins it).
                moved.residual_layout(Some(layout)).unwrap();
                if let Some(t) = out_target {
                    plain.retarget(t).unwrap();
                    moved.retarget(t).unwrap();
                }
                let len = out_target.map_or(c * oh * ow, |t| t.len(c));
                for isa in Isa::available() {
                    for threads in [1, 2] {
                        let (mut want, mut got) = (vec![0.0; len], vec![0.0; len]);
                        let ep = |residual| Epilogue {
                            bias: Some(&bias),
                            clamp: Clamp::Relu,
                            residual: Some(residual),
                        };
                        plain.run(isa, &x, &mut want, threads, ep(as_output)).unwrap();
                        moved.run(isa, &x, &mut got, threads, ep(moved_residual)).unwrap();
                        assert_eq!(
                            got, want,
                            "{name} {shape:?} -> {out_target:?} {isa} {threads}t"
                        );
                        assert!(want.iter().any(|&v| v > 0.0), "{name}: all zero");
                        if out_target.is_some() {
                            // The stored layout is the plain output packed.
                            let mut flat = vec![0.0; c * oh * ow];
                            let plain_conv = bind(shape);
                            plain_conv
                                .run(isa, &x, &mut flat, threads, ep(&plain_residual))
                                .unwrap();
                            let mut packed = vec![0.0; holder.packed_len()];
                            holder.pack(&flat, &mut packed);
                            let bad: Vec<usize> =
                                (0..len).filter(|&i| got[i] != packed[i]).collect();
                            assert!(
                                bad.is_empty(),
                                "{name} {shape:?} {isa}: packed output differs at {} of {len} floats, first {:?}: {:?} vs {:?}",
                                bad.len(),
                                &bad[..bad.len().min(8)],
                                bad.iter().take(8).map(|&i| got[i]).collect::<Vec<_>>(),
                                bad.iter().take(8).map(|&i| packed[i]).collect::<Vec<_>>()
                            );
                        }
                    }
                }
            }
            // Too short a residual for its layout is an error.
            let mut conv = bind(shape);
            conv.residual_layout(Some(padded)).unwrap();
            let mut y = vec![0.0; c * oh * ow];
            let ep = Epilogue { bias: None, clamp: Clamp::None, residual: Some(&plain_residual) };
            assert!(conv.run(Isa::detect(), &x, &mut y, 1, ep).is_err(), "{name}: short residual");
            // A layout of another extent is refused, and nothing changes.
            let mut conv = bind(shape);
            let other = ConvShape::conv2d(c, 4, [oh + 1, ow], [3, 3], 1, 1).unwrap().layout();
            assert!(conv.residual_layout(Some(other.as_target().unwrap())).is_err());
            let mut y = vec![0.0; c * oh * ow];
            let ep = Epilogue { bias: None, clamp: Clamp::None, residual: Some(&plain_residual) };
            conv.run(Isa::detect(), &x, &mut y, 1, ep).unwrap();
        }
    }
}

/// The kernels that can read a residual from a layout of its own.
trait ResidualConv {
    fn retarget(&mut self, target: tessera_kernels::OutputTarget) -> tessera_kernels::Result<()>;
    fn residual_layout(
        &mut self,
        layout: Option<tessera_kernels::OutputTarget>,
    ) -> tessera_kernels::Result<()>;
    fn run(
        &self,
        isa: Isa,
        x: &[f32],
        y: &mut [f32],
        threads: usize,
        ep: tessera_kernels::Epilogue<'_>,
    ) -> tessera_kernels::Result<()>;
}

/// A pattern (FKW) convolution of `shape` at 80% with 8 patterns extracted from its weights;
/// a 3x3 row-group one for other kernel sizes (patterns are 3x3).
fn pattern_conv(shape: ConvShape, order: FkwOrder) -> Box<dyn ResidualConv> {
    if shape.kernel[1..] != [3, 3] {
        let layer = shape.layer("conv").unwrap();
        let p = project("block-punched:8x4", &layer, &weights(layer.geometry.len(), 5), 0.75);
        let m = BlockPunched::encode(&layer, &p.values, &p.mask, 8, 4).unwrap();
        return Box::new(RowGroupConv::new(m.to_row_groups(), shape).unwrap());
    }
    let layer = shape.layer("conv").unwrap();
    let w = weights(layer.geometry.len(), 11);
    let library = tessera_sparsity::PatternLibrary::extract(8, [(&layer, &w[..])]).unwrap();
    let scheme: Scheme = format!("pattern:8+connectivity@{library}").parse().unwrap();
    let p = scheme.project(&layer, &w, Target::Sparsity(0.8)).unwrap();
    let f = Fkw::encode(&layer, &p.values, &p.mask, &library).unwrap();
    Box::new(FkwConv::with_order(f, shape, Some(order)).unwrap())
}

/// [`ResidualConv`] for a kernel, `$scratch` making its scratch.
macro_rules! residual_conv {
    ($kernel:ty, |$conv:ident| $scratch:expr) => {
        impl ResidualConv for $kernel {
            fn retarget(
                &mut self,
                target: tessera_kernels::OutputTarget,
            ) -> tessera_kernels::Result<()> {
                self.set_output_target(target)
            }
            fn residual_layout(
                &mut self,
                layout: Option<tessera_kernels::OutputTarget>,
            ) -> tessera_kernels::Result<()> {
                self.set_residual_layout(layout)
            }
            fn run(
                &self,
                isa: Isa,
                x: &[f32],
                y: &mut [f32],
                threads: usize,
                ep: tessera_kernels::Epilogue<'_>,
            ) -> tessera_kernels::Result<()> {
                let $conv = self;
                let mut s = $scratch;
                self.run_fused(isa, x, y, &mut s, threads, ep)
            }
        }
    };
}
residual_conv!(RowGroupConv, |c| ConvScratch::for_conv(c));
residual_conv!(BcrConv, |c| c.scratch());
residual_conv!(FkwConv, |c| c.scratch());

/// A 1x1 strided convolution reading its input in place from the phase planes a producer
/// stored for a 3x3 (or 5x5) strided convolution of the same input
/// (`InputLayout::phase_view`, as a downsampling block's shortcut in a plan): the row-group
/// engine (dense and block-punched) and BCR, run pre-packed on the source buffer and plainly
/// (packing the view from NCHW), against the dense reference, every instruction set, 1 and 2
/// threads.
#[test]
fn strided_1x1_convolutions_read_a_phase_plane_in_place() {
    use tessera_kernels::{Clamp, Epilogue, InputLayout};
    // (in, out, input extent, the source's kernel and padding).
    let cases = [(16, 32, [32, 32], 3, 1), (8, 12, [15, 17], 3, 1), (5, 8, [16, 16], 5, 2)];
    for (c, out, hw, k, pad) in cases {
        let shape = ConvShape::conv2d(c, out, hw, [1, 1], 2, 0).unwrap();
        let source = ConvShape::conv2d(c, 4, hw, [k, k], 2, pad).unwrap().layout();
        let target = source.as_target().unwrap();
        let x = weights(c * hw[0] * hw[1], 3);
        let mut buf = vec![0.0f32; source.packed_len()];
        source.pack(&x, &mut buf);
        let view = InputLayout::phase_view(&shape, &target, buf.len()).unwrap();
        assert!(view.is_view() && view.as_target().is_none());
        // Too short a source buffer, or a 3x3 convolution, gets no view.
        assert!(InputLayout::phase_view(&shape, &target, c * 4).is_none());
        let k3 = ConvShape::conv2d(c, out, hw, [3, 3], 2, 1).unwrap();
        assert!(InputLayout::phase_view(&k3, &target, buf.len()).is_none());
        // Nor does a shape `ConvShape::validated` refuses (its fields are public).
        let no_channels = ConvShape { in_channels: 0, ..shape };
        assert!(InputLayout::phase_view(&no_channels, &target, buf.len()).is_none());

        let layer = Layer::conv2d("shortcut", out, c, 1, 1).unwrap();
        let w = weights(out * c, 5);
        let p = project("bcr:8x32", &layer, &w, 0.75);
        let bp = project("block-punched:8x4", &layer, &w, 0.75);
        let dense_rows = RowGroupMatrix::from_dense(
            out,
            c,
            &w,
            None,
            &RowGroupMatrix::uniform_groups(out, out, 8),
        )
        .unwrap();
        let bp_rows = BlockPunched::encode(&layer, &bp.values, &bp.mask, 8, 4).unwrap();
        let rows_cases = [
            ("dense rows", w.clone(), dense_rows),
            ("block-punched", bp.values.clone(), bp_rows.to_row_groups()),
        ];
        let ep = Epilogue { bias: None, clamp: Clamp::None, residual: None };
        let [_, oh, ow] = shape.output();
        for (what, values, m) in rows_cases {
            let want = reference::conv(&shape, &values, &x);
            let mut conv = RowGroupConv::new(m, shape).unwrap();
            // Another convolution's layout is refused, naming what was wrong.
            let err = conv.set_input_layout(k3.layout()).unwrap_err();
            assert!(err.to_string().contains("another layout"), "{err}");
            conv.set_input_layout(view.clone()).unwrap();
            let mut s = ConvScratch::for_conv(&conv);
            for isa in Isa::available() {
                for threads in [1, 2] {
                    let mut y = vec![f32::NAN; out * oh * ow];
                    conv.run_prepacked(isa, &buf, &mut y, &mut s, threads, ep).unwrap();
                    check(&y, &want, &values, out, &format!("{what} {hw:?} in place {isa:?}"));
                    let mut y = vec![f32::NAN; out * oh * ow];
                    conv.run(isa, &x, &mut y, &mut s, threads).unwrap();
                    check(&y, &want, &values, out, &format!("{what} {hw:?} packed {isa:?}"));
                }
            }
        }
        let want = reference::conv(&shape, &p.values, &x);
        let mut bcr =
            BcrCompact::encode(&layer, &p.values, &p.mask, 8, 32).unwrap().bind(shape).unwrap();
        assert!(bcr.set_input_layout(k3.layout()).is_err());
        bcr.set_input_layout(view.clone()).unwrap();
        let mut s = bcr.scratch();
        for isa in Isa::available() {
            for threads in [1, 2] {
                let mut y = vec![f32::NAN; out * oh * ow];
                bcr.run_prepacked(isa, &buf, &mut y, &mut s, threads, ep).unwrap();
                check(&y, &want, &p.values, out, &format!("BCR {hw:?} in place {isa:?}"));
                let mut y = vec![f32::NAN; out * oh * ow];
                bcr.run(isa, &x, &mut y, &mut s, threads).unwrap();
                check(&y, &want, &p.values, out, &format!("BCR {hw:?} packed {isa:?}"));
            }
        }
    }

    fn check(y: &[f32], want: &[f32], w: &[f32], rows: usize, what: &str) {
        let tol = bound(w, rows);
        for (i, (g, e)) in y.iter().zip(want).enumerate() {
            assert!((g - e).abs() <= tol, "{what}: output {i}: got {g}, want {e}");
        }
    }
}
