//! Pattern and connectivity pruning of 3x3 convolutions (PatDNN / PCONV).
//!
//! A pattern is a 9-bit mask over the taps of a 3x3 kernel (bit `h * 3 + w`) with exactly four
//! bits set, one of them the centre (bit 4): C(8, 3) = 56 candidates. A library holds K of
//! them (default 8), extracted as the most frequent "top-4 shapes" of a trained model: for each
//! kernel, the centre plus the three largest-magnitude other taps.
//!
//! Projections (all exact):
//! * pattern only: every kernel keeps the library pattern with the most energy. This always
//!   keeps 4/9 of the weights, so targets below that density are infeasible without
//!   connectivity.
//! * pattern + connectivity: the feasible set is "each kernel is zero or one library pattern,
//!   at most n = floor(budget / 4) kernels non-zero". Its exact projection ranks kernels by
//!   their *best-pattern* energy and keeps the top n. (PatDNN's separate connectivity
//!   projection ranks by full-kernel L2 norm; that is [`Scheme::Connectivity`], used as a second
//!   ADMM constraint set.)

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::error::{Result, SparsityError};
use crate::geometry::{Layer, LayerGeometry};
use crate::groups::Groups;
use crate::mask::Mask;
use crate::scheme::{PatternScheme, Projection, Scheme};
use crate::select::{energy, top_n};
use crate::target::Target;

/// Number of 4-tap 3x3 patterns that include the centre: C(8, 3).
pub const CANDIDATES: usize = 56;

const CENTRE: u16 = 1 << 4;

/// A library of 4-tap 3x3 patterns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PatternLibrary {
    patterns: Vec<u16>,
}

/// Every candidate pattern in increasing mask order.
pub fn all_candidates() -> Vec<u16> {
    (0u16..512).filter(|m| m.count_ones() == 4 && m & CENTRE != 0).collect()
}

impl PatternLibrary {
    /// A library from explicit 9-bit masks; each must have 4 taps including the centre, and no
    /// mask may repeat.
    pub fn new(patterns: Vec<u16>) -> Result<Self> {
        let err = |reason: String| SparsityError::Parse {
            what: "pattern library",
            input: format!("{patterns:?}"),
            reason,
        };
        if patterns.is_empty() {
            return Err(err("at least one pattern".into()));
        }
        for (i, &p) in patterns.iter().enumerate() {
            if p >= 512 || p.count_ones() != 4 || p & CENTRE == 0 {
                return Err(err(format!(
                    "pattern {p:#05x} must set 4 of the 9 taps including the centre (bit 4)"
                )));
            }
            if patterns[..i].contains(&p) {
                return Err(err(format!("pattern {p:#05x} appears twice")));
            }
        }
        Ok(PatternLibrary { patterns })
    }

    /// The masks, in library order.
    pub fn patterns(&self) -> &[u16] {
        &self.patterns
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether the library is empty (never, for a constructed library).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The top-4 shape of one kernel: the centre plus its three largest-magnitude other taps
    /// (ties to the lower tap index).
    pub fn shape_of(kernel: &[f32]) -> u16 {
        let mut others: Vec<usize> = (0..9).filter(|&p| p != 4).collect();
        others.sort_by(|&a, &b| kernel[b].abs().total_cmp(&kernel[a].abs()).then(a.cmp(&b)));
        others[..3].iter().fold(CENTRE, |m, &p| m | 1 << p)
    }

    /// The `k` most frequent top-4 shapes over every 3x3 kernel of `layers` (ties to the lower
    /// mask); if fewer than `k` shapes occur, the remaining candidates fill up in mask order.
    pub fn extract<'a>(
        k: usize,
        layers: impl IntoIterator<Item = (&'a Layer, &'a [f32])>,
    ) -> Result<Self> {
        if !(1..=CANDIDATES).contains(&k) {
            return Err(SparsityError::Parse {
                what: "pattern library size",
                input: k.to_string(),
                reason: format!("must be in 1..={CANDIDATES}"),
            });
        }
        let mut counts: HashMap<u16, usize> = HashMap::new();
        for (layer, weights) in layers {
            layer.check_weights(weights)?;
            if !is_3x3(&layer.geometry) {
                continue;
            }
            for kernel in weights.chunks_exact(9) {
                *counts.entry(Self::shape_of(kernel)).or_default() += 1;
            }
        }
        let mut ranked: Vec<(u16, usize)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut patterns: Vec<u16> = ranked.into_iter().take(k).map(|(m, _)| m).collect();
        for c in all_candidates() {
            if patterns.len() == k {
                break;
            }
            if !patterns.contains(&c) {
                patterns.push(c);
            }
        }
        Self::new(patterns)
    }

    /// Index of the pattern keeping the most energy of `kernel`, and that energy.
    pub fn best_for(&self, kernel: &[f32]) -> (usize, f64) {
        let mut best = (0, f64::NEG_INFINITY);
        for (i, &p) in self.patterns.iter().enumerate() {
            let e = energy((0..9).filter(|t| p >> t & 1 == 1).map(|t| kernel[t]));
            if e > best.1 {
                best = (i, e);
            }
        }
        best
    }
}

impl fmt::Display for PatternLibrary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.patterns.iter().map(|p| format!("{p:03x}")).collect();
        f.write_str(&parts.join("."))
    }
}

impl FromStr for PatternLibrary {
    type Err = SparsityError;

    /// Dot-separated 3-digit hex masks, e.g. `01b.0b8`.
    fn from_str(s: &str) -> Result<Self> {
        let patterns = s
            .split('.')
            .map(|h| u16::from_str_radix(h, 16))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| SparsityError::Parse {
                what: "pattern library",
                input: s.into(),
                reason: "expected dot-separated hex masks such as 01b.0b8".into(),
            })?;
        Self::new(patterns)
    }
}

fn is_3x3(g: &LayerGeometry) -> bool {
    matches!(g, LayerGeometry::Conv2d { kh: 3, kw: 3, .. })
}

fn require_3x3(scheme: &Scheme, layer: &Layer) -> Result<()> {
    if is_3x3(&layer.geometry) {
        Ok(())
    } else {
        Err(scheme.not_applicable(layer, "pattern pruning needs 3x3 2-D convolution kernels"))
    }
}

/// Kernels of a 3x3 layer: the connectivity groups.
pub(crate) fn kernel_groups(scheme: &Scheme, layer: &Layer) -> Result<Groups> {
    require_3x3(scheme, layer)?;
    let n = layer.geometry.len() / 9;
    let mut out = Groups::with_capacity(n, n * 9, 9);
    for kernel in 0..n {
        out.push(kernel * 9..kernel * 9 + 9);
    }
    Ok(out)
}

/// The pattern (and connectivity) projection.
pub(crate) fn project(
    scheme: &Scheme,
    p: &PatternScheme,
    layer: &Layer,
    weights: &[f32],
    target: Target,
) -> Result<Projection> {
    require_3x3(scheme, layer)?;
    let library = match &p.library {
        Some(lib) => lib.clone(),
        None => PatternLibrary::extract(p.k, [(layer, weights)])?,
    };
    let kernels = weights.len() / 9;
    let budget = target.budget(weights.len());
    let best: Vec<(usize, f64)> = weights.chunks_exact(9).map(|k| library.best_for(k)).collect();
    let kept: Vec<u32> = if p.connectivity {
        let scores: Vec<f64> = best.iter().map(|b| b.1).collect();
        top_n(&scores, budget / 4)
    } else {
        if budget < kernels * 4 {
            return Err(scheme.infeasible(
                layer,
                target,
                "pattern pruning alone keeps 4 of 9 weights of every kernel; add +connectivity to go further",
            ));
        }
        (0..kernels as u32).collect()
    };
    let mut mask = Mask::zeros(weights.len());
    let mut values = vec![0.0f32; weights.len()];
    for k in kept {
        let k = k as usize;
        let pattern = library.patterns()[best[k].0];
        for t in (0..9).filter(|t| pattern >> t & 1 == 1) {
            mask.set(k * 9 + t, true);
            values[k * 9 + t] = weights[k * 9 + t];
        }
    }
    Ok(Projection { mask, values, exact: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_are_56_candidates() {
        let c = all_candidates();
        assert_eq!(c.len(), CANDIDATES);
        assert!(c.iter().all(|m| m & CENTRE != 0 && m.count_ones() == 4));
    }

    #[test]
    fn shape_is_centre_plus_top3() {
        // taps:        0    1    2    3    4    5    6    7    8
        let k = [0.1, -5.0, 0.0, 4.0, 0.0, 0.2, 0.0, -3.0, 0.3];
        assert_eq!(PatternLibrary::shape_of(&k), (1 << 1) | (1 << 3) | (1 << 4) | (1 << 7));
        // All equal: the lowest indices win.
        assert_eq!(PatternLibrary::shape_of(&[1.0; 9]), 0b1_0111);
    }

    #[test]
    fn extraction_counts_and_fills() {
        let layer = Layer::conv2d("c", 1, 3, 3, 3).unwrap();
        let mut w = [0.0f32; 27];
        // Two kernels with shape {1,3,4,5}, one with {0,1,2,4}.
        for k in 0..2 {
            for t in [1, 3, 5] {
                w[k * 9 + t] = 1.0;
            }
        }
        for t in [0, 1, 2] {
            w[18 + t] = 2.0;
        }
        let lib = PatternLibrary::extract(3, [(&layer, &w[..])]).unwrap();
        assert_eq!(lib.patterns()[..2], [(1 << 1) | (1 << 3) | (1 << 4) | (1 << 5), 0b1_0111]);
        assert_eq!(lib.len(), 3);
        assert!(!lib.patterns()[..2].contains(&lib.patterns()[2]));
        assert_eq!(lib.to_string().parse::<PatternLibrary>().unwrap(), lib);
    }
}
