//! FORMS polarization: every fragment of a crossbar column holds weights of one sign.
//!
//! On a crossbar the GEMM columns (inputs) drive the rows and each GEMM row (an output) is one
//! crossbar column, so a fragment is M consecutive GEMM columns of one row: `W[r, f*M ..
//! (f+1)*M]`. When the column count is not a multiple of M the last fragment of each row is
//! shorter: that is a partly used sub-array, not an error.
//!
//! Projection with [`SignRule::Energy`] is exact: keeping sign s costs the energy of the
//! entries of the other sign, so keep the sign with more energy (positive on ties) and zero the
//! rest. [`SignRule::Sum`] keeps the sign of the fragment's sum instead (not the Euclidean
//! projection; offered because some descriptions of FORMS use it).
//!
//! Composed with a pruning scheme (`polarized:8(block-punched:8x4)`), the projection polarizes
//! first and then applies the base scheme's exact projection to the sign-consistent weights.
//! The result satisfies both constraints; it is not guaranteed to be the closest such point
//! (the joint problem couples the sign choice with the budget), so `exact` is false. ADMM
//! (tessera-prune) can instead keep the two constraint sets separate.

use crate::error::Result;
use crate::geometry::{Layer, LayerGeometry};
use crate::groups::{Groups, chunks};
use crate::mask::Mask;
use crate::scheme::{PolarizedScheme, Projection, Scheme, SignRule, Tiling};
use crate::target::Target;

/// The fragments of every row.
pub(crate) fn fragments(g: &LayerGeometry, m: usize) -> Groups {
    let (rows, cols) = (g.rows(), g.cols());
    let frags: Vec<_> = chunks(cols, m).collect();
    let mut out = Groups::with_capacity(rows * frags.len(), rows * cols, m);
    for r in 0..rows {
        for f in &frags {
            out.push(f.clone().map(|c| r * cols + c));
        }
    }
    out
}

/// Sign of each fragment under `rule`: `true` = non-negative.
pub fn fragment_signs(
    layer: &Layer,
    weights: &[f32],
    m: usize,
    rule: SignRule,
) -> Result<Vec<bool>> {
    layer.check_weights(weights)?;
    Ok(signs(&fragments(&layer.geometry, m.max(1)), weights, rule))
}

fn signs(frags: &Groups, weights: &[f32], rule: SignRule) -> Vec<bool> {
    frags
        .iter()
        .map(|f| {
            let (mut pos, mut neg) = (0.0f64, 0.0f64);
            for &i in f {
                let w = f64::from(weights[i as usize]);
                match rule {
                    SignRule::Energy if w > 0.0 => pos += w * w,
                    SignRule::Energy => neg += w * w,
                    SignRule::Sum if w > 0.0 => pos += w,
                    SignRule::Sum => neg -= w,
                }
            }
            pos >= neg
        })
        .collect()
}

/// Polarization, optionally followed by the base scheme.
pub(crate) fn project(
    scheme: &Scheme,
    p: &PolarizedScheme,
    layer: &Layer,
    weights: &[f32],
    target: Target,
    tiling: Tiling,
) -> Result<Projection> {
    let frags = fragments(&layer.geometry, p.m);
    let mut values = weights.to_vec();
    for (f, positive) in frags.iter().zip(signs(&frags, weights, p.rule)) {
        for &i in f {
            let v = &mut values[i as usize];
            if (*v > 0.0) != positive && *v != 0.0 {
                *v = 0.0;
            }
        }
    }
    match &p.base {
        None => {
            if target.budget(weights.len()) < weights.len() {
                return Err(scheme.infeasible(
                    layer,
                    target,
                    "polarization constrains signs, not counts; compose it with a pruning scheme, e.g. polarized:8(unstructured)",
                ));
            }
            let mask = Mask::support_of(&values)
                .union(&Mask::from_bools(&weights.iter().map(|&w| w == 0.0).collect::<Vec<_>>()))?;
            Ok(Projection { mask, values, exact: p.rule == SignRule::Energy })
        }
        Some(base) => {
            let pruned = base.project_with(layer, &values, target, tiling)?;
            Ok(Projection { mask: pruned.mask, values: pruned.values, exact: false })
        }
    }
}
