//! BCR 8x32 at 8x on one convolution (by default VGG-11's small maps), alone, for profiling
//! (`perf record`): runs the kernel for about `SECONDS` (default 3) and prints the minimum
//! time per run. Arguments: `C HW OUT [SECONDS [KERNEL [FORM [THREADS]]]]` (KERNEL 3 or 1,
//! default 3; FORM `bcr`, the default (at the sparsity in `SPARSITY`, default 0.875, the
//! input form `BcrConv::new` picks; `bcr-direct` reads the packed input itself), or
//! block-punched 8x4 at 8x reading its input `direct`, `gathered` or `quad`, or as
//! `RowGroupConv::new` picks: `bp`; THREADS default 1).
//! `cargo run -p tessera-kernels --example bcr_small_map -- 512 2 512`

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a command-line probe

#[path = "common/timing.rs"]
mod timing;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tessera_kernels::formats::bcr::{BcrCompact, BcrConv, BcrInput};
use tessera_kernels::formats::block_punched::BlockPunched;
use tessera_kernels::{ConvScratch, ConvShape, Isa, RowGroupConv, RowGroupInput};
use tessera_sparsity::{Layer, Scheme, Target, Tiling};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<usize> = args.iter().take(5).map(|s| s.parse().unwrap()).collect();
    let form = args.get(5).map_or("bcr", String::as_str);
    let threads: usize = args.get(6).map_or(1, |t| t.parse().unwrap());
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
    if !form.starts_with("bcr") {
        let s: Scheme = "block-punched:8x4".parse().unwrap();
        let p = s.project_with(&layer, &w, Target::Sparsity(0.875), Tiling::Pad).unwrap();
        let m = BlockPunched::encode(&layer, &p.values, &p.mask, 8, 4).unwrap().to_row_groups();
        let conv = match form {
            "direct" => RowGroupConv::with_input(m, shape, RowGroupInput::Direct),
            "gathered" => RowGroupConv::with_input(m, shape, RowGroupInput::Gathered),
            "quad" => RowGroupConv::with_input(m, shape, RowGroupInput::Quad),
            _ => RowGroupConv::new(m, shape),
        }
        .unwrap();
        let mut s = ConvScratch::for_conv(&conv);
        let us = timing::min_us(seconds, || conv.run(isa, &x, &mut y, &mut s, threads).unwrap());
        let input = conv.input();
        println!(
            "block-punched 8x4 8x ({input:?}) conv{k}x{k} {c}->{out}@{hw}x{hw}, {threads} threads: {us:.1} us"
        );
        return;
    }
    let s: Scheme = "bcr:8x32".parse().unwrap();
    let sparsity = std::env::var("SPARSITY").map_or(0.875, |v| v.parse().unwrap());
    let p = s.project_with(&layer, &w, Target::Sparsity(sparsity), Tiling::Pad).unwrap();
    let m = BcrCompact::encode(&layer, &p.values, &p.mask, 8, 32).unwrap();
    let bcr = if form == "bcr-direct" {
        BcrConv::with_input(m, shape, BcrInput::Direct).unwrap()
    } else {
        m.bind(shape).unwrap()
    };
    let mut s = bcr.scratch();
    let us = timing::min_us(seconds, || bcr.run(isa, &x, &mut y, &mut s, threads).unwrap());
    let input = bcr.input();
    println!(
        "bcr 8x32 8x ({input:?}) conv{k}x{k} {c}->{out}@{hw}x{hw}, {threads} threads: {us:.1} us"
    );
}
