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

use std::collections::BTreeMap;

use burn::optim::GradientsParams;
use serde::{Deserialize, Serialize};
use tessera_models::train::{EpochMetrics, Hooks};
use tessera_models::weights::{add_to_gradients, apply_masks, mask_gradients, read_weights};
use tessera_models::{Classifier, Masks};

use crate::error::{PruneError, Result};
use crate::magnitude::{SavedMask, hard_prune_masks, restore_masks, save_masks};
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
        Ok(())
    }
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SetState {
    z: Vec<f32>,
    u: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    rho: f64,
    /// Per layer (plan order), per constraint set.
    sets: Vec<Vec<SetState>>,
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
        let paths = plan.paths();
        let weights = read_weights(model, &paths)?;
        let constraints: Vec<Vec<Constraint>> =
            plan.layers.iter().map(|l| l.constraints()).collect();
        let mut sets = Vec::new();
        let mut residuals = Vec::new();
        for (l, cs) in plan.layers.iter().zip(&constraints) {
            let w = &weights[&l.path];
            let mut layer_sets = Vec::new();
            for c in cs {
                let z = c.project(&l.layer, w)?;
                residuals.push(residual(&l.path, c, w, &z, None, config.rho));
                layer_sets.push(SetState { u: vec![0.0; z.len()], z });
            }
            sets.push(layer_sets);
        }
        let log = vec![AdmmUpdate { epoch: None, step: None, rho: config.rho, residuals }];
        Ok(Admm {
            plan,
            constraints,
            paths,
            state: State { rho: config.rho, sets, log, hard_pruned: None },
            config,
            hard_prune_step: None,
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
        self
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

    /// The penalty `sum rho/2 ||W - Z + U||^2` at `weights`.
    pub fn penalty(&self, weights: &BTreeMap<String, Vec<f32>>) -> f64 {
        let mut total = 0.0;
        for (l, sets) in self.plan.layers.iter().zip(&self.state.sets) {
            let Some(w) = weights.get(&l.path) else { continue };
            for s in sets {
                total += w
                    .iter()
                    .zip(&s.z)
                    .zip(&s.u)
                    .map(|((&w, &z), &u)| (f64::from(w) - f64::from(z) + f64::from(u)).powi(2))
                    .sum::<f64>();
            }
        }
        0.5 * self.state.rho * total
    }

    /// The penalty's gradient `sum_c rho (W - Z_c + U_c)` per path.
    pub fn penalty_gradient(
        &self,
        weights: &BTreeMap<String, Vec<f32>>,
    ) -> Result<BTreeMap<String, Vec<f32>>> {
        let rho = self.state.rho as f32;
        let mut out = BTreeMap::new();
        for (l, sets) in self.plan.layers.iter().zip(&self.state.sets) {
            let w = weights.get(&l.path).ok_or_else(|| PruneError::Layer {
                layer: l.path.clone(),
                reason: "no weights".into(),
            })?;
            let mut g = vec![0.0f32; w.len()];
            for s in sets {
                for (((g, &w), &z), &u) in g.iter_mut().zip(w).zip(&s.z).zip(&s.u) {
                    *g += rho * (w - z + u);
                }
            }
            out.insert(l.path.clone(), g);
        }
        Ok(out)
    }

    /// The Z- and U-steps at `weights`, logged as after `epoch`; then rho grows.
    pub fn update(
        &mut self,
        weights: &BTreeMap<String, Vec<f32>>,
        epoch: Option<usize>,
    ) -> Result<&AdmmUpdate> {
        self.update_at(weights, epoch, None)
    }

    fn update_at(
        &mut self,
        weights: &BTreeMap<String, Vec<f32>>,
        epoch: Option<usize>,
        step: Option<usize>,
    ) -> Result<&AdmmUpdate> {
        let rho = self.state.rho;
        let mut residuals = Vec::new();
        for ((l, cs), sets) in
            self.plan.layers.iter().zip(&self.constraints).zip(&mut self.state.sets)
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
                    *u += w - z;
                }
                s.z = z;
            }
        }
        self.state.log.push(AdmmUpdate { epoch, step, rho, residuals });
        let next = (rho * self.config.rho_growth).min(self.config.rho_max);
        // U is the dual scaled by 1/rho: keep the unscaled dual rho*U when rho changes
        // (Boyd et al. 2011, §3.4.1), else every growth step multiplies the dual's pull.
        let keep = (rho / next) as f32;
        for s in self.state.sets.iter_mut().flatten() {
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
        let state: State =
            serde_json::from_slice(bytes).map_err(|e| PruneError::config("admm state", e))?;
        let shape_ok = state.sets.len() == self.state.sets.len()
            && state.sets.iter().zip(&self.state.sets).all(|(a, b)| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.z.len() == y.z.len())
            });
        if !shape_ok {
            return Err(PruneError::config(
                "admm state",
                "the checkpoint's ADMM state does not fit this plan",
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
        for bad in [0.0, -0.5, 1.5, f64::NAN] {
            let e = err(AdmmConfig { hard_prune_at: Some(bad), ..AdmmConfig::default() });
            assert!(e.contains("admm.hard_prune_at"), "{e}");
        }
    }
}
