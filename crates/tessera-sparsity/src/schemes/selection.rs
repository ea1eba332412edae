//! Selection schemes: the layer's weights are partitioned into groups of equal (nominal) size,
//! and the projection keeps the groups with the most energy.
//!
//! Why greedy is exact: for a partition into groups of equal size s, the closest feasible point
//! keeps at most n = floor(budget / s) groups whole and zeroes the rest; its squared distance
//! to W is the energy of the zeroed groups, which is smallest when the kept groups are the n
//! with the most energy. For balanced variants the same argument holds bucket by bucket.
//!
//! Covers unstructured, filter, channel, column, connectivity, block-punched, block, KGS and
//! vanilla KGS.

use crate::error::Result;
use crate::geometry::{Layer, LayerGeometry};
use crate::groups::{Groups, chunks, row_blocks};
use crate::mask::Mask;
use crate::scheme::{BlockShape, Projection, Scheme, Tiling};
use crate::select::{top_n, top_n_in};
use crate::target::Target;

/// Unstructured magnitude projection without materializing singleton groups.
pub(crate) fn project_unstructured(weights: &[f32], target: Target) -> Projection {
    let n = target.budget(weights.len());
    let energy: Vec<f64> = weights.iter().map(|&w| f64::from(w) * f64::from(w)).collect();
    let kept = top_n(&energy, n);
    let mut mask = Mask::zeros(weights.len());
    let mut values = vec![0.0f32; weights.len()];
    for i in kept {
        mask.set(i as usize, true);
        values[i as usize] = weights[i as usize];
    }
    Projection { mask, values, exact: true }
}

/// Keeps the best groups: globally, or the same number per bucket when `groups` has buckets.
pub(crate) fn project(groups: &Groups, weights: &[f32], target: Target) -> Projection {
    let energies = groups.energies(weights);
    let n_groups = groups.len();
    let n = target.budget(n_groups * groups.nominal_size()) / groups.nominal_size().max(1);
    let kept: Vec<u32> = match groups.buckets() {
        None => top_n(&energies, n),
        Some(buckets) => {
            let nb = groups.num_buckets().max(1);
            let per_bucket = n / nb;
            // Gather each bucket's groups (buckets need not be contiguous).
            let mut members: Vec<Vec<u32>> = vec![Vec::new(); nb];
            for (g, &b) in buckets.iter().enumerate() {
                members[b as usize].push(g as u32);
            }
            let mut kept = Vec::with_capacity(per_bucket * nb);
            let mut local = Vec::new();
            let mut scores = Vec::new();
            for m in &members {
                scores.clear();
                scores.extend(m.iter().map(|&g| energies[g as usize]));
                top_n_in(&scores, per_bucket, &mut local);
                kept.extend(local.iter().map(|&i| m[i as usize]));
            }
            kept
        }
    };
    let mut mask = Mask::zeros(weights.len());
    let mut values = vec![0.0f32; weights.len()];
    for g in kept {
        for &i in groups.group(g as usize) {
            mask.set(i as usize, true);
            values[i as usize] = weights[i as usize];
        }
    }
    Projection { mask, values, exact: true }
}

/// The partition of a selection scheme.
pub(crate) fn groups(scheme: &Scheme, layer: &Layer, tiling: Tiling) -> Result<Groups> {
    let g = &layer.geometry;
    let (rows, cols, k) = (g.rows(), g.cols(), g.kernel_volume());
    let ipg = g.in_per_group();
    let opg = g.out_per_group();
    let at = move |r: usize, c: usize| r * cols + c;
    match scheme {
        Scheme::Unstructured => {
            let mut out = Groups::with_capacity(rows * cols, rows * cols, 1);
            for i in 0..rows * cols {
                out.push([i]);
            }
            Ok(out)
        }
        Scheme::Filter => {
            let mut out = Groups::with_capacity(rows, rows * cols, cols);
            for r in 0..rows {
                out.push((0..cols).map(|c| at(r, c)));
            }
            Ok(out)
        }
        Scheme::Channel => {
            let mut out = Groups::with_capacity(g.groups() * ipg, rows * cols, opg * k);
            for grp in 0..g.groups() {
                let rs = grp * opg..(grp + 1) * opg;
                for ch in 0..ipg {
                    out.push(
                        rs.clone().flat_map(|r| (ch * k..(ch + 1) * k).map(move |c| at(r, c))),
                    );
                }
            }
            Ok(out)
        }
        Scheme::Column => {
            let mut out = Groups::with_capacity(g.groups() * cols, rows * cols, opg);
            for grp in 0..g.groups() {
                for c in 0..cols {
                    out.push((grp * opg..(grp + 1) * opg).map(|r| at(r, c)));
                }
            }
            Ok(out)
        }
        Scheme::Connectivity => {
            let mut out = Groups::with_capacity(rows * ipg, rows * cols, k);
            for r in 0..rows {
                for ch in 0..ipg {
                    out.push((ch * k..(ch + 1) * k).map(|c| at(r, c)));
                }
            }
            Ok(out)
        }
        Scheme::BlockPunched { block, balanced } => {
            tile(
                scheme,
                layer,
                *block,
                opg,
                ipg,
                "output channels per group",
                "input channels per group",
                tiling,
            )?;
            let blocks = row_blocks(g, block.rows());
            let nominal = block.rows() * block.cols();
            let ch_blocks: Vec<_> = chunks(ipg, block.cols()).collect();
            let mut out =
                Groups::with_capacity(blocks.len() * ch_blocks.len() * k, rows * cols, nominal);
            let mut bucket = 0;
            for (_, rs) in &blocks {
                for chs in &ch_blocks {
                    for pos in 0..k {
                        let idx =
                            rs.clone().flat_map(|r| chs.clone().map(move |ch| at(r, ch * k + pos)));
                        if *balanced { out.push_in_bucket(bucket, idx) } else { out.push(idx) }
                    }
                    bucket += 1;
                }
            }
            Ok(out)
        }
        Scheme::Block { block, balanced } => {
            tile(
                scheme,
                layer,
                *block,
                opg,
                cols,
                "output channels per group",
                "GEMM columns",
                tiling,
            )?;
            let blocks = row_blocks(g, block.rows());
            let col_blocks: Vec<_> = chunks(cols, block.cols()).collect();
            let nominal = block.rows() * block.cols();
            let mut out =
                Groups::with_capacity(blocks.len() * col_blocks.len(), rows * cols, nominal);
            for (bucket, (_, rs)) in blocks.iter().enumerate() {
                for cs in &col_blocks {
                    let idx = rs.clone().flat_map(|r| cs.clone().map(move |c| at(r, c)));
                    if *balanced { out.push_in_bucket(bucket, idx) } else { out.push(idx) }
                }
            }
            Ok(out)
        }
        Scheme::Kgs { .. } | Scheme::KgsVanilla { .. }
            if matches!(g, LayerGeometry::Linear { .. }) =>
        {
            Err(scheme.not_applicable(
                layer,
                "kernel groups need a convolution; use block or block-punched for linear layers",
            ))
        }
        Scheme::Kgs { group, balanced } => {
            tile(scheme, layer, *group, opg, ipg, "output channels", "input channels", tiling)?;
            // Spatial positions (kh, kw) are shared across the kt time slices of a 3-D kernel.
            let (kt, khw) = match *g {
                LayerGeometry::Conv3d { kt, kh, kw, .. } => (kt, kh * kw),
                _ => (1, k),
            };
            let blocks = row_blocks(g, group.rows());
            let ch_blocks: Vec<_> = chunks(ipg, group.cols()).collect();
            let nominal = group.rows() * group.cols() * kt;
            let mut out =
                Groups::with_capacity(blocks.len() * ch_blocks.len() * khw, rows * cols, nominal);
            let mut bucket = 0;
            for (_, rs) in &blocks {
                for chs in &ch_blocks {
                    for p in 0..khw {
                        let idx = rs.clone().flat_map(|r| {
                            chs.clone().flat_map(move |ch| {
                                (0..kt).map(move |t| at(r, ch * k + t * khw + p))
                            })
                        });
                        if *balanced { out.push_in_bucket(bucket, idx) } else { out.push(idx) }
                    }
                    bucket += 1;
                }
            }
            Ok(out)
        }
        Scheme::KgsVanilla { group } => {
            tile(scheme, layer, *group, opg, ipg, "output channels", "input channels", tiling)?;
            let blocks = row_blocks(g, group.rows());
            let ch_blocks: Vec<_> = chunks(ipg, group.cols()).collect();
            let nominal = group.rows() * group.cols() * k;
            let mut out =
                Groups::with_capacity(blocks.len() * ch_blocks.len(), rows * cols, nominal);
            for (_, rs) in &blocks {
                for chs in &ch_blocks {
                    out.push(rs.clone().flat_map(|r| {
                        chs.clone()
                            .flat_map(move |ch| (ch * k..(ch + 1) * k).map(move |c| at(r, c)))
                    }));
                }
            }
            Ok(out)
        }
        Scheme::Pattern(_) | Scheme::Bcr { .. } | Scheme::NM { .. } | Scheme::Polarized(_) => {
            Err(scheme.not_applicable(layer, "not a selection scheme (internal dispatch error)"))
        }
    }
}

/// Checks that `block` tiles `rows x cols` of a layer, unless padding is allowed. Returns the
/// number of row and column blocks.
#[allow(clippy::too_many_arguments)]
pub(crate) fn tile(
    scheme: &Scheme,
    layer: &Layer,
    block: BlockShape,
    rows: usize,
    cols: usize,
    rows_what: &str,
    cols_what: &str,
    tiling: Tiling,
) -> Result<(usize, usize)> {
    if tiling == Tiling::Exact {
        if !rows.is_multiple_of(block.rows()) {
            return Err(scheme.not_tileable(
                layer,
                format!("{rows} {rows_what} are not a multiple of {} block rows (ask for padding to pad)", block.rows()),
            ));
        }
        if !cols.is_multiple_of(block.cols()) {
            return Err(scheme.not_tileable(
                layer,
                format!("{cols} {cols_what} are not a multiple of {} block columns (ask for padding to pad)", block.cols()),
            ));
        }
    }
    Ok((rows.div_ceil(block.rows()), cols.div_ceil(block.cols())))
}
