//! Independent reference definitions of every scheme's feasible set, written from the
//! definitions in DESIGN.md §3 with plain index arithmetic. They share no code with the crate's
//! group builders, so a test comparing the two can catch a wrong tiling.

#![allow(dead_code, unreachable_pub)] // shared by several test binaries, each using a part

use tessera_sparsity::{LayerGeometry, Mask, PatternLibrary};

/// Dimensions of the GEMM view, recomputed here.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub rows: usize,
    pub cols: usize,
    pub groups: usize,
    pub opg: usize,
    pub ipg: usize,
    /// kt, kh, kw (kt = 1 for 2-D, all 1 for linear).
    pub kernel: (usize, usize, usize),
}

impl View {
    pub fn of(g: &LayerGeometry) -> Self {
        match *g {
            LayerGeometry::Linear { out_features, in_features } => View {
                rows: out_features,
                cols: in_features,
                groups: 1,
                opg: out_features,
                ipg: in_features,
                kernel: (1, 1, 1),
            },
            LayerGeometry::Conv2d { out_channels, in_channels, kh, kw, groups } => View {
                rows: out_channels,
                cols: in_channels / groups * kh * kw,
                groups,
                opg: out_channels / groups,
                ipg: in_channels / groups,
                kernel: (1, kh, kw),
            },
            LayerGeometry::Conv3d { out_channels, in_channels, kt, kh, kw } => View {
                rows: out_channels,
                cols: in_channels * kt * kh * kw,
                groups: 1,
                opg: out_channels,
                ipg: in_channels,
                kernel: (kt, kh, kw),
            },
        }
    }

    pub fn k(&self) -> usize {
        self.kernel.0 * self.kernel.1 * self.kernel.2
    }

    /// Flat index of (row, in-group channel, kernel position).
    pub fn at(&self, r: usize, ch: usize, pos: usize) -> usize {
        r * self.cols + ch * self.k() + pos
    }

    pub fn group_of_row(&self, r: usize) -> usize {
        r / self.opg
    }
}

/// All listed positions share one kept state.
fn uniform(mask: &Mask, idx: impl IntoIterator<Item = usize>) -> bool {
    let mut it = idx.into_iter();
    match it.next() {
        None => true,
        Some(first) => {
            let s = mask.get(first);
            it.all(|i| mask.get(i) == s)
        }
    }
}

pub fn filter_ok(v: View, m: &Mask) -> bool {
    (0..v.rows).all(|r| uniform(m, (0..v.cols).map(|c| r * v.cols + c)))
}

pub fn channel_ok(v: View, m: &Mask) -> bool {
    (0..v.groups).all(|g| {
        (0..v.ipg).all(|ch| {
            uniform(
                m,
                (g * v.opg..(g + 1) * v.opg).flat_map(|r| (0..v.k()).map(move |p| v.at(r, ch, p))),
            )
        })
    })
}

pub fn column_ok(v: View, m: &Mask) -> bool {
    (0..v.groups).all(|g| {
        (0..v.cols).all(|c| uniform(m, (g * v.opg..(g + 1) * v.opg).map(|r| r * v.cols + c)))
    })
}

pub fn connectivity_ok(v: View, m: &Mask) -> bool {
    (0..v.rows).all(|r| (0..v.ipg).all(|ch| uniform(m, (0..v.k()).map(|p| v.at(r, ch, p)))))
}

/// Rows of block-row `b` (blocks of `br` rows inside each channel group, last one shorter).
fn block_rows(v: View, br: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for g in 0..v.groups {
        let mut r = 0;
        while r < v.opg {
            out.push((g * v.opg + r..g * v.opg + (r + br).min(v.opg)).collect());
            r += br;
        }
    }
    out
}

fn spans(n: usize, size: usize) -> Vec<Vec<usize>> {
    (0..n.div_ceil(size)).map(|i| (i * size..((i + 1) * size).min(n)).collect()).collect()
}

/// Block-punched: for every block of br filters x bc channels and every kernel position, the
/// block's kernels agree. `balanced`: every block keeps the same number of positions.
pub fn block_punched_ok(v: View, m: &Mask, br: usize, bc: usize, balanced: bool) -> bool {
    let mut counts = Vec::new();
    for rows in block_rows(v, br) {
        for chs in spans(v.ipg, bc) {
            let mut kept = 0;
            for p in 0..v.k() {
                let idx: Vec<usize> =
                    rows.iter().flat_map(|&r| chs.iter().map(move |&c| v.at(r, c, p))).collect();
                if !uniform(m, idx.iter().copied()) {
                    return false;
                }
                kept += usize::from(m.get(idx[0]));
            }
            counts.push(kept);
        }
    }
    !balanced || counts.windows(2).all(|w| w[0] == w[1])
}

/// Whole r x c blocks of the GEMM view; `balanced`: same number kept per block-row.
pub fn block_ok(v: View, m: &Mask, br: usize, bc: usize, balanced: bool) -> bool {
    let mut per_row = Vec::new();
    for rows in block_rows(v, br) {
        let mut kept = 0;
        for cols in spans(v.cols, bc) {
            let idx: Vec<usize> =
                rows.iter().flat_map(|&r| cols.iter().map(move |&c| r * v.cols + c)).collect();
            if !uniform(m, idx.iter().copied()) {
                return false;
            }
            kept += usize::from(m.get(idx[0]));
        }
        per_row.push(kept);
    }
    !balanced || per_row.windows(2).all(|w| w[0] == w[1])
}

/// KGS: in each kernel group, a spatial position (kh, kw) is kept or pruned across all kt
/// slices of all gm x gn kernels.
pub fn kgs_ok(v: View, m: &Mask, gm: usize, gn: usize, balanced: bool) -> bool {
    let (kt, kh, kw) = v.kernel;
    let mut counts = Vec::new();
    for rows in block_rows(v, gm) {
        for chs in spans(v.ipg, gn) {
            let mut kept = 0;
            for p in 0..kh * kw {
                let idx: Vec<usize> = rows
                    .iter()
                    .flat_map(|&r| {
                        chs.iter()
                            .flat_map(move |&c| (0..kt).map(move |t| v.at(r, c, t * kh * kw + p)))
                    })
                    .collect();
                if !uniform(m, idx.iter().copied()) {
                    return false;
                }
                kept += usize::from(m.get(idx[0]));
            }
            counts.push(kept);
        }
    }
    !balanced || counts.windows(2).all(|w| w[0] == w[1])
}

pub fn kgs_vanilla_ok(v: View, m: &Mask, gm: usize, gn: usize) -> bool {
    block_rows(v, gm).iter().all(|rows| {
        spans(v.ipg, gn).iter().all(|chs| {
            uniform(
                m,
                rows.iter().flat_map(|&r| {
                    chs.iter().flat_map(move |&c| (0..v.k()).map(move |p| v.at(r, c, p)))
                }),
            )
        })
    })
}

/// BCR: every r x c block's kept set is a product R x C, with the same |R| and |C| in every
/// block (all blocks empty also qualifies).
pub fn bcr_ok(v: View, m: &Mask, br: usize, bc: usize) -> bool {
    let mut shapes = Vec::new();
    for rows in block_rows(v, br) {
        for cols in spans(v.cols, bc) {
            let kr: Vec<usize> = rows
                .iter()
                .copied()
                .filter(|&r| cols.iter().any(|&c| m.get(r * v.cols + c)))
                .collect();
            let kc: Vec<usize> = cols
                .iter()
                .copied()
                .filter(|&c| rows.iter().any(|&r| m.get(r * v.cols + c)))
                .collect();
            if !kr.iter().all(|&r| kc.iter().all(|&c| m.get(r * v.cols + c))) {
                return false;
            }
            shapes.push((kr.len(), kc.len(), rows.len(), cols.len()));
        }
    }
    // Uniform shapes (edge blocks may be clamped to their size).
    let full: Vec<(usize, usize)> =
        shapes.iter().filter(|s| s.2 == br && s.3 == bc).map(|s| (s.0, s.1)).collect();
    full.windows(2).all(|w| w[0] == w[1])
}

/// N:M along rows: at most n kept in every run of m consecutive columns.
pub fn nm_ok(v: View, mask: &Mask, n: usize, m: usize) -> bool {
    (0..v.rows).all(|r| {
        spans(v.cols, m)
            .iter()
            .all(|run| run.iter().filter(|&&c| mask.get(r * v.cols + c)).count() <= n)
    })
}

/// Pattern: each 3x3 kernel is one library pattern, or (with connectivity) all zero.
pub fn pattern_ok(mask: &Mask, library: &PatternLibrary, allow_empty: bool) -> bool {
    (0..mask.len() / 9).all(|k| {
        let bits = (0..9).fold(0u16, |b, t| b | (u16::from(mask.get(k * 9 + t)) << t));
        (allow_empty && bits == 0) || library.patterns().contains(&bits)
    })
}

/// Polarized: every m-column fragment of a row has no two entries of opposite sign.
pub fn polarized_ok(v: View, values: &[f32], m: usize) -> bool {
    (0..v.rows).all(|r| {
        spans(v.cols, m).iter().all(|f| {
            let pos = f.iter().any(|&c| values[r * v.cols + c] > 0.0);
            let neg = f.iter().any(|&c| values[r * v.cols + c] < 0.0);
            !(pos && neg)
        })
    })
}
