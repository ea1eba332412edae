//! `tessera-ir`: the inference graph that connects trained models to everything that runs
//! them (the compiler and the ReRAM simulator). No burn.
//!
//! * [`Graph`]: typed ops ([`Op`]) with shapes inferred and checked, parameters with optional
//!   sparsity annotations (a tessera-sparsity scheme and mask per weight).
//! * [`interp::run`]: the reference interpreter that defines what every op computes.
//! * [`io`]: model files (JSON graph + safetensors weights), validated on load.
//! * [`passes`]: rewrites (batch-norm folding, activation fusion, dead-channel removal, reshape
//!   folding) and a pipeline runner.
//! * [`Graph::residual_branches`] / [`Graph::skip_residual`]: identity-shortcut residual
//!   branches, and removing one (a search's "skip" operator choice).
//! * [`Graph::separate_conv`] / [`decouple`]: a convolution rewritten as depthwise + pointwise,
//!   initialized by per-input-channel rank-1 SVD (the "separable" operator choice).
//! * [`stats`]: parameters, FLOPs dense vs kept, bytes per format; [`dump`]: the textual form.
//!
//! ```
//! use tessera_ir::{Activation, Conv2d, GraphBuilder, Tensor, interp, passes::Pipeline};
//!
//! let mut b = GraphBuilder::new("tiny");
//! let x = b.input("x", &[1, 1, 6, 6]);
//! let c = b.conv2d("conv", &x, Tensor::uniform([4, 1, 3, 3], 0.5, 1), Some(Tensor::zeros([4])), Conv2d { padding: 1, ..Default::default() });
//! let r = b.act("relu", &c, Activation::Relu);
//! b.output(&r);
//! let graph = b.build()?;
//!
//! let input = Tensor::uniform([1, 1, 6, 6], 1.0, 2);
//! let before = interp::run(&graph, &[input.clone()])?;
//! let (fused, _) = Pipeline::standard().run(graph)?;
//! assert_eq!(fused.nodes.len(), 1); // the ReLU now lives inside the convolution
//! assert_eq!(interp::run(&fused, &[input])?, before);
//! # Ok::<(), tessera_ir::IrError>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod dump;
mod error;
pub mod examples;
mod graph;
pub mod interp;
pub mod io;
mod op;
pub mod passes;
mod residual;
mod separable;
mod shape;
pub mod stats;
mod tensor;

pub use dump::dump;
pub use error::{IrError, Result};
pub use graph::{Conv2d, Graph, GraphBuilder, Input, Node, Shapes};
pub use op::{Activation, Op};
pub use residual::ResidualBranch;
pub use separable::{Decoupled, decouple};
pub use tensor::{Param, Sparsity, Tensor};
