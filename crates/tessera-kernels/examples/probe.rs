#![allow(missing_docs, clippy::print_stdout, clippy::unwrap_used)]
use std::time::Instant;
use tessera_kernels::*;
use tessera_sparsity::{Scheme, Target};

fn median_ms(mut f: impl FnMut(), reps: usize) -> f64 {
    for _ in 0..3 { f(); }
    let mut t: Vec<f64> = (0..reps).map(|_| { let s = Instant::now(); f(); s.elapsed().as_secs_f64() * 1e3 }).collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[reps / 2]
}

fn main() {
    let isa = Isa::detect();
    let threads: usize = std::env::var("T").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    for (c, hw, k, pad) in [(64usize, 56usize, 3usize, 1usize), (128, 16, 3, 1), (256, 8, 3, 1)] {
        let shape = ConvShape::conv2d(c, c, [hw, hw], [k, k], 1, pad).unwrap();
        let n = shape.out_channels * shape.cols();
        let w: Vec<f32> = (0..n).map(|i| ((i as f32 * 0.618).fract() - 0.5) * 0.1).collect();
        let x: Vec<f32> = (0..c * hw * hw).map(|i| ((i as f32 * 0.377).fract() - 0.5)).collect();
        let mut y = vec![0.0; shape.out_channels * shape.output_positions()];
        let mut col = vec![0.0; dense::im2col_len(&shape)];
        let gflop = shape.flops() as f64 / 1e9;
        let t_gemm = median_ms(|| dense::conv_im2col(&shape, &w, &x, &mut y, &mut col, threads).unwrap(), 50);
        let dense_rg = RowGroupMatrix::from_dense(c, shape.cols(), &w, None, &RowGroupMatrix::uniform_groups(c, c, 8)).unwrap();
        let conv = RowGroupConv::new(dense_rg, shape).unwrap();
        let mut scratch = ConvScratch::for_conv(&conv);
        let t_direct = median_ms(|| conv.run(isa, &x, &mut y, &mut scratch, threads).unwrap(), 50);
        let layer = shape.layer("l").unwrap();
        let mut line = format!("conv{k}x{k} {c}@{hw}x{hw}: im2col+gemm {t_gemm:.3} ms ({:.0} GF/s), direct {t_direct:.3} ms ({:.0} GF/s)", gflop / t_gemm * 1e3, gflop / t_direct * 1e3);
        for (scheme, tgt) in [("block-punched:8x4", 8.0), ("block-punched:8x4", 10.0), ("unstructured", 10.0)] {
            let s: Scheme = scheme.parse().unwrap();
            let p = s.project(&layer, &w, Target::Compression(tgt)).unwrap();
            let gs = if scheme == "unstructured" { 1 } else { 8 };
            let m = RowGroupMatrix::from_dense(c, shape.cols(), &p.values, Some(&p.mask), &RowGroupMatrix::uniform_groups(c, c, gs)).unwrap();
            let conv = RowGroupConv::new(m, shape).unwrap();
            let mut scratch = ConvScratch::for_conv(&conv);
            let t = median_ms(|| conv.run(isa, &x, &mut y, &mut scratch, threads).unwrap(), 100);
            line += &format!(" | {scheme}@{tgt}x {t:.3} ms ({:.2}x vs best dense)", t_gemm.min(t_direct) / t);
        }
        println!("{line}");
    }
}
