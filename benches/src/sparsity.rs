//! Projection cost of every scheme on two real layer shapes: a 4096x4096 FC matrix (a large
//! transformer / VGG classifier layer) and a 256x256 3x3 convolution (ResNet stage 3), at 8x.

use criterion::{BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tessera_sparsity::{Layer, Scheme, Target};

fn weights(n: usize) -> Vec<f32> {
    // Deterministic, full-range, no ties: a golden-ratio sequence.
    (0..n).map(|i| ((i as f64 * 0.618_033_988_75).fract() as f32 - 0.5) * 0.1).collect()
}

pub(crate) fn bench(c: &mut Criterion) {
    let target = Target::Compression(8.0);
    let cases: [(Layer, &[&str]); 2] = [
        (
            Layer::linear("fc4096", 4096, 4096).expect("layer"),
            &[
                "unstructured",
                "filter",
                "column",
                "block-punched:8x4",
                "block:16x16",
                "block:16x16+balanced",
                "bcr:4x16",
                "bcr:8x8",
                "nm:1:8",
                "polarized:8(unstructured)",
            ],
        ),
        (
            Layer::conv2d("conv256", 256, 256, 3, 3).expect("layer"),
            &[
                "unstructured",
                "filter",
                "channel",
                "column",
                "connectivity",
                "pattern:8+connectivity",
                "block-punched:8x4",
                "bcr:8x8",
                "kgs:8x4",
                "nm:1:8",
            ],
        ),
    ];
    for (layer, schemes) in cases {
        let w = weights(layer.geometry.len());
        let mut group = c.benchmark_group(format!("sparsity/project/{}", layer.name));
        group.sample_size(10);
        group.throughput(Throughput::Elements(w.len() as u64));
        for text in schemes {
            let scheme: Scheme = text.parse().expect("scheme");
            group.bench_function(BenchmarkId::from_parameter(text), |b| {
                b.iter(|| black_box(scheme.project(&layer, &w, target).expect("project")))
            });
        }
        group.finish();
    }
}
