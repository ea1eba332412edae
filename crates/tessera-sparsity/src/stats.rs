//! Parameter and FLOP counts of a pruned layer, from its mask.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SparsityError};
use crate::geometry::Layer;
use crate::mask::Mask;

/// What a mask keeps of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerStats {
    /// Weights of the dense layer.
    pub params_total: usize,
    /// Weights kept.
    pub params_kept: usize,
    /// Dense FLOPs per inference (2 per MAC, `output_positions` positions).
    pub flops_dense: u64,
    /// FLOPs of the kept weights.
    pub flops_kept: u64,
}

impl LayerStats {
    /// Counts for `layer` pruned by `mask`.
    pub fn of(layer: &Layer, mask: &Mask) -> Result<Self> {
        let total = layer.geometry.len();
        if mask.len() != total {
            return Err(SparsityError::LengthMismatch {
                layer: layer.name.clone(),
                what: "mask",
                expected: total,
                found: mask.len(),
            });
        }
        let kept = mask.count();
        Ok(LayerStats {
            params_total: total,
            params_kept: kept,
            flops_dense: layer.dense_flops(),
            flops_kept: 2 * kept as u64 * layer.output_positions,
        })
    }

    /// Fraction of weights removed.
    pub fn sparsity(&self) -> f64 {
        1.0 - self.params_kept as f64 / self.params_total.max(1) as f64
    }

    /// Dense over kept weights (infinite when nothing is kept).
    pub fn compression(&self) -> f64 {
        self.params_total as f64 / self.params_kept as f64
    }

    /// Dense over kept FLOPs: the speed-up a perfect sparse kernel would reach.
    pub fn flop_reduction(&self) -> f64 {
        self.flops_dense as f64 / self.flops_kept as f64
    }

    /// Sums the counts of several layers (a model).
    pub fn total<'a>(layers: impl IntoIterator<Item = &'a LayerStats>) -> LayerStats {
        layers.into_iter().fold(
            LayerStats { params_total: 0, params_kept: 0, flops_dense: 0, flops_kept: 0 },
            |a, b| LayerStats {
                params_total: a.params_total + b.params_total,
                params_kept: a.params_kept + b.params_kept,
                flops_dense: a.flops_dense + b.flops_dense,
                flops_kept: a.flops_kept + b.flops_kept,
            },
        )
    }
}
