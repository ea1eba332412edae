//! Which weight gets which scheme and target: a [`SparsityConfig`] resolved against a model's
//! prunable weights, and the projections every method shares.
//!
//! Layers whose rule keeps everything (target `0` / `1x`) stay dense and are not in the plan.
//! A pattern scheme without a library gets one library extracted over every 3x3 layer its rule
//! covers (PatDNN: the K most frequent top-4 shapes of the pretrained model), fixed from then on
//! so ADMM's Z-steps and the final hard pruning agree on the patterns.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_models::Masks;
use tessera_models::weights::NamedWeight;
use tessera_sparsity::{
    Layer, LayerStats, PatternLibrary, PatternScheme, PolarizedScheme, Scheme, SparsityConfig,
    Target, Tiling,
};

use crate::error::{PruneError, Result};

/// One pruned weight's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPlan {
    /// Weight path (burn module path = IR parameter name).
    pub path: String,
    /// Its geometry.
    pub layer: Layer,
    /// The scheme its mask will have.
    pub scheme: Scheme,
    /// How much to keep.
    pub target: Target,
    /// Padding policy for schemes whose blocks do not divide the layer.
    pub tiling: Tiling,
}

/// One constraint set of ADMM: the weights must have `scheme`'s structure at `target`.
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    /// The structure.
    pub scheme: Scheme,
    /// The budget.
    pub target: Target,
    /// Padding policy.
    pub tiling: Tiling,
}

impl Constraint {
    /// Euclidean projection of `values` onto this set.
    pub fn project(&self, layer: &Layer, values: &[f32]) -> Result<Vec<f32>> {
        Ok(self.scheme.project_with(layer, values, self.target, self.tiling)?.values)
    }
}

impl LayerPlan {
    /// The ADMM constraint sets of this layer. Composite schemes split into the sets they
    /// intersect (extended ADMM, one auxiliary/dual pair per set): pattern + connectivity at
    /// rate `r` becomes "4-tap patterns" and "connectivity at `r / 2.25`"; polarization over a
    /// base scheme becomes "sign-consistent fragments" and the base scheme at the target.
    pub fn constraints(&self) -> Vec<Constraint> {
        let c = |scheme: Scheme, target| Constraint { scheme, target, tiling: self.tiling };
        match &self.scheme {
            Scheme::Pattern(p) if p.connectivity => {
                let rate = 1.0 / self.target.density().max(f64::MIN_POSITIVE);
                let pattern = Scheme::Pattern(PatternScheme { connectivity: false, ..p.clone() });
                if rate <= 2.25 * (1.0 + 1e-9) {
                    vec![c(self.scheme.clone(), self.target)]
                } else {
                    vec![
                        c(pattern, Target::DENSE),
                        c(Scheme::Connectivity, Target::Compression(rate / 2.25)),
                    ]
                }
            }
            Scheme::Polarized(p) => match &p.base {
                Some(base) => vec![
                    c(
                        Scheme::Polarized(PolarizedScheme { base: None, ..p.clone() }),
                        Target::DENSE,
                    ),
                    c((**base).clone(), self.target),
                ],
                None => vec![c(self.scheme.clone(), self.target)],
            },
            _ => vec![c(self.scheme.clone(), self.target)],
        }
    }

    /// The hard-pruning projection of `values` (the final mask and values).
    pub fn project(&self, values: &[f32]) -> Result<tessera_sparsity::Projection> {
        Ok(self.scheme.project_with(&self.layer, values, self.target, self.tiling)?)
    }
}

/// The whole model's plan.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PrunePlan {
    /// Pruned weights, in execution order.
    pub layers: Vec<LayerPlan>,
}

/// Per-layer and total counts of a plan applied to masks (for reports).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSummary {
    /// Per weight: path, scheme, target, kept fraction.
    pub layers: Vec<(String, String, String, f64)>,
    /// Totals over the pruned weights.
    pub pruned_total: LayerStats,
}

impl PrunePlan {
    /// Resolves `config` against `weights` (from [`tessera_models::weights::prunable_weights`]
    /// of the pretrained model: pattern libraries are extracted from these values).
    pub fn resolve(config: &SparsityConfig, weights: &[NamedWeight]) -> Result<Self> {
        let mut layers = Vec::new();
        for w in weights {
            let rule = config.rule_for(&w.path)?;
            if rule.target.density() >= 1.0 {
                continue;
            }
            rule.scheme
                .check_applicable(&w.layer, rule.tiling())
                .map_err(|e| PruneError::Layer { layer: w.path.clone(), reason: e.to_string() })?;
            layers.push(LayerPlan {
                path: w.path.clone(),
                layer: w.layer.clone(),
                scheme: rule.scheme.clone(),
                target: rule.target,
                tiling: rule.tiling(),
            });
        }
        // One pattern library per distinct pattern scheme, over the layers that use it.
        let mut libraries: BTreeMap<String, PatternLibrary> = BTreeMap::new();
        for l in &layers {
            let Some(p) = pattern_without_library(&l.scheme) else { continue };
            let key = l.scheme.to_string();
            if libraries.contains_key(&key) {
                continue;
            }
            let members: Vec<(&Layer, &[f32])> = layers
                .iter()
                .filter(|m| m.scheme.to_string() == key)
                .filter_map(|m| {
                    weights
                        .iter()
                        .find(|w| w.path == m.path)
                        .map(|w| (&m.layer, w.values.as_slice()))
                })
                .collect();
            libraries.insert(key, PatternLibrary::extract(p.k, members)?);
        }
        for l in &mut layers {
            if let Some(lib) = libraries.get(&l.scheme.to_string()) {
                l.scheme = with_library(&l.scheme, lib);
            }
        }
        if layers.is_empty() {
            return Err(PruneError::config(
                "sparsity config",
                "prunes no layer: every rule keeps everything",
            ));
        }
        Ok(PrunePlan { layers })
    }

    /// The pruned weights' paths.
    pub fn paths(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.path.clone()).collect()
    }

    /// Hard pruning: every layer's projection of `weights` (GEMM view, by path), as masks.
    pub fn masks(&self, weights: &BTreeMap<String, Vec<f32>>) -> Result<Masks> {
        let mut masks = Masks::new();
        for l in &self.layers {
            let w = weights.get(&l.path).ok_or_else(|| PruneError::Layer {
                layer: l.path.clone(),
                reason: "no weights given".into(),
            })?;
            masks.insert(l.path.clone(), l.scheme.clone(), l.project(w)?.mask);
        }
        Ok(masks)
    }

    /// Kept fractions and totals of `masks` over this plan.
    pub fn summary(&self, masks: &Masks) -> Result<PlanSummary> {
        let mut rows = Vec::new();
        let mut stats = Vec::new();
        for l in &self.layers {
            let (_, m) = masks.get(&l.path).ok_or_else(|| PruneError::Layer {
                layer: l.path.clone(),
                reason: "no mask".into(),
            })?;
            rows.push((l.path.clone(), l.scheme.to_string(), l.target.to_string(), m.density()));
            stats.push(LayerStats::of(&l.layer, m)?);
        }
        Ok(PlanSummary { layers: rows, pruned_total: LayerStats::total(stats.iter()) })
    }
}

fn pattern_without_library(s: &Scheme) -> Option<&PatternScheme> {
    match s {
        Scheme::Pattern(p) if p.library.is_none() => Some(p),
        Scheme::Polarized(PolarizedScheme { base: Some(b), .. }) => pattern_without_library(b),
        _ => None,
    }
}

fn with_library(s: &Scheme, lib: &PatternLibrary) -> Scheme {
    match s {
        Scheme::Pattern(p) if p.library.is_none() => {
            Scheme::Pattern(PatternScheme { library: Some(lib.clone()), ..p.clone() })
        }
        Scheme::Polarized(p) => match &p.base {
            Some(b) => Scheme::Polarized(PolarizedScheme {
                base: Some(Box::new(with_library(b, lib))),
                ..p.clone()
            }),
            None => s.clone(),
        },
        _ => s.clone(),
    }
}
