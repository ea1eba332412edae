//! The training loop on real data (the MNIST fixture): it learns, masks survive optimizer
//! steps, resuming from a checkpoint reproduces an uninterrupted run, and flex and ndarray
//! agree.

use burn::prelude::*;
use tessera_data::{KnownSet, Normalization, Source, Split, load};
use tessera_models::train::{Checkpoints, KeepMasks, NoHooks, TrainConfig, evaluate, train};
use tessera_models::zoo::{Lenet5, Lenet5Config};
use tessera_models::{Backend, Masks, weights};
use tessera_sparsity::{Scheme, Target};

fn data() -> (tessera_data::Dataset, tessera_data::Dataset) {
    let tr = load(KnownSet::Mnist, Split::Train, &Source::Fixtures, Some(Normalization::mnist()))
        .unwrap();
    let te = load(KnownSet::Mnist, Split::Test, &Source::Fixtures, Some(Normalization::mnist()))
        .unwrap();
    (tr, te)
}

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig { seed: 3, ..TrainConfig::sgd(epochs, 32, 0.05) }
}

/// LeNet-5 initialized from `seed` (under the seeded-init lock: tests run in parallel).
fn lenet(device: &Device, seed: u64) -> Lenet5 {
    tessera_models::with_seed(device, seed, || Lenet5Config::default().init(device)).unwrap()
}

#[test]
fn lenet_learns_mnist_fixture() {
    let (tr, te) = data();
    let device = Backend::Flex.train_device(1);
    let model = lenet(&device, 1);
    let (model, history) =
        train(model, &tr, Some(&te), &cfg(3), &device, &mut NoHooks, None).unwrap();
    assert_eq!(history.len(), 3);
    let (_, acc) = history[2].eval.unwrap();
    // 1000 training images, 3 epochs: far above the 10% of chance.
    assert!(acc > 0.8, "test accuracy {acc}");
    assert!(history[2].train_loss < history[0].train_loss);
    let (_, acc2) = evaluate(&model.valid(), &te, 250, &Backend::Flex.device()).unwrap();
    assert!((acc - acc2).abs() < 1e-9);
}

#[test]
fn masks_survive_optimizer_steps() {
    let (tr, _) = data();
    let device = Backend::Flex.train_device(2);
    let model = lenet(&device, 2);
    let input = [1, 1, 28, 28];
    let mut masks = Masks::new();
    for w in weights::prunable_weights(&model, input).unwrap() {
        let scheme: Scheme = if w.path.starts_with("conv") {
            "filter".parse().unwrap()
        } else {
            "block:4x4".parse().unwrap()
        };
        let p = scheme
            .project_with(
                &w.layer,
                &w.values,
                Target::Compression(4.0),
                tessera_sparsity::Tiling::Pad,
            )
            .unwrap();
        masks.insert(w.path.clone(), scheme, p.mask);
    }
    let model = weights::apply_masks(model, &masks);
    let c = TrainConfig { max_steps_per_epoch: Some(10), ..cfg(1) };
    let (model, _) =
        train(model, &tr, None, &c, &device, &mut KeepMasks(masks.clone()), None).unwrap();
    for w in weights::prunable_weights(&model, input).unwrap() {
        let (_, mask) = masks.get(&w.path).unwrap();
        let kept_nonzero = w.values.iter().enumerate().filter(|(_, v)| **v != 0.0).count();
        assert!(
            w.values.iter().enumerate().all(|(i, &v)| mask.get(i) || v == 0.0),
            "{}: a pruned weight moved",
            w.path
        );
        assert!(
            kept_nonzero > mask.count() / 2,
            "{}: kept weights should be trained, not zeroed",
            w.path
        );
    }
}

#[test]
fn resume_reproduces_an_uninterrupted_run() {
    let (tr, te) = data();
    let straight_dir = tempfile::tempdir().unwrap();
    let resumed_dir = tempfile::tempdir().unwrap();
    // Augmentation and label smoothing on: their randomness must resume too.
    let c = TrainConfig {
        max_steps_per_epoch: Some(8),
        augment: tessera_data::Augment::standard(28),
        label_smoothing: 0.1,
        ..cfg(2)
    };
    let device = Backend::Flex.train_device(5);
    let (straight, h1) = train(
        lenet(&device, 5),
        &tr,
        Some(&te),
        &c,
        &device,
        &mut NoHooks,
        Some(&Checkpoints::new(straight_dir.path(), false)),
    )
    .unwrap();
    // Stop after epoch 1 ...
    let device = Backend::Flex.train_device(5);
    let stop =
        Checkpoints { stop_after_epochs: Some(1), ..Checkpoints::new(resumed_dir.path(), true) };
    let (_, h0) =
        train(lenet(&device, 5), &tr, Some(&te), &c, &device, &mut NoHooks, Some(&stop)).unwrap();
    assert_eq!(h0.len(), 1);
    let ck = Checkpoints::new(resumed_dir.path(), true);
    // ... and resume into epoch 2 from a freshly initialized (different) model.
    let device = Backend::Flex.train_device(99);
    let (resumed, h2) =
        train(lenet(&device, 99), &tr, Some(&te), &c, &device, &mut NoHooks, Some(&ck)).unwrap();
    assert_eq!(h2.len(), 2);
    let a = weights::prunable_weights(&straight, [1, 1, 28, 28]).unwrap();
    let b = weights::prunable_weights(&resumed, [1, 1, 28, 28]).unwrap();
    for (x, y) in a.iter().zip(&b) {
        let diff = x.values.iter().zip(&y.values).fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(diff <= 1e-6, "{}: resumed run differs by {diff}", x.path);
    }
    assert!(
        (h1[1].train_loss - h2[1].train_loss).abs() < 1e-6,
        "{} vs {}",
        h1[1].train_loss,
        h2[1].train_loss
    );
}

#[test]
fn flex_and_ndarray_train_alike() {
    let (tr, _) = data();
    let flex = Backend::Flex.train_device(11);
    let nd = Backend::NdArray.train_device(11);
    let a = lenet(&flex, 11);
    // The same initial weights on both backends.
    let b = lenet(&nd, 11).load_record(a.clone().into_record());
    let c = TrainConfig { max_steps_per_epoch: Some(5), ..cfg(1) };
    let (_, ha) = train(a, &tr, None, &c, &flex, &mut NoHooks, None).unwrap();
    let (_, hb) = train(b, &tr, None, &c, &nd, &mut NoHooks, None).unwrap();
    // Five SGD steps from identical weights on identical batches: the backends differ only in
    // f32 summation order, well under 1e-3 relative after five steps.
    let (la, lb) = (ha[0].train_loss, hb[0].train_loss);
    assert!((la - lb).abs() <= 1e-3 * la.abs().max(1.0), "flex {la} vs ndarray {lb}");
}

#[test]
fn resume_refuses_a_checkpoint_of_another_config() {
    let (tr, _) = data();
    let dir = tempfile::tempdir().unwrap();
    let device = Backend::Flex.train_device(5);
    let c = TrainConfig { max_steps_per_epoch: Some(2), ..cfg(1) };
    train(
        lenet(&device, 5),
        &tr,
        None,
        &c,
        &device,
        &mut NoHooks,
        Some(&Checkpoints::new(dir.path(), false)),
    )
    .unwrap();
    let other = TrainConfig { batch_size: 16, ..c };
    let err = train(
        lenet(&device, 5),
        &tr,
        None,
        &other,
        &device,
        &mut NoHooks,
        Some(&Checkpoints::new(dir.path(), true)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("state.json"), "{err}");
}

/// Counts optimizer steps; its count is checkpointed.
#[derive(Default)]
struct CountSteps(u64);

impl tessera_models::train::Hooks<Lenet5> for CountSteps {
    fn after_step(&mut self, model: Lenet5, _step: usize) -> tessera_models::Result<Lenet5> {
        self.0 += 1;
        Ok(model)
    }
    fn save_state(&self) -> tessera_models::Result<Option<Vec<u8>>> {
        Ok(Some(self.0.to_le_bytes().to_vec()))
    }
    fn load_state(&mut self, bytes: &[u8]) -> tessera_models::Result<()> {
        let bytes: [u8; 8] = bytes.try_into().map_err(|_| tessera_models::ModelError::Config {
            field: "hook state",
            reason: format!("expected 8 bytes, got {}", bytes.len()),
        })?;
        self.0 = u64::from_le_bytes(bytes);
        Ok(())
    }
}

#[test]
fn hook_state_is_checkpointed_and_restored() {
    let (tr, _) = data();
    let dir = tempfile::tempdir().unwrap();
    let c = TrainConfig { max_steps_per_epoch: Some(3), ..cfg(3) };
    let device = Backend::Flex.train_device(5);
    let stop = Checkpoints { stop_after_epochs: Some(2), ..Checkpoints::new(dir.path(), true) };
    let mut first = CountSteps::default();
    train(
        lenet(&device, 5),
        &tr,
        None,
        &c,
        &device,
        &mut tessera_models::train::Both(&mut first, NoHooks),
        Some(&stop),
    )
    .unwrap();
    assert_eq!(first.0, 6);
    // Only the newest epoch directory is kept.
    let epochs: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n.starts_with("epoch-"))
        .collect();
    assert_eq!(epochs, ["epoch-0002"]);
    let mut resumed = CountSteps::default();
    let mut both = tessera_models::train::Both(&mut resumed, NoHooks);
    train(
        lenet(&device, 5),
        &tr,
        None,
        &c,
        &device,
        &mut both,
        Some(&Checkpoints::new(dir.path(), true)),
    )
    .unwrap();
    assert_eq!(resumed.0, 9, "6 restored + 3 new steps");
    // State written by other hooks is refused, not misread.
    let mut other = CountSteps::default();
    let err = train(
        lenet(&device, 5),
        &tr,
        None,
        &c,
        &device,
        &mut other,
        Some(&Checkpoints::new(dir.path(), true)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("hook"), "{err}");
}

/// Per-channel `(mean, biased variance)` of `[N, C, H, W]` values.
fn channel_stats(values: &[f32], dims: [usize; 4]) -> Vec<(f64, f64)> {
    let [n, c, h, w] = dims;
    (0..c)
        .map(|ch| {
            let xs: Vec<f64> = (0..n)
                .flat_map(|i| {
                    let start = (i * c + ch) * h * w;
                    values[start..start + h * w].iter().map(|&v| f64::from(v))
                })
                .collect();
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
            (mean, var)
        })
        .collect()
}

#[test]
fn batch_norm_recalibration_averages_the_batch_statistics() {
    use tessera_models::Classifier;
    use tessera_models::train::{batch_tensors, recalibrate_batch_norm};
    use tessera_models::zoo::ResNetConfig;
    let (_, te) = data();
    let data = te.all().split_at(40).unwrap().0.to_dataset("first-40");
    let device = Backend::Flex.train_device(1);
    let config =
        ResNetConfig { depth: 8, in_channels: 1, classes: 10, width: 0.5, ..Default::default() };
    let model = tessera_models::with_seed(&device, 5, || config.init(&device)).unwrap();
    let stem_weight = model.stem.conv.weight.val().into_data();
    // Batches of 16, 16 and 8 cover the 40 images once.
    let (seed, batch_size) = (11, 16);
    let model = recalibrate_batch_norm(model, &data, 3, batch_size, seed, &device).unwrap();

    // Reference: the stem convolution's outputs (batch norm reads them before any statistic),
    // batch by batch in the same seeded order; means weighted by batch size average to the
    // mean over all 40 images, variances are the size-weighted mean of batch variances.
    let inference = device.clone().inner();
    let stem = model.stem.conv.valid();
    let order = data.all().shuffled(seed);
    let mut batches = order.batches(batch_size, false).unwrap();
    let mut batch = tessera_data::Batch::default();
    let channels = model.stem.bn.running_mean.value().dims()[0];
    let (mut mean, mut var, mut seen) = (vec![0.0; channels], vec![0.0; channels], 0usize);
    while batches.next_into(&mut batch) {
        let (x, _) = batch_tensors(&batch, &inference);
        let y = stem.forward(x);
        let dims = y.dims();
        let values = y.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        for (ch, (m, v)) in channel_stats(&values, dims).into_iter().enumerate() {
            mean[ch] += m * batch.len() as f64;
            var[ch] += v * batch.len() as f64;
        }
        seen += batch.len();
    }
    assert_eq!(seen, 40);
    let running = |t: Tensor<1>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let got_mean = running(model.stem.bn.running_mean.value());
    let got_var = running(model.stem.bn.running_var.value());
    for ch in 0..channels {
        let (m, v) = (mean[ch] / 40.0, var[ch] / 40.0);
        assert!(
            (f64::from(got_mean[ch]) - m).abs() < 1e-4 * (1.0 + m.abs()),
            "mean {ch}: {} vs {m}",
            got_mean[ch]
        );
        assert!((f64::from(got_var[ch]) - v).abs() < 1e-4 * (1.0 + v), "var {ch}");
    }
    // A fresh model's statistics (0 and 1) are gone, no weight moved, momenta restored.
    assert!(got_var.iter().any(|&v| (v - 1.0).abs() > 1e-3));
    assert_eq!(model.stem.conv.weight.val().into_data(), stem_weight);
    assert!(model.stem.conv.weight.is_require_grad(), "parameters must stay trainable");
    let mut model = model;
    assert!(model.batch_norms_mut().iter().all(|bn| bn.momentum == 0.1));
    assert_eq!(model.batch_norms_mut().len(), 1 + 3 * 2 + 2);

    // Deterministic; an inference device is refused.
    let again = tessera_models::with_seed(&device, 5, || config.init(&device)).unwrap();
    let again = recalibrate_batch_norm(again, &data, 3, batch_size, seed, &device).unwrap();
    assert_eq!(running(again.stem.bn.running_var.value()), got_var);
    let err = recalibrate_batch_norm(model.valid(), &data, 3, 16, seed, &inference).unwrap_err();
    assert!(err.to_string().contains("autodiff"), "{err}");
    let err = recalibrate_batch_norm(again, &data, 0, 16, seed, &device).unwrap_err();
    assert!(err.to_string().contains("batches") && err.to_string().contains("0 x 16"), "{err}");
}

/// A clone shares its batch norms' running statistics with the original (burn's
/// `RunningState`), so training the clone moves the original's; `independent_copy` does not.
#[test]
fn independent_copy_keeps_the_originals_batch_norm_statistics() {
    use tessera_models::Classifier;
    use tessera_models::train::{independent_copy, recalibrate_batch_norm};
    use tessera_models::zoo::ResNetConfig;
    let stats = |m: &mut tessera_models::zoo::ResNet| -> Vec<f32> {
        let mut out = Vec::new();
        for bn in m.batch_norms_mut() {
            for t in [bn.running_mean.value_sync(), bn.running_var.value_sync()] {
                out.extend(t.into_data().try_to_vec::<f32>().unwrap());
            }
        }
        out
    };
    let device = Backend::Flex.train_device(3);
    let norm = Some(Normalization::fashion_mnist());
    let data = load(KnownSet::FashionMnist, Split::Train, &Source::Fixtures, norm).unwrap();
    let config =
        ResNetConfig { depth: 8, in_channels: 1, classes: 10, width: 0.25, ..Default::default() };
    let mut model = tessera_models::with_seed(&device, 1, || config.init(&device)).unwrap();
    let before = stats(&mut model);

    let copy = independent_copy(&model);
    let mut copy = recalibrate_batch_norm(copy, &data, 2, 32, 0, &device).unwrap();
    assert_ne!(stats(&mut copy), before, "recalibration moves the copy's statistics");
    assert_eq!(stats(&mut model), before, "the original's stay");

    // The hazard it guards against (the check above can fail): a plain clone's move the original's.
    let clone = recalibrate_batch_norm(model.clone(), &data, 2, 32, 0, &device).unwrap();
    drop(clone);
    assert_ne!(stats(&mut model), before);
}
