//! All criterion benchmarks of tessera, one module per family: `cargo bench -p tessera-benches`.
#![allow(missing_docs)] // criterion macros generate undocumented items
#![allow(clippy::print_stderr)] // a bench binary reports where its data came from

use criterion::{criterion_group, criterion_main};

mod data;
mod kernels_criterion;
mod sparsity;

criterion_group!(benches, data::bench, sparsity::bench, kernels_criterion::bench);
criterion_main!(benches);
