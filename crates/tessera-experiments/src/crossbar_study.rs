//! What the crossbar experiments (`reram-faults`, `forms`, `quickstart`) share: a study's
//! model, data and pruning budget ([`CrossbarStudy`]), unstructured / polarized ADMM pruning of
//! its dense model cached per run ([`PruneJob`]), the test images a simulated chip classifies,
//! and the statistics of accuracy over chips (mean, 95% band, tolerated fault rate and its
//! bootstrap interval).

use std::path::{Path, PathBuf};

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use tessera_data::{Dataset, KnownSet};
use tessera_ir::Tensor;
use tessera_models::saved::{ModelCard, WithLoaded};
use tessera_models::train::{Schedule, TrainConfig};
use tessera_models::zoo::{Lenet5Config, ResNetConfig};
use tessera_models::{Classifier, Masks, ZooConfig};
use tessera_prune::{AdmmConfig, Method, PruneConfig, prune, save_outcome};

use crate::error::Result;
use crate::prune_schemes::{SchemeSpec, lenet_spec, resnet_spec, sparsity_for, step_admm};
use crate::run::{RunContext, Scale};
use crate::study::{OpenStudy, Pretrain, RateCap, cached_cell, open_study, sgd, store_cell};

/// What every crossbar experiment's study shares: a model on a data set, where its dense model
/// comes from, how it is pruned, and how many test images the simulated chips classify.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossbarStudy {
    /// Name (also the dense model's name in a `dense-baselines` run).
    pub name: String,
    /// The model.
    pub model: ZooConfig,
    /// The data set.
    pub dataset: KnownSet,
    /// Train on a seeded subset of this many images (`None` = all).
    pub train_limit: Option<usize>,
    /// Evaluate training on the first this many test images (`None` = all).
    pub eval_limit: Option<usize>,
    /// Test images each simulated chip classifies (the first ones).
    pub sim_images: usize,
    /// Dense training when no `--dense-from` is given.
    pub pretrain: Pretrain,
    /// Layers kept dense when pruning.
    pub dense: Vec<String>,
    /// Per-layer compression ceilings.
    pub caps: Vec<RateCap>,
    /// ADMM settings.
    pub admm: AdmmConfig,
    /// ADMM's training phase.
    pub admm_train: TrainConfig,
    /// Masked retraining.
    pub retrain: TrainConfig,
}

impl CrossbarStudy {
    /// Caffe LeNet-5 on MNIST; `sim_images` per scale (smoke, default, paper).
    pub(crate) fn lenet(scale: Scale, sim_images: [usize; 3]) -> Self {
        let smoke = scale == Scale::Smoke;
        let steps = smoke.then_some(3);
        let epochs = match scale {
            Scale::Smoke => 1,
            Scale::Default => 3,
            Scale::Paper => 10,
        };
        let batch = if smoke { 16 } else { 64 };
        CrossbarStudy {
            name: "lenet5-mnist".into(),
            model: ZooConfig::Lenet5(Lenet5Config::caffe()),
            dataset: KnownSet::Mnist,
            train_limit: None,
            eval_limit: smoke.then_some(64),
            sim_images: pick(scale, sim_images),
            pretrain: Pretrain {
                train: TrainConfig {
                    max_steps_per_epoch: steps,
                    ..sgd(
                        if smoke { 1 } else { 12 },
                        batch,
                        0.05,
                        5e-4,
                        Schedule::Cosine { min_lr: 0.0 },
                    )
                },
            },
            dense: Vec::new(),
            caps: Vec::new(),
            admm: step_admm(1e-2, if smoke { 1 } else { 200 }),
            admm_train: TrainConfig {
                max_steps_per_epoch: steps,
                ..sgd(epochs, batch, 0.01, 0.0, Schedule::Constant)
            },
            retrain: TrainConfig {
                max_steps_per_epoch: steps,
                ..sgd(epochs, batch, 0.01, 0.0, Schedule::Cosine { min_lr: 0.0 })
            },
        }
    }

    /// ResNet-20 on Fashion-MNIST (stem and classifier kept dense).
    pub(crate) fn resnet(scale: Scale, sim_images: [usize; 3]) -> Self {
        let smoke = scale == Scale::Smoke;
        let steps = smoke.then_some(2);
        let (width, epochs, train_limit) = match scale {
            Scale::Smoke => (0.25, 1, None),
            Scale::Default => (1.0, 1, Some(10_000)),
            Scale::Paper => (1.0, 10, None),
        };
        let batch = if smoke { 16 } else { 128 };
        CrossbarStudy {
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
            eval_limit: Some(if smoke { 32 } else { 2000 }),
            sim_images: pick(scale, sim_images),
            pretrain: Pretrain {
                train: TrainConfig {
                    max_steps_per_epoch: steps,
                    ..sgd(
                        if smoke { 1 } else { 20 },
                        batch,
                        0.1,
                        5e-4,
                        Schedule::Cosine { min_lr: 0.0 },
                    )
                },
            },
            dense: vec!["stem.*".into(), "fc.*".into()],
            caps: Vec::new(),
            admm: step_admm(0.1, if smoke { 1 } else { 40 }),
            admm_train: TrainConfig {
                max_steps_per_epoch: steps,
                ..sgd(epochs, batch, 0.01, 0.0, Schedule::Constant)
            },
            retrain: TrainConfig {
                max_steps_per_epoch: steps,
                ..sgd(epochs, batch, 0.01, 5e-4, Schedule::Cosine { min_lr: 0.0 })
            },
        }
    }

    /// Every training phase seeded with `seed`.
    pub(crate) fn seeded(mut self, seed: u64) -> Self {
        for t in [&mut self.pretrain.train, &mut self.admm_train, &mut self.retrain] {
            t.seed = seed;
        }
        self
    }

    /// Loads the splits and the dense model ([`open_study`]).
    pub(crate) fn open(&self, ctx: &RunContext) -> Result<OpenStudy> {
        open_study(
            ctx,
            &self.name,
            &self.model,
            self.dataset,
            self.train_limit,
            self.eval_limit,
            None,
            &self.pretrain,
        )
    }

    /// The pruning job of this study over its opened data and dense model.
    pub(crate) fn prune_job<'a>(&'a self, open: &'a OpenStudy) -> PruneJob<'a> {
        PruneJob { study: self, open }
    }
}

pub(crate) fn pick(scale: Scale, v: [usize; 3]) -> usize {
    match scale {
        Scale::Smoke => v[0],
        Scale::Default => v[1],
        Scale::Paper => v[2],
    }
}

/// One fault rate of one arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultPoint {
    /// Total stuck-at rate.
    pub rate: f64,
    /// Mean top-1 over the chips.
    pub mean: f64,
    /// Standard deviation over the chips.
    pub std: f64,
    /// Half-width of the 95% confidence interval of the mean (1.96 standard errors).
    pub ci95: f64,
    /// Worst chip.
    pub min: f64,
    /// Chips simulated.
    pub chips: usize,
    /// Each chip's top-1, chip `i` being seed `i` (empty in records written before they were
    /// kept).
    #[serde(default)]
    pub accuracies: Vec<f64>,
}

/// A pruned model of a study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrunedModel {
    /// Fraction pruned asked for.
    pub rate: f64,
    /// Fragment height when the model is also polarized.
    #[serde(default)]
    pub polarized: Option<usize>,
    /// Top-1 after masked retraining (float model, test split).
    pub top1: f64,
    /// Saved model directory.
    pub dir: PathBuf,
}

/// Unstructured ADMM pruning (optionally with FORMS polarization) of a study's dense model,
/// then masked retraining; cached as a cell, the model saved under `models/<study>/<id>/`.
pub(crate) struct PruneJob<'a> {
    study: &'a CrossbarStudy,
    open: &'a OpenStudy,
}

impl PruneJob<'_> {
    /// Prunes a fraction `rate` of the prunable weights, unstructured; `polarize` = fragment
    /// height. Cached as a cell of the run.
    pub(crate) fn run(
        &self,
        ctx: &RunContext,
        rate: f64,
        polarize: Option<usize>,
    ) -> Result<PrunedModel> {
        let id = match polarize {
            None => format!("unstructured-{rate}"),
            Some(m) => format!("polarized-{m}-unstructured-{rate}"),
        };
        let name = &self.study.name;
        if let Some(done) = cached_cell::<PrunedModel>(ctx, name, &id) {
            return Ok(done);
        }
        let _span = tracing::info_span!("prune", id = %id).entered();
        let dir = ctx.dir.join("models").join(name).join(&id);
        let spec = if name.starts_with("lenet") {
            lenet_spec("unstructured")?
        } else {
            resnet_spec("unstructured")?
        };
        let compression = 1.0 / (1.0 - rate).max(1e-6);
        let checkpoints = ctx.checkpoints(&format!("{name}/{id}"));
        let top1 = self.prune_into(ctx, &spec, compression, polarize, &dir, checkpoints)?;
        let done = PrunedModel { rate, polarized: polarize, top1, dir };
        store_cell(ctx, name, &id, &done)?;
        Ok(done)
    }

    /// ADMM-prunes the dense model with `spec` at whole-model `compression` (polarized with
    /// fragments of `polarize` rows when set), retrains with the masks fixed, saves the model
    /// in `dir` and returns its test top-1.
    pub(crate) fn prune_into(
        &self,
        ctx: &RunContext,
        spec: &SchemeSpec,
        compression: f64,
        polarize: Option<usize>,
        dir: &Path,
        checkpoints: tessera_models::train::Checkpoints,
    ) -> Result<f64> {
        tessera_models::saved::load(
            &self.open.dense_dir,
            &self.open.device,
            PruneOne { ctx, job: self, spec, compression, polarize, dir, checkpoints },
        )?
    }
}

struct PruneOne<'a> {
    ctx: &'a RunContext,
    job: &'a PruneJob<'a>,
    spec: &'a SchemeSpec,
    compression: f64,
    polarize: Option<usize>,
    dir: &'a Path,
    checkpoints: tessera_models::train::Checkpoints,
}

impl WithLoaded for PruneOne<'_> {
    type Output = Result<f64>;

    fn run<M: Classifier>(self, model: M, card: ModelCard, _: Masks) -> Result<f64> {
        let PruneOne { ctx, job, spec, compression, polarize, dir, checkpoints } = self;
        let study = job.study;
        let mut sparsity = sparsity_for(
            &model,
            card.batch_of_one(),
            compression,
            spec,
            &study.dense,
            &study.caps,
        )?;
        if let Some(m) = polarize {
            // Every crossbar layer is polarized (a FORMS crossbar stores magnitudes only),
            // pruned layers together with their target.
            for rule in &mut sparsity.rules {
                let base = (rule.rule.target != tessera_sparsity::Target::DENSE)
                    .then(|| Box::new(rule.rule.scheme.clone()));
                rule.rule.scheme =
                    tessera_sparsity::Scheme::Polarized(tessera_sparsity::PolarizedScheme {
                        m,
                        rule: tessera_sparsity::SignRule::Energy,
                        base,
                    });
            }
        }
        let config = PruneConfig {
            sparsity,
            method: Method::Admm(study.admm.clone()),
            train: study.admm_train.clone(),
            retrain: study.retrain.clone(),
            distill: None,
            distill_phase: false,
            recalibrate: None,
        };
        let outcome = prune(
            model,
            &config,
            &job.open.train,
            Some(&job.open.test),
            &job.open.device,
            Some(&checkpoints),
        )?;
        let card = ModelCard {
            note: format!(
                "{}: {} at {compression:.2}x (ADMM){}, seed {}",
                study.name,
                spec.scheme,
                polarize.map_or(String::new(), |m| format!(", polarized m = {m}")),
                ctx.options.seed
            ),
            ..card
        };
        save_outcome(dir, &card, &outcome)?;
        Ok(outcome.final_eval.map_or(0.0, |e| e.1))
    }
}

/// The first `n` test images as one NCHW tensor, and their labels.
pub(crate) fn sim_inputs(test: &Dataset, n: usize) -> Result<(Tensor, Vec<u8>)> {
    let n = n.min(test.len());
    let s = test.sample_shape();
    let per = s.channels * s.height * s.width;
    let data = test.images()[..n * per].to_vec();
    Ok((Tensor::new([n, s.channels, s.height, s.width], data), test.labels()[..n].to_vec()))
}

/// Fraction of rows of `logits` whose arg-max is the label.
pub(crate) fn top1(logits: &Tensor, labels: &[u8]) -> f64 {
    let classes = logits.len() / labels.len().max(1);
    let right = logits
        .data
        .chunks(classes)
        .zip(labels)
        .filter(|(row, l)| {
            let best = row
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
            best.0 == usize::from(**l)
        })
        .count();
    right as f64 / labels.len().max(1) as f64
}

pub(crate) fn summarize(rate: f64, accs: &[f64]) -> FaultPoint {
    let n = accs.len().max(1) as f64;
    let mean = accs.iter().sum::<f64>() / n;
    let var = if accs.len() > 1 {
        accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    FaultPoint {
        rate,
        mean,
        std: var.sqrt(),
        ci95: 1.96 * (var / n).sqrt(),
        min: accs.iter().copied().fold(f64::INFINITY, f64::min),
        chips: accs.len(),
        accuracies: accs.to_vec(),
    }
}

/// Resamples drawn by [`bootstrap_interval`] in the experiments.
pub(crate) const BOOTSTRAP_RESAMPLES: usize = 2000;

/// Percentile 95% interval of `stat` under a bootstrap over chips.
///
/// `arms` are curves measured on the same chips (seed `i` is chip `i` at every rate and in
/// every arm, and with nested faults a chip's curve is one degrading device), so a resample
/// draws chip indices with replacement once and rebuilds every arm's multi-chip points from
/// those chips (a paired bootstrap; one-chip points, the fault-free ones, stay as they are).
/// `stat` maps the resampled curves to a number (`+inf` allowed, NaN dropped). `None` when a
/// multi-chip point lacks its per-chip accuracies or the arms disagree on the chip count.
/// The mean over chips of a heavy-tailed quantity (most chips lose nothing, a rare one loses
/// half its accuracy to one badly placed stuck cell) makes the tolerated rate a noisy
/// statistic; this interval shows how noisy.
pub(crate) fn bootstrap_interval(
    arms: &[&[FaultPoint]],
    resamples: usize,
    seed: u64,
    stat: impl Fn(&[Vec<FaultPoint>]) -> f64,
) -> Option<(f64, f64)> {
    let multi = || arms.iter().flat_map(|a| a.iter()).filter(|p| p.chips > 1);
    let chips = multi().map(|p| p.chips).max()?;
    if multi().any(|p| p.chips != chips || p.accuracies.len() != chips) || resamples == 0 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(resamples);
    let mut picks = vec![0usize; chips];
    for _ in 0..resamples {
        for pick in &mut picks {
            *pick = rng.random_range(0..chips);
        }
        let curves: Vec<Vec<FaultPoint>> = arms
            .iter()
            .map(|arm| {
                arm.iter()
                    .map(|p| {
                        if p.chips > 1 {
                            let accs: Vec<f64> = picks.iter().map(|&i| p.accuracies[i]).collect();
                            summarize(p.rate, &accs)
                        } else {
                            p.clone()
                        }
                    })
                    .collect()
            })
            .collect();
        let v = stat(&curves);
        if !v.is_nan() {
            values.push(v);
        }
    }
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at =
        |q: f64| values[((q * (values.len() - 1) as f64).round() as usize).min(values.len() - 1)];
    Some((at(0.025), at(0.975)))
}

/// [`tolerated`] at a 1-point drop from the curve's own fault-free point, 0 when even the
/// smallest rate fails (the form [`bootstrap_interval`] statistics need).
pub(crate) fn tolerated_or_zero(points: &[FaultPoint]) -> f64 {
    let clean = points.iter().find(|p| p.rate == 0.0).map_or(f64::NAN, |p| p.mean);
    tolerated(points, clean - 0.01).unwrap_or(0.0)
}

/// Largest rate with `mean >= floor` before the first failing point, interpolated linearly
/// between the last passing and the first failing grid point.
pub(crate) fn tolerated(points: &[FaultPoint], floor: f64) -> Option<f64> {
    let mut last: Option<&FaultPoint> = None;
    for p in points {
        if p.mean >= floor {
            last = Some(p);
            continue;
        }
        return last.map(|l| {
            let t = (l.mean - floor) / (l.mean - p.mean).max(1e-12);
            l.rate + t * (p.rate - l.rate)
        });
    }
    last.map(|l| l.rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(rate: f64, mean: f64) -> FaultPoint {
        FaultPoint { rate, mean, std: 0.0, ci95: 0.0, min: mean, chips: 1, accuracies: vec![mean] }
    }

    #[test]
    fn tolerated_rate_interpolates_between_the_last_pass_and_first_fail() {
        let pts = [point(0.0, 0.99), point(1e-3, 0.985), point(2e-3, 0.97), point(5e-3, 0.9)];
        // Floor 0.98: passes at 1e-3 (0.985), fails at 2e-3 (0.97): 1e-3 + 1/3 * 1e-3.
        let t = tolerated(&pts, 0.98).unwrap();
        assert!((t - (1e-3 + 1e-3 / 3.0)).abs() < 1e-12, "{t}");
        assert_eq!(tolerated(&pts, 0.5), Some(5e-3));
        assert_eq!(tolerated(&pts, 0.995), None);
    }

    fn chips(rate: f64, accs: &[f64]) -> FaultPoint {
        summarize(rate, accs)
    }

    #[test]
    fn bootstrap_of_identical_chips_collapses_to_the_hand_computed_rate() {
        // Ten identical chips: every resample is the same curve. Floor 0.89 between
        // (1e-3, 0.895) and (2e-3, 0.85): 1e-3 + (0.005 / 0.045) * 1e-3.
        let curve = [chips(0.0, &[0.9]), chips(1e-3, &[0.895; 10]), chips(2e-3, &[0.85; 10])];
        let (lo, hi) = bootstrap_interval(&[&curve], 200, 1, |c| tolerated_or_zero(&c[0])).unwrap();
        let want = 1e-3 + 1e-3 / 9.0;
        assert!((lo - want).abs() < 1e-12 && (hi - want).abs() < 1e-12, "{lo} {hi}");
    }

    #[test]
    fn bootstrap_brackets_a_rate_set_by_one_catastrophic_chip() {
        // 19 chips lose nothing until 2e-3, one loses 40 points from 1e-3 on: the mean at 1e-3
        // is 0.88 (a 2-point drop), so the point estimate interpolates from 0 to 1e-3 (5e-4),
        // while every resample without that chip (a share (19/20)^20 = 36%) tolerates 1e-3
        // or more. The interval must contain both.
        let mut at1 = vec![0.9; 20];
        at1[7] = 0.5;
        let mut at2 = vec![0.85; 20];
        at2[7] = 0.45;
        let curve = [chips(0.0, &[0.9]), chips(1e-3, &at1), chips(2e-3, &at2)];
        let point = tolerated_or_zero(&curve);
        assert!((point - 5e-4).abs() < 1e-12, "{point}");
        let stat = |c: &[Vec<FaultPoint>]| tolerated_or_zero(&c[0]);
        let (lo, hi) = bootstrap_interval(&[&curve], 2000, 3, stat).unwrap();
        assert!(lo < point && hi >= 1e-3, "{lo} {hi}");
        assert_eq!(bootstrap_interval(&[&curve], 2000, 3, stat), Some((lo, hi)), "seeded");
        // Paired: a second arm on the same chips resamples the same chip indices, so the
        // ratio of an arm to itself is exactly 1 in every resample.
        let ratio = |c: &[Vec<FaultPoint>]| tolerated_or_zero(&c[0]) / tolerated_or_zero(&c[1]);
        assert_eq!(bootstrap_interval(&[&curve, &curve], 500, 4, ratio), Some((1.0, 1.0)));
        // Records without per-chip accuracies give no interval.
        let mut old = curve.clone();
        old[1].accuracies.clear();
        assert_eq!(bootstrap_interval(&[&old], 10, 0, stat), None);
    }

    #[test]
    fn summary_statistics_match_a_hand_computation() {
        let p = summarize(0.01, &[0.9, 0.8, 1.0]);
        assert!((p.mean - 0.9).abs() < 1e-12);
        assert!((p.std - 0.1).abs() < 1e-12);
        assert!((p.ci95 - 1.96 * 0.1 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(p.min, 0.8);
        let logits = Tensor::new([2, 3], vec![0.1, 0.7, 0.2, 0.9, 0.0, 0.1]);
        assert_eq!(top1(&logits, &[1, 2]), 0.5);
    }
}
