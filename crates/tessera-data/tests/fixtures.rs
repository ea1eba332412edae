//! The committed fixtures are the real data: checksums, counts, label histograms and pixel
//! values read independently from the source files (the official IDX files, the scikit-learn
//! CSV, and foolbox's PNGs opened with Pillow).

use tessera_data::checksum::{read_sums, verify_sums};
use tessera_data::{KnownSet, Normalization, Source, Split, fixtures_dir, load};

/// Published in DATA.md: SHA-256 of the uncompressed first-1000-record files and the 20-image
/// CIFAR-10 batch.
const DATA_MD_SUMS: [(&str, &str); 9] = [
    (
        "mnist/train-images-idx3-ubyte.gz",
        "386bb018796babeaca208787b77c1b9db39532c4098951ea35f4694e744eb4b7",
    ),
    (
        "mnist/train-labels-idx1-ubyte.gz",
        "895f65588e45d05babf0b5fa7aee2a0d782d8143b40b5764e596df91bc9dddeb",
    ),
    (
        "mnist/t10k-images-idx3-ubyte.gz",
        "de7c252b04f05e1f8309634180ccdf286dc6dbac8c579b74e76e02ae0331ca52",
    ),
    (
        "mnist/t10k-labels-idx1-ubyte.gz",
        "832c0d20f0dc42e575488c75a83a970787d4c8d4d05831b2ef03701b4a478a90",
    ),
    (
        "fashion-mnist/train-images-idx3-ubyte.gz",
        "e40edda7e9d8af05f5b762673ec21bbef87429a0c217d9e7953c711409749e45",
    ),
    (
        "fashion-mnist/train-labels-idx1-ubyte.gz",
        "78ada934314bea75dcf5d086dfaad6ca75d2ed2801b6e35392fdb406a6338c12",
    ),
    (
        "fashion-mnist/t10k-images-idx3-ubyte.gz",
        "7a6d8e07ea021ec5bc73135ebd0a5770799557ec6f8242d8749c4f32a3cf4643",
    ),
    (
        "fashion-mnist/t10k-labels-idx1-ubyte.gz",
        "b40abac7ec8228f434940f579deb7cf7b6e3103b5274cb91d1545771f5ef1c8b",
    ),
    (
        "cifar10-samples/test_batch_first20.bin",
        "7a75c7f3d741a45b5f79cc341c8607a874c6f441de815b9d426ace5249b5c733",
    ),
];

fn raw(set: KnownSet, split: Split) -> tessera_data::Dataset {
    // UnitRange{max: 1} keeps the raw integer values, so they compare exactly.
    load(set, split, &Source::Fixtures, Some(Normalization::UnitRange { max: 1.0 })).unwrap()
}

#[test]
fn checksums_match_the_files_and_data_md() {
    let sums = fixtures_dir().join("SHA256SUMS");
    assert_eq!(verify_sums(&sums).unwrap(), 10);
    let entries = read_sums(&sums).unwrap();
    for (path, sha) in DATA_MD_SUMS {
        let e = entries
            .iter()
            .find(|e| e.path.to_str() == Some(path))
            .unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(e.sha256, sha, "{path}");
    }
}

struct Facts {
    set: KnownSet,
    split: Split,
    histogram: [usize; 10],
    first_labels: [u8; 10],
    /// Sample 0, row 14, columns 10..17.
    row14: [u8; 7],
    /// Sample 999, pixel (14, 14).
    last_centre: u8,
    /// Sum of sample 0's pixels.
    first_sum: u32,
}

#[test]
fn idx_fixtures_hold_the_known_records() {
    let facts = [
        Facts {
            set: KnownSet::Mnist,
            split: Split::Train,
            histogram: [97, 116, 99, 93, 105, 92, 94, 117, 87, 100],
            first_labels: [5, 0, 4, 1, 9, 2, 1, 3, 1, 4],
            row14: [0, 0, 0, 81, 240, 253, 253],
            last_centre: 78,
            first_sum: 27525,
        },
        Facts {
            set: KnownSet::Mnist,
            split: Split::Test,
            histogram: [85, 126, 116, 107, 110, 87, 87, 99, 89, 94],
            first_labels: [7, 2, 1, 0, 4, 1, 4, 9, 5, 9],
            row14: [0, 0, 0, 0, 0, 0, 59],
            last_centre: 0,
            first_sum: 18454,
        },
        Facts {
            set: KnownSet::FashionMnist,
            split: Split::Train,
            histogram: [107, 104, 86, 92, 95, 100, 100, 115, 102, 99],
            first_labels: [9, 0, 0, 3, 0, 2, 7, 2, 5, 5],
            row14: [0, 0, 237, 226, 217, 223, 222],
            last_centre: 194,
            first_sum: 76247,
        },
        Facts {
            set: KnownSet::FashionMnist,
            split: Split::Test,
            histogram: [107, 105, 111, 93, 115, 87, 97, 95, 95, 95],
            first_labels: [9, 2, 1, 1, 6, 1, 4, 6, 5, 7],
            row14: [0, 0, 98, 136, 110, 109, 110],
            last_centre: 200,
            first_sum: 33456,
        },
    ];
    for f in facts {
        let d = raw(f.set, f.split);
        let what = format!("{} {}", f.set, f.split.name());
        assert_eq!(d.len(), 1000, "{what}");
        assert_eq!(d.sample_shape().len(), 784, "{what}");
        assert_eq!(d.label_histogram(), f.histogram, "{what}");
        assert_eq!(&d.labels()[..10], f.first_labels, "{what}");
        let row: Vec<u8> =
            d.image(0)[14 * 28 + 10..14 * 28 + 17].iter().map(|&x| x as u8).collect();
        assert_eq!(row, f.row14, "{what}");
        assert_eq!(d.image(999)[14 * 28 + 14] as u8, f.last_centre, "{what}");
        assert_eq!(d.image(0).iter().map(|&x| x as u32).sum::<u32>(), f.first_sum, "{what}");
    }
    assert_eq!(raw(KnownSet::FashionMnist, Split::Test).class_names()[9], "Ankle boot");
}

#[test]
fn default_normalization_is_unit_range() {
    let d = load(KnownSet::Mnist, Split::Train, &Source::Fixtures, None).unwrap();
    assert_eq!(d.image(0)[14 * 28 + 14], 240.0 / 255.0);
    assert!(d.images().iter().all(|&x| (0.0..=1.0).contains(&x)));
}

#[test]
fn cifar_samples_are_the_first_test_images() {
    let d = raw(KnownSet::Cifar10Samples, Split::Test);
    assert_eq!(d.len(), 20);
    assert_eq!(d.labels(), &[3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]);
    // Pixels read from foolbox's cifar10_00_3.png and cifar10_19_6.png with Pillow.
    let px = |i: usize, x: usize, y: usize| -> [u8; 3] {
        let img = d.image(i);
        [0, 1, 2].map(|c| img[c * 1024 + y * 32 + x] as u8)
    };
    assert_eq!(px(0, 0, 0), [158, 112, 49]);
    assert_eq!(px(0, 1, 0), [159, 111, 47]);
    assert_eq!(px(0, 2, 0), [165, 116, 51]);
    assert_eq!(px(0, 16, 16), [101, 101, 92]);
    assert_eq!(px(19, 31, 31), [215, 189, 148]);
    assert_eq!(px(19, 5, 7), [63, 39, 43]);
    assert_eq!(d.class_names()[3], "cat");
}

#[test]
fn digits_are_the_full_sklearn_set() {
    let d = raw(KnownSet::Digits, Split::Train);
    assert_eq!(d.len(), 1797);
    assert_eq!(d.label_histogram(), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    // First row of digits.csv: a zero.
    let first: Vec<u8> = d.image(0)[..8].iter().map(|&x| x as u8).collect();
    assert_eq!(first, [0, 0, 5, 13, 9, 1, 0, 0]);
    assert_eq!(d.label(0), 0);
    assert_eq!(d.label(1796), 8);
    let scaled = load(KnownSet::Digits, Split::Train, &Source::Fixtures, None).unwrap();
    assert_eq!(scaled.image(0)[3], 13.0 / 16.0);
}
