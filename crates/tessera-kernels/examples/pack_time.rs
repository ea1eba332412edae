//! Times the packed-input copy (`InputLayout::pack`) on ResNet-20's 3x3 layer inputs, stride 1
//! and 2, 1 thread: the minimum over many single packs (see `common/timing.rs`), in
//! microseconds per pack.
//! `cargo run --release -p tessera-kernels --example pack_time`

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a command-line table

#[path = "common/timing.rs"]
mod timing;

use tessera_kernels::ConvShape;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for (c, hw, stride) in [(16, 32, 1), (32, 16, 1), (64, 8, 1), (16, 32, 2), (32, 16, 2)] {
        let shape = ConvShape::conv2d(c, c, [hw, hw], [3, 3], stride, 1)?;
        let layout = shape.layout();
        let x: Vec<f32> = (0..c * hw * hw).map(|i| i as f32).collect();
        let mut packed = vec![0.0f32; layout.packed_len()];
        let us = timing::min_us(0.5, || layout.pack(std::hint::black_box(&x), &mut packed));
        println!("{c} channels {hw}x{hw} stride {stride}: {us:.3} us per pack");
    }
    // A downsampling block's 1x1 stride-2 shortcut packing its input from the phase planes
    // its producer stored for the block's 3x3 stride-2 convolution (a plan's `Repack`).
    for (c, hw) in [(16, 32), (32, 16)] {
        let source = ConvShape::conv2d(c, 2 * c, [hw, hw], [3, 3], 2, 1)?.layout();
        let target = source.as_target().ok_or("no phase target")?;
        let layout = ConvShape::conv2d(c, 2 * c, [hw, hw], [1, 1], 2, 0)?.layout();
        let x: Vec<f32> = (0..source.packed_len()).map(|i| i as f32).collect();
        let mut packed = vec![0.0f32; layout.packed_len()];
        let isa = tessera_kernels::Isa::detect();
        let us = timing::min_us(0.5, || {
            layout.pack_from(isa, &target, std::hint::black_box(&x), &mut packed).unwrap()
        });
        println!("{c} channels {hw}x{hw} 1x1 stride 2 from phase planes: {us:.3} us per pack");
    }
    Ok(())
}
