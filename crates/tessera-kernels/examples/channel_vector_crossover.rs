//! Dense convolutions on small maps: the channel-vector kernel against the row-group engine
//! (dense direct convolution, what plans use) over the layer shapes of VGG-11, MobileNetV2
//! and LeNet-5 at batch 1. Prints each kernel's best median (two interleaved measurements
//! each) in microseconds and their ratio; the codegen lowering's choice between the two is
//! read from this table.
//! `cargo run --release -p tessera-kernels --example channel_vector_crossover [threads]`

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a command-line table

use std::time::Instant;

use tessera_kernels::{
    ChannelVectorConv, ConvScratch, ConvShape, Epilogue, Isa, RowGroupConv, RowGroupMatrix,
};

fn median_us(f: &mut impl FnMut()) -> f64 {
    for _ in 0..5 {
        f();
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 15 || start.elapsed().as_secs_f64() < 0.15 {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads: usize = std::env::args().nth(1).map_or(Ok(1), |t| t.parse())?;
    let isa = Isa::detect();
    println!("isa {isa}, {threads} thread(s)");
    println!(
        "| layer | in -> out | map | kernel | channel-vector us | row groups us | cv / rows |"
    );
    println!("|---|---|---|---|---|---|---|");
    // (label, in, out, input map, kernel, stride, padding)
    let shapes: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
        ("vgg 2x2", 512, 512, 2, 3, 1, 1),
        ("vgg 4x4", 512, 512, 4, 3, 1, 1),
        ("vgg 4x4", 256, 512, 4, 3, 1, 1),
        ("vgg 8x8", 256, 256, 8, 3, 1, 1),
        ("vgg 8x8", 128, 256, 8, 3, 1, 1),
        ("resnet 8x8", 64, 64, 8, 3, 1, 1),
        ("resnet 16x16", 32, 32, 16, 3, 1, 1),
        ("resnet 32x32", 16, 16, 32, 3, 1, 1),
        ("resnet s2 16->8", 32, 64, 16, 3, 2, 1),
        ("resnet 1x1 s2 16->8", 32, 64, 16, 1, 2, 0),
        ("vgg 16x16", 128, 128, 16, 3, 1, 1),
        ("vgg 16x16", 64, 128, 16, 3, 1, 1),
        ("vgg 32x32", 64, 64, 32, 3, 1, 1),
        ("resnet 32x32", 32, 32, 32, 3, 1, 1),
        ("conv 64@28", 64, 64, 28, 3, 1, 1),
        ("conv 128@28", 128, 128, 28, 3, 1, 1),
        ("conv 64@112", 64, 64, 112, 3, 1, 1),
        ("conv 64@56", 64, 64, 56, 3, 1, 1),
        ("mnv2 1x1 4x4", 160, 960, 4, 1, 1, 0),
        ("mnv2 1x1 4x4", 960, 160, 4, 1, 1, 0),
        ("mnv2 1x1 4x4", 320, 1280, 4, 1, 1, 0),
        ("mnv2 1x1 2x2", 320, 1280, 2, 1, 1, 0),
        ("mnv2 1x1 7x7", 96, 576, 7, 1, 1, 0),
        ("mnv2 1x1 8x8", 64, 384, 8, 1, 1, 0),
        ("mnv2 1x1 32x32", 24, 144, 32, 1, 1, 0),
        ("mnv2 1x1 32x32", 144, 24, 32, 1, 1, 0),
        ("mnv2 1x1 16x16", 32, 192, 16, 1, 1, 0),
        ("lenet conv2", 20, 50, 12, 5, 1, 0),
        ("s2 8->4", 256, 512, 8, 3, 2, 1),
    ];
    for &(label, cin, cout, hw, k, stride, pad) in shapes {
        let shape = ConvShape::conv2d(cin, cout, [hw, hw], [k, k], stride, pad)?;
        let cols = shape.cols();
        let w: Vec<f32> = (0..cout * cols).map(|i| ((i * 37 % 17) as f32 - 8.0) / 80.0).collect();
        let x: Vec<f32> = (0..cin * hw * hw).map(|i| ((i * 13 % 11) as f32 - 5.0) / 5.0).collect();
        let mut y = vec![0.0f32; cout * shape.output_positions()];
        let cv = ChannelVectorConv::new(shape, &w)?;
        let mut cs = cv.scratch(threads);
        let groups = RowGroupMatrix::uniform_groups(cout, cout, 8);
        let rows =
            RowGroupConv::new(RowGroupMatrix::from_dense(cout, cols, &w, None, &groups)?, shape)?;
        let mut rs = ConvScratch::for_conv(&rows);
        let mut a = || cv.run(isa, &x, &mut y, &mut cs, threads, Epilogue::default()).unwrap();
        let mut ya = vec![0.0f32; cout * shape.output_positions()];
        let mut b = || rows.run(isa, &x, &mut ya, &mut rs, threads).unwrap();
        let (mut ta, mut tb) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..2 {
            ta = ta.min(median_us(&mut a));
            tb = tb.min(median_us(&mut b));
        }
        println!(
            "| {label} | {cin} -> {cout} | {hw}x{hw} | {k}x{k} s{stride} | {ta:.1} | {tb:.1} | {:.2} |",
            ta / tb
        );
    }
    Ok(())
}
