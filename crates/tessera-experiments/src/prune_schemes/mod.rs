//! `prune-schemes`: every sparsity scheme at several compression rates, each reached by ADMM,
//! reweighted group lasso and gradual magnitude pruning with the same epoch budget, on LeNet-5 /
//! MNIST and ResNet-20 / Fashion-MNIST: the accuracy each (scheme, rate, method) keeps, as a
//! table, accuracy-vs-compression plots, and the issue's targets checked on the figures.
//!
//! A *study* is one model on one data set starting from one dense model (`--dense-from` a
//! `dense-baselines` run, or pretrained in the run). A *cell* is one pruning run of it: a
//! scheme, a whole-model compression (over every conv / linear weight, dense layers included;
//! the per-layer rates come from [`crate::study::allocate`]) and a method. Each cell
//! checkpoints its phases, writes its result to `cells/<study>/<cell>.json` and its pruned
//! model (masks in the IR export) to `models/<study>/<cell>/`, so a resumed run skips what is
//! done.

use std::collections::BTreeMap;

use burn::prelude::Device;
use serde::{Deserialize, Serialize};
use tessera_data::{Augment, Dataset, KnownSet};
use tessera_models::saved::{ModelCard, WithLoaded};
use tessera_models::train::{Schedule, TrainConfig};
use tessera_models::weights::prunable_weights;
use tessera_models::zoo::{Lenet5Config, ResNetConfig};
use tessera_models::{Classifier, Masks, ZooConfig};
use tessera_prune::{
    AdmmConfig, DistillConfig, GroupLassoConfig, Method, PruneConfig, Recalibration, prune,
    save_outcome,
};
use tessera_sparsity::Scheme;

use crate::error::{ExperimentError, Result};
use crate::run::{Experiment, Outcome, RunContext, RunOptions, Scale};
mod report;

use report::{check, plots, report};

use crate::study::{
    OpenStudy, Pretrain, RateCap, allocate, cached_cell, cell_prefixes, file_safe, only_studies,
    open_study, per_layer_config, select, sgd, store_cell,
};

/// The experiment.
#[derive(Debug, Clone, Copy, Default)]
pub struct PruneSchemes;

/// A scheme as the study applies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemeSpec {
    /// The scheme (its textual form names it in tables).
    pub scheme: Scheme,
    /// Pad layers the scheme's blocks do not divide.
    #[serde(default)]
    pub pad: bool,
    /// Layers (path patterns) this scheme leaves dense: ones it does not apply to (pattern
    /// schemes on non-3x3 layers) or should not touch (filter pruning of the classifier would
    /// delete classes). They count as kept in the compression.
    #[serde(default)]
    pub skip: Vec<String>,
    /// Per-layer schemes (exact weight paths) that replace `scheme` on those layers: a
    /// mapping from the rule-based mapper or a search.
    #[serde(default)]
    pub per_layer: Vec<(String, Scheme)>,
}

/// A method with its training phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSpec {
    /// Label in tables (`admm`, `group-lasso`, `magnitude`).
    pub label: String,
    /// The method.
    pub method: Method,
    /// Its phase's training.
    pub train: TrainConfig,
}

/// One pruning run of a study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Scheme (textual form, one of the study's schemes).
    pub scheme: String,
    /// Whole-model compression asked for.
    pub rate: f64,
    /// Method label.
    pub method: String,
}

impl Cell {
    fn id(&self) -> String {
        file_safe(&format!("{}-{}x-{}", self.scheme, self.rate, self.method))
    }
}

/// A target the report checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetCheck {
    /// Some cell of `scheme` by `method` reaches `min_compression` (measured) within
    /// `max_drop` (absolute top-1) of the dense model.
    WithinOfDense {
        /// Scheme (textual form).
        scheme: String,
        /// Method label.
        method: String,
        /// Lowest measured compression that counts.
        min_compression: f64,
        /// Largest allowed top-1 drop (0.003 = 0.3 points).
        max_drop: f64,
    },
    /// At every rate `>= min_rate` and every scheme, ADMM's top-1 is at least magnitude's.
    AdmmBeatsMagnitude {
        /// Lowest rate compared.
        min_rate: f64,
    },
}

/// One model on one data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Study {
    /// Name (`lenet5-mnist`): also the name of the dense model in a `dense-baselines` run.
    pub name: String,
    /// The model.
    pub model: ZooConfig,
    /// The data set.
    pub dataset: KnownSet,
    /// Train on a seeded random subset of this many images (`None` = all).
    pub train_limit: Option<usize>,
    /// Evaluate on the first this many test images (`None` = all).
    pub eval_limit: Option<usize>,
    /// Dense training when no `--dense-from` is given.
    pub pretrain: Pretrain,
    /// Layers kept dense by every scheme.
    pub dense: Vec<String>,
    /// Per-layer compression ceilings.
    pub caps: Vec<RateCap>,
    /// The schemes.
    pub schemes: Vec<SchemeSpec>,
    /// Schemes that do not apply to this model, with the reason (reported as n/a).
    pub not_applicable: Vec<(String, String)>,
    /// The methods.
    pub methods: Vec<MethodSpec>,
    /// Masked retraining after hard pruning (the same for every method).
    pub retrain: TrainConfig,
    /// Distill from the dense model during the masked retraining (every method alike).
    #[serde(default)]
    pub distill: Option<DistillConfig>,
    /// Distill during the method's phase too (every method alike; needs `distill`).
    #[serde(default)]
    pub distill_phase: bool,
    /// Re-estimate batch-norm statistics after hard pruning and after retraining, before
    /// each evaluation (every method alike).
    #[serde(default)]
    pub recalibrate: Option<Recalibration>,
    /// The cells, in run order.
    pub cells: Vec<Cell>,
    /// Targets checked in the report.
    pub targets: Vec<TargetCheck>,
}

/// The experiment's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneSchemesConfig {
    /// The `--dense-from` directory the dense models come from (`None`: trained in the run);
    /// recorded so a resume cannot mix dense models.
    #[serde(default)]
    pub dense_from: Option<std::path::PathBuf>,
    /// The studies.
    pub studies: Vec<Study>,
}

/// What one cell measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    /// The cell.
    pub cell: Cell,
    /// Measured compression over every conv / linear weight (dense layers included).
    pub compression: f64,
    /// Measured compression over the pruned layers only.
    pub pruned_layers_compression: f64,
    /// Dense over kept conv / linear FLOPs per image.
    pub flops_reduction: f64,
    /// Top-1 right after hard pruning (before retraining).
    pub hard_pruned_top1: Option<f64>,
    /// Final test top-1.
    pub top1: f64,
    /// Dense top-1 minus this top-1.
    pub drop: f64,
    /// ADMM's largest relative primal residual at the first and the last update.
    pub admm_residual: Option<(f64, f64)>,
    /// ADMM's whole-model relative primal residual at the first and the last update
    /// ([`tessera_prune::admm::AdmmUpdate::total_relative`]).
    #[serde(default)]
    pub admm_total_residual: Option<(f64, f64)>,
    /// Per pruned layer: path, scheme, target, kept fraction.
    pub layers: Vec<(String, String, String, f64)>,
    /// Layers that keep no weight at all (the network is cut there).
    #[serde(default)]
    pub cut_layers: Vec<String>,
    /// Training wall time of all phases, seconds.
    pub train_seconds: f64,
}

/// A checked target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// What was checked.
    pub target: String,
    /// Met, not met, or `None` when no cell measured it (or the data were fixtures).
    pub met: Option<bool>,
    /// The figures behind the verdict.
    pub detail: String,
}

impl CheckResult {
    /// `**met**`, `**not met**` or `not judged`, for reports.
    pub fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "**met**",
            Some(false) => "**not met**",
            None => "not judged",
        }
    }
}

/// What one study measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyResult {
    /// Study name.
    pub name: String,
    /// Model name.
    pub model: String,
    /// Data set.
    pub dataset: String,
    /// Where the dense model came from.
    pub dense_model: String,
    /// Dense test top-1.
    pub dense_top1: f64,
    /// Training / test images.
    pub images: (usize, usize),
    /// Every cell.
    pub cells: Vec<CellResult>,
    /// Schemes reported n/a.
    pub not_applicable: Vec<(String, String)>,
    /// The targets.
    pub checks: Vec<CheckResult>,
    /// The training budget every cell had, in words.
    #[serde(default)]
    pub budget: String,
}

pub(crate) fn scheme(s: &str) -> Result<Scheme> {
    s.parse().map_err(|e| ExperimentError::config("scheme", e))
}

/// The three methods with one phase budget. ADMM updates Z and U every `admm_steps` steps
/// (about 14 updates in LeNet-5's 3 epochs; one update per epoch left the residual high and
/// cost 0.2-0.5 points after hard pruning at 16x).
fn methods(phase: &TrainConfig, admm: AdmmConfig, lambda: f64) -> Vec<MethodSpec> {
    let constant = TrainConfig { schedule: Schedule::Constant, ..phase.clone() };
    vec![
        MethodSpec { label: "admm".into(), method: Method::Admm(admm), train: constant.clone() },
        MethodSpec {
            label: "group-lasso".into(),
            method: Method::GroupLasso(GroupLassoConfig { lambda, eps: 1e-2, reweight_every: 1 }),
            train: constant.clone(),
        },
        MethodSpec {
            label: "magnitude".into(),
            method: Method::Gradual { initial_fraction: 0.0, end_at: 0.75, every: 50 },
            train: constant,
        },
    ]
}

/// ADMM from `rho` growing 1.3x per update (capped at 1) with an update every `steps`.
///
/// Between two dual updates the W-step must move W a fair part of the way to `Z - U`: with
/// SGD at rate `lr` and momentum `m` the penalty closes about `lr * rho * steps / (1 - m)` of
/// the gap. Far below ~0.2 the dual U grows every update while W stays put and the residual
/// rises instead of falling (measured on ResNet-20 with rho 0.01 every 20 steps: 0.02 per
/// update, relative residual 0.95 -> 1.34). LeNet-5: 0.01 x 0.01 x 200 x 10 = 0.2;
/// ResNet-20: 0.01 x 0.1 x 40 x 10 = 0.4.
pub(crate) fn step_admm(rho: f64, steps: usize) -> AdmmConfig {
    AdmmConfig {
        rho,
        rho_growth: 1.3,
        rho_max: 1.0,
        update_every: 1,
        update_every_steps: Some(steps),
        hard_prune_at: None,
        progressive: false,
        couple_batch_norm: false,
        free_support: false,
        dual_step: 1.0,
    }
}

fn grid(schemes: &[&str], rates: &[f64], methods: &[&str]) -> Vec<Cell> {
    let mut cells = Vec::new();
    for s in schemes {
        for &rate in rates {
            for m in methods {
                cells.push(Cell { scheme: s.to_string(), rate, method: m.to_string() });
            }
        }
    }
    cells
}

const LENET_SCHEMES: [&str; 4] = ["unstructured", "filter", "block-punched:8x4", "bcr:8x8"];
const RESNET_SCHEMES: [&str; 5] =
    ["unstructured", "filter", "pattern:8+connectivity", "block-punched:8x4", "bcr:8x8"];
const ALL_METHODS: [&str; 3] = ["admm", "group-lasso", "magnitude"];

/// `scheme` as LeNet-5 (Caffe's 20-50-500) studies apply it: padded; the classifier (`fc2`,
/// whose rows are the classes) dense under structured schemes — filter pruning would delete
/// classes, and whole-block schemes on its 10 rows lost a class in our runs (89% top-1 at 8x).
pub(crate) fn lenet_spec(scheme_text: &str) -> Result<SchemeSpec> {
    Ok(SchemeSpec {
        scheme: scheme(scheme_text)?,
        pad: true,
        skip: if scheme_text == "unstructured" { Vec::new() } else { vec!["fc2.*".into()] },
        per_layer: Vec::new(),
    })
}

/// `scheme` as ResNet-20 studies apply it: padded; pattern schemes leave the 1x1 projection
/// shortcuts (no 3x3 kernels to pattern) dense.
pub(crate) fn resnet_spec(scheme_text: &str) -> Result<SchemeSpec> {
    Ok(SchemeSpec {
        scheme: scheme(scheme_text)?,
        pad: true,
        skip: if scheme_text.starts_with("pattern") {
            vec!["*shortcut*".into()]
        } else {
            Vec::new()
        },
        per_layer: Vec::new(),
    })
}

fn lenet_study(scale: Scale) -> Result<Study> {
    let (phase_epochs, steps, train_limit, eval_limit, pretrain) = match scale {
        Scale::Smoke => (1, Some(3), None, Some(64), sgd(1, 16, 0.05, 5e-4, Schedule::Constant)),
        Scale::Default => {
            (3, None, None, None, sgd(12, 64, 0.05, 5e-4, Schedule::Cosine { min_lr: 0.0 }))
        }
        Scale::Paper => {
            (10, None, None, None, sgd(20, 64, 0.05, 5e-4, Schedule::Cosine { min_lr: 0.0 }))
        }
    };
    let batch = if scale == Scale::Smoke { 16 } else { 64 };
    let phase = TrainConfig {
        max_steps_per_epoch: steps,
        ..sgd(phase_epochs, batch, 0.01, 0.0, Schedule::Constant)
    };
    let retrain = TrainConfig {
        max_steps_per_epoch: steps,
        ..sgd(phase_epochs, batch, 0.01, 0.0, Schedule::Cosine { min_lr: 0.0 })
    };
    let mut cells = match scale {
        Scale::Smoke => vec![
            Cell { scheme: "unstructured".into(), rate: 8.0, method: "admm".into() },
            Cell { scheme: "block-punched:8x4".into(), rate: 8.0, method: "magnitude".into() },
            Cell { scheme: "filter".into(), rate: 4.0, method: "group-lasso".into() },
        ],
        _ => grid(&LENET_SCHEMES, &[4.0, 8.0, 16.0], &ALL_METHODS),
    };
    if scale != Scale::Smoke {
        cells.extend(grid(&["unstructured"], &[40.0], &ALL_METHODS));
    }
    Ok(Study {
        name: "lenet5-mnist".into(),
        model: ZooConfig::Lenet5(Lenet5Config::caffe()),
        dataset: KnownSet::Mnist,
        train_limit,
        eval_limit,
        pretrain: Pretrain { train: TrainConfig { max_steps_per_epoch: steps, ..pretrain } },
        dense: Vec::new(),
        // Per-layer ceilings in the spirit of ADMM-NN's hand-set LeNet-5 rates: conv1 (500
        // weights, 0.1% of the model) is the only layer that sees the raw image, and the
        // convolutions (6% of the weights, all of the features) are pruned less than fc1.
        caps: vec![
            RateCap { layers: "conv1.*".into(), max_rate: 2.0 },
            RateCap { layers: "conv2.*".into(), max_rate: 10.0 },
        ],
        schemes: LENET_SCHEMES.iter().map(|s| lenet_spec(s)).collect::<Result<_>>()?,
        not_applicable: vec![(
            "pattern:8+connectivity".into(),
            "LeNet-5 has 5x5 convolutions; PatDNN's 4-tap patterns are defined on 3x3 kernels"
                .into(),
        )],
        methods: methods(
            &phase,
            step_admm(1e-2, if scale == Scale::Smoke { 1 } else { 200 }),
            5e-5,
        ),
        retrain,
        distill: None,
        distill_phase: false,
        recalibrate: None,
        cells,
        targets: vec![
            TargetCheck::WithinOfDense {
                scheme: "unstructured".into(),
                method: "admm".into(),
                min_compression: 40.0,
                max_drop: 0.003,
            },
            TargetCheck::WithinOfDense {
                scheme: "block-punched:8x4".into(),
                method: "admm".into(),
                min_compression: 8.0,
                max_drop: 0.003,
            },
        ],
    })
}

fn resnet_study(scale: Scale) -> Result<Study> {
    let fashion_aug = Augment { crop_padding: 2, horizontal_flip: true };
    let (width, phase_epochs, steps, train_limit, eval_limit, pretrain) = match scale {
        Scale::Smoke => {
            (0.25, 1, Some(2), None, Some(32), sgd(1, 16, 0.05, 5e-4, Schedule::Constant))
        }
        Scale::Default => (
            1.0,
            6,
            None,
            Some(10_000),
            None,
            sgd(20, 128, 0.1, 5e-4, Schedule::Cosine { min_lr: 0.0 }),
        ),
        Scale::Paper => {
            (1.0, 15, None, None, None, sgd(60, 128, 0.1, 5e-4, Schedule::Cosine { min_lr: 0.0 }))
        }
    };
    let batch = if scale == Scale::Smoke { 16 } else { 128 };
    let phase = TrainConfig {
        max_steps_per_epoch: steps,
        augment: fashion_aug,
        ..sgd(phase_epochs, batch, 0.01, 0.0, Schedule::Constant)
    };
    let retrain = TrainConfig {
        max_steps_per_epoch: steps,
        augment: fashion_aug,
        ..sgd(phase_epochs, batch, 0.01, 5e-4, Schedule::Cosine { min_lr: 0.0 })
    };
    let cells = match scale {
        Scale::Smoke => vec![
            Cell { scheme: "pattern:8+connectivity".into(), rate: 8.0, method: "admm".into() },
            Cell { scheme: "block-punched:8x4".into(), rate: 8.0, method: "magnitude".into() },
        ],
        // Two cores: the (ADMM, magnitude) pairs the targets judge first — block-punched at
        // 8x and 16x, every other scheme at 8x — then block-punched at 4x and by group lasso
        // (about 10 minutes a cell on the 10k subset, 2.5 hours in all).
        Scale::Default => {
            let mut c = grid(&["block-punched:8x4"], &[8.0, 16.0], &["admm", "magnitude"]);
            c.extend(grid(
                &["unstructured", "filter", "pattern:8+connectivity", "bcr:8x8"],
                &[8.0],
                &["admm", "magnitude"],
            ));
            c.extend(grid(&["block-punched:8x4"], &[4.0], &["admm", "magnitude"]));
            c.push(Cell {
                scheme: "block-punched:8x4".into(),
                rate: 8.0,
                method: "group-lasso".into(),
            });
            c
        }
        Scale::Paper => grid(&RESNET_SCHEMES, &[4.0, 8.0, 16.0], &ALL_METHODS),
    };
    Ok(Study {
        name: "resnet20-fashion".into(),
        model: ZooConfig::Resnet(ResNetConfig {
            depth: 20,
            in_channels: 1,
            classes: 10,
            width,
            ..Default::default()
        }),
        dataset: KnownSet::FashionMnist,
        train_limit,
        eval_limit,
        pretrain: Pretrain {
            train: TrainConfig { max_steps_per_epoch: steps, augment: fashion_aug, ..pretrain },
        },
        // The stem conv and the classifier stay dense, as in the papers.
        dense: vec!["stem.*".into(), "fc.*".into()],
        caps: Vec::new(),
        schemes: RESNET_SCHEMES.iter().map(|s| resnet_spec(s)).collect::<Result<_>>()?,
        not_applicable: Vec::new(),
        // ADMM hard-prunes at 3/4 of its phase, where gradual magnitude pruning reaches its
        // final masks: both then train masked for the last quarter. Its constraint covers the
        // batch norms of the filters it removes: filter 8x went from 81.91% to 86.87%
        // (magnitude 85.71%; runs 20261205T043602Z, 20261205T063537Z).
        methods: methods(
            &phase,
            AdmmConfig {
                hard_prune_at: Some(0.75),
                couple_batch_norm: true,
                ..step_admm(0.1, if scale == Scale::Smoke { 1 } else { 40 })
            },
            5e-5,
        ),
        retrain,
        // Distillation from the dense model (in the methods' phases too) and batch-norm
        // re-estimation after hard pruning: block-punched 8x4 8x by ADMM went from 86.49%
        // (2 + 2 epochs, neither) to 89.52% (6 + 6 epochs, distilling in the retraining) and
        // 90.00% (also hard-pruning in the phase and distilling there; magnitude 90.05%)
        // against the dense 90.36% on the 10k subset.
        distill: Some(DistillConfig { temperature: 3.0, weight: 0.5 }),
        distill_phase: true,
        recalibrate: Some(if scale == Scale::Smoke {
            Recalibration { batches: 2, batch_size: 16 }
        } else {
            Recalibration::default()
        }),
        cells,
        targets: vec![
            TargetCheck::WithinOfDense {
                scheme: "block-punched:8x4".into(),
                method: "admm".into(),
                min_compression: 8.0,
                max_drop: 0.01,
            },
            TargetCheck::AdmmBeatsMagnitude { min_rate: 8.0 },
        ],
    })
}

impl PruneSchemesConfig {
    /// The preset of `scale`.
    pub fn preset(scale: Scale) -> Result<Self> {
        Ok(PruneSchemesConfig {
            dense_from: None,
            studies: vec![lenet_study(scale)?, resnet_study(scale)?],
        })
    }
}

impl Experiment for PruneSchemes {
    fn name(&self) -> &'static str {
        "prune-schemes"
    }

    fn description(&self) -> &'static str {
        "Every sparsity scheme at 4x/8x/16x (and 40x unstructured) by ADMM, reweighted group lasso and gradual magnitude pruning with equal budgets, on LeNet-5/MNIST and ResNet-20/Fashion-MNIST: accuracy vs compression."
    }

    fn config(&self, options: &RunOptions) -> Result<serde_json::Value> {
        let mut cfg = PruneSchemesConfig::preset(options.scale)?;
        for s in &mut cfg.studies {
            s.pretrain.train.seed = options.seed;
            s.retrain.seed = options.seed;
            for m in &mut s.methods {
                m.train.seed = options.seed;
            }
            for c in &s.cells {
                if !s.schemes.iter().any(|x| x.scheme.to_string() == c.scheme) {
                    return Err(ExperimentError::config(
                        "cells",
                        format!("{}: scheme {} is not in the study", s.name, c.scheme),
                    ));
                }
                if !s.methods.iter().any(|m| m.label == c.method) {
                    return Err(ExperimentError::config(
                        "cells",
                        format!("{}: method {} is not in the study", s.name, c.method),
                    ));
                }
            }
        }
        // `--only study` keeps studies; `--only study/cell-prefix` keeps those cells of it.
        cfg.studies = select(cfg.studies, &only_studies(&options.only), |s| &s.name)?;
        for s in &mut cfg.studies {
            let prefixes = cell_prefixes(&options.only, &s.name);
            if prefixes.is_empty() {
                continue;
            }
            s.cells.retain(|c| prefixes.iter().any(|p| c.id().starts_with(p)));
            if s.cells.is_empty() {
                return Err(ExperimentError::config(
                    "--only",
                    format!(
                        "{prefixes:?} matches no cell of {} (cells are named like `block-punched-8x4-8x-admm`)",
                        s.name
                    ),
                ));
            }
        }
        cfg.dense_from.clone_from(&options.dense_from);
        serde_json::to_value(cfg).map_err(|e| ExperimentError::config("config", e))
    }

    fn run(&self, ctx: &RunContext) -> Result<Outcome> {
        let cfg: PruneSchemesConfig = serde_json::from_value(ctx.config.clone())
            .map_err(|e| ExperimentError::config("config", e))?;
        let mut results = Vec::new();
        for (i, study) in cfg.studies.iter().enumerate() {
            let _span = tracing::info_span!("study", name = %study.name, index = i + 1, of = cfg.studies.len())
                .entered();
            results.push(run_study(ctx, study)?);
        }
        let figures =
            serde_json::to_value(&results).map_err(|e| ExperimentError::config("figures", e))?;
        Ok(Outcome {
            figures: serde_json::json!({ "studies": figures }),
            report: report(&results),
            plots: plots(&results)?,
        })
    }
}

fn run_study(ctx: &RunContext, study: &Study) -> Result<StudyResult> {
    let OpenStudy { train: train_set, test, dense_dir, dense_top1, device, .. } = open_study(
        ctx,
        &study.name,
        &study.model,
        study.dataset,
        study.train_limit,
        study.eval_limit,
        None,
        &study.pretrain,
    )?;
    let mut cells = Vec::new();
    for (k, cell) in study.cells.iter().enumerate() {
        let id = cell.id();
        if let Some(done) = cached_cell::<CellResult>(ctx, &study.name, &id) {
            tracing::info!(cell = %id, "already done");
            cells.push(done);
            continue;
        }
        let _span =
            tracing::info_span!("cell", id = %id, index = k + 1, of = study.cells.len()).entered();
        let (Some(spec), Some(method)) = (
            study.schemes.iter().find(|s| s.scheme.to_string() == cell.scheme),
            study.methods.iter().find(|m| m.label == cell.method),
        ) else {
            return Err(ExperimentError::config("cells", format!("{}: unknown {id}", study.name)));
        };
        let result = tessera_models::saved::load(
            &dense_dir,
            &device,
            PruneCell {
                ctx,
                study,
                cell,
                spec,
                method,
                train_set: &train_set,
                test: &test,
                device: &device,
                dense_top1,
            },
        )??;
        tracing::info!(cell = %id, top1 = result.top1, compression = result.compression, "cell done");
        store_cell(ctx, &study.name, &id, &result)?;
        cells.push(result);
    }
    let full = ctx.full_data(study.dataset) && study.eval_limit.is_none();
    let checks = study.targets.iter().map(|t| check(t, &cells, full)).collect();
    Ok(StudyResult {
        name: study.name.clone(),
        model: study.model.name(),
        dataset: study.dataset.dir_name().to_string(),
        dense_model: dense_dir.display().to_string(),
        dense_top1,
        images: (train_set.len(), test.len()),
        cells,
        not_applicable: study.not_applicable.clone(),
        checks,
        budget: budget_text(study),
    })
}

/// The study's training budget, as the report states it.
fn budget_text(study: &Study) -> String {
    let phase = |t: &TrainConfig| {
        let steps =
            t.max_steps_per_epoch.map_or(String::new(), |n| format!(" of at most {n} steps"));
        let optimizer = match t.optimizer {
            tessera_models::train::OptimizerConfig::Sgd { lr, .. } => format!("SGD lr {lr}"),
            tessera_models::train::OptimizerConfig::Adam { lr, .. } => format!("Adam lr {lr}"),
        };
        let schedule = match t.schedule {
            Schedule::Constant => "constant",
            Schedule::Cosine { .. } => "cosine",
            Schedule::Step { .. } => "step",
        };
        format!("{} epochs{steps} (batch {}, {optimizer}, {schedule})", t.epochs, t.batch_size)
    };
    let mut text = study
        .methods
        .iter()
        .map(|m| format!("{}: {}", m.label, phase(&m.train)))
        .collect::<Vec<_>>()
        .join("; ");
    text.push_str(&format!("; then masked retraining for every method: {}", phase(&study.retrain)));
    text.push_str(&distill_and_recalibration_text(study.distill, study.recalibrate));
    if study.distill_phase {
        text.push_str("; the methods' phases distill too");
    }
    text
}

/// `, distilling from the dense model (temperature 3, weight 0.5); batch-norm statistics
/// re-estimated on 16 x 64 training images after hard pruning and after retraining`, or the
/// parts that apply.
pub(crate) fn distill_and_recalibration_text(
    distill: Option<DistillConfig>,
    recalibrate: Option<Recalibration>,
) -> String {
    let mut text = String::new();
    if let Some(d) = distill {
        text.push_str(&format!(
            ", distilling from the dense model (temperature {}, weight {})",
            d.temperature, d.weight
        ));
    }
    if let Some(r) = recalibrate {
        text.push_str(&format!(
            "; batch-norm statistics re-estimated on {} x {} training images after hard pruning and after retraining",
            r.batches, r.batch_size
        ));
    }
    text
}

struct PruneCell<'a> {
    ctx: &'a RunContext,
    study: &'a Study,
    cell: &'a Cell,
    spec: &'a SchemeSpec,
    method: &'a MethodSpec,
    train_set: &'a Dataset,
    test: &'a Dataset,
    device: &'a Device,
    dense_top1: f64,
}

/// Whole-model counts of a pruned model: (compression, pruned-layers compression, FLOP
/// reduction) from the plan's summary and the dense totals over every conv / linear weight.
pub(crate) fn whole_model_counts<M: Classifier>(
    model: &M,
    input: [usize; 4],
    pruned: &tessera_sparsity::LayerStats,
) -> Result<(f64, f64, f64)> {
    let (_, dense) = tessera_ir::stats::weight_stats(&model.export(input, &Masks::new())?)?;
    let kept = dense.params_total - (pruned.params_total - pruned.params_kept);
    let flops_kept = dense.flops_dense - (pruned.flops_dense - pruned.flops_kept);
    Ok((
        dense.params_total as f64 / kept.max(1) as f64,
        pruned.params_total as f64 / pruned.params_kept.max(1) as f64,
        dense.flops_dense as f64 / flops_kept.max(1) as f64,
    ))
}

/// The per-layer sparsity config of `spec` at whole-model `rate` for `model`. Padding and
/// whole-block rounding can keep a little more than asked, so the asked rate is raised until
/// hard pruning `model`'s weights measures at least `rate` (kept counts of every scheme depend
/// on the target, not on the values, so this holds for the trained weights too).
pub(crate) fn sparsity_for<M: Classifier>(
    model: &M,
    input: [usize; 4],
    rate: f64,
    spec: &SchemeSpec,
    dense: &[String],
    caps: &[RateCap],
) -> Result<tessera_sparsity::SparsityConfig> {
    let named = prunable_weights(model, input)?;
    let weights: Vec<(String, usize)> =
        named.iter().map(|w| (w.path.clone(), w.values.len())).collect();
    let values: BTreeMap<String, Vec<f32>> =
        named.iter().map(|w| (w.path.clone(), w.values.clone())).collect();
    let total: usize = weights.iter().map(|w| w.1).sum();
    let dense: Vec<String> = dense.iter().chain(&spec.skip).cloned().collect();
    let build = |ask: f64| -> Result<tessera_sparsity::SparsityConfig> {
        let mut config =
            per_layer_config(&allocate(&weights, ask, caps, &dense)?, &spec.scheme, spec.pad);
        for rule in &mut config.rules {
            let mapped = spec.per_layer.iter().find(|(path, _)| *path == rule.layers);
            if let Some((_, scheme)) = mapped
                && rule.rule.target != tessera_sparsity::Target::DENSE
            {
                rule.rule.scheme = scheme.clone();
            }
        }
        Ok(config)
    };
    let mut ask = rate;
    let mut config = build(ask)?;
    for _ in 0..4 {
        let plan = tessera_prune::PrunePlan::resolve(&config, &named)?;
        let pruned = plan.summary(&plan.masks(&values)?)?.pruned_total;
        let kept = total - (pruned.params_total - pruned.params_kept);
        let measured = total as f64 / kept.max(1) as f64;
        if measured >= rate * (1.0 - 1e-3) {
            break;
        }
        ask *= rate / measured;
        config = build(ask)?;
    }
    Ok(config)
}

impl WithLoaded for PruneCell<'_> {
    type Output = Result<CellResult>;

    fn run<M: Classifier>(self, model: M, card: ModelCard, _: Masks) -> Result<CellResult> {
        let PruneCell { ctx, study, cell, spec, method, train_set, test, device, dense_top1 } =
            self;
        let input = card.batch_of_one();
        let sparsity = sparsity_for(&model, input, cell.rate, spec, &study.dense, &study.caps)?;
        let config = PruneConfig {
            sparsity,
            method: method.method.clone(),
            train: method.train.clone(),
            retrain: study.retrain.clone(),
            distill: study.distill,
            distill_phase: study.distill_phase,
            recalibrate: study.recalibrate,
        };
        let id = cell.id();
        let checkpoints = ctx.checkpoints(&format!("{}/{id}", study.name));
        let outcome = prune(model, &config, train_set, Some(test), device, Some(&checkpoints))?;
        let (compression, pruned_layers_compression, flops_reduction) =
            whole_model_counts(&outcome.model, input, &outcome.summary.pruned_total)?;
        let card = ModelCard {
            note: format!(
                "prune-schemes {}: {} at {}x by {}, seed {}",
                study.name, cell.scheme, cell.rate, cell.method, ctx.options.seed
            ),
            ..card
        };
        save_outcome(&ctx.dir.join("models").join(&study.name).join(&id), &card, &outcome)?;
        let top1 = outcome.final_eval.map_or(0.0, |e| e.1);
        Ok(CellResult {
            cell: cell.clone(),
            compression,
            pruned_layers_compression,
            flops_reduction,
            hard_pruned_top1: outcome.hard_pruned_eval.map(|e| e.1),
            top1,
            drop: dense_top1 - top1,
            admm_residual: match (outcome.admm_log.first(), outcome.admm_log.last()) {
                (Some(a), Some(b)) => Some((a.max_relative(), b.max_relative())),
                _ => None,
            },
            admm_total_residual: match (outcome.admm_log.first(), outcome.admm_log.last()) {
                (Some(a), Some(b)) => Some((a.total_relative(), b.total_relative())),
                _ => None,
            },
            layers: outcome.summary.layers.clone(),
            cut_layers: outcome
                .summary
                .layers
                .iter()
                .filter(|l| l.3 == 0.0)
                .map(|l| l.0.clone())
                .collect(),
            train_seconds: outcome
                .phases
                .iter()
                .flat_map(|p| p.history.iter().map(|h| h.seconds))
                .sum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_name_known_schemes_and_methods() {
        for s in LENET_SCHEMES.iter().chain(&RESNET_SCHEMES) {
            let parsed: Scheme = s.parse().unwrap();
            assert_eq!(parsed.to_string(), *s);
        }
        for scale in Scale::ALL {
            let v = PruneSchemes
                .config(&RunOptions { scale, seed: 3, ..RunOptions::default() })
                .unwrap();
            let cfg: PruneSchemesConfig = serde_json::from_value(v).unwrap();
            assert_eq!(cfg.studies.len(), 2);
            for s in &cfg.studies {
                assert!(!s.cells.is_empty());
                assert!(s.methods.iter().all(|m| m.train.seed == 3) && s.retrain.seed == 3);
                // Every method gets the same budget.
                let epochs: Vec<usize> = s.methods.iter().map(|m| m.train.epochs).collect();
                assert!(epochs.windows(2).all(|w| w[0] == w[1]), "{epochs:?}");
            }
        }
        let v = PruneSchemes
            .config(&RunOptions { only: vec!["lenet".into()], ..RunOptions::default() })
            .unwrap();
        let cfg: PruneSchemesConfig = serde_json::from_value(v).unwrap();
        assert_eq!(cfg.studies.len(), 1);
        // The default LeNet grid: 4 schemes x 3 rates x 3 methods + 40x unstructured.
        assert_eq!(cfg.studies[0].cells.len(), 39);
        let err = PruneSchemes
            .config(&RunOptions { only: vec!["alexnet".into()], ..RunOptions::default() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("--only") && err.contains("resnet20-fashion"), "{err}");
        // Cell prefixes select part of a study's grid.
        let v = PruneSchemes
            .config(&RunOptions {
                only: vec![
                    "resnet20/block-punched-8x4-8x".into(),
                    "resnet20/filter-8x-admm".into(),
                ],
                ..RunOptions::default()
            })
            .unwrap();
        let cfg: PruneSchemesConfig = serde_json::from_value(v).unwrap();
        let ids: Vec<String> = cfg.studies[0].cells.iter().map(Cell::id).collect();
        assert_eq!(
            ids,
            [
                "block-punched-8x4-8x-admm",
                "block-punched-8x4-8x-magnitude",
                "filter-8x-admm",
                "block-punched-8x4-8x-group-lasso"
            ]
        );
        let err = PruneSchemes
            .config(&RunOptions { only: vec!["lenet5/alexnet".into()], ..RunOptions::default() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("no cell of lenet5-mnist"), "{err}");
    }

    /// `--set` changes reach the typed config; a misspelt field or a wrongly typed value is
    /// an error, not a silently ignored setting.
    #[test]
    fn overrides_change_the_typed_config() {
        use crate::config_override::{ConfigOverride, apply_overrides};
        let preset = PruneSchemes
            .config(&RunOptions { only: vec!["resnet20".into()], ..RunOptions::default() })
            .unwrap();
        let set = |changes: &[&str]| -> Result<PruneSchemesConfig> {
            let mut v = preset.clone();
            let changes: Vec<ConfigOverride> =
                changes.iter().map(|c| c.parse()).collect::<Result<_>>()?;
            apply_overrides(&mut v, &changes)?;
            serde_json::from_value(v).map_err(|e| ExperimentError::config("config", e))
        };
        let cfg = set(&[
            "studies.0.methods.*.train.epochs=9",
            "studies.0.retrain.epochs=4",
            "studies.0.distill=null",
            r#"studies.0.recalibrate={"batches": 3, "batch_size": 32}"#,
        ])
        .unwrap();
        let study = &cfg.studies[0];
        assert!(study.methods.iter().all(|m| m.train.epochs == 9));
        assert_eq!(study.retrain.epochs, 4);
        assert_eq!(study.distill, None);
        assert_eq!(study.recalibrate, Some(Recalibration { batches: 3, batch_size: 32 }));
        assert!(set(&["studies.0.retrain.epoch=4"]).unwrap_err().to_string().contains("epochs"));
        assert!(set(&["studies.0.retrain.epochs=many"]).is_err());
    }

    fn cell(scheme: &str, rate: f64, method: &str, compression: f64, top1: f64) -> CellResult {
        CellResult {
            cell: Cell { scheme: scheme.into(), rate, method: method.into() },
            compression,
            pruned_layers_compression: compression,
            flops_reduction: compression,
            hard_pruned_top1: None,
            top1,
            drop: 0.99 - top1,
            admm_residual: None,
            admm_total_residual: None,
            layers: Vec::new(),
            cut_layers: Vec::new(),
            train_seconds: 0.0,
        }
    }

    #[test]
    fn checks_judge_hand_made_cells() {
        let cells = vec![
            cell("unstructured", 40.0, "admm", 40.2, 0.988),
            cell("unstructured", 16.0, "admm", 16.0, 0.989),
            cell("unstructured", 16.0, "magnitude", 16.0, 0.985),
            cell("unstructured", 8.0, "admm", 8.0, 0.97),
            cell("unstructured", 8.0, "magnitude", 8.0, 0.98),
        ];
        let within = |min, drop| TargetCheck::WithinOfDense {
            scheme: "unstructured".into(),
            method: "admm".into(),
            min_compression: min,
            max_drop: drop,
        };
        assert_eq!(check(&within(40.0, 0.003), &cells, true).met, Some(true));
        assert_eq!(check(&within(40.0, 0.001), &cells, true).met, Some(false));
        assert_eq!(check(&within(50.0, 0.003), &cells, true).met, None);
        // Fixtures never claim a target.
        assert_eq!(check(&within(40.0, 0.003), &cells, false).met, None);
        let beats = check(&TargetCheck::AdmmBeatsMagnitude { min_rate: 8.0 }, &cells, true);
        assert_eq!(beats.met, Some(false));
        assert!(beats.detail.contains("unstructured 8x"), "{}", beats.detail);
        let beats = check(&TargetCheck::AdmmBeatsMagnitude { min_rate: 16.0 }, &cells, true);
        assert_eq!(beats.met, Some(true));
    }
}
