//! Latency as the search sees it: per layer, the milliseconds of each of its options, plus
//! the time of everything that is not a searched layer.
//!
//! The search crate does not compile or time anything itself (it depends on tessera-sparsity
//! only). The caller fills a [`LatencyTable`] from measurements (tessera-experiments times the
//! compiled plan's steps) or from a model, and the rule-based mapper and the NPAS loop price
//! candidates with it. Network latency is the sum of the layers' times and the rest, which
//! misses cross-layer effects; the experiments measure the end-to-end latency of the final
//! candidates.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SearchError};
use crate::space::SearchSpace;

/// Milliseconds of each option of each layer of one [`SearchSpace`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyTable {
    /// Milliseconds of everything outside the searched layers (pools, adds, unsearched ops).
    pub other_ms: f64,
    /// `per_layer[l][o]`: milliseconds of layer `l` at option `o`.
    pub per_layer: Vec<Vec<f64>>,
}

impl LatencyTable {
    /// Checks that the table prices exactly `space`'s options with finite, non-negative times.
    pub fn check(&self, space: &SearchSpace) -> Result<()> {
        if self.per_layer.len() != space.len() {
            return Err(SearchError::config(
                "latency table",
                format!("{} layers priced, the space has {}", self.per_layer.len(), space.len()),
            ));
        }
        for (l, row) in self.per_layer.iter().enumerate() {
            let name = &space.layers()[l].layer.name;
            if row.len() != space.options(l).len() {
                return Err(SearchError::Layer {
                    layer: name.clone(),
                    reason: format!(
                        "latency table prices {} options, the space has {}",
                        row.len(),
                        space.options(l).len()
                    ),
                });
            }
            if let Some(bad) = row.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
                return Err(SearchError::Layer {
                    layer: name.clone(),
                    reason: format!("latency {bad} ms is not a finite non-negative time"),
                });
            }
        }
        if !(self.other_ms.is_finite() && self.other_ms >= 0.0) {
            return Err(SearchError::config("latency table", "other_ms must be finite, >= 0"));
        }
        Ok(())
    }

    /// Milliseconds of layer `l` at option `o`.
    pub fn layer_ms(&self, l: usize, o: usize) -> f64 {
        self.per_layer[l][o]
    }

    /// Predicted milliseconds of a candidate (checked against the same space).
    pub fn total_ms(&self, candidate: &[usize]) -> f64 {
        self.other_ms
            + candidate.iter().enumerate().map(|(l, &o)| self.per_layer[l][o]).sum::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::{LayerRole, SearchLayer, SpaceSpec};
    use tessera_sparsity::Layer;

    #[test]
    fn totals_sum_the_layers_and_mismatches_are_named() {
        let space = SearchSpace::new(
            vec![SearchLayer {
                layer: Layer::linear("fc1.weight", 16, 16).unwrap(),
                role: LayerRole::Body,
                skip_unit: None,
            }],
            &SpaceSpec {
                schemes: vec!["unstructured".parse().unwrap()],
                rates: vec![2.0, 4.0],
                dense_roles: vec![],
                pad: false,
                skip: false,
                separable: false,
            },
        )
        .unwrap();
        let t = LatencyTable { other_ms: 0.5, per_layer: vec![vec![1.0, 0.6, 0.4]] };
        t.check(&space).unwrap();
        assert_eq!(t.total_ms(&[2]), 0.9);
        let short = LatencyTable { other_ms: 0.5, per_layer: vec![vec![1.0, 0.6]] };
        let e = short.check(&space).unwrap_err().to_string();
        assert!(e.contains("fc1.weight") && e.contains("prices 2 options"), "{e}");
        let neg = LatencyTable { other_ms: 0.5, per_layer: vec![vec![1.0, -0.6, 0.4]] };
        assert!(neg.check(&space).is_err());
    }
}
