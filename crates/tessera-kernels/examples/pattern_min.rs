//! The pattern (FKW) kernel at 8x in both execution orders against the faster dense kernel,
//! 1 thread, batch 1, minimum of runs (see `structured_conv_min`): a probe for A/B timing of
//! pattern-kernel changes between builds.
//! `cargo run --release -p tessera-kernels --example pattern_min [seconds]`

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a command-line table

#[path = "common/timing.rs"]
mod timing;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tessera_kernels::formats::fkw::{Fkw, FkwConv, FkwOrder};
use tessera_kernels::{ConvScratch, ConvShape, Isa, RowGroupConv, RowGroupMatrix};
use tessera_sparsity::{Layer, PatternLibrary, Scheme, Target, Tiling};

fn main() {
    let seconds: f64 = std::env::args().nth(1).map_or(0.5, |s| s.parse().unwrap());
    // An optional second argument: the one shape (index into the list) to time.
    let only: Option<usize> = std::env::args().nth(2).map(|s| s.parse().unwrap());
    let isa = Isa::detect();
    println!("| shape | dense us | chosen | chosen us | channel-major | filter-major |");
    println!("|---|---|---|---|---|---|");
    for (i, (c, hw, out)) in [
        (256usize, 8usize, 256usize),
        (128, 16, 128),
        (64, 56, 64),
        (16, 32, 16),
        (32, 16, 32),
        (64, 8, 64),
        (512, 4, 512),
        (512, 2, 512),
    ]
    .into_iter()
    .enumerate()
    {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let layer = Layer::conv2d("conv", out, c, 3, 3).unwrap();
        let shape = ConvShape::conv2d(c, out, [hw, hw], [3, 3], 1, 1).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let w: Vec<f32> = (0..out * c * 9).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x: Vec<f32> = (0..c * hw * hw).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut y = vec![0.0f32; out * hw * hw];
        let groups = RowGroupMatrix::uniform_groups(out, out, 8);
        let direct = RowGroupConv::new(
            RowGroupMatrix::from_dense(out, c * 9, &w, None, &groups).unwrap(),
            shape,
        )
        .unwrap();
        let mut s = ConvScratch::for_conv(&direct);
        let dense_us = timing::min_us(seconds, || direct.run(isa, &x, &mut y, &mut s, 1).unwrap());
        let lib = PatternLibrary::extract(8, [(&layer, &w[..])]).unwrap();
        let scheme: Scheme = format!("pattern:8+connectivity@{lib}").parse().unwrap();
        let p = scheme.project_with(&layer, &w, Target::Sparsity(0.875), Tiling::Pad).unwrap();
        let fkw = Fkw::encode(&layer, &p.values, &p.mask, &lib).unwrap();
        let chosen = FkwConv::new(fkw.clone(), shape).unwrap().order();
        let mut time = |order| {
            let conv = FkwConv::with_order(fkw.clone(), shape, Some(order)).unwrap();
            let mut s = conv.scratch();
            timing::min_us(seconds, || conv.run(isa, &x, &mut y, &mut s, 1).unwrap())
        };
        let cell = |us: f64| format!("{us:.1} ({:.2}x)", dense_us / us);
        println!(
            "| {c}->{out}@{hw}x{hw} | {dense_us:.1} | {chosen:?} | {} | {} | {} |",
            cell(time(chosen)),
            cell(time(FkwOrder::ChannelMajor)),
            cell(time(FkwOrder::FilterMajor)),
        );
    }
}
