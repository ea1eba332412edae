//! Gradients by weight path, in the GEMM view: read against central finite differences of the
//! loss (perturbing the same GEMM index through `set_weights`), added to, and masked.

use std::collections::BTreeMap;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use tessera_data::{KnownSet, Normalization, Source, Split, load};
use tessera_models::train::batch_tensors;
use tessera_models::zoo::{Lenet5, Lenet5Config};
use tessera_models::{Backend, Classifier, Masks, weights, with_seed};
use tessera_sparsity::{Mask, Scheme};

fn setup() -> (Lenet5, tessera_data::Batch, Device) {
    let device = Backend::Flex.train_device(3);
    let model = with_seed(&device, 3, || Lenet5Config::default().init(&device)).unwrap();
    let data = load(KnownSet::Mnist, Split::Train, &Source::Fixtures, Some(Normalization::mnist()))
        .unwrap();
    let sub = data.all().split_at(8).unwrap().0;
    let batch = sub.batches(8, false).unwrap().next().unwrap();
    (model, batch, device)
}

fn loss(model: &Lenet5, batch: &tessera_data::Batch, device: &Device) -> Tensor<1> {
    let (x, y) = batch_tensors(batch, device);
    CrossEntropyLossConfig::new().init(device).forward(model.forward(x), y)
}

fn loss_value(model: &Lenet5, batch: &tessera_data::Batch, device: &Device) -> f64 {
    let v: Vec<f32> = loss(model, batch, device).into_data().try_to_vec().unwrap();
    f64::from(v[0])
}

#[test]
fn read_gradients_match_finite_differences_in_the_gemm_view() {
    let (model, batch, device) = setup();
    let paths =
        vec!["conv1.weight".to_string(), "fc1.weight".to_string(), "fc3.weight".to_string()];
    let mut grads = GradientsParams::from_grads(loss(&model, &batch, &device).backward(), &model);
    let g = weights::read_gradients(&model, &mut grads, &paths).unwrap();
    let inference = Backend::Flex.device();
    let base = weights::prunable_weights(&model, [1, 1, 28, 28]).unwrap();
    let eval_model = model.valid();
    for w in base.iter().filter(|w| paths.contains(&w.path)) {
        let grad = &g[&w.path];
        assert_eq!(grad.len(), w.values.len(), "{}", w.path);
        // The largest-gradient entry and a few spread ones: the GEMM index must mean the same
        // weight in the gradient as in `set_weights`.
        let top = grad
            .iter()
            .enumerate()
            .fold(0, |b, (i, v)| if v.abs() > grad[b].abs() { i } else { b });
        for &i in &[top, grad.len() / 3, grad.len() - 1] {
            let h = 1e-2f32;
            let at = |delta: f32| {
                let mut v = w.values.clone();
                v[i] += delta;
                let m = weights::set_weights(
                    eval_model.clone(),
                    &BTreeMap::from([(w.path.clone(), v)]),
                )
                .unwrap();
                loss_value(&m, &batch, &inference)
            };
            let fd = (at(h) - at(-h)) / (2.0 * f64::from(h));
            let an = f64::from(grad[i]);
            assert!(
                (fd - an).abs() <= 2e-3 + 0.05 * an.abs(),
                "{}[{i}]: finite difference {fd}, gradient {an}",
                w.path
            );
        }
        assert!(grad[top] != 0.0, "{}: all-zero gradient", w.path);
    }
}

#[test]
fn add_and_mask_gradients() {
    let (model, batch, device) = setup();
    let path = "fc1.weight".to_string();
    let mut grads = GradientsParams::from_grads(loss(&model, &batch, &device).backward(), &model);
    let before = weights::read_gradients(&model, &mut grads, std::slice::from_ref(&path)).unwrap()
        [&path]
        .clone();
    let delta: Vec<f32> = (0..before.len()).map(|i| (i % 7) as f32 * 0.25).collect();
    weights::add_to_gradients(&model, &mut grads, &BTreeMap::from([(path.clone(), delta.clone())]))
        .unwrap();
    let after = weights::read_gradients(&model, &mut grads, std::slice::from_ref(&path)).unwrap()
        [&path]
        .clone();
    for i in 0..before.len() {
        assert!((after[i] - before[i] - delta[i]).abs() <= 1e-6 * (1.0 + delta[i].abs()), "[{i}]");
    }
    let mask = Mask::from_bools(&(0..before.len()).map(|i| i % 3 == 0).collect::<Vec<_>>());
    let mut masks = Masks::new();
    masks.insert(path.clone(), Scheme::Unstructured, mask.clone());
    weights::mask_gradients(&model, &mut grads, &masks);
    let masked = weights::read_gradients(&model, &mut grads, std::slice::from_ref(&path)).unwrap()
        [&path]
        .clone();
    for i in 0..masked.len() {
        assert_eq!(masked[i], if mask.get(i) { after[i] } else { 0.0 }, "[{i}]");
    }
    let bad = BTreeMap::from([("fc9.weight".to_string(), vec![0.0])]);
    let err = weights::add_to_gradients(&model, &mut grads, &bad).unwrap_err();
    assert!(err.to_string().contains("fc9.weight"), "{err}");
}
