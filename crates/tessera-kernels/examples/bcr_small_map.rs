//! BCR 8x32 at 8x on one convolution (by default VGG-11's small maps), alone, for profiling
//! (`perf record`): runs the kernel for about `SECONDS` (default 3) and prints the minimum
//! time per run. Arguments: `C HW OUT [SECONDS [KERNEL]]` (KERNEL 3 or 1, default 3).
//! `cargo run -p tessera-kernels --example bcr_small_map -- 512 2 512`

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a command-line probe

#[path = "common/timing.rs"]
mod timing;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tessera_kernels::formats::bcr::BcrCompact;
use tessera_kernels::{ConvShape, Isa};
use tessera_sparsity::{Layer, Scheme, Target, Tiling};

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (c, hw, out) = (a[0], a[1], a[2]);
    let seconds = a.get(3).copied().unwrap_or(3) as f64;
    let k = a.get(4).copied().unwrap_or(3);
    let isa = Isa::detect();
    let layer = Layer::conv2d("conv", out, c, k, k).unwrap();
    let shape = ConvShape::conv2d(c, out, [hw, hw], [k, k], 1, k / 2).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let w: Vec<f32> = (0..out * c * k * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let x: Vec<f32> = (0..c * hw * hw).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let mut y = vec![0.0f32; out * hw * hw];
    let s: Scheme = "bcr:8x32".parse().unwrap();
    let p = s.project_with(&layer, &w, Target::Sparsity(0.875), Tiling::Pad).unwrap();
    let bcr = BcrCompact::encode(&layer, &p.values, &p.mask, 8, 32).unwrap().bind(shape).unwrap();
    let mut s = bcr.scratch();
    let us = timing::min_us(seconds, || bcr.run(isa, &x, &mut y, &mut s, 1).unwrap());
    println!("bcr 8x32 8x conv{k}x{k} {c}->{out}@{hw}x{hw}: {us:.1} us");
}
