//! Block column-row (BCR) sparsity (GRIM).
//!
//! The GEMM view is cut into R x C blocks. Inside each block rows and columns are pruned
//! independently, so a block's survivors are a dense sub-matrix `kept_rows x kept_cols`; the
//! kernel gathers `x[kept_cols]`, runs a dense micro-GEMV and scatters into `y[kept_rows]`.
//!
//! Definition used here (balanced BCR): every block keeps the same number of rows `kr` and
//! columns `kc` (which rows and columns differ per block). Equal sub-matrix shapes make every
//! block the same fixed-size micro-kernel with no load imbalance, which is the point of the
//! scheme; GRIM's row-reorder pass exists to recover balance when blocks differ, and here there
//! is nothing to recover. Rejected alternative: per-block sizes chosen by a global threshold,
//! whose exact projection is a multiple-choice knapsack over blocks.
//!
//! Projection: for each admissible `(kr, kc)` (`blocks * kr * kc <= budget`, `kc` as large as
//! the budget allows for each `kr`), solve every block's "best kr x kc sub-matrix" problem, sum
//! the kept energy over blocks, and take the best pair. The per-block problem (maximum-weight
//! sub-matrix) is NP-hard in general; it is solved exactly by enumerating the kr-subsets of the
//! block's shorter side (each with its best kc columns) when that side has at most
//! [`EXHAUSTIVE_SIDE`] entries, and otherwise by alternating maximization (best columns for
//! the rows, best rows for the columns, until neither changes) from two starts; the
//! [`Projection::exact`] flag says which happened.

use crate::error::Result;
use crate::geometry::Layer;
use crate::groups::{Groups, chunks, row_blocks};
use crate::mask::Mask;
use crate::scheme::{BlockShape, Projection, Scheme, Tiling};
use crate::schemes::selection::tile;
use crate::target::Target;

/// Blocks whose shorter side is at most this long are solved exactly (at most C(12, 6) = 924
/// subsets per pair).
pub const EXHAUSTIVE_SIDE: usize = 12;

/// Largest block side supported (row and column sets are 64-bit masks).
pub const MAX_SIDE: usize = 64;

struct Block {
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
}

fn blocks(scheme: &Scheme, block: BlockShape, layer: &Layer, tiling: Tiling) -> Result<Vec<Block>> {
    let g = &layer.geometry;
    if block.rows() > MAX_SIDE || block.cols() > MAX_SIDE {
        return Err(scheme
            .not_applicable(layer, format!("BCR blocks are limited to {MAX_SIDE}x{MAX_SIDE}")));
    }
    tile(
        scheme,
        layer,
        block,
        g.out_per_group(),
        g.cols(),
        "output channels per group",
        "GEMM columns",
        tiling,
    )?;
    let col_chunks: Vec<_> = chunks(g.cols(), block.cols()).collect();
    Ok(row_blocks(g, block.rows())
        .into_iter()
        .flat_map(|(_, rows)| {
            col_chunks.iter().map(move |cols| Block { rows: rows.clone(), cols: cols.clone() })
        })
        .collect())
}

/// Row segments of every block, then column segments of every block.
pub(crate) fn groups(
    scheme: &Scheme,
    block: BlockShape,
    layer: &Layer,
    tiling: Tiling,
) -> Result<Groups> {
    let cols = layer.geometry.cols();
    let bl = blocks(scheme, block, layer, tiling)?;
    let mut out = Groups::with_capacity(
        bl.len() * (block.rows() + block.cols()),
        2 * layer.geometry.len(),
        block.cols(),
    );
    for b in &bl {
        for r in b.rows.clone() {
            out.push(b.cols.clone().map(|c| r * cols + c));
        }
    }
    for b in &bl {
        for c in b.cols.clone() {
            out.push(b.rows.clone().map(|r| r * cols + c));
        }
    }
    Ok(out)
}

/// The best sub-matrix found for one block and one `(kr, kc)`.
#[derive(Debug, Clone, Copy, Default)]
struct Choice {
    energy: f64,
    rows: u64,
    cols: u64,
}

/// Indices of the `k` largest of `v` (ties to the lower index) as a bitmask, and their sum.
/// Blocks are at most 64 wide, so a partial insertion into a fixed array beats sorting.
fn top_k_mask(v: &[f64], k: usize) -> (u64, f64) {
    let n = v.len();
    if k >= n {
        return (if n == 64 { u64::MAX } else { (1u64 << n) - 1 }, v.iter().sum());
    }
    if k == 0 {
        return (0, 0.0);
    }
    // `top` holds the best k indices so far, best first; strict `>` keeps earlier indices on ties.
    let mut top = [0u8; MAX_SIDE];
    let mut len = 0usize;
    for (i, &x) in v.iter().enumerate() {
        if len == k && x <= v[top[k - 1] as usize] {
            continue;
        }
        let mut pos = len.min(k - 1);
        if len < k {
            len += 1;
        }
        while pos > 0 && x > v[top[pos - 1] as usize] {
            top[pos] = top[pos - 1];
            pos -= 1;
        }
        top[pos] = i as u8;
    }
    top[..k].iter().fold((0u64, 0.0), |(m, s), &i| (m | 1 << i, s + v[i as usize]))
}

/// Solves one block (energies `e`, `h x w` row-major) for each `(kr, kc)` in `pairs`
/// (already clamped to the block). Returns one choice per pair and whether all were exact.
fn solve_block(
    e: &[f64],
    h: usize,
    w: usize,
    pairs: &[(usize, usize)],
    out: &mut Vec<Choice>,
) -> bool {
    out.clear();
    let transpose = w < h;
    // Work on the orientation whose enumerated side (rows of `m`) is the shorter one.
    let (mh, mw) = if transpose { (w, h) } else { (h, w) };
    let at = |i: usize, j: usize| if transpose { e[j * w + i] } else { e[i * w + j] };
    let wanted: Vec<(usize, usize)> =
        pairs.iter().map(|&(kr, kc)| if transpose { (kc, kr) } else { (kr, kc) }).collect();
    let mut best = vec![Choice { energy: -1.0, rows: 0, cols: 0 }; wanted.len()];
    let exact = mh <= EXHAUSTIVE_SIDE;
    let mut colsum = [0.0f64; MAX_SIDE];
    let mut rowsum = [0.0f64; MAX_SIDE];
    let colsum_of = |rows: u64, colsum: &mut [f64; MAX_SIDE]| {
        colsum[..mw].fill(0.0);
        for i in (0..mh).filter(|&i| rows >> i & 1 == 1) {
            for (j, s) in colsum[..mw].iter_mut().enumerate() {
                *s += at(i, j);
            }
        }
    };
    let rowsum_of = |cols: u64, rowsum: &mut [f64; MAX_SIDE]| {
        for (i, s) in rowsum[..mh].iter_mut().enumerate() {
            *s = (0..mw).filter(|&j| cols >> j & 1 == 1).map(|j| at(i, j)).sum();
        }
    };
    for (slot, &(kr, kc)) in wanted.iter().enumerate() {
        if exact {
            // Every subset of kr rows (Gosper's hack), each with its best kc columns.
            let mut rows: u64 = (1u64 << kr) - 1;
            while rows < 1u64 << mh {
                colsum_of(rows, &mut colsum);
                let (cols, energy) = top_k_mask(&colsum[..mw], kc);
                if energy > best[slot].energy {
                    best[slot] = Choice { energy, rows, cols };
                }
                let low = rows & rows.wrapping_neg();
                let ripple = rows + low;
                rows = (((rows ^ ripple) >> 2) / low) | ripple;
            }
        } else {
            // Alternating maximization from the kr heaviest rows and from the kc heaviest columns.
            for start in 0..2 {
                let (mut rows, mut cols) = if start == 0 {
                    rowsum_of(if mw == 64 { u64::MAX } else { (1u64 << mw) - 1 }, &mut rowsum);
                    (top_k_mask(&rowsum[..mh], kr).0, 0)
                } else {
                    colsum_of(if mh == 64 { u64::MAX } else { (1u64 << mh) - 1 }, &mut colsum);
                    let cols = top_k_mask(&colsum[..mw], kc).0;
                    rowsum_of(cols, &mut rowsum);
                    (top_k_mask(&rowsum[..mh], kr).0, cols)
                };
                for _ in 0..64 {
                    colsum_of(rows, &mut colsum);
                    let new_cols = top_k_mask(&colsum[..mw], kc).0;
                    rowsum_of(new_cols, &mut rowsum);
                    let new_rows = top_k_mask(&rowsum[..mh], kr).0;
                    let stable = new_rows == rows && new_cols == cols;
                    (rows, cols) = (new_rows, new_cols);
                    if stable {
                        break;
                    }
                }
                let energy = kept_energy(&at, mh, mw, rows, cols);
                if energy > best[slot].energy {
                    best[slot] = Choice { energy, rows, cols };
                }
            }
        }
    }
    out.extend(best.into_iter().map(|c| {
        if transpose { Choice { energy: c.energy, rows: c.cols, cols: c.rows } } else { c }
    }));
    exact
}

fn kept_energy(
    at: &impl Fn(usize, usize) -> f64,
    mh: usize,
    mw: usize,
    rows: u64,
    cols: u64,
) -> f64 {
    (0..mh)
        .filter(|&i| rows >> i & 1 == 1)
        .flat_map(|i| (0..mw).filter(move |&j| cols >> j & 1 == 1).map(move |j| (i, j)))
        .map(|(i, j)| at(i, j))
        .sum()
}

/// The BCR projection.
pub(crate) fn project(
    scheme: &Scheme,
    block: BlockShape,
    layer: &Layer,
    weights: &[f32],
    target: Target,
    tiling: Tiling,
) -> Result<Projection> {
    let cols = layer.geometry.cols();
    let bl = blocks(scheme, block, layer, tiling)?;
    let (r, c) = (block.rows(), block.cols());
    let per_block = target.budget(bl.len() * r * c) / bl.len().max(1);
    // For every kr the widest kc the budget allows, dropping pairs where one more row would
    // also fit (a superset of rows never keeps less energy).
    let pairs: Vec<(usize, usize)> = (1..=r)
        .map(|kr| (kr, (per_block / kr).min(c)))
        .filter(|&(kr, kc)| kc > 0 && (kr == r || (kr + 1) * kc > per_block))
        .collect();
    let mut mask = Mask::zeros(weights.len());
    let mut values = vec![0.0f32; weights.len()];
    if pairs.is_empty() {
        return Ok(Projection { mask, values, exact: true });
    }
    // Solve every block for every pair, remember the choices, then keep the best pair's.
    let mut totals = vec![0.0f64; pairs.len()];
    let mut exact = true;
    let mut e = Vec::with_capacity(r * c);
    let mut choices = Vec::with_capacity(pairs.len());
    let mut clamped = Vec::with_capacity(pairs.len());
    let mut chosen: Vec<(u64, u64)> = Vec::with_capacity(bl.len() * pairs.len());
    for b in &bl {
        let (h, w) = (b.rows.len(), b.cols.len());
        e.clear();
        for row in b.rows.clone() {
            e.extend(b.cols.clone().map(|col| f64::from(weights[row * cols + col]).powi(2)));
        }
        clamped.clear();
        clamped.extend(pairs.iter().map(|&(kr, kc)| (kr.min(h), kc.min(w))));
        exact &= solve_block(&e, h, w, &clamped, &mut choices);
        for (t, ch) in totals.iter_mut().zip(&choices) {
            *t += ch.energy;
        }
        chosen.extend(choices.iter().map(|ch| (ch.rows, ch.cols)));
    }
    let best = (0..pairs.len()).fold(0, |best, i| if totals[i] > totals[best] { i } else { best });
    for (bi, b) in bl.iter().enumerate() {
        let (row_bits, col_bits) = chosen[bi * pairs.len() + best];
        for (i, row) in b.rows.clone().enumerate() {
            if row_bits >> i & 1 == 0 {
                continue;
            }
            for (j, col) in b.cols.clone().enumerate() {
                if col_bits >> j & 1 == 1 {
                    let idx = row * cols + col;
                    mask.set(idx, true);
                    values[idx] = weights[idx];
                }
            }
        }
    }
    Ok(Projection { mask, values, exact })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustive_block_solver_finds_the_best_submatrix() {
        // 3x3 energies; best 2x2 is rows {0,2} x cols {0,2}: 9+8+7+9 = 33.
        #[rustfmt::skip]
        let e = [9.0, 0.0, 8.0,
                 1.0, 5.0, 1.0,
                 7.0, 0.0, 9.0];
        let mut out = Vec::new();
        assert!(solve_block(&e, 3, 3, &[(2, 2), (1, 3)], &mut out));
        assert_eq!((out[0].energy, out[0].rows, out[0].cols), (33.0, 0b101, 0b101));
        // 1x3: row 0 = 17, row 2 = 16.
        assert_eq!((out[1].energy, out[1].rows, out[1].cols), (17.0, 0b001, 0b111));
    }

    #[test]
    fn transposed_blocks_keep_orientation() {
        // 3 rows x 2 cols: enumerates the 2 columns.
        let e = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
        let mut out = Vec::new();
        solve_block(&e, 3, 2, &[(2, 1)], &mut out);
        assert_eq!((out[0].energy, out[0].rows, out[0].cols), (11.0, 0b110, 0b10));
    }
}
