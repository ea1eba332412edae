//! `dense-baselines`: train the zoo models densely on MNIST / Fashion-MNIST and report top-1
//! accuracy, training time, parameters and FLOPs — the starting points every pruning and
//! sparse-training experiment compares against.
//!
//! Each model trains with checkpoints every epoch (`checkpoints/<run>/`), is exported to the
//! tessera IR (`models/<run>/`, with the burn weights beside it), and the export is checked by
//! running real test images through burn and through the IR interpreter.

use burn::prelude::*;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};
use tessera_data::{Augment, Dataset, KnownSet};
use tessera_models::saved::ModelCard;
use tessera_models::train::{EpochMetrics, NoHooks, Schedule, TrainConfig, evaluate, train};
use tessera_models::zoo::{Lenet5Config, MobileNetV2Config, ResNetConfig, VggConfig};
use tessera_models::{Classifier, Masks, WithModel, ZooConfig};

use crate::error::{ExperimentError, Result};
use crate::plot::{Plot, Series, bar_chart, format_value, line_chart};
use crate::report::Table;
use crate::run::{Experiment, Outcome, RunContext, RunOptions, Scale};
use crate::study::{load_splits, normalization, select};

/// The experiment.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenseBaselines;

/// One model trained on one data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineRun {
    /// Name (`lenet5-mnist`), also the checkpoint and model directory.
    pub name: String,
    /// The model.
    pub model: ZooConfig,
    /// The data set (train split to train, test split to evaluate).
    pub dataset: KnownSet,
    /// Training settings.
    pub train: TrainConfig,
    /// Train on a seeded random subset of this many images (`None` = all).
    pub train_limit: Option<usize>,
    /// Evaluate on the first this many test images (`None` = all).
    pub eval_limit: Option<usize>,
    /// Published-style target top-1 on the full set, reported (never asserted).
    pub target_top1: Option<f64>,
}

/// The experiment's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseBaselinesConfig {
    /// The runs, in order.
    pub runs: Vec<BaselineRun>,
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineResult {
    /// Run name.
    pub name: String,
    /// Model name.
    pub model: String,
    /// Data set name.
    pub dataset: String,
    /// Training images used.
    pub train_images: usize,
    /// Test images evaluated.
    pub test_images: usize,
    /// Epochs trained.
    pub epochs: usize,
    /// All parameters (including batch-norm and biases).
    pub params: usize,
    /// Parameters of the conv / linear weights (the prunable ones).
    pub weight_params: usize,
    /// Dense FLOPs of one image's forward pass through conv / linear layers (2 per MAC).
    pub flops_per_image: u64,
    /// Final test top-1.
    pub top1: f64,
    /// Best test top-1 over the epochs.
    pub best_top1: f64,
    /// Final test loss.
    pub test_loss: f64,
    /// Target top-1, if the run has one.
    pub target_top1: Option<f64>,
    /// Whether the final top-1 reached the target (on full data only).
    pub target_met: Option<bool>,
    /// Training wall time over all epochs (including ones before a resume), seconds.
    pub train_seconds: f64,
    /// Training throughput, images per second.
    pub train_images_per_second: f64,
    /// Largest |burn - IR interpreter| logit difference on real test images, relative to the
    /// largest logit.
    pub export_rel_diff: f64,
    /// Per-epoch metrics.
    pub history: Vec<EpochMetrics>,
}

fn sgd(epochs: usize, batch: usize, lr: f64, wd: f32) -> TrainConfig {
    crate::study::sgd(epochs, batch, lr, wd, Schedule::Cosine { min_lr: 0.0 })
}

impl DenseBaselinesConfig {
    /// The preset of `scale`.
    pub fn preset(scale: Scale) -> Self {
        let lenet = ZooConfig::Lenet5(Lenet5Config::caffe());
        let resnet = |width| {
            ZooConfig::Resnet(ResNetConfig {
                depth: 20,
                in_channels: 1,
                classes: 10,
                width,
                ..Default::default()
            })
        };
        let vgg =
            |width| ZooConfig::Vgg(VggConfig { in_channels: 1, width, ..VggConfig::default() });
        let mobilenet = |width| {
            ZooConfig::MobileNetV2(MobileNetV2Config {
                in_channels: 1,
                classes: 10,
                width,
                skip_blocks: Vec::new(),
            })
        };
        let fashion_aug = Augment { crop_padding: 2, horizontal_flip: true };
        let run =
            |name: &str, model, dataset, train, train_limit, eval_limit, target| BaselineRun {
                name: name.into(),
                model,
                dataset,
                train,
                train_limit,
                eval_limit,
                target_top1: target,
            };
        let runs = match scale {
            Scale::Smoke => {
                let smoke = |steps| TrainConfig {
                    max_steps_per_epoch: Some(steps),
                    ..sgd(2, 16, 0.05, 5e-4)
                };
                vec![
                    run(
                        "lenet5-mnist",
                        lenet,
                        KnownSet::Mnist,
                        smoke(4),
                        None,
                        Some(64),
                        Some(0.99),
                    ),
                    run(
                        "resnet20-fashion",
                        resnet(0.25),
                        KnownSet::FashionMnist,
                        TrainConfig { augment: fashion_aug, ..smoke(2) },
                        None,
                        Some(32),
                        Some(0.93),
                    ),
                    run(
                        "vgg11-fashion",
                        vgg(0.125),
                        KnownSet::FashionMnist,
                        smoke(2),
                        None,
                        Some(32),
                        None,
                    ),
                    run(
                        "mobilenet_v2-fashion",
                        mobilenet(0.25),
                        KnownSet::FashionMnist,
                        smoke(1),
                        None,
                        Some(16),
                        None,
                    ),
                ]
            }
            Scale::Default => vec![
                run(
                    "lenet5-mnist",
                    lenet,
                    KnownSet::Mnist,
                    sgd(12, 64, 0.05, 5e-4),
                    None,
                    None,
                    Some(0.99),
                ),
                run(
                    "resnet20-fashion",
                    resnet(1.0),
                    KnownSet::FashionMnist,
                    TrainConfig { augment: fashion_aug, ..sgd(20, 128, 0.1, 5e-4) },
                    None,
                    None,
                    Some(0.93),
                ),
                run(
                    "vgg11-fashion",
                    vgg(0.5),
                    KnownSet::FashionMnist,
                    TrainConfig { augment: fashion_aug, ..sgd(6, 128, 0.05, 5e-4) },
                    None,
                    None,
                    None,
                ),
                run(
                    "mobilenet_v2-fashion",
                    mobilenet(0.5),
                    KnownSet::FashionMnist,
                    TrainConfig { augment: fashion_aug, ..sgd(3, 128, 0.1, 4e-5) },
                    Some(20_000),
                    None,
                    None,
                ),
            ],
            Scale::Paper => vec![
                run(
                    "lenet5-mnist",
                    lenet,
                    KnownSet::Mnist,
                    sgd(20, 64, 0.05, 5e-4),
                    None,
                    None,
                    Some(0.99),
                ),
                run(
                    "resnet20-fashion",
                    resnet(1.0),
                    KnownSet::FashionMnist,
                    TrainConfig { augment: fashion_aug, ..sgd(60, 128, 0.1, 5e-4) },
                    None,
                    None,
                    Some(0.93),
                ),
                run(
                    "vgg11-fashion",
                    vgg(1.0),
                    KnownSet::FashionMnist,
                    TrainConfig { augment: fashion_aug, ..sgd(60, 128, 0.05, 5e-4) },
                    None,
                    None,
                    None,
                ),
                run(
                    "mobilenet_v2-fashion",
                    mobilenet(1.0),
                    KnownSet::FashionMnist,
                    TrainConfig { augment: fashion_aug, ..sgd(60, 128, 0.1, 4e-5) },
                    None,
                    None,
                    None,
                ),
            ],
        };
        DenseBaselinesConfig { runs }
    }
}

impl Experiment for DenseBaselines {
    fn name(&self) -> &'static str {
        "dense-baselines"
    }

    fn description(&self) -> &'static str {
        "Dense training of the zoo models (LeNet-5 on MNIST; ResNet-20, VGG-11 and MobileNetV2 on Fashion-MNIST): top-1, training time, parameters, FLOPs."
    }

    fn config(&self, options: &RunOptions) -> Result<serde_json::Value> {
        let mut cfg = DenseBaselinesConfig::preset(options.scale);
        for r in &mut cfg.runs {
            r.train.seed = options.seed;
        }
        cfg.runs = select(cfg.runs, &options.only, |r| &r.name)?;
        serde_json::to_value(cfg).map_err(|e| ExperimentError::config("config", e))
    }

    fn run(&self, ctx: &RunContext) -> Result<Outcome> {
        let cfg: DenseBaselinesConfig = serde_json::from_value(ctx.config.clone())
            .map_err(|e| ExperimentError::config("config", e))?;
        let mut results = Vec::new();
        for (i, r) in cfg.runs.iter().enumerate() {
            let _span =
                tracing::info_span!("run", name = %r.name, index = i + 1, of = cfg.runs.len())
                    .entered();
            results.push(run_one(ctx, r)?);
        }
        let figures =
            serde_json::to_value(&results).map_err(|e| ExperimentError::config("figures", e))?;
        Ok(Outcome {
            figures: serde_json::json!({ "runs": figures }),
            report: report(&results),
            plots: plots(&results)?,
        })
    }
}

fn run_one(ctx: &RunContext, r: &BaselineRun) -> Result<BaselineResult> {
    let (train_set, test_set) =
        load_splits(ctx, r.dataset, r.train_limit, r.eval_limit, r.train.seed)?;
    // Each run's init is seeded afresh, so it does not depend on the runs before it.
    let device = ctx.train_device();
    r.model.build(
        &device,
        ctx.options.seed,
        TrainOne { ctx, run: r, train: &train_set, test: &test_set, device: &device },
    )?
}

struct TrainOne<'a> {
    ctx: &'a RunContext,
    run: &'a BaselineRun,
    train: &'a Dataset,
    test: &'a Dataset,
    device: &'a Device,
}

impl WithModel for TrainOne<'_> {
    type Output = Result<BaselineResult>;

    fn run<M: Classifier>(self, model: M) -> Result<BaselineResult> {
        let TrainOne { ctx, run, train: train_set, test, device } = self;
        let s = train_set.sample_shape();
        let input = [1, s.channels, s.height, s.width];
        let params = model.num_params();
        let (_, totals) = tessera_ir::stats::weight_stats(&model.export(input, &Masks::new())?)?;
        let checkpoints = ctx.checkpoints(&run.name);
        let (model, history) = train(
            model,
            train_set,
            Some(test),
            &run.train,
            device,
            &mut NoHooks,
            Some(&checkpoints),
        )?;
        let model = model.valid();
        let (test_loss, top1) = match history.last().and_then(|h| h.eval) {
            Some(e) => e,
            None => evaluate(&model, test, 256, &device.clone().inner())?,
        };
        let best_top1 = history.iter().filter_map(|h| h.eval.map(|e| e.1)).fold(top1, f64::max);
        let export_rel_diff = export_check(&model, test, &device.clone().inner())?;
        save_model(ctx, run, &model, input)?;
        let train_seconds: f64 = history.iter().map(|h| h.seconds).sum();
        let seen: usize = history
            .iter()
            .map(|h| h.steps * run.train.batch_size)
            .sum::<usize>()
            .min(train_set.len() * history.len());
        let full_data =
            ctx.full_data(run.dataset) && run.train_limit.is_none() && run.eval_limit.is_none();
        Ok(BaselineResult {
            name: run.name.clone(),
            model: run.model.name(),
            dataset: run.dataset.dir_name().to_string(),
            train_images: train_set.len(),
            test_images: test.len(),
            epochs: history.len(),
            params,
            weight_params: totals.params_total,
            flops_per_image: totals.flops_dense,
            top1,
            best_top1,
            test_loss,
            target_top1: run.target_top1,
            target_met: run.target_top1.filter(|_| full_data).map(|t| top1 >= t),
            train_seconds,
            train_images_per_second: seen as f64 / train_seconds.max(1e-9),
            export_rel_diff,
            history,
        })
    }
}

/// Runs the first (up to) 4 test images through burn and through the IR interpreter; returns
/// the largest logit difference relative to the largest logit.
fn export_check<M: Classifier>(model: &M, test: &Dataset, device: &Device) -> Result<f64> {
    let n = test.len().min(4);
    let s = test.sample_shape();
    let shape = [n, s.channels, s.height, s.width];
    let pixels: Vec<f32> = (0..n).flat_map(|i| test.image(i).iter().copied()).collect();
    let graph = model.export(shape, &Masks::new())?;
    let ir = tessera_ir::interp::run(
        &graph,
        &[tessera_ir::Tensor::new(shape.to_vec(), pixels.clone())],
    )?;
    let logits = model.forward(Tensor::<4>::from_data(TensorData::new(pixels, shape), device));
    let burn_out = logits
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| ExperimentError::config("logits", format!("{e:?}")))?;
    let ir_out = ir.first().map(|t| t.data.clone()).unwrap_or_default();
    let scale = burn_out.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = burn_out.iter().zip(&ir_out).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    if burn_out.len() != ir_out.len() {
        return Err(ExperimentError::config(
            "export",
            format!("burn gave {} logits, the IR {}", burn_out.len(), ir_out.len()),
        ));
    }
    Ok(f64::from(diff / scale))
}

/// Writes the trained model as a saved-model directory under `models/<name>/` (`card.json`,
/// burn `model.bpk`, the IR export in `ir/`): what `prune-schemes` and the `prune` commands
/// start from.
fn save_model<M: Classifier>(
    ctx: &RunContext,
    run: &BaselineRun,
    model: &M,
    input: [usize; 4],
) -> Result<()> {
    let card = ModelCard {
        model: run.model.clone(),
        input: [input[1], input[2], input[3]],
        dataset: Some(run.dataset.dir_name().to_string()),
        normalization: Some(normalization(run.dataset)),
        note: format!("dense-baselines run `{}`, seed {}", run.name, ctx.options.seed),
    };
    tessera_models::saved::save(
        &ctx.dir.join("models").join(&run.name),
        &card,
        model,
        &Masks::new(),
    )?;
    Ok(())
}

fn report(results: &[BaselineResult]) -> String {
    let mut t = Table::new(&[
        "run",
        "model",
        "#train imgs",
        "#epochs",
        "#params",
        "#MFLOPs/img",
        "#top-1 %",
        "#best %",
        "target",
        "#train time s",
        "#imgs/s",
        "#export diff",
    ]);
    for r in results {
        let target = match (r.target_top1, r.target_met) {
            (Some(t), Some(true)) => format!(">= {:.1}% met", 100.0 * t),
            (Some(t), Some(false)) => format!(">= {:.1}% NOT met", 100.0 * t),
            (Some(t), None) => format!(">= {:.1}% (needs full data)", 100.0 * t),
            (None, _) => String::new(),
        };
        t.row(vec![
            r.name.clone(),
            r.model.clone(),
            r.train_images.to_string(),
            r.epochs.to_string(),
            r.params.to_string(),
            format_value(r.flops_per_image as f64 / 1e6),
            format!("{:.2}", 100.0 * r.top1),
            format!("{:.2}", 100.0 * r.best_top1),
            target,
            format!("{:.1}", r.train_seconds),
            format!("{:.0}", r.train_images_per_second),
            format!("{:.1e}", r.export_rel_diff),
        ]);
    }
    let mut md = String::from("## Results\n\n");
    md.push_str(&t.to_markdown());
    md.push_str(
        "\nTop-1 on the test split after the last epoch. FLOPs count conv and linear layers (2 per multiply-add) for one image. \
         Export diff: largest |burn - IR interpreter| logit on real test images, relative to the largest logit. \
         Trained models are in `models/<run>/` (`card.json`, burn `model.bpk`, IR export in `ir/`).\n",
    );
    md
}

fn plots(results: &[BaselineResult]) -> Result<Vec<Plot>> {
    let curve = |f: &dyn Fn(&EpochMetrics) -> Option<f64>| -> Vec<Series> {
        results
            .iter()
            .map(|r| Series {
                name: r.name.clone(),
                points: r
                    .history
                    .iter()
                    .filter_map(|h| f(h).map(|v| ((h.epoch + 1) as f64, v)))
                    .collect(),
            })
            .collect()
    };
    Ok(vec![
        Plot {
            file: "test_accuracy.svg".into(),
            caption: "test top-1 after each epoch".into(),
            svg: line_chart(
                "test top-1 per epoch",
                "epoch",
                "top-1",
                &curve(&|h| h.eval.map(|e| e.1)),
            )?,
        },
        Plot {
            file: "train_loss.svg".into(),
            caption: "mean training loss per epoch".into(),
            svg: line_chart(
                "training loss per epoch",
                "epoch",
                "cross-entropy",
                &curve(&|h| Some(h.train_loss)),
            )?,
        },
        Plot {
            file: "top1.svg".into(),
            caption: "final test top-1 per run".into(),
            svg: bar_chart(
                "final test top-1",
                "top-1 (%)",
                &results.iter().map(|r| (r.name.clone(), 100.0 * r.top1)).collect::<Vec<_>>(),
            )?,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_cover_every_zoo_family_and_filter() {
        for scale in Scale::ALL {
            let cfg = DenseBaselinesConfig::preset(scale);
            let names: Vec<String> = cfg.runs.iter().map(|r| r.model.name()).collect();
            assert_eq!(names, ["lenet5", "resnet20", "vgg", "mobilenet_v2"], "{scale}");
        }
        let opts = RunOptions { only: vec!["lenet".into()], ..RunOptions::default() };
        let v = DenseBaselines.config(&opts).unwrap();
        let cfg: DenseBaselinesConfig = serde_json::from_value(v).unwrap();
        assert_eq!(cfg.runs.len(), 1);
        let bad = RunOptions { only: vec!["alexnet".into()], ..RunOptions::default() };
        let err = DenseBaselines.config(&bad).unwrap_err().to_string();
        assert!(err.contains("--only") && err.contains("lenet5-mnist"), "{err}");
    }

    #[test]
    fn seed_reaches_every_run() {
        let v = DenseBaselines.config(&RunOptions { seed: 42, ..RunOptions::default() }).unwrap();
        let cfg: DenseBaselinesConfig = serde_json::from_value(v).unwrap();
        assert!(cfg.runs.iter().all(|r| r.train.seed == 42));
    }
}
