//! The sparsity schemes, their textual forms, and the entry points every other crate calls:
//! [`Scheme::project`], [`Scheme::groups`], [`Scheme::score`].
//!
//! | text | groups / constraint |
//! |---|---|
//! | `unstructured` | single weights |
//! | `filter` | GEMM rows (output channels) |
//! | `channel` | input channels (per channel group) |
//! | `column` | GEMM columns (per channel group) |
//! | `connectivity` | whole kernels (one filter x one input channel) |
//! | `pattern:K[+connectivity][@hex.hex...]` | every kept 3x3 kernel keeps 4 taps incl. the centre, one of K library patterns; `+connectivity` also removes whole kernels |
//! | `block-punched:BRxBC[+balanced]` | unit = one kernel position shared by a block of BR filters x BC channels |
//! | `bcr:RxC` | R x C blocks; each keeps a dense kr x kc sub-matrix (rows and columns chosen per block), the same kr, kc in every block |
//! | `block:RxC[+balanced]` | whole R x C blocks of the GEMM view; `+balanced`: same count per block-row |
//! | `kgs:GMxGN[+balanced]` | 3-D kernel groups of GM filters x GN channels; unit = one spatial position (kh, kw) across all kt slices, shared by the group |
//! | `kgs-vanilla:GMxGN` | whole kernel groups |
//! | `nm:N:M` | N kept of every M consecutive weights along a row |
//! | `polarized:M[+sum][(BASE)]` | every M-row fragment of a crossbar column (M consecutive GEMM columns of one row) has one sign; optionally composed with a pruning scheme BASE |
//!
//! Rejected alternative: one struct per scheme behind a trait object. A closed enum keeps the
//! textual form, serde and exhaustive matching in one place, which is what configs and the
//! search need; the per-scheme logic still lives in its own module.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Result, SparsityError};
use crate::geometry::Layer;
use crate::groups::Groups;
use crate::mask::Mask;
use crate::schemes::{bcr, nm, pattern, polarized, selection};
use crate::target::Target;

pub use crate::schemes::pattern::PatternLibrary;

/// A block or group shape: rows (filters) x columns (channels or GEMM columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockShape {
    rows: usize,
    cols: usize,
}

impl BlockShape {
    /// A validated shape; both sides at least 1.
    pub fn new(rows: usize, cols: usize) -> Result<Self> {
        if rows == 0 || cols == 0 {
            return Err(SparsityError::Parse {
                what: "block shape",
                input: format!("{rows}x{cols}"),
                reason: "both sides must be at least 1".into(),
            });
        }
        Ok(BlockShape { rows, cols })
    }

    /// Rows (filters).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (channels or GEMM columns).
    pub fn cols(&self) -> usize {
        self.cols
    }
}

impl fmt::Display for BlockShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.rows, self.cols)
    }
}

impl FromStr for BlockShape {
    type Err = SparsityError;

    fn from_str(s: &str) -> Result<Self> {
        let err = || SparsityError::Parse {
            what: "block shape",
            input: s.into(),
            reason: "expected ROWSxCOLS, e.g. 8x4".into(),
        };
        let (r, c) = s.split_once('x').ok_or_else(err)?;
        BlockShape::new(r.parse().map_err(|_| err())?, c.parse().map_err(|_| err())?)
    }
}

/// Pattern pruning settings (PatDNN).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PatternScheme {
    /// Library size K (default 8).
    pub k: usize,
    /// Also remove whole kernels (connectivity pruning) to reach the target.
    pub connectivity: bool,
    /// The library; `None` extracts it from the layer being projected (most frequent top-4
    /// shapes). Models extract one library over all their 3x3 layers and set it here.
    pub library: Option<PatternLibrary>,
}

/// How a polarized fragment's sign is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignRule {
    /// The sign whose entries carry more energy: the exact Euclidean projection.
    Energy,
    /// The sign of the fragment's sum (a cheaper rule some FORMS descriptions use).
    Sum,
}

/// FORMS polarization settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolarizedScheme {
    /// Fragment height: crossbar rows sharing one sign (4, 8 or 16 in FORMS).
    pub m: usize,
    /// Sign rule.
    pub rule: SignRule,
    /// A pruning scheme applied together with the polarization.
    pub base: Option<Box<Scheme>>,
}

/// A sparsity scheme. See the module documentation for the textual forms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// Single weights by magnitude.
    Unstructured,
    /// Whole output channels (GEMM rows).
    Filter,
    /// Whole input channels.
    Channel,
    /// Whole GEMM columns.
    Column,
    /// Whole kernels (one filter x one input channel).
    Connectivity,
    /// 4-tap 3x3 patterns from a library, optionally with connectivity pruning.
    Pattern(PatternScheme),
    /// Block-punched: one kernel position shared by a block of filters x channels.
    BlockPunched {
        /// Filters x input channels per block (default 8x4).
        block: BlockShape,
        /// Keep the same number of units in every block.
        balanced: bool,
    },
    /// Block column-row: each block keeps a dense kr x kc sub-matrix.
    Bcr {
        /// Rows x columns per block.
        block: BlockShape,
    },
    /// Whole blocks of the GEMM view (BSR).
    Block {
        /// Rows x columns per block.
        block: BlockShape,
        /// Keep the same number of blocks in every block-row.
        balanced: bool,
    },
    /// Kernel-group structured (RT3D KGS).
    Kgs {
        /// Filters x input channels per kernel group.
        group: BlockShape,
        /// Keep the same number of positions in every group.
        balanced: bool,
    },
    /// Vanilla structured (RT3D): whole kernel groups.
    KgsVanilla {
        /// Filters x input channels per kernel group.
        group: BlockShape,
    },
    /// N kept in every M consecutive weights of a row.
    NM {
        /// Kept per group.
        n: usize,
        /// Group length.
        m: usize,
    },
    /// Sign-consistent crossbar fragments (FORMS), optionally over a pruning scheme.
    Polarized(PolarizedScheme),
}

/// What to do when a scheme's blocks do not divide the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Tiling {
    /// Return [`SparsityError::NotTileable`].
    #[default]
    Exact,
    /// Pad the layer with zeros to whole blocks; the budget is computed on the padded size and
    /// edge blocks count at their full size.
    Pad,
}

/// The result of a projection.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    /// Positions allowed to be non-zero.
    pub mask: Mask,
    /// The projected weights (zero outside the mask; polarization also zeroes minority signs).
    pub values: Vec<f32>,
    /// Whether this is the exact Euclidean projection. Only two cases are not: BCR blocks too
    /// large to search exhaustively, and polarization composed with a pruning scheme.
    pub exact: bool,
}

impl Projection {
    /// Squared Euclidean distance `||weights - values||^2`.
    pub fn distance_squared(&self, weights: &[f32]) -> f64 {
        weights
            .iter()
            .zip(&self.values)
            .map(|(&w, &v)| {
                let d = f64::from(w) - f64::from(v);
                d * d
            })
            .sum()
    }
}

impl Scheme {
    /// Block-punched 8x4, the default of the automatic-mapping paper.
    pub fn block_punched_default() -> Self {
        Scheme::BlockPunched { block: BlockShape { rows: 8, cols: 4 }, balanced: false }
    }

    /// The exact Euclidean projection of `weights` (GEMM view, row-major) onto the set of
    /// weights with this scheme's structure that keep at most `target`.
    pub fn project(&self, layer: &Layer, weights: &[f32], target: Target) -> Result<Projection> {
        self.project_with(layer, weights, target, Tiling::Exact)
    }

    /// [`Scheme::project`] with an explicit [`Tiling`] policy.
    pub fn project_with(
        &self,
        layer: &Layer,
        weights: &[f32],
        target: Target,
        tiling: Tiling,
    ) -> Result<Projection> {
        let _span =
            tracing::debug_span!("project", layer = %layer.name, scheme = %self, %target).entered();
        layer.check_weights(weights)?;
        match self {
            Scheme::Unstructured => Ok(selection::project_unstructured(weights, target)),
            Scheme::Pattern(p) => pattern::project(self, p, layer, weights, target),
            Scheme::Bcr { block } => bcr::project(self, *block, layer, weights, target, tiling),
            Scheme::NM { n, m } => nm::project(self, *n, *m, layer, weights, target, tiling),
            Scheme::Polarized(p) => polarized::project(self, p, layer, weights, target, tiling),
            _ => {
                let groups = selection::groups(self, layer, tiling)?;
                Ok(selection::project(&groups, weights, target))
            }
        }
    }

    /// The index sets this scheme prunes together (for group-lasso regularizers). BCR returns
    /// its row segments followed by its column segments (they overlap); pattern schemes return
    /// kernels; N:M its M-groups; polarized its fragments.
    pub fn groups(&self, layer: &Layer, tiling: Tiling) -> Result<Groups> {
        match self {
            Scheme::Pattern(_) => pattern::kernel_groups(self, layer),
            Scheme::Bcr { block } => bcr::groups(self, *block, layer, tiling),
            Scheme::NM { m, .. } => nm::groups(self, *m, layer, tiling),
            Scheme::Polarized(p) => Ok(polarized::fragments(&layer.geometry, p.m)),
            _ => selection::groups(self, layer, tiling),
        }
    }

    /// The L2 norm of every group of [`Scheme::groups`]: the score the projection ranks by
    /// (ranking by norm and by energy is the same order).
    pub fn score(&self, layer: &Layer, weights: &[f32], tiling: Tiling) -> Result<Vec<f32>> {
        layer.check_weights(weights)?;
        Ok(self.groups(layer, tiling)?.norms(weights))
    }

    /// Whether the scheme can be applied to `layer` under `tiling` (the search uses this to
    /// exclude invalid choices). Returns the error that a projection would return.
    pub fn check_applicable(&self, layer: &Layer, tiling: Tiling) -> Result<()> {
        self.groups(layer, tiling).map(|_| ())
    }

    /// The rows x columns one tile of this scheme spans in the GEMM view `[output channels,
    /// input channels x kernel_volume]` (row-major, kernel positions innermost): a block for
    /// block schemes, a kernel for kernel-level schemes, an M-run for N:M, a fragment for
    /// polarization, 1 x 1 for schemes whose groups are whole rows or columns or single
    /// weights. Removing whole aligned tiles (rows `[i*r, (i+1)*r)`, columns `[j*c, (j+1)*c)`)
    /// keeps a conforming mask conforming; removing a single row or column from inside a tile
    /// does not (dead-channel removal in tessera-ir relies on this).
    pub fn gemm_tile(&self, kernel_volume: usize) -> (usize, usize) {
        let k = kernel_volume.max(1);
        match self {
            Scheme::Unstructured | Scheme::Filter | Scheme::Column => (1, 1),
            Scheme::Channel | Scheme::Connectivity | Scheme::Pattern(_) => (1, k),
            Scheme::BlockPunched { block, .. } => (block.rows, block.cols * k),
            Scheme::Kgs { group, .. } | Scheme::KgsVanilla { group } => {
                (group.rows, group.cols * k)
            }
            Scheme::Block { block, .. } | Scheme::Bcr { block } => (block.rows, block.cols),
            Scheme::NM { m, .. } => (1, (*m).max(1)),
            Scheme::Polarized(p) => {
                let (r, c) = p.base.as_deref().map_or((1, 1), |b| b.gemm_tile(k));
                (r, lcm(c, p.m.max(1)))
            }
        }
    }

    /// The "cannot tile" error for this scheme and layer.
    pub(crate) fn not_tileable(&self, layer: &Layer, reason: String) -> SparsityError {
        SparsityError::NotTileable { layer: layer.name.clone(), scheme: self.to_string(), reason }
    }

    /// The "does not apply" error for this scheme and layer.
    pub(crate) fn not_applicable(&self, layer: &Layer, reason: impl Into<String>) -> SparsityError {
        SparsityError::NotApplicable {
            layer: layer.name.clone(),
            scheme: self.to_string(),
            reason: reason.into(),
        }
    }

    /// The "cannot reach target" error for this scheme and layer.
    pub(crate) fn infeasible(
        &self,
        layer: &Layer,
        target: Target,
        reason: impl Into<String>,
    ) -> SparsityError {
        SparsityError::InfeasibleTarget {
            layer: layer.name.clone(),
            scheme: self.to_string(),
            target: target.to_string(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |on: bool, name: &'static str| if on { name } else { "" };
        match self {
            Scheme::Unstructured => f.write_str("unstructured"),
            Scheme::Filter => f.write_str("filter"),
            Scheme::Channel => f.write_str("channel"),
            Scheme::Column => f.write_str("column"),
            Scheme::Connectivity => f.write_str("connectivity"),
            Scheme::Pattern(p) => {
                write!(f, "pattern:{}{}", p.k, flag(p.connectivity, "+connectivity"))?;
                if let Some(lib) = &p.library {
                    write!(f, "@{lib}")?;
                }
                Ok(())
            }
            Scheme::BlockPunched { block, balanced } => {
                write!(f, "block-punched:{block}{}", flag(*balanced, "+balanced"))
            }
            Scheme::Bcr { block } => write!(f, "bcr:{block}"),
            Scheme::Block { block, balanced } => {
                write!(f, "block:{block}{}", flag(*balanced, "+balanced"))
            }
            Scheme::Kgs { group, balanced } => {
                write!(f, "kgs:{group}{}", flag(*balanced, "+balanced"))
            }
            Scheme::KgsVanilla { group } => write!(f, "kgs-vanilla:{group}"),
            Scheme::NM { n, m } => write!(f, "nm:{n}:{m}"),
            Scheme::Polarized(p) => {
                write!(f, "polarized:{}{}", p.m, flag(p.rule == SignRule::Sum, "+sum"))?;
                if let Some(base) = &p.base {
                    write!(f, "({base})")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for Scheme {
    type Err = SparsityError;

    fn from_str(input: &str) -> Result<Self> {
        let s = input.trim();
        let err =
            |reason: String| SparsityError::Parse { what: "scheme", input: input.into(), reason };
        // A composed polarization carries its base scheme in parentheses.
        let (head, base) = match s.find('(') {
            Some(open) => {
                let inner = s[open + 1..].strip_suffix(')').ok_or_else(|| {
                    err("unbalanced parenthesis: expected `polarized:M(BASE)`".into())
                })?;
                (&s[..open], Some(inner.parse::<Scheme>()?))
            }
            None => (s, None),
        };
        let (name, rest) = head.split_once(':').unwrap_or((head, ""));
        let (rest, library) = match rest.split_once('@') {
            Some((r, lib)) => (r, Some(lib)),
            None => (rest, None),
        };
        let mut parts = rest.split('+');
        let arg = parts.next().unwrap_or("");
        let flags: Vec<&str> = parts.collect();
        let mut allowed: &[&str] = &[];
        let has = |f: &str| flags.contains(&f);
        let no_arg = |scheme: Scheme| {
            if arg.is_empty() {
                Ok(scheme)
            } else {
                Err(err(format!("`{name}` takes no argument")))
            }
        };
        let shape = || arg.parse::<BlockShape>().map_err(|e| err(e.to_string()));
        let scheme = match name {
            "unstructured" => no_arg(Scheme::Unstructured)?,
            "filter" => no_arg(Scheme::Filter)?,
            "channel" => no_arg(Scheme::Channel)?,
            "column" => no_arg(Scheme::Column)?,
            "connectivity" => no_arg(Scheme::Connectivity)?,
            "pattern" => {
                allowed = &["connectivity"];
                let k = if arg.is_empty() {
                    8
                } else {
                    arg.parse().map_err(|_| err("pattern:K needs an integer K".into()))?
                };
                if !(1..=pattern::CANDIDATES).contains(&k) {
                    return Err(err(format!(
                        "pattern library size must be in 1..={}",
                        pattern::CANDIDATES
                    )));
                }
                let library = library.map(|l| l.parse::<PatternLibrary>()).transpose()?;
                if let Some(lib) = &library
                    && lib.len() != k
                {
                    return Err(err(format!("library has {} patterns, K is {k}", lib.len())));
                }
                Scheme::Pattern(PatternScheme { k, connectivity: has("connectivity"), library })
            }
            "block-punched" => {
                allowed = &["balanced"];
                Scheme::BlockPunched { block: shape()?, balanced: has("balanced") }
            }
            "bcr" => Scheme::Bcr { block: shape()? },
            "block" => {
                allowed = &["balanced"];
                Scheme::Block { block: shape()?, balanced: has("balanced") }
            }
            "kgs" => {
                allowed = &["balanced"];
                Scheme::Kgs { group: shape()?, balanced: has("balanced") }
            }
            "kgs-vanilla" => Scheme::KgsVanilla { group: shape()? },
            "nm" => {
                let (n, m) = arg
                    .split_once(':')
                    .and_then(|(n, m)| Some((n.parse::<usize>().ok()?, m.parse::<usize>().ok()?)))
                    .ok_or_else(|| err("expected nm:N:M, e.g. nm:2:4".into()))?;
                if n == 0 || n > m {
                    return Err(err(format!("need 1 <= N <= M, got {n}:{m}")));
                }
                Scheme::NM { n, m }
            }
            "polarized" => {
                allowed = &["sum"];
                let m = arg
                    .parse::<usize>()
                    .ok()
                    .filter(|&m| m > 0)
                    .ok_or_else(|| err("expected polarized:M with M >= 1".into()))?;
                if let Some(b) = &base
                    && matches!(b, Scheme::Polarized(_))
                {
                    return Err(err("a polarized scheme cannot be the base of another".into()));
                }
                Scheme::Polarized(PolarizedScheme {
                    m,
                    rule: if has("sum") { SignRule::Sum } else { SignRule::Energy },
                    base: base.clone().map(Box::new),
                })
            }
            other => {
                return Err(err(format!(
                    "unknown scheme `{other}`; expected unstructured, filter, channel, column, connectivity, \
                     pattern, block-punched, bcr, block, kgs, kgs-vanilla, nm or polarized"
                )));
            }
        };
        if let Some(bad) = flags.iter().find(|f| !allowed.contains(f)) {
            return Err(err(format!("unknown flag `+{bad}` for `{name}`")));
        }
        if library.is_some() && !matches!(scheme, Scheme::Pattern(_)) {
            return Err(err("only pattern schemes take a `@library`".into()));
        }
        if base.is_some() && !matches!(scheme, Scheme::Polarized(_)) {
            return Err(err("only polarized schemes take a `(BASE)`".into()));
        }
        Ok(scheme)
    }
}

impl Serialize for Scheme {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scheme {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Least common multiple of two positive numbers.
fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    a / gcd(a, b) * b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) {
        let s: Scheme = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(s.to_string(), text, "canonical form");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Scheme>(&json).unwrap(), s);
    }

    #[test]
    fn textual_forms_round_trip() {
        for t in [
            "unstructured",
            "filter",
            "channel",
            "column",
            "connectivity",
            "pattern:8",
            "pattern:6+connectivity",
            "pattern:2+connectivity@01b.0b8",
            "block-punched:8x4",
            "block-punched:4x4+balanced",
            "bcr:4x16",
            "block:16x16",
            "block:1x4+balanced",
            "kgs:4x4",
            "kgs:8x8+balanced",
            "kgs-vanilla:4x4",
            "nm:2:4",
            "polarized:8",
            "polarized:16+sum",
            "polarized:8(block-punched:8x4)",
            "polarized:4(nm:2:4)",
        ] {
            check(t);
        }
    }

    /// Every group a scheme prunes together lies inside one tile of `gemm_tile`, so removing
    /// whole aligned tiles never splits a group (checked against the groups themselves).
    #[test]
    fn gemm_tiles_contain_every_group() {
        let conv = Layer::conv2d("conv", 16, 8, 3, 3).unwrap();
        let linear = Layer::linear("fc", 16, 32).unwrap();
        for t in [
            "unstructured",
            "filter",
            "channel",
            "column",
            "connectivity",
            "pattern:8",
            "block-punched:8x4",
            "block-punched:4x2+balanced",
            "bcr:4x8",
            "block:4x8",
            "kgs:4x4",
            "kgs-vanilla:4x2",
            "nm:2:4",
            "polarized:8",
            "polarized:8(block-punched:4x4)",
        ] {
            let s: Scheme = t.parse().unwrap();
            for layer in [&conv, &linear] {
                let Ok(groups) = s.groups(layer, Tiling::Exact) else { continue };
                let k = layer.geometry.kernel_volume();
                let cols = layer.geometry.cols();
                let (r, c) = s.gemm_tile(k);
                // Filter groups are whole rows, column and channel groups whole columns: a tile is a
                // single row or column, which a group may span entirely.
                let whole_rows = matches!(s, Scheme::Filter);
                let whole_cols = matches!(s, Scheme::Column | Scheme::Channel);
                for g in groups.iter() {
                    let tile = |i: &u32| {
                        let (row, col) = (*i as usize / cols, *i as usize % cols);
                        (if whole_cols { 0 } else { row / r }, if whole_rows { 0 } else { col / c })
                    };
                    let first = tile(&g[0]);
                    assert!(
                        g.iter().all(|i| tile(i) == first),
                        "{t} on {}: group crosses tiles",
                        layer.name
                    );
                }
            }
        }
        let bp: Scheme = "block-punched:8x4".parse().unwrap();
        assert_eq!(bp.gemm_tile(9), (8, 36));
        let pol: Scheme = "polarized:8(nm:2:4)".parse().unwrap();
        assert_eq!(pol.gemm_tile(1), (1, 8));
    }

    #[test]
    fn bad_text_is_rejected_with_reasons() {
        for bad in [
            "blocky:8x4",
            "block-punched",
            "block-punched:8x0",
            "block-punched:8x4+connectivity",
            "bcr:4x16+balanced",
            "nm:5:4",
            "nm:2",
            "pattern:99",
            "pattern:2@01b",
            "polarized:0",
            "polarized:8(polarized:4)",
            "polarized:8(filter",
            "filter:3",
            "block:4x4@01b",
            "filter(block:4x4)",
        ] {
            assert!(bad.parse::<Scheme>().is_err(), "{bad} should not parse");
        }
    }
}
