//! `tessera-sparsity`: the single source of truth for what a sparsity scheme means.
//!
//! Every weight is viewed as a row-major GEMM matrix `W[out, in_per_group x kernel volume]`
//! ([`LayerGeometry`]). A [`Scheme`] defines which positions are pruned together; its
//! [`Scheme::project`] is the exact Euclidean projection of a weight onto the set of weights
//! with that structure keeping at most a [`Target`] (`0.875` sparsity or `8x` compression).
//! Pruning (magnitude, ADMM, group lasso), sparse training, the kernels' format encoders and the
//! ReRAM polarization all call this crate; none re-implements a projection.
//!
//! Schemes: unstructured; filter, channel, column; connectivity; pattern (+ connectivity);
//! block-punched; BCR; block (BSR); KGS and vanilla KGS; N:M; polarized. See [`Scheme`] for the
//! textual forms, which round-trip through `FromStr`, `Display` and serde.
//!
//! Projecting a 3x3 convolution to block-punched 8x4 at 8x compression:
//!
//! ```
//! use tessera_sparsity::{Layer, Scheme, Target};
//!
//! let layer = Layer::conv2d("features.4", 64, 32, 3, 3)?.with_output_positions(16 * 16);
//! // Deterministic pseudo-random weights in OIHW order (= GEMM rows x columns).
//! let weights: Vec<f32> = (0..layer.geometry.len())
//!     .map(|i| ((i as f32 * 0.618).fract() - 0.5) * 0.2)
//!     .collect();
//! let scheme: Scheme = "block-punched:8x4".parse()?;
//! let target: Target = "8x".parse()?;
//! let p = scheme.project(&layer, &weights, target)?;
//! assert_eq!(p.mask.count(), layer.geometry.len() / 8);
//! // All 8 filters of a block keep the same kernel positions of their 4 channels.
//! let cols = layer.geometry.cols();
//! for block_row in 0..8 {
//!     for col in 0..cols {
//!         let first = p.mask.get(block_row * 8 * cols + col);
//!         assert!((0..8).all(|r| p.mask.get((block_row * 8 + r) * cols + col) == first));
//!     }
//! }
//! let stats = tessera_sparsity::LayerStats::of(&layer, &p.mask)?;
//! assert_eq!(stats.flop_reduction(), 8.0);
//! # Ok::<(), tessera_sparsity::SparsityError>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod error;
mod geometry;
mod groups;
mod mask;
mod scheme;
mod schemes;
mod select;
mod stats;
mod target;

pub use config::{LayerRule, MatchRule, SparsityConfig, wildcard_match};
pub use error::{Result, SparsityError};
pub use geometry::{Layer, LayerGeometry};
pub use groups::Groups;
pub use mask::Mask;
pub use scheme::{
    BlockShape, PatternLibrary, PatternScheme, PolarizedScheme, Projection, Scheme, SignRule,
    Tiling,
};
pub use schemes::bcr::{EXHAUSTIVE_SIDE as BCR_EXHAUSTIVE_SIDE, MAX_SIDE as BCR_MAX_SIDE};
pub use schemes::pattern::{
    CANDIDATES as PATTERN_CANDIDATES, all_candidates as all_pattern_candidates,
};
pub use schemes::polarized::fragment_signs;
pub use stats::LayerStats;
pub use target::Target;
