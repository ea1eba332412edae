//! The zoo-like graphs of the issue (LeNet-5, a VGG-style CIFAR net, a ResNet block with a
//! residual add, a GRU classifier) plus an attention block: built, saved, loaded, passed
//! through every pass and interpreted, with outputs unchanged by the passes. Snapshots of the
//! textual dumps pin what the passes do (`UPDATE_EXPECT=1 cargo test` refreshes them).
#![allow(clippy::cloned_ref_to_slice_refs)] // `&[x.clone()]` reads better here

use expect_test::{Expect, expect};
use tessera_ir::examples::{attention_block, gru_classifier, lenet5, resnet_block, vgg_cifar};
use tessera_ir::passes::{
    FoldBatchNorm, FoldReshapes, FuseActivation, Pass, Pipeline, RemoveDeadChannels,
};
use tessera_ir::{Graph, Tensor, dump, interp, io, stats};
use tessera_sparsity::{Scheme, Target};

fn input_for(g: &Graph, seed: u64) -> Tensor {
    Tensor::uniform(g.inputs[0].shape.clone(), 1.0, seed)
}

fn assert_same(a: &[Tensor], b: &[Tensor], what: &str) {
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.shape, y.shape, "{what}");
        let scale = x.data.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (p, q)) in x.data.iter().zip(&y.data).enumerate() {
            assert!((p - q).abs() <= 1e-5 * scale, "{what}: output {i}: {p} vs {q}");
        }
    }
}

/// Save, load, every pass on its own, the standard pipeline; outputs unchanged throughout.
fn exercise(g: &Graph, snapshot: Expect) {
    let x = input_for(g, 1234);
    let want = interp::run(g, &[x.clone()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    io::save(g, dir.path()).unwrap();
    let loaded = io::load(dir.path()).unwrap();
    assert_eq!(&loaded, g, "{}: save/load round trip", g.name);
    let passes: [Box<dyn Pass>; 4] = [
        Box::new(FoldBatchNorm),
        Box::new(FuseActivation),
        Box::new(RemoveDeadChannels),
        Box::new(FoldReshapes),
    ];
    for p in passes {
        if let Some(rewritten) = p.run(g).unwrap() {
            assert_same(
                &interp::run(&rewritten, &[x.clone()]).unwrap(),
                &want,
                &format!("{} after {}", g.name, p.name()),
            );
        }
    }
    let (opt, reports) = Pipeline::standard().run(g.clone()).unwrap();
    assert_eq!(reports.len(), 4);
    assert_same(
        &interp::run(&opt, &[x.clone()]).unwrap(),
        &want,
        &format!("{} after the pipeline", g.name),
    );
    // A batch of 3 runs too, and its first sample matches.
    let batch = Tensor::uniform(
        [3].into_iter().chain(g.inputs[0].shape[1..].iter().copied()).collect::<Vec<_>>(),
        1.0,
        99,
    );
    let out = interp::run(&opt, &[batch.clone()]).unwrap();
    assert_eq!(out[0].shape[0], 3);
    let per = batch.len() / 3;
    let first = Tensor::new(g.inputs[0].shape.clone(), batch.data[..per].to_vec());
    let one = interp::run(&opt, &[first]).unwrap();
    assert_same(
        &[Tensor::new(one[0].shape.clone(), out[0].data[..one[0].len()].to_vec())],
        &one,
        "batch of 3",
    );
    snapshot.assert_eq(&dump(&opt));
}

#[test]
fn lenet5_round_trip_and_passes() {
    exercise(
        &lenet5().unwrap(),
        expect![[r#"
        graph lenet5(%x [1x1x28x28])
          %relu1 = conv[s1x1 p2x2 d1x1 g1 +relu](%x; conv1.weight[6x1x5x5], conv1.bias[6]) -> [1x6x28x28]
          %pool1 = max_pool[k2x2 s2x2 p0x0](%relu1) -> [1x6x14x14]
          %relu2 = conv[s1x1 p0x0 d1x1 g1 +relu](%pool1; conv2.weight[16x6x5x5], conv2.bias[16]) -> [1x16x10x10]
          %pool2 = max_pool[k2x2 s2x2 p0x0](%relu2) -> [1x16x5x5]
          %flatten = flatten[from 1](%pool2) -> [1x400]
          %relu3 = linear[+relu](%flatten; fc1.weight[120x400], fc1.bias[120]) -> [1x120]
          %relu4 = linear[+relu](%relu3; fc2.weight[84x120], fc2.bias[84]) -> [1x84]
          %fc3 = linear(%relu4; fc3.weight[10x84], fc3.bias[10]) -> [1x10]
          return %fc3
    "#]],
    );
}

#[test]
fn vgg_round_trip_and_passes() {
    exercise(
        &vgg_cifar().unwrap(),
        expect![[r#"
        graph vgg-cifar(%x [1x3x32x32])
          %relu0 = conv[s1x1 p1x1 d1x1 g1 +relu](%x; conv0.weight[16x3x3x3], conv0.bias[16]) -> [1x16x32x32]
          %relu1 = conv[s1x1 p1x1 d1x1 g1 +relu](%relu0; conv1.weight[16x16x3x3], conv1.bias[16]) -> [1x16x32x32]
          %pool1 = max_pool[k2x2 s2x2 p0x0](%relu1) -> [1x16x16x16]
          %relu2 = conv[s1x1 p1x1 d1x1 g1 +relu](%pool1; conv2.weight[32x16x3x3], conv2.bias[32]) -> [1x32x16x16]
          %relu3 = conv[s1x1 p1x1 d1x1 g1 +relu](%relu2; conv3.weight[32x32x3x3], conv3.bias[32]) -> [1x32x16x16]
          %pool3 = max_pool[k2x2 s2x2 p0x0](%relu3) -> [1x32x8x8]
          %gap = global_avg_pool(%pool3) -> [1x32]
          %fc = linear(%gap; fc.weight[10x32], fc.bias[10]) -> [1x10]
          return %fc
    "#]],
    );
}

#[test]
fn resnet_block_round_trip_and_passes() {
    exercise(
        &resnet_block().unwrap(),
        expect![[r#"
            graph resnet-block(%x [1x16x8x8])
              %relu1 = conv[s1x1 p1x1 d1x1 g1 +relu](%x; conv1.weight[16x16x3x3], conv1.bias[16]) -> [1x16x8x8]
              %bn2 = conv[s1x1 p1x1 d1x1 g1](%relu1; conv2.weight[16x16x3x3], conv2.bias[16]) -> [1x16x8x8]
              %relu2 = add[+relu](%bn2, %x) -> [1x16x8x8]
              %gap = global_avg_pool(%relu2) -> [1x16]
              %fc = linear(%gap; fc.weight[10x16], fc.bias[10]) -> [1x10]
              return %fc
        "#]],
    );
}

#[test]
fn gru_round_trip_and_passes() {
    exercise(
        &gru_classifier().unwrap(),
        expect![[r#"
        graph gru-classifier(%x [1x6x12])
          %gru = gru[h16](%x; gru.w_ih[48x12], gru.w_hh[48x16], gru.b_ih[48], gru.b_hh[48]) -> [1x16]
          %fc = linear(%gru; fc.weight[9x16], fc.bias[9]) -> [1x9]
          return %fc
    "#]],
    );
}

#[test]
fn attention_round_trip_and_passes() {
    exercise(
        &attention_block().unwrap(),
        expect![[r#"
        graph attention(%x [1x4x8])
          %q = linear(%x; q.weight[8x8], q.bias[8]) -> [1x4x8]
          %k = linear(%x; k.weight[8x8], k.bias[8]) -> [1x4x8]
          %v = linear(%x; v.weight[8x8], v.bias[8]) -> [1x4x8]
          %kt = transpose[[0, 2, 1]](%k) -> [1x8x4]
          %scores = mat_mul(%q, %kt) -> [1x4x4]
          %scaled = scale[x0.35355338](%scores) -> [1x4x4]
          %attn = softmax[axis 2](%scaled) -> [1x4x4]
          %ctx = mat_mul(%attn, %v) -> [1x4x8]
          %o = linear(%ctx; o.weight[8x8], o.bias[8]) -> [1x4x8]
          %res = add(%o, %x) -> [1x4x8]
          %ln = layer_norm[eps 0.00001](%res; ln.gamma[8], ln.beta[8]) -> [1x4x8]
          %flat2 = reshape[[-1, 32]](%ln) -> [1x32]
          %head = linear(%flat2; head.weight[2x32], head.bias[2]) -> [1x2]
          return %head
    "#]],
    );
}

#[test]
fn pruned_models_keep_their_masks_and_shrink_dead_channels() {
    // VGG: channel-prune conv1 (half its input channels: conv0's outputs it no longer reads
    // become dead) and block-punch conv2.
    let mut g = vgg_cifar().unwrap();
    g.prune("conv1", "conv1.weight", &Scheme::Channel, Target::Sparsity(0.5)).unwrap();
    g.prune(
        "conv2",
        "conv2.weight",
        &"block-punched:8x4".parse().unwrap(),
        Target::Compression(4.0),
    )
    .unwrap();
    let x = input_for(&g, 5);
    let want = interp::run(&g, &[x.clone()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    io::save(&g, dir.path()).unwrap();
    let loaded = io::load(dir.path()).unwrap();
    assert_eq!(loaded, g);
    assert!(loaded.params["conv2.weight"].sparsity.is_some());
    let (opt, reports) = Pipeline::standard().run(g.clone()).unwrap();
    assert_same(&interp::run(&opt, &[x]).unwrap(), &want, "pruned VGG");
    let dead = reports.iter().find(|r| r.pass == "remove-dead-channels").unwrap();
    assert!(dead.changed && dead.params.1 < dead.params.0, "{dead:?}");
    // conv0 lost the 8 channels conv1 no longer reads.
    assert_eq!(opt.params["conv0.weight"].tensor.shape, vec![8, 3, 3, 3]);
    assert_eq!(opt.params["conv1.weight"].tensor.shape, vec![16, 8, 3, 3]);
    // Masks survive folding; block-punched structure is intact (BN scales rows, zero stays zero).
    let m = &opt.params["conv2.weight"].sparsity.as_ref().unwrap().mask;
    assert_eq!(m.count(), 32 * 16 * 9 / 4);

    // LeNet: filter pruning with zero biases (dead filters) removes conv2 channels and the
    // fc1 columns they fed through the flatten.
    let mut g = lenet5().unwrap();
    g.prune("conv2", "conv2.weight", &Scheme::Filter, Target::Sparsity(0.5)).unwrap();
    let shapes = g.validate().unwrap();
    let layer = g.weight_layer(&g.nodes[3], "conv2.weight", &shapes).unwrap();
    assert_eq!(layer.geometry.rows(), 16);
    let w = g.params["conv2.weight"].tensor.data.clone();
    let bias = &mut g.params.get_mut("conv2.bias").unwrap().tensor.data;
    for (o, b) in bias.iter_mut().enumerate() {
        if w[o * 150..(o + 1) * 150].iter().all(|&v| v == 0.0) {
            *b = 0.0;
        }
    }
    let x = input_for(&g, 6);
    let want = interp::run(&g, &[x.clone()]).unwrap();
    let (opt, _) = Pipeline::standard().run(g).unwrap();
    assert_eq!(opt.params["conv2.weight"].tensor.shape, vec![8, 6, 5, 5]);
    assert_eq!(opt.params["fc1.weight"].tensor.shape, vec![120, 200]);
    assert_same(&interp::run(&opt, &[x]).unwrap(), &want, "filter-pruned LeNet");
}

/// Zeroes every weight of `param` (shape `[out, in, kh, kw]`) that reads input channel `ch`.
fn zero_input_channel(g: &mut Graph, param: &str, ch: usize) {
    let t = &mut g.params.get_mut(param).unwrap().tensor;
    let (cin, k) = (t.shape[1], t.shape[2] * t.shape[3]);
    for o in 0..t.shape[0] {
        t.data[(o * cin + ch) * k..(o * cin + ch + 1) * k].fill(0.0);
    }
}

/// Whether `mask` over `[out, in, kh, kw]` is block-punched with `rows x cols` blocks: in every
/// block each kernel position is kept for all of its filters x channels or for none.
fn is_block_punched(
    mask: &tessera_sparsity::Mask,
    shape: &[usize],
    rows: usize,
    cols: usize,
) -> bool {
    let (out, cin, k) = (shape[0], shape[1], shape[2] * shape[3]);
    (0..out).step_by(rows).all(|r0| {
        (0..cin).step_by(cols).all(|c0| {
            (0..k).all(|pos| {
                let bits: Vec<bool> = (r0..(r0 + rows).min(out))
                    .flat_map(|o| (c0..(c0 + cols).min(cin)).map(move |c| (o, c)))
                    .map(|(o, c)| mask.get((o * cin + c) * k + pos))
                    .collect();
                bits.iter().all(|&b| b == bits[0])
            })
        })
    })
}

#[test]
fn dead_channels_go_in_whole_blocks_of_a_block_structured_consumer() {
    // conv2 reads conv1's 16 channels in block-punched blocks of 4 input channels. Channel 5
    // dead on its own must stay (removing it would shift every later block by one channel and
    // break the block structure the kernels need); channels 8..12, a whole block, go.
    let bp: Scheme = "block-punched:8x4".parse().unwrap();
    let mut g = vgg_cifar().unwrap();
    g.prune("conv2", "conv2.weight", &bp, Target::Compression(2.0)).unwrap();
    for ch in [5, 8, 9, 10, 11] {
        zero_input_channel(&mut g, "conv2.weight", ch);
    }
    let x = input_for(&g, 7);
    let want = interp::run(&g, &[x.clone()]).unwrap();
    let (opt, _) = Pipeline::standard().run(g.clone()).unwrap();
    assert_same(&interp::run(&opt, &[x.clone()]).unwrap(), &want, "block-punched VGG");
    assert_eq!(opt.params["conv1.weight"].tensor.shape, vec![12, 16, 3, 3]);
    let conv2 = &opt.params["conv2.weight"];
    assert_eq!(conv2.tensor.shape, vec![32, 12, 3, 3]);
    let mask = &conv2.sparsity.as_ref().unwrap().mask;
    assert!(is_block_punched(mask, &conv2.tensor.shape, 8, 4), "blocks survive removal");

    // With conv1 block-punched too (blocks of 8 filters), removal goes 8 channels at a time:
    // 8..12 alone stay, 8..16 all dead go, and both masks stay block-punched.
    let mut g2 = g.clone();
    g2.prune("conv1", "conv1.weight", &bp, Target::Compression(2.0)).unwrap();
    let (opt, _) = Pipeline::standard().run(g2.clone()).unwrap();
    assert_eq!(opt.params["conv1.weight"].tensor.shape, vec![16, 16, 3, 3]);
    for ch in 12..16 {
        zero_input_channel(&mut g2, "conv2.weight", ch);
    }
    let want = interp::run(&g2, &[x.clone()]).unwrap();
    let (opt, _) = Pipeline::standard().run(g2).unwrap();
    assert_same(&interp::run(&opt, &[x.clone()]).unwrap(), &want, "two block-punched layers");
    assert_eq!(opt.params["conv2.weight"].tensor.shape, vec![32, 8, 3, 3]);
    for name in ["conv1.weight", "conv2.weight"] {
        let p = &opt.params[name];
        let mask = &p.sparsity.as_ref().unwrap().mask;
        assert!(is_block_punched(mask, &p.tensor.shape, 8, 4), "{name} stays block-punched");
    }

    // The same dead channels under a dense consumer all go, the lone channel 5 included.
    let mut g = vgg_cifar().unwrap();
    for ch in [5, 8, 9, 10, 11] {
        zero_input_channel(&mut g, "conv2.weight", ch);
    }
    let want = interp::run(&g, &[x.clone()]).unwrap();
    let (opt, _) = Pipeline::standard().run(g).unwrap();
    assert_same(&interp::run(&opt, &[x]).unwrap(), &want, "dense VGG");
    assert_eq!(opt.params["conv2.weight"].tensor.shape, vec![32, 11, 3, 3]);
}

#[test]
fn stats_count_params_and_flops() {
    let mut g = lenet5().unwrap();
    let (per, total) = stats::weight_stats(&g).unwrap();
    assert_eq!(per.len(), 5);
    // conv1: 6*1*25 weights, 28*28 positions.
    assert_eq!(per[0].counts.params_total, 150);
    assert_eq!(per[0].counts.flops_dense, 2 * 150 * 784);
    assert_eq!(total.params_total, 150 + 2400 + 48000 + 10080 + 840);
    g.prune("fc1", "fc1.weight", &"block:4x4".parse().unwrap(), Target::Compression(8.0)).unwrap();
    let (per, _) = stats::weight_stats(&g).unwrap();
    assert_eq!(per[2].counts.params_kept, 6000);
    assert_eq!(per[2].scheme.as_deref(), Some("block:4x4"));
    assert_eq!(per[2].bytes_csr, 8 * 6000 + 4 * 121);
    // GRU weights count every time step.
    let (per, _) = stats::weight_stats(&gru_classifier().unwrap()).unwrap();
    assert_eq!(per[0].counts.flops_dense, 2 * 48 * 12 * 6);
}
