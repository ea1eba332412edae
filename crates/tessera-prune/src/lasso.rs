//! Reweighted group lasso (BLK-REW, RT3D, BSP): the penalty
//! `lambda * sum_g alpha_g ||W_g||_2` over the groups of each layer's scheme
//! ([`tessera_sparsity::Scheme::groups`]: blocks, block rows / columns, kernels, fragments),
//! with `alpha_g = 1 / (||W_g||^2 + eps)` refreshed every `reweight_every` epochs, so groups that
//! are already small get pushed to zero and large ones are barely touched.
//!
//! The penalty's gradient `lambda * alpha_g * W_g / ||W_g||` (summed over the groups that
//! contain a weight; zero for an all-zero group, the subgradient there) is added to the
//! weights' gradients explicitly. One public implementation computed the norm on detached
//! weights, so its penalty never reached the gradients; the tests here check the gradient
//! change against finite differences of the penalty itself.

use std::collections::BTreeMap;

use burn::optim::GradientsParams;
use serde::{Deserialize, Serialize};
use tessera_models::Classifier;
use tessera_models::train::{EpochMetrics, Hooks};
use tessera_models::weights::{add_to_gradients, read_weights};
use tessera_sparsity::Groups;

use crate::error::{PruneError, Result};
use crate::plan::PrunePlan;

/// Reweighted group lasso settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupLassoConfig {
    /// Penalty strength lambda.
    pub lambda: f64,
    /// eps in `alpha = 1 / (||W_g||^2 + eps)`.
    pub eps: f64,
    /// Epochs between reweightings.
    pub reweight_every: usize,
}

impl Default for GroupLassoConfig {
    fn default() -> Self {
        GroupLassoConfig { lambda: 1e-4, eps: 1e-3, reweight_every: 1 }
    }
}

/// One reweighting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LassoUpdate {
    /// After which epoch (`None`: initialization).
    pub epoch: Option<usize>,
    /// Penalty value before reweighting.
    pub penalty: f64,
    /// Fraction of groups whose norm is below 1e-3 of the layer's largest group norm.
    pub small_groups: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    alpha: Vec<Vec<f64>>,
    log: Vec<LassoUpdate>,
}

/// The reweighted group lasso hook.
#[derive(Debug, Clone)]
pub struct ReweightedGroupLasso {
    plan: PrunePlan,
    groups: Vec<Groups>,
    paths: Vec<String>,
    config: GroupLassoConfig,
    state: State,
}

fn group_norms(groups: &Groups, w: &[f32]) -> Vec<f64> {
    groups
        .iter()
        .map(|g| g.iter().map(|&i| f64::from(w[i as usize]).powi(2)).sum::<f64>().sqrt())
        .collect()
}

impl ReweightedGroupLasso {
    /// Starts from `model`'s weights (alpha from their group norms).
    pub fn new<M: Classifier>(
        model: &M,
        plan: PrunePlan,
        config: GroupLassoConfig,
    ) -> Result<Self> {
        if !(config.lambda >= 0.0 && config.eps > 0.0 && config.reweight_every > 0) {
            return Err(PruneError::config(
                "group_lasso",
                "need lambda >= 0, eps > 0, reweight_every >= 1",
            ));
        }
        let groups = plan
            .layers
            .iter()
            .map(|l| l.scheme.groups(&l.layer, l.tiling))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let paths = plan.paths();
        let mut me = ReweightedGroupLasso {
            plan,
            groups,
            paths,
            config,
            state: State { alpha: Vec::new(), log: Vec::new() },
        };
        let weights = read_weights(model, &me.paths)?;
        me.reweight(&weights, None)?;
        Ok(me)
    }

    /// The penalty `lambda * sum_g alpha_g ||W_g||` at `weights`.
    pub fn penalty(&self, weights: &BTreeMap<String, Vec<f32>>) -> Result<f64> {
        let mut total = 0.0;
        for ((l, g), a) in self.plan.layers.iter().zip(&self.groups).zip(&self.state.alpha) {
            let w = weights.get(&l.path).ok_or_else(|| PruneError::Layer {
                layer: l.path.clone(),
                reason: "no weights".into(),
            })?;
            total += group_norms(g, w).iter().zip(a).map(|(n, a)| a * n).sum::<f64>();
        }
        Ok(self.config.lambda * total)
    }

    /// The penalty's gradient per path.
    pub fn penalty_gradient(
        &self,
        weights: &BTreeMap<String, Vec<f32>>,
    ) -> Result<BTreeMap<String, Vec<f32>>> {
        let mut out = BTreeMap::new();
        for ((l, g), a) in self.plan.layers.iter().zip(&self.groups).zip(&self.state.alpha) {
            let w = weights.get(&l.path).ok_or_else(|| PruneError::Layer {
                layer: l.path.clone(),
                reason: "no weights".into(),
            })?;
            let mut grad = vec![0.0f64; w.len()];
            for ((idx, n), a) in g.iter().zip(group_norms(g, w)).zip(a) {
                if n > 0.0 {
                    let scale = self.config.lambda * a / n;
                    for &i in idx {
                        grad[i as usize] += scale * f64::from(w[i as usize]);
                    }
                }
            }
            out.insert(l.path.clone(), grad.into_iter().map(|v| v as f32).collect());
        }
        Ok(out)
    }

    /// Refreshes `alpha_g = 1 / (||W_g||^2 + eps)` at `weights`, logging the penalty first.
    pub fn reweight(
        &mut self,
        weights: &BTreeMap<String, Vec<f32>>,
        epoch: Option<usize>,
    ) -> Result<()> {
        let penalty = if self.state.alpha.is_empty() { 0.0 } else { self.penalty(weights)? };
        let (mut small, mut total) = (0usize, 0usize);
        let mut alpha = Vec::new();
        for (l, g) in self.plan.layers.iter().zip(&self.groups) {
            let w = weights.get(&l.path).ok_or_else(|| PruneError::Layer {
                layer: l.path.clone(),
                reason: "no weights".into(),
            })?;
            let norms = group_norms(g, w);
            let top = norms.iter().copied().fold(0.0, f64::max);
            small += norms.iter().filter(|&&n| n <= 1e-3 * top).count();
            total += norms.len();
            alpha.push(norms.iter().map(|n| 1.0 / (n * n + self.config.eps)).collect());
        }
        self.state.alpha = alpha;
        self.state.log.push(LassoUpdate {
            epoch,
            penalty,
            small_groups: small as f64 / total.max(1) as f64,
        });
        Ok(())
    }

    /// Every reweighting so far.
    pub fn log(&self) -> &[LassoUpdate] {
        &self.state.log
    }

    /// The plan it regularizes toward.
    pub fn plan(&self) -> &PrunePlan {
        &self.plan
    }
}

impl<M: Classifier> Hooks<M> for ReweightedGroupLasso {
    fn on_gradients(
        &mut self,
        model: &M,
        grads: &mut GradientsParams,
        _step: usize,
    ) -> tessera_models::Result<()> {
        let weights = read_weights(model, &self.paths)?;
        let g = self.penalty_gradient(&weights)?;
        add_to_gradients(model, grads, &g)
    }

    fn on_epoch_end(&mut self, model: M, metrics: &EpochMetrics) -> tessera_models::Result<M> {
        if (metrics.epoch + 1).is_multiple_of(self.config.reweight_every) {
            let weights = read_weights(&model, &self.paths)?;
            self.reweight(&weights, Some(metrics.epoch))?;
        }
        Ok(model)
    }

    fn save_state(&self) -> tessera_models::Result<Option<Vec<u8>>> {
        serde_json::to_vec(&self.state)
            .map(Some)
            .map_err(|e| PruneError::config("group lasso state", e).into())
    }

    fn load_state(&mut self, bytes: &[u8]) -> tessera_models::Result<()> {
        let state: State = serde_json::from_slice(bytes)
            .map_err(|e| PruneError::config("group lasso state", e))?;
        if state.alpha.len() != self.groups.len()
            || state.alpha.iter().zip(&self.groups).any(|(a, g)| a.len() != g.len())
        {
            return Err(PruneError::config(
                "group lasso state",
                "the checkpoint's state does not fit this plan",
            )
            .into());
        }
        self.state = state;
        Ok(())
    }
}
