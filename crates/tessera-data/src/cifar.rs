//! CIFAR-10 and CIFAR-100 "binary version" batches.
//!
//! CIFAR-10 record: 1 label byte, then 1024 red, 1024 green, 1024 blue bytes (32x32,
//! row-major) = 3073 bytes. CIFAR-100 record: 1 coarse label byte, 1 fine label byte, then the
//! same 3072 pixel bytes = 3074 bytes. A batch file is a plain concatenation of records, so
//! its length must be a whole number of records; anything else is a truncated file. The pixel
//! planes are already channel-major, so a record's image is CHW as stored.
//!
//! Full CIFAR is not in any package registry (DATA.md); users who have
//! `cifar-10-batches-bin/` read it with [`load_cifar10_dir`]. The 20 real test images in the
//! fixtures exercise the reader.

use std::path::Path;

use crate::dataset::{Dataset, Normalization, SampleShape, Split};
use crate::error::{DataError, Result};
use crate::file::read_file;

/// The ten CIFAR-10 class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR variant a batch file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CifarKind {
    /// 10 classes, one label byte per record.
    Cifar10,
    /// 100 fine classes in 20 coarse ones; two label bytes per record.
    Cifar100 {
        /// Use the 20 coarse labels instead of the 100 fine ones.
        coarse: bool,
    },
}

impl CifarKind {
    /// Bytes per record.
    pub fn record_len(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1 + PIXELS,
            CifarKind::Cifar100 { .. } => 2 + PIXELS,
        }
    }

    /// Number of classes of the selected labels.
    pub fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 { coarse: true } => 20,
            CifarKind::Cifar100 { coarse: false } => 100,
        }
    }

    /// Offset of the selected label inside a record.
    fn label_offset(self) -> usize {
        match self {
            CifarKind::Cifar10 | CifarKind::Cifar100 { coarse: true } => 0,
            CifarKind::Cifar100 { coarse: false } => 1,
        }
    }

    fn pixel_offset(self) -> usize {
        self.record_len() - PIXELS
    }
}

/// Reads one batch file (raw or gzip) into a data set named `name`.
pub fn read_cifar_batch(
    path: &Path,
    kind: CifarKind,
    name: &str,
    normalization: Normalization,
) -> Result<Dataset> {
    let (raw, labels) = read_records(path, kind)?;
    let class_names = match kind {
        CifarKind::Cifar10 => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
        CifarKind::Cifar100 { .. } => Vec::new(),
    };
    let shape = SampleShape { channels: 3, height: 32, width: 32 };
    Dataset::from_raw(name, shape, &raw, labels, kind.num_classes(), class_names, normalization)
}

/// Raw pixels and labels of one batch file, every label range-checked.
fn read_records(path: &Path, kind: CifarKind) -> Result<(Vec<u8>, Vec<u8>)> {
    let file = read_file(path, "CIFAR binary batch")?;
    let rec = kind.record_len();
    let whole = file.bytes.len() / rec * rec;
    if file.bytes.is_empty() || whole != file.bytes.len() {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            offset: whole as u64,
            expected: format!("a whole {rec}-byte {kind:?} record"),
            available: (file.bytes.len() - whole) as u64,
            decompressed: file.decompressed,
        });
    }
    let n = whole / rec;
    let mut pixels = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, record) in file.bytes.chunks_exact(rec).enumerate() {
        // Range-check every label byte the record carries, not only the selected one.
        let label_bytes = &record[..kind.pixel_offset()];
        let limits: &[usize] = match kind {
            CifarKind::Cifar10 => &[10],
            CifarKind::Cifar100 { .. } => &[20, 100],
        };
        for (j, (&l, &limit)) in label_bytes.iter().zip(limits).enumerate() {
            if l as usize >= limit {
                return Err(DataError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    offset: (i * rec + j) as u64,
                    index: i,
                    label: u32::from(l),
                    num_classes: limit,
                    decompressed: file.decompressed,
                });
            }
        }
        labels.push(record[kind.label_offset()]);
        pixels.extend_from_slice(&record[kind.pixel_offset()..]);
    }
    Ok((pixels, labels))
}

/// Loads CIFAR-10 from an extracted `cifar-10-batches-bin/` directory: `data_batch_1.bin` to
/// `data_batch_5.bin` for training, `test_batch.bin` for test. Class names come from
/// `batches.meta.txt` when present.
pub fn load_cifar10_dir(dir: &Path, split: Split, normalization: Normalization) -> Result<Dataset> {
    let files: Vec<_> = match split {
        Split::Train => (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).collect(),
        Split::Test => vec![dir.join("test_batch.bin")],
    };
    let mut raw = Vec::new();
    let mut labels = Vec::new();
    for f in &files {
        if !f.exists() {
            return Err(DataError::NotFound {
                what: format!("CIFAR-10 {} batch", split.name()),
                candidates: vec![f.clone()],
                hint: "CIFAR-10 is not in any package registry; download the binary version \
                       (cifar-10-binary.tar.gz) and extract it there"
                    .into(),
            });
        }
        let (r, l) = read_records(f, CifarKind::Cifar10)?;
        raw.extend_from_slice(&r);
        labels.extend_from_slice(&l);
    }
    let meta = dir.join("batches.meta.txt");
    let class_names = match std::fs::read_to_string(&meta) {
        Ok(text) => {
            let names: Vec<String> =
                text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            if names.len() != 10 {
                return Err(DataError::BadHeader {
                    path: meta,
                    offset: 0,
                    expected: "10 non-empty class-name lines".into(),
                    found: format!("{} lines", names.len()),
                    decompressed: false,
                });
            }
            names
        }
        Err(_) => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    let shape = SampleShape { channels: 3, height: 32, width: 32 };
    Dataset::from_raw(
        format!("cifar10/{}", split.name()),
        shape,
        &raw,
        labels,
        10,
        class_names,
        normalization,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::write_atomic;

    fn record(label: &[u8], fill: u8) -> Vec<u8> {
        let mut r = label.to_vec();
        r.extend((0..PIXELS).map(|i| fill.wrapping_add((i % 7) as u8)));
        r
    }

    #[test]
    fn reads_cifar10_and_cifar100() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.bin");
        let mut bytes = record(&[3], 10);
        bytes.extend(record(&[9], 20));
        write_atomic(&p, &bytes).unwrap();
        let d =
            read_cifar_batch(&p, CifarKind::Cifar10, "t", Normalization::UnitRange { max: 1.0 })
                .unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d.labels(), &[3, 9]);
        // Red plane first, then green: value at (c=1, y=0, x=0) is byte 1 + 1024.
        assert_eq!(d.image(0)[1024], f32::from(10u8.wrapping_add((1024 % 7) as u8)));
        assert_eq!(d.class_names()[3], "cat");

        let p100 = dir.path().join("c.bin");
        write_atomic(&p100, &record(&[19, 99], 1)).unwrap();
        let fine = read_cifar_batch(
            &p100,
            CifarKind::Cifar100 { coarse: false },
            "f",
            Normalization::unit_8bit(),
        )
        .unwrap();
        let coarse = read_cifar_batch(
            &p100,
            CifarKind::Cifar100 { coarse: true },
            "c",
            Normalization::unit_8bit(),
        )
        .unwrap();
        assert_eq!((fine.labels(), coarse.labels()), (&[99u8][..], &[19u8][..]));
        assert_eq!(fine.num_classes(), 100);
    }

    #[test]
    fn directory_loader_concatenates_batches() {
        let dir = tempfile::tempdir().unwrap();
        for i in 1..=5u8 {
            write_atomic(&dir.path().join(format!("data_batch_{i}.bin")), &record(&[i], i))
                .unwrap();
        }
        write_atomic(&dir.path().join("test_batch.bin"), &record(&[0], 0)).unwrap();
        let train = load_cifar10_dir(dir.path(), Split::Train, Normalization::cifar10()).unwrap();
        assert_eq!(train.labels(), &[1, 2, 3, 4, 5]);
        let test = load_cifar10_dir(dir.path(), Split::Test, Normalization::cifar10()).unwrap();
        assert_eq!(test.len(), 1);
        std::fs::remove_file(dir.path().join("data_batch_3.bin")).unwrap();
        let err = load_cifar10_dir(dir.path(), Split::Train, Normalization::cifar10()).unwrap_err();
        assert!(matches!(err, DataError::NotFound { .. }), "{err}");
    }
}
