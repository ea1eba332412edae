#![allow(missing_docs, clippy::print_stdout, clippy::unwrap_used)]
use std::time::Instant;
use tessera_kernels::*;
fn median_us(mut f: impl FnMut(), reps: usize) -> f64 {
    for _ in 0..3 { f(); }
    let mut t: Vec<f64> = (0..reps).map(|_| { let s = Instant::now(); f(); s.elapsed().as_secs_f64() * 1e6 }).collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[reps / 2]
}
fn main() {
    for (c, hw) in [(64usize, 56usize), (128, 16), (256, 8), (16, 56)] {
        let shape = ConvShape::conv2d(c, c, [hw, hw], [3, 3], 1, 1).unwrap();
        let l = shape.layout();
        let x: Vec<f32> = (0..c * hw * hw).map(|i| i as f32).collect();
        let mut packed = vec![0.0; l.packed_len()];
        let tp = median_us(|| l.pack(&x, &mut packed), 200);
        let flat = vec![1.0; l.flat_len() + 64];
        let mut out = vec![0.0; c * hw * hw];
        let tc = median_us(|| for r in 0..c { l.compact(&flat, &mut out[r * hw * hw..(r + 1) * hw * hw]) }, 200);
        println!("{c}@{hw}: pack {tp:.1} us, compact {tc:.1} us");
    }
}
