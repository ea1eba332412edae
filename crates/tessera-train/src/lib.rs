//! `tessera-train`: sparse-from-scratch training for small devices.
//!
//! * [`SparseTrainer`]: static sparse, SET, RigL and **MEST** (elastic mutation, and the soft
//!   memory bound that lets grown weights train before the prune back) as one
//!   [`tessera_models::train::Hooks`] implementation. Defaults are the public code's
//!   ([`MestConfig::elastic_mutation`], [`MestConfig::soft_memory_bound`],
//!   [`DropGrowConfig::set`], [`DropGrowConfig::rigl`]); every parameter is a field.
//! * Masks keep their scheme's structure through every update ([`SparseLayer`]): prune is
//!   tessera-sparsity's projection, grow adds whole units of the scheme (weights, blocks,
//!   block-punched groups, library-pattern kernels).
//! * [`density`]: uniform or ERK layer densities.
//! * [`forgetting`]: per-example forgetting events counted while the masks change, and
//!   one-shot removal of the least-forgotten examples (MEST's data efficiency).
//! * [`memory`]: weights + gradients + optimizer state as a sparse trainer stores them
//!   (tessera-kernels formats), next to dense, and the process's peak RSS.
//!
//! MEST (EM&S) at 90% on a LeNet-5's convolutions, block 4x1 (MEST's
//! `free_block_prune_column_4`), three steps on the fixtures:
//!
//! ```
//! use tessera_data::{KnownSet, Normalization, Source, Split, load};
//! use tessera_models::train::{TrainConfig, train};
//! use tessera_models::zoo::Lenet5Config;
//! use tessera_models::{Backend, with_seed};
//! use tessera_train::{Distribution, MestConfig, Method, RunLength, SparseTrainer, SparseTrainingConfig};
//!
//! let data = load(KnownSet::Mnist, Split::Train, &Source::Fixtures, Some(Normalization::mnist()))?;
//! let device = Backend::Flex.train_device(3);
//! let model = with_seed(&device, 3, || Lenet5Config::default().init(&device))?;
//! let cfg = TrainConfig { max_steps_per_epoch: Some(3), ..TrainConfig::sgd(2, 16, 0.05) };
//! let mut mest = MestConfig::soft_memory_bound(0.9);
//! mest.every = tessera_train::Interval::Epochs(1);
//! let sparse = SparseTrainingConfig {
//!     method: Method::Mest(mest),
//!     sparsity: 0.9,
//!     distribution: Distribution::Uniform,
//!     scheme: "block:4x1".parse()?,
//!     layers: vec!["conv*".into()],
//!     seed: 3,
//! };
//! let (model, mut trainer) =
//!     SparseTrainer::init(model, [1, 1, 28, 28], sparse, RunLength::of(data.len(), &cfg))?;
//! // The epoch-0 update grew 5% of the weights above the target (the soft bound).
//! assert!(trainer.live() > trainer.sparse_weights() / 10);
//! let (_model, history) = train(model, &data, None, &cfg, &device, &mut trainer, None)?;
//! assert_eq!(history.len(), 2);
//! // The last update of this 2-epoch run is in the first phase: pruned back to 90%, regrown.
//! assert_eq!(trainer.events().len(), 2);
//! for (layer, mask) in trainer.layers().iter().zip(trainer.masks()) {
//!     layer.check_structure(mask)?;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod density;
mod error;
pub mod forgetting;
pub mod memory;
mod method;
mod mutation;
mod trainer;

pub use density::{Distribution, layer_densities};
pub use error::{Result, TrainError};
pub use forgetting::{Forgetting, Ranking, Removal, RemovalAmount, RemovalReport};
pub use memory::{Footprint, LayerFootprint, footprint, optimizer_slots, peak_rss_bytes};
pub use method::{
    Anneal, DropGrowConfig, Growth, InitMask, Interval, MestConfig, MestPhase, MestScore, Method,
};
pub use mutation::SparseLayer;
pub use trainer::{MutationEvent, RunLength, SparseTrainer, SparseTrainingConfig};
