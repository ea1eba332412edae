//! BCR 8x32 and block-punched 8x4 at 8x on ResNet-20's 3x3 layers as a plan runs them: the
//! input pre-packed by its producer (stride 1; a stride-2 layer packs its own), bias + ReLU
//! fused, the output stored into the next 3x3 convolution's padded layout; against the same
//! kernels run plainly (packing their input, NCHW output, no epilogue); and block-punched as
//! in a plan right after 1 MiB of other writes (as a plan's other layers leave the caches).
//! 1 thread, minimum of many runs (microseconds).
//! `cargo run --release -p tessera-kernels --example in_plan_conv [-- SHAPE SECONDS [1]]` (with
//! arguments: only BCR as in a plan, on the table's row `SHAPE`, for profiling, and, on stride-1
//! rows, chained: each run reading what the previous one wrote, as a plan's layers do; a third
//! argument `1` profiles block-punched as in a plan instead).

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a command-line table

#[path = "common/timing.rs"]
mod timing;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tessera_kernels::formats::bcr::BcrCompact;
use tessera_kernels::formats::block_punched::BlockPunched;
use tessera_kernels::{Clamp, ConvScratch, ConvShape, Epilogue, Isa, RowGroupConv};
use tessera_sparsity::{Layer, Scheme, Target, Tiling};

fn main() {
    let isa = Isa::detect();
    // `SHAPE SECONDS`: only BCR as in a plan on shape `SHAPE` (a row of the table, from 0) for
    // about `SECONDS`, for `perf record`.
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let profile = args.first().copied();
    let seconds = args.get(1).map_or(0.5, |&s| s as f64);
    let profile_block_punched = args.get(2) == Some(&1);
    println!(
        "| shape | BCR plain us | BCR as in a plan us | block-punched plain us | block-punched as in a plan us | the same after 1 MiB of writes |"
    );
    println!("|---|---|---|---|---|---|");
    for (c, hw, out, stride) in [
        (16usize, 32usize, 16usize, 1usize),
        (32, 16, 32, 1),
        (64, 8, 64, 1),
        (16, 32, 32, 2),
        (32, 16, 64, 2),
    ]
    .into_iter()
    .enumerate()
    .filter(|&(i, _)| profile.is_none_or(|p| p == i))
    .map(|(_, s)| s)
    {
        let layer = Layer::conv2d("conv", out, c, 3, 3).unwrap();
        let shape = ConvShape::conv2d(c, out, [hw, hw], [3, 3], stride, 1).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let w: Vec<f32> = (0..out * c * 9).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x: Vec<f32> = (0..c * hw * hw).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let bias: Vec<f32> = (0..out).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let layout = shape.layout();
        let mut packed = vec![0.0f32; layout.packed_len()];
        layout.pack(&x, &mut packed);
        let [_, oh, ow] = shape.output();
        let next = ConvShape::conv2d(out, out, [oh, ow], [3, 3], 1, 1).unwrap();
        let target = next.layout().as_target().unwrap();
        let mut y = vec![0.0f32; out * oh * ow];
        let mut y_packed = vec![0.0f32; target.len(out)];
        let ep = Epilogue { bias: Some(&bias), clamp: Clamp::Relu, residual: None };
        let project = |scheme: &str| {
            let s: Scheme = scheme.parse().unwrap();
            s.project_with(&layer, &w, Target::Sparsity(0.875), Tiling::Pad).unwrap()
        };

        if profile_block_punched {
            let p = project("block-punched:8x4");
            let bp = BlockPunched::encode(&layer, &p.values, &p.mask, 8, 4).unwrap();
            let mut bp = RowGroupConv::new(bp.to_row_groups(), shape).unwrap();
            let mut s = ConvScratch::for_conv(&bp);
            bp.set_output_target(target).unwrap();
            let t = timing::min_us(seconds, || {
                if stride == 1 {
                    bp.run_prepacked(isa, &packed, &mut y_packed, &mut s, 1, ep).unwrap()
                } else {
                    bp.run_fused(isa, &x, &mut y_packed, &mut s, 1, ep).unwrap()
                }
            });
            println!("block-punched as in a plan: {t:.2} us");
            return;
        }
        let p = project("bcr:8x32");
        let bcr =
            BcrCompact::encode(&layer, &p.values, &p.mask, 8, 32).unwrap().bind(shape).unwrap();
        let mut s = bcr.scratch();
        let bcr_plain = timing::min_us(0.5, || bcr.run(isa, &x, &mut y, &mut s, 1).unwrap());
        let mut bcr_t = bcr.clone();
        bcr_t.set_output_target(target).unwrap();
        let bcr_plan = timing::min_us(seconds, || {
            if stride == 1 {
                bcr_t.run_prepacked(isa, &packed, &mut y_packed, &mut s, 1, ep).unwrap()
            } else {
                bcr_t.run_fused(isa, &x, &mut y_packed, &mut s, 1, ep).unwrap()
            }
        });

        // Stride 1, as many inputs as outputs: two buffers in turn, each run reading what the
        // previous one wrote (a plan's chain of such layers).
        let mut chain = (f64::NAN, f64::NAN);
        if stride == 1 && c == out {
            let len = target.len(out).max(packed.len());
            let mut a = vec![0.0f32; len];
            a[..packed.len()].copy_from_slice(&packed);
            let mut b = vec![0.0f32; len];
            let mut times = Vec::new();
            for i in 0..4000 {
                let t = std::time::Instant::now();
                let (n_in, n_out) = (packed.len(), target.len(out));
                bcr_t.run_prepacked(isa, &a[..n_in], &mut b[..n_out], &mut s, 1, ep).unwrap();
                times.push(t.elapsed().as_secs_f64() * 1e6);
                std::mem::swap(&mut a, &mut b);
                if i % 64 == 63 {
                    a[..packed.len()].copy_from_slice(&packed);
                }
            }
            times.sort_by(f64::total_cmp);
            chain = (times[0], times[times.len() / 2]);
        }
        if profile.is_some() {
            println!(
                "BCR as in a plan: {bcr_plan:.1} us; chained (each run reading the previous \
                 one's output): min {:.1}, median {:.1} us",
                chain.0, chain.1
            );
            return;
        }
        let p = project("block-punched:8x4");
        let bp = BlockPunched::encode(&layer, &p.values, &p.mask, 8, 4).unwrap();
        let bp = RowGroupConv::new(bp.to_row_groups(), shape).unwrap();
        let mut s = ConvScratch::for_conv(&bp);
        let bp_plain = timing::min_us(0.5, || bp.run(isa, &x, &mut y, &mut s, 1).unwrap());
        let mut bp_t = bp.clone();
        bp_t.set_output_target(target).unwrap();
        let bp_plan = timing::min_us(0.5, || {
            if stride == 1 {
                bp_t.run_prepacked(isa, &packed, &mut y_packed, &mut s, 1, ep).unwrap()
            } else {
                bp_t.run_fused(isa, &x, &mut y_packed, &mut s, 1, ep).unwrap()
            }
        });
        let mut other = vec![1.0f32; 1 << 18];
        let mut bp_cold = f64::INFINITY;
        for _ in 0..2000 {
            for v in other.iter_mut() {
                *v += 1.0;
            }
            std::hint::black_box(&other);
            let t = std::time::Instant::now();
            if stride == 1 {
                bp_t.run_prepacked(isa, &packed, &mut y_packed, &mut s, 1, ep).unwrap()
            } else {
                bp_t.run_fused(isa, &x, &mut y_packed, &mut s, 1, ep).unwrap()
            }
            bp_cold = bp_cold.min(t.elapsed().as_secs_f64() * 1e6);
        }
        let st = if stride > 1 { format!(" stride {stride}") } else { String::new() };
        println!(
            "| conv3x3{st} {c}->{out}@{hw}x{hw} | {bcr_plain:.1} | {bcr_plan:.1} | {bp_plain:.1} | {bp_plan:.1} | {bp_cold:.1} |"
        );
    }
}
