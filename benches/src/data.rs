//! Reading MNIST and iterating one epoch of shuffled batches.
//!
//! Uses the full 60,000-image training set from the cache when `cargo xtask data fetch mnist`
//! has run, otherwise the 1000-record fixture (the printed header says which).

use criterion::{BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tessera_data::{Batch, KnownSet, Source, Split, load};

pub(crate) fn bench(c: &mut Criterion) {
    let source = Source::auto(KnownSet::Mnist);
    eprintln!("data bench: MNIST from {}", tessera_benches::describe_source(&source));
    let mut group = c.benchmark_group("data/mnist");
    group.sample_size(10);
    let train = load(KnownSet::Mnist, Split::Train, &source, None).expect("MNIST train");
    let bytes = (train.len() * 785) as u64;
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function(BenchmarkId::new("read_train", train.len()), |b| {
        b.iter(|| black_box(load(KnownSet::Mnist, Split::Train, &source, None).expect("load")))
    });
    group.throughput(Throughput::Elements(train.len() as u64));
    for batch_size in [64usize, 256] {
        group.bench_function(BenchmarkId::new("epoch_shuffled_batches", batch_size), |b| {
            let mut epoch = 0;
            let mut batch = Batch::default();
            b.iter(|| {
                let order = train.all().epoch_order(7, epoch);
                epoch += 1;
                let mut it = order.batches(batch_size, false).expect("batches");
                let mut n = 0usize;
                while it.next_into(&mut batch) {
                    n += black_box(&batch).len();
                }
                n
            })
        });
    }
    group.finish();
}
