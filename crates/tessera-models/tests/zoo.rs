//! Every zoo model: forward shapes, prunable-weight paths, and export to the IR checked by
//! running the same batch of real fixture images through burn and through the IR interpreter,
//! unpruned and pruned.
//!
//! Tolerance: burn computes in f32 with its own summation order, the interpreter accumulates in
//! f64; outputs must agree to 1e-4 of the largest logit (rounding of a few thousand f32 terms
//! per output stays far below that).

use std::collections::BTreeMap;

use burn::module::{ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::TensorData;
use tessera_data::{KnownSet, Source, Split, load};
use tessera_ir::interp;
use tessera_models::zoo::{Lenet5Config, MobileNetV2Config, ResNetConfig, VggConfig};
use tessera_models::{Backend, Classifier, Masks, weights};
use tessera_sparsity::{Scheme, Target, Tiling};

/// Gives batch norms non-trivial running statistics (fresh ones are mean 0, variance 1).
struct RandomStats {
    path: Vec<String>,
    seed: u64,
}

impl ModuleMapper for RandomStats {
    fn enter_module(&mut self, name: &str, _c: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _n: &str, _c: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let last = self.path.last().map(String::as_str).unwrap_or("");
        let offset = match last {
            "running_mean" | "beta" => 0.0,
            "running_var" | "gamma" => 1.0,
            _ => return param,
        };
        self.seed += 1;
        let seed = self.seed;
        param.map(move |t| {
            let dims = t.dims();
            let n: usize = dims.iter().product();
            let vals: Vec<f32> = tessera_ir::Tensor::uniform([n], 0.5, seed)
                .data
                .iter()
                .map(|v| v + offset)
                .collect();
            Tensor::<D>::from_data(TensorData::new(vals, dims), &t.device())
        })
    }
}

/// The first `n` real fixture images of the shape's kind: MNIST for one-channel 28x28,
/// Fashion-MNIST for other one-channel sizes (center crop), the CIFAR-10 samples for three.
fn batch(shape: [usize; 4], device: &Device) -> (Tensor<4>, tessera_ir::Tensor) {
    let [n, c, h, w] = shape;
    let set = match (c, h) {
        (1, 28) => KnownSet::Mnist,
        (1, _) => KnownSet::FashionMnist,
        _ => KnownSet::Cifar10Samples,
    };
    let d = load(set, Split::Test, &Source::Fixtures, None).unwrap();
    let s = d.sample_shape();
    assert_eq!(s.channels, c);
    let (oy, ox) = ((s.height - h) / 2, (s.width - w) / 2);
    let mut data = Vec::with_capacity(n * c * h * w);
    for i in 0..n {
        let img = d.image(i);
        for ch in 0..c {
            for y in 0..h {
                let row = ch * s.height * s.width + (y + oy) * s.width + ox;
                data.extend_from_slice(&img[row..row + w]);
            }
        }
    }
    let ir = tessera_ir::Tensor::new(shape.to_vec(), data);
    (Tensor::<4>::from_data(TensorData::new(ir.data.clone(), shape), device), ir)
}

fn check_export<M: Classifier>(model: M, input: [usize; 4], masks: &Masks, what: &str) {
    let device = Backend::Flex.device();
    let model = model.map(&mut RandomStats { path: vec![], seed: 0 });
    let model = weights::apply_masks(model, masks);
    let (x, xi) = batch(input, &device);
    let logits = model.forward(x);
    let burn_out: Vec<f32> = logits.into_data().try_to_vec::<f32>().unwrap();
    let graph = model.export(input, masks).unwrap();
    // Batch norms exported their (randomized) running statistics, not the fresh 0 / 1.
    for (name, p) in &graph.params {
        if name.ends_with(".mean") {
            assert!(p.tensor.data.iter().any(|&v| v != 0.0), "{what}: {name} still zero");
        }
        if name.ends_with(".var") {
            assert!(p.tensor.data.iter().any(|&v| v != 1.0), "{what}: {name} still one");
        }
    }
    let ir_out = interp::run(&graph, &[xi]).unwrap().remove(0);
    assert_eq!(ir_out.shape, vec![input[0], 10], "{what}");
    let scale = burn_out.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
    for (i, (a, b)) in burn_out.iter().zip(&ir_out.data).enumerate() {
        assert!((a - b).abs() <= 1e-4 * scale, "{what}: logit {i}: burn {a}, IR {b}");
    }
    // Masks travel with the export.
    for (path, (scheme, mask)) in masks.iter() {
        let p = &graph.params[path];
        assert_eq!(
            p.sparsity.as_ref().map(|s| (&s.scheme, &s.mask)),
            Some((scheme, mask)),
            "{what}: {path}"
        );
        assert!(
            p.tensor.data.iter().enumerate().all(|(i, &v)| mask.get(i) || v == 0.0),
            "{what}: {path} has pruned non-zeros"
        );
    }
}

/// Masks for every prunable weight: block-punched 4x2 at 2x where it tiles, unstructured else.
fn masks_for<M: Classifier>(model: &M, input: [usize; 4]) -> Masks {
    let mut masks = Masks::new();
    for w in weights::prunable_weights(model, input).unwrap() {
        let scheme: Scheme = if w.layer.geometry.groups() == 1 && w.layer.geometry.rows() % 4 == 0 {
            "block-punched:4x2".parse().unwrap()
        } else {
            Scheme::Unstructured
        };
        let p = scheme
            .project_with(&w.layer, &w.values, Target::Compression(2.0), Tiling::Pad)
            .unwrap();
        masks.insert(w.path.clone(), scheme, p.mask);
    }
    masks
}

fn check_model<M: Classifier>(make: impl Fn() -> M, input: [usize; 4], name: &str) {
    let model = make();
    // Paths from the export exist in burn's module tree.
    let paths = weights::collect_paths(&model);
    let prunable = weights::prunable_weights(&model, input).unwrap();
    assert!(!prunable.is_empty());
    for w in &prunable {
        assert!(paths.contains(&w.path), "{name}: `{}` not among burn paths {paths:?}", w.path);
        assert_eq!(w.values.len(), w.layer.geometry.len());
    }
    check_export(make(), input, &Masks::new(), &format!("{name} dense"));
    let masks = masks_for(&model, input);
    check_export(model, input, &masks, &format!("{name} pruned"));
}

#[test]
fn lenet5_exports_exactly() {
    let device = Backend::Flex.device();
    check_model(|| Lenet5Config::default().init(&device).unwrap(), [2, 1, 28, 28], "lenet5");
}

#[test]
fn caffe_lenet5_has_the_papers_430k_weights_and_exports_exactly() {
    let device = Backend::Flex.device();
    let model = Lenet5Config::caffe().init(&device).unwrap();
    let prunable = weights::prunable_weights(&model, [1, 1, 28, 28]).unwrap();
    let counts: Vec<(String, usize)> =
        prunable.iter().map(|w| (w.path.clone(), w.values.len())).collect();
    let expected = [
        ("conv1.weight", 20 * 25),
        ("conv2.weight", 50 * 20 * 25),
        ("fc1.weight", 800 * 500),
        ("fc2.weight", 500 * 10),
    ];
    assert_eq!(counts.len(), expected.len(), "{counts:?}");
    for (path, n) in expected {
        assert!(counts.contains(&(path.to_string(), n)), "{path} {n} in {counts:?}");
    }
    // ADMM-NN's "430.5K weights" for Caffe's LeNet-5.
    assert_eq!(counts.iter().map(|c| c.1).sum::<usize>(), 430_500);
    check_model(|| Lenet5Config::caffe().init(&device).unwrap(), [2, 1, 28, 28], "lenet5 caffe");
}

#[test]
fn vgg_exports_exactly() {
    let device = Backend::Flex.device();
    let cfg =
        VggConfig { in_channels: 1, classes: 10, width: 0.25, plan: vec![32, 0, 64, 64, 0, 128] };
    check_model(|| cfg.init(&device).unwrap(), [2, 1, 16, 16], "vgg");
}

#[test]
fn resnet_exports_exactly() {
    let device = Backend::Flex.device();
    let cfg =
        ResNetConfig { depth: 20, in_channels: 1, classes: 10, width: 0.5, ..Default::default() };
    check_model(|| cfg.init(&device).unwrap(), [2, 1, 16, 16], "resnet20");
    // Three channels at CIFAR size, on the CIFAR-10 samples.
    let cfg =
        ResNetConfig { depth: 20, in_channels: 3, classes: 10, width: 0.25, ..Default::default() };
    check_model(|| cfg.init(&device).unwrap(), [2, 3, 32, 32], "resnet20 cifar");
}

#[test]
fn mobilenet_v2_exports_exactly() {
    let device = Backend::Flex.device();
    let cfg =
        MobileNetV2Config { in_channels: 1, classes: 10, width: 0.25, skip_blocks: Vec::new() };
    check_model(|| cfg.init(&device).unwrap(), [1, 1, 16, 16], "mobilenet_v2");
}

#[test]
fn configs_are_checked() {
    let device = Backend::Flex.device();
    assert!(ResNetConfig { depth: 21, ..Default::default() }.init(&device).is_err());
    assert!(Lenet5Config { image: 8, ..Default::default() }.init(&device).is_err());
    assert!(Lenet5Config { image: 12, ..Lenet5Config::caffe() }.init(&device).is_err());
    assert!(Lenet5Config { image: 16, ..Lenet5Config::caffe() }.init(&device).is_ok());
    assert!(VggConfig { width: 0.0, ..Default::default() }.init(&device).is_err());
}

#[test]
fn set_weights_round_trips_through_the_gemm_view() {
    let device = Backend::Flex.device();
    let model = Lenet5Config::default().init(&device).unwrap();
    let input = [1, 1, 28, 28];
    let before = weights::prunable_weights(&model, input).unwrap();
    let mut updates = BTreeMap::new();
    for w in &before {
        updates.insert(w.path.clone(), w.values.iter().map(|v| v * 2.0).collect::<Vec<f32>>());
    }
    let model = weights::set_weights(model, &updates).unwrap();
    let after = weights::prunable_weights(&model, input).unwrap();
    for (a, b) in before.iter().zip(&after) {
        assert!(
            a.values.iter().zip(&b.values).all(|(x, y)| (2.0 * x - y).abs() < 1e-6),
            "{}",
            a.path
        );
    }
    let mut bad = BTreeMap::new();
    bad.insert("nope.weight".to_string(), vec![0.0]);
    assert!(weights::set_weights(model, &bad).is_err());
}

#[test]
fn seeded_init_is_deterministic_even_with_concurrent_inits() {
    let device = Backend::Flex.device();
    let cfg =
        ResNetConfig { depth: 8, in_channels: 1, classes: 10, width: 0.25, ..Default::default() };
    let weights_of = |seed| {
        let m = tessera_models::with_seed(&device, seed, || cfg.init(&device)).unwrap();
        weights::prunable_weights(&m, [1, 1, 16, 16])
            .unwrap()
            .into_iter()
            .flat_map(|w| w.values)
            .collect::<Vec<f32>>()
    };
    let reference = weights_of(3);
    assert_ne!(reference, weights_of(4), "different seeds, different weights");
    // Other threads seed and initialize all the while: burn's RNG is global, the lock and the
    // eager materialization keep each init whole.
    std::thread::scope(|s| {
        let noise: Vec<_> = (0..2)
            .map(|t| {
                s.spawn(move || (0..5).map(|i| weights_of(100 + t * 10 + i).len()).sum::<usize>())
            })
            .collect();
        for _ in 0..5 {
            assert_eq!(weights_of(3), reference);
        }
        for n in noise {
            assert!(n.join().unwrap() > 0);
        }
    });
}

#[test]
fn seeded_init_draws_burns_default_distribution() {
    let device = Backend::Flex.device();
    let model =
        tessera_models::with_seed(&device, 9, || Lenet5Config::default().init(&device)).unwrap();
    let plain = Lenet5Config::default().init(&device).unwrap();
    let ours = weights::prunable_weights(&model, [1, 1, 28, 28]).unwrap();
    let burns = weights::prunable_weights(&plain, [1, 1, 28, 28]).unwrap();
    for (w, b) in ours.iter().zip(&burns) {
        // U(-1/sqrt(fan_in), 1/sqrt(fan_in)): fan_in = the GEMM row length.
        let bound = 1.0 / (w.layer.geometry.cols() as f32).sqrt();
        let var = |v: &[f32]| v.iter().map(|x| f64::from(x * x)).sum::<f64>() / v.len() as f64;
        let want = f64::from(bound * bound) / 3.0;
        assert!(w.values.iter().all(|v| v.abs() <= bound), "{}: outside +-{bound}", w.path);
        assert!(
            b.values.iter().all(|v| v.abs() <= bound * 1.0001),
            "{}: burn's own init outside +-{bound}",
            w.path
        );
        for (who, v) in [("ours", &w.values), ("burn", &b.values)] {
            let tol = 4.0 * want * (2.0 / v.len() as f64).sqrt() + 1e-9;
            assert!(
                (var(v) - want).abs() <= tol.max(0.15 * want),
                "{}: {who} variance {} vs {want}",
                w.path,
                var(v)
            );
        }
    }
}

#[test]
fn read_weights_agrees_with_the_export_view() {
    let device = Backend::Flex.device();
    let cfg =
        ResNetConfig { depth: 8, in_channels: 1, classes: 10, width: 0.25, ..Default::default() };
    let model = tessera_models::with_seed(&device, 1, || cfg.init(&device)).unwrap();
    let named = weights::prunable_weights(&model, [1, 1, 16, 16]).unwrap();
    let paths: Vec<String> = named.iter().map(|w| w.path.clone()).collect();
    let read = weights::read_weights(&model, &paths).unwrap();
    for w in &named {
        assert_eq!(read[&w.path], w.values, "{}", w.path);
    }
    assert!(weights::read_weights(&model, &["nope".to_string()]).is_err());
}

#[test]
fn skipped_blocks_compute_the_identity_and_leave_the_export() {
    let device = Backend::Flex.device();
    let base =
        ResNetConfig { depth: 20, in_channels: 1, classes: 10, width: 0.25, ..Default::default() };
    let skipping = ResNetConfig { skip_blocks: vec![1, 4], ..base.clone() };
    check_model(|| skipping.init(&device).unwrap(), [2, 1, 16, 16], "resnet20 skipping 1, 4");
    // Same seed, same weights: the full model's graph with those residual branches removed by
    // the IR computes what the skipping model exports.
    let init =
        |c: &ResNetConfig| tessera_models::with_seed(&device, 7, || c.init(&device)).unwrap();
    let input = [1, 1, 16, 16];
    let skipped = init(&skipping).export(input, &Masks::new()).unwrap();
    assert!(
        skipped
            .nodes
            .iter()
            .all(|n| !n.name.starts_with("blocks.1.") && !n.name.starts_with("blocks.4.")),
        "skipped blocks left the graph"
    );
    let mut surgery = init(&base).export(input, &Masks::new()).unwrap();
    for add in ["blocks.1.add", "blocks.4.add"] {
        surgery.skip_residual(add).unwrap();
    }
    let x = tessera_ir::Tensor::uniform(input, 1.0, 3);
    assert_eq!(
        interp::run(&surgery, std::slice::from_ref(&x)).unwrap(),
        interp::run(&skipped, &[x]).unwrap()
    );
    // Only identity blocks: block 3 opens stage 2 with a projection; block 9 does not exist.
    for bad in [3, 9] {
        let e = ResNetConfig { skip_blocks: vec![bad], ..base.clone() }.init(&device).unwrap_err();
        assert!(
            e.to_string().contains("skip_blocks")
                && e.to_string().contains(&format!("block {bad}")),
            "{e}"
        );
    }
    // MobileNetV2: block 2 (24 -> 24, stride 1) is residual, block 0 (32 -> 16) is not.
    let m = MobileNetV2Config { in_channels: 1, classes: 10, width: 0.25, skip_blocks: vec![2] };
    check_model(|| m.init(&device).unwrap(), [1, 1, 16, 16], "mobilenet_v2 skipping 2");
    assert!(MobileNetV2Config { skip_blocks: vec![0], ..m }.init(&device).is_err());
}

#[test]
fn separable_convolutions_export_exactly_and_train() {
    let device = Backend::Flex.device();
    let cfg = ResNetConfig {
        depth: 8,
        in_channels: 1,
        classes: 10,
        width: 0.5,
        skip_blocks: vec![],
        separable: vec!["blocks.0.conv1".into(), "blocks.2.conv2".into()],
    };
    // burn's forward and the exported graph agree (the pair, then the batch norm).
    check_model(|| cfg.init(&device).unwrap(), [2, 1, 12, 12], "resnet8 separable");
    let g = cfg.init(&device).unwrap().export([1, 1, 12, 12], &Masks::new()).unwrap();
    let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    for n in ["blocks.0.conv1.separable.depthwise", "blocks.0.conv1.separable.pointwise"] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    assert!(!names.contains(&"blocks.0.conv1.conv"));
    // The pair receives gradients; the unused dense weights do not.
    let train = Backend::Flex.train_device(0);
    let model = cfg.init(&train).unwrap();
    let (x, _) = batch([2, 1, 12, 12], &train);
    let mut grads =
        burn::optim::GradientsParams::from_grads(model.forward(x).sum().backward(), &model);
    let sep =
        ["blocks.0.conv1.separable.depthwise.weight", "blocks.0.conv1.separable.pointwise.weight"];
    let g = weights::read_gradients(&model, &mut grads, &sep.map(String::from)).unwrap();
    for p in sep {
        assert!(g[p].iter().any(|&v| v != 0.0), "{p} has no gradient");
    }
    assert!(
        weights::read_gradients(&model, &mut grads, &["blocks.0.conv1.conv.weight".to_string()])
            .is_err(),
        "the unused dense weight has no gradient"
    );
}
