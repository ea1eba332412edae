//! The training and evaluation loop.
//!
//! Our own loop rather than burn-train's `Learner`: pruning (ADMM terms in the loss, masks
//! after every step), sparse training (mask updates between epochs, dense gradients for
//! growth) and data-efficient training (per-example outcomes, shrinking the epoch) all plug in
//! through [`Hooks`]. SGD with momentum or Adam, weight decay, cosine or step learning-rate
//! schedules, label smoothing, seeded shuffling (ChaCha8 per epoch, tessera-data), metrics,
//! and a checkpoint after every epoch that `resume` continues from to the same result as an
//! uninterrupted run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, OptimizerRecord, SgdConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tessera_data::{Augment, Batch, Dataset};

use crate::error::{ModelError, Result};
use crate::zoo::Classifier;

/// Separates the augmentation stream from the shuffling stream of the same seed.
const AUGMENT_SEED_SALT: u64 = 0x5A17_AB1E_D00D_F00D;

/// Optimizer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerConfig {
    /// SGD with (optionally Nesterov) momentum; no dampening, as in PyTorch.
    Sgd {
        /// Peak learning rate.
        lr: f64,
        /// Momentum (0 disables it).
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
        /// L2 weight decay.
        weight_decay: f32,
    },
    /// Adam.
    Adam {
        /// Peak learning rate.
        lr: f64,
        /// L2 weight decay.
        weight_decay: f32,
    },
}

impl OptimizerConfig {
    /// The peak learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adam { lr, .. } => *lr,
        }
    }

    fn init(&self) -> ModuleOptimizer {
        match *self {
            OptimizerConfig::Sgd { momentum, nesterov, weight_decay, .. } => {
                let mut c = SgdConfig::new();
                if momentum > 0.0 {
                    c = c.with_momentum(Some(MomentumConfig {
                        momentum,
                        dampening: 0.0,
                        nesterov,
                    }));
                }
                if weight_decay > 0.0 {
                    c = c.with_weight_decay(Some(WeightDecayConfig::new(weight_decay)));
                }
                c.init()
            }
            OptimizerConfig::Adam { weight_decay, .. } => {
                let mut c = AdamConfig::new();
                if weight_decay > 0.0 {
                    c = c.with_weight_decay(Some(WeightDecayConfig::new(weight_decay)));
                }
                c.init()
            }
        }
    }
}

/// Learning-rate schedule over the whole run (per step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// The peak rate throughout.
    Constant,
    /// Cosine decay from the peak to `min_lr`.
    Cosine {
        /// Final rate.
        min_lr: f64,
    },
    /// Multiply by `gamma` every `every` epochs.
    Step {
        /// Epochs between decays.
        every: usize,
        /// Factor.
        gamma: f64,
    },
}

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Optimizer.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Label smoothing (0 disables it).
    pub label_smoothing: f32,
    /// Seed of the data order.
    pub seed: u64,
    /// Stop each epoch after this many steps (smoke runs).
    #[serde(default)]
    pub max_steps_per_epoch: Option<usize>,
    /// Random crops and flips of the training batches (seeded by `seed` and the epoch).
    #[serde(default)]
    pub augment: Augment,
    /// Weight of the cross-entropy on the labels (0 = train on hook losses only, e.g. pure
    /// distillation on synthetic inputs).
    #[serde(default = "one")]
    pub data_loss_weight: f32,
}

fn one() -> f32 {
    1.0
}

impl TrainConfig {
    /// SGD momentum 0.9, cosine schedule: the usual CNN recipe.
    pub fn sgd(epochs: usize, batch_size: usize, lr: f64) -> Self {
        TrainConfig {
            epochs,
            batch_size,
            optimizer: OptimizerConfig::Sgd {
                lr,
                momentum: 0.9,
                nesterov: false,
                weight_decay: 5e-4,
            },
            schedule: Schedule::Cosine { min_lr: 0.0 },
            label_smoothing: 0.0,
            seed: 0,
            max_steps_per_epoch: None,
            augment: Augment::default(),
            data_loss_weight: 1.0,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str| Err(ModelError::Config { field, reason: reason.into() });
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if !(self.optimizer.lr() > 0.0 && self.optimizer.lr().is_finite()) {
            return bad("lr", "must be positive");
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad("label_smoothing", "must be in [0, 1)");
        }
        if !(self.data_loss_weight >= 0.0 && self.data_loss_weight.is_finite()) {
            return bad("data_loss_weight", "must be finite and non-negative");
        }
        Ok(())
    }

    /// Learning rate at global step `step` of `total`, in epoch `epoch`.
    pub fn lr_at(&self, step: usize, total: usize, epoch: usize) -> f64 {
        let peak = self.optimizer.lr();
        match self.schedule {
            Schedule::Constant => peak,
            Schedule::Cosine { min_lr } => {
                let t = step as f64 / total.max(1) as f64;
                min_lr + 0.5 * (peak - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Schedule::Step { every, gamma } => peak * gamma.powi((epoch / every.max(1)) as i32),
        }
    }
}

/// What one epoch measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch index (0-based).
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training top-1 accuracy on the examples seen.
    pub train_accuracy: f64,
    /// Evaluation loss and accuracy, when an evaluation set is given.
    pub eval: Option<(f64, f64)>,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Wall time of the epoch, seconds.
    pub seconds: f64,
}

/// What a hook sees of the current training step.
pub struct StepContext<'a> {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Global step (0-based, over the whole run).
    pub step: usize,
    /// The input batch `[N, C, H, W]` (on the training device).
    pub input: &'a Tensor<4>,
    /// The model's logits for it (with the autodiff graph).
    pub logits: &'a Tensor<2>,
}

/// Per-example outcomes of one training batch, taken from the loop's own forward pass (train
/// mode, augmented input, before the step; no extra forward).
#[derive(Debug, Clone, Copy)]
pub struct Outcomes<'a> {
    /// Dataset indices of the batch's examples.
    pub indices: &'a [u32],
    /// Whether each was classified correctly (argmax of the logits == label).
    pub correct: &'a [bool],
    /// Each one's margin: its label's logit minus the largest other logit (MEST's and
    /// Toneva et al.'s per-presentation statistic; positive when correct, ties aside).
    pub margins: &'a [f32],
}

/// Where pruning, sparse training and data-efficiency code plugs into the loop. Every method
/// has a do-nothing default.
pub trait Hooks<M> {
    /// Examples (dataset indices, in order) to train on in `epoch`; `None` = all, shuffled.
    fn epoch_examples(&mut self, _epoch: usize) -> Option<Vec<u32>> {
        None
    }
    /// An extra differentiable loss term for this step (knowledge distillation from a teacher,
    /// a penalty expressed in tensors). Added to `data_loss_weight x cross-entropy`.
    fn extra_loss(&mut self, _model: &M, _step: &StepContext<'_>) -> Result<Option<Tensor<1>>> {
        Ok(None)
    }
    /// Sees and may change the gradients before the optimizer step: explicit penalty gradients
    /// (ADMM, group lasso; see [`crate::weights::add_to_gradients`]), gradient masks, RigL's
    /// growth criterion.
    fn on_gradients(
        &mut self,
        _model: &M,
        _grads: &mut GradientsParams,
        _step: usize,
    ) -> Result<()> {
        Ok(())
    }
    /// Called after every optimizer step; may rewrite the model (apply masks).
    fn after_step(&mut self, model: M, _step: usize) -> Result<M> {
        Ok(model)
    }
    /// Per-example outcomes of a training batch (forgetting statistics).
    fn on_outcomes(&mut self, _epoch: usize, _batch: &Outcomes<'_>) {}
    /// Called after each epoch (before its checkpoint); may rewrite the model (mask updates,
    /// ADMM's Z and U).
    fn on_epoch_end(&mut self, model: M, _metrics: &EpochMetrics) -> Result<M> {
        Ok(model)
    }
    /// The hook's state, saved with every checkpoint (`hooks.bin`) so a resumed run continues
    /// with it (ADMM's Z, U and rho; a mask schedule's position).
    fn save_state(&self) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    /// Restores what [`Hooks::save_state`] saved.
    fn load_state(&mut self, _bytes: &[u8]) -> Result<()> {
        Ok(())
    }
}

/// A borrowed hook set is a hook set (so a caller keeps its hooks after training).
impl<M, H: Hooks<M> + ?Sized> Hooks<M> for &mut H {
    fn epoch_examples(&mut self, epoch: usize) -> Option<Vec<u32>> {
        (**self).epoch_examples(epoch)
    }
    fn extra_loss(&mut self, model: &M, step: &StepContext<'_>) -> Result<Option<Tensor<1>>> {
        (**self).extra_loss(model, step)
    }
    fn on_gradients(&mut self, model: &M, grads: &mut GradientsParams, step: usize) -> Result<()> {
        (**self).on_gradients(model, grads, step)
    }
    fn after_step(&mut self, model: M, step: usize) -> Result<M> {
        (**self).after_step(model, step)
    }
    fn on_outcomes(&mut self, epoch: usize, batch: &Outcomes<'_>) {
        (**self).on_outcomes(epoch, batch);
    }
    fn on_epoch_end(&mut self, model: M, metrics: &EpochMetrics) -> Result<M> {
        (**self).on_epoch_end(model, metrics)
    }
    fn save_state(&self) -> Result<Option<Vec<u8>>> {
        (**self).save_state()
    }
    fn load_state(&mut self, bytes: &[u8]) -> Result<()> {
        (**self).load_state(bytes)
    }
}

/// An optional hook set: `None` does nothing.
impl<M, H: Hooks<M>> Hooks<M> for Option<H> {
    fn epoch_examples(&mut self, epoch: usize) -> Option<Vec<u32>> {
        self.as_mut().and_then(|h| h.epoch_examples(epoch))
    }
    fn extra_loss(&mut self, model: &M, step: &StepContext<'_>) -> Result<Option<Tensor<1>>> {
        self.as_mut().map_or(Ok(None), |h| h.extra_loss(model, step))
    }
    fn on_gradients(&mut self, model: &M, grads: &mut GradientsParams, step: usize) -> Result<()> {
        self.as_mut().map_or(Ok(()), |h| h.on_gradients(model, grads, step))
    }
    fn after_step(&mut self, model: M, step: usize) -> Result<M> {
        match self {
            Some(h) => h.after_step(model, step),
            None => Ok(model),
        }
    }
    fn on_outcomes(&mut self, epoch: usize, batch: &Outcomes<'_>) {
        if let Some(h) = self {
            h.on_outcomes(epoch, batch);
        }
    }
    fn on_epoch_end(&mut self, model: M, metrics: &EpochMetrics) -> Result<M> {
        match self {
            Some(h) => h.on_epoch_end(model, metrics),
            None => Ok(model),
        }
    }
    fn save_state(&self) -> Result<Option<Vec<u8>>> {
        self.as_ref().map_or(Ok(None), |h| h.save_state())
    }
    fn load_state(&mut self, bytes: &[u8]) -> Result<()> {
        self.as_mut().map_or(Ok(()), |h| h.load_state(bytes))
    }
}

/// No hooks.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl<M> Hooks<M> for NoHooks {}

/// Checkpointing for [`train`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoints {
    /// Directory holding `state.json` and the `epoch-NNNN/` directory it names (`model.bpk`,
    /// `optimizer.bpk`, `hooks.bin`).
    pub dir: PathBuf,
    /// Continue from the checkpoint in `dir` if there is one.
    pub resume: bool,
    /// Stop (as an interrupted run would) once this many epochs are done, leaving the
    /// checkpoint to resume from; the schedule still spans all `epochs` of the config.
    pub stop_after_epochs: Option<usize>,
}

impl Checkpoints {
    /// Checkpoints in `dir`, resuming from it when `resume` is set.
    pub fn new(dir: impl Into<PathBuf>, resume: bool) -> Self {
        Checkpoints { dir: dir.into(), resume, stop_after_epochs: None }
    }
}

#[derive(Serialize, Deserialize)]
struct CheckpointState {
    next_epoch: usize,
    history: Vec<EpochMetrics>,
    config: TrainConfig,
    /// The subdirectory holding this checkpoint's model, optimizer and hook files.
    files: String,
}

/// Turns a batch into `[N, C, H, W]` images and `[N]` labels on `device`.
pub fn batch_tensors(batch: &Batch, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let shape = batch.shape();
    let x = Tensor::<4>::from_data(TensorData::new(batch.images.clone(), shape), device);
    let labels: Vec<i64> = batch.labels.iter().map(|&l| i64::from(l)).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch.len()]), device);
    (x, y)
}

/// Mean cross-entropy and top-1 accuracy of `model` (inference mode) on `data`.
pub fn evaluate<M: Classifier>(
    model: &M,
    data: &Dataset,
    batch_size: usize,
    device: &Device,
) -> Result<(f64, f64)> {
    let ce = CrossEntropyLossConfig::new().init(device);
    let all = data.all();
    let mut batches = all.batches(batch_size.max(1), false)?;
    let mut batch = Batch::default();
    let (mut loss_sum, mut correct, mut n) = (0.0f64, 0usize, 0usize);
    while batches.next_into(&mut batch) {
        let (x, y) = batch_tensors(&batch, device);
        let logits = model.forward(x);
        let loss = ce.forward(logits.clone(), y.clone());
        loss_sum += f64::from(scalar(loss)?) * batch.len() as f64;
        correct += outcomes(logits, &batch.labels)?.0.iter().filter(|&&c| c).count();
        n += batch.len();
    }
    Ok((loss_sum / n.max(1) as f64, correct as f64 / n.max(1) as f64))
}

/// Re-estimates the running mean and variance of every batch norm of `model` (on a training
/// `device`, so batch norm takes its training path) from `batches` batches of `batch_size`
/// images of `data` in a seeded random order (fewer when `data` runs out first),
/// unaugmented, without touching a weight.
///
/// The running statistics become the size-weighted average of the batches' statistics (each
/// batch norm's momentum is set to `n_k / (n_1 + ... + n_k)` for batch `k`, then restored),
/// the same estimate as PyTorch's `momentum=None`. Every parameter requires gradients
/// afterwards (as in a loaded model, ready to train). Pruning shifts every layer's output
/// distribution, so statistics recorded before pruning no longer match the pruned network:
/// re-estimating them ("adaptive batch norm", EagleEye, ECCV 2020) recovers much of the
/// accuracy a one-shot prune loses, and makes a short evaluation rank pruned candidates
/// closer to their fine-tuned order.
pub fn recalibrate_batch_norm<M: Classifier>(
    mut model: M,
    data: &Dataset,
    batches: usize,
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> Result<M> {
    if !device.is_autodiff() {
        return Err(ModelError::Config {
            field: "device",
            reason: "batch-norm recalibration needs a training (autodiff) device".into(),
        });
    }
    if batches == 0 || batch_size == 0 {
        return Err(ModelError::Config {
            field: "batches",
            reason: format!(
                "recalibration needs at least one batch of at least one image (got {batches} x {batch_size})"
            ),
        });
    }
    let momenta: Vec<f64> = model.batch_norms_mut().iter().map(|bn| bn.momentum).collect();
    if momenta.is_empty() {
        return Ok(model);
    }
    let _span = tracing::info_span!("recalibrate batch norm", batches, batch_size).entered();
    // Untracked parameters: batch norm still takes its training path (the device is autodiff
    // and its training flag is on), but no autodiff graph is recorded for a backward that
    // never comes (burn frees such graphs only at a later backward).
    let mut model = model.set_require_grad(false);
    let order = data.all().shuffled(seed);
    let mut it = order.batches(batch_size, false)?;
    let mut batch = Batch::default();
    let mut seen = 0usize;
    let mut done = 0usize;
    while done < batches && it.next_into(&mut batch) {
        seen += batch.len();
        let momentum = batch.len() as f64 / seen as f64;
        for bn in model.batch_norms_mut() {
            bn.momentum = momentum;
        }
        let (x, _) = batch_tensors(&batch, device);
        // The forward updates the running statistics; its graph is dropped unused.
        drop(model.forward(x));
        done += 1;
    }
    for (bn, m) in model.batch_norms_mut().into_iter().zip(momenta) {
        bn.momentum = m;
        // Fold this thread's pending update in: `value()` (and so a later inference
        // forward of an autodiff model) would otherwise lag one batch behind.
        bn.running_mean.value_sync();
        bn.running_var.value_sync();
    }
    Ok(model.set_require_grad(true))
}

/// A copy of `model` that shares no mutable state with it.
///
/// `Clone` on a burn module shares every batch norm's running statistics (burn's
/// `RunningState` holds them behind an `Arc<Mutex>`): training a clone in training mode moves
/// the original's statistics too, so a later run from the "same" model starts from statistics
/// another run left behind. This copy gives each batch norm statistics of its own (same values
/// and ids); parameters are immutable tensors and need no copy.
pub fn independent_copy<M: Classifier>(model: &M) -> M {
    let mut copy = model.clone();
    for bn in copy.batch_norms_mut() {
        bn.running_mean = unshared(&bn.running_mean);
        bn.running_var = unshared(&bn.running_var);
    }
    copy
}

/// `state`'s current value in a state of its own (`valid` makes a fresh one, on the inner
/// device; `train` another, back on the autodiff device).
fn unshared(
    state: &burn::module::RunningState<Tensor<1>>,
) -> burn::module::RunningState<Tensor<1>> {
    let autodiff = state.value().device().is_autodiff();
    let plain = Module::valid(state);
    if autodiff { plain.train() } else { plain }
}

/// Switches every batch norm of `model` between its training behaviour (`true`: normalize
/// with the batch's statistics and update the running ones, on an autodiff device) and its
/// inference behaviour (`false`: normalize with the running statistics and leave them alone,
/// even on an autodiff device; gamma and beta still get gradients).
///
/// Frozen statistics are what training on inputs from another distribution needs: the
/// privacy-preserving designer distills on random noise, whose batch statistics would
/// otherwise replace the ones the model was trained with. The flag is run-time state (burn
/// records omit it), so a saved and reloaded model trains normally again.
pub fn set_batch_norm_training<M: Classifier>(mut model: M, training: bool) -> M {
    for bn in model.batch_norms_mut() {
        bn.training = bn.training.clone().with_value(training);
    }
    model
}

fn scalar(t: Tensor<1>) -> Result<f32> {
    let v = crate::error::to_vec("loss", t)?;
    v.first()
        .copied()
        .ok_or_else(|| ModelError::Tensor { what: "loss".into(), reason: "empty".into() })
}

/// Per example: correct (argmax == label, the first maximum on ties) and the
/// margin (label's logit minus the largest other one). A row with a non-finite logit counts as
/// wrong with margin 0, so the statistics stay finite (and serializable).
fn outcomes(logits: Tensor<2>, labels: &[u8]) -> Result<(Vec<bool>, Vec<f32>)> {
    let classes = logits.dims()[1];
    let values = crate::error::to_vec("logits", logits)?;
    if classes < 2 || values.len() != classes * labels.len() {
        return Err(ModelError::Tensor {
            what: "logits".into(),
            reason: format!(
                "{} values for {} labels of {classes} classes (at least 2)",
                values.len(),
                labels.len()
            ),
        });
    }
    if let Some(&label) = labels.iter().find(|&&l| usize::from(l) >= classes) {
        return Err(ModelError::Tensor {
            what: "labels".into(),
            reason: format!("label {label} for a model of {classes} classes"),
        });
    }
    Ok(values
        .chunks_exact(classes)
        .zip(labels)
        .map(|(row, &label)| example_outcome(row, usize::from(label)))
        .unzip())
}

/// One example's outcome from its logits (see [`outcomes`]); `label < row.len()`.
fn example_outcome(row: &[f32], label: usize) -> (bool, f32) {
    if row.iter().any(|v| !v.is_finite()) {
        return (false, 0.0);
    }
    let mut best = 0;
    for (c, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = c;
        }
    }
    let other = row
        .iter()
        .enumerate()
        .filter(|&(c, _)| c != label)
        .map(|(_, &v)| v)
        .fold(f32::NEG_INFINITY, f32::max);
    (best == label, row[label] - other)
}

/// Trains `model` on `train` (evaluating on `eval` after each epoch) on a training `device`
/// (autodiff). Returns the trained model (on `device`) and the metrics of every epoch,
/// including epochs restored from a checkpoint.
#[allow(clippy::too_many_arguments)]
pub fn train<M>(
    mut model: M,
    train: &Dataset,
    eval: Option<&Dataset>,
    cfg: &TrainConfig,
    device: &Device,
    hooks: &mut dyn Hooks<M>,
    checkpoints: Option<&Checkpoints>,
) -> Result<(M, Vec<EpochMetrics>)>
where
    M: Classifier,
{
    cfg.validate()?;
    let _span = tracing::info_span!("train", epochs = cfg.epochs, examples = train.len()).entered();
    let mut optim = cfg.optimizer.init();
    let ce = CrossEntropyLossConfig::new()
        .with_smoothing((cfg.label_smoothing > 0.0).then_some(cfg.label_smoothing))
        .init(device);
    let mut history = Vec::new();
    let mut start_epoch = 0;
    if let Some(c) = checkpoints
        && c.resume
        && c.dir.join("state.json").is_file()
    {
        let (m, o, state) = load_checkpoint(model, optim, &c.dir, hooks)?;
        if state.config != *cfg {
            return Err(ckpt_err(
                &c.dir.join("state.json"),
                "the checkpoint was written by a different training config; resume needs the same one",
            ));
        }
        model = m;
        optim = o;
        start_epoch = state.next_epoch;
        history = state.history;
        tracing::info!(epoch = start_epoch, dir = %c.dir.display(), "resumed");
    }
    let steps_per_epoch = {
        let n = train.len().div_ceil(cfg.batch_size);
        cfg.max_steps_per_epoch.map_or(n, |m| m.min(n))
    };
    let total_steps = steps_per_epoch * cfg.epochs;
    let fill = train.normalization().black(train.sample_shape().channels);
    let end_epoch =
        checkpoints.and_then(|c| c.stop_after_epochs).map_or(cfg.epochs, |s| s.min(cfg.epochs));
    for epoch in start_epoch..end_epoch {
        let t0 = Instant::now();
        let subset = match hooks.epoch_examples(epoch) {
            Some(idx) => {
                tessera_data::Subset::from_indices(train, idx)?.epoch_order(cfg.seed, epoch as u64)
            }
            None => train.all().epoch_order(cfg.seed, epoch as u64),
        };
        let mut batches = subset.batches(cfg.batch_size, false)?;
        let mut batch = Batch::default();
        // Augmentation draws from its own ChaCha8 stream per epoch, so a resumed run sees the
        // same pixels as an uninterrupted one.
        let mut aug_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ AUGMENT_SEED_SALT);
        aug_rng.set_stream(epoch as u64);
        let (mut loss_sum, mut correct, mut seen, mut steps) = (0.0f64, 0usize, 0usize, 0usize);
        let bar = progress_bar(steps_per_epoch, epoch, cfg.epochs);
        while steps < steps_per_epoch && batches.next_into(&mut batch) {
            cfg.augment.apply(&mut batch, &fill, &mut aug_rng)?;
            let global = epoch * steps_per_epoch + steps;
            let (x, y) = batch_tensors(&batch, device);
            let logits = model.forward(x.clone());
            let ce_loss = ce.forward(logits.clone(), y);
            let data_loss = scalar(ce_loss.clone())?;
            let mut loss = if cfg.data_loss_weight == 1.0 {
                ce_loss
            } else {
                ce_loss.mul_scalar(cfg.data_loss_weight)
            };
            if let Some(extra) = hooks.extra_loss(
                &model,
                &StepContext { epoch, step: global, input: &x, logits: &logits },
            )? {
                loss = loss + extra;
            }
            let (outcome, margins) = outcomes(logits, &batch.labels)?;
            hooks.on_outcomes(
                epoch,
                &Outcomes { indices: &batch.indices, correct: &outcome, margins: &margins },
            );
            correct += outcome.iter().filter(|&&c| c).count();
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            hooks.on_gradients(&model, &mut grads, global)?;
            let lr = cfg.lr_at(global, total_steps, epoch);
            model = optim.step(lr, model, grads);
            model = hooks.after_step(model, global)?;
            loss_sum += f64::from(data_loss) * batch.len() as f64;
            seen += batch.len();
            steps += 1;
            bar.inc(1);
            if steps % 10 == 0 {
                bar.set_message(format!(
                    "loss {:.4} acc {:.4}",
                    loss_sum / seen as f64,
                    correct as f64 / seen as f64
                ));
            }
        }
        bar.finish_and_clear();
        let eval_metrics = match eval {
            Some(d) => {
                Some(evaluate(&model.valid(), d, cfg.batch_size.max(256), &device.clone().inner())?)
            }
            None => None,
        };
        let metrics = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            eval: eval_metrics,
            steps,
            seconds: t0.elapsed().as_secs_f64(),
        };
        tracing::info!(epoch, loss = metrics.train_loss, acc = metrics.train_accuracy, eval = ?metrics.eval, seconds = metrics.seconds, "epoch");
        model = hooks.on_epoch_end(model, &metrics)?;
        history.push(metrics);
        if let Some(c) = checkpoints {
            let state = CheckpointState {
                next_epoch: epoch + 1,
                history: history.clone(),
                config: cfg.clone(),
                files: format!("epoch-{:04}", epoch + 1),
            };
            save_checkpoint(&model, &optim, hooks.save_state()?.as_deref(), &c.dir, &state)?;
        }
    }
    Ok((model, history))
}

/// A progress bar on stderr for one epoch; indicatif hides it when stderr is not a terminal
/// (tests, CI logs), where the per-epoch tracing event reports instead.
fn progress_bar(steps: usize, epoch: usize, epochs: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(steps as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "epoch {prefix} [{bar:30}] {pos}/{len} {elapsed}<{eta} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    bar
}

fn ckpt_err(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Checkpoint { path: path.to_path_buf(), reason: reason.to_string() }
}

/// Writes the checkpoint atomically: model, optimizer and hook state go into a fresh
/// `epoch-NNNN/` directory, then `state.json` (which names that directory) is replaced by a
/// rename, then older epoch directories are removed. A crash at any point leaves `state.json`
/// naming a complete checkpoint.
fn save_checkpoint<M: Classifier>(
    model: &M,
    optim: &ModuleOptimizer,
    hooks: Option<&[u8]>,
    dir: &Path,
    state: &CheckpointState,
) -> Result<()> {
    let files = dir.join(&state.files);
    if files.exists() {
        // Left over from a crash before its state.json was written: never referenced.
        std::fs::remove_dir_all(&files).map_err(|e| ckpt_err(&files, e))?;
    }
    std::fs::create_dir_all(&files).map_err(|e| ckpt_err(&files, e))?;
    let mp = files.join("model.bpk");
    model.clone().save_file(&mp).map_err(|e| ckpt_err(&mp, format!("{e:?}")))?;
    let op = files.join("optimizer.bpk");
    optim.to_record().save(&op).map_err(|e| ckpt_err(&op, format!("{e:?}")))?;
    if let Some(bytes) = hooks {
        let hp = files.join("hooks.bin");
        std::fs::write(&hp, bytes).map_err(|e| ckpt_err(&hp, e))?;
    }
    let sp = dir.join("state.json");
    let json = serde_json::to_vec_pretty(state).map_err(|e| ckpt_err(&sp, e))?;
    tessera_data::file::write_atomic(&sp, &json).map_err(|e| ckpt_err(&sp, e))?;
    let entries = std::fs::read_dir(dir).map_err(|e| ckpt_err(dir, e))?;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("epoch-") && name != state.files.as_str() {
            std::fs::remove_dir_all(e.path()).map_err(|err| ckpt_err(&e.path(), err))?;
        }
    }
    Ok(())
}

fn load_checkpoint<M: Classifier>(
    model: M,
    optim: ModuleOptimizer,
    dir: &Path,
    hooks: &mut dyn Hooks<M>,
) -> Result<(M, ModuleOptimizer, CheckpointState)> {
    let sp = dir.join("state.json");
    let state: CheckpointState =
        serde_json::from_slice(&std::fs::read(&sp).map_err(|e| ckpt_err(&sp, e))?)
            .map_err(|e| ckpt_err(&sp, e))?;
    let files = dir.join(&state.files);
    let mp = files.join("model.bpk");
    let model = model.try_load_file(&mp).map_err(|e| ckpt_err(&mp, format!("{e:?}")))?;
    let op = files.join("optimizer.bpk");
    let record = OptimizerRecord::load(&op).map_err(|e| ckpt_err(&op, format!("{e:?}")))?;
    let hp = files.join("hooks.bin");
    if hp.is_file() {
        let bytes = std::fs::read(&hp).map_err(|e| ckpt_err(&hp, e))?;
        hooks.load_state(&bytes)?;
    }
    Ok((model, optim.load_record(record), state))
}

/// Keeps pruned weights at exactly zero (the masked-retraining hook): zeroes their gradients
/// before each step, so optimizer state never builds up for them, and re-applies the masks
/// after it, so weight decay cannot move them either.
#[derive(Debug, Clone, Default)]
pub struct KeepMasks(pub crate::export::Masks);

impl<M: Classifier> Hooks<M> for KeepMasks {
    fn on_gradients(&mut self, model: &M, grads: &mut GradientsParams, _step: usize) -> Result<()> {
        crate::weights::mask_gradients(model, grads, &self.0);
        Ok(())
    }

    fn after_step(&mut self, model: M, _step: usize) -> Result<M> {
        Ok(crate::weights::apply_masks(model, &self.0))
    }
}

/// Runs two hook sets in order (`A` first): masked retraining plus distillation, say.
pub struct Both<A, B>(pub A, pub B);

impl<M, A: Hooks<M>, B: Hooks<M>> Hooks<M> for Both<A, B> {
    fn epoch_examples(&mut self, epoch: usize) -> Option<Vec<u32>> {
        self.0.epoch_examples(epoch).or_else(|| self.1.epoch_examples(epoch))
    }
    fn extra_loss(&mut self, model: &M, step: &StepContext<'_>) -> Result<Option<Tensor<1>>> {
        Ok(match (self.0.extra_loss(model, step)?, self.1.extra_loss(model, step)?) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        })
    }
    fn on_gradients(&mut self, model: &M, grads: &mut GradientsParams, step: usize) -> Result<()> {
        self.0.on_gradients(model, grads, step)?;
        self.1.on_gradients(model, grads, step)
    }
    fn after_step(&mut self, model: M, step: usize) -> Result<M> {
        let model = self.0.after_step(model, step)?;
        self.1.after_step(model, step)
    }
    fn on_outcomes(&mut self, epoch: usize, batch: &Outcomes<'_>) {
        self.0.on_outcomes(epoch, batch);
        self.1.on_outcomes(epoch, batch);
    }
    fn on_epoch_end(&mut self, model: M, metrics: &EpochMetrics) -> Result<M> {
        let model = self.0.on_epoch_end(model, metrics)?;
        self.1.on_epoch_end(model, metrics)
    }
    fn save_state(&self) -> Result<Option<Vec<u8>>> {
        let (a, b) = (self.0.save_state()?, self.1.save_state()?);
        if a.is_none() && b.is_none() {
            return Ok(None);
        }
        // Two length-prefixed parts (u64 little-endian; u64::MAX = no state).
        let mut out = Vec::new();
        for part in [a, b] {
            match part {
                Some(p) => {
                    out.extend_from_slice(&(p.len() as u64).to_le_bytes());
                    out.extend_from_slice(&p);
                }
                None => out.extend_from_slice(&u64::MAX.to_le_bytes()),
            }
        }
        Ok(Some(out))
    }
    fn load_state(&mut self, bytes: &[u8]) -> Result<()> {
        let bad = || {
            ModelError::Config { field: "hooks state", reason: "the checkpoint's hook state was not written by this pair of hooks (truncated two-part state)".into() }
        };
        let mut rest = bytes;
        let mut parts: Vec<Option<&[u8]>> = Vec::new();
        for _ in 0..2 {
            let (len, tail) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
            let len = u64::from_le_bytes(*len);
            if len == u64::MAX {
                parts.push(None);
                rest = tail;
            } else {
                let len = usize::try_from(len).map_err(|_| bad())?;
                let (p, tail) = tail.split_at_checked(len).ok_or_else(bad)?;
                parts.push(Some(p));
                rest = tail;
            }
        }
        if let Some(a) = parts[0] {
            self.0.load_state(a)?;
        }
        if let Some(b) = parts[1] {
            self.1.load_state(b)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand cases: right with a margin to the runner-up, wrong with a negative one, a tie
    /// (argmax takes the first maximum; the margin is 0).
    #[test]
    fn example_outcome_by_hand() {
        assert_eq!(example_outcome(&[0.5, 2.0, -1.0], 1), (true, 1.5));
        assert_eq!(example_outcome(&[0.5, 2.0, -1.0], 2), (false, -3.0));
        assert_eq!(example_outcome(&[3.0, 3.0, 0.0], 1), (false, 0.0));
        assert_eq!(example_outcome(&[3.0, 3.0, 0.0], 0), (true, 0.0));
        // Non-finite logits: wrong, margin 0 (never NaN in the statistics).
        assert_eq!(example_outcome(&[f32::NAN, 1.0, 0.0], 0), (false, 0.0));
        assert_eq!(example_outcome(&[f32::INFINITY, 1.0, 0.0], 0), (false, 0.0));
    }

    /// A label outside the model's classes, or a one-class model, is an error naming it.
    #[test]
    fn outcomes_reject_labels_outside_the_classes() {
        let device = crate::Backend::Flex.device();
        let logits =
            Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 1.0, 2.0, 3.0], [2, 2]), &device);
        assert_eq!(
            outcomes(logits.clone(), &[1, 0]).ok(),
            Some((vec![true, false], vec![1.0, -1.0]))
        );
        let e = outcomes(logits.clone(), &[1, 2]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("label 2") && e.contains("2 classes"), "{e}");
        let one = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 1.0], [2, 1]), &device);
        assert!(outcomes(one, &[0, 0]).is_err());
    }
}
