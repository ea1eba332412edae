//! Reads full MNIST from the cache (after `cargo xtask data fetch mnist`) and prints what it
//! found: `cargo run -p tessera-data --example read_mnist`.

#![allow(clippy::print_stdout)] // an example prints its findings

use tessera_data::{KnownSet, Source, Split, load};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let source = Source::auto(KnownSet::Mnist);
    for split in [Split::Train, Split::Test] {
        let d = load(KnownSet::Mnist, split, &source, None)?;
        let mut batches = 0;
        for _ in d.all().epoch_order(0, 0).batches(128, false)? {
            batches += 1;
        }
        println!(
            "{}: {} images of {:?}, {} batches of 128, class counts {:?} (from {:?})",
            d.name(),
            d.len(),
            d.sample_shape(),
            batches,
            d.label_histogram(),
            source
        );
    }
    Ok(())
}
