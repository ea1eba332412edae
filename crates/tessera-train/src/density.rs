//! Per-layer densities for a whole-model sparsity: uniform (MEST, SET) or Erdős–Rényi-Kernel
//! (RigL's ERK, solved exactly as `rigl/sparse_utils.py` does).

use serde::{Deserialize, Serialize};
use tessera_sparsity::{Layer, LayerGeometry};

use crate::error::{Result, TrainError};

/// How a whole-model sparsity is spread over the sparse layers.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Distribution {
    /// Every sparse layer at the target sparsity (MEST's yaml files, SET).
    #[default]
    Uniform,
    /// Erdős–Rényi-Kernel: density proportional to `(sum of dims / product of dims)^power`,
    /// scaled so the kept total matches the target; layers that would exceed density 1 are
    /// made dense and the scale is solved again (RigL, `erk_power_scale` = `power`, 1 there).
    Erk {
        /// Exponent on the raw ERK ratio (RigL default 1.0).
        power: f64,
    },
}

impl Distribution {
    /// ERK with RigL's default power 1.
    pub fn erk() -> Self {
        Distribution::Erk { power: 1.0 }
    }
}

/// The weight tensor's dimensions as RigL sees them: `[out, in/groups, kh, kw]` for
/// convolutions, `[out, in]` for linear layers.
fn dims(g: &LayerGeometry) -> Vec<usize> {
    match *g {
        LayerGeometry::Linear { out_features, in_features } => vec![out_features, in_features],
        LayerGeometry::Conv2d { out_channels, in_channels, kh, kw, groups } => {
            vec![out_channels, in_channels / groups.max(1), kh, kw]
        }
        LayerGeometry::Conv3d { out_channels, in_channels, kt, kh, kw } => {
            vec![out_channels, in_channels, kt, kh, kw]
        }
    }
}

/// The density of every layer (in order) for a whole-model `sparsity` over `layers`.
/// Uniform gives every layer `1 - sparsity`; ERK keeps the same total
/// (`sum density_l * n_l = (1 - sparsity) * sum n_l`) with layer-dependent densities.
pub fn layer_densities(
    layers: &[Layer],
    sparsity: f64,
    distribution: Distribution,
) -> Result<Vec<f64>> {
    if !(0.0..1.0).contains(&sparsity) {
        return Err(TrainError::config("sparsity", format!("must be in [0, 1), got {sparsity}")));
    }
    let density = 1.0 - sparsity;
    match distribution {
        Distribution::Uniform => Ok(vec![density; layers.len()]),
        Distribution::Erk { power } => {
            if !(power.is_finite() && power >= 0.0) {
                return Err(TrainError::config("erk power", format!("must be >= 0, got {power}")));
            }
            let n: Vec<f64> = layers.iter().map(|l| l.geometry.len() as f64).collect();
            let raw: Vec<f64> = layers
                .iter()
                .map(|l| {
                    let d = dims(&l.geometry);
                    let sum: usize = d.iter().sum();
                    let prod: usize = d.iter().product();
                    (sum as f64 / prod.max(1) as f64).powf(power)
                })
                .collect();
            let mut dense = vec![false; layers.len()];
            loop {
                // Kept weights the non-dense layers must share: the target total minus what
                // the dense layers keep beyond the target density.
                let mut rhs = 0.0;
                let mut divisor = 0.0;
                for i in 0..layers.len() {
                    if dense[i] {
                        rhs -= n[i] * sparsity;
                    } else {
                        rhs += n[i] * density;
                        divisor += raw[i] * n[i];
                    }
                }
                if divisor <= 0.0 {
                    // Every layer is dense: only possible at sparsity 0.
                    return Ok(vec![1.0; layers.len()]);
                }
                let eps = rhs / divisor;
                let max_raw = (0..layers.len())
                    .filter(|&i| !dense[i])
                    .map(|i| raw[i])
                    .fold(f64::NEG_INFINITY, f64::max);
                if max_raw * eps > 1.0 {
                    for i in 0..layers.len() {
                        if !dense[i] && raw[i] == max_raw {
                            dense[i] = true;
                        }
                    }
                } else {
                    return Ok((0..layers.len())
                        .map(|i| if dense[i] { 1.0 } else { eps * raw[i] })
                        .collect());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(layers: &[Layer], d: &[f64]) -> f64 {
        layers.iter().zip(d).map(|(l, d)| l.geometry.len() as f64 * d).sum()
    }

    #[test]
    fn uniform_gives_every_layer_the_target() -> anyhow::Result<()> {
        let layers = [Layer::conv2d("a", 16, 3, 3, 3)?, Layer::linear("b", 10, 64)?];
        assert_eq!(
            layer_densities(&layers, 0.9, Distribution::Uniform)?,
            vec![0.09999999999999998; 2]
        );
        Ok(())
    }

    /// Hand-computed ERK: a = conv 4x2x3x3 (72 weights, raw (4+2+3+3)/72 = 1/6),
    /// b = linear 10x20 (200 weights, raw 30/200 = 0.15). At sparsity 0.5 the kept total is
    /// 136 = eps (72/6 + 200 * 0.15) = 42 eps, eps = 136/42, densities 0.5397 and 0.4857.
    #[test]
    fn erk_matches_a_hand_computed_case() -> anyhow::Result<()> {
        let layers = [Layer::conv2d("a", 4, 2, 3, 3)?, Layer::linear("b", 10, 20)?];
        let d = layer_densities(&layers, 0.5, Distribution::erk())?;
        let eps = 136.0 / 42.0;
        assert!((d[0] - eps / 6.0).abs() < 1e-12, "{d:?}");
        assert!((d[1] - eps * 0.15).abs() < 1e-12, "{d:?}");
        assert!((kept(&layers, &d) - 136.0).abs() < 1e-9);
        Ok(())
    }

    /// At 50% the classifier (raw 74/640) and then the stem (raw 25/432) would exceed
    /// density 1: both become dense, one per round as in RigL's loop, and the big layer keeps
    /// the rest: (0.5 x 37936 - 432 - 640) / 36864.
    #[test]
    fn erk_makes_overfull_layers_dense_and_keeps_the_total() -> anyhow::Result<()> {
        let layers = [
            Layer::conv2d("stem", 16, 3, 3, 3)?,
            Layer::conv2d("mid", 64, 64, 3, 3)?,
            Layer::linear("fc", 10, 64)?,
        ];
        let d = layer_densities(&layers, 0.5, Distribution::erk())?;
        assert_eq!((d[0], d[2]), (1.0, 1.0), "{d:?}");
        assert!((d[1] - (0.5 * 37936.0 - 432.0 - 640.0) / 36864.0).abs() < 1e-12, "{d:?}");
        assert!((kept(&layers, &d) - 0.5 * 37936.0).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn rejects_sparsity_out_of_range() -> anyhow::Result<()> {
        let layers = [Layer::linear("b", 10, 20)?];
        assert!(layer_densities(&layers, 1.0, Distribution::Uniform).is_err());
        assert!(layer_densities(&layers, -0.1, Distribution::erk()).is_err());
        Ok(())
    }
}
