//! Magnitude pruning for any scheme: one-shot (project once, retrain), iterative (several
//! rounds of project + retrain at geometrically rising compression), and gradual (Zhu & Gupta
//! 2017: during training the sparsity follows the cubic
//! `s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3` and masks are recomputed every
//! `every` steps). "Magnitude" means the scheme's own score: the projection keeps the groups
//! with the largest L2 norm, which for single weights is |w|.

use std::collections::BTreeMap;

use burn::optim::GradientsParams;
use serde::{Deserialize, Serialize};
use tessera_models::train::Hooks;
use tessera_models::weights::{apply_masks, mask_gradients, read_weights};
use tessera_models::{Classifier, Masks};
use tessera_sparsity::{Mask, Target};

use crate::error::{PruneError, Result};
use crate::plan::PrunePlan;

/// The masks of every planned layer at `model`'s current weights (one-shot magnitude pruning,
/// and the hard-pruning step after ADMM or group lasso).
pub fn hard_prune_masks<M: Classifier>(model: &M, plan: &PrunePlan) -> Result<Masks> {
    let weights = read_weights(model, &plan.paths())?;
    plan.masks(&weights)
}

/// The plan with every target replaced by `fraction` of the way to it (in log-compression):
/// round `r` of `rounds` of iterative pruning uses `fraction = r / rounds`.
pub fn partial_plan(plan: &PrunePlan, fraction: f64) -> PrunePlan {
    let mut p = plan.clone();
    for l in &mut p.layers {
        let rate = 1.0 / l.target.density().max(f64::MIN_POSITIVE);
        l.target = Target::Compression(rate.powf(fraction.clamp(0.0, 1.0)).max(1.0));
    }
    p
}

/// `target`'s sparsity scaled by `fraction`: the intermediate targets of gradual pruning and
/// of progressive ADMM.
pub(crate) fn fraction_of(target: Target, fraction: f64) -> Target {
    Target::Sparsity((target.sparsity_value() * fraction).clamp(0.0, 1.0))
}

/// Zhu & Gupta's cubic ramp: the fraction of the final sparsity at progress `p` in [0, 1],
/// starting from `initial`.
pub(crate) fn cubic_ramp(initial: f64, p: f64) -> f64 {
    1.0 + (initial - 1.0) * (1.0 - p.clamp(0.0, 1.0)).powi(3)
}

/// Gradual magnitude pruning settings (steps count over the whole training run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradualConfig {
    /// Sparsity at the first update, as a fraction of each layer's final sparsity.
    pub initial_fraction: f64,
    /// Step of the first mask update.
    pub start_step: usize,
    /// Step at which the final sparsity is reached.
    pub end_step: usize,
    /// Steps between mask updates.
    pub every: usize,
}

/// The gradual-pruning hook: masks follow the cubic schedule; between updates pruned weights
/// and their gradients stay zero.
#[derive(Debug, Clone)]
pub struct GradualMagnitude {
    plan: PrunePlan,
    config: GradualConfig,
    masks: Masks,
    updates: Vec<(usize, f64)>,
}

/// A mask in a checkpointed hook state: the kept indices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SavedMask {
    path: String,
    len: usize,
    kept: Vec<u32>,
}

/// `masks` for a hook's checkpointed state.
pub(crate) fn save_masks(masks: &Masks) -> Vec<SavedMask> {
    masks
        .iter()
        .map(|(p, (_, m))| SavedMask {
            path: p.clone(),
            len: m.len(),
            kept: m.iter_ones().map(|i| i as u32).collect(),
        })
        .collect()
}

/// Masks back from a checkpointed state (`what` names the state in errors), with the schemes
/// of `plan`'s layers.
pub(crate) fn restore_masks(plan: &PrunePlan, saved: Vec<SavedMask>, what: &str) -> Result<Masks> {
    let schemes: BTreeMap<&str, &tessera_sparsity::Scheme> =
        plan.layers.iter().map(|l| (l.path.as_str(), &l.scheme)).collect();
    let mut masks = Masks::new();
    for m in saved {
        let scheme = schemes.get(m.path.as_str()).ok_or_else(|| {
            PruneError::config(what, format!("mask of unplanned layer `{}`", m.path))
        })?;
        let mask = Mask::from_indices(m.len, m.kept.into_iter().map(|i| i as usize))
            .map_err(PruneError::from)?;
        masks.insert(m.path, (*scheme).clone(), mask);
    }
    Ok(masks)
}

#[derive(Serialize, Deserialize)]
struct State {
    masks: Vec<SavedMask>,
    updates: Vec<(usize, f64)>,
}

impl GradualMagnitude {
    /// A schedule for `plan`.
    pub fn new(plan: PrunePlan, config: GradualConfig) -> Result<Self> {
        if config.end_step < config.start_step
            || config.every == 0
            || !(0.0..=1.0).contains(&config.initial_fraction)
        {
            return Err(PruneError::config(
                "gradual",
                "need start_step <= end_step, every >= 1, initial_fraction in [0, 1]",
            ));
        }
        Ok(GradualMagnitude { plan, config, masks: Masks::new(), updates: Vec::new() })
    }

    /// The fraction of the final sparsity in force at `step`.
    pub fn fraction_at(&self, step: usize) -> f64 {
        let c = &self.config;
        if step < c.start_step {
            return 0.0;
        }
        let span = (c.end_step - c.start_step).max(1) as f64;
        cubic_ramp(c.initial_fraction, (step - c.start_step) as f64 / span)
    }

    /// Mask updates so far: `(step, fraction of final sparsity)`.
    pub fn updates(&self) -> &[(usize, f64)] {
        &self.updates
    }

    /// The current masks.
    pub fn masks(&self) -> &Masks {
        &self.masks
    }

    fn update<M: Classifier>(&mut self, model: &M, step: usize) -> Result<()> {
        let f = self.fraction_at(step);
        let mut p = self.plan.clone();
        for l in &mut p.layers {
            l.target = fraction_of(l.target, f);
        }
        self.masks = hard_prune_masks(model, &p)?;
        self.updates.push((step, f));
        Ok(())
    }
}

impl<M: Classifier> Hooks<M> for GradualMagnitude {
    fn on_gradients(
        &mut self,
        model: &M,
        grads: &mut GradientsParams,
        _step: usize,
    ) -> tessera_models::Result<()> {
        mask_gradients(model, grads, &self.masks);
        Ok(())
    }

    fn after_step(&mut self, model: M, step: usize) -> tessera_models::Result<M> {
        let c = &self.config;
        let due = step >= c.start_step
            && step <= c.end_step + c.every
            && (step - c.start_step).is_multiple_of(c.every);
        if due && self.updates.last().is_none_or(|u| u.1 < 1.0) {
            self.update(&model, step)?;
        }
        Ok(apply_masks(model, &self.masks))
    }

    fn save_state(&self) -> tessera_models::Result<Option<Vec<u8>>> {
        serde_json::to_vec(&State { masks: save_masks(&self.masks), updates: self.updates.clone() })
            .map(Some)
            .map_err(|e| PruneError::config("gradual state", e).into())
    }

    fn load_state(&mut self, bytes: &[u8]) -> tessera_models::Result<()> {
        let state: State =
            serde_json::from_slice(bytes).map_err(|e| PruneError::config("gradual state", e))?;
        self.masks = restore_masks(&self.plan, state.masks, "gradual state")?;
        self.updates = state.updates;
        Ok(())
    }
}
