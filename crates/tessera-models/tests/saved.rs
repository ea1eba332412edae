//! Model directories: save and load round trips (weights, masks, card, IR), and mask files
//! that do not fit are refused with the weight named.

use tessera_data::Normalization;
use tessera_models::saved::{self, ModelCard, WithLoaded};
use tessera_models::zoo::{Lenet5Config, ZooConfig};
use tessera_models::{Backend, Classifier, Masks, weights, with_seed};
use tessera_sparsity::{Scheme, Target, Tiling};

struct Grab;

impl WithLoaded for Grab {
    type Output = (Vec<weights::NamedWeight>, ModelCard, Masks);
    fn run<M: Classifier>(self, model: M, card: ModelCard, masks: Masks) -> Self::Output {
        (weights::prunable_weights(&model, card.batch_of_one()).unwrap(), card, masks)
    }
}

fn pruned_lenet() -> (tessera_models::zoo::Lenet5, Masks, ModelCard) {
    let device = Backend::Flex.device();
    let cfg = Lenet5Config::default();
    let model = with_seed(&device, 4, || cfg.init(&device)).unwrap();
    let mut masks = Masks::new();
    for w in weights::prunable_weights(&model, [1, 1, 28, 28]).unwrap() {
        let scheme: Scheme = if w.path == "fc1.weight" {
            "block-punched:8x4".parse().unwrap()
        } else {
            Scheme::Unstructured
        };
        let p = scheme
            .project_with(&w.layer, &w.values, Target::Compression(4.0), Tiling::Pad)
            .unwrap();
        masks.insert(w.path, scheme, p.mask);
    }
    let model = weights::apply_masks(model, &masks);
    let card = ModelCard {
        model: ZooConfig::Lenet5(cfg),
        input: [1, 28, 28],
        dataset: Some("mnist".into()),
        normalization: Some(Normalization::mnist()),
        note: "test".into(),
    };
    (model, masks, card)
}

#[test]
fn save_and_load_round_trip() {
    let (model, masks, card) = pruned_lenet();
    let dir = tempfile::tempdir().unwrap();
    saved::save(dir.path(), &card, &model, &masks).unwrap();
    for f in
        ["card.json", "model.bpk", "masks.safetensors", "ir/graph.json", "ir/weights.safetensors"]
    {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    let (loaded, card2, masks2) = saved::load(dir.path(), &Backend::Flex.device(), Grab).unwrap();
    assert_eq!(card2, card);
    assert_eq!(masks2, masks);
    for (a, b) in weights::prunable_weights(&model, [1, 1, 28, 28]).unwrap().iter().zip(&loaded) {
        assert_eq!(a.values, b.values, "{}", a.path);
    }
    // The IR copy carries the masks too.
    let g = tessera_ir::io::load(&dir.path().join("ir")).unwrap();
    assert_eq!(
        g.params["fc1.weight"].sparsity.as_ref().unwrap().scheme.to_string(),
        "block-punched:8x4"
    );
}

#[test]
fn bad_mask_files_are_refused() {
    let (model, masks, card) = pruned_lenet();
    let dir = tempfile::tempdir().unwrap();
    saved::save(dir.path(), &card, &model, &masks).unwrap();
    let mask_path = dir.path().join("masks.safetensors");
    // A mask of another model's layer.
    let shapes = [("fc9.weight", [2usize, 5usize])];
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "tessera-masks-v1".to_string());
    meta.insert("scheme:fc9.weight".to_string(), "unstructured".to_string());
    let data = vec![1u8; 10];
    let view = safetensors::tensor::TensorView::new(
        safetensors::tensor::Dtype::U8,
        shapes[0].1.to_vec(),
        &data,
    )
    .unwrap();
    std::fs::write(
        &mask_path,
        safetensors::serialize(vec![("fc9.weight", view)], Some(meta.clone())).unwrap(),
    )
    .unwrap();
    let err = saved::load(dir.path(), &Backend::Flex.device(), Grab).err().unwrap().to_string();
    assert!(err.contains("fc9.weight"), "{err}");
    // Not 0/1.
    let bad = vec![2u8; 10];
    let view =
        safetensors::tensor::TensorView::new(safetensors::tensor::Dtype::U8, vec![2, 5], &bad)
            .unwrap();
    std::fs::write(
        &mask_path,
        safetensors::serialize(vec![("fc9.weight", view)], Some(meta)).unwrap(),
    )
    .unwrap();
    let err = saved::load_masks(&mask_path).err().unwrap().to_string();
    assert!(err.contains("value 2"), "{err}");
    // Not a mask file at all.
    std::fs::write(&mask_path, b"junk").unwrap();
    assert!(saved::load_masks(&mask_path).is_err());
}

/// Hands back the loaded model's export.
struct Export;

impl WithLoaded for Export {
    type Output = tessera_ir::Graph;
    fn run<M: Classifier>(self, model: M, card: ModelCard, masks: Masks) -> Self::Output {
        model.export(card.batch_of_one(), &masks).unwrap()
    }
}

/// Gradients of the given weights after one backward pass on ones.
struct PairGradients(Vec<String>);

impl WithLoaded for PairGradients {
    type Output = std::collections::BTreeMap<String, Vec<f32>>;
    fn run<M: Classifier>(self, model: M, card: ModelCard, _: Masks) -> Self::Output {
        let [c, h, w] = card.input;
        let device = Backend::Flex.train_device(0);
        let x = burn::tensor::Tensor::<4>::ones([2, c, h, w], &device);
        let loss = model.forward(x).sum();
        let mut grads = burn::optim::GradientsParams::from_grads(loss.backward(), &model);
        weights::read_gradients(&model, &mut grads, &self.0).unwrap()
    }
}

#[test]
fn a_dense_checkpoint_loads_as_a_separable_model_initialized_by_decoupling() {
    use tessera_models::zoo::ResNetConfig;
    let device = Backend::Flex.device();
    let cfg =
        ResNetConfig { depth: 8, in_channels: 1, classes: 10, width: 0.5, ..Default::default() };
    let model = with_seed(&device, 3, || cfg.init(&device)).unwrap();
    let card = ModelCard {
        model: ZooConfig::Resnet(cfg.clone()),
        input: [1, 12, 12],
        dataset: None,
        normalization: None,
        note: "test".into(),
    };
    let dir = tempfile::tempdir().unwrap();
    saved::save(dir.path(), &card, &model, &Masks::new()).unwrap();
    let convs = ["blocks.0.conv2", "blocks.1.conv1"];
    let sep = card.model.with_separable(convs.iter().map(|s| s.to_string()).collect()).unwrap();
    let got = saved::load_as(dir.path(), Some(&sep), &device, Export).unwrap();
    // Reference: the dense model's graph with the same convolutions separated by the IR.
    let mut want = tessera_ir::io::load(&dir.path().join("ir")).unwrap();
    for c in convs {
        let err = want.separate_conv(&format!("{c}.conv"), &format!("{c}.separable")).unwrap();
        assert!(err > 0.0 && err < 1.0, "{c}: {err}");
    }
    // Same nodes and parameters (the IR keeps the replaced convolution's value name for the
    // pointwise output; the export names it after the node), so the same outputs.
    let names = |g: &tessera_ir::Graph| g.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want));
    let x = tessera_ir::Tensor::uniform([1, 1, 12, 12], 1.0, 9);
    assert_eq!(
        tessera_ir::interp::run(&got, std::slice::from_ref(&x)).unwrap(),
        tessera_ir::interp::run(&want, &[x]).unwrap()
    );
    assert_eq!(got.params.keys().collect::<Vec<_>>(), want.params.keys().collect::<Vec<_>>());
    for (name, p) in &got.params {
        assert_eq!(p.tensor, want.params[name].tensor, "{name}");
    }
    // The decoupled pairs train.
    let pair: Vec<String> = ["depthwise", "pointwise"]
        .iter()
        .map(|p| format!("blocks.1.conv1.separable.{p}.weight"))
        .collect();
    let train = Backend::Flex.train_device(0);
    let g = saved::load_as(dir.path(), Some(&sep), &train, PairGradients(pair.clone())).unwrap();
    for p in &pair {
        assert!(g[p].iter().any(|&v| v != 0.0), "{p}: no gradient");
    }
    // Every other tensor still comes from the file: a checkpoint missing one is refused.
    let other = ZooConfig::Resnet(ResNetConfig { width: 0.25, ..cfg.clone() });
    let e = saved::load_as(
        dir.path(),
        Some(&other.with_separable(vec![convs[0].into()]).unwrap()),
        &device,
        Export,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("model.bpk"), "{e}");
    // Bad choices are named errors.
    for bad in ["blocks.7.conv1", "stem", "blocks.1.shortcut"] {
        let e = ResNetConfig { separable: vec![bad.into()], ..cfg.clone() }
            .init(&device)
            .unwrap_err()
            .to_string();
        assert!(e.contains("separable") && e.contains(bad), "{e}");
    }
    let lenet = ZooConfig::Lenet5(Lenet5Config::default());
    assert!(lenet.with_separable(vec!["conv1".into()]).is_err());
    // A checkpoint saved with a separable convolution reloads as it is (its pair from the
    // file), but separable convolutions are added to dense checkpoints only.
    let sep_cfg = ResNetConfig { separable: vec![convs[0].into()], ..cfg.clone() };
    let sep_model = with_seed(&device, 4, || sep_cfg.init(&device)).unwrap();
    let sep_card = ModelCard { model: ZooConfig::Resnet(sep_cfg), ..card.clone() };
    let sep_dir = tempfile::tempdir().unwrap();
    saved::save(sep_dir.path(), &sep_card, &sep_model, &Masks::new()).unwrap();
    let reloaded = saved::load(sep_dir.path(), &device, Export).unwrap();
    let saved_ir = tessera_ir::io::load(&sep_dir.path().join("ir")).unwrap();
    for (name, p) in &saved_ir.params {
        assert_eq!(p.tensor, reloaded.params[name].tensor, "{name}");
    }
    let more = sep_card.model.with_separable(convs.iter().map(|s| s.to_string()).collect());
    let e = saved::load_as(sep_dir.path(), Some(&more.unwrap()), &device, Export)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.bpk") && e.contains("already"), "{e}");
}
