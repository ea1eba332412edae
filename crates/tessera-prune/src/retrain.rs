//! Constraints that masked retraining must keep besides the masks: the signs of polarized
//! (FORMS) fragments. A mask alone lets a kept weight change sign during retraining, which
//! would break the crossbar's one-sign-per-fragment layout; [`KeepSigns`] projects onto the
//! fixed-sign set after every step (clamping a weight that crossed zero to zero), which is
//! the Euclidean projection for fixed signs.

use std::collections::BTreeMap;

use tessera_models::train::Hooks;
use tessera_models::weights::{prunable_weights, read_weights, set_weights};
use tessera_models::{Classifier, Masks};
use tessera_sparsity::{Scheme, fragment_signs};

use crate::error::Result;

/// Per weight path, the sign each entry must keep: `+1` (>= 0), `-1` (<= 0).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeepSigns {
    signs: BTreeMap<String, Vec<i8>>,
}

impl KeepSigns {
    /// The fragment signs of every polarized weight of `masks`, read from `model`'s current
    /// (polarized) weights for inputs of `input` shape. Empty when nothing is polarized.
    pub fn new<M: Classifier>(model: &M, masks: &Masks, input: [usize; 4]) -> Result<Self> {
        let mut signs = BTreeMap::new();
        let polarized: Vec<(String, usize, tessera_sparsity::SignRule)> = masks
            .iter()
            .filter_map(|(p, (s, _))| match s {
                Scheme::Polarized(ps) => Some((p.clone(), ps.m, ps.rule)),
                _ => None,
            })
            .collect();
        if polarized.is_empty() {
            return Ok(KeepSigns { signs });
        }
        let weights = prunable_weights(model, input)?;
        for (path, m, rule) in polarized {
            let Some(w) = weights.iter().find(|w| w.path == path) else { continue };
            let frag_signs = fragment_signs(&w.layer, &w.values, m, rule)?;
            let cols = w.layer.geometry.cols();
            let per_row = cols.div_ceil(m);
            let s: Vec<i8> = (0..w.values.len())
                .map(|i| if frag_signs[(i / cols) * per_row + (i % cols) / m] { 1 } else { -1 })
                .collect();
            signs.insert(path, s);
        }
        Ok(KeepSigns { signs })
    }

    /// Whether any weight is sign-constrained.
    pub fn is_empty(&self) -> bool {
        self.signs.is_empty()
    }
}

impl<M: Classifier> Hooks<M> for KeepSigns {
    fn after_step(&mut self, model: M, _step: usize) -> tessera_models::Result<M> {
        if self.signs.is_empty() {
            return Ok(model);
        }
        let paths: Vec<String> = self.signs.keys().cloned().collect();
        let mut weights = read_weights(&model, &paths)?;
        for (path, w) in &mut weights {
            for (v, &s) in w.iter_mut().zip(&self.signs[path]) {
                if (s > 0 && *v < 0.0) || (s < 0 && *v > 0.0) {
                    *v = 0.0;
                }
            }
        }
        set_weights(model, &weights)
    }
}
