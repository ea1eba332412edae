//! `tessera-models`: the burn model zoo, named prunable weights with masks, the training loop,
//! and export to the tessera IR.
//!
//! The backend is a run-time [`burn::prelude::Device`] ([`Backend`] picks flex or ndarray);
//! nothing here names a backend type. Models are initialized under [`with_seed`] so the same
//! seed gives the same weights; [`weights`] reads, writes and masks conv / linear weights by
//! their burn path in tessera-sparsity's GEMM view; [`train::train`] trains with checkpoints,
//! resume and [`train::Hooks`]; [`Classifier::export`] gives the IR graph.
//!
//! ```
//! use tessera_data::{KnownSet, Normalization, Source, Split, load};
//! use tessera_models::train::{KeepMasks, TrainConfig, train};
//! use tessera_models::zoo::Lenet5Config;
//! use tessera_models::{Backend, Classifier, Masks, weights, with_seed};
//! use tessera_sparsity::{Scheme, Target, Tiling};
//!
//! let data = load(KnownSet::Mnist, Split::Train, &Source::Fixtures, Some(Normalization::mnist()))?;
//! let device = Backend::Flex.train_device(7);
//! let model = with_seed(&device, 7, || Lenet5Config::default().init(&device))?;
//!
//! // Block-punched 4x4 masks at 4x compression on every fully connected layer.
//! let scheme: Scheme = "block-punched:4x4".parse()?;
//! let mut masks = Masks::new();
//! for w in weights::prunable_weights(&model, [1, 1, 28, 28])? {
//!     if w.path.starts_with("fc") {
//!         let p = scheme.project_with(&w.layer, &w.values, Target::Compression(4.0), Tiling::Pad)?;
//!         masks.insert(w.path, scheme.clone(), p.mask);
//!     }
//! }
//! let model = weights::apply_masks(model, &masks);
//!
//! // Masked training: three steps, pruned weights stay exactly zero.
//! let cfg = TrainConfig { max_steps_per_epoch: Some(3), ..TrainConfig::sgd(1, 32, 0.05) };
//! let (model, history) = train(model, &data, None, &cfg, &device, &mut KeepMasks(masks.clone()), None)?;
//! assert_eq!(history[0].steps, 3);
//!
//! // The IR graph carries the masks.
//! let graph = model.export([1, 1, 28, 28], &masks)?;
//! assert!(graph.params["fc1.weight"].sparsity.is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod batch_norm;
pub mod conv;
mod device;
mod error;
pub mod export;
pub mod saved;
pub mod train;
pub mod weights;
pub mod zoo;

pub use device::{Backend, with_seed};
pub use error::{ModelError, Result};
pub use export::{Exporter, Masks};
pub use zoo::{Classifier, WithModel, ZooConfig};
