//! `tessera-reram`: a ReRAM crossbar accelerator simulator. No burn.
//!
//! * Crossbars ([`CrossbarConfig`]): geometry (default 128x128), b-bit cells (default 2),
//!   weights quantized and sliced over cells, bit-serial inputs through 1-bit DACs (default 16
//!   bits; unsigned after a ReLU, two's complement otherwise), an ADC whose width is derived
//!   from the rows digitized together (or fixed, saturating; or ideal), shift-and-add.
//! * Mappings of signed weights ([`Mapping`]): offset (ISAAC), two-column (PRIME),
//!   differential (zero at G_max; the column-swapped complement of two-column), FORMS
//!   polarized (magnitudes plus one sign per m-row fragment); per-segment complement encodings
//!   ([`SegmentEncoding`]): ISAAC's half-range flip, and a complement bit that gives the
//!   polarized single-column design the differential mapping's stuck-on tolerance.
//! * Faults ([`FaultModel`]): stuck-at-off / stuck-at-on with separate rates (1 : 5.2 by
//!   default), i.i.d. (nested across rates: one seed degrades as the rate rises) or clustered,
//!   log-normal variation, all from a seed.
//! * Models ([`MappedGraph`], [`Chip`]): every convolution and linear layer of an IR graph runs
//!   as simulated crossbar MVMs, the rest in the reference interpreter; folded-weight GEMMs when
//!   the ADC is provably lossless, bit-serial MVMs otherwise; per-layer MVM counts, time and
//!   input zero-skipping statistics measured on the real activations.
//! * Cost ([`cost`]): the ISAAC organisation with the paper's component table, and FORMS with
//!   fragment ADCs and zero-skipping: frames/s, GOPs/s/mm^2 and GOPs/W side by side.
//!
//! ```
//! use tessera_ir::{Tensor, examples, interp};
//! use tessera_reram::{CrossbarConfig, FaultModel, Mapping, MappedGraph};
//!
//! let graph = examples::lenet5()?;
//! let x = Tensor::uniform(graph.inputs[0].shape.clone(), 1.0, 7);
//! let want = interp::run(&graph, &[x.clone()])?;
//!
//! let mapped = MappedGraph::new(&graph, &CrossbarConfig::with_mapping(Mapping::Differential))?;
//! // Fault-free: only the 8-bit weight / 16-bit input quantization separates it from the interpreter.
//! let clean = mapped.chip(&FaultModel::none(), 0)?.run(&[x.clone()])?;
//! let err = clean[0].data.iter().zip(&want[0].data).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
//! assert!(err < 0.05, "{err}");
//! // One chip with 1% stuck-at faults (SA0 : SA1 = 1 : 5.2), drawn from seed 3.
//! let faulty = mapped.chip(&FaultModel::from_rate(0.01), 3)?.run(&[x])?;
//! assert_ne!(faulty[0].data, clean[0].data);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod config;
pub mod cost;
mod crossbar;
mod error;
mod fault;
mod mapping;
mod sim;

pub use config::{AdcResolution, CrossbarConfig, SegmentEncoding, bits_for};
pub use crossbar::{MappedMatrix, MvmScratch};
pub use error::{ReramError, Result};
pub use fault::{Clusters, Fault, FaultMap, FaultModel, SA1_PER_SA0, stream_rng, variation};
pub use mapping::Mapping;
pub use sim::{Chip, LayerInfo, LayerProfile, MappedGraph};
