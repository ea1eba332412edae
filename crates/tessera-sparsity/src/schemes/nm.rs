//! N:M sparsity: in every run of M consecutive weights along a GEMM row (the input dimension,
//! which is what N:M hardware such as sparse tensor cores compresses), at most N are kept.
//!
//! The constraint is local, so the exact projection keeps the N largest magnitudes of each run
//! independently (ties to the lower index). The density is fixed at N/M; a target asking for
//! fewer weights is infeasible, one asking for more is met with room to spare.

use crate::error::Result;
use crate::geometry::Layer;
use crate::groups::{Groups, chunks};
use crate::mask::Mask;
use crate::scheme::{Projection, Scheme, Tiling};
use crate::select::top_n_in;
use crate::target::Target;

/// The M-runs of every row.
pub(crate) fn groups(scheme: &Scheme, m: usize, layer: &Layer, tiling: Tiling) -> Result<Groups> {
    let g = &layer.geometry;
    let (rows, cols) = (g.rows(), g.cols());
    if tiling == Tiling::Exact && cols % m != 0 {
        return Err(scheme.not_tileable(
            layer,
            format!("{cols} GEMM columns are not a multiple of M = {m} (ask for padding to pad)"),
        ));
    }
    let runs: Vec<_> = chunks(cols, m).collect();
    let mut out = Groups::with_capacity(rows * runs.len(), rows * cols, m);
    for r in 0..rows {
        for run in &runs {
            out.push(run.clone().map(|c| r * cols + c));
        }
    }
    Ok(out)
}

/// Keeps the N largest magnitudes of every run.
pub(crate) fn project(
    scheme: &Scheme,
    n: usize,
    m: usize,
    layer: &Layer,
    weights: &[f32],
    target: Target,
    tiling: Tiling,
) -> Result<Projection> {
    let groups = groups(scheme, m, layer, tiling)?;
    let padded_total = groups.len() * m;
    if groups.len() * n > target.budget(padded_total) {
        return Err(scheme.infeasible(layer, target, format!("N:M keeps {n}/{m} of the weights")));
    }
    let mut mask = Mask::zeros(weights.len());
    let mut values = vec![0.0f32; weights.len()];
    let mut scores = Vec::with_capacity(m);
    let mut kept = Vec::with_capacity(n);
    for run in groups.iter() {
        scores.clear();
        scores.extend(run.iter().map(|&i| f64::from(weights[i as usize]).powi(2)));
        top_n_in(&scores, n, &mut kept);
        for &j in &kept {
            let i = run[j as usize] as usize;
            mask.set(i, true);
            values[i] = weights[i];
        }
    }
    Ok(Projection { mask, values, exact: true })
}
