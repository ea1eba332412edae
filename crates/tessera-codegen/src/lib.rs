//! `tessera-codegen`: compiles a sparse IR graph into a fast execution plan.
//!
//! The compiler half of compression-compilation co-design. A [`Plan`] is an IR graph
//! (after the IR passes: batch norms folded, activations fused, dead channels removed)
//! lowered once: each weighted layer gets the storage format and kernel its
//! tessera-sparsity scheme calls for, its weights are packed once, every activation value
//! gets a range of one arena reused by liveness, and every kernel its scratch, so
//! [`Plan::run`] allocates nothing. Batch size >= 1.
//!
//! | weight scheme | format -> kernel (tessera-kernels) |
//! |---|---|
//! | dense | row groups of 8 filters (direct convolution); GEMV for linear layers |
//! | unstructured | CSR -> row-group engine |
//! | block-punched | block-punched -> row-group engine |
//! | KGS (3-D) | KGS -> row-group engine |
//! | block | BSR -> row-group engine |
//! | BCR | BCR-compact -> BCR block kernel (convolutions; linear layers where its GEMV takes the balanced-block form, else row groups) |
//! | pattern (+ connectivity), 3x3 | FKW -> pattern kernel |
//! | others (filter, channel, N:M, ...) | masked row groups (kept columns of each group of 8 filters) |
//!
//! Instruction set per step: a plan runs at the CPU's best instruction set, but on an AVX-512
//! CPU a row-group convolution (CSR, or a block format with at most 64 KiB of weights unless
//! 16-lane FMAs run at full rate here, `tessera_kernels::Isa::full_width_fma`) on a 2-D map 8
//! wide read from a padded or strided input runs at AVX2's 8 lanes, whose tiles are whole
//! output rows where 16-lane tiles run over the padded flat grid (80 lanes for an 8x8 map's
//! 64 outputs); [`LayerReport::lanes`] says which. On Zen 4 (AVX-512 as two 256-bit halves, so
//! no FMA throughput lost), ResNet-20's 64@8x8 layers at 8x: block-punched 7.6-8.6 -> 6.9-7.4
//! us, CSR 21 -> 12 us; on a Xeon with two 512-bit FMA pipes block-punched kept 16 lanes:
//! 7.7-8.3 -> 5.3-6.5 us (the rule and its measurements: `lower::conv_isa`).
//!
//! Tuning ([`Tuning::Measure`]): per weighted layer, every candidate kernel (the table's, masked
//! row groups, the dense kernel on the pruned weights, BCR's row-group form) is timed on 1
//! and on the full thread budget (convolutions on an AVX-512 CPU at 16 and at 8 lanes), and
//! the fastest kept; decisions are cached in a JSON file keyed by CPU, instruction set,
//! batch, thread budget, layer shape, scheme and a hash of the mask ([`TuneCache`]; a
//! decision records its lane width, [`Decision::lanes`]). On more than one thread the plan's
//! thread counts are then refined in context: each step timed inside whole runs on 1 and on all threads, and the fastest of
//! that per-step mix, the per-layer picks and the two uniform settings kept (timed alone, a
//! small layer looks faster on two threads; in a plan its input crosses between the cores'
//! caches, and it is not), cached per plan; then that plan and the table's (refined alike)
//! are timed as whole plans and the faster kept ([`Plan::kernels_tuned`]).
//! [`Tuning::Default`] (`--no-tune`) is the table on the whole thread budget, deterministic.
//!
//! Latency model ([`latency`]): per kernel family, `ms = c0 + c1 MACs + c2 inputs + c3
//! outputs` fitted by non-negative least squares on layers measured here
//! (`cargo xtask bench models` calibrates it and reports its held-out error).
//!
//! Lowered ops: convolution (2-D, 3-D, grouped, depthwise), linear, batch norm, the
//! activations, 2-D max and average pooling, global average pooling, add, flatten and
//! reshape (views, no copy). Other ops are refused naming the node; run those graphs with
//! `tessera_ir::interp`.
//!
//! ```
//! use tessera_codegen::{CompileOptions, Plan};
//! use tessera_ir::{Activation, Conv2d, GraphBuilder, Tensor, interp};
//!
//! let mut b = GraphBuilder::new("tiny");
//! let x = b.input("x", &[1, 8, 12, 12]);
//! let w = Tensor::uniform([16, 8, 3, 3], 0.2, 1);
//! let c = b.conv2d("conv", &x, w, None, Conv2d { padding: 1, ..Default::default() });
//! let r = b.act("relu", &c, Activation::Relu);
//! b.output(&r);
//! let graph = b.build()?;
//!
//! let mut plan = Plan::compile(&graph, &CompileOptions::default())?;
//! let input = Tensor::uniform([1, 8, 12, 12], 1.0, 2);
//! let mut out = vec![0.0; plan.output_shape().iter().product()];
//! plan.run(&input.data, &mut out)?;
//! let want = &interp::run(&graph, &[input])?[0];
//! assert!(out.iter().zip(&want.data).all(|(a, b)| (a - b).abs() < 1e-4));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod buffers;
pub mod emit;
mod error;
mod exec;
pub mod latency;
mod lower;
mod plan;
mod tune;

pub use emit::{EmitOptions, EmittedModel, emit_rust, write_rust};
pub use error::{CodegenError, Result};
pub use latency::{LatencyModel, LatencySample};
pub use plan::{CompileOptions, LayerReport, Plan};
pub use tune::{Decision, TuneCache, Tuning};

/// Seeded input the tuner times kernels on (values do not change a kernel's speed).
pub(crate) fn tune_input(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0).collect()
}
