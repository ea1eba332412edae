//! `tessera-models`: the burn model zoo, named prunable weights with masks, the training loop,
//! and export to the tessera IR.
//!
//! The backend is a run-time [`burn::prelude::Device`] ([`Backend`] picks flex or ndarray);
//! nothing here names a backend type.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod device;
mod error;
pub mod export;
pub mod train;
pub mod weights;
pub mod zoo;

pub use device::{Backend, with_seed};
pub use error::{ModelError, Result};
pub use export::{Exporter, Masks};
pub use zoo::{Classifier, WithModel, ZooConfig};
