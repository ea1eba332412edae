//! Block-punched 8x on ResNet-20's 3x3 layers with the fused epilogue (bias + ReLU) with and
//! without a fused residual, against the same kernel plus a separate add pass, 1 thread,
//! minimum of many runs (microseconds).
//! `cargo run --release -p tessera-kernels --example residual_epilogue`

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a command-line table

#[path = "common/timing.rs"]
mod timing;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tessera_kernels::formats::block_punched::BlockPunched;
use tessera_kernels::{Clamp, ConvScratch, ConvShape, Epilogue, Isa, RowGroupConv};
use tessera_sparsity::{Layer, Scheme, Target, Tiling};

fn main() {
    let isa = Isa::detect();
    println!("| shape | fused bias+ReLU us | + residual fused us | + separate add us |");
    println!("|---|---|---|---|");
    for (c, hw) in [(16usize, 32usize), (32, 16), (64, 8)] {
        let layer = Layer::conv2d("conv", c, c, 3, 3).unwrap();
        let shape = ConvShape::conv2d(c, c, [hw, hw], [3, 3], 1, 1).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let w: Vec<f32> = (0..c * c * 9).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x: Vec<f32> = (0..c * hw * hw).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let res: Vec<f32> = (0..c * hw * hw).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let bias: Vec<f32> = (0..c).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut y = vec![0.0f32; c * hw * hw];
        let mut z = vec![0.0f32; c * hw * hw];
        let s: Scheme = "block-punched:8x4".parse().unwrap();
        let p = s.project_with(&layer, &w, Target::Sparsity(0.875), Tiling::Pad).unwrap();
        let bp = BlockPunched::encode(&layer, &p.values, &p.mask, 8, 4).unwrap();
        let bp = RowGroupConv::new(bp.to_row_groups(), shape).unwrap();
        let mut s = ConvScratch::for_conv(&bp);
        let ep = Epilogue { bias: Some(&bias), clamp: Clamp::Relu, residual: None };
        let plain = timing::min_us(0.3, || bp.run_fused(isa, &x, &mut y, &mut s, 1, ep).unwrap());
        let epr = Epilogue { bias: Some(&bias), clamp: Clamp::Relu, residual: Some(&res) };
        let fused = timing::min_us(0.3, || bp.run_fused(isa, &x, &mut y, &mut s, 1, epr).unwrap());
        let epn = Epilogue { bias: Some(&bias), clamp: Clamp::None, residual: None };
        let separate = timing::min_us(0.3, || {
            bp.run_fused(isa, &x, &mut y, &mut s, 1, epn).unwrap();
            for ((o, a), b) in z.iter_mut().zip(&y).zip(&res) {
                *o = (a + b).max(0.0);
            }
        });
        println!("| {c}@{hw}x{hw} | {plain:.2} | {fused:.2} | {separate:.2} |");
    }
}
