//! MNIST and Fashion-MNIST: a pair of IDX files (u8 images `[n, 28, 28]`, u8 labels `[n]`)
//! per split.
//!
//! File names differ between distributions (`train-images-idx3-ubyte`,
//! `train-images.idx3-ubyte`, either gzipped); [`IdxImageSet::load_dir`] accepts all of them.

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, Normalization, SampleShape, Split};
use crate::error::{DataError, Result};
use crate::file::read_file;
use crate::idx::{IdxArray, IdxData};

/// The IDX image-classification sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdxImageSet {
    /// Handwritten digits (LeCun, Cortes, Burges).
    Mnist,
    /// Zalando's clothing images, a drop-in replacement for MNIST.
    FashionMnist,
}

const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

impl IdxImageSet {
    /// Short name used for directories and data set names.
    pub fn name(self) -> &'static str {
        match self {
            IdxImageSet::Mnist => "mnist",
            IdxImageSet::FashionMnist => "fashion-mnist",
        }
    }

    /// The ten class names.
    pub fn class_names(self) -> Vec<String> {
        match self {
            IdxImageSet::Mnist => (0..10).map(|d| d.to_string()).collect(),
            IdxImageSet::FashionMnist => FASHION_CLASSES.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The standardization with this set's published training statistics.
    pub fn standard_normalization(self) -> Normalization {
        match self {
            IdxImageSet::Mnist => Normalization::mnist(),
            IdxImageSet::FashionMnist => Normalization::fashion_mnist(),
        }
    }

    /// Candidate paths of the image and label files of `split` in `dir`, most common first.
    pub fn candidates(self, split: Split, dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let stem = match split {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        let names = |kind: &str, rank: u8| {
            let mut v = Vec::new();
            for sep in ['-', '.'] {
                let base = format!("{stem}-{kind}{sep}idx{rank}-ubyte");
                v.push(dir.join(&base));
                v.push(dir.join(format!("{base}.gz")));
            }
            v
        };
        (names("images", 3), names("labels", 1))
    }

    /// Loads `split` from the first existing candidate files in `dir`.
    pub fn load_dir(
        self,
        split: Split,
        dir: &Path,
        normalization: Normalization,
    ) -> Result<Dataset> {
        let (images, labels) = self.candidates(split, dir);
        let hint = "run `cargo xtask data fetch` (see README, \"Data\") or point at the fixtures";
        let pick = |c: Vec<PathBuf>, what: &str| {
            c.iter().find(|p| p.exists()).cloned().ok_or_else(|| DataError::NotFound {
                what: format!("{} {} {what}", self.name(), split.name()),
                candidates: c,
                hint: hint.to_string(),
            })
        };
        let images = pick(images, "images")?;
        let labels = pick(labels, "labels")?;
        self.load_files(split, &images, &labels, normalization)
    }

    /// Loads a split from explicit image and label files.
    pub fn load_files(
        self,
        split: Split,
        images_path: &Path,
        labels_path: &Path,
        normalization: Normalization,
    ) -> Result<Dataset> {
        let _span =
            tracing::info_span!("load_idx", set = self.name(), split = split.name()).entered();
        let img_file = read_file(images_path, "IDX image")?;
        let images = IdxArray::parse(&img_file)?;
        let IdxData::U8(pixels) = &images.data else {
            return Err(DataError::ShapeMismatch {
                path: images_path.to_path_buf(),
                expected: format!("u8 pixels, found {:?} elements", images.data.dtype()),
                found: images.dims.clone(),
            });
        };
        let [n, h, w] = images.dims[..] else {
            return Err(DataError::ShapeMismatch {
                path: images_path.to_path_buf(),
                expected: "a 3-D u8 array [count, rows, cols]".into(),
                found: images.dims.clone(),
            });
        };
        let lbl_file = read_file(labels_path, "IDX label")?;
        let labels = IdxArray::parse(&lbl_file)?;
        let (IdxData::U8(label_bytes), [count]) = (&labels.data, &labels.dims[..]) else {
            return Err(DataError::ShapeMismatch {
                path: labels_path.to_path_buf(),
                expected: "a 1-D u8 array [count]".into(),
                found: labels.dims.clone(),
            });
        };
        if *count != n {
            return Err(DataError::CountMismatch {
                images_path: images_path.to_path_buf(),
                images: n,
                labels_path: labels_path.to_path_buf(),
                labels: *count,
            });
        }
        if let Some((i, &l)) = label_bytes.iter().enumerate().find(|&(_, &l)| l >= 10) {
            return Err(DataError::LabelOutOfRange {
                path: labels_path.to_path_buf(),
                offset: (labels.header_len + i) as u64,
                index: i,
                label: u32::from(l),
                num_classes: 10,
                decompressed: lbl_file.decompressed,
            });
        }
        let shape = SampleShape { channels: 1, height: h, width: w };
        let name = format!("{}/{}", self.name(), split.name());
        tracing::debug!(samples = n, "loaded");
        Dataset::from_raw(
            name,
            shape,
            pixels,
            label_bytes.clone(),
            10,
            self.class_names(),
            normalization,
        )
    }
}
