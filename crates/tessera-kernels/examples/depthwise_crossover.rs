//! Depthwise 3x3 convolutions: the depthwise kernel by the method it picks on this CPU (whole
//! planes in AVX-512 registers for stride-1 maps of at most 8x8, channel-interleaved on 8-lane
//! instruction sets) and by padded planes, against the row-group engine (one filter per group),
//! over channel counts, map sizes and strides, 1 thread, batch 1. Prints the median
//! microseconds of each and the ratios; the codegen lowering's choice between the depthwise
//! kernel and the row groups, and `DepthwiseConv::method`, are read from this table.
//! `cargo run --release -p tessera-kernels --example depthwise_crossover`

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a command-line table

use std::time::Instant;

use tessera_kernels::{
    ConvScratch, ConvShape, DepthwiseConv, DepthwiseMethod, Epilogue, Isa, RowGroupConv,
    RowGroupMatrix,
};

fn median_us(mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 30 || start.elapsed().as_secs_f64() < 0.05 {
        let t = Instant::now();
        for _ in 0..10 {
            f();
        }
        samples.push(t.elapsed().as_secs_f64() * 1e5);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let isa = Isa::detect();
    println!(
        "isa {isa}\n| channels | map | stride | method | us | padded planes us | row groups us | method / planes | method / rows |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &c in &[3usize, 12, 48, 96, 144, 288, 480, 960] {
        for &hw in &[28usize, 14, 8, 7, 4, 2] {
            for &stride in &[1usize, 2] {
                if hw < 4 && stride == 2 {
                    continue;
                }
                let shape = ConvShape::conv2d(c, c, [hw, hw], [3, 3], stride, 1)?.with_groups(c)?;
                let w: Vec<f32> = (0..c * 9).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
                let x: Vec<f32> =
                    (0..c * hw * hw).map(|i| ((i * 13 % 11) as f32 - 5.0) / 5.0).collect();
                let mut y = vec![0.0f32; c * shape.output_positions()];
                let dw = DepthwiseConv::new(shape, &w)?;
                let mut ds = dw.scratch(1);
                let groups = RowGroupMatrix::uniform_groups(c, 1, 8);
                let rows =
                    RowGroupConv::new(RowGroupMatrix::from_dense(c, 9, &w, None, &groups)?, shape)?;
                let mut rs = ConvScratch::for_conv(&rows);
                let method = dw.method(isa);
                let a =
                    median_us(|| dw.run(isa, &x, &mut y, &mut ds, 1, Epilogue::default()).unwrap());
                let p = median_us(|| {
                    let ep = Epilogue::default();
                    let planes = DepthwiseMethod::PaddedPlanes;
                    dw.run_with(planes, isa, &x, &mut y, &mut ds, 1, ep).unwrap()
                });
                let b = median_us(|| rows.run(isa, &x, &mut y, &mut rs, 1).unwrap());
                println!(
                    "| {c} | {hw}x{hw} | {stride} | {method:?} | {a:.2} | {p:.2} | {b:.2} | {:.2} | {:.2} |",
                    a / p,
                    a / b
                );
            }
        }
    }
    Ok(())
}
