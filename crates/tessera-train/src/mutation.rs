//! Prune and grow on one layer, in the units of its sparsity scheme.
//!
//! A [`SparseLayer`] knows the units its scheme prunes together: the disjoint groups of a
//! selection scheme (single weights for unstructured, `r x c` tiles for block, one kernel
//! position across a block of filters x channels for block-punched, ...), or, for
//! pattern + connectivity, whole 3x3 kernels that are either empty or one pattern of a fixed
//! library. Pruning is tessera-sparsity's exact projection of a score (magnitude, or magnitude
//! plus a gradient term) onto the scheme at the requested budget, so the result always has the
//! scheme's structure. Growing adds whole empty units: at random (SET, MEST; a grown pattern
//! kernel gets a random library pattern, as MEST's `pattern+filter_balance` growth does) or by
//! the largest score (RigL's dense-gradient criterion; a grown kernel takes the library pattern
//! with the most gradient energy). Schemes whose groups overlap (BCR) or that constrain every
//! row (N:M, polarized) have no well-defined grow step and are rejected.

use rand::seq::index::sample;
use rand::{Rng, RngExt};
use tessera_sparsity::{Groups, Layer, Mask, PatternLibrary, Scheme, Target, Tiling};

use crate::error::{Result, TrainError};

/// The units a scheme prunes and grows whole.
#[derive(Debug, Clone)]
enum Units {
    /// Disjoint groups of a selection scheme, each counting `nominal` weights of the budget.
    Groups { groups: Groups },
    /// 3x3 kernels (9 consecutive GEMM positions), each empty or one library pattern.
    Patterns { library: PatternLibrary, kernels: usize },
}

/// One sparse-trained weight: its geometry, scheme and units.
#[derive(Debug, Clone)]
pub struct SparseLayer {
    /// Weight path in the model.
    pub path: String,
    /// Geometry (GEMM view).
    pub layer: Layer,
    /// The scheme every mask of this layer has.
    pub scheme: Scheme,
    units: Units,
}

impl SparseLayer {
    /// A layer trained sparse with `scheme`. Pattern schemes need connectivity (a kernel may
    /// be empty) and a fixed library; groups that overlap, N:M and polarized schemes are
    /// rejected with an error naming the layer.
    pub fn new(path: impl Into<String>, layer: Layer, scheme: Scheme) -> Result<Self> {
        let path = path.into();
        let units = match &scheme {
            Scheme::Pattern(p) => {
                scheme.check_applicable(&layer, Tiling::Pad)?;
                let library = p.library.clone().ok_or_else(|| {
                    TrainError::layer(
                        &path,
                        "a pattern scheme needs a fixed library for sparse training (the trainer extracts one from the initial weights)",
                    )
                })?;
                if !p.connectivity {
                    return Err(TrainError::layer(
                        &path,
                        "pattern without connectivity keeps every kernel (density 4/9): there is nothing to prune or grow; use pattern:K+connectivity",
                    ));
                }
                Units::Patterns { library, kernels: layer.geometry.len() / 9 }
            }
            Scheme::Bcr { .. } | Scheme::NM { .. } | Scheme::Polarized(_) => {
                return Err(TrainError::layer(
                    &path,
                    format!(
                        "scheme `{scheme}` has no prune/grow unit (overlapping or per-row constraints); use unstructured, block, block-punched, KGS, filter/channel/column, connectivity or pattern+connectivity"
                    ),
                ));
            }
            Scheme::Block { balanced: true, .. }
            | Scheme::BlockPunched { balanced: true, .. }
            | Scheme::Kgs { balanced: true, .. } => {
                return Err(TrainError::layer(
                    &path,
                    format!(
                        "scheme `{scheme}` is balanced (the same count per block row); prune and grow here work over the whole layer and would break the balance: use the unbalanced form"
                    ),
                ));
            }
            _ => {
                let groups = scheme.groups(&layer, Tiling::Pad)?;
                let mut seen = Mask::zeros(layer.geometry.len());
                for g in groups.iter() {
                    for &i in g {
                        if seen.get(i as usize) {
                            return Err(TrainError::layer(
                                &path,
                                format!("scheme `{scheme}` has overlapping groups"),
                            ));
                        }
                        seen.set(i as usize, true);
                    }
                }
                Units::Groups { groups }
            }
        };
        Ok(SparseLayer { path, layer, scheme, units })
    }

    /// Number of weights.
    pub fn len(&self) -> usize {
        self.layer.geometry.len()
    }

    /// Whether the layer has no weights (never, for a valid layer).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of prune/grow units.
    pub fn units(&self) -> usize {
        match &self.units {
            Units::Groups { groups } => groups.len(),
            Units::Patterns { kernels, .. } => *kernels,
        }
    }

    /// Weights one unit counts for against a budget (edge blocks count at full size).
    pub fn unit_size(&self) -> usize {
        match &self.units {
            Units::Groups { groups } => groups.nominal_size().max(1),
            Units::Patterns { .. } => 4,
        }
    }

    fn padded_len(&self) -> usize {
        match &self.units {
            Units::Groups { groups } => groups.len() * groups.nominal_size(),
            Units::Patterns { .. } => self.len(),
        }
    }

    /// Units kept at `density` (what a projection to that density keeps).
    pub fn units_at(&self, density: f64) -> Result<usize> {
        let t = Target::sparsity((1.0 - density).clamp(0.0, 1.0))?;
        Ok((t.budget(self.padded_len()) / self.unit_size()).min(self.units()))
    }

    fn unit_positions(&self, u: usize) -> Vec<usize> {
        match &self.units {
            Units::Groups { groups } => groups.group(u).iter().map(|&i| i as usize).collect(),
            Units::Patterns { .. } => (u * 9..u * 9 + 9).collect(),
        }
    }

    /// Whether unit `u` has any kept position in `mask`.
    fn live(&self, mask: &Mask, u: usize) -> bool {
        match &self.units {
            Units::Groups { groups } => groups.group(u).iter().any(|&i| mask.get(i as usize)),
            Units::Patterns { .. } => (u * 9..u * 9 + 9).any(|i| mask.get(i)),
        }
    }

    /// Number of live units of `mask`.
    pub fn live_units(&self, mask: &Mask) -> usize {
        (0..self.units()).filter(|&u| self.live(mask, u)).count()
    }

    /// The mask keeping the `keep` units with the highest `score` (GEMM view, one value per
    /// weight; ranked by the scheme's group norm), from tessera-sparsity's projection.
    pub fn keep_top(&self, score: &[f32], keep: usize) -> Result<Mask> {
        let keep = keep.min(self.units());
        let density = (keep * self.unit_size()) as f64 / self.padded_len().max(1) as f64;
        let target = Target::sparsity((1.0 - density).clamp(0.0, 1.0))?;
        let p = self.scheme.project_with(&self.layer, score, target, Tiling::Pad)?;
        Ok(p.mask)
    }

    /// The prune step of an update: the `keep` live units of `mask` with the highest `score`
    /// (ranked by the unit's L2 norm, the scheme's group score; ties to the lower unit), each
    /// keeping its current positions (a pattern kernel its pattern). For masked weights this is
    /// the projection's choice restricted to live units, so a prune never adds positions even
    /// when some live units score zero.
    pub fn keep_top_live(&self, mask: &Mask, score: &[f32], keep: usize) -> Mask {
        let mut live: Vec<(usize, f64)> = (0..self.units())
            .filter(|&u| self.live(mask, u))
            .map(|u| {
                let e = self
                    .unit_positions(u)
                    .iter()
                    .filter(|&&i| mask.get(i))
                    .map(|&i| f64::from(score[i]).powi(2))
                    .sum();
                (u, e)
            })
            .collect();
        live.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut out = Mask::zeros(self.len());
        for &(u, _) in live.iter().take(keep) {
            for i in self.unit_positions(u) {
                if mask.get(i) {
                    out.set(i, true);
                }
            }
        }
        out
    }

    /// Adds unit `u` to `mask`: every position of a group, or the pattern `pick` chooses from
    /// the library for a kernel.
    fn add_unit(&self, mask: &mut Mask, u: usize, pick: impl FnOnce(&PatternLibrary) -> u16) {
        match &self.units {
            Units::Groups { groups } => {
                for &i in groups.group(u) {
                    mask.set(i as usize, true);
                }
            }
            Units::Patterns { library, .. } => {
                let pattern = pick(library);
                for t in 0..9 {
                    mask.set(u * 9 + t, pattern >> t & 1 == 1);
                }
            }
        }
    }

    /// Grows `n` empty units of `mask` chosen uniformly at random; a pattern kernel gets a
    /// random library pattern. Returns how many were grown (fewer when fewer are empty).
    pub fn grow_random(&self, mask: &mut Mask, n: usize, rng: &mut impl Rng) -> usize {
        let empty: Vec<usize> = (0..self.units()).filter(|&u| !self.live(mask, u)).collect();
        let n = n.min(empty.len());
        for pick in sample(rng, empty.len(), n) {
            self.add_unit(mask, empty[pick], |library| {
                library.patterns()[rng.random_range(0..library.len())]
            });
        }
        n
    }

    /// Grows the `n` empty units of `mask` with the largest `score` norm (RigL's criterion
    /// with `score` = the dense gradient); a pattern kernel takes the library pattern keeping
    /// the most of its score. Ties go to the lower unit index. Returns how many were grown.
    pub fn grow_by_score(&self, mask: &mut Mask, n: usize, score: &[f32]) -> usize {
        let mut ranked: Vec<(usize, f64)> = (0..self.units())
            .filter(|&u| !self.live(mask, u))
            .map(|u| {
                let e = match &self.units {
                    Units::Groups { groups } => {
                        groups.group(u).iter().map(|&i| f64::from(score[i as usize]).powi(2)).sum()
                    }
                    Units::Patterns { library, .. } => library.best_for(&score[u * 9..u * 9 + 9]).1,
                };
                (u, e)
            })
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let n = n.min(ranked.len());
        for &(u, _) in &ranked[..n] {
            self.add_unit(mask, u, |library| {
                library.patterns()[library.best_for(&score[u * 9..u * 9 + 9]).0]
            });
        }
        n
    }

    /// Checks that `mask` has the scheme's structure: every group kept or pruned whole, every
    /// pattern kernel empty or exactly one library pattern.
    pub fn check_structure(&self, mask: &Mask) -> Result<()> {
        if mask.len() != self.len() {
            return Err(TrainError::layer(
                &self.path,
                format!("mask of {} positions for {} weights", mask.len(), self.len()),
            ));
        }
        for u in 0..self.units() {
            match &self.units {
                Units::Groups { groups } => {
                    let g = groups.group(u);
                    let kept = g.iter().filter(|&&i| mask.get(i as usize)).count();
                    if kept != 0 && kept != g.len() {
                        return Err(TrainError::layer(
                            &self.path,
                            format!(
                                "unit {u} of `{}` is partly kept ({kept} of {})",
                                self.scheme,
                                g.len()
                            ),
                        ));
                    }
                }
                Units::Patterns { library, .. } => {
                    let shape =
                        (0..9).filter(|&t| mask.get(u * 9 + t)).fold(0u16, |m, t| m | 1 << t);
                    if shape != 0 && !library.patterns().contains(&shape) {
                        return Err(TrainError::layer(
                            &self.path,
                            format!(
                                "kernel {u} has shape {shape:#05x}, not in the library {library}"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::ChaCha8Rng;
    use tessera_sparsity::BlockShape;

    use super::*;

    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn pattern_scheme(layer: &Layer, w: &[f32]) -> anyhow::Result<Scheme> {
        let library = PatternLibrary::extract(8, [(layer, w)])?;
        Ok(Scheme::Pattern(tessera_sparsity::PatternScheme {
            k: 8,
            connectivity: true,
            library: Some(library),
        }))
    }

    /// Unstructured keep-top is "the k largest magnitudes": checked against a sort.
    #[test]
    fn unstructured_keep_top_is_the_largest_magnitudes() -> anyhow::Result<()> {
        let layer = Layer::conv2d("c", 8, 4, 3, 3)?;
        let w = weights(layer.geometry.len(), 1);
        let s = SparseLayer::new("c", layer, Scheme::Unstructured)?;
        let m = s.keep_top(&w, 29)?;
        assert_eq!(m.count(), 29);
        let mut sorted: Vec<f32> = w.iter().map(|x| x.abs()).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let thr = sorted[28];
        for (i, x) in w.iter().enumerate() {
            assert_eq!(m.get(i), x.abs() >= thr, "position {i}");
        }
        Ok(())
    }

    /// Block-punched 4x4: prune to 25% then grow back to 50% at random; every step keeps the
    /// structure and the unit counts the budget asks for.
    #[test]
    fn block_punched_prune_and_grow_keep_structure_and_counts() -> anyhow::Result<()> {
        let layer = Layer::conv2d("c", 16, 16, 3, 3)?;
        let w = weights(layer.geometry.len(), 2);
        let scheme = Scheme::BlockPunched { block: BlockShape::new(4, 4)?, balanced: false };
        let s = SparseLayer::new("c", layer, scheme)?;
        assert_eq!(s.unit_size(), 16);
        assert_eq!(s.units(), 4 * 4 * 9);
        let keep = s.units_at(0.25)?;
        assert_eq!(keep, 36);
        let mut m = s.keep_top(&w, keep)?;
        s.check_structure(&m)?;
        assert_eq!(s.live_units(&m), 36);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let before = m.clone();
        assert_eq!(s.grow_random(&mut m, s.units_at(0.5)? - 36, &mut rng), 36);
        s.check_structure(&m)?;
        assert_eq!(m.count(), 72 * 16);
        assert!(before.is_subset_of(&m));
        Ok(())
    }

    /// Pattern + connectivity: pruned kernels are empty, kept ones library patterns; random
    /// growth gives library patterns to previously empty kernels only.
    #[test]
    fn pattern_units_are_library_kernels() -> anyhow::Result<()> {
        let layer = Layer::conv2d("c", 8, 8, 3, 3)?;
        let w = weights(layer.geometry.len(), 4);
        let s = SparseLayer::new("c", layer.clone(), pattern_scheme(&layer, &w)?)?;
        let mut m = s.keep_top(&w, 20)?;
        s.check_structure(&m)?;
        assert_eq!((s.live_units(&m), m.count()), (20, 80));
        let before = m.clone();
        let grown = s.grow_random(&mut m, 10, &mut ChaCha8Rng::seed_from_u64(5));
        assert_eq!(grown, 10);
        s.check_structure(&m)?;
        assert_eq!((s.live_units(&m), m.count()), (30, 120));
        assert!(before.is_subset_of(&m));
        Ok(())
    }

    /// RigL growth picks the empty units with the largest gradient norm (brute force).
    #[test]
    fn grow_by_score_takes_the_largest_empty_units() -> anyhow::Result<()> {
        let layer = Layer::linear("fc", 8, 16)?;
        let scheme = Scheme::Block { block: BlockShape::new(4, 1)?, balanced: false };
        let s = SparseLayer::new("fc", layer, scheme)?;
        let w = weights(s.len(), 6);
        let g = weights(s.len(), 7);
        let mut m = s.keep_top(&w, 8)?;
        let live_before: Vec<bool> = (0..s.units()).map(|u| s.live(&m, u)).collect();
        s.grow_by_score(&mut m, 5, &g);
        let norm = |u: usize| -> f64 {
            s.unit_positions(u).iter().map(|&i| f64::from(g[i]).powi(2)).sum()
        };
        let mut empty: Vec<usize> = (0..s.units()).filter(|&u| !live_before[u]).collect();
        empty.sort_by(|&a, &b| norm(b).total_cmp(&norm(a)));
        for (rank, &u) in empty.iter().enumerate() {
            assert_eq!(s.live(&m, u), rank < 5, "unit {u} at rank {rank}");
        }
        Ok(())
    }

    /// The update's prune keeps a subset of the live units: the top ones by norm (brute
    /// force), never a dead unit, even when live units score zero.
    #[test]
    fn keep_top_live_ranks_only_live_units() -> anyhow::Result<()> {
        let layer = Layer::conv2d("c", 8, 4, 3, 3)?;
        let s = SparseLayer::new("c", layer, "block:4x2".parse()?)?;
        let w = weights(s.len(), 8);
        let old = s.keep_top(&w, 10)?;
        // Zero out the score of three live units: they still beat every dead unit.
        let mut score: Vec<f32> =
            w.iter().enumerate().map(|(i, x)| if old.get(i) { x.abs() } else { 0.0 }).collect();
        let live: Vec<usize> = (0..s.units()).filter(|&u| s.live(&old, u)).collect();
        for &u in &live[..3] {
            for i in s.unit_positions(u) {
                score[i] = 0.0;
            }
        }
        let kept = s.keep_top_live(&old, &score, 9);
        assert!(kept.is_subset_of(&old));
        assert_eq!(s.live_units(&kept), 9);
        s.check_structure(&kept)?;
        // Dropped: exactly one of the zero-score units, the highest index (ties to the lower).
        let dropped: Vec<usize> = live.iter().copied().filter(|&u| !s.live(&kept, u)).collect();
        let mut zeros = live[..3].to_vec();
        zeros.sort_unstable();
        assert_eq!(dropped, vec![zeros[2]]);
        Ok(())
    }

    #[test]
    fn rejects_schemes_without_a_grow_unit() -> anyhow::Result<()> {
        let layer = Layer::conv2d("c", 8, 8, 3, 3)?;
        for s in
            ["bcr:4x4", "nm:2:4", "pattern:8", "block-punched:4x4+balanced", "block:4x1+balanced"]
        {
            let err = SparseLayer::new("c", layer.clone(), s.parse()?).map(|_| ()).unwrap_err();
            assert!(err.to_string().contains("layer `c`"), "{err}");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// For every supported group scheme: keep-top is the brute-force best set of units by
        /// score norm (ties aside), and its count is exactly what `units_at` promises.
        #[test]
        fn keep_top_matches_brute_force_unit_ranking(
            seed in 0u64..1000,
            scheme in prop::sample::select(vec!["unstructured", "block:4x2", "block-punched:4x2", "filter", "connectivity"]),
            density in 0.05f64..0.9,
        ) {
            let layer = Layer::conv2d("c", 8, 4, 3, 3).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let w = weights(layer.geometry.len(), seed);
            let s = SparseLayer::new("c", layer, scheme.parse().map_err(|e: tessera_sparsity::SparsityError| TestCaseError::fail(e.to_string()))?)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let keep = s.units_at(density).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let m = s.keep_top(&w, keep).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(s.live_units(&m), keep);
            s.check_structure(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let norm = |u: usize| -> f64 { s.unit_positions(u).iter().map(|&i| f64::from(w[i]).powi(2)).sum() };
            let kept_min = (0..s.units()).filter(|&u| s.live(&m, u)).map(norm).fold(f64::INFINITY, f64::min);
            let dropped_max = (0..s.units()).filter(|&u| !s.live(&m, u)).map(norm).fold(0.0, f64::max);
            prop_assert!(keep == 0 || kept_min >= dropped_max - 1e-9);
        }
    }
}
