//! Simulated MVMs per second of a saved IR model: `cargo run --release -p tessera-reram
//! --example mvm_rate -- <ir dir> [images]`, both engines (folded GEMM and bit-serial).

#![allow(clippy::print_stdout)] // a command-line tool: printing is its output
use std::time::Instant;

use tessera_ir::Tensor;
use tessera_reram::{CrossbarConfig, FaultModel, MappedGraph, Mapping};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: mvm_rate <ir dir> [images]")?;
    let images: usize = args.next().map_or(Ok(1000), |s| s.parse())?;
    let graph = tessera_ir::io::load(std::path::Path::new(&dir))?;
    let mut shape = graph.inputs[0].shape.clone();
    shape[0] = images;
    let x = Tensor::uniform(shape, 1.0, 1);
    let x = Tensor::new(x.shape.clone(), x.data.iter().map(|v| v.abs()).collect());
    let mapped = MappedGraph::new(&graph, &CrossbarConfig::with_mapping(Mapping::Differential))?;
    println!("{} crossbars", mapped.crossbars());
    for bit_serial in [false, true] {
        let mut chip = mapped.chip(&FaultModel::from_rate(0.01), 1)?;
        if bit_serial {
            chip.force_bit_serial();
        }
        let n = if bit_serial { images.min(20) } else { images };
        let xs = Tensor::new(
            [n].iter().chain(&x.shape[1..]).copied().collect::<Vec<_>>(),
            x.data[..n * x.len() / images].to_vec(),
        );
        let t = Instant::now();
        let mut prof = Vec::new();
        chip.run_profiled(&[xs], &mut prof)?;
        let s = t.elapsed().as_secs_f64();
        let mvms: u64 = prof.iter().map(|p| p.mvms).sum();
        println!(
            "{}: {n} images in {s:.3} s, {mvms} MVMs, {:.0} MVMs/s, {:.1} images/s",
            if bit_serial { "bit-serial" } else { "folded" },
            mvms as f64 / s,
            n as f64 / s
        );
    }
    Ok(())
}
