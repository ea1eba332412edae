//! ADMM pruning (Zhang et al., ECCV 2018), with several constraint sets per layer (extended
//! ADMM: pattern + connectivity, polarization + pruning).
//!
//! For every pruned layer `i` and constraint set `c` the hook keeps an auxiliary `Z_ic` and a
//! scaled dual `U_ic` (GEMM view). During training (the W-step) it adds the gradient of
//! `sum_ic rho/2 ||W_i - Z_ic + U_ic||^2`, i.e. `rho (W_i - Z_ic + U_ic)`, to the weights'
//! gradients — exact, and cheaper than building the term in the autodiff graph. Every
//! `update_every` epochs (or every `update_every_steps` optimizer steps) it runs the Z-step
//! `Z_ic = project_c(W_i + U_ic)` (tessera-sparsity's Euclidean projection) and the U-step
//! `U_ic += W_i - Z_ic`, logs the primal residual `||W_i - Z_ic||` (which must fall) and the
//! dual residual `rho ||Z_ic - Z_ic_prev||`, and multiplies rho by `rho_growth` up to
//! `rho_max`, rescaling the scaled dual U by `rho_old / rho_new` so the unscaled dual `rho U`
//! is unchanged. Its whole state is checkpointed with the training run.
//!
//! With [`AdmmConfig::hard_prune_at`] the hook hard-prunes inside the phase (at that fraction
//! of its steps: the projection of W, as after the phase) and trains the rest of the phase
//! with the masks fixed and no penalty — the shape of gradual magnitude pruning's phase, which
//! reaches its final masks at `end_at` and trains masked after it.
//!
//! With [`AdmmConfig::progressive`] the Z-step's target is not the final one from the start:
//! each update projects onto the scheme at a sparsity that follows gradual magnitude
//! pruning's cubic ramp, `s_t = s_f (1 - (1 - t / T)^3)`, where `T` is the hard-pruning step
//! (or the phase's end), in the spirit of progressive ADMM (Ye et al. 2018), which reaches a
//! high rate through ADMM stages at rising rates. The penalty then pulls a growing set of
//! weights toward zero instead of the final 7/8 at once, so the kept weights can re-fit as
//! the set grows. Constraint sets that are structural at any rate (a pattern library at the
//! dense target) are enforced in full from the start.
//!
//! With [`AdmmConfig::couple_batch_norm`] the constraint of a convolution followed by a batch
//! norm also covers that norm's per-channel scale and shift: every output channel whose
//! filter the Z-step removes (in any of the layer's constraint sets) has its `gamma` and
//! `beta` in the set too, `Z = (v + U)` on kept channels and 0 on removed ones, and the same
//! penalty pulls them. Without it, filter-removing schemes fight the batch norm: it
//! normalizes a filter's output whatever the filter's norm, so pulling the filter toward zero
//! does not silence the channel (the loss is scale-invariant in the filter, and its gradient
//! grows as the filter shrinks), and the channel's output stays at full scale until the hard
//! pruning cuts it at once. Pulling `gamma` to zero silences the channel gradually, as
//! network slimming (Liu et al. 2017) prunes channels through their batch-norm scales. The
//! weights' projection alone decides which channels go (the coupled vectors follow it), and
//! the coupling is a pull, not a mask: hard pruning masks the weights as for every method, so
//! a removed channel keeps its (small) `gamma` and a trainable `beta`, a constant the next
//! layer's batch norm absorbs, exactly as after magnitude pruning. The coupled vectors'
//! residuals are not in the log, which stays per weight.
//!
//! With [`AdmmConfig::free_support`] the penalty covers only the coordinates the last Z-step
//! set to zero. In plain ADMM a kept coordinate has `Z = W + U` at the Z-step and `U = 0`
//! after it, so until the next update its term is `rho/2 (W - W_at_update)^2`: a proximal
//! anchor (at the `rho` a short phase needs, 0.1 growing to 1 with SGD at 0.01 and momentum
//! 0.9, 1-10% of the way back per step) on the weights that must re-fit while 7/8 of the
//! others are pulled away. Free support drops that anchor and keeps ADMM's Z-step, dual and
//! rho schedule on the zeroed coordinates: selective weight decay (Tessier et al. 2022) with
//! ADMM's dual. Every projection here only zeroes coordinates (the sparsity schemes and
//! polarization alike), so with a unit dual step U is 0 on the kept coordinates after every
//! update in both forms. Measured (ResNet-20 on Fashion-MNIST, block-punched 8x, the
//! prune-schemes preset, seed 0): it is not what makes the phase's training accuracy fall
//! (92 -> 79% by the second epoch either way, 86-89% under gradual magnitude pruning);
//! finished 89.72% against plain ADMM's 89.82%.
//!
//! [`AdmmConfig::dual_step`] is the U-step's length `gamma` (`U += gamma (W - Z)`, Fortin and
//! Glowinski). A W-step of a few dozen SGD steps closes only part of the gap to `Z - U`
//! (a third to two thirds per update at the ResNet-20 preset), and the dual, which grows by the
//! whole of `W` on a pruned coordinate every update, then drives such weights past zero
//! before they settle: a damped oscillation (modelling the preset's W-step as closing
//! `1 - (1 - 0.1 rho)^40` of the gap, a loss-free coordinate goes 1, 0.67, 0.16, -0.18,
//! -0.23, -0.09 of its start over the first updates), which a shorter step damps. Measured as
//! above with `gamma = 0.5`: the training accuracy fell less (to 82-83%), the residual at the
//! cut rose (0.241 against 0.224), and the finished model scored 89.89% (89.82%).

use std::collections::BTreeMap;

use burn::optim::GradientsParams;
use serde::{Deserialize, Serialize};
use tessera_models::train::{EpochMetrics, Hooks};
use tessera_models::weights::{
    add_to_gradients, apply_masks, collect_paths, mask_gradients, read_weights,
};
use tessera_models::{Classifier, Masks};

use crate::error::{PruneError, Result};
use crate::magnitude::{
    SavedMask, cubic_ramp, fraction_of, hard_prune_masks, restore_masks, save_masks,
};
use crate::plan::{Constraint, PrunePlan};

/// ADMM settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdmmConfig {
    /// Initial penalty rho (the same for every layer).
    pub rho: f64,
    /// rho is multiplied by this after every Z/U update.
    pub rho_growth: f64,
    /// Upper bound of rho.
    pub rho_max: f64,
    /// Epochs between Z/U updates (when `update_every_steps` is unset).
    pub update_every: usize,
    /// Optimizer steps between Z/U updates instead: more dual updates in a short budget.
    #[serde(default)]
    pub update_every_steps: Option<usize>,
    /// Hard-prune at this fraction of the phase's steps (in `(0, 1]`) and train the rest of the
    /// phase with the masks fixed; `None`: after the phase.
    #[serde(default)]
    pub hard_prune_at: Option<f64>,
    /// Ramp each Z-step's target sparsity along the cubic schedule, reaching the final target
    /// at the hard-pruning step (or the phase's end); needs `update_every_steps` and the
    /// phase's length ([`Admm::with_phase_steps`]).
    #[serde(default)]
    pub progressive: bool,
    /// Couple each pruned convolution's batch norm into the constraint: the scale and shift
    /// of every output channel whose filter the Z-step removes are pulled to zero with it.
    #[serde(default)]
    pub couple_batch_norm: bool,
    /// Penalize only the coordinates the last Z-step zeroed: the kept weights train without
    /// the proximal pull back to their value at the last update (module docs).
    #[serde(default)]
    pub free_support: bool,
    /// Step length `gamma` of the U-step, `U += gamma (W - Z)`: 1 is plain ADMM; Fortin and
    /// Glowinski's ADMM converges (convex case) for any `gamma` in `(0, (1 + sqrt 5) / 2)`.
    /// Below 1 it damps the dual, which, with an inexact W-step (a few dozen SGD steps per
    /// update), swings pruned weights past zero (module docs).
    #[serde(default = "unit_dual_step")]
    pub dual_step: f64,
}

fn unit_dual_step() -> f64 {
    1.0
}

impl Default for AdmmConfig {
    fn default() -> Self {
        AdmmConfig {
            rho: 1e-2,
            rho_growth: 1.5,
            rho_max: 1.0,
            update_every: 1,
            update_every_steps: None,
            hard_prune_at: None,
            progressive: false,
            couple_batch_norm: false,
            free_support: false,
            dual_step: 1.0,
        }
    }
}

impl AdmmConfig {
    fn validate(&self) -> Result<()> {
        if !(self.rho > 0.0
            && self.rho.is_finite()
            && self.rho_max >= self.rho
            && self.rho_growth >= 1.0)
        {
            return Err(PruneError::config("admm", "need 0 < rho <= rho_max and rho_growth >= 1"));
        }
        let golden = (1.0 + 5f64.sqrt()) / 2.0;
        if !(self.dual_step > 0.0 && self.dual_step < golden) {
            return Err(PruneError::config(
                "admm.dual_step",
                format!(
                    "the U-step's length must be in (0, (1 + sqrt 5) / 2), got {}",
                    self.dual_step
                ),
            ));
        }
        if self.update_every == 0 {
            return Err(PruneError::config("admm.update_every", "must be at least 1 epoch"));
        }
        if self.update_every_steps == Some(0) {
            return Err(PruneError::config("admm.update_every_steps", "must be at least 1 step"));
        }
        if let Some(f) = self.hard_prune_at
            && !(f > 0.0 && f <= 1.0)
        {
            return Err(PruneError::config(
                "admm.hard_prune_at",
                format!("a fraction of the phase in (0, 1], got {f}"),
            ));
        }
        if self.progressive && self.update_every_steps.is_none() {
            return Err(PruneError::config(
                "admm.progressive",
                "ramps the target by optimizer step: set `update_every_steps` too",
            ));
        }
        Ok(())
    }
}

/// The fraction of the final sparsity progressive ADMM's Z-step asks for after `step` when
/// the ramp ends at step `end`: `1 - (1 - (step + 1) / (end + 1))^3`, 0 before the first step.
pub fn progressive_fraction(step: Option<usize>, end: usize) -> f64 {
    let Some(step) = step else { return 0.0 };
    cubic_ramp(0.0, (step + 1) as f64 / (end + 1) as f64)
}

/// `c` with its target's sparsity scaled by `fraction` (itself, the plan's target, at 1).
fn ramped(c: &Constraint, fraction: f64) -> Constraint {
    if fraction >= 1.0 {
        return c.clone();
    }
    Constraint { target: fraction_of(c.target, fraction), ..c.clone() }
}

/// Residuals of one layer and constraint set at one update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Residual {
    /// Weight path.
    pub path: String,
    /// The constraint set's scheme and target.
    pub constraint: String,
    /// Primal residual `||W - Z||`.
    pub primal: f64,
    /// `||W - Z|| / ||W||`.
    pub relative: f64,
    /// Dual residual `rho ||Z - Z_prev||`.
    pub dual: f64,
    /// `||W||` (0 in logs written before it was recorded).
    #[serde(default)]
    pub weight_norm: f64,
}

/// One Z/U update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdmmUpdate {
    /// The epoch after which it ran (`None` for the initialization and step-driven updates).
    pub epoch: Option<usize>,
    /// The optimizer step after which it ran, for step-driven updates.
    #[serde(default)]
    pub step: Option<usize>,
    /// rho in force during the epochs before it.
    pub rho: f64,
    /// Per layer and constraint set.
    pub residuals: Vec<Residual>,
}

impl AdmmUpdate {
    /// The largest relative primal residual of the update.
    pub fn max_relative(&self) -> f64 {
        self.residuals.iter().map(|r| r.relative).fold(0.0, f64::max)
    }

    /// The whole model's relative primal residual `sqrt(sum ||W - Z||^2) / sqrt(sum ||W||^2)`
    /// over every layer and constraint set. Unlike [`AdmmUpdate::max_relative`] it is not
    /// pinned at 1 by a layer whose projection keeps nothing (there `Z = 0`, so
    /// `||W - Z|| / ||W||` is 1 however small W gets).
    /// Logs written before `weight_norm` was recorded (resumed runs) recover `||W||` as
    /// `primal / relative`.
    pub fn total_relative(&self) -> f64 {
        let weight_norm = |r: &Residual| match r.weight_norm {
            n if n > 0.0 => n,
            _ if r.relative > 0.0 => r.primal / r.relative,
            _ => 0.0,
        };
        let primal = self.residuals.iter().map(|r| r.primal * r.primal).sum::<f64>().sqrt();
        let weights = self.residuals.iter().map(|r| weight_norm(r).powi(2)).sum::<f64>();
        primal / weights.sqrt().max(f64::MIN_POSITIVE)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SetState {
    z: Vec<f32>,
    u: Vec<f32>,
}

/// The batch norm after a pruned convolution, coupled into ADMM
/// ([`AdmmConfig::couple_batch_norm`]).
#[derive(Debug, Clone, PartialEq)]
struct BatchNormCoupling {
    /// Path of its per-channel scale.
    gamma: String,
    /// Path of its per-channel shift.
    beta: String,
}

/// The batch norm of the convolution whose weight is at `weight` (our zoo's `ConvBn`:
/// `<x>.conv.weight` and `<x>.bn.{gamma,beta}`), if the model has one there.
fn batch_norm_of(weight: &str, params: &[String]) -> Option<BatchNormCoupling> {
    let base = weight.strip_suffix(".conv.weight")?;
    let (gamma, beta) = (format!("{base}.bn.gamma"), format!("{base}.bn.beta"));
    (params.contains(&gamma) && params.contains(&beta)).then_some(BatchNormCoupling { gamma, beta })
}

/// `values` (one per output channel) projected onto "zero on the channels not `alive`".
fn keep_channels(values: &[f32], alive: &[bool]) -> Vec<f32> {
    values.iter().zip(alive).map(|(&v, &a)| if a { v } else { 0.0 }).collect()
}

/// The values of a coupled batch-norm vector at `path`, or an error naming it.
fn batch_norm_values<'a>(weights: &'a BTreeMap<String, Vec<f32>>, path: &str) -> Result<&'a [f32]> {
    weights.get(path).map(Vec::as_slice).ok_or_else(|| PruneError::Layer {
        layer: path.to_string(),
        reason: "no batch-norm values given".into(),
    })
}

/// Per GEMM row (output channel) of a layer's Z sets: whether every set keeps a weight in it.
fn alive_rows(rows: usize, sets: &[&[f32]]) -> Vec<bool> {
    (0..rows)
        .map(|o| {
            sets.iter().all(|z| {
                let cols = z.len() / rows.max(1);
                z[o * cols..(o + 1) * cols].iter().any(|&v| v != 0.0)
            })
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    rho: f64,
    /// Per layer (plan order), per constraint set.
    sets: Vec<Vec<SetState>>,
    /// Per layer, the coupled batch norm's scale and shift (`couple_batch_norm`).
    #[serde(default)]
    batch_norms: Vec<Option<[SetState; 2]>>,
    log: Vec<AdmmUpdate>,
    /// The step after which it hard-pruned inside the phase, and the masks.
    #[serde(default)]
    hard_pruned: Option<(usize, Vec<SavedMask>)>,
}

/// The ADMM training hook.
#[derive(Debug, Clone)]
pub struct Admm {
    plan: PrunePlan,
    constraints: Vec<Vec<Constraint>>,
    paths: Vec<String>,
    config: AdmmConfig,
    state: State,
    /// The optimizer step after which to hard-prune (from `hard_prune_at`).
    hard_prune_step: Option<usize>,
    /// The last step of the phase (from [`Admm::with_phase_steps`]).
    last_step: Option<usize>,
    /// Per layer, its coupled batch norm.
    couplings: Vec<Option<BatchNormCoupling>>,
    /// The masks once hard-pruned inside the phase.
    masks: Option<Masks>,
}

fn norm(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

impl Admm {
    /// Starts ADMM from `model`'s weights: `Z = project(W)`, `U = 0`.
    pub fn new<M: Classifier>(model: &M, plan: PrunePlan, config: AdmmConfig) -> Result<Self> {
        config.validate()?;
        let mut paths = plan.paths();
        let couplings: Vec<Option<BatchNormCoupling>> = if config.couple_batch_norm {
            let params = collect_paths(model);
            plan.layers.iter().map(|l| batch_norm_of(&l.path, &params)).collect()
        } else {
            vec![None; plan.layers.len()]
        };
        paths.extend(couplings.iter().flatten().flat_map(|c| [c.gamma.clone(), c.beta.clone()]));
        let weights = read_weights(model, &paths)?;
        let constraints: Vec<Vec<Constraint>> =
            plan.layers.iter().map(|l| l.constraints()).collect();
        let mut sets = Vec::new();
        let mut batch_norms = Vec::new();
        let mut residuals = Vec::new();
        for ((l, cs), coupling) in plan.layers.iter().zip(&constraints).zip(&couplings) {
            let w = &weights[&l.path];
            let mut layer_sets = Vec::new();
            for c in cs {
                // Progressive ADMM starts from the ramp's first point: no sparsity asked yet.
                let c = if config.progressive { &ramped(c, 0.0) } else { c };
                let z = c.project(&l.layer, w)?;
                residuals.push(residual(&l.path, c, w, &z, None, config.rho));
                layer_sets.push(SetState { u: vec![0.0; z.len()], z });
            }
            let bn = match coupling {
                Some(c) => {
                    let rows = l.layer.geometry.rows();
                    let zs: Vec<&[f32]> = layer_sets.iter().map(|s| s.z.as_slice()).collect();
                    let alive = alive_rows(rows, &zs);
                    let mut pair = Vec::new();
                    for p in [&c.gamma, &c.beta] {
                        let v = &weights[p];
                        if v.len() != rows {
                            return Err(PruneError::Layer {
                                layer: l.path.clone(),
                                reason: format!(
                                    "batch norm `{p}` has {} channels, the convolution {rows}",
                                    v.len()
                                ),
                            });
                        }
                        pair.push(SetState { z: keep_channels(v, &alive), u: vec![0.0; rows] });
                    }
                    pair.try_into().ok()
                }
                None => None,
            };
            batch_norms.push(bn);
            sets.push(layer_sets);
        }
        let log = vec![AdmmUpdate { epoch: None, step: None, rho: config.rho, residuals }];
        Ok(Admm {
            plan,
            constraints,
            paths,
            state: State { rho: config.rho, sets, batch_norms, log, hard_pruned: None },
            config,
            hard_prune_step: None,
            last_step: None,
            couplings,
            masks: None,
        })
    }

    /// Sets the length of the training phase, which places `hard_prune_at`'s step: the
    /// hook hard-prunes after step `ceil(fraction * total_steps) - 1`.
    pub fn with_phase_steps(mut self, total_steps: usize) -> Self {
        self.hard_prune_step = self
            .config
            .hard_prune_at
            .map(|f| ((f * total_steps as f64).ceil() as usize).max(1) - 1);
        self.last_step = Some(total_steps.max(1) - 1);
        self
    }

    /// The constraint sets of layer `layer` as the Z-step after `step` projects onto them:
    /// the plan's, or with progressive ADMM each target's sparsity scaled by the ramp.
    fn constraints_at(&self, layer: usize, step: Option<usize>) -> Result<Vec<Constraint>> {
        let sets = &self.constraints[layer];
        if !self.config.progressive {
            return Ok(sets.clone());
        }
        let end = self.hard_prune_step.or(self.last_step).ok_or_else(|| {
            PruneError::config(
                "admm.progressive",
                "the ramp needs the phase's length: build the hook with `with_phase_steps`",
            )
        })?;
        let f = progressive_fraction(step, end);
        Ok(sets.iter().map(|c| ramped(c, f)).collect())
    }

    /// The masks it hard-pruned to inside the phase, with the step after which it did.
    pub fn hard_pruned(&self) -> Option<(usize, &Masks)> {
        let step = self.state.hard_pruned.as_ref()?.0;
        self.masks.as_ref().map(|m| (step, m))
    }

    /// The plan it enforces.
    pub fn plan(&self) -> &PrunePlan {
        &self.plan
    }

    /// Every Z/U update so far (the first is the initialization).
    pub fn log(&self) -> &[AdmmUpdate] {
        &self.state.log
    }

    /// Current rho.
    pub fn rho(&self) -> f64 {
        self.state.rho
    }

    /// Paths of the batch norms coupled into the constraint, as `(scale, shift)`.
    pub fn coupled_batch_norms(&self) -> Vec<(&str, &str)> {
        self.couplings.iter().flatten().map(|c| (c.gamma.as_str(), c.beta.as_str())).collect()
    }

    fn coupled(&self) -> impl Iterator<Item = (&BatchNormCoupling, &[SetState; 2])> {
        self.couplings
            .iter()
            .zip(&self.state.batch_norms)
            .filter_map(|(c, s)| Some((c.as_ref()?, s.as_ref()?)))
    }

    /// The penalty `sum rho/2 ||W - Z + U||^2` at `weights` (with `free_support`, over the
    /// coordinates where `Z = 0` only).
    pub fn penalty(&self, weights: &BTreeMap<String, Vec<f32>>) -> f64 {
        let mut total = 0.0;
        let free = self.config.free_support;
        let term = |w: &[f32], s: &SetState| {
            w.iter()
                .zip(&s.z)
                .zip(&s.u)
                .filter(|((_, z), _)| !(free && **z != 0.0))
                .map(|((&w, &z), &u)| (f64::from(w) - f64::from(z) + f64::from(u)).powi(2))
                .sum::<f64>()
        };
        for (l, sets) in self.plan.layers.iter().zip(&self.state.sets) {
            let Some(w) = weights.get(&l.path) else { continue };
            total += sets.iter().map(|s| term(w, s)).sum::<f64>();
        }
        for (c, bn) in self.coupled() {
            for (p, s) in [&c.gamma, &c.beta].into_iter().zip(bn) {
                total += weights.get(p).map_or(0.0, |v| term(v, s));
            }
        }
        0.5 * self.state.rho * total
    }

    /// The penalty's gradient `sum_c rho (W - Z_c + U_c)` per path (with `free_support`, 0
    /// wherever `Z_c` is not).
    pub fn penalty_gradient(
        &self,
        weights: &BTreeMap<String, Vec<f32>>,
    ) -> Result<BTreeMap<String, Vec<f32>>> {
        let rho = self.state.rho as f32;
        let free = self.config.free_support;
        // The gradient of one coordinate's term.
        let grad = |w: f32, z: f32, u: f32| if free && z != 0.0 { 0.0 } else { rho * (w - z + u) };
        let mut out = BTreeMap::new();
        for (l, sets) in self.plan.layers.iter().zip(&self.state.sets) {
            let w = weights.get(&l.path).ok_or_else(|| PruneError::Layer {
                layer: l.path.clone(),
                reason: "no weights".into(),
            })?;
            let mut g = vec![0.0f32; w.len()];
            for s in sets {
                for (((g, &w), &z), &u) in g.iter_mut().zip(w).zip(&s.z).zip(&s.u) {
                    *g += grad(w, z, u);
                }
            }
            out.insert(l.path.clone(), g);
        }
        for (c, bn) in self.coupled() {
            for (p, s) in [&c.gamma, &c.beta].into_iter().zip(bn) {
                let v = batch_norm_values(weights, p)?;
                let g = v.iter().zip(&s.z).zip(&s.u).map(|((&v, &z), &u)| grad(v, z, u));
                out.insert(p.clone(), g.collect());
            }
        }
        Ok(out)
    }

    /// The Z- and U-steps at `weights`, logged as after `epoch`; then rho grows. Progressive
    /// ADMM places its target by optimizer step, so it updates only through the hook.
    pub fn update(
        &mut self,
        weights: &BTreeMap<String, Vec<f32>>,
        epoch: Option<usize>,
    ) -> Result<&AdmmUpdate> {
        if self.config.progressive {
            return Err(PruneError::config(
                "admm.progressive",
                "the ramp's target depends on the optimizer step: update through the training hook",
            ));
        }
        self.update_at(weights, epoch, None)
    }

    fn update_at(
        &mut self,
        weights: &BTreeMap<String, Vec<f32>>,
        epoch: Option<usize>,
        step: Option<usize>,
    ) -> Result<&AdmmUpdate> {
        let rho = self.state.rho;
        let gamma = self.config.dual_step as f32;
        let mut residuals = Vec::new();
        let constraints = (0..self.plan.layers.len())
            .map(|i| self.constraints_at(i, step))
            .collect::<Result<Vec<_>>>()?;
        for (((l, cs), sets), (coupling, bn)) in self
            .plan
            .layers
            .iter()
            .zip(&constraints)
            .zip(&mut self.state.sets)
            .zip(self.couplings.iter().zip(&mut self.state.batch_norms))
        {
            let w = weights.get(&l.path).ok_or_else(|| PruneError::Layer {
                layer: l.path.clone(),
                reason: "no weights".into(),
            })?;
            for (c, s) in cs.iter().zip(sets.iter_mut()) {
                let shifted: Vec<f32> = w.iter().zip(&s.u).map(|(w, u)| w + u).collect();
                let z = c.project(&l.layer, &shifted)?;
                residuals.push(residual(&l.path, c, w, &z, Some(&s.z), rho));
                for ((u, &w), &z) in s.u.iter_mut().zip(w).zip(&z) {
                    *u += gamma * (w - z);
                }
                s.z = z;
            }
            // The coupled batch norm: Z = (v + U) on the channels every set keeps, 0 elsewhere.
            if let (Some(c), Some(bn)) = (coupling, bn) {
                let zs: Vec<&[f32]> = sets.iter().map(|s| s.z.as_slice()).collect();
                let alive = alive_rows(l.layer.geometry.rows(), &zs);
                for (p, s) in [&c.gamma, &c.beta].into_iter().zip(bn.iter_mut()) {
                    let v = batch_norm_values(weights, p)?;
                    let shifted: Vec<f32> = v.iter().zip(&s.u).map(|(v, u)| v + u).collect();
                    s.z = keep_channels(&shifted, &alive);
                    for ((u, &v), &z) in s.u.iter_mut().zip(v).zip(&s.z) {
                        *u += gamma * (v - z);
                    }
                }
            }
        }
        self.state.log.push(AdmmUpdate { epoch, step, rho, residuals });
        let next = (rho * self.config.rho_growth).min(self.config.rho_max);
        // U is the dual scaled by 1/rho: keep the unscaled dual rho*U when rho changes
        // (Boyd et al. 2011, §3.4.1), else every growth step multiplies the dual's pull.
        let keep = (rho / next) as f32;
        let bn = self.state.batch_norms.iter_mut().flatten().flatten();
        for s in self.state.sets.iter_mut().flatten().chain(bn) {
            s.u.iter_mut().for_each(|u| *u *= keep);
        }
        self.state.rho = next;
        Ok(self.state.log.last().unwrap_or_else(|| unreachable!("just pushed")))
    }
}

fn residual(
    path: &str,
    c: &Constraint,
    w: &[f32],
    z: &[f32],
    z_prev: Option<&[f32]>,
    rho: f64,
) -> Residual {
    let primal = norm(w.iter().zip(z).map(|(&a, &b)| f64::from(a) - f64::from(b)));
    let wn = norm(w.iter().map(|&a| f64::from(a)));
    let dual = z_prev
        .map_or(0.0, |p| rho * norm(z.iter().zip(p).map(|(&a, &b)| f64::from(a) - f64::from(b))));
    Residual {
        path: path.to_string(),
        constraint: format!("{}@{}", c.scheme, c.target),
        primal,
        relative: primal / wn.max(f64::MIN_POSITIVE),
        dual,
        weight_norm: wn,
    }
}

impl<M: Classifier> Hooks<M> for Admm {
    fn on_gradients(
        &mut self,
        model: &M,
        grads: &mut GradientsParams,
        _step: usize,
    ) -> tessera_models::Result<()> {
        if let Some(masks) = &self.masks {
            mask_gradients(model, grads, masks);
            return Ok(());
        }
        let weights = read_weights(model, &self.paths)?;
        let g = self.penalty_gradient(&weights)?;
        add_to_gradients(model, grads, &g)
    }

    fn after_step(&mut self, model: M, step: usize) -> tessera_models::Result<M> {
        if let Some(masks) = &self.masks {
            return Ok(apply_masks(model, masks));
        }
        if self.hard_prune_step == Some(step) {
            let masks = hard_prune_masks(&model, &self.plan)?;
            tracing::info!(step, "ADMM: hard-pruned inside the phase; masked training from here");
            self.state.hard_pruned = Some((step, save_masks(&masks)));
            let model = apply_masks(model, &masks);
            self.masks = Some(masks);
            return Ok(model);
        }
        if let Some(n) = self.config.update_every_steps
            && (step + 1).is_multiple_of(n)
        {
            let weights = read_weights(&model, &self.paths)?;
            let u = self.update_at(&weights, None, Some(step))?;
            tracing::debug!(
                step,
                total_relative_residual = u.total_relative(),
                max_relative_residual = u.max_relative(),
                rho = u.rho,
                "ADMM Z/U update"
            );
        }
        Ok(model)
    }

    fn on_epoch_end(&mut self, model: M, metrics: &EpochMetrics) -> tessera_models::Result<M> {
        if self.masks.is_none()
            && self.config.update_every_steps.is_none()
            && (metrics.epoch + 1).is_multiple_of(self.config.update_every)
        {
            let weights = read_weights(&model, &self.paths)?;
            let u = self.update(&weights, Some(metrics.epoch))?;
            tracing::info!(
                epoch = metrics.epoch,
                total_relative_residual = u.total_relative(),
                max_relative_residual = u.max_relative(),
                rho = u.rho,
                "ADMM Z/U update"
            );
        }
        Ok(model)
    }

    fn save_state(&self) -> tessera_models::Result<Option<Vec<u8>>> {
        serde_json::to_vec(&self.state)
            .map(Some)
            .map_err(|e| PruneError::config("admm state", e).into())
    }

    fn load_state(&mut self, bytes: &[u8]) -> tessera_models::Result<()> {
        let mut state: State =
            serde_json::from_slice(bytes).map_err(|e| PruneError::config("admm state", e))?;
        // A state saved before batch-norm coupling existed couples nothing.
        if state.batch_norms.is_empty() && self.couplings.iter().all(Option::is_none) {
            state.batch_norms = vec![None; self.couplings.len()];
        }
        let shape_ok = state.sets.len() == self.state.sets.len()
            && state.sets.iter().zip(&self.state.sets).all(|(a, b)| {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(x, y)| x.z.len() == y.z.len() && x.u.len() == y.u.len())
            })
            && state.batch_norms.len() == self.state.batch_norms.len()
            && state.batch_norms.iter().zip(&self.state.batch_norms).all(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => {
                    a.iter().zip(b).all(|(x, y)| x.z.len() == y.z.len() && x.u.len() == y.u.len())
                }
                (None, None) => true,
                _ => false,
            });
        if !shape_ok {
            return Err(PruneError::config(
                "admm state",
                "the checkpoint's ADMM state does not fit this plan (its layers, constraint \
                 sets or coupled batch norms, `couple_batch_norm`, differ)",
            )
            .into());
        }
        self.masks = match &state.hard_pruned {
            Some((_, saved)) => Some(restore_masks(&self.plan, saved.clone(), "admm state")?),
            None => None,
        };
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_config_errors_naming_the_field() {
        assert!(AdmmConfig::default().validate().is_ok());
        let err = |c: AdmmConfig| c.validate().unwrap_err().to_string();
        let e = err(AdmmConfig { update_every_steps: Some(0), ..AdmmConfig::default() });
        assert!(e.contains("admm.update_every_steps") && e.contains("at least 1 step"), "{e}");
        let e = err(AdmmConfig { update_every: 0, ..AdmmConfig::default() });
        assert!(e.contains("admm.update_every"), "{e}");
        let e = err(AdmmConfig { rho: 2.0, rho_max: 1.0, ..AdmmConfig::default() });
        assert!(e.contains("rho <= rho_max"), "{e}");
        let e = err(AdmmConfig { rho_growth: 0.5, ..AdmmConfig::default() });
        assert!(e.contains("rho_growth >= 1"), "{e}");
        let e = err(AdmmConfig { progressive: true, ..AdmmConfig::default() });
        assert!(e.contains("admm.progressive") && e.contains("update_every_steps"), "{e}");
        for bad in [0.0, -0.5, 1.5, f64::NAN] {
            let e = err(AdmmConfig { hard_prune_at: Some(bad), ..AdmmConfig::default() });
            assert!(e.contains("admm.hard_prune_at"), "{e}");
        }
        // Fortin-Glowinski's range for the U-step, (0, 1.618...).
        for bad in [0.0, -0.1, 1.62, f64::NAN] {
            let e = err(AdmmConfig { dual_step: bad, ..AdmmConfig::default() });
            assert!(e.contains("admm.dual_step"), "{e}");
        }
        assert!(AdmmConfig { dual_step: 1.6, ..AdmmConfig::default() }.validate().is_ok());
    }

    #[test]
    fn total_relative_pools_layers_and_reads_logs_without_weight_norms() {
        let r = |primal: f64, weight_norm: f64| Residual {
            path: "w".into(),
            constraint: "unstructured@8x".into(),
            primal,
            relative: primal / weight_norm,
            dual: 0.0,
            weight_norm,
        };
        let update = |residuals| AdmmUpdate { epoch: None, step: None, rho: 1.0, residuals };
        // Hand-computed: sqrt(3^2 + 4^2 + 0) / sqrt(5^2 + 10^2 + 10^2) = 5 / 15.
        let u = update(vec![r(3.0, 5.0), r(4.0, 10.0), r(0.0, 10.0)]);
        assert!((u.total_relative() - 5.0 / 15.0).abs() < 1e-12, "{}", u.total_relative());
        // The same log as written before `weight_norm` existed: `||W|| = primal / relative`
        // wherever the primal residual is non-zero, so only the exact-zero layer drops out.
        let mut old = u.clone();
        old.residuals.iter_mut().for_each(|r| r.weight_norm = 0.0);
        let want = 5.0 / 125.0f64.sqrt();
        assert!((old.total_relative() - want).abs() < 1e-12, "{}", old.total_relative());
        // A layer cut whole (Z = 0, primal = ||W||) pins the largest per-layer ratio at 1;
        // pooled with the others it weighs by its share of the energy.
        let with_cut = update(vec![r(3.0, 5.0), r(4.0, 10.0), r(10.0, 10.0)]);
        assert_eq!(with_cut.max_relative(), 1.0);
        let want = (9.0f64 + 16.0 + 100.0).sqrt() / 15.0;
        assert!((with_cut.total_relative() - want).abs() < 1e-12);
    }

    #[test]
    fn progressive_fraction_is_the_cubic_ramp() {
        assert_eq!(progressive_fraction(None, 9), 0.0);
        // (step + 1) / (end + 1) = 0.5: 1 - 0.5^3.
        assert!((progressive_fraction(Some(4), 9) - 0.875).abs() < 1e-12);
        assert_eq!(progressive_fraction(Some(9), 9), 1.0);
        assert_eq!(progressive_fraction(Some(30), 9), 1.0);
        let f: Vec<f64> = (0..10).map(|s| progressive_fraction(Some(s), 9)).collect();
        assert!(f.windows(2).all(|w| w[1] > w[0]), "rises every step: {f:?}");
        // Fast early, slow late: the first tenth of the ramp asks for over a quarter.
        assert!(f[0] > 0.25 && f[8] > 0.99, "{f:?}");
    }
}
