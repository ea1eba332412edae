//! Unstructured CSR (the row-group engine, one row per group) on the conv and FC
//! shapes at 50-95% sparsity, 1 thread, batch 1, minimum over many runs — the figures to put
//! next to scipy's CSR (`../shared/tools/peers/bench_sparse.py`, which multiplies the im2col
//! matrix and so leaves out the im2col our kernel does implicitly).
//! `cargo run --release -p tessera-kernels --example csr_min`

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a command-line table

#[path = "common/timing.rs"]
mod timing;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tessera_kernels::formats::csr::Csr;
use tessera_kernels::{ConvScratch, ConvShape, Isa, RowGroupConv, rowgroup};
use tessera_sparsity::{Layer, Scheme, Target, Tiling};

fn main() {
    let isa = Isa::detect();
    let sparsities = [0.5, 0.75, 0.9, 0.95];
    println!("| shape | CSR ms at 50% | 75% | 90% | 95% |");
    println!("|---|---|---|---|---|");
    // (name, in channels, map, out channels, kernel) for convolutions; GEMV / FC below.
    for (name, c, hw, out, k) in [
        ("conv3x3 256@8x8", 256usize, 8usize, 256usize, 3usize),
        ("conv3x3 128@16x16", 128, 16, 128, 3),
        ("conv3x3 64@56x56", 64, 56, 64, 3),
        ("conv1x1 256->64@56x56", 256, 56, 64, 1),
    ] {
        let layer = Layer::conv2d("conv", out, c, k, k).unwrap();
        let shape = ConvShape::conv2d(c, out, [hw, hw], [k, k], 1, k / 2).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let w: Vec<f32> = (0..out * c * k * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x: Vec<f32> = (0..c * hw * hw).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut y = vec![0.0f32; out * hw * hw];
        let mut row = format!("| {name} |");
        for sp in sparsities {
            let p = Scheme::Unstructured
                .project_with(&layer, &w, Target::Sparsity(sp), Tiling::Pad)
                .unwrap();
            let g = &layer.geometry;
            let m = Csr::encode(g.rows(), g.cols(), &p.values, &p.mask).unwrap().to_row_groups();
            let conv = RowGroupConv::new(m, shape).unwrap();
            let mut s = ConvScratch::for_conv(&conv);
            row += &format!(
                " {:.3} |",
                1e-3 * timing::min_us(0.5, || conv.run(isa, &x, &mut y, &mut s, 1).unwrap())
            );
        }
        println!("{row}");
    }
    // BERT FC: W[3072 x 768] on X[768 x 128]; GEMV 4096.
    for (name, rows, cols, n) in [
        ("BERT FC 3072x768 @ 768x128", 3072usize, 768usize, 128usize),
        ("GEMV 4096", 4096, 4096, 1),
    ] {
        let layer = Layer::linear("fc", rows, cols).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x: Vec<f32> = (0..cols * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut y = vec![0.0f32; rows * n];
        let mut row = format!("| {name} |");
        for sp in sparsities {
            let p = Scheme::Unstructured
                .project_with(&layer, &w, Target::Sparsity(sp), Tiling::Pad)
                .unwrap();
            let m = Csr::encode(rows, cols, &p.values, &p.mask).unwrap().to_row_groups();
            let ms = if n == 1 {
                1e-3 * timing::min_us(0.5, || rowgroup::gemv(isa, &m, &x, &mut y, 1).unwrap())
            } else {
                let conv = RowGroupConv::gemm(m, n).unwrap();
                let mut s = ConvScratch::for_conv(&conv);
                1e-3 * timing::min_us(0.5, || conv.run(isa, &x, &mut y, &mut s, 1).unwrap())
            };
            row += &format!(" {ms:.3} |");
        }
        println!("{row}");
    }
}
