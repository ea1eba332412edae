//! Criterion view of the kernel suite: dense vs block-punched 8x4 vs CSR at 8x on two named
//! shapes, same run, so the ratio is what to read. The full sweep with a JSON + Markdown
//! summary is `cargo xtask bench kernels`.

use criterion::{BenchmarkId, Criterion, Throughput};
use tessera_kernels::formats::block_punched::BlockPunched;
use tessera_kernels::formats::csr::Csr;
use tessera_kernels::{ConvScratch, ConvShape, Isa, RowGroupConv, RowGroupMatrix};
use tessera_sparsity::{Scheme, Target};

pub(crate) fn bench(c: &mut Criterion) {
    let isa = Isa::detect();
    let shapes = [
        ("conv3x3_64_56x56", ConvShape::conv2d(64, 64, [56, 56], [3, 3], 1, 1).expect("shape")),
        (
            "bert_fc_128x768x3072",
            ConvShape::conv2d(768, 3072, [1, 128], [1, 1], 1, 0).expect("shape"),
        ),
    ];
    for (name, shape) in shapes {
        let layer = shape.layer(name).expect("layer");
        let w: Vec<f32> = (0..layer.geometry.len())
            .map(|i| ((i as f64 * 0.618_033_988_75).fract() as f32 - 0.5) * 0.1)
            .collect();
        let x: Vec<f32> = (0..shape.in_channels * shape.input_plane())
            .map(|i| ((i as f64 * 0.377).fract() as f32) - 0.5)
            .collect();
        let mut y = vec![0.0f32; shape.out_channels * shape.output_positions()];
        let mut group = c.benchmark_group(format!("kernels/{name}"));
        group.sample_size(20);
        group.throughput(Throughput::Elements(shape.flops()));
        let dense = RowGroupMatrix::from_dense(
            shape.out_channels,
            shape.cols(),
            &w,
            None,
            &RowGroupMatrix::uniform_groups(shape.out_channels, shape.out_per_group(), 8),
        )
        .expect("dense");
        let mut cases: Vec<(&str, RowGroupConv)> =
            vec![("dense-direct", RowGroupConv::new(dense, shape).expect("conv"))];
        let p = "block-punched:8x4"
            .parse::<Scheme>()
            .expect("scheme")
            .project(&layer, &w, Target::Compression(8.0))
            .expect("project");
        let bp =
            BlockPunched::encode(&layer, &p.values, &p.mask, 8, 4).expect("encode").to_row_groups();
        cases.push(("block-punched-8x4@8x", RowGroupConv::new(bp, shape).expect("conv")));
        let p =
            Scheme::Unstructured.project(&layer, &w, Target::Compression(8.0)).expect("project");
        let csr = Csr::encode(shape.out_channels, shape.cols(), &p.values, &p.mask)
            .expect("encode")
            .to_row_groups();
        cases.push(("csr@8x", RowGroupConv::new(csr, shape).expect("conv")));
        for (label, conv) in &cases {
            let mut scratch = ConvScratch::for_conv(conv);
            group.bench_function(BenchmarkId::new(*label, 1), |b| {
                b.iter(|| conv.run(isa, &x, &mut y, &mut scratch, 1).expect("run"))
            });
        }
        group.finish();
    }
}
