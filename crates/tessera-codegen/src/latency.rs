//! The latency model: per-layer time predicted from work and traffic, calibrated on this
//! machine, so a search can price a (shape, scheme, rate) without compiling and timing it.
//!
//! For each kernel family (kernel and storage format, as [`crate::LayerReport`] names them)
//! `ms = c0 + c1 * kept MACs + c2 * input floats + c3 * output floats + c4 * tiles`, the
//! coefficients fitted by non-negative least squares on measured layers (`c1` prices the
//! arithmetic at the family's efficiency; `c2` the input packing; `c3` the output stores; `c4`
//! the per-tile loop, 8 filters x 32 positions, which dominates small feature maps; `c0` the
//! call). Depthwise convolutions are their own family (one filter per group: an order of
//! magnitude slower per MAC than the rest of the dense kernel's layers). Fitting
//! is on relative error (each sample's equation divided by its time), so small layers count as
//! much as large ones. A family with too few samples borrows the dense direct kernel's fit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_kernels::ConvShape;
use tessera_sparsity::Scheme;

/// One measured layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySample {
    /// Kernel family, `kernel / format` (e.g. `row-groups / block-punched`).
    pub family: String,
    /// Multiply-adds with the kept weights, per sample.
    pub kept_macs: f64,
    /// Input floats per sample.
    pub input_floats: f64,
    /// Output floats per sample.
    pub output_floats: f64,
    /// Register tiles per sample (groups of 8 filters x blocks of 32 positions).
    pub tiles: f64,
    /// Measured milliseconds.
    pub ms: f64,
}

/// Fitted coefficients of one family.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Coefficients {
    /// Milliseconds per call.
    pub per_call: f64,
    /// Milliseconds per million kept MACs.
    pub per_mmac: f64,
    /// Milliseconds per million input floats.
    pub per_minput: f64,
    /// Milliseconds per million output floats.
    pub per_moutput: f64,
    /// Milliseconds per thousand tiles.
    pub per_ktile: f64,
    /// Samples fitted.
    pub samples: usize,
}

impl Coefficients {
    fn predict(&self, s: &LatencySample) -> f64 {
        self.per_call
            + self.per_mmac * s.kept_macs * 1e-6
            + self.per_minput * s.input_floats * 1e-6
            + self.per_moutput * s.output_floats * 1e-6
            + self.per_ktile * s.tiles * 1e-3
    }
}

/// The calibrated model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyModel {
    /// Coefficients by family.
    pub families: BTreeMap<String, Coefficients>,
}

/// Fewest samples a family needs for its own fit.
const MIN_SAMPLES: usize = 6;

/// The family every unknown one falls back to.
pub const FALLBACK_FAMILY: &str = "direct / dense";

impl LatencyModel {
    /// Fits every family with enough samples.
    pub fn fit(samples: &[LatencySample]) -> LatencyModel {
        let mut by_family: BTreeMap<&str, Vec<&LatencySample>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.ms > 0.0 && s.ms.is_finite()) {
            by_family.entry(s.family.as_str()).or_default().push(s);
        }
        let mut families = BTreeMap::new();
        for (family, group) in by_family {
            if group.len() >= MIN_SAMPLES {
                families.insert(family.to_string(), fit_family(&group));
            }
        }
        LatencyModel { families }
    }

    /// Predicted milliseconds of a layer with `sample`'s family and features (`ms` is
    /// ignored; the fallback family's fit when this family has none; `None` when neither was
    /// calibrated).
    pub fn predict(&self, sample: &LatencySample) -> Option<f64> {
        let c = self.families.get(&sample.family).or_else(|| self.families.get(FALLBACK_FAMILY))?;
        Some(c.predict(sample))
    }

    /// Predicted milliseconds of a convolution of `shape` pruned by `scheme` to `rate`
    /// (compression, 1 = dense), with the kernel the compiler's table gives that scheme.
    pub fn predict_conv(
        &self,
        shape: &ConvShape,
        scheme: Option<&Scheme>,
        rate: f64,
    ) -> Option<f64> {
        self.predict(&conv_sample(shape, scheme, rate, 0.0))
    }

    /// Absolute relative errors `|predicted - measured| / measured` of every sample the model
    /// can price.
    pub fn errors(&self, samples: &[LatencySample]) -> Vec<f64> {
        samples
            .iter()
            .filter(|s| s.ms > 0.0)
            .filter_map(|s| self.predict(s).map(|p| (p - s.ms).abs() / s.ms))
            .collect()
    }
}

/// Register tiles of a layer: groups of 8 output rows x blocks of 32 positions.
pub fn tiles(out_channels: usize, positions: usize) -> f64 {
    (out_channels.div_ceil(8) * positions.div_ceil(32)) as f64
}

/// The features of a convolution of `shape` pruned by `scheme` to compression `rate`, with
/// the family the compiler's table gives it (`ms` as given).
pub fn conv_sample(
    shape: &ConvShape,
    scheme: Option<&Scheme>,
    rate: f64,
    ms: f64,
) -> LatencySample {
    LatencySample {
        family: family_of(scheme, shape),
        kept_macs: (shape.flops() / 2) as f64 / rate.max(1.0),
        input_floats: (shape.in_channels * shape.input_plane()) as f64,
        output_floats: (shape.out_channels * shape.output_positions()) as f64,
        tiles: tiles(shape.out_channels, shape.output_positions()),
        ms,
    }
}

/// The kernel family the compiler's table (without tuning) gives a convolution pruned by
/// `scheme`.
pub fn family_of(scheme: Option<&Scheme>, shape: &ConvShape) -> String {
    let (kernel, format) = match scheme {
        None if shape.in_per_group() == 1 && shape.groups > 1 => {
            if crate::lower::stencil_first(shape) {
                ("depthwise", "dense")
            } else {
                ("depthwise", "row groups")
            }
        }
        None if crate::lower::channel_vector_first(shape) => ("channel-vector", "dense"),
        None => ("direct", "dense"),
        Some(Scheme::Unstructured) => ("row-groups", "CSR"),
        Some(Scheme::BlockPunched { .. }) => ("row-groups", "block-punched"),
        Some(Scheme::Kgs { .. }) => ("row-groups", "KGS"),
        Some(Scheme::Block { .. }) => ("row-groups", "BSR"),
        Some(Scheme::Bcr { .. }) => ("bcr-blocks", "BCR-compact"),
        Some(Scheme::Pattern(_))
            if shape.kernel == [1, 3, 3] && shape.groups == 1 && shape.is_2d() =>
        {
            ("pattern", "FKW")
        }
        Some(_) => ("row-groups", "masked"),
    };
    format!("{kernel} / {format}")
}

/// The median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

/// Non-negative least squares on relative error, by projected coordinate descent (4
/// unknowns; a few hundred sweeps converge).
fn fit_family(group: &[&LatencySample]) -> Coefficients {
    const K: usize = 5;
    // Rows: features / ms, target 1 (relative error).
    let rows: Vec<[f64; K]> = group
        .iter()
        .map(|s| {
            [
                1.0 / s.ms,
                s.kept_macs * 1e-6 / s.ms,
                s.input_floats * 1e-6 / s.ms,
                s.output_floats * 1e-6 / s.ms,
                s.tiles * 1e-3 / s.ms,
            ]
        })
        .collect();
    // Normal equations A^T A c = A^T 1.
    let mut ata = [[0.0f64; K]; K];
    let mut atb = [0.0f64; K];
    for r in &rows {
        for i in 0..K {
            atb[i] += r[i];
            for j in 0..K {
                ata[i][j] += r[i] * r[j];
            }
        }
    }
    let mut c = [0.0f64; K];
    for _ in 0..5000 {
        for i in 0..K {
            if ata[i][i] <= 0.0 {
                continue;
            }
            let rest: f64 = (0..K).filter(|&j| j != i).map(|j| ata[i][j] * c[j]).sum();
            c[i] = ((atb[i] - rest) / ata[i][i]).max(0.0);
        }
    }
    Coefficients {
        per_call: c[0],
        per_mmac: c[1],
        per_minput: c[2],
        per_moutput: c[3],
        per_ktile: c[4],
        samples: group.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(family: &str, macs: f64, inp: f64, out: f64, ms: f64) -> LatencySample {
        LatencySample {
            family: family.into(),
            kept_macs: macs,
            input_floats: inp,
            output_floats: out,
            tiles: (out / 97.0).ceil(),
            ms,
        }
    }

    #[test]
    fn recovers_a_known_linear_law() {
        // ms = 0.002 + 0.005 per MMAC + 0.3 per M input + 0.5 per M output.
        let law =
            |m: f64, i: f64, o: f64| 0.002 + 0.005 * m * 1e-6 + 0.3 * i * 1e-6 + 0.5 * o * 1e-6;
        let mut samples = Vec::new();
        for k in 1..20 {
            let (m, i, o) =
                (k as f64 * 3e5, (k * k % 7 + 1) as f64 * 1e4, (k % 5 + 1) as f64 * 2e4);
            samples.push(sample("row-groups / CSR", m, i, o, law(m, i, o)));
        }
        let model = LatencyModel::fit(&samples);
        let c = model.families["row-groups / CSR"];
        assert!((c.per_mmac - 0.005).abs() < 1e-6, "{c:?}");
        assert!((c.per_minput - 0.3).abs() < 1e-3 && (c.per_moutput - 0.5).abs() < 1e-2, "{c:?}");
        assert!(model.errors(&samples).iter().all(|e| *e < 1e-4), "{:?}", model.errors(&samples));
    }

    #[test]
    fn coefficients_stay_non_negative_and_unknown_families_fall_back() {
        // Time falls with output size here (noise): the fit must not go negative.
        let samples: Vec<LatencySample> = (1..10)
            .map(|k| sample(FALLBACK_FAMILY, k as f64 * 1e6, 1e4, 1e5 / k as f64, 0.01 * k as f64))
            .collect();
        let model = LatencyModel::fit(&samples);
        let c = model.families[FALLBACK_FAMILY];
        assert!(c.per_call >= 0.0 && c.per_mmac >= 0.0 && c.per_minput >= 0.0);
        assert!(c.per_moutput >= 0.0 && c.per_ktile >= 0.0);
        let unknown = sample("pattern / FKW", 1e6, 1e4, 1e4, 0.0);
        assert!(model.predict(&unknown).is_some());
        assert!(LatencyModel::default().predict(&unknown).is_none());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }
}
