//! BCR 8x32 GEMV (batch-1 FC / LSTM gates) against the dense GEMV and BCR run as row groups,
//! for profiling: `ROWS COLS [SPARSITY [SECONDS]]` (default 4096 2048 0.9 2: the LSTM gates
//! of `bench kernels`), 1 thread, minimum of runs (microseconds). Weights are uniform in
//! [-1, 1) from seed `SEED` (default 1); `ONLY_BCR=1` times BCR-compact alone (for `perf`).
//! `cargo run --release -p tessera-kernels --example bcr_gemv -- 4096 2048 0.9`

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a command-line probe

#[path = "common/timing.rs"]
mod timing;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tessera_kernels::formats::bcr::BcrCompact;
use tessera_kernels::{Isa, dense, rowgroup};
use tessera_sparsity::{Layer, Scheme, Target, Tiling};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rows: usize = args.first().map_or(4096, |a| a.parse().unwrap());
    let cols: usize = args.get(1).map_or(2048, |a| a.parse().unwrap());
    let sparsity: f64 = args.get(2).map_or(0.9, |a| a.parse().unwrap());
    let seconds: f64 = args.get(3).map_or(2.0, |a| a.parse().unwrap());
    let isa = Isa::detect();
    let layer = Layer::linear("fc", rows, cols).unwrap();
    let seed = std::env::var("SEED").map_or(1, |v| v.parse().unwrap());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let mut y = vec![0.0f32; rows];
    let s: Scheme = "bcr:8x32".parse().unwrap();
    let p = s.project_with(&layer, &w, Target::Sparsity(sparsity), Tiling::Pad).unwrap();
    let m = BcrCompact::encode(&layer, &p.values, &p.mask, 8, 32).unwrap();
    let groups = m.to_row_groups();
    let d = m.decode();
    let kept_rows = (0..8).filter(|&r| (0..32).any(|c| d[r * cols + c] != 0.0)).count();
    let kept_cols = (0..32).filter(|&c| (0..8).any(|r| d[r * cols + c] != 0.0)).count();
    println!(
        "{} blocks of {kept_rows} kept rows x {kept_cols} kept columns (the first)",
        m.blocks()
    );
    let bcr = tessera_kernels::formats::bcr::BcrConv::gemm(m, 1).unwrap();
    if std::env::var_os("ONLY_BCR").is_some() {
        let us = timing::min_us(seconds, || bcr.gemv(isa, &x, &mut y, 1).unwrap());
        println!("BCR-compact {us:.1} us");
        return;
    }
    let dense_us = timing::min_us(seconds, || {
        dense::sgemv(isa, rows, cols, &p.values, &x, &mut y, 1).unwrap()
    });
    let bcr_us = timing::min_us(seconds, || bcr.gemv(isa, &x, &mut y, 1).unwrap());
    let rows_us = timing::min_us(seconds, || rowgroup::gemv(isa, &groups, &x, &mut y, 1).unwrap());
    println!(
        "bcr:8x32 at {sparsity} on {rows}x{cols}: dense {dense_us:.1} us, BCR-compact {bcr_us:.1} us ({:.2}x), as row groups {rows_us:.1} us ({:.2}x)",
        dense_us / bcr_us,
        dense_us / rows_us
    );
}
