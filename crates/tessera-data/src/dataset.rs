//! In-memory image-classification data sets: f32 images in NCHW order plus u8 labels,
//! seeded splits and shuffles, and batch iteration.
//!
//! A [`Dataset`] owns the samples once. Splits and shuffles are [`Subset`]s: a borrowed
//! dataset plus a list of sample indices, so re-shuffling every epoch permutes `u32`s, never
//! images. A batch is gathered from its indices into a buffer the caller can reuse
//! ([`Batches::next_into`]), so an epoch copies each sample exactly once, into its batch.
//!
//! Every random choice takes a seed; the generator is ChaCha8, whose output is fixed by its
//! specification, so the same seed gives the same order on every machine and rand version.

use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// How raw integer pixels become f32 inputs. The rule is recorded in every [`Dataset`].
///
/// * `UnitRange { max }`: `x / max`, so pixels land in `[0, 1]`. `max` is 255 for 8-bit
///   images and 16 for sklearn digits.
/// * `Standardize { max, mean, std }`: `(x / max - mean[c]) / std[c]` per channel `c`; the
///   constants are the usual published per-channel statistics of the training sets
///   ([`Normalization::mnist`], [`Normalization::fashion_mnist`], [`Normalization::cifar10`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Normalization {
    /// Scale to `[0, 1]`.
    UnitRange {
        /// The largest raw value.
        max: f32,
    },
    /// Scale to `[0, 1]`, then standardize per channel.
    Standardize {
        /// The largest raw value.
        max: f32,
        /// Per-channel mean of the scaled values.
        mean: Vec<f32>,
        /// Per-channel standard deviation of the scaled values.
        std: Vec<f32>,
    },
}

impl Normalization {
    /// `x / 255`.
    pub fn unit_8bit() -> Self {
        Normalization::UnitRange { max: 255.0 }
    }

    /// MNIST's training-set statistics: mean 0.1307, std 0.3081.
    pub fn mnist() -> Self {
        Normalization::Standardize { max: 255.0, mean: vec![0.1307], std: vec![0.3081] }
    }

    /// Fashion-MNIST's training-set statistics: mean 0.2860, std 0.3530.
    pub fn fashion_mnist() -> Self {
        Normalization::Standardize { max: 255.0, mean: vec![0.2860], std: vec![0.3530] }
    }

    /// CIFAR-10's training-set per-channel statistics (RGB).
    pub fn cifar10() -> Self {
        Normalization::Standardize {
            max: 255.0,
            mean: vec![0.4914, 0.4822, 0.4465],
            std: vec![0.2470, 0.2435, 0.2616],
        }
    }

    /// Checks the rule against a channel count.
    pub fn validate(&self, channels: usize) -> Result<()> {
        let bad =
            |reason: String| Err(DataError::InvalidArgument { name: "normalization", reason });
        match self {
            Normalization::UnitRange { max } if !(max.is_finite() && *max > 0.0) => {
                bad(format!("max must be finite and positive, got {max}"))
            }
            Normalization::UnitRange { .. } => Ok(()),
            Normalization::Standardize { max, mean, std } => {
                if !(max.is_finite() && *max > 0.0) {
                    return bad(format!("max must be finite and positive, got {max}"));
                }
                if mean.len() != channels || std.len() != channels {
                    return bad(format!(
                        "{channels} channel(s) need {channels} mean and std values, got {} and {}",
                        mean.len(),
                        std.len()
                    ));
                }
                if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                    return bad(format!("every std must be finite and positive, got {s}"));
                }
                Ok(())
            }
        }
    }

    /// Converts raw pixels of one channel-major image block (`channels` planes of
    /// `plane` pixels each) and appends them to `out`.
    pub(crate) fn extend_from_raw<T: Copy + Into<f32>>(
        &self,
        raw: &[T],
        channels: usize,
        out: &mut Vec<f32>,
    ) {
        let plane = raw.len() / channels.max(1);
        match self {
            // Divisions, not multiplications by a reciprocal: `x / 255` is then exactly the
            // documented value, which tests and other tools can reproduce bit for bit.
            Normalization::UnitRange { max } => {
                out.extend(raw.iter().map(|&x| x.into() / max));
            }
            Normalization::Standardize { max, mean, std } => {
                for (c, chunk) in raw.chunks(plane.max(1)).enumerate() {
                    let (m, s) = (mean[c % mean.len()], std[c % std.len()]);
                    out.extend(chunk.iter().map(|&x| (x.into() / max - m) / s));
                }
            }
        }
    }
}

/// Which part of a data set's official split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The training part.
    Train,
    /// The test part.
    Test,
}

impl Split {
    /// `"train"` or `"test"`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Shape of one sample: channels, height, width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SampleShape {
    /// Channels.
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl SampleShape {
    /// Number of f32 values per sample.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Whether a sample holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An image-classification data set held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    name: String,
    shape: SampleShape,
    images: Vec<f32>,
    labels: Vec<u8>,
    num_classes: usize,
    class_names: Vec<String>,
    normalization: Normalization,
}

impl Dataset {
    /// Builds a data set from already-normalized images, checking every invariant:
    /// `images.len() == labels.len() * shape.len()`, every label `< num_classes`, and
    /// `class_names` empty or `num_classes` long.
    pub fn new(
        name: impl Into<String>,
        shape: SampleShape,
        images: Vec<f32>,
        labels: Vec<u8>,
        num_classes: usize,
        class_names: Vec<String>,
        normalization: Normalization,
    ) -> Result<Self> {
        let name = name.into();
        if shape.is_empty() {
            return Err(DataError::InvalidArgument {
                name: "shape",
                reason: format!("{name}: samples must hold at least one value, got {shape:?}"),
            });
        }
        if images.len() != labels.len() * shape.len() {
            return Err(DataError::InvalidArgument {
                name: "images",
                reason: format!(
                    "{name}: {} labels of shape {shape:?} need {} values, got {}",
                    labels.len(),
                    labels.len() * shape.len(),
                    images.len()
                ),
            });
        }
        if num_classes == 0 || num_classes > 256 {
            return Err(DataError::InvalidArgument {
                name: "num_classes",
                reason: format!("{name}: must be in 1..=256 for u8 labels, got {num_classes}"),
            });
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|&(_, &l)| l as usize >= num_classes)
        {
            return Err(DataError::InvalidArgument {
                name: "labels",
                reason: format!("{name}: label {l} of sample {i} is not below {num_classes}"),
            });
        }
        if !class_names.is_empty() && class_names.len() != num_classes {
            return Err(DataError::InvalidArgument {
                name: "class_names",
                reason: format!("{name}: {} names for {num_classes} classes", class_names.len()),
            });
        }
        normalization.validate(shape.channels)?;
        Ok(Dataset { name, shape, images, labels, num_classes, class_names, normalization })
    }

    /// Builds a data set from raw integer pixels (`labels.len()` samples of `shape`),
    /// normalizing them with `normalization`.
    pub fn from_raw<T: Copy + Into<f32>>(
        name: impl Into<String>,
        shape: SampleShape,
        raw: &[T],
        labels: Vec<u8>,
        num_classes: usize,
        class_names: Vec<String>,
        normalization: Normalization,
    ) -> Result<Self> {
        normalization.validate(shape.channels)?;
        let mut images = Vec::with_capacity(raw.len());
        for sample in raw.chunks(shape.len().max(1)) {
            normalization.extend_from_raw(sample, shape.channels, &mut images);
        }
        Self::new(name, shape, images, labels, num_classes, class_names, normalization)
    }

    /// The data set's name, e.g. `"mnist/train"`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Shape of one sample.
    pub fn sample_shape(&self) -> SampleShape {
        self.shape
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Class names, empty when the source has none.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The rule that produced the f32 values.
    pub fn normalization(&self) -> &Normalization {
        &self.normalization
    }

    /// All images, `len() * sample_shape().len()` values in NCHW order.
    pub fn images(&self) -> &[f32] {
        &self.images
    }

    /// All labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// Sample `i`'s values (CHW). Panics if `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.shape.len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Sample `i`'s label. Panics if `i >= len()`, like slice indexing.
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// How many samples each class has.
    pub fn label_histogram(&self) -> Vec<usize> {
        let mut h = vec![0usize; self.num_classes];
        for &l in &self.labels {
            h[l as usize] += 1;
        }
        h
    }

    /// Renames the data set (e.g. after taking a slice for a fixture).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Every sample, in file order.
    pub fn all(&self) -> Subset<'_> {
        Subset { dataset: self, indices: (0..self.len() as u32).collect() }
    }

    /// The first `n` samples and the rest, in file order (e.g. a held-out tail).
    pub fn split_at(&self, n: usize) -> Result<(Subset<'_>, Subset<'_>)> {
        self.all().split_at(n)
    }

    /// A seeded random split: `fraction` of the samples (rounded to nearest) in the first part.
    pub fn split_random(&self, fraction: f64, seed: u64) -> Result<(Subset<'_>, Subset<'_>)> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(DataError::InvalidArgument {
                name: "fraction",
                reason: format!("must be in [0, 1], got {fraction}"),
            });
        }
        let shuffled = self.all().shuffled(seed);
        let n = (fraction * self.len() as f64).round() as usize;
        shuffled.split_at(n)
    }
}

/// Some samples of a [`Dataset`], in a chosen order, without copying them.
#[derive(Debug, Clone, PartialEq)]
pub struct Subset<'a> {
    dataset: &'a Dataset,
    indices: Vec<u32>,
}

impl<'a> Subset<'a> {
    /// The samples `indices` of `dataset`, each checked to be in range.
    pub fn from_indices(dataset: &'a Dataset, indices: Vec<u32>) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i as usize >= dataset.len()) {
            return Err(DataError::InvalidArgument {
                name: "indices",
                reason: format!("index {bad} is out of range for {} samples", dataset.len()),
            });
        }
        Ok(Subset { dataset, indices })
    }

    /// The underlying data set.
    pub fn dataset(&self) -> &'a Dataset {
        self.dataset
    }

    /// Indices into the data set, in iteration order.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The same samples in a seeded random order.
    pub fn shuffled(&self, seed: u64) -> Subset<'a> {
        let mut indices = self.indices.clone();
        indices.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        Subset { dataset: self.dataset, indices }
    }

    /// The order for training epoch `epoch`: a fresh seeded permutation per epoch, the same
    /// for the same `(seed, epoch)`, drawn from ChaCha8 stream `epoch` of `seed`.
    pub fn epoch_order(&self, seed: u64, epoch: u64) -> Subset<'a> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(epoch);
        let mut indices = self.indices.clone();
        indices.shuffle(&mut rng);
        Subset { dataset: self.dataset, indices }
    }

    /// The first `n` samples and the rest.
    pub fn split_at(&self, n: usize) -> Result<(Subset<'a>, Subset<'a>)> {
        if n > self.len() {
            return Err(DataError::InvalidArgument {
                name: "n",
                reason: format!("cannot take {n} of {} samples", self.len()),
            });
        }
        let (a, b) = self.indices.split_at(n);
        Ok((
            Subset { dataset: self.dataset, indices: a.to_vec() },
            Subset { dataset: self.dataset, indices: b.to_vec() },
        ))
    }

    /// Keeps only the samples for which `keep(index)` holds (e.g. removing examples that were
    /// never forgotten).
    pub fn filter(&self, mut keep: impl FnMut(u32) -> bool) -> Subset<'a> {
        let indices = self.indices.iter().copied().filter(|&i| keep(i)).collect();
        Subset { dataset: self.dataset, indices }
    }

    /// Copies the samples into a new data set (named `name`).
    pub fn to_dataset(&self, name: impl Into<String>) -> Dataset {
        let d = self.dataset;
        let n = d.shape.len();
        let mut images = Vec::with_capacity(self.len() * n);
        let mut labels = Vec::with_capacity(self.len());
        for &i in &self.indices {
            images.extend_from_slice(d.image(i as usize));
            labels.push(d.labels[i as usize]);
        }
        Dataset {
            name: name.into(),
            shape: d.shape,
            images,
            labels,
            num_classes: d.num_classes,
            class_names: d.class_names.clone(),
            normalization: d.normalization.clone(),
        }
    }

    /// Iterates over batches of `batch_size` samples in this subset's order. The last batch is
    /// shorter unless `drop_last`.
    pub fn batches(&self, batch_size: usize, drop_last: bool) -> Result<Batches<'_>> {
        if batch_size == 0 {
            return Err(DataError::InvalidArgument {
                name: "batch_size",
                reason: "must be at least 1".into(),
            });
        }
        Ok(Batches { subset: self, batch_size, drop_last, next: 0 })
    }
}

/// One batch: `len()` samples gathered contiguously.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Images, `[len, channels, height, width]` row-major.
    pub images: Vec<f32>,
    /// Labels.
    pub labels: Vec<u8>,
    /// Indices of the samples in the data set (for per-example statistics).
    pub indices: Vec<u32>,
    /// Shape of one sample.
    pub sample_shape: Option<SampleShape>,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The NCHW shape of `images`.
    pub fn shape(&self) -> [usize; 4] {
        let s = self.sample_shape.unwrap_or(SampleShape { channels: 0, height: 0, width: 0 });
        [self.len(), s.channels, s.height, s.width]
    }
}

/// Iterator over the batches of a [`Subset`].
#[derive(Debug)]
pub struct Batches<'s> {
    subset: &'s Subset<'s>,
    batch_size: usize,
    drop_last: bool,
    next: usize,
}

impl Batches<'_> {
    /// Number of batches the iterator yields in total.
    pub fn num_batches(&self) -> usize {
        let n = self.subset.len();
        if self.drop_last { n / self.batch_size } else { n.div_ceil(self.batch_size) }
    }

    /// Gathers the next batch into `batch`, reusing its buffers; returns `false` at the end.
    pub fn next_into(&mut self, batch: &mut Batch) -> bool {
        let n = self.subset.len();
        let remaining = n - self.next;
        if remaining == 0 || (self.drop_last && remaining < self.batch_size) {
            return false;
        }
        let take = remaining.min(self.batch_size);
        let idx = &self.subset.indices[self.next..self.next + take];
        self.next += take;
        let d = self.subset.dataset;
        batch.images.clear();
        batch.labels.clear();
        batch.indices.clear();
        batch.images.reserve(take * d.shape.len());
        for &i in idx {
            batch.images.extend_from_slice(d.image(i as usize));
            batch.labels.push(d.labels[i as usize]);
        }
        batch.indices.extend_from_slice(idx);
        batch.sample_shape = Some(d.shape);
        true
    }
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let mut batch = Batch::default();
        self.next_into(&mut batch).then_some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn toy(n: usize) -> Dataset {
        let shape = SampleShape { channels: 1, height: 2, width: 2 };
        let raw: Vec<u8> = (0..n * 4).map(|i| (i % 256) as u8).collect();
        let labels = (0..n).map(|i| (i % 3) as u8).collect();
        Dataset::from_raw("toy", shape, &raw, labels, 3, vec![], Normalization::unit_8bit())
            .unwrap()
    }

    #[test]
    fn normalization_rules() {
        let shape = SampleShape { channels: 2, height: 1, width: 2 };
        let norm =
            Normalization::Standardize { max: 10.0, mean: vec![0.5, 0.0], std: vec![0.5, 2.0] };
        let d = Dataset::from_raw("n", shape, &[0u8, 10, 4, 8], vec![0], 1, vec![], norm).unwrap();
        // channel 0: (0/10-0.5)/0.5 = -1, (1-0.5)/0.5 = 1; channel 1: 0.4/2 = 0.2, 0.8/2 = 0.4
        let want = [-1.0f32, 1.0, 0.2, 0.4];
        for (a, b) in d.images().iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{:?}", d.images());
        }
        let bad = Normalization::Standardize { max: 255.0, mean: vec![0.1], std: vec![0.2] };
        assert!(Dataset::from_raw("n", shape, &[0u8; 4], vec![0], 1, vec![], bad).is_err());
    }

    #[test]
    fn invariants_are_checked() {
        let shape = SampleShape { channels: 1, height: 1, width: 2 };
        let unit = Normalization::unit_8bit();
        assert!(Dataset::new("a", shape, vec![0.0; 3], vec![0], 2, vec![], unit.clone()).is_err());
        assert!(Dataset::new("a", shape, vec![0.0; 2], vec![2], 2, vec![], unit.clone()).is_err());
        assert!(
            Dataset::new("a", shape, vec![0.0; 2], vec![1], 2, vec!["x".into()], unit.clone())
                .is_err()
        );
        assert!(Dataset::new("a", shape, vec![0.0; 2], vec![1], 2, vec![], unit).is_ok());
    }

    #[test]
    fn batches_cover_every_sample_once_in_order() {
        let d = toy(10);
        let all = d.all();
        let batches: Vec<Batch> = all.batches(4, false).unwrap().collect();
        assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(batches[2].shape(), [2, 1, 2, 2]);
        let idx: Vec<u32> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(idx, (0..10).collect::<Vec<_>>());
        assert_eq!(&batches[1].images[..4], d.image(4));
        assert_eq!(all.batches(4, true).unwrap().count(), 2);
        assert_eq!(all.batches(4, true).unwrap().num_batches(), 2);
        assert!(all.batches(0, false).is_err());
    }

    #[test]
    fn shuffles_are_seeded_and_epochs_differ() {
        let d = toy(100);
        let a = d.all().epoch_order(7, 0);
        let b = d.all().epoch_order(7, 0);
        let c = d.all().epoch_order(7, 1);
        let e = d.all().epoch_order(8, 0);
        assert_eq!(a.indices(), b.indices());
        assert_ne!(a.indices(), c.indices());
        assert_ne!(a.indices(), e.indices());
        let mut sorted = a.indices().to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn random_split_partitions() {
        let d = toy(50);
        let (a, b) = d.split_random(0.8, 3).unwrap();
        assert_eq!((a.len(), b.len()), (40, 10));
        let mut all: Vec<u32> = a.indices().iter().chain(b.indices()).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
        assert!(d.split_random(1.5, 0).is_err());
        assert!(d.split_at(51).is_err());
    }

    #[test]
    fn subset_materializes() {
        let d = toy(6);
        let s = Subset::from_indices(&d, vec![5, 0]).unwrap();
        let m = s.to_dataset("picked");
        assert_eq!(m.len(), 2);
        assert_eq!(m.image(0), d.image(5));
        assert_eq!(m.labels(), &[d.label(5), d.label(0)]);
        assert!(Subset::from_indices(&d, vec![6]).is_err());
        assert_eq!(d.label_histogram(), vec![2, 2, 2]);
    }

    proptest! {
        #[test]
        fn any_batching_is_a_partition(n in 0usize..60, bs in 1usize..17, seed in any::<u64>(), drop_last: bool) {
            let d = toy(n);
            let order = d.all().epoch_order(seed, 3);
            let mut it = order.batches(bs, drop_last).unwrap();
            let expected_batches = it.num_batches();
            let mut batch = Batch::default();
            let mut seen = Vec::new();
            let mut count = 0;
            while it.next_into(&mut batch) {
                count += 1;
                prop_assert!(batch.len() <= bs);
                for (k, &i) in batch.indices.iter().enumerate() {
                    prop_assert_eq!(&batch.images[k * 4..(k + 1) * 4], d.image(i as usize));
                    prop_assert_eq!(batch.labels[k], d.label(i as usize));
                }
                seen.extend_from_slice(&batch.indices);
            }
            prop_assert_eq!(count, expected_batches);
            let want = if drop_last { n / bs * bs } else { n };
            prop_assert_eq!(seen.len(), want);
            prop_assert_eq!(&seen[..], &order.indices()[..want]);
        }
    }
}
