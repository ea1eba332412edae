//! Every kind of broken input gives a typed error that names the file, the byte offset and
//! what was expected. The broken files are made here from valid ones.

use std::path::{Path, PathBuf};

use tessera_data::cifar::{CifarKind, read_cifar_batch};
use tessera_data::digits::read_digits_csv;
use tessera_data::file::{gzip, write_atomic};
use tessera_data::mnist::IdxImageSet;
use tessera_data::{DataError, KnownSet, Normalization, Source, Split, fixtures_dir, load};

fn idx_images(n: u32, h: u32, w: u32) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend((0..n * h * w).map(|i| (i % 256) as u8));
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 1];
    b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    b.extend_from_slice(labels);
    b
}

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        Case { dir: tempfile::tempdir().unwrap() }
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        write_atomic(&p, bytes).unwrap();
        p
    }
    fn load(&self, images: &Path, labels: &Path) -> Result<tessera_data::Dataset, DataError> {
        IdxImageSet::Mnist.load_files(Split::Train, images, labels, Normalization::unit_8bit())
    }
}

fn assert_names(err: &DataError, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name {}: {msg}",
        path.display()
    );
}

#[test]
fn valid_pair_loads() {
    let c = Case::new();
    let i = c.write("i", &idx_images(4, 2, 3));
    let l = c.write("l", &idx_labels(&[1, 2, 3, 9]));
    let d = c.load(&i, &l).unwrap();
    assert_eq!((d.len(), d.sample_shape().height, d.sample_shape().width), (4, 2, 3));
}

#[test]
fn truncated_idx() {
    let c = Case::new();
    let mut bytes = idx_images(4, 2, 3);
    bytes.truncate(bytes.len() - 5);
    let i = c.write("images", &bytes);
    let l = c.write("labels", &idx_labels(&[0; 4]));
    let err = c.load(&i, &l).unwrap_err();
    match &err {
        DataError::Truncated { offset, available, expected, decompressed, .. } => {
            assert_eq!((*offset, *available, *decompressed), (16, 19, false));
            assert!(expected.contains("24 bytes"), "{expected}");
        }
        e => panic!("{e}"),
    }
    assert_names(&err, &i);
    assert!(err.to_string().contains("byte offset 16"), "{err}");
}

#[test]
fn truncated_idx_inside_gzip_reports_decompressed_offsets() {
    let c = Case::new();
    let mut bytes = idx_images(4, 2, 3);
    bytes.truncate(10);
    let i = c.write("images.gz", &gzip(&bytes));
    let l = c.write("labels", &idx_labels(&[0; 4]));
    let err = c.load(&i, &l).unwrap_err();
    assert!(matches!(err, DataError::Truncated { offset: 4, decompressed: true, .. }), "{err}");
    assert!(err.to_string().contains("of the decompressed data"), "{err}");
}

#[test]
fn trailing_bytes_are_not_ignored() {
    let c = Case::new();
    let mut bytes = idx_images(2, 2, 2);
    bytes.extend_from_slice(&[7, 7, 7]);
    let i = c.write("images", &bytes);
    let l = c.write("labels", &idx_labels(&[0; 2]));
    let err = c.load(&i, &l).unwrap_err();
    assert!(matches!(err, DataError::TrailingBytes { offset: 24, extra: 3, .. }), "{err}");
    assert_names(&err, &i);
}

#[test]
fn wrong_magic() {
    let c = Case::new();
    let mut bytes = idx_images(2, 2, 2);
    bytes[0] = 0x1e; // not gzip, not IDX
    let i = c.write("images", &bytes);
    let l = c.write("labels", &idx_labels(&[0; 2]));
    let err = c.load(&i, &l).unwrap_err();
    assert!(matches!(err, DataError::BadHeader { offset: 0, .. }), "{err}");
    assert_names(&err, &i);

    let mut bytes = idx_images(2, 2, 2);
    bytes[2] = 0x0a; // undefined type code
    let i = c.write("images2", &bytes);
    let err = c.load(&i, &l).unwrap_err();
    assert!(matches!(err, DataError::BadHeader { offset: 2, .. }), "{err}");
}

#[test]
fn dimension_mismatch() {
    let c = Case::new();
    // Labels given where images are expected: 1-D instead of 3-D.
    let l = c.write("labels", &idx_labels(&[0; 2]));
    let err = c.load(&l, &l).unwrap_err();
    assert!(matches!(err, DataError::ShapeMismatch { ref found, .. } if found == &[2]), "{err}");
    assert_names(&err, &l);
}

#[test]
fn count_mismatch() {
    let c = Case::new();
    let i = c.write("images", &idx_images(3, 2, 2));
    let l = c.write("labels", &idx_labels(&[0; 2]));
    let err = c.load(&i, &l).unwrap_err();
    assert!(matches!(err, DataError::CountMismatch { images: 3, labels: 2, .. }), "{err}");
    assert_names(&err, &i);
    assert_names(&err, &l);
}

#[test]
fn label_out_of_range() {
    let c = Case::new();
    let i = c.write("images", &idx_images(4, 1, 1));
    let l = c.write("labels", &idx_labels(&[0, 1, 2, 10]));
    let err = c.load(&i, &l).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange { offset: 11, index: 3, label: 10, num_classes: 10, .. }
        ),
        "{err}"
    );
    assert_names(&err, &l);
}

#[test]
fn corrupt_gzip() {
    let c = Case::new();
    let good = gzip(&idx_images(50, 28, 28));
    // Flip bytes in the middle of the deflate stream.
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    for b in &mut flipped[mid..mid + 16] {
        *b ^= 0x5a;
    }
    let l = c.write("labels", &idx_labels(&[0; 50]));
    let i = c.write("flipped.gz", &flipped);
    let err = c.load(&i, &l).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err}");
    assert_names(&err, &i);
    // A gzip file cut short is corrupt too (not a short IDX file).
    let i = c.write("cut.gz", &good[..good.len() / 3]);
    let err = c.load(&i, &l).unwrap_err();
    assert!(
        matches!(err, DataError::Gzip { compressed_len, .. } if compressed_len == (good.len() / 3) as u64),
        "{err}"
    );
}

#[test]
fn path_is_a_directory() {
    let c = Case::new();
    let l = c.write("labels", &idx_labels(&[0; 2]));
    let err = c.load(c.dir.path(), &l).unwrap_err();
    assert!(matches!(err, DataError::IsADirectory { .. }), "{err}");
    assert_names(&err, c.dir.path());
    let err = read_cifar_batch(c.dir.path(), CifarKind::Cifar10, "x", Normalization::unit_8bit())
        .unwrap_err();
    assert!(matches!(err, DataError::IsADirectory { .. }), "{err}");
    let err = read_digits_csv(c.dir.path(), Normalization::unit_8bit()).unwrap_err();
    assert!(matches!(err, DataError::IsADirectory { .. }), "{err}");
}

#[test]
fn cifar_truncated_and_bad_label() {
    let c = Case::new();
    let real =
        std::fs::read(fixtures_dir().join("cifar10-samples/test_batch_first20.bin")).unwrap();
    let p = c.write("short.bin", &real[..3073 * 2 - 5]);
    let err =
        read_cifar_batch(&p, CifarKind::Cifar10, "x", Normalization::unit_8bit()).unwrap_err();
    assert!(matches!(err, DataError::Truncated { offset: 3073, available: 3068, .. }), "{err}");
    assert_names(&err, &p);

    let mut bad = real.clone();
    bad[3073] = 12; // label of record 1
    let p = c.write("bad.bin", &bad);
    let err =
        read_cifar_batch(&p, CifarKind::Cifar10, "x", Normalization::unit_8bit()).unwrap_err();
    assert!(
        matches!(err, DataError::LabelOutOfRange { offset: 3073, index: 1, label: 12, .. }),
        "{err}"
    );

    // A CIFAR-10 batch is not a whole number of CIFAR-100 records.
    let p = c.write("ten.bin", &real);
    let err = read_cifar_batch(
        &p,
        CifarKind::Cifar100 { coarse: false },
        "x",
        Normalization::unit_8bit(),
    )
    .unwrap_err();
    assert!(matches!(err, DataError::Truncated { .. }), "{err}");
}

#[test]
fn missing_set_names_the_candidates() {
    let c = Case::new();
    let err =
        load(KnownSet::Digits, Split::Train, &Source::Dir(c.dir.path().into()), None).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("digits.csv.gz"), "{err}");
}
