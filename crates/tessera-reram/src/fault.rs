//! Device non-idealities: stuck-at faults (i.i.d. or clustered) and log-normal conductance
//! variation, sampled from a seed.
//!
//! A stuck-at-off cell (SA0) sits at the minimum conductance (level 0), a stuck-at-on cell
//! (SA1) at the maximum (the top level). [`FaultModel::from_rate`] splits a total rate `p` as
//! SA0 : SA1 = 1 : 5.2, the ratio the fault-tolerance paper takes from Chen et al. (2015):
//! `p_sa0 = p / 6.2`, `p_sa1 = 5.2 p / 6.2`.
//!
//! I.i.d. faults are drawn by geometric skipping (the gap to the next faulty cell is
//! `floor(ln u / ln(1 - p))`), so sampling costs the number of faults, not the number of cells,
//! and they are *nested across rates*: the same generator gives at rate `p` a subset of the
//! faults it gives at any higher rate, each cell stuck at the same kind (see `nested_iid`), so
//! a rate sweep with one seed per chip follows each chip as it degrades.
//! Clustered faults model defects that spoil a patch: per crossbar, a Poisson number of
//! `side x side` squares with mean `p * rows * cols / side^2` (the expected faulty fraction
//! stays about `p`, less overlaps and edges), each square stuck at one kind drawn with the
//! SA0 : SA1 odds.

use rand::rngs::ChaCha8Rng;
use rand::{Rng, RngExt, SeedableRng};
use rand_distr::{Distribution, Poisson};
use serde::{Deserialize, Serialize};

use crate::error::{ReramError, Result};

/// SA1 faults per SA0 fault in the fault-tolerance paper (Chen et al. 2015 statistics).
pub const SA1_PER_SA0: f64 = 5.2;

/// What a faulty cell is stuck at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Fault {
    /// Minimum conductance (level 0).
    StuckOff,
    /// Maximum conductance (the top level).
    StuckOn,
}

impl Fault {
    /// The other kind.
    pub fn flipped(self) -> Fault {
        match self {
            Fault::StuckOff => Fault::StuckOn,
            Fault::StuckOn => Fault::StuckOff,
        }
    }
}

/// Clustered-fault shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clusters {
    /// Side of each square patch, in cells.
    pub side: usize,
}

/// Fault and variation rates of one simulated chip.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FaultModel {
    /// Probability that a cell is stuck off.
    pub p_sa0: f64,
    /// Probability that a cell is stuck on.
    pub p_sa1: f64,
    /// Standard deviation of the log of the conductance multiplier (0: none).
    pub variation_sigma: f64,
    /// Faults come in patches instead of independently.
    pub clusters: Option<Clusters>,
}

impl FaultModel {
    /// No faults, no variation.
    pub fn none() -> Self {
        FaultModel { p_sa0: 0.0, p_sa1: 0.0, variation_sigma: 0.0, clusters: None }
    }

    /// Total fault rate `p` split SA0 : SA1 = 1 : 5.2.
    pub fn from_rate(p: f64) -> Self {
        Self::with_ratio(p, SA1_PER_SA0)
    }

    /// Total fault rate `p` with `sa1_per_sa0` stuck-on faults per stuck-off fault.
    pub fn with_ratio(p: f64, sa1_per_sa0: f64) -> Self {
        let p_sa0 = p / (1.0 + sa1_per_sa0);
        FaultModel { p_sa0, p_sa1: p - p_sa0, ..Self::none() }
    }

    /// The same model with the two rates exchanged.
    pub fn swapped(self) -> Self {
        FaultModel { p_sa0: self.p_sa1, p_sa1: self.p_sa0, ..self }
    }

    /// Total stuck-at rate.
    pub fn rate(&self) -> f64 {
        self.p_sa0 + self.p_sa1
    }

    /// Checks that the rates are probabilities.
    pub fn validate(&self) -> Result<()> {
        let ok = self.p_sa0 >= 0.0
            && self.p_sa1 >= 0.0
            && self.rate() <= 1.0
            && self.variation_sigma >= 0.0
            && self.variation_sigma.is_finite()
            && self.clusters.is_none_or(|c| c.side > 0);
        if ok {
            Ok(())
        } else {
            Err(ReramError::Config {
                field: "faults".into(),
                reason: format!(
                    "p_sa0 = {}, p_sa1 = {}, sigma = {}, clusters = {:?}: expected rates in \
                     [0, 1] summing to at most 1, sigma >= 0 and a positive cluster side",
                    self.p_sa0, self.p_sa1, self.variation_sigma, self.clusters
                ),
            })
        }
    }
}

/// The faulty cells of one cell array (`rows x cols`, row-major index `r * cols + c`),
/// sorted by index, at most one fault per cell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultMap {
    /// `(cell index, kind)`, ascending index.
    pub cells: Vec<(u32, Fault)>,
}

impl FaultMap {
    /// Draws the faults of a `rows x cols` cell array laid out on `xbar_rows x xbar_cols`
    /// crossbars (used for clusters, which do not cross crossbar edges).
    pub fn sample(
        model: &FaultModel,
        rows: usize,
        cols: usize,
        xbar: (usize, usize),
        rng: &mut ChaCha8Rng,
    ) -> FaultMap {
        let p = model.rate();
        if p <= 0.0 || rows == 0 || cols == 0 {
            return FaultMap::default();
        }
        let sa0_share = model.p_sa0 / p;
        let n = rows * cols;
        let mut cells = Vec::new();
        match model.clusters {
            None => return FaultMap { cells: nested_iid(p, sa0_share, n, rng) },
            Some(Clusters { side }) => {
                let kind = |rng: &mut ChaCha8Rng| {
                    if rng.random::<f64>() < sa0_share { Fault::StuckOff } else { Fault::StuckOn }
                };
                let (xr, xc) = (xbar.0.max(1), xbar.1.max(1));
                let mean = p * (xr * xc) as f64 / (side * side) as f64;
                let poisson = Poisson::new(mean).ok();
                for tr in 0..rows.div_ceil(xr) {
                    for tc in 0..cols.div_ceil(xc) {
                        let count = poisson.as_ref().map_or(0.0, |d| d.sample(rng)) as usize;
                        for _ in 0..count {
                            let (cr, cc) = (rng.random_range(0..xr), rng.random_range(0..xc));
                            let k = kind(rng);
                            let half = side / 2;
                            for dr in 0..side {
                                for dc in 0..side {
                                    let (lr, lc) =
                                        ((cr + dr).checked_sub(half), (cc + dc).checked_sub(half));
                                    let (Some(lr), Some(lc)) = (lr, lc) else { continue };
                                    if lr >= xr || lc >= xc {
                                        continue;
                                    }
                                    let (r, c) = (tr * xr + lr, tc * xc + lc);
                                    if r < rows && c < cols {
                                        cells.push(((r * cols + c) as u32, k));
                                    }
                                }
                            }
                        }
                    }
                }
                cells.sort_by_key(|&(i, _)| i);
                cells.dedup_by_key(|&mut (i, _)| i);
            }
        }
        FaultMap { cells }
    }

    /// The same cells with every kind exchanged.
    pub fn flipped(&self) -> FaultMap {
        FaultMap { cells: self.cells.iter().map(|&(i, k)| (i, k.flipped())).collect() }
    }

    /// Number of faulty cells of each kind: `(stuck off, stuck on)`.
    pub fn counts(&self) -> (usize, usize) {
        let off = self.cells.iter().filter(|c| c.1 == Fault::StuckOff).count();
        (off, self.cells.len() - off)
    }
}

/// Rate bands below the coarsest: band `k` holds the cells whose mark `u` lies in
/// `[2^-(k+1), 2^-k)`, the base band `[0, 2^-NESTED_BANDS)`.
const NESTED_BANDS: i32 = 48;

/// I.i.d. faults at total rate `p` that are *nested across rates*: with the same generator
/// state, the faults at `p` are a subset of the faults at any `p' > p`, each cell keeping its
/// kind. Every cell carries an implicit mark `u ~ U(0, 1)` and is faulty when `u < p`; the
/// marks are drawn band by band from the smallest up (the base band with probability
/// `2^-48`, band `k` among the cells not yet marked with probability
/// `(2^-k - 2^-(k+1)) / (1 - 2^-(k+1))`, each by geometric skipping over those cells), and
/// sampling stops after the band that holds `p`, keeping that band's marks below `p`. Which
/// draws a band makes depends only on the bands below it, so a lower rate consumes a prefix of
/// the same random sequence: a sweep over rates with one seed per chip follows one chip as it
/// degrades (common random numbers), instead of drawing an unrelated chip per rate. Each
/// cell is exactly Bernoulli(`p`), independently; the cost is about twice the number of
/// faults.
fn nested_iid(p: f64, sa0_share: f64, n: usize, rng: &mut ChaCha8Rng) -> Vec<(u32, Fault)> {
    // (cell, mark, kind draw), ascending cell.
    let mut marked: Vec<(u32, f64, f64)> = Vec::new();
    let mut band = NESTED_BANDS;
    loop {
        let (lo, hi) = if band == NESTED_BANDS {
            (0.0, 2f64.powi(-NESTED_BANDS))
        } else {
            (2f64.powi(-(band + 1)), 2f64.powi(-band))
        };
        let q = (hi - lo) / (1.0 - lo);
        let free = n - marked.len();
        let mut picked: Vec<(usize, f64, f64)> = Vec::new();
        if q >= 1.0 {
            picked.extend((0..free).map(|f| (f, 0.0, 0.0)));
        } else {
            let log_q = (1.0 - q).ln();
            let mut f = 0usize;
            loop {
                // u in (0, 1]: ln u <= 0, and the gap is a non-negative integer.
                let u = 1.0 - rng.random::<f64>();
                let gap = (u.ln() / log_q).floor();
                if !gap.is_finite() || gap >= (free - f) as f64 {
                    break;
                }
                f += gap as usize;
                picked.push((f, 0.0, 0.0));
                f += 1;
                if f >= free {
                    break;
                }
            }
        }
        for pick in &mut picked {
            pick.1 = lo + (hi - lo) * rng.random::<f64>();
            pick.2 = rng.random::<f64>();
        }
        if !picked.is_empty() {
            marked = merge_free_picks(&marked, &picked);
        }
        if p < hi || band == 0 {
            break;
        }
        band -= 1;
    }
    marked
        .into_iter()
        .filter(|&(_, mark, _)| mark < p)
        .map(|(i, _, k)| (i, if k < sa0_share { Fault::StuckOff } else { Fault::StuckOn }))
        .collect()
}

/// Merges picks given as indices among the unmarked cells into the ascending marked list.
fn merge_free_picks(
    marked: &[(u32, f64, f64)],
    picked: &[(usize, f64, f64)],
) -> Vec<(u32, f64, f64)> {
    let mut out = Vec::with_capacity(marked.len() + picked.len());
    let mut m = 0;
    for &(free_index, mark, kind) in picked {
        // The cell is free_index plus every marked cell at or below it.
        let mut cell = free_index + m;
        while m < marked.len() && (marked[m].0 as usize) <= cell {
            out.push(marked[m]);
            m += 1;
            cell += 1;
        }
        out.push((cell as u32, mark, kind));
    }
    out.extend_from_slice(&marked[m..]);
    out
}

/// A generator for chip instance `seed`, stream `stream` (one stream per mapped matrix), so
/// the faults of one layer do not depend on how many cells the others have.
pub fn stream_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    // SplitMix64 finalizer over the pair: distinct pairs give unrelated seeds.
    let mut z = seed ^ stream.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

/// Log-normal multipliers `exp(sigma * z)` for `n` cells.
pub fn variation<R: Rng>(sigma: f64, n: usize, rng: &mut R) -> Vec<f32> {
    let normal = rand_distr::StandardNormal;
    (0..n)
        .map(|_| {
            let z: f64 = normal.sample(rng);
            (sigma * z).exp() as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iid_rates_match_the_model_and_the_seed_fixes_the_map() {
        let m = FaultModel::from_rate(0.02);
        assert!((m.p_sa1 / m.p_sa0 - 5.2).abs() < 1e-12);
        let (rows, cols) = (1000, 1000);
        let a = FaultMap::sample(&m, rows, cols, (128, 128), &mut stream_rng(7, 0));
        let b = FaultMap::sample(&m, rows, cols, (128, 128), &mut stream_rng(7, 0));
        assert_eq!(a, b);
        let (off, on) = a.counts();
        let n = (rows * cols) as f64;
        // Binomial standard deviations: sqrt(n p (1 - p)) ~ 130 and ~ 42; allow 5 sigma.
        assert!((on as f64 - n * m.p_sa1).abs() < 5.0 * (n * m.p_sa1).sqrt(), "{on}");
        assert!((off as f64 - n * m.p_sa0).abs() < 5.0 * (n * m.p_sa0).sqrt(), "{off}");
        assert!(a.cells.windows(2).all(|w| w[0].0 < w[1].0));
        let c = FaultMap::sample(&m, rows, cols, (128, 128), &mut stream_rng(8, 0));
        assert_ne!(a, c);
    }

    #[test]
    fn iid_faults_are_nested_across_rates_with_the_same_kind() {
        let (rows, cols) = (300, 700);
        let rates = [1e-4, 3e-4, 1e-3, 4.9e-3, 1e-2, 0.02, 0.125, 0.3, 0.5, 0.9, 1.0];
        for seed in 0..4 {
            let maps: Vec<FaultMap> = rates
                .iter()
                .map(|&p| {
                    let m = FaultModel::from_rate(p);
                    FaultMap::sample(&m, rows, cols, (128, 128), &mut stream_rng(seed, 5))
                })
                .collect();
            for pair in maps.windows(2) {
                let upper: std::collections::HashMap<u32, Fault> =
                    pair[1].cells.iter().copied().collect();
                for (cell, kind) in &pair[0].cells {
                    assert_eq!(upper.get(cell), Some(kind), "seed {seed}: cell {cell} left");
                }
                assert!(pair[1].cells.windows(2).all(|w| w[0].0 < w[1].0));
            }
            assert_eq!(maps.last().map(|m| m.cells.len()), Some(rows * cols));
        }
    }

    #[test]
    fn nested_faults_hit_each_cell_independently_at_the_rate() {
        // Every cell of a 12-cell array, over many seeds: its own frequency is p, and a pair's
        // joint frequency is p^2 (the band merge neither favours positions nor couples them).
        let n = 12;
        let seeds = 40_000;
        for p in [0.05, 0.3, 0.7] {
            let mut hits = vec![0usize; n];
            let mut both = 0usize;
            for seed in 0..seeds {
                let m = FaultModel::from_rate(p);
                let map = FaultMap::sample(&m, 3, 4, (128, 128), &mut stream_rng(seed, 0));
                for (i, _) in &map.cells {
                    hits[*i as usize] += 1;
                }
                let has = |c: u32| map.cells.iter().any(|x| x.0 == c);
                both += usize::from(has(0) && has(n as u32 - 1));
            }
            let sd = (p * (1.0 - p) / seeds as f64).sqrt();
            for (i, &h) in hits.iter().enumerate() {
                let f = h as f64 / seeds as f64;
                assert!((f - p).abs() < 5.0 * sd, "p {p}, cell {i}: {f}");
            }
            let f = both as f64 / seeds as f64;
            let sd2 = (p * p * (1.0 - p * p) / seeds as f64).sqrt();
            assert!((f - p * p).abs() < 5.0 * sd2, "p {p}: joint {f}");
        }
    }

    #[test]
    fn free_picks_land_on_the_free_cells_brute_force() {
        let marked: Vec<(u32, f64, f64)> = [1u32, 2, 5, 9].iter().map(|&c| (c, 0.0, 0.0)).collect();
        let free: Vec<u32> = (0..14).filter(|c| ![1, 2, 5, 9].contains(c)).collect();
        let picks: Vec<(usize, f64, f64)> =
            [0usize, 1, 3, 5, 9].iter().map(|&f| (f, 1.0, 1.0)).collect();
        let merged = merge_free_picks(&marked, &picks);
        let mut expect: Vec<u32> = [1, 2, 5, 9].into();
        expect.extend(picks.iter().map(|p| free[p.0]));
        expect.sort_unstable();
        assert_eq!(merged.iter().map(|m| m.0).collect::<Vec<_>>(), expect);
        assert_eq!(merged.iter().filter(|m| m.1 == 1.0).count(), picks.len());
    }

    #[test]
    fn clustered_faults_keep_the_rate_roughly_and_come_in_patches() {
        let m = FaultModel { clusters: Some(Clusters { side: 4 }), ..FaultModel::from_rate(0.01) };
        let (rows, cols) = (1024, 1024);
        let map = FaultMap::sample(&m, rows, cols, (128, 128), &mut stream_rng(1, 3));
        let rate = map.cells.len() as f64 / (rows * cols) as f64;
        assert!((0.005..0.012).contains(&rate), "{rate}");
        // Patches: most faulty cells have a faulty right or lower neighbour.
        let set: std::collections::HashSet<u32> = map.cells.iter().map(|c| c.0).collect();
        let neighboured = map
            .cells
            .iter()
            .filter(|(i, _)| set.contains(&(i + 1)) || set.contains(&(i + cols as u32)))
            .count();
        assert!(neighboured * 2 > map.cells.len());
    }

    #[test]
    fn rates_outside_zero_one_are_rejected() {
        assert!(FaultModel::from_rate(1.5).validate().is_err());
        assert!(FaultModel { variation_sigma: -1.0, ..FaultModel::none() }.validate().is_err());
        assert!(FaultModel::from_rate(0.01).validate().is_ok());
        assert_eq!(FaultModel::from_rate(0.01).swapped().p_sa0, FaultModel::from_rate(0.01).p_sa1);
    }
}
