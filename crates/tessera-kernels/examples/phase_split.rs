//! What a phase-split edge costs and saves, per layer, 1 thread, minimum of many runs
//! (microseconds): the stride-1 producer storing (bias + ReLU fused) into a stride-1 3x3
//! consumer's padded layout vs into a stride-2 consumer's phase-split layout (also with a
//! fused residual read from the padded layout, as a residual block's second convolution); and
//! the stride-2 consumer packing its own input vs reading the phase-split input as written.
//! Block-punched 8x4 and BCR 8x32 at 8x on ResNet-20's stage boundaries.
//! `cargo run --release -p tessera-kernels --example phase_split`

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a command-line table

#[path = "common/timing.rs"]
mod timing;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tessera_kernels::formats::bcr::{BcrCompact, BcrConv};
use tessera_kernels::formats::block_punched::BlockPunched;
use tessera_kernels::{Clamp, ConvScratch, ConvShape, Epilogue, Isa, RowGroupConv};
use tessera_sparsity::{Layer, Scheme, Target, Tiling};

fn main() {
    let isa = Isa::detect();
    println!(
        "| scheme | map | producer -> stride-1 layout | producer -> phase split | the same with a fused residual | consumer packs | consumer reads phase split |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (c, hw) in [(16usize, 32usize), (32, 16)] {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let x: Vec<f32> = (0..c * hw * hw).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let bias: Vec<f32> = (0..2 * c).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let ep = Epilogue { bias: Some(&bias[..c]), clamp: Clamp::Relu, residual: None };
        let ep2 = Epilogue { bias: Some(&bias), clamp: Clamp::Relu, residual: None };
        let producer = ConvShape::conv2d(c, c, [hw, hw], [3, 3], 1, 1).unwrap();
        let plain_next = producer.layout();
        let consumer = ConvShape::conv2d(c, 2 * c, [hw, hw], [3, 3], 2, 1).unwrap();
        let split = consumer.layout();
        let to_plain = plain_next.as_target().unwrap();
        let to_split = split.as_target().unwrap();
        let mut packed = vec![0.0f32; plain_next.packed_len()];
        plain_next.pack(&x, &mut packed);
        let mut y_plain = vec![0.0f32; to_plain.len(c)];
        let mut y_split = vec![0.0f32; to_split.len(c)];
        // The consumer's packed input: the producer's phase split and the layout's tail.
        let mut x_split = vec![0.0f32; split.packed_len()];
        let [_, oh, ow] = consumer.output();
        let mut z = vec![0.0f32; 2 * c * oh * ow];
        for scheme in ["block-punched:8x4", "bcr:8x32"] {
            let s: Scheme = scheme.parse().unwrap();
            let weights = |out: usize| {
                let layer = Layer::conv2d("conv", out, c, 3, 3).unwrap();
                let mut rng = ChaCha8Rng::seed_from_u64((out * 1000 + c) as u64);
                let w: Vec<f32> =
                    (0..out * c * 9).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                let p = s.project_with(&layer, &w, Target::Sparsity(0.875), Tiling::Pad).unwrap();
                (layer, p)
            };
            // Both kernels have the same methods (not a trait): one body for either.
            macro_rules! edge {
                ($prod:expr, $cons:expr, $scratch:expr) => {{
                    let (prod, cons) = ($prod, $cons);
                    let mut s = $scratch(&prod);
                    let mut a = prod.clone();
                    a.set_output_target(to_plain).unwrap();
                    let mut b = prod.clone();
                    b.set_output_target(to_split).unwrap();
                    let ta = timing::min_us(0.5, || {
                        a.run_prepacked(isa, &packed, &mut y_plain, &mut s, 1, ep).unwrap()
                    });
                    let tb = timing::min_us(0.5, || {
                        b.run_prepacked(isa, &packed, &mut y_split, &mut s, 1, ep).unwrap()
                    });
                    // A residual block's second convolution: the block input (in the first
                    // convolution's padded layout) added before the ReLU.
                    let mut r = prod.clone();
                    r.set_residual_layout(Some(to_plain)).unwrap();
                    r.set_output_target(to_split).unwrap();
                    let ep_res = Epilogue { residual: Some(&packed), ..ep };
                    let tr = timing::min_us(0.5, || {
                        r.run_prepacked(isa, &packed, &mut y_split, &mut s, 1, ep_res).unwrap()
                    });
                    x_split[..y_split.len()].copy_from_slice(&y_split);
                    let mut s2 = $scratch(&cons);
                    let tc = timing::min_us(0.5, || {
                        cons.run_fused(isa, &x, &mut z, &mut s2, 1, ep2).unwrap()
                    });
                    let td = timing::min_us(0.5, || {
                        cons.run_prepacked(isa, &x_split, &mut z, &mut s2, 1, ep2).unwrap()
                    });
                    [ta, tb, tr, tc, td]
                }};
            }
            let t = if scheme.starts_with("bcr") {
                let bind = |out: usize, shape: ConvShape| {
                    let (layer, p) = weights(out);
                    let m = BcrCompact::encode(&layer, &p.values, &p.mask, 8, 32).unwrap();
                    m.bind(shape).unwrap()
                };
                edge!(bind(c, producer), bind(2 * c, consumer), |k: &BcrConv| k.scratch())
            } else {
                let bind = |out: usize, shape: ConvShape| {
                    let (layer, p) = weights(out);
                    let bp = BlockPunched::encode(&layer, &p.values, &p.mask, 8, 4).unwrap();
                    RowGroupConv::new(bp.to_row_groups(), shape).unwrap()
                };
                edge!(bind(c, producer), bind(2 * c, consumer), ConvScratch::for_conv)
            };
            println!(
                "| {scheme} | {c}@{hw}x{hw} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                t[0], t[1], t[2], t[3], t[4]
            );
        }
    }
}
