//! `tessera-kernels`: sparse storage formats and fast dense and sparse CPU kernels.
//!
//! The seeds' central claim is that fine-grained structured sparsity plus compiler work gives
//! inference speed-ups that approach the FLOP reduction, where unstructured sparsity does not.
//! This crate is where that is won or lost. No burn.
//!
//! * Formats ([`formats`]): CSR, BSR, BCR-compact, FKW (pattern + connectivity), block-punched
//!   and KGS. Each encodes from a dense weight plus a tessera-sparsity mask (checking the
//!   structure), decodes, and reports value and index bytes.
//! * Engines: the row-group engine ([`rowgroup`]: rows that share kept columns; block-punched,
//!   BSR, KGS, CSR and dense all run on it), the BCR block kernel, and the channel-major
//!   pattern kernel ([`formats::fkw`]). Convolutions are implicit GEMMs over a padded,
//!   phase-split input ([`conv`]), so every load is a contiguous vector.
//! * The depthwise kernel ([`depthwise`]): each channel a 2-D stencil over a padded,
//!   phase-split plane, in register tiles of 4 rows x 2 vectors; whole small planes in
//!   AVX-512 registers; on 8-lane instruction sets, 8 channels at a time transposed into one
//!   plane of 8-channel vectors (channel-interleaved).
//! * The channel-vector kernel ([`channel_vector`]): dense convolutions on small maps,
//!   vectorized over output channels (4 vectors x 6 positions per register tile).
//! * Training ([`training`]): a dense convolution's forward pass and both gradients over an
//!   NCHW batch ([`BatchConv2d`]: unfold + unpacked register-tiled GEMM micro-kernels) and
//!   batch norm's statistics, forward and backward, behind tessera-models' burn layers.
//! * Dense baselines ([`dense`]): GEMM from the `gemm` crate, our GEMV, im2col + GEMM, and the
//!   row-group engine with every weight kept (direct convolution).
//! * Instruction sets ([`Isa`]): AVX-512, AVX2 + FMA or portable code, chosen at run time,
//!   logged once, overridable with `TESSERA_KERNELS_ISA`. Kernels are written once against a
//!   small SIMD trait and instantiated per level. On AVX-512, whether 16-lane FMAs run at
//!   full rate is timed once ([`Isa::full_width_fma`], `TESSERA_KERNELS_FMA512` overrides).
//! * Threads: work is split up front into balanced contiguous parts on the rayon pool; kernels
//!   take caller-provided scratch and never allocate.
//!
//! ```
//! use tessera_kernels::formats::block_punched::BlockPunched;
//! use tessera_kernels::{ConvScratch, ConvShape, Isa, RowGroupConv};
//! use tessera_sparsity::{Scheme, Target};
//!
//! // A 3x3 convolution, 32 -> 32 channels on 16x16, pruned block-punched 8x4 at 8x.
//! let shape = ConvShape::conv2d(32, 32, [16, 16], [3, 3], 1, 1)?;
//! let layer = shape.layer("features.3")?;
//! let w: Vec<f32> = (0..layer.geometry.len()).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
//! let p = "block-punched:8x4".parse::<Scheme>()?.project(&layer, &w, Target::Compression(8.0))?;
//! let format = BlockPunched::encode(&layer, &p.values, &p.mask, 8, 4)?;
//! assert!(format.bytes().index_overhead() < 0.1); // a u16 per 32 weights
//!
//! let conv = RowGroupConv::new(format.to_row_groups(), shape)?;
//! let mut scratch = ConvScratch::for_conv(&conv);
//! let x = vec![0.5f32; 32 * 16 * 16];
//! let mut y = vec![0.0f32; 32 * 16 * 16];
//! conv.run(Isa::detect(), &x, &mut y, &mut scratch, 1)?;
//!
//! let want = tessera_kernels::reference::conv(&shape, &p.values, &x);
//! assert!(y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-3));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod channel_vector;
pub mod conv;
pub mod dense;
pub mod depthwise;
mod error;
pub mod formats;
mod gather;
mod isa;
pub mod reference;
pub mod rowgroup;
mod simd;
mod threads;
pub mod training;

pub use channel_vector::ChannelVectorConv;
pub use conv::{ConvShape, InputLayout, OutputTarget, PhaseSplit};
pub use depthwise::{DepthwiseConv, DepthwiseMethod, DepthwiseScratch};
pub use error::{KernelError, Result};
pub use isa::{Isa, fma_width_ratio};
pub use rowgroup::{Clamp, ConvScratch, Epilogue, RowGroupConv, RowGroupInput, RowGroupMatrix};
pub use threads::{MIN_MACS_PER_THREAD, pool_counts, recommended_threads};
pub use training::BatchConv2d;
