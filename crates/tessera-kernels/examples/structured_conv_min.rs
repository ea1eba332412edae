//! The structured kernels at 8x (BCR 8x32, block-punched 8x4, pattern + connectivity on 3x3)
//! against the faster of the two dense kernels, on the 3x3 and 1x1 shapes, 1 thread,
//! batch 1. Each time is the **minimum** over many runs, not the median: on a shared machine
//! whose speed drifts by 10-30% within minutes, the minimum is what stays put between
//! repeated invocations, so two builds can be compared by running this alternately (the
//! criterion suite and `cargo xtask bench kernels` report medians).
//! `cargo run --release -p tessera-kernels --example structured_conv_min`

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a command-line table

#[path = "common/timing.rs"]
mod timing;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tessera_kernels::formats::bcr::BcrCompact;
use tessera_kernels::formats::block_punched::BlockPunched;
use tessera_kernels::formats::fkw::{Fkw, FkwConv};
use tessera_kernels::{ConvScratch, ConvShape, Isa, RowGroupConv, RowGroupMatrix, dense};
use tessera_sparsity::{Layer, PatternLibrary, Scheme, Target, Tiling};

fn main() {
    let isa = Isa::detect();
    println!(
        "| shape | dense us | BCR 8x32 8x | block-punched 8x4 8x | pattern+conn. 8x | of which packing the input, us |"
    );
    println!("|---|---|---|---|---|---|");
    for (c, hw, out, k, stride) in [
        (256usize, 8usize, 256usize, 3usize, 1usize),
        (128, 16, 128, 3, 1),
        (64, 56, 64, 3, 1),
        (256, 56, 64, 1, 1),
        // ResNet-20's 3x3 layers, the stride-2 ones last.
        (16, 32, 16, 3, 1),
        (32, 16, 32, 3, 1),
        (64, 8, 64, 3, 1),
        (16, 32, 32, 3, 2),
        (32, 16, 64, 3, 2),
        // VGG-11's small maps.
        (256, 4, 512, 3, 1),
        (512, 4, 512, 3, 1),
        (512, 2, 512, 3, 1),
    ] {
        let layer = Layer::conv2d("conv", out, c, k, k).unwrap();
        let shape = ConvShape::conv2d(c, out, [hw, hw], [k, k], stride, k / 2).unwrap();
        let mut packed = vec![0.0f32; shape.layout().packed_len()];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let w: Vec<f32> = (0..out * c * k * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x: Vec<f32> = (0..c * hw * hw).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut y = vec![0.0f32; out * shape.output_positions()];
        let pack_us = timing::min_us(0.3, || shape.layout().pack(&x, &mut packed));
        let project = |scheme: &str| {
            let s: Scheme = scheme.parse().unwrap();
            s.project_with(&layer, &w, Target::Sparsity(0.875), Tiling::Pad).unwrap()
        };

        let mut col = vec![0.0; dense::im2col_len(&shape)];
        let im2col = timing::min_us(0.5, || {
            dense::conv_im2col(&shape, &w, &x, &mut y, &mut col, 1).unwrap()
        });
        let groups = RowGroupMatrix::uniform_groups(out, out, 8);
        let direct = RowGroupConv::new(
            RowGroupMatrix::from_dense(out, c * k * k, &w, None, &groups).unwrap(),
            shape,
        )
        .unwrap();
        let mut s = ConvScratch::for_conv(&direct);
        let dense_us =
            im2col.min(timing::min_us(0.5, || direct.run(isa, &x, &mut y, &mut s, 1).unwrap()));

        let p = project("bcr:8x32");
        let bcr =
            BcrCompact::encode(&layer, &p.values, &p.mask, 8, 32).unwrap().bind(shape).unwrap();
        let mut s = bcr.scratch();
        let bcr_us = timing::min_us(0.5, || bcr.run(isa, &x, &mut y, &mut s, 1).unwrap());

        let p = project("block-punched:8x4");
        let bp = BlockPunched::encode(&layer, &p.values, &p.mask, 8, 4).unwrap();
        let bp = RowGroupConv::new(bp.to_row_groups(), shape).unwrap();
        let mut s = ConvScratch::for_conv(&bp);
        let bp_us = timing::min_us(0.5, || bp.run(isa, &x, &mut y, &mut s, 1).unwrap());

        let pat_us = if k == 3 {
            let lib = PatternLibrary::extract(8, [(&layer, &w[..])]).unwrap();
            let p = project(&format!("pattern:8+connectivity@{lib}"));
            let pat = FkwConv::new(Fkw::encode(&layer, &p.values, &p.mask, &lib).unwrap(), shape)
                .unwrap();
            let mut s = pat.scratch();
            timing::min_us(0.5, || pat.run(isa, &x, &mut y, &mut s, 1).unwrap())
        } else {
            f64::NAN
        };

        let cell = |us: f64| format!("{us:.1} us ({:.2}x)", dense_us / us);
        let s = if stride > 1 { format!(" stride {stride}") } else { String::new() };
        println!(
            "| conv{k}x{k}{s} {c}->{out}@{hw}x{hw} | {dense_us:.1} | {} | {} | {} | {pack_us:.1} |",
            cell(bcr_us),
            cell(bp_us),
            cell(pat_us)
        );
    }
}
