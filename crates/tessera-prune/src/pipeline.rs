//! A whole pruning run: plan, the method's training phase, hard pruning, masked retraining
//! (optionally distilling from the dense model), each phase checkpointed in its own directory
//! so an interrupted run resumes where it stopped and a finished phase is not redone.

use std::path::Path;

use burn::prelude::Device;
use serde::{Deserialize, Serialize};
use tessera_data::Dataset;
use tessera_models::train::{
    Both, Checkpoints, EpochMetrics, Hooks, KeepMasks, TrainConfig, evaluate,
    recalibrate_batch_norm, train,
};
use tessera_models::weights::{apply_masks, prunable_weights};
use tessera_models::{Classifier, Masks};
use tessera_sparsity::SparsityConfig;

use crate::admm::{Admm, AdmmConfig, AdmmUpdate};
use crate::distill::{DistillConfig, Distillation};
use crate::error::{PruneError, Result};
use crate::lasso::{GroupLassoConfig, LassoUpdate, ReweightedGroupLasso};
use crate::magnitude::{GradualConfig, GradualMagnitude, hard_prune_masks, partial_plan};
use crate::plan::{PlanSummary, PrunePlan};
use crate::retrain::KeepSigns;

/// How the weights are driven toward the schemes before hard pruning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Method {
    /// Magnitude, one shot: project the trained weights, then retrain.
    OneShot,
    /// Magnitude, iterative: `rounds` rounds of projecting at a rising target (geometric in
    /// compression) and retraining for the `train` config's epochs.
    Iterative {
        /// Rounds (the last reaches the target).
        rounds: usize,
    },
    /// Magnitude, gradual: masks follow the cubic schedule during the `train` phase, reaching
    /// the target at `end_at` (fraction of the phase's steps), updated every `every` steps.
    Gradual {
        /// Initial sparsity as a fraction of the final one.
        initial_fraction: f64,
        /// When the final sparsity is reached, as a fraction of the phase.
        end_at: f64,
        /// Steps between mask updates.
        every: usize,
    },
    /// ADMM during the `train` phase.
    Admm(AdmmConfig),
    /// Reweighted group lasso during the `train` phase.
    GroupLasso(GroupLassoConfig),
}

impl Method {
    /// Short name for tables: `one-shot`, `iterative`, `gradual`, `admm`, `group-lasso`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::OneShot => "one-shot",
            Method::Iterative { .. } => "iterative",
            Method::Gradual { .. } => "gradual",
            Method::Admm(_) => "admm",
            Method::GroupLasso(_) => "group-lasso",
        }
    }
}

/// Everything a pruning run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneConfig {
    /// Scheme and target per layer.
    pub sparsity: SparsityConfig,
    /// The method.
    pub method: Method,
    /// Training of the method's phase (ADMM, group lasso, gradual, each iterative round).
    pub train: TrainConfig,
    /// Masked retraining after hard pruning (`epochs: 0` skips it).
    pub retrain: TrainConfig,
    /// Distill from the unpruned model during retraining.
    #[serde(default)]
    pub distill: Option<DistillConfig>,
    /// Distill during the method's phase too (ADMM's W-step, group lasso, gradual and
    /// iterative magnitude pruning alike); needs `distill`.
    #[serde(default)]
    pub distill_phase: bool,
    /// Re-estimate the batch-norm statistics after hard pruning and again after retraining
    /// (before each evaluation): see [`recalibrate_batch_norm`].
    #[serde(default)]
    pub recalibrate: Option<Recalibration>,
}

/// Batch-norm recalibration: `batches` batches of `batch_size` training images (seeded
/// order from the retraining seed), forward only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recalibration {
    /// Batches.
    pub batches: usize,
    /// Images per batch.
    pub batch_size: usize,
}

impl Recalibration {
    /// `model` (on the training `device`) with its batch-norm statistics re-estimated from
    /// `data` in the order `seed` draws.
    pub fn apply<M: Classifier>(
        &self,
        model: M,
        data: &Dataset,
        seed: u64,
        device: &Device,
    ) -> Result<M> {
        Ok(recalibrate_batch_norm(model, data, self.batches, self.batch_size, seed, device)?)
    }
}

impl Default for Recalibration {
    /// 16 batches of 64: about 1000 images, what EagleEye found enough.
    fn default() -> Self {
        Recalibration { batches: 16, batch_size: 64 }
    }
}

/// One training phase's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseRecord {
    /// `admm`, `group-lasso`, `gradual`, `round-1`, ..., `retrain`.
    pub name: String,
    /// Its epochs.
    pub history: Vec<EpochMetrics>,
}

/// What a pruning run produced.
#[derive(Debug, Clone)]
pub struct PruneOutcome<M> {
    /// The pruned, retrained model.
    pub model: M,
    /// Its masks (to export with it).
    pub masks: Masks,
    /// The resolved plan.
    pub plan: PrunePlan,
    /// Kept fractions per layer and totals.
    pub summary: PlanSummary,
    /// Every training phase.
    pub phases: Vec<PhaseRecord>,
    /// Evaluation right after hard pruning, before retraining (loss, top-1).
    pub hard_pruned_eval: Option<(f64, f64)>,
    /// Final evaluation (loss, top-1).
    pub final_eval: Option<(f64, f64)>,
    /// ADMM's Z/U updates (with residuals), when the method is ADMM.
    pub admm_log: Vec<AdmmUpdate>,
    /// Group lasso's reweightings, when the method is group lasso.
    pub lasso_log: Vec<LassoUpdate>,
    /// Gradual pruning's mask updates `(step, fraction of final sparsity)`.
    pub gradual_log: Vec<(usize, f64)>,
}

fn phase_checkpoints(root: Option<&Checkpoints>, phase: &str) -> Option<Checkpoints> {
    root.map(|c| Checkpoints { dir: c.dir.join(phase), resume: c.resume, stop_after_epochs: None })
}

/// Runs the training phases of one pruning run, each in its own checkpoint directory.
struct Phases<'a> {
    train_set: &'a Dataset,
    eval: Option<&'a Dataset>,
    device: &'a Device,
    root: Option<&'a Checkpoints>,
    records: Vec<PhaseRecord>,
}

impl Phases<'_> {
    fn run<M: Classifier>(
        &mut self,
        model: M,
        cfg: &TrainConfig,
        hooks: &mut dyn Hooks<M>,
        name: &str,
    ) -> Result<M> {
        let _span = tracing::info_span!("phase", name).entered();
        let ck = phase_checkpoints(self.root, name);
        let (model, history) =
            train(model, self.train_set, self.eval, cfg, self.device, hooks, ck.as_ref())?;
        self.records.push(PhaseRecord { name: name.to_string(), history });
        Ok(model)
    }
}

/// Optimizer steps in a training phase of `train` on `train_set`.
fn phase_steps(train_set: &Dataset, train: &TrainConfig) -> usize {
    let n = train_set.len().div_ceil(train.batch_size.max(1));
    train.max_steps_per_epoch.map_or(n, |m| m.min(n)) * train.epochs
}

/// Prunes `model` (trained, on the training `device`) as `config` says, training on
/// `train_set` and evaluating on `eval`. With `checkpoints`, each phase checkpoints under
/// `<dir>/<phase>/` and `resume` continues an interrupted run.
pub fn prune<M: Classifier>(
    model: M,
    config: &PruneConfig,
    train_set: &Dataset,
    eval: Option<&Dataset>,
    device: &Device,
    checkpoints: Option<&Checkpoints>,
) -> Result<PruneOutcome<M>> {
    let s = train_set.sample_shape();
    let input = [1, s.channels, s.height, s.width];
    let plan = PrunePlan::resolve(&config.sparsity, &prunable_weights(&model, input)?)?;
    let _span =
        tracing::info_span!("prune", method = config.method.name(), layers = plan.layers.len())
            .entered();
    if config.distill_phase && config.distill.is_none() {
        return Err(PruneError::config(
            "distill_phase",
            "distilling during the method's phase needs `distill` (temperature, weight)",
        ));
    }
    let mut teacher = config.distill.map(|d| Distillation::new(&model, d)).transpose()?;
    // The teacher's hook in the method's phase: only when it distills there.
    let distill_phase = config.distill_phase;
    let mut phases = Phases { train_set, eval, device, root: checkpoints, records: Vec::new() };
    let (mut admm_log, mut lasso_log, mut gradual_log) = (Vec::new(), Vec::new(), Vec::new());
    let mut in_phase_masks = None;
    let model = match &config.method {
        Method::OneShot => model,
        Method::Iterative { rounds } => {
            if *rounds == 0 {
                return Err(PruneError::config("method.rounds", "must be at least 1"));
            }
            let mut model = model;
            for r in 1..=*rounds {
                let p = partial_plan(&plan, r as f64 / *rounds as f64);
                let masks = hard_prune_masks(&model, &p)?;
                model = apply_masks(model, &masks);
                model = phases.run(
                    model,
                    &config.train,
                    &mut Both(KeepMasks(masks), teacher.as_mut().filter(|_| distill_phase)),
                    &format!("round-{r}"),
                )?;
            }
            model
        }
        Method::Gradual { initial_fraction, end_at, every } => {
            let total = phase_steps(train_set, &config.train);
            let end_step = ((total as f64 * end_at.clamp(0.0, 1.0)) as usize).saturating_sub(1);
            let gc = GradualConfig {
                initial_fraction: *initial_fraction,
                start_step: 0,
                end_step,
                every: *every,
            };
            let mut hook = GradualMagnitude::new(plan.clone(), gc)?;
            let model = phases.run(
                model,
                &config.train,
                &mut Both(&mut hook, teacher.as_mut().filter(|_| distill_phase)),
                "gradual",
            )?;
            gradual_log = hook.updates().to_vec();
            model
        }
        Method::Admm(a) => {
            let mut hook = Admm::new(&model, plan.clone(), a.clone())?
                .with_phase_steps(phase_steps(train_set, &config.train));
            let model = phases.run(
                model,
                &config.train,
                &mut Both(&mut hook, teacher.as_mut().filter(|_| distill_phase)),
                "admm",
            )?;
            admm_log = hook.log().to_vec();
            in_phase_masks = hook.hard_pruned().map(|(_, m)| m.clone());
            model
        }
        Method::GroupLasso(l) => {
            let mut hook = ReweightedGroupLasso::new(&model, plan.clone(), l.clone())?;
            let model = phases.run(
                model,
                &config.train,
                &mut Both(&mut hook, teacher.as_mut().filter(|_| distill_phase)),
                "group-lasso",
            )?;
            lasso_log = hook.log().to_vec();
            model
        }
    };
    // ADMM that hard-pruned inside its phase keeps those masks (the weights are already zero
    // outside them; re-projecting could only break ties differently).
    let masks = match in_phase_masks {
        Some(m) => m,
        None => hard_prune_masks(&model, &plan)?,
    };
    let model = apply_masks(model, &masks);
    let recalibrate = |model: M| -> Result<M> {
        match config.recalibrate {
            Some(r) => r.apply(model, train_set, config.retrain.seed, device),
            None => Ok(model),
        }
    };
    let model = recalibrate(model)?;
    let inference = device.clone().inner();
    let eval_batch = config.retrain.batch_size.max(256);
    let hard_pruned_eval =
        eval.map(|d| evaluate(&model.valid(), d, eval_batch, &inference)).transpose()?;
    let model = if config.retrain.epochs == 0 {
        model
    } else {
        let signs = KeepSigns::new(&model, &masks, input)?;
        phases.run(
            model,
            &config.retrain,
            &mut Both(KeepMasks(masks.clone()), Both(signs, teacher)),
            "retrain",
        )?
    };
    let retrained = config.retrain.epochs > 0;
    let model = if retrained { recalibrate(model)? } else { model };
    let phases = phases.records;
    let final_eval = match phases.last().and_then(|p| p.history.last()).and_then(|h| h.eval) {
        Some(e) if retrained && config.recalibrate.is_none() => Some(e),
        _ => eval.map(|d| evaluate(&model.valid(), d, eval_batch, &inference)).transpose()?,
    };
    let summary = plan.summary(&masks)?;
    Ok(PruneOutcome {
        model,
        masks,
        plan,
        summary,
        phases,
        hard_pruned_eval,
        final_eval,
        admm_log,
        lasso_log,
        gradual_log,
    })
}

/// Writes a pruning outcome's model as a model directory (see [`tessera_models::saved`]).
pub fn save_outcome<M: Classifier>(
    dir: &Path,
    card: &tessera_models::saved::ModelCard,
    outcome: &PruneOutcome<M>,
) -> Result<()> {
    Ok(tessera_models::saved::save(dir, card, &outcome.model, &outcome.masks)?)
}
