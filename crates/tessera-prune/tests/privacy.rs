//! The privacy-preserving flow on model directories: the designer never reads a data file
//! (its own test binary, so no other test's reads race the counter), prunes with synthetic
//! inputs and distillation only, and writes a mask file the client's retraining keeps.

use tessera_data::SampleShape;
use tessera_data::file::files_read;
use tessera_data::{KnownSet, Normalization, Source, Split, load};
use tessera_models::saved::{self, ModelCard};
use tessera_models::train::{NoHooks, OptimizerConfig, TrainConfig, independent_copy, train};
use tessera_models::weights::prunable_weights;
use tessera_models::zoo::{Lenet5Config, ResNetConfig};
use tessera_models::{Backend, Classifier, Masks, ZooConfig, with_seed};
use tessera_prune::admm::AdmmConfig;
use tessera_prune::privacy::{
    ClientConfig, DesignerConfig, client_command, designer, designer_command,
};
use tessera_prune::{DistillConfig, Recalibration};

fn adam(epochs: usize, steps: usize) -> TrainConfig {
    TrainConfig {
        optimizer: OptimizerConfig::Adam { lr: 2e-3, weight_decay: 0.0 },
        max_steps_per_epoch: Some(steps),
        seed: 1,
        ..TrainConfig::sgd(epochs, 32, 0.05)
    }
}

/// The designer at unstructured 4x with ADMM (rho 0.1) and distillation at temperature 4.
fn unstructured_4x(train: TrainConfig, synthetic_examples: usize, freeze: bool) -> DesignerConfig {
    DesignerConfig {
        sparsity: serde_json::from_str(
            r#"{"rules": [], "default": {"scheme": "unstructured", "target": "4x"}}"#,
        )
        .unwrap(),
        admm: AdmmConfig { rho: 0.1, ..AdmmConfig::default() },
        train,
        temperature: 4.0,
        synthetic_examples,
        freeze_batch_norm: freeze,
    }
}

#[test]
fn designer_reads_no_data_and_client_keeps_its_masks() {
    let norm = Some(Normalization::mnist());
    let before_load = files_read();
    let train_set = load(KnownSet::Mnist, Split::Train, &Source::Fixtures, norm.clone()).unwrap();
    let test_set = load(KnownSet::Mnist, Split::Test, &Source::Fixtures, norm.clone()).unwrap();
    assert!(
        files_read() > before_load,
        "the counter must see data reads, or the check below proves nothing"
    );

    // The client's dense model, as a model directory.
    let device = Backend::Flex.train_device(11);
    let config = Lenet5Config::default();
    let dense = with_seed(&device, 3, || config.init(&device)).unwrap();
    let (dense, _) =
        train(dense, &train_set, None, &adam(1, 30), &device, &mut NoHooks, None).unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let (dense_dir, pruned_dir, client_dir) =
        (dirs.path().join("dense"), dirs.path().join("pruned"), dirs.path().join("client"));
    let card = ModelCard {
        model: ZooConfig::Lenet5(config),
        input: [1, 28, 28],
        dataset: Some("mnist".into()),
        normalization: norm,
        note: "test".into(),
    };
    saved::save(&dense_dir, &card, &dense, &Masks::new()).unwrap();

    // Designer: no data source in its signature, and no data file opened.
    let designer_cfg = unstructured_4x(adam(3, 8), 256, false);
    let reads = files_read();
    let report = designer_command(&dense_dir, &designer_cfg, &pruned_dir, &device, None).unwrap();
    assert_eq!(files_read(), reads, "the designer opened a data file");
    assert_eq!(report.history.len(), 3);
    assert!(report.history.iter().all(|h| h.eval.is_none() && h.train_loss.is_finite()));
    let t = &report.summary.pruned_total;
    assert!(
        (t.params_kept as f64 / t.params_total as f64 - 0.25).abs() < 0.01,
        "{:?}",
        report.summary
    );

    // The mask file is there, has the scheme's density, and the weights are zero outside it.
    let masks = saved::load_masks(&pruned_dir.join("masks.safetensors")).unwrap();
    assert_eq!(masks.len(), 5);
    let inference = Backend::Flex.device();
    let pruned = saved::load(&pruned_dir, &inference, Weights).unwrap();
    for (path, values) in &pruned {
        let (_, mask) = masks.get(path).unwrap();
        assert!((mask.density() - 0.25).abs() < 0.01, "{path}: density {}", mask.density());
        assert!(values.iter().enumerate().all(|(i, &v)| mask.get(i) || v == 0.0), "{path}");
    }

    // Client: masked retraining on its own data, re-estimating the batch norms first and
    // distilling from its own dense model; the masks survive and accuracy rises.
    let client_cfg = ClientConfig {
        train: adam(1, 30),
        distill: Some(DistillConfig { temperature: 3.0, weight: 0.5 }),
        recalibrate: Some(Recalibration { batches: 2, batch_size: 32 }),
    };
    let report = client_command(
        &pruned_dir,
        &train_set,
        Some(&test_set),
        &client_cfg,
        Some(&dense_dir),
        &client_dir,
        &device,
        None,
    )
    .unwrap();
    let (_, before) = report.before.unwrap();
    let (_, after) = report.after.unwrap();
    assert!(report.recalibrated.is_some());
    assert!(after > before, "retraining must help: {before} -> {after}");
    assert_eq!(saved::load_masks(&client_dir.join("masks.safetensors")).unwrap(), masks);
    let distilled = saved::load(&client_dir, &inference, Weights).unwrap();
    for (path, values) in &distilled {
        let (_, mask) = masks.get(path).unwrap();
        assert!(
            values.iter().enumerate().all(|(i, &v)| mask.get(i) || v == 0.0),
            "{path} after the client"
        );
    }
    // The teacher is really used: without it the same retraining ends elsewhere.
    let plain_dir = dirs.path().join("plain");
    let plain = ClientConfig { distill: None, ..client_cfg.clone() };
    client_command(&pruned_dir, &train_set, None, &plain, None, &plain_dir, &device, None).unwrap();
    assert_ne!(saved::load(&plain_dir, &inference, Weights).unwrap(), distilled);

    // Bad inputs: a dense model is no input for the client, nor a pruned one for the designer;
    // distillation needs a dense teacher, and a teacher needs distillation.
    let x = dirs.path().join("x");
    let plain = ClientConfig::plain(adam(1, 2));
    let err = |r: tessera_prune::Result<_>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(client_command(&dense_dir, &train_set, None, &plain, None, &x, &device, None).is_err());
    assert!(
        err(client_command(&pruned_dir, &train_set, None, &client_cfg, None, &x, &device, None))
            .contains("--teacher")
    );
    assert!(
        err(client_command(
            &pruned_dir,
            &train_set,
            None,
            &plain,
            Some(&dense_dir),
            &x,
            &device,
            None
        ))
        .contains("no distillation")
    );
    assert!(
        err(client_command(
            &pruned_dir,
            &train_set,
            None,
            &client_cfg,
            Some(&pruned_dir),
            &x,
            &device,
            None
        ))
        .contains("mask file")
    );
    assert!(!x.exists(), "a refused client run wrote {}", x.display());
    assert!(
        designer_command(&pruned_dir, &designer_cfg, &dirs.path().join("x"), &device, None)
            .is_err()
    );
}

/// Every batch norm's running mean and variance, concatenated.
fn running_statistics<M: Classifier>(mut model: M) -> Vec<f32> {
    let mut out = Vec::new();
    for bn in model.batch_norms_mut() {
        for t in [bn.running_mean.value_sync(), bn.running_var.value_sync()] {
            out.extend(t.into_data().try_to_vec::<f32>().unwrap());
        }
    }
    out
}

#[test]
fn frozen_batch_norm_keeps_the_client_models_statistics_in_the_designer() {
    let device = Backend::Flex.train_device(5);
    let resnet =
        ResNetConfig { depth: 8, in_channels: 1, classes: 10, width: 0.25, ..Default::default() };
    let dense = with_seed(&device, 2, || resnet.init(&device)).unwrap();
    let before = running_statistics(dense.clone());
    let cfg = |freeze| unstructured_4x(adam(1, 3), 64, freeze);
    let shape = SampleShape { channels: 1, height: 28, width: 28 };
    let frozen = designer(independent_copy(&dense), shape, &cfg(true), &device, None).unwrap();
    // Distilling on N(0, 1) noise moved the weights but left the statistics the client's
    // model was trained with.
    assert_eq!(running_statistics(frozen.model.clone()), before);
    assert!(frozen.history.iter().all(|h| h.train_loss.is_finite()));
    // ... and the model it hands back trains its batch norms again.
    let mut model = frozen.model;
    assert!(model.batch_norms_mut().iter().all(|bn| bn.training.is_enabled()));
    // Unfrozen, the noise's statistics replace them (the check above can fail).
    let unfrozen = designer(dense, shape, &cfg(false), &device, None).unwrap();
    let after = running_statistics(unfrozen.model);
    assert_eq!(after.len(), before.len());
    assert!(after.iter().zip(&before).any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn designer_can_hard_prune_inside_its_phase() {
    let device = Backend::Flex.train_device(6);
    let resnet =
        ResNetConfig { depth: 8, in_channels: 1, classes: 10, width: 0.25, ..Default::default() };
    let dense = with_seed(&device, 2, || resnet.init(&device)).unwrap();
    let shape = SampleShape { channels: 1, height: 28, width: 28 };
    // 2 epochs of 4 steps (128 synthetic inputs, batch 32), hard pruning after step 3.
    let mut cfg = unstructured_4x(adam(2, 4), 128, false);
    let plain = designer(independent_copy(&dense), shape, &cfg, &device, None).unwrap();
    cfg.admm.hard_prune_at = Some(0.5);
    let early = designer(dense, shape, &cfg, &device, None).unwrap();
    assert_eq!(plain.admm_log.len(), 3, "initialization + one update per epoch");
    assert_eq!(early.admm_log.len(), 1, "hard-pruned before the first epoch's update");
    let weights = |m: &tessera_models::zoo::ResNet| prunable_weights(m, [1, 1, 28, 28]).unwrap();
    for w in weights(&early.model).iter().filter(|w| early.masks.get(&w.path).is_some()) {
        let (_, mask) = early.masks.get(&w.path).unwrap();
        assert!((mask.density() - 0.25).abs() < 0.02, "{}: {}", w.path, mask.density());
        assert!(w.values.iter().enumerate().all(|(i, &v)| mask.get(i) || v == 0.0), "{}", w.path);
    }
    // The second epoch trained the kept weights without the penalty: another model.
    let kept = |m: &tessera_models::zoo::ResNet| -> Vec<Vec<f32>> {
        weights(m).into_iter().map(|w| w.values).collect()
    };
    assert_ne!(kept(&early.model), kept(&plain.model));
}

/// Reads a loaded model's prunable weights.
struct Weights;

impl saved::WithLoaded for Weights {
    type Output = Vec<(String, Vec<f32>)>;
    fn run<M: Classifier>(self, model: M, card: ModelCard, _: Masks) -> Self::Output {
        prunable_weights(&model, card.batch_of_one())
            .unwrap()
            .into_iter()
            .map(|w| (w.path, w.values))
            .collect()
    }
}

#[test]
fn shipped_configs_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/prune");
    let d: DesignerConfig = serde_json::from_slice(
        &std::fs::read(dir.join("designer-lenet5-unstructured-8x.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(d.synthetic_examples, 10_000);
    let c: ClientConfig =
        serde_json::from_slice(&std::fs::read(dir.join("client-retrain.json")).unwrap()).unwrap();
    assert_eq!((c.train.epochs, c.train.data_loss_weight), (4, 1.0));
    assert!(c.distill.is_some() && c.recalibrate.is_some());
}
