//! What freezing the batch norms does to the privacy-preserving designer, on a model with
//! batch norm: trains a small ResNet-8 on Fashion-MNIST (the cache when it holds the full set,
//! else the fixtures), then runs the designer (ADMM + distillation on N(0,1) noise only,
//! unstructured 8x) with its batch norms frozen on the dense model's statistics and with them
//! training, and prints each pruned model's test top-1: as the designer hands it over, after
//! the client re-estimates the batch-norm statistics on its data, and after a short client
//! retraining (80 batches; training-mode batch norm replaces the statistics within them, so
//! re-estimating first changes nothing there).
//! `cargo run -p tessera-prune --example designer_batch_norm [designer Adam lr, default 5e-3]`
//! (about two minutes on 2 cores).

#![allow(clippy::print_stdout)] // a command-line table

use anyhow::Result;
use burn::module::Module;
use tessera_data::{KnownSet, Normalization, SampleShape, Source, Split, load};
use tessera_models::train::{
    NoHooks, OptimizerConfig, Schedule, TrainConfig, evaluate, independent_copy,
    recalibrate_batch_norm, train,
};
use tessera_models::zoo::ResNetConfig;
use tessera_models::{Backend, with_seed};
use tessera_prune::admm::AdmmConfig;
use tessera_prune::privacy::{ClientConfig, DesignerConfig, client, designer};

fn main() -> Result<()> {
    // The designer's Adam learning rate (the privacy-prune ResNet-20 study uses 1e-3).
    let lr: f64 = match std::env::args().nth(1) {
        Some(a) => a.parse()?,
        None => 5e-3,
    };
    let norm = Some(Normalization::fashion_mnist());
    let cache = Source::cache();
    let source = match load(KnownSet::FashionMnist, Split::Train, &cache, norm.clone()) {
        Ok(d) if d.len() == 60_000 => cache,
        _ => Source::Fixtures,
    };
    let train_set = load(KnownSet::FashionMnist, Split::Train, &source, norm.clone())?;
    let test_set = load(KnownSet::FashionMnist, Split::Test, &source, norm)?;
    println!("data: {} train / {} test images ({source:?})", train_set.len(), test_set.len());

    let device = Backend::Flex.train_device(0);
    let inference = Backend::Flex.device();
    let resnet =
        ResNetConfig { depth: 8, in_channels: 1, classes: 10, width: 0.5, ..Default::default() };
    let dense = with_seed(&device, 0, || resnet.init(&device))?;
    // Two epochs of 80 batches of 128 (20,480 images).
    let dense_cfg = TrainConfig {
        max_steps_per_epoch: Some(80),
        schedule: Schedule::Cosine { min_lr: 0.0 },
        ..TrainConfig::sgd(2, 128, 0.1)
    };
    let (dense, _) = train(dense, &train_set, None, &dense_cfg, &device, &mut NoHooks, None)?;
    let (_, dense_top1) = evaluate(&dense.valid(), &test_set, 256, &inference)?;
    println!("dense ResNet-8 (width 0.5): top-1 {:.2}%; designer Adam lr {lr}", 100.0 * dense_top1);

    let sparsity: tessera_sparsity::SparsityConfig = serde_json::from_str(
        r#"{"rules": [{"layers": "stem.*", "scheme": "unstructured", "target": "0"},
                      {"layers": "fc.*", "scheme": "unstructured", "target": "0"}],
            "default": {"scheme": "unstructured", "target": "8x"}}"#,
    )?;
    let shape = SampleShape { channels: 1, height: 28, width: 28 };
    println!(
        "| designer batch norms | ADMM residual first -> last | designer top-1 % | client BN re-estimated | client retrained |"
    );
    println!("|---|---|---|---|---|");
    let client_cfg = ClientConfig::plain(TrainConfig {
        max_steps_per_epoch: Some(80),
        schedule: Schedule::Cosine { min_lr: 0.0 },
        ..TrainConfig::sgd(1, 128, 0.01)
    });
    for freeze_batch_norm in [true, false] {
        let cfg = DesignerConfig {
            sparsity: sparsity.clone(),
            admm: AdmmConfig {
                rho: 0.1,
                rho_growth: 1.3,
                rho_max: 1.0,
                update_every: 1,
                update_every_steps: Some(40),
                hard_prune_at: None,
                progressive: false,
                couple_batch_norm: false,
                free_support: false,
                dual_step: 1.0,
            },
            train: TrainConfig {
                optimizer: OptimizerConfig::Adam { lr, weight_decay: 0.0 },
                schedule: Schedule::Constant,
                ..TrainConfig::sgd(3, 128, 1e-3)
            },
            temperature: 4.0,
            synthetic_examples: 5_000,
            freeze_batch_norm,
        };
        let out = designer(independent_copy(&dense), shape, &cfg, &device, None)?;
        let (first, last) = (
            out.admm_log.first().map_or(f64::NAN, |u| u.max_relative()),
            out.admm_log.last().map_or(f64::NAN, |u| u.max_relative()),
        );
        let label = if freeze_batch_norm { "frozen" } else { "training" };
        let top1_of = |m: &tessera_models::zoo::ResNet| -> Result<f64> {
            Ok(100.0 * evaluate(&m.valid(), &test_set, 256, &inference)?.1)
        };
        let recal =
            recalibrate_batch_norm(independent_copy(&out.model), &train_set, 16, 64, 0, &device)?;
        let retrained = client(
            independent_copy(&out.model),
            &out.masks,
            &train_set,
            None,
            &client_cfg,
            None::<&tessera_models::zoo::ResNet>,
            &device,
            None,
        )?
        .model;
        println!(
            "| {label} | {first:.3} -> {last:.3} | {:.2} | {:.2} | {:.2} |",
            top1_of(&out.model)?,
            top1_of(&recal)?,
            top1_of(&retrained)?
        );
    }
    Ok(())
}
