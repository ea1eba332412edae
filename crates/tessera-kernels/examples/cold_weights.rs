//! Block-punched 8x4 and BCR 8x32 at 8x on VGG-11's 512-channel small maps with their weights
//! evicted from L2 before every run (an 8 MiB buffer is read in between, as in a whole plan
//! whose weights exceed L2), against the same kernels run back to back (weights L2-resident):
//! how far the weight stream from L3 sets these layers' time. Minimum of runs, 1 thread.
//! `cargo run -p tessera-kernels --example cold_weights -- [SECONDS]`

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a command-line probe

#[path = "common/timing.rs"]
mod timing;

use std::time::Instant;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tessera_kernels::formats::bcr::BcrCompact;
use tessera_kernels::formats::block_punched::BlockPunched;
use tessera_kernels::{ConvScratch, ConvShape, Isa, RowGroupConv};
use tessera_sparsity::{Layer, Scheme, Target, Tiling};

/// Minimum over runs of `f`, each after `evict` (not timed).
fn cold_min_us(seconds: f64, mut evict: impl FnMut(), mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    let (start, mut runs) = (Instant::now(), 0);
    while runs < 50 || start.elapsed().as_secs_f64() < seconds {
        evict();
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64() * 1e6);
        runs += 1;
    }
    best
}

fn main() {
    let seconds = std::env::args().nth(1).map_or(1.0, |s| s.parse().unwrap());
    let isa = Isa::detect();
    let mut junk = vec![1.0f32; 2 << 20];
    let mut evict = || {
        let mut s = 0.0f32;
        for v in junk.iter_mut() {
            s += *v;
            *v = s * 1e-9 + 1.0;
        }
        std::hint::black_box(s);
    };
    println!("| shape | BP hot us | BP cold us | BCR hot us | BCR cold us |");
    println!("|---|---|---|---|---|");
    for (c, hw, out) in [(256usize, 4usize, 512usize), (512, 4, 512), (512, 2, 512)] {
        let layer = Layer::conv2d("conv", out, c, 3, 3).unwrap();
        let shape = ConvShape::conv2d(c, out, [hw, hw], [3, 3], 1, 1).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let w: Vec<f32> = (0..out * c * 9).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x: Vec<f32> = (0..c * hw * hw).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut y = vec![0.0f32; out * hw * hw];
        let project = |scheme: &str| {
            let s: Scheme = scheme.parse().unwrap();
            s.project_with(&layer, &w, Target::Sparsity(0.875), Tiling::Pad).unwrap()
        };
        let p = project("block-punched:8x4");
        let bp = BlockPunched::encode(&layer, &p.values, &p.mask, 8, 4).unwrap();
        let bp = RowGroupConv::new(bp.to_row_groups(), shape).unwrap();
        let mut s = ConvScratch::for_conv(&bp);
        let bp_hot = timing::min_us(seconds, || bp.run(isa, &x, &mut y, &mut s, 1).unwrap());
        let bp_cold =
            cold_min_us(seconds, &mut evict, || bp.run(isa, &x, &mut y, &mut s, 1).unwrap());
        let p = project("bcr:8x32");
        let bcr =
            BcrCompact::encode(&layer, &p.values, &p.mask, 8, 32).unwrap().bind(shape).unwrap();
        let mut s = bcr.scratch();
        let bcr_hot = timing::min_us(seconds, || bcr.run(isa, &x, &mut y, &mut s, 1).unwrap());
        let bcr_cold =
            cold_min_us(seconds, &mut evict, || bcr.run(isa, &x, &mut y, &mut s, 1).unwrap());
        println!(
            "| conv3x3 {c}->{out}@{hw}x{hw} | {bp_hot:.1} | {bp_cold:.1} | {bcr_hot:.1} | {bcr_cold:.1} |"
        );
    }
}
