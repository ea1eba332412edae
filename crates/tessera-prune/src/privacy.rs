//! Privacy-preserving pruning (arXiv 2003.06513) as two separate steps.
//!
//! **Designer** ([`designer`]): receives the client's trained model and nothing else. It prunes
//! a copy with ADMM whose only loss is distillation from the client's model on seeded random
//! synthetic inputs (no labels, no data set: this code path takes no data source and opens no
//! data file, which a test checks), hard-prunes to the schemes, and hands back the pruned
//! model and its masks. Its batch norms may keep the client model's running statistics while
//! it distills on noise ([`DesignerConfig::freeze_batch_norm`]).
//!
//! **Client** ([`client`]): retrains the pruned model on its private data with the masks
//! fixed (masked retraining), never sending the data anywhere. It may re-estimate the batch
//! norms' statistics on its data first (the designer's come from noise) and distill from its
//! own dense model while it retrains ([`ClientConfig`]): the client owns that model, it is the
//! one it handed the designer.

use std::path::Path;

use burn::prelude::Device;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use tessera_data::{Dataset, Normalization, SampleShape};
use tessera_models::saved::{ModelCard, WithLoaded};
use tessera_models::train::{
    Both, Checkpoints, EpochMetrics, KeepMasks, TrainConfig, evaluate, set_batch_norm_training,
    train,
};
use tessera_models::weights::{apply_masks, prunable_weights};
use tessera_models::{Classifier, Masks};
use tessera_sparsity::SparsityConfig;

use crate::admm::{Admm, AdmmConfig, AdmmUpdate};
use crate::distill::{DistillConfig, Distillation};
use crate::error::{PruneError, Result};
use crate::magnitude::hard_prune_masks;
use crate::pipeline::Recalibration;
use crate::plan::{PlanSummary, PrunePlan};
use crate::retrain::KeepSigns;

/// The designer's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesignerConfig {
    /// Scheme and target per layer.
    pub sparsity: SparsityConfig,
    /// ADMM settings; with `hard_prune_at` the designer hard-prunes inside its phase and
    /// distills on the synthetic inputs with the masks fixed for the rest of it.
    pub admm: AdmmConfig,
    /// Training on the synthetic inputs (its `data_loss_weight` is forced to 0: there are no
    /// labels; `seed` also seeds the synthetic inputs).
    pub train: TrainConfig,
    /// Distillation temperature (the weight is 1: it is the whole loss).
    pub temperature: f32,
    /// Synthetic inputs per epoch.
    pub synthetic_examples: usize,
    /// Normalize with the client model's batch-norm running statistics while distilling on
    /// the synthetic inputs, and never update them. Off (default), every batch norm
    /// normalizes with, and records, the statistics of the N(0, 1) noise; the client
    /// re-estimates them when it retrains. Frozen statistics make the network sensitive to
    /// the scale of its weights, which ADMM's pull towards the projection changes: measured on
    /// a ResNet-8 (`cargo run -p tessera-prune --example designer_batch_norm`), the residual
    /// rose (0.81 -> 1.00) frozen and fell (0.81 -> 0.20) training, at Adam 5e-3.
    #[serde(default)]
    pub freeze_batch_norm: bool,
}

/// What the designer hands back.
#[derive(Debug, Clone)]
pub struct DesignerOutcome<M> {
    /// The hard-pruned model.
    pub model: M,
    /// Its masks (the mask file).
    pub masks: Masks,
    /// Kept fractions per layer.
    pub summary: PlanSummary,
    /// ADMM's updates (residuals).
    pub admm_log: Vec<AdmmUpdate>,
    /// Per-epoch distillation loss on the synthetic inputs.
    pub history: Vec<EpochMetrics>,
}

/// `n` synthetic inputs of `shape`: standard normal pixels (the models see standardized
/// inputs, so N(0, 1) covers their range), drawn from ChaCha8 seeded by `seed`. Labels are 0
/// and unused.
pub fn synthetic_inputs(shape: SampleShape, n: usize, seed: u64) -> Result<Dataset> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1.0).map_err(|e| PruneError::config("synthetic inputs", e))?;
    let pixels: Vec<f32> = (0..n * shape.len()).map(|_| normal.sample(&mut rng)).collect();
    Ok(Dataset::new(
        "synthetic",
        shape,
        pixels,
        vec![0; n],
        1,
        vec!["none".into()],
        Normalization::UnitRange { max: 1.0 },
    )?)
}

/// The designer side: prunes `client_model` (on the training `device`) for inputs of `shape`
/// using only synthetic inputs and distillation from the model itself.
pub fn designer<M: Classifier>(
    client_model: M,
    shape: SampleShape,
    config: &DesignerConfig,
    device: &Device,
    checkpoints: Option<&Checkpoints>,
) -> Result<DesignerOutcome<M>> {
    if config.synthetic_examples == 0 {
        return Err(PruneError::config("synthetic_examples", "must be at least 1"));
    }
    let input = [1, shape.channels, shape.height, shape.width];
    let plan = PrunePlan::resolve(&config.sparsity, &prunable_weights(&client_model, input)?)?;
    let synthetic = synthetic_inputs(shape, config.synthetic_examples, config.train.seed)?;
    let total_steps = {
        let n = config.synthetic_examples.div_ceil(config.train.batch_size.max(1));
        config.train.max_steps_per_epoch.map_or(n, |m| m.min(n)) * config.train.epochs
    };
    let mut admm =
        Admm::new(&client_model, plan.clone(), config.admm.clone())?.with_phase_steps(total_steps);
    let mut kd = Distillation::new(
        &client_model,
        DistillConfig { temperature: config.temperature, weight: 1.0 },
    )?;
    let cfg = TrainConfig { data_loss_weight: 0.0, ..config.train.clone() };
    let student = set_batch_norm_training(client_model, !config.freeze_batch_norm);
    let (model, history) =
        train(student, &synthetic, None, &cfg, device, &mut Both(&mut admm, &mut kd), checkpoints)?;
    let model = set_batch_norm_training(model, true);
    let masks = match admm.hard_pruned() {
        Some((_, masks)) => masks.clone(),
        None => hard_prune_masks(&model, &plan)?,
    };
    let model = apply_masks(model, &masks);
    let summary = plan.summary(&masks)?;
    Ok(DesignerOutcome { model, masks, summary, admm_log: admm.log().to_vec(), history })
}

/// The client's retraining settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The masked retraining.
    pub train: TrainConfig,
    /// Distill from the client's own dense model while retraining (it needs that model).
    #[serde(default)]
    pub distill: Option<DistillConfig>,
    /// Re-estimate the batch norms' statistics on the client's data before retraining (the
    /// designer's come from its synthetic inputs) and again after it.
    #[serde(default)]
    pub recalibrate: Option<Recalibration>,
}

impl ClientConfig {
    /// Plain masked retraining with `train`: no distillation, no recalibration.
    pub fn plain(train: TrainConfig) -> Self {
        ClientConfig { train, distill: None, recalibrate: None }
    }
}

/// What the client's retraining produced.
#[derive(Debug, Clone)]
pub struct ClientOutcome<M> {
    /// The retrained model (recalibrated when the config says so).
    pub model: M,
    /// Evaluation after the first recalibration, before retraining (loss, top-1).
    pub recalibrated_eval: Option<(f64, f64)>,
    /// Per-epoch metrics of the masked retraining.
    pub history: Vec<EpochMetrics>,
    /// Evaluation of the returned model (loss, top-1).
    pub final_eval: Option<(f64, f64)>,
}

/// The client side: masked retraining of the designer's `model` on the client's own data,
/// distilling from `teacher` (the client's dense model) when `config.distill` is set.
#[allow(clippy::too_many_arguments)]
pub fn client<M: Classifier, T: Classifier>(
    model: M,
    masks: &Masks,
    train_set: &Dataset,
    eval: Option<&Dataset>,
    config: &ClientConfig,
    teacher: Option<&T>,
    device: &Device,
    checkpoints: Option<&Checkpoints>,
) -> Result<ClientOutcome<M>> {
    if masks.is_empty() {
        return Err(PruneError::config(
            "masks",
            "the client retrains a pruned model: the mask file is empty",
        ));
    }
    let kd = match (config.distill, teacher) {
        (Some(d), Some(t)) => Some(Distillation::new(t, d)?),
        (Some(_), None) => {
            return Err(PruneError::config(
                "client.distill",
                "distillation needs the client's dense model as the teacher; none was given",
            ));
        }
        (None, _) => None,
    };
    let inference = device.clone().inner();
    let eval_batch = config.train.batch_size.max(256);
    let evaluate_on = |model: &M| -> Result<Option<(f64, f64)>> {
        Ok(eval.map(|d| evaluate(&model.valid(), d, eval_batch, &inference)).transpose()?)
    };
    let recalibrate = |model: M| -> Result<M> {
        match config.recalibrate {
            Some(r) => r.apply(model, train_set, config.train.seed, device),
            None => Ok(model),
        }
    };
    let model = recalibrate(apply_masks(model, masks))?;
    let recalibrated_eval = match config.recalibrate {
        Some(_) => evaluate_on(&model)?,
        None => None,
    };
    let s = train_set.sample_shape();
    let signs = KeepSigns::new(&model, masks, [1, s.channels, s.height, s.width])?;
    let (model, history) = train(
        model,
        train_set,
        eval,
        &config.train,
        device,
        &mut Both(KeepMasks(masks.clone()), Both(signs, kd)),
        checkpoints,
    )?;
    let (model, final_eval) = match (config.recalibrate, history.last().and_then(|h| h.eval)) {
        (None, Some(e)) => (model, Some(e)),
        _ => {
            let model = recalibrate(model)?;
            let e = evaluate_on(&model)?;
            (model, e)
        }
    };
    Ok(ClientOutcome { model, recalibrated_eval, history, final_eval })
}

/// What the designer command reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DesignerReport {
    /// Kept fractions per layer and totals.
    pub summary: PlanSummary,
    /// ADMM's updates (primal residual per layer at each update).
    pub admm_log: Vec<AdmmUpdate>,
    /// Per-epoch distillation loss on the synthetic inputs.
    pub history: Vec<EpochMetrics>,
}

struct DesignerAction<'a> {
    config: &'a DesignerConfig,
    out: &'a Path,
    device: &'a Device,
    checkpoints: Option<&'a Checkpoints>,
}

impl WithLoaded for DesignerAction<'_> {
    type Output = Result<DesignerReport>;

    fn run<M: Classifier>(self, model: M, card: ModelCard, masks: Masks) -> Result<DesignerReport> {
        if !masks.is_empty() {
            return Err(PruneError::config(
                "model",
                "the designer prunes a dense model; this one already has a mask file",
            ));
        }
        let [channels, height, width] = card.input;
        let out = designer(
            model,
            SampleShape { channels, height, width },
            self.config,
            self.device,
            self.checkpoints,
        )?;
        let card = ModelCard {
            note: format!(
                "pruned by the privacy-preserving designer (synthetic inputs only); from: {}",
                card.note
            ),
            ..card
        };
        tessera_models::saved::save(self.out, &card, &out.model.valid(), &out.masks)?;
        Ok(DesignerReport { summary: out.summary, admm_log: out.admm_log, history: out.history })
    }
}

/// The designer as a command on model directories (see [`tessera_models::saved`]): reads the
/// client's dense model from `model_dir`, prunes it with [`designer`], and writes the pruned
/// model with its mask file to `out`. It takes no data source and reads no data file.
pub fn designer_command(
    model_dir: &Path,
    config: &DesignerConfig,
    out: &Path,
    device: &Device,
    checkpoints: Option<&Checkpoints>,
) -> Result<DesignerReport> {
    tessera_models::saved::load(
        model_dir,
        device,
        DesignerAction { config, out, device, checkpoints },
    )?
}

/// What the client command reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientReport {
    /// Top-1 of the designer's model on the client's evaluation data, before retraining.
    pub before: Option<(f64, f64)>,
    /// The same after re-estimating the batch norms' statistics on the client's data.
    #[serde(default)]
    pub recalibrated: Option<(f64, f64)>,
    /// Per-epoch metrics of the masked retraining.
    pub history: Vec<EpochMetrics>,
    /// The written model's evaluation (after the final recalibration, if any).
    #[serde(default)]
    pub after: Option<(f64, f64)>,
}

struct ClientAction<'a> {
    train_set: &'a Dataset,
    eval: Option<&'a Dataset>,
    config: &'a ClientConfig,
    teacher_dir: Option<&'a Path>,
    out: &'a Path,
    device: &'a Device,
    checkpoints: Option<&'a Checkpoints>,
}

impl WithLoaded for ClientAction<'_> {
    type Output = Result<ClientReport>;

    fn run<M: Classifier>(self, model: M, card: ModelCard, masks: Masks) -> Result<ClientReport> {
        let s = self.train_set.sample_shape();
        if [s.channels, s.height, s.width] != card.input {
            return Err(PruneError::config(
                "data",
                format!(
                    "the model takes {:?} inputs, the data set `{}` has {:?}",
                    card.input,
                    self.train_set.name(),
                    [s.channels, s.height, s.width]
                ),
            ));
        }
        match (self.config.distill.is_some(), self.teacher_dir) {
            (true, None) => {
                return Err(PruneError::config(
                    "client.distill",
                    "distillation needs the client's dense model: give its directory (--teacher)",
                ));
            }
            (false, Some(dir)) => {
                return Err(PruneError::config(
                    "client.distill",
                    format!(
                        "a teacher ({}) was given but the config sets no distillation",
                        dir.display()
                    ),
                ));
            }
            _ => {}
        }
        let inference = self.device.clone().inner();
        let before = self.eval.map(|d| evaluate(&model.valid(), d, 256, &inference)).transpose()?;
        let retrain = Retrain { action: &self, model, card, masks, before };
        match self.teacher_dir {
            Some(dir) => tessera_models::saved::load(dir, self.device, retrain)?,
            None => retrain.run_with::<M>(None),
        }
    }
}

/// The client's retraining once the (optional) teacher is loaded: a [`WithLoaded`] action on
/// the teacher's directory, holding the pruned model.
struct Retrain<'a, 'b, M> {
    action: &'a ClientAction<'b>,
    model: M,
    card: ModelCard,
    masks: Masks,
    before: Option<(f64, f64)>,
}

impl<M: Classifier> Retrain<'_, '_, M> {
    fn run_with<T: Classifier>(self, teacher: Option<&T>) -> Result<ClientReport> {
        let a = self.action;
        let out = client(
            self.model,
            &self.masks,
            a.train_set,
            a.eval,
            a.config,
            teacher,
            a.device,
            a.checkpoints,
        )?;
        let card = ModelCard {
            note: format!("retrained by the client with the mask fixed; from: {}", self.card.note),
            ..self.card
        };
        tessera_models::saved::save(a.out, &card, &out.model.valid(), &self.masks)?;
        Ok(ClientReport {
            before: self.before,
            recalibrated: out.recalibrated_eval,
            history: out.history,
            after: out.final_eval,
        })
    }
}

impl<M: Classifier> WithLoaded for Retrain<'_, '_, M> {
    type Output = Result<ClientReport>;

    fn run<T: Classifier>(self, teacher: T, card: ModelCard, masks: Masks) -> Result<ClientReport> {
        if !masks.is_empty() {
            return Err(PruneError::config(
                "teacher",
                "the teacher is the client's dense model; this one has a mask file",
            ));
        }
        if card.input != self.card.input {
            return Err(PruneError::config(
                "teacher",
                format!(
                    "the teacher takes {:?} inputs, the pruned model {:?}",
                    card.input, self.card.input
                ),
            ));
        }
        self.run_with(Some(&teacher))
    }
}

/// The client as a command on model directories: reads the designer's pruned model (with its
/// mask file) from `model_dir`, retrains it on `train_set` with the masks fixed (distilling
/// from the dense model in `teacher_dir` when the config asks for it), and writes the result
/// to `out`.
#[allow(clippy::too_many_arguments)]
pub fn client_command(
    model_dir: &Path,
    train_set: &Dataset,
    eval: Option<&Dataset>,
    config: &ClientConfig,
    teacher_dir: Option<&Path>,
    out: &Path,
    device: &Device,
    checkpoints: Option<&Checkpoints>,
) -> Result<ClientReport> {
    tessera_models::saved::load(
        model_dir,
        device,
        ClientAction { train_set, eval, config, teacher_dir, out, device, checkpoints },
    )?
}
