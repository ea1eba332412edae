//! The kernel benchmark suite behind `cargo xtask bench kernels`: named layer shapes from real
//! models, every applicable scheme at 50-95% sparsity, 1 and 2 threads, each sparse kernel
//! timed against the fastest dense kernel *in the same run* (im2col + GEMM, the direct
//! row-group kernel, and the channel-vector kernel on maps of at most 256 positions and on every
//! layer with a kernel larger than 1x1 (on AVX2 it is the fastest dense kernel of 3x3 layers
//! with 64 or more input channels at 16x16 and larger, 0.73-0.94 of the direct kernel's
//! time, `examples/channel_vector_crossover`); GEMV and
//! the GEMM crate for matrix-vector shapes) and its output checked against the dense result of
//! the same pruned weights.
//!
//! Masks come from tessera-sparsity's projections of deterministic pseudo-random weights (the
//! kernels' speed depends on the structure, not on the values), formats from tessera-kernels.

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use tessera_kernels::formats::bcr::{BcrCompact, BcrConv};
use tessera_kernels::formats::block_punched::{BlockPunched, Kgs};
use tessera_kernels::formats::bsr::Bsr;
use tessera_kernels::formats::csr::Csr;
use tessera_kernels::formats::fkw::{Fkw, FkwConv};
use tessera_kernels::{
    ChannelVectorConv, ConvScratch, ConvShape, Epilogue, Isa, RowGroupConv, RowGroupMatrix, dense,
};
use tessera_sparsity::{Layer, PatternLibrary, Scheme, Target, Tiling};

/// What the suite runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteConfig {
    /// Thread counts.
    pub threads: Vec<usize>,
    /// Sparsities.
    pub sparsities: Vec<f64>,
    /// Only shapes whose name contains one of these (all when empty).
    pub only: Vec<String>,
    /// Minimum measured time per point, seconds.
    pub min_time: f64,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        SuiteConfig {
            threads: vec![1, 2],
            sparsities: vec![0.5, 0.75, 0.875, 0.9, 0.95],
            only: vec![],
            min_time: 0.25,
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    /// Named shape.
    pub shape: String,
    /// Scheme (textual form) or `dense`.
    pub scheme: String,
    /// Storage format / kernel.
    pub kernel: String,
    /// Target sparsity (0 for dense).
    pub sparsity: f64,
    /// Fraction of weights actually kept.
    pub density: f64,
    /// Threads.
    pub threads: usize,
    /// Median time, milliseconds.
    pub median_ms: f64,
    /// Dense FLOPs divided by the time.
    pub effective_gflops: f64,
    /// Fastest dense time / this time, same thread count, same run.
    pub speedup: f64,
    /// Dense FLOPs / kept FLOPs: the speed-up a perfect kernel would reach.
    pub flop_reduction: f64,
    /// Largest |difference| from the dense kernel on the same pruned weights, relative to the
    /// largest |output|.
    pub max_rel_error: f64,
}

/// A named benchmark shape.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Conv(&'static str, ConvShape),
    /// `Y[rows, n] = W[rows, cols] X[cols, n]`.
    Gemm(&'static str, usize, usize, usize),
}

fn shapes() -> Vec<Shape> {
    let conv = |c, o, hw, k, p| {
        ConvShape::conv2d(c, o, [hw, hw], [k, k], 1, p).unwrap_or_else(|e| panic!("{e}"))
    };
    vec![
        Shape::Conv("conv3x3_256_8x8", conv(256, 256, 8, 3, 1)),
        Shape::Conv("conv3x3_128_16x16", conv(128, 128, 16, 3, 1)),
        Shape::Conv("conv3x3_64_56x56", conv(64, 64, 56, 3, 1)),
        Shape::Conv("conv1x1_256to64_56x56", conv(256, 64, 56, 1, 0)),
        Shape::Conv(
            "conv3d_64to128_8x28x28",
            ConvShape::conv3d(64, 128, [8, 28, 28], [3, 3, 3], 1, 1)
                .unwrap_or_else(|e| panic!("{e}")),
        ),
        Shape::Gemm("bert_fc_128x768x3072", 3072, 768, 128),
        Shape::Gemm("gemm_1024", 1024, 1024, 1024),
        Shape::Gemm("gemv_4096x4096", 4096, 4096, 1),
        Shape::Gemm("lstm_gates_h1024", 4096, 2048, 1),
    ]
}

fn median_ms(min_time: f64, f: impl FnMut()) -> f64 {
    crate::timing::median_ms(min_time, 10, 5000, f)
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn rel_error(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-20);
    got.iter().zip(want).fold(0.0f64, |m, (g, w)| m.max(f64::from((g - w).abs() / scale)))
}

/// A sparse kernel ready to run on one input.
enum Runner {
    Rows(RowGroupConv, ConvScratch),
    Bcr(BcrConv, ConvScratch),
    Fkw(FkwConv, ConvScratch),
    GemvRows(RowGroupMatrix),
    GemvBcr(BcrConv),
}

impl Runner {
    fn run(&mut self, isa: Isa, x: &[f32], y: &mut [f32], threads: usize) {
        let r = match self {
            Runner::Rows(c, s) => c.run(isa, x, y, s, threads),
            Runner::Bcr(c, s) => c.run(isa, x, y, s, threads),
            Runner::Fkw(c, s) => c.run(isa, x, y, s, threads),
            Runner::GemvRows(m) => tessera_kernels::rowgroup::gemv(isa, m, x, y, threads),
            Runner::GemvBcr(c) => c.gemv(isa, x, y, threads),
        };
        if let Err(e) = r {
            panic!("kernel failed: {e}");
        }
    }
}

/// Schemes benchmarked for a shape, with the kernel that runs each.
fn schemes_for(shape: &Shape) -> Vec<&'static str> {
    match shape {
        Shape::Conv(_, s) if s.kernel == [1, 3, 3] => {
            vec![
                "unstructured",
                "block-punched:8x4",
                "bcr:8x32",
                "bcr:8x32/rows",
                "pattern:8+connectivity",
            ]
        }
        Shape::Conv(_, s) if s.kernel == [3, 3, 3] => {
            vec!["unstructured", "kgs:8x4", "block-punched:8x4"]
        }
        Shape::Conv(..) => vec!["unstructured", "block-punched:8x4", "bcr:8x32", "bcr:8x32/rows"],
        Shape::Gemm(..) => vec!["unstructured", "block:8x4", "bcr:8x32", "bcr:8x32/rows"],
    }
}

fn build(
    scheme: &str,
    layer: &Layer,
    conv: ConvShape,
    is_gemv: bool,
    w: &[f32],
    sparsity: f64,
) -> (Runner, String, Vec<f32>, f64) {
    // "bcr:RxC/rows" runs BCR through the row-group engine instead of the block kernel.
    let (scheme, rows_form) = match scheme.strip_suffix("/rows") {
        Some(s) => (s, true),
        None => (scheme, false),
    };
    let mut s: Scheme = scheme.parse().unwrap_or_else(|e| panic!("{e}"));
    let library = if scheme.starts_with("pattern") {
        let lib = PatternLibrary::extract(8, [(layer, w)]).unwrap_or_else(|e| panic!("{e}"));
        s = format!("{scheme}@{lib}").parse().unwrap_or_else(|e| panic!("{e}"));
        Some(lib)
    } else {
        None
    };
    let p = s
        .project_with(layer, w, Target::Sparsity(sparsity), Tiling::Pad)
        .unwrap_or_else(|e| panic!("{scheme}: {e}"));
    let density = p.mask.density();
    let ok = |e: tessera_kernels::KernelError| -> ! { panic!("{scheme}: {e}") };
    let g = &layer.geometry;
    let (runner, kernel) = match &s {
        Scheme::Unstructured => {
            let m = Csr::encode(g.rows(), g.cols(), &p.values, &p.mask)
                .unwrap_or_else(|e| ok(e))
                .to_row_groups();
            (rows_runner(m, conv, is_gemv), "CSR".to_string())
        }
        Scheme::BlockPunched { block, .. } => {
            let f = BlockPunched::encode(layer, &p.values, &p.mask, block.rows(), block.cols())
                .unwrap_or_else(|e| ok(e));
            (rows_runner(f.to_row_groups(), conv, is_gemv), "block-punched".to_string())
        }
        Scheme::Kgs { group, .. } => {
            let f = Kgs::encode(layer, &p.values, &p.mask, group.rows(), group.cols())
                .unwrap_or_else(|e| ok(e));
            (rows_runner(f.to_row_groups(), conv, is_gemv), "KGS".to_string())
        }
        Scheme::Block { block, .. } => {
            let f = Bsr::encode(layer, &p.values, &p.mask, block.rows(), block.cols())
                .unwrap_or_else(|e| ok(e));
            (rows_runner(f.to_row_groups(), conv, is_gemv), "BSR".to_string())
        }
        Scheme::Bcr { block } if rows_form => {
            let f = BcrCompact::encode(layer, &p.values, &p.mask, block.rows(), block.cols())
                .unwrap_or_else(|e| ok(e));
            (rows_runner(f.to_row_groups(), conv, is_gemv), "BCR as row groups".to_string())
        }
        Scheme::Bcr { block } => {
            let f = BcrCompact::encode(layer, &p.values, &p.mask, block.rows(), block.cols())
                .unwrap_or_else(|e| ok(e));
            let c = BcrConv::new(f, conv).unwrap_or_else(|e| ok(e));
            if is_gemv {
                (Runner::GemvBcr(c), "BCR-compact".to_string())
            } else {
                let sc = c.scratch();
                (Runner::Bcr(c, sc), "BCR-compact".to_string())
            }
        }
        Scheme::Pattern(_) => {
            let lib = library.unwrap_or_else(|| panic!("pattern library"));
            let f = Fkw::encode(layer, &p.values, &p.mask, &lib).unwrap_or_else(|e| ok(e));
            let c = FkwConv::new(f, conv).unwrap_or_else(|e| ok(e));
            let sc = c.scratch();
            (Runner::Fkw(c, sc), "FKW".to_string())
        }
        other => panic!("no kernel for {other}"),
    };
    (runner, kernel, p.values, density)
}

fn rows_runner(m: RowGroupMatrix, conv: ConvShape, is_gemv: bool) -> Runner {
    if is_gemv {
        Runner::GemvRows(m)
    } else {
        let c = RowGroupConv::new(m, conv).unwrap_or_else(|e| panic!("{e}"));
        let s = ConvScratch::for_conv(&c);
        Runner::Rows(c, s)
    }
}

/// Dense computation of `w` on `x` by the fastest dense path for this shape; returns the time
/// in ms at `threads` and the output.
struct Dense {
    conv: ConvShape,
    is_gemv: bool,
    col: Vec<f32>,
    direct: Option<(RowGroupConv, ConvScratch)>,
    /// The channel-vector kernel, on ungrouped maps of at most 256 positions and on ungrouped
    /// layers with a kernel larger than 1x1.
    channel_vector: Option<(ChannelVectorConv, ConvScratch)>,
}

impl Dense {
    fn new(conv: ConvShape, is_gemv: bool, w: &[f32]) -> Self {
        let direct = (!is_gemv).then(|| {
            let groups = RowGroupMatrix::uniform_groups(conv.out_channels, conv.out_per_group(), 8);
            let m = RowGroupMatrix::from_dense(conv.out_channels, conv.cols(), w, None, &groups)
                .unwrap_or_else(|e| panic!("{e}"));
            let c = RowGroupConv::new(m, conv).unwrap_or_else(|e| panic!("{e}"));
            let s = ConvScratch::for_conv(&c);
            (c, s)
        });
        let small_or_spatial = conv.output_positions() <= 256 || conv.kernel_volume() > 1;
        let channel_vector = (!is_gemv && conv.groups == 1 && small_or_spatial).then(|| {
            let c = ChannelVectorConv::new(conv, w).unwrap_or_else(|e| panic!("{e}"));
            let s = c.scratch(16);
            (c, s)
        });
        Dense { conv, is_gemv, col: vec![0.0; dense::im2col_len(&conv)], direct, channel_vector }
    }

    /// Every dense variant's (name, median ms).
    fn time(
        &mut self,
        isa: Isa,
        w: &[f32],
        x: &[f32],
        threads: usize,
        min_time: f64,
    ) -> Vec<(String, f64)> {
        let mut y = vec![0.0f32; self.conv.out_channels * self.conv.output_positions()];
        let mut out = Vec::new();
        if self.is_gemv {
            let (m, k) = (self.conv.out_channels, self.conv.in_channels);
            out.push((
                "sgemv".into(),
                median_ms(min_time, || {
                    dense::sgemv(isa, m, k, w, x, &mut y, threads).unwrap_or_else(|e| panic!("{e}"))
                }),
            ));
            out.push((
                "gemm-crate".into(),
                median_ms(min_time, || {
                    dense::sgemm(m, k, 1, w, x, &mut y, threads).unwrap_or_else(|e| panic!("{e}"))
                }),
            ));
            return out;
        }
        let conv = self.conv;
        let col = &mut self.col;
        out.push((
            "im2col+gemm".into(),
            median_ms(min_time, || {
                dense::conv_im2col(&conv, w, x, &mut y, col, threads)
                    .unwrap_or_else(|e| panic!("{e}"))
            }),
        ));
        if let Some((c, s)) = &mut self.direct {
            out.push((
                "direct".into(),
                median_ms(min_time, || {
                    c.run(isa, x, &mut y, s, threads).unwrap_or_else(|e| panic!("{e}"))
                }),
            ));
        }
        if let Some((c, s)) = &mut self.channel_vector {
            out.push((
                "channel-vector".into(),
                median_ms(min_time, || {
                    c.run(isa, x, &mut y, s, threads, Epilogue::default())
                        .unwrap_or_else(|e| panic!("{e}"))
                }),
            ));
        }
        out
    }

    /// Runs the dense variant named `variant` (as [`Dense::time`] names them) once.
    fn run(
        &mut self,
        variant: &str,
        isa: Isa,
        w: &[f32],
        x: &[f32],
        y: &mut [f32],
        threads: usize,
    ) {
        let (m, k) = (self.conv.out_channels, self.conv.in_channels);
        let r = match variant {
            "sgemv" => dense::sgemv(isa, m, k, w, x, y, threads),
            "gemm-crate" => dense::sgemm(m, k, 1, w, x, y, threads),
            "direct" => match &mut self.direct {
                Some((c, s)) => c.run(isa, x, y, s, threads),
                None => panic!("no direct dense kernel for a GEMV"),
            },
            "channel-vector" => match &mut self.channel_vector {
                Some((c, s)) => c.run(isa, x, y, s, threads, Epilogue::default()),
                None => panic!("no channel-vector kernel for this shape"),
            },
            _ => dense::conv_im2col(&self.conv, w, x, y, &mut self.col, threads),
        };
        if let Err(e) = r {
            panic!("dense {variant}: {e}");
        }
    }

    fn output(&mut self, w: &[f32], x: &[f32]) -> Vec<f32> {
        let mut y = vec![0.0f32; self.conv.out_channels * self.conv.output_positions()];
        let mut col = vec![0.0; dense::im2col_len(&self.conv)];
        dense::conv_im2col(&self.conv, w, x, &mut y, &mut col, 1).unwrap_or_else(|e| panic!("{e}"));
        y
    }
}

/// Runs the suite, calling `progress(done, total, label)` after each point.
pub fn run_suite(
    cfg: &SuiteConfig,
    isa: Isa,
    mut progress: impl FnMut(usize, usize, &str),
) -> Vec<Point> {
    let shapes: Vec<Shape> = shapes()
        .into_iter()
        .filter(|s| {
            let name = match s {
                Shape::Conv(n, _) | Shape::Gemm(n, ..) => *n,
            };
            cfg.only.is_empty() || cfg.only.iter().any(|o| name.contains(o.as_str()))
        })
        .collect();
    let total: usize = shapes
        .iter()
        .map(|s| cfg.threads.len() * (1 + schemes_for(s).len() * cfg.sparsities.len()))
        .sum();
    let mut done = 0;
    let mut points = Vec::new();
    for (si, shape) in shapes.iter().enumerate() {
        let (name, conv, is_gemv) = match *shape {
            Shape::Conv(n, c) => (n, c, false),
            Shape::Gemm(n, rows, cols, batch) => (
                n,
                ConvShape::conv2d(cols, rows, [1, batch], [1, 1], 1, 0)
                    .unwrap_or_else(|e| panic!("{e}")),
                batch == 1,
            ),
        };
        let layer = if is_gemv || matches!(shape, Shape::Gemm(..)) {
            Layer::linear(name, conv.out_channels, conv.in_channels)
                .unwrap_or_else(|e| panic!("{e}"))
        } else {
            conv.layer(name).unwrap_or_else(|e| panic!("{e}"))
        };
        let w = random(layer.geometry.len(), 100 + si as u64);
        let x = random(conv.in_channels * conv.input_plane(), 200 + si as u64);
        let flops = conv.flops() as f64;
        let mut dense = Dense::new(conv, is_gemv, &w);
        let mut dense_best = std::collections::BTreeMap::new();
        for &t in &cfg.threads {
            let variants = dense.time(isa, &w, &x, t, cfg.min_time);
            let best = variants.iter().map(|v| v.1).fold(f64::INFINITY, f64::min);
            if let Some(v) = variants.iter().find(|v| v.1 == best) {
                dense_best.insert(t, v.0.clone());
            }
            for (kernel, ms) in variants {
                points.push(Point {
                    shape: name.into(),
                    scheme: "dense".into(),
                    kernel,
                    sparsity: 0.0,
                    density: 1.0,
                    threads: t,
                    median_ms: ms,
                    effective_gflops: flops / ms / 1e6,
                    speedup: best / ms,
                    flop_reduction: 1.0,
                    max_rel_error: 0.0,
                });
            }
            done += 1;
            progress(done, total, &format!("{name} dense {t}t"));
        }
        for scheme in schemes_for(shape) {
            for &sparsity in &cfg.sparsities {
                let (mut runner, kernel, pruned, density) =
                    build(scheme, &layer, conv, is_gemv, &w, sparsity);
                let want = dense.output(&pruned, &x);
                let mut y = vec![0.0f32; want.len()];
                runner.run(isa, &x, &mut y, 1);
                let err = rel_error(&y, &want);
                for &t in &cfg.threads {
                    let mut yd = vec![0.0f32; want.len()];
                    let (ms, speedup) = crate::timing::paired_speedup(
                        cfg.min_time,
                        || runner.run(isa, &x, &mut y, t),
                        || dense.run(&dense_best[&t], isa, &w, &x, &mut yd, t),
                    );
                    points.push(Point {
                        shape: name.into(),
                        scheme: scheme.into(),
                        kernel: kernel.clone(),
                        sparsity,
                        density,
                        threads: t,
                        median_ms: ms,
                        effective_gflops: flops / ms / 1e6,
                        speedup,
                        flop_reduction: 1.0 / density.max(1e-12),
                        max_rel_error: err,
                    });
                    done += 1;
                    progress(done, total, &format!("{name} {scheme} {sparsity} {t}t"));
                }
            }
        }
    }
    points
}

/// A one-table summary (1 thread): per shape, the fastest dense kernel and each scheme's
/// speed-up at 87.5% (8x) and 90% sparsity.
pub fn summary_markdown(points: &[Point]) -> String {
    let mut shapes: Vec<&str> = points.iter().map(|p| p.shape.as_str()).collect();
    shapes.dedup();
    let mut schemes: Vec<&str> =
        points.iter().filter(|p| p.scheme != "dense").map(|p| p.scheme.as_str()).collect();
    schemes.sort_unstable();
    schemes.dedup();
    let find = |shape: &str, scheme: &str, sparsity: f64| {
        points.iter().find(|p| {
            p.shape == shape
                && p.scheme == scheme
                && p.threads == 1
                && (p.sparsity - sparsity).abs() < 1e-9
        })
    };
    let mut md = String::from("| shape | dense ms (GFLOP/s) |");
    for s in &schemes {
        md.push_str(&format!(" {s} 8x / 10x |"));
    }
    md.push_str("\n|---|---|");
    md.push_str(&"---|".repeat(schemes.len()));
    md.push('\n');
    for shape in shapes {
        let Some(dense) = points
            .iter()
            .filter(|p| p.shape == shape && p.scheme == "dense" && p.threads == 1)
            .min_by(|a, b| a.median_ms.total_cmp(&b.median_ms))
        else {
            continue;
        };
        md.push_str(&format!(
            "| {shape} | {:.3} ({:.0}) |",
            dense.median_ms, dense.effective_gflops
        ));
        for s in &schemes {
            match (find(shape, s, 0.875), find(shape, s, 0.9)) {
                (Some(a), Some(b)) => {
                    md.push_str(&format!(" {:.2}x / {:.2}x |", a.speedup, b.speedup))
                }
                _ => md.push_str(" — |"),
            }
        }
        md.push('\n');
    }
    md
}

/// The Markdown report of a suite run.
pub fn markdown(points: &[Point], isa: Isa, cfg: &SuiteConfig) -> String {
    let mut md = String::new();
    md.push_str("# Kernel benchmark\n\n");
    md.push_str(
        "## Summary (1 thread; speed-up over the fastest dense kernel at 87.5% / 90% sparsity)\n\n",
    );
    md.push_str(&summary_markdown(points));
    md.push('\n');
    md.push_str(&format!(
        "Batch 1, f32, instruction set `{isa}`, median of >= 10 runs and >= {} s per point (dense); a sparse point is timed in 5 rounds interleaved with the fastest dense kernel at the same thread count, its `ms` the median over the rounds and its `speedup` the median of the rounds' dense / sparse ratios (the machine's speed drifts within a run; each ratio compares two kernels timed side by side); `FLOP red.` = dense FLOPs / kept FLOPs, the ideal speed-up. `err` = max |sparse - dense on the same pruned weights| / max |output|.\n\n",
        cfg.min_time
    ));
    let mut shapes: Vec<&str> = points.iter().map(|p| p.shape.as_str()).collect();
    shapes.dedup();
    for shape in shapes {
        md.push_str(&format!("## {shape}\n\n"));
        md.push_str("| scheme | kernel | sparsity | threads | ms | GFLOP/s eff. | speedup | FLOP red. | err |\n|---|---|---|---|---|---|---|---|---|\n");
        for p in points.iter().filter(|p| p.shape == shape) {
            md.push_str(&format!(
                "| {} | {} | {:.1}% | {} | {:.4} | {:.1} | {:.2}x | {:.2}x | {:.1e} |\n",
                p.scheme,
                p.kernel,
                100.0 * p.sparsity,
                p.threads,
                p.median_ms,
                p.effective_gflops,
                p.speedup,
                p.flop_reduction,
                p.max_rel_error
            ));
        }
        md.push('\n');
    }
    md
}
