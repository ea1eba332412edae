//! Block-punched and BCR at 8x on 1 and 2 threads, with block-punched also run on an input
//! packed once beforehand (`run_prepacked`): the gap between the two 2-thread times is what
//! moving the freshly packed input between the cores costs. Prints the minimum and median
//! microseconds (and quantiles 10/25/50/75/90%) of at least 200 runs; the 2-thread times on a
//! shared 2-vCPU machine are bimodal, so compare builds by running this alternately.
//! `cargo run --release -p tessera-kernels --example threads_min`

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a command-line table

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use std::time::Instant;
use tessera_kernels::formats::bcr::BcrCompact;
use tessera_kernels::formats::block_punched::BlockPunched;
use tessera_kernels::{ConvScratch, ConvShape, Isa, RowGroupConv};
use tessera_sparsity::{Layer, Scheme, Target, Tiling};

/// Minimum and median microseconds of at least 200 runs of `f` (after 50 warm-up runs),
/// printing the 10/25/50/75/90% quantiles.
fn stats(mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..50 {
        f();
    }
    let mut v = Vec::new();
    let start = Instant::now();
    while v.len() < 200 || start.elapsed().as_secs_f64() < 0.5 {
        let t = Instant::now();
        f();
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let q: Vec<f64> =
        [0.1, 0.25, 0.5, 0.75, 0.9].iter().map(|&p| v[(p * n as f64) as usize]).collect();
    println!("    quantiles {q:.1?}");
    (v[0], v[n / 2])
}

fn main() {
    let isa = Isa::detect();
    for (c, hw, out, k) in
        [(256usize, 8usize, 256usize, 3usize), (128, 16, 128, 3), (64, 56, 64, 3)]
    {
        let layer = Layer::conv2d("conv", out, c, k, k).unwrap();
        let shape = ConvShape::conv2d(c, out, [hw, hw], [k, k], 1, k / 2).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let w: Vec<f32> = (0..out * c * k * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x: Vec<f32> = (0..c * hw * hw).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut y = vec![0.0f32; out * hw * hw];
        let project = |scheme: &str| {
            let s: Scheme = scheme.parse().unwrap();
            s.project_with(&layer, &w, Target::Sparsity(0.875), Tiling::Pad).unwrap()
        };
        let p = project("bcr:8x32");
        let bcr =
            BcrCompact::encode(&layer, &p.values, &p.mask, 8, 32).unwrap().bind(shape).unwrap();
        let mut s = bcr.scratch();
        let p = project("block-punched:8x4");
        let bp = BlockPunched::encode(&layer, &p.values, &p.mask, 8, 4).unwrap();
        let bp = RowGroupConv::new(bp.to_row_groups(), shape).unwrap();
        let mut s2 = ConvScratch::for_conv(&bp);
        for th in [1, 2] {
            let b = stats(|| bcr.run(isa, &x, &mut y, &mut s, th).unwrap());
            let p = stats(|| bp.run(isa, &x, &mut y, &mut s2, th).unwrap());
            println!(
                "{c}@{hw} threads {th}: BCR min {:.1} med {:.1} | BP min {:.1} med {:.1}",
                b.0, b.1, p.0, p.1
            );
            let mut packed = vec![0.0f32; bp.layout().packed_len()];
            bp.layout().pack_with(isa, &x, &mut packed);
            let e = tessera_kernels::Epilogue::default();
            let q = stats(|| bp.run_prepacked(isa, &packed, &mut y, &mut s2, th, e).unwrap());
            println!("{c}@{hw} threads {th}: BP prepacked min {:.1} med {:.1}", q.0, q.1);
        }
    }
}
