//! Benchmarks of tessera: the kernel suite behind `cargo xtask bench kernels` ([`kernels`]),
//! the whole-model suite behind `cargo xtask bench models` ([`models`]), the training-step suite behind `cargo xtask bench train` ([`training`]), and shared helpers of the criterion benchmarks (`cargo bench -p tessera-benches`, in
//! `bench_main.rs`, one module per family).

pub mod kernels;
pub mod models;
pub mod timing;
pub mod training;

/// Describes where a benchmark's data came from, for its printed header.
pub fn describe_source(source: &tessera_data::Source) -> String {
    match source {
        tessera_data::Source::Fixtures => {
            "committed fixtures (run `cargo xtask data fetch` for full sets)".into()
        }
        tessera_data::Source::Dir(d) => format!("cache {}", d.display()),
    }
}
