//! What the pruning experiments share: the data of a study (with its limits), the dense model
//! a study starts from (a `dense-baselines` saved model given by `--dense-from`, or one
//! pretrained inside the run), per-layer rate allocation that reaches a whole-model
//! compression, and per-cell result files that let an interrupted run skip finished cells.

use std::path::{Path, PathBuf};

use burn::prelude::Device;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tessera_data::{Dataset, KnownSet, Normalization, Split};
use tessera_models::saved::{ModelCard, WithLoaded};
use tessera_models::train::{NoHooks, OptimizerConfig, Schedule, TrainConfig, evaluate, train};
use tessera_models::{Classifier, Masks, WithModel, ZooConfig};
use tessera_sparsity::{LayerRule, MatchRule, Scheme, SparsityConfig, Target, wildcard_match};

use crate::error::{ExperimentError, Result};
use crate::run::RunContext;

/// Nesterov SGD (momentum 0.9) with weight decay `wd` and `schedule`.
pub(crate) fn sgd(
    epochs: usize,
    batch: usize,
    lr: f64,
    wd: f32,
    schedule: Schedule,
) -> TrainConfig {
    TrainConfig {
        optimizer: OptimizerConfig::Sgd { lr, momentum: 0.9, nesterov: true, weight_decay: wd },
        schedule,
        ..TrainConfig::sgd(epochs, batch, lr)
    }
}

/// The normalization every experiment uses for `set`.
pub(crate) fn normalization(set: KnownSet) -> Normalization {
    match set {
        KnownSet::FashionMnist => Normalization::fashion_mnist(),
        KnownSet::Cifar10Samples => Normalization::cifar10(),
        KnownSet::Digits => Normalization::UnitRange { max: 16.0 },
        KnownSet::Mnist => Normalization::mnist(),
    }
}

/// Train and test splits of `set`: a seeded random subset of `train_limit` training images
/// and the first `eval_limit` test images (`None` = all).
pub(crate) fn load_splits(
    ctx: &RunContext,
    set: KnownSet,
    train_limit: Option<usize>,
    eval_limit: Option<usize>,
    seed: u64,
) -> Result<(Dataset, Dataset)> {
    let (train, test, _) = load_splits_validated(ctx, set, train_limit, eval_limit, None, seed)?;
    Ok((train, test))
}

/// [`load_splits`] with `validation` training images held out first: the last `validation`
/// images of the training file (the same images whatever the seed, so a dense model trained
/// by another run of the study with a different seed has not seen them either) form the
/// validation split, and the training subset is drawn from the images before them.
pub(crate) fn load_splits_validated(
    ctx: &RunContext,
    set: KnownSet,
    train_limit: Option<usize>,
    eval_limit: Option<usize>,
    validation: Option<usize>,
    seed: u64,
) -> Result<(Dataset, Dataset, Option<Dataset>)> {
    let norm = normalization(set);
    let train_full = ctx.load(set, Split::Train, norm.clone())?;
    let test_full = ctx.load(set, Split::Test, norm)?;
    let name = train_full.name().to_string();
    let (pool, validation) = match validation {
        None => (train_full, None),
        Some(n) if n == 0 || n >= train_full.len() => {
            return Err(ExperimentError::config(
                "validation",
                format!(
                    "{n} held-out images: expected 1 to {} (the {name} training split has {})",
                    train_full.len().saturating_sub(1),
                    train_full.len()
                ),
            ));
        }
        Some(n) => {
            let (pool, held) = train_full.all().split_at(train_full.len() - n)?;
            (
                pool.to_dataset(format!("{name}-without-validation")),
                Some(held.to_dataset(format!("{name}-validation"))),
            )
        }
    };
    let train = match train_limit {
        Some(n) if n < pool.len() => {
            pool.all().shuffled(seed).split_at(n)?.0.to_dataset(format!("{name}-subset"))
        }
        _ => pool,
    };
    let test = match eval_limit {
        Some(n) if n < test_full.len() => {
            test_full.all().split_at(n)?.0.to_dataset(format!("{}-first", test_full.name()))
        }
        _ => test_full,
    };
    Ok((train, test, validation))
}

/// Where a study's dense model comes from when no `--dense-from` directory is given: it is
/// trained inside the run with these settings (checkpointed) and saved under `dense/<study>/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pretrain {
    /// Dense training.
    pub train: TrainConfig,
}

/// The saved dense model of study `name`. With `--dense-from DIR` it is the first of
/// `DIR/models/<name>/`, `DIR/<name>/`, `DIR/` holding a `card.json` (a `dense-baselines` run
/// directory, a directory of saved models, or one saved model), checked to be the study's
/// architecture; otherwise it is trained now (or found, when resuming) under `dense/<name>/`.
fn dense_model_dir(
    ctx: &RunContext,
    name: &str,
    model: &ZooConfig,
    dataset: KnownSet,
    pretrain: &Pretrain,
    train_set: &Dataset,
    test: &Dataset,
) -> Result<PathBuf> {
    if let Some(from) = &ctx.options.dense_from {
        let candidates = [from.join("models").join(name), from.join(name), from.clone()];
        let dir = candidates.iter().find(|d| d.join("card.json").is_file()).ok_or_else(|| {
            ExperimentError::config(
                "--dense-from",
                format!(
                    "none of {} holds a saved model (card.json); pass a dense-baselines run directory",
                    candidates.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let card = tessera_models::saved::load_card(dir)?;
        if card.model != *model {
            return Err(ExperimentError::config(
                "--dense-from",
                format!(
                    "{} holds {:?}; study `{name}` prunes {:?}",
                    dir.display(),
                    card.model,
                    model
                ),
            ));
        }
        if let Some(d) = &card.dataset
            && d != dataset.dir_name()
        {
            return Err(ExperimentError::config(
                "--dense-from",
                format!(
                    "{} was trained on {d}; study `{name}` uses {}",
                    dir.display(),
                    dataset.dir_name()
                ),
            ));
        }
        return Ok(dir.clone());
    }
    let dir = ctx.dir.join("dense").join(name);
    train_dense(
        ctx,
        &dir,
        ctx.checkpoints(&format!("dense-{name}")),
        name,
        model,
        dataset,
        pretrain,
        train_set,
        test,
    )?;
    Ok(dir)
}

/// Trains `model` densely on `train_set` into the saved-model directory `dir` (checkpointed
/// in `checkpoints`), unless `dir` already holds a saved model.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_dense(
    ctx: &RunContext,
    dir: &Path,
    checkpoints: tessera_models::train::Checkpoints,
    name: &str,
    model: &ZooConfig,
    dataset: KnownSet,
    pretrain: &Pretrain,
    train_set: &Dataset,
    test: &Dataset,
) -> Result<()> {
    if dir.join("card.json").is_file() {
        return Ok(());
    }
    let _span = tracing::info_span!("pretrain", study = name).entered();
    let device = ctx.train_device();
    let s = train_set.sample_shape();
    let card = ModelCard {
        model: model.clone(),
        input: [s.channels, s.height, s.width],
        dataset: Some(dataset.dir_name().to_string()),
        normalization: Some(normalization(dataset)),
        note: format!("pretrained by the run for study `{name}`, seed {}", ctx.options.seed),
    };
    model.build(
        &device,
        ctx.options.seed,
        PretrainOne {
            train_set,
            test,
            config: &pretrain.train,
            device: &device,
            checkpoints,
            dir,
            card: &card,
        },
    )??;
    Ok(())
}

struct PretrainOne<'a> {
    train_set: &'a Dataset,
    test: &'a Dataset,
    config: &'a TrainConfig,
    device: &'a Device,
    checkpoints: tessera_models::train::Checkpoints,
    dir: &'a Path,
    card: &'a ModelCard,
}

impl WithModel for PretrainOne<'_> {
    type Output = Result<()>;
    fn run<M: Classifier>(self, model: M) -> Result<()> {
        let (model, _) = train(
            model,
            self.train_set,
            Some(self.test),
            self.config,
            self.device,
            &mut NoHooks,
            Some(&self.checkpoints),
        )?;
        tessera_models::saved::save(self.dir, self.card, &model.valid(), &Masks::new())?;
        Ok(())
    }
}

/// A study's data and dense model, ready for its cells.
pub(crate) struct OpenStudy {
    /// Training split (limited).
    pub train: Dataset,
    /// Test split (limited).
    pub test: Dataset,
    /// Training images held out for model selection ([`load_splits_validated`]), when the
    /// study asks for them.
    pub validation: Option<Dataset>,
    /// The saved dense model every cell starts from.
    pub dense_dir: PathBuf,
    /// Its test top-1.
    pub dense_top1: f64,
    /// The seeded training device.
    pub device: Device,
}

/// Loads study `name`'s splits (with `validation` training images held out:
/// [`load_splits_validated`]), finds or trains its dense model ([`dense_model_dir`]) and
/// evaluates it on the test split.
#[allow(clippy::too_many_arguments)]
pub(crate) fn open_study(
    ctx: &RunContext,
    name: &str,
    model: &ZooConfig,
    dataset: KnownSet,
    train_limit: Option<usize>,
    eval_limit: Option<usize>,
    validation: Option<usize>,
    pretrain: &Pretrain,
) -> Result<OpenStudy> {
    let (train, test, validation) =
        load_splits_validated(ctx, dataset, train_limit, eval_limit, validation, ctx.options.seed)?;
    // A dense model trained here is monitored on the validation split when there is one.
    let monitor = validation.as_ref().unwrap_or(&test);
    let dense_dir = dense_model_dir(ctx, name, model, dataset, pretrain, &train, monitor)?;
    let device = ctx.train_device();
    let (_, dense_top1) = evaluate_saved(&dense_dir, &test, &device)?;
    Ok(OpenStudy { train, test, validation, dense_dir, dense_top1, device })
}

/// Test (loss, top-1) of the saved model in `dir`.
pub(crate) fn evaluate_saved(dir: &Path, test: &Dataset, device: &Device) -> Result<(f64, f64)> {
    struct Eval<'a>(&'a Dataset, &'a Device);
    impl WithLoaded for Eval<'_> {
        type Output = Result<(f64, f64)>;
        fn run<M: Classifier>(self, model: M, _: ModelCard, _: Masks) -> Result<(f64, f64)> {
            Ok(evaluate(&model.valid(), self.0, 256, &self.1.clone().inner())?)
        }
    }
    tessera_models::saved::load(dir, device, Eval(test, device))?
}

/// A per-layer compression ceiling (`max_rate: 2.0` keeps at least half of the layers it
/// matches): for small sensitive layers such as LeNet-5's first conv.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateCap {
    /// Layer path pattern (`*` wildcard).
    pub layers: String,
    /// Highest compression of those layers.
    pub max_rate: f64,
}

/// Per-layer rates that reach `rate` over all `weights` (`(path, weight count)`): layers
/// matching `dense` stay dense, capped layers get `min(rate, cap)`, and every other layer
/// gets the one rate that makes the whole model keep `total / rate` weights.
pub(crate) fn allocate(
    weights: &[(String, usize)],
    rate: f64,
    caps: &[RateCap],
    dense: &[String],
) -> Result<Vec<(String, f64)>> {
    if !(rate.is_finite() && rate >= 1.0) {
        return Err(ExperimentError::config("rate", format!("{rate} is not a compression >= 1")));
    }
    let fixed = |path: &str| -> Option<f64> {
        if dense.iter().any(|d| wildcard_match(d, path)) {
            return Some(1.0);
        }
        caps.iter().find(|c| wildcard_match(&c.layers, path)).map(|c| c.max_rate.clamp(1.0, rate))
    };
    let total: usize = weights.iter().map(|w| w.1).sum();
    let budget = total as f64 / rate;
    let fixed_kept: f64 = weights.iter().filter_map(|(p, n)| fixed(p).map(|r| *n as f64 / r)).sum();
    let free_total: usize = weights.iter().filter(|(p, _)| fixed(p).is_none()).map(|w| w.1).sum();
    let free_rate = if free_total == 0 {
        rate
    } else {
        let free_kept = budget - fixed_kept;
        if free_kept < 1.0 {
            return Err(ExperimentError::config(
                "rate",
                format!(
                    "{rate}x over {total} weights keeps {budget:.0}, but the dense and capped layers alone keep {fixed_kept:.0}"
                ),
            ));
        }
        (free_total as f64 / free_kept).max(1.0)
    };
    Ok(weights.iter().map(|(p, _)| (p.clone(), fixed(p).unwrap_or(free_rate))).collect())
}

/// A sparsity config with one exact rule per layer of `rates` (rate 1 = dense).
pub(crate) fn per_layer_config(
    rates: &[(String, f64)],
    scheme: &Scheme,
    pad: bool,
) -> SparsityConfig {
    SparsityConfig {
        rules: rates
            .iter()
            .map(|(path, r)| MatchRule {
                layers: path.clone(),
                rule: LayerRule {
                    scheme: if *r > 1.0 { scheme.clone() } else { Scheme::Unstructured },
                    target: if *r > 1.0 { Target::Compression(*r) } else { Target::DENSE },
                    pad,
                },
            })
            .collect(),
        default: None,
    }
}

/// `name` made safe as a file name (`block-punched:8x4` -> `block-punched-8x4`).
pub(crate) fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' })
        .collect()
}

/// The study names `--only` asks for: each entry up to its `/`.
pub(crate) fn only_studies(only: &[String]) -> Vec<String> {
    only.iter().map(|o| o.split('/').next().unwrap_or(o).to_string()).collect()
}

/// The cell prefixes `--only study/cell-prefix` entries give for study `name` (empty: all).
pub(crate) fn cell_prefixes<'a>(only: &'a [String], name: &str) -> Vec<&'a str> {
    only.iter()
        .filter_map(|o| o.split_once('/'))
        .filter(|(study, _)| name.starts_with(study))
        .map(|(_, cell)| cell)
        .collect()
}

/// The studies whose names start with one of `only` (all when empty); an error naming the
/// studies when none matches.
pub(crate) fn select<T>(
    studies: Vec<T>,
    only: &[String],
    name: impl Fn(&T) -> &str,
) -> Result<Vec<T>> {
    if only.is_empty() {
        return Ok(studies);
    }
    let names: Vec<String> = studies.iter().map(|s| name(s).to_string()).collect();
    let kept: Vec<T> = studies
        .into_iter()
        .filter(|s| only.iter().any(|o| name(s).starts_with(o.as_str())))
        .collect();
    if kept.is_empty() {
        return Err(ExperimentError::config(
            "--only",
            format!("{only:?} matches none of {}", names.join(", ")),
        ));
    }
    Ok(kept)
}

/// A finished cell's result file `cells/<study>/<cell>.json`, when present.
pub(crate) fn cached_cell<T: DeserializeOwned>(
    ctx: &RunContext,
    study: &str,
    cell: &str,
) -> Option<T> {
    let path = ctx.dir.join("cells").join(study).join(format!("{cell}.json"));
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Writes a cell's result file atomically.
pub(crate) fn store_cell<T: Serialize>(
    ctx: &RunContext,
    study: &str,
    cell: &str,
    v: &T,
) -> Result<()> {
    let path = ctx.dir.join("cells").join(study).join(format!("{cell}.json"));
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| ExperimentError::io(&path, e))?;
    tessera_data::file::write_atomic(&path, &bytes).map_err(|e| ExperimentError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lenet() -> Vec<(String, usize)> {
        [
            ("conv1.weight", 150),
            ("conv2.weight", 2400),
            ("fc1.weight", 48000),
            ("fc2.weight", 10080),
            ("fc3.weight", 840),
        ]
        .iter()
        .map(|(p, n)| (p.to_string(), *n))
        .collect()
    }

    fn kept(w: &[(String, usize)], rates: &[(String, f64)]) -> f64 {
        w.iter().zip(rates).map(|((_, n), (_, r))| *n as f64 / r).sum()
    }

    #[test]
    fn validation_is_the_training_files_tail_and_the_subset_avoids_it() {
        use crate::run::{RunOptions, Scale};
        let out = tempfile::tempdir().unwrap();
        let options = RunOptions { scale: Scale::Smoke, ..RunOptions::default() };
        let ctx = RunContext::for_test(options, serde_json::Value::Null, out.path().into());
        let set = KnownSet::FashionMnist;
        let full = ctx.load(set, Split::Train, normalization(set)).unwrap();
        let n = full.len();
        let pixels =
            |d: &Dataset, i: usize| d.image(i).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let tail: std::collections::HashSet<Vec<u32>> =
            (n - 100..n).map(|i| pixels(&full, i)).collect();
        let mut seen = Vec::new();
        for seed in [1, 2] {
            let (train, test, validation) =
                load_splits_validated(&ctx, set, Some(500), Some(50), Some(100), seed).unwrap();
            let validation = validation.unwrap();
            assert_eq!((train.len(), test.len(), validation.len()), (500, 50, 100));
            // The last 100 images of the file, in order, whatever the seed.
            for i in 0..100 {
                assert_eq!(pixels(&validation, i), pixels(&full, n - 100 + i));
                assert_eq!(validation.label(i), full.label(n - 100 + i));
            }
            // No training image is one of them.
            assert!((0..train.len()).all(|i| !tail.contains(&pixels(&train, i))));
            seen.push((0..train.len()).map(|i| pixels(&train, i)).collect::<Vec<_>>());
        }
        // The seed still draws the training subset.
        assert_ne!(seen[0], seen[1]);
        // Without a limit the training split is everything before the tail.
        let (train, _, _) = load_splits_validated(&ctx, set, None, None, Some(100), 1).unwrap();
        assert_eq!(train.len(), n - 100);
        assert_eq!(pixels(&train, 0), pixels(&full, 0));
        // Holding out nothing or everything is refused, naming the field.
        for bad in [0, n] {
            let e = load_splits_validated(&ctx, set, None, None, Some(bad), 1).unwrap_err();
            assert!(e.to_string().contains("validation"), "{e}");
        }
    }

    #[test]
    fn allocation_reaches_the_whole_model_rate() {
        let w = lenet();
        let caps = [RateCap { layers: "conv1.*".into(), max_rate: 2.0 }];
        for rate in [4.0, 8.0, 16.0, 40.0] {
            let r = allocate(&w, rate, &caps, &["fc3.*".into()]).unwrap();
            assert_eq!(r[0].1, 2.0);
            assert_eq!(r[4].1, 1.0);
            // Hand check: 61470 / rate kept in total.
            let k = kept(&w, &r);
            assert!((k - 61470.0 / rate).abs() < 1e-6, "{rate}: kept {k}");
            assert!(r[1].1 > rate && r[1].1 == r[2].1 && r[2].1 == r[3].1);
        }
        // Uncapped: every layer gets the rate itself.
        let r = allocate(&w, 8.0, &[], &[]).unwrap();
        assert!(r.iter().all(|(_, x)| *x == 8.0));
        // A cap above the rate is the rate.
        let r = allocate(&w, 4.0, &[RateCap { layers: "*".into(), max_rate: 10.0 }], &[]).unwrap();
        assert!(r.iter().all(|(_, x)| *x == 4.0));
    }

    #[test]
    fn unreachable_rate_is_a_clear_error() {
        let w = lenet();
        let err = allocate(&w, 2.0, &[], &["fc1.*".into()]).unwrap_err().to_string();
        assert!(err.contains("dense and capped layers alone keep 48000"), "{err}");
        assert!(allocate(&w, 0.5, &[], &[]).is_err());
    }

    #[test]
    fn per_layer_config_keeps_rate_one_dense() {
        let c = per_layer_config(
            &[("a".into(), 1.0), ("b".into(), 8.0)],
            &"block-punched:8x4".parse().unwrap(),
            true,
        );
        assert_eq!(c.rule_for("a").unwrap().target.density(), 1.0);
        let b = c.rule_for("b").unwrap();
        assert_eq!(
            (b.scheme.to_string().as_str(), b.target.density(), b.pad),
            ("block-punched:8x4", 0.125, true)
        );
        assert!(c.rule_for("c").is_err());
        assert_eq!(file_safe("block-punched:8x4 admm"), "block-punched-8x4-admm");
    }
}
