//! The search space: per layer, the (scheme, compression) choices that are valid for it.
//!
//! A [`SearchLayer`] is a prunable weight (its [`Layer`] geometry from tessera-sparsity) with a
//! [`LayerRole`]; a [`LayerChoice`] is "dense" or a scheme at a compression rate; a
//! [`SearchSpace`] holds, per layer, every choice that tessera-sparsity can actually apply:
//! a scheme whose blocks do not tile the layer exactly, that does not apply to its kernel
//! shape (patterns on a 1x1), or that cannot reach a rate (a pattern without connectivity
//! stops at 9/k) is excluded and recorded with the reason. Roles the caller pins (the first
//! layer, depthwise layers, the classifier) get the dense choice only. A *candidate* is one
//! option index per layer.
//!
//! Operator choice: layers that belong to a removable unit (a residual branch, named by
//! [`SearchLayer::skip_unit`]) also get the choice `skip` when [`SpaceSpec::skip`] is set
//! (whatever their role). A unit is skipped as a whole: in a valid candidate either every
//! layer of a unit is at `skip` or none is, and [`SearchSpace::canonical`] maps any option
//! vector to that form (the unit's first layer decides). With [`SpaceSpec::separable`],
//! every ungrouped 2-D convolution with a spatial kernel whose role is not kept dense also
//! gets the choice `separable`: the layer computed as a dense depthwise + pointwise pair
//! (`k^2 I + I O` instead of `k^2 I O` multiply-adds per position, so its "rate" is
//! `k^2 O / (k^2 + O)`, fixed by the layer; written `separable@<rate>x`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tessera_sparsity::{Layer, LayerGeometry, Scheme, SparsityError, Target, Tiling};

use crate::error::{Result, SearchError};

/// What a layer is to the network, for the rules that keep some layers dense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerRole {
    /// The first weighted layer (sees the raw input).
    First,
    /// A depthwise convolution (one input channel per group).
    Depthwise,
    /// The last linear layer (its rows are the classes).
    Classifier,
    /// Everything else.
    Body,
}

/// One prunable layer of the space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchLayer {
    /// Geometry; `name` is the weight's path (`layer1.0.conv1.weight`).
    pub layer: Layer,
    /// Its role.
    pub role: LayerRole,
    /// The removable unit (a residual branch) the layer belongs to, if any: skipping the unit
    /// removes all its layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_unit: Option<String>,
}

impl SearchLayer {
    /// A layer outside any removable unit.
    pub fn new(layer: Layer, role: LayerRole) -> Self {
        SearchLayer { layer, role, skip_unit: None }
    }

    /// The layer as a member of the removable unit `unit`.
    pub fn in_unit(self, unit: impl Into<String>) -> Self {
        SearchLayer { skip_unit: Some(unit.into()), ..self }
    }

    /// Whether the layer is a 2-D 3x3 convolution without channel groups (pattern territory).
    pub fn is_conv3x3(&self) -> bool {
        matches!(self.layer.geometry, LayerGeometry::Conv2d { kh: 3, kw: 3, groups: 1, .. })
    }

    /// Dense multiply-adds per inference.
    pub fn dense_macs(&self) -> u64 {
        self.layer.dense_flops() / 2
    }

    /// The compression of computing the layer depthwise-separable, `k^2 O / (k^2 + O)`
    /// (`k^2 I O` multiply-adds per output position become `k^2 I + I O`); `None` for
    /// layers that have nothing to separate (grouped, 1x1, not a 2-D convolution).
    pub fn separable_rate(&self) -> Option<f64> {
        match self.layer.geometry {
            LayerGeometry::Conv2d { out_channels, kh, kw, groups: 1, .. } if kh * kw > 1 => {
                let (k2, o) = ((kh * kw) as f64, out_channels as f64);
                Some(k2 * o / (k2 + o))
            }
            _ => None,
        }
    }
}

/// A layer's setting: dense, a scheme at a compression rate (> 1), removed with its unit
/// (`skip`), or computed depthwise-separable (`separable`).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerChoice {
    /// The scheme; `None` = dense, skipped or separable.
    pub scheme: Option<Scheme>,
    /// Compression (dense weights / kept weights, = multiply-adds); 1 for dense and skipped.
    pub rate: f64,
    /// The layer's unit is removed (the operator choice `skip`).
    pub skip: bool,
    /// The layer is computed as a dense depthwise + pointwise pair (the operator choice
    /// `separable`; `rate` is the pair's compression of the layer).
    pub separable: bool,
}

impl LayerChoice {
    /// The dense choice.
    pub fn dense() -> Self {
        LayerChoice { scheme: None, rate: 1.0, skip: false, separable: false }
    }

    /// `scheme` at `rate`.
    pub fn pruned(scheme: Scheme, rate: f64) -> Self {
        LayerChoice { scheme: Some(scheme), rate, skip: false, separable: false }
    }

    /// The layer removed with its unit.
    pub fn skipped() -> Self {
        LayerChoice { scheme: None, rate: 1.0, skip: true, separable: false }
    }

    /// The layer computed depthwise-separable, which compresses it `rate` times
    /// ([`SearchLayer::separable_rate`]).
    pub fn separable(rate: f64) -> Self {
        LayerChoice { scheme: None, rate, skip: false, separable: true }
    }

    /// Whether this is the dense choice.
    pub fn is_dense(&self) -> bool {
        self.scheme.is_none() && !self.skip && !self.separable
    }

    /// The sparsity target of the choice (dense for a skipped layer: it has no weights left
    /// to prune; dense for a separable one: its pair is dense).
    pub fn target(&self) -> Target {
        match self.scheme {
            Some(_) => Target::Compression(self.rate),
            None => Target::DENSE,
        }
    }

    /// Multiply-adds kept per dense multiply-add: `1 / rate`, 0 when skipped.
    pub fn mac_fraction(&self) -> f64 {
        if self.skip { 0.0 } else { 1.0 / self.rate }
    }

    /// The scheme's textual form, `dense` / `skip` otherwise (the GP's category).
    pub fn scheme_name(&self) -> String {
        match &self.scheme {
            Some(s) => s.to_string(),
            None if self.skip => "skip".to_string(),
            None if self.separable => "separable".to_string(),
            None => "dense".to_string(),
        }
    }
}

impl fmt::Display for LayerChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scheme {
            None if self.skip => f.write_str("skip"),
            None if self.separable => write!(f, "separable@{}x", self.rate),
            None => f.write_str("dense"),
            Some(s) => write!(f, "{s}@{}x", self.rate),
        }
    }
}

impl FromStr for LayerChoice {
    type Err = SearchError;

    /// `dense`, `skip`, `separable@<rate>x` or `<scheme>@<rate>x` (`block-punched:8x4@8x`).
    fn from_str(s: &str) -> Result<Self> {
        if s == "dense" {
            return Ok(LayerChoice::dense());
        }
        if s == "skip" {
            return Ok(LayerChoice::skipped());
        }
        let bad = |why: String| SearchError::config("choice", format!("`{s}`: {why}"));
        let (scheme, rate) = s
            .rsplit_once('@')
            .ok_or_else(|| bad("expected `dense` or `<scheme>@<rate>x`".into()))?;
        let rate: f64 = rate
            .strip_suffix('x')
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| bad(format!("rate `{rate}` is not like `8x`")))?;
        if !(rate.is_finite() && rate > 1.0) {
            return Err(bad(format!("rate {rate} must be a compression above 1")));
        }
        if scheme == "separable" {
            return Ok(LayerChoice::separable(rate));
        }
        let scheme: Scheme = scheme.parse().map_err(|e: SparsityError| bad(e.to_string()))?;
        Ok(LayerChoice::pruned(scheme, rate))
    }
}

impl Serialize for LayerChoice {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LayerChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What the space offers every layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpaceSpec {
    /// Candidate schemes (each is tried on every layer and kept where valid).
    pub schemes: Vec<Scheme>,
    /// The rate ladder (compressions above 1; dense is always a choice).
    pub rates: Vec<f64>,
    /// Roles that stay dense.
    pub dense_roles: Vec<LayerRole>,
    /// Let block schemes pad layers their blocks do not divide (edge blocks count at full
    /// size, [`Tiling::Pad`]); by default such choices are excluded.
    #[serde(default)]
    pub pad: bool,
    /// Offer `skip` on the layers of removable units ([`SearchLayer::skip_unit`]).
    #[serde(default)]
    pub skip: bool,
    /// Offer `separable` on ungrouped 2-D convolutions with a spatial kernel whose role is
    /// not kept dense ([`SearchLayer::separable_rate`]).
    #[serde(default)]
    pub separable: bool,
}

impl SpaceSpec {
    /// The tiling the space's choices are checked (and must be applied) with.
    pub fn tiling(&self) -> Tiling {
        if self.pad { Tiling::Pad } else { Tiling::Exact }
    }
}

/// A choice the space left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Excluded {
    /// Layer path.
    pub layer: String,
    /// The choice.
    pub choice: LayerChoice,
    /// tessera-sparsity's reason.
    pub reason: String,
}

/// Per layer, the valid choices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSpace {
    #[serde(default)]
    pad: bool,
    layers: Vec<SearchLayer>,
    options: Vec<Vec<LayerChoice>>,
    excluded: Vec<Excluded>,
}

impl SearchSpace {
    /// The space of `layers` under `spec`. Option 0 of every layer is dense; option 1 is
    /// `skip` on the layers of removable units when the spec offers it.
    pub fn new(layers: Vec<SearchLayer>, spec: &SpaceSpec) -> Result<Self> {
        if layers.is_empty() {
            return Err(SearchError::config("layers", "the space needs at least one layer"));
        }
        for &r in &spec.rates {
            if !(r.is_finite() && r > 1.0) {
                return Err(SearchError::config(
                    "rates",
                    format!("{r} is not a compression above 1"),
                ));
            }
        }
        let mut options = Vec::with_capacity(layers.len());
        let mut excluded = Vec::new();
        for l in &layers {
            let mut opts = vec![LayerChoice::dense()];
            if spec.skip && l.skip_unit.is_some() {
                opts.push(LayerChoice::skipped());
            }
            if spec.separable
                && !spec.dense_roles.contains(&l.role)
                && let Some(rate) = l.separable_rate()
            {
                opts.push(LayerChoice::separable(rate));
            }
            if !spec.dense_roles.contains(&l.role) {
                // Deterministic non-uniform weights: the feasibility probe must not depend on
                // ties, and a projection's success depends only on the structure and budget.
                let probe: Vec<f32> =
                    (0..l.layer.geometry.len()).map(|i| 1.0 + (i % 7) as f32 * 0.1).collect();
                for scheme in &spec.schemes {
                    if let Err(e) = scheme.check_applicable(&l.layer, spec.tiling()) {
                        let reason = exclusion(e)?;
                        excluded.extend(spec.rates.iter().map(|&rate| Excluded {
                            layer: l.layer.name.clone(),
                            choice: LayerChoice::pruned(scheme.clone(), rate),
                            reason: reason.clone(),
                        }));
                        continue;
                    }
                    for &rate in &spec.rates {
                        let choice = LayerChoice::pruned(scheme.clone(), rate);
                        match scheme.project_with(
                            &l.layer,
                            &probe,
                            Target::Compression(rate),
                            spec.tiling(),
                        ) {
                            Ok(_) => opts.push(choice),
                            Err(e) => excluded.push(Excluded {
                                layer: l.layer.name.clone(),
                                choice,
                                reason: exclusion(e)?,
                            }),
                        }
                    }
                }
            }
            options.push(opts);
        }
        Ok(SearchSpace { pad: spec.pad, layers, options, excluded })
    }

    /// Whether choices pad layers their blocks do not divide (apply them with
    /// `Tiling::Pad` / `pad: true`).
    pub fn pads(&self) -> bool {
        self.pad
    }

    /// The layers.
    pub fn layers(&self) -> &[SearchLayer] {
        &self.layers
    }

    /// Valid choices of layer `l` (option 0 is dense).
    pub fn options(&self, l: usize) -> &[LayerChoice] {
        &self.options[l]
    }

    /// Choices left out, with the reasons.
    pub fn excluded(&self) -> &[Excluded] {
        &self.excluded
    }

    /// Layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the space has no layer (never: [`SearchSpace::new`] refuses).
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// log10 of the number of candidates.
    pub fn log10_size(&self) -> f64 {
        self.options.iter().map(|o| (o.len() as f64).log10()).sum()
    }

    /// Checks that `candidate` has one valid option index per layer and skips whole units
    /// ([`SearchSpace::canonical`] form).
    pub fn check(&self, candidate: &[usize]) -> Result<()> {
        if candidate.len() != self.len() {
            return Err(SearchError::Candidate(format!(
                "{} choices for a space of {} layers",
                candidate.len(),
                self.len()
            )));
        }
        for (l, &o) in candidate.iter().enumerate() {
            if o >= self.options[l].len() {
                return Err(SearchError::Candidate(format!(
                    "layer `{}`: option {o}, but it has {}",
                    self.layers[l].layer.name,
                    self.options[l].len()
                )));
            }
        }
        if let Some(l) =
            (0..self.len()).find(|&l| self.canonical_option(candidate, l) != candidate[l])
        {
            return Err(SearchError::Candidate(format!(
                "layer `{}` is {} but its unit `{}` is {}: a unit is skipped as a whole",
                self.layers[l].layer.name,
                self.options[l][candidate[l]],
                self.layers[l].skip_unit.as_deref().unwrap_or(""),
                if self.unit_skipped(candidate, l) { "skipped" } else { "kept" },
            )));
        }
        Ok(())
    }

    /// Index of the `skip` option of layer `l`, if it has one.
    fn skip_option(&self, l: usize) -> Option<usize> {
        self.options[l].iter().position(|c| c.skip)
    }

    /// Whether the unit of layer `l` is skipped in `candidate`: its first layer is at `skip`.
    fn unit_skipped(&self, candidate: &[usize], l: usize) -> bool {
        let Some(unit) = &self.layers[l].skip_unit else { return false };
        let head =
            (0..self.len()).find(|&k| self.layers[k].skip_unit.as_ref() == Some(unit)).unwrap_or(l);
        self.options[head].get(candidate[head]).is_some_and(|c| c.skip)
    }

    /// Layer `l`'s option in the canonical form of `candidate`.
    fn canonical_option(&self, candidate: &[usize], l: usize) -> usize {
        match (self.unit_skipped(candidate, l), self.skip_option(l)) {
            (true, Some(skip)) => skip,
            (false, Some(skip)) if candidate[l] == skip => 0,
            _ => candidate[l],
        }
    }

    /// `candidate` with units skipped as a whole: the layers of a unit whose first layer is at
    /// `skip` are all set to `skip`, and a `skip` elsewhere becomes dense. Candidates of
    /// spaces without units are returned unchanged.
    pub fn canonical(&self, candidate: &[usize]) -> Vec<usize> {
        (0..candidate.len().min(self.len()))
            .map(|l| self.canonical_option(candidate, l))
            .chain(candidate.iter().skip(self.len()).copied())
            .collect()
    }

    /// Per layer, whether a (checked) candidate removes it.
    pub fn removed(&self, candidate: &[usize]) -> Vec<bool> {
        self.choices(candidate).iter().map(|c| c.skip).collect()
    }

    /// The removable units a (checked) candidate skips, in layer order.
    pub fn skipped_units(&self, candidate: &[usize]) -> Vec<String> {
        let mut units: Vec<String> = Vec::new();
        for (l, c) in self.choices(candidate).iter().enumerate() {
            if let Some(u) = self.layers[l].skip_unit.as_ref().filter(|_| c.skip)
                && !units.contains(u)
            {
                units.push(u.clone());
            }
        }
        units
    }

    /// The choices of a (checked) candidate.
    pub fn choices(&self, candidate: &[usize]) -> Vec<&LayerChoice> {
        candidate.iter().enumerate().map(|(l, &o)| &self.options[l][o]).collect()
    }

    /// The candidate's textual form: one choice per layer, comma-separated (its key in logs).
    pub fn key(&self, candidate: &[usize]) -> String {
        self.choices(candidate).iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
    }

    /// The candidate of per-layer `choices` (each must be one of its layer's options).
    pub fn candidate_of(&self, choices: &[LayerChoice]) -> Result<Vec<usize>> {
        if choices.len() != self.len() {
            return Err(SearchError::Candidate(format!(
                "{} choices for a space of {} layers",
                choices.len(),
                self.len()
            )));
        }
        choices
            .iter()
            .enumerate()
            .map(|(l, c)| {
                self.options[l].iter().position(|o| o == c).ok_or_else(|| {
                    SearchError::Candidate(format!(
                        "layer `{}`: {c} is not one of its valid choices",
                        self.layers[l].layer.name
                    ))
                })
            })
            .collect()
    }

    /// Every layer at option 0 (dense).
    pub fn dense(&self) -> Vec<usize> {
        vec![0; self.len()]
    }

    /// `scheme` at `rate` on every layer where that choice is valid, dense elsewhere (a
    /// uniform-scheme baseline).
    pub fn uniform(&self, scheme: &Scheme, rate: f64) -> Vec<usize> {
        let want = LayerChoice::pruned(scheme.clone(), rate);
        self.options.iter().map(|o| o.iter().position(|c| *c == want).unwrap_or(0)).collect()
    }

    /// Kept multiply-adds of a candidate per inference (dense MACs / rate per layer, none
    /// for skipped layers).
    pub fn kept_macs(&self, candidate: &[usize]) -> f64 {
        self.layers
            .iter()
            .zip(self.choices(candidate))
            .map(|(l, c)| l.dense_macs() as f64 * c.mac_fraction())
            .sum()
    }

    /// Dense multiply-adds per inference of the space's layers.
    pub fn dense_macs(&self) -> u64 {
        self.layers.iter().map(SearchLayer::dense_macs).sum()
    }
}

/// The reason text of a "cannot use this choice here" error; other errors pass through.
fn exclusion(e: SparsityError) -> Result<String> {
    match e {
        SparsityError::NotTileable { .. }
        | SparsityError::NotApplicable { .. }
        | SparsityError::InfeasibleTarget { .. } => Ok(e.to_string()),
        other => Err(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SpaceSpec {
        SpaceSpec {
            schemes: ["pattern:8", "pattern:8+connectivity", "block-punched:8x4", "unstructured"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            rates: vec![2.0, 4.0, 8.0],
            dense_roles: vec![LayerRole::First, LayerRole::Classifier],
            pad: false,
            skip: false,
            separable: false,
        }
    }

    fn layer(name: &str, g: LayerGeometry, role: LayerRole) -> SearchLayer {
        SearchLayer::new(Layer::new(name, g).unwrap().with_output_positions(64), role)
    }

    #[test]
    fn validity_rules_exclude_what_cannot_apply() {
        let conv = |o, i, k| LayerGeometry::Conv2d {
            out_channels: o,
            in_channels: i,
            kh: k,
            kw: k,
            groups: 1,
        };
        let space = SearchSpace::new(
            vec![
                layer("stem", conv(16, 1, 3), LayerRole::First),
                layer("body3x3", conv(16, 16, 3), LayerRole::Body),
                layer("body1x1", conv(16, 16, 1), LayerRole::Body),
                layer("odd", conv(10, 16, 1), LayerRole::Body),
                layer(
                    "fc",
                    LayerGeometry::Linear { out_features: 10, in_features: 64 },
                    LayerRole::Classifier,
                ),
            ],
            &spec(),
        )
        .unwrap();
        let names =
            |l: usize| -> Vec<String> { space.options(l).iter().map(|c| c.to_string()).collect() };
        // Pinned roles: dense only.
        assert_eq!(names(0), ["dense"]);
        assert_eq!(names(4), ["dense"]);
        // 3x3: pattern alone reaches 2x (9/4 = 2.25) but not 4x; with connectivity all rates.
        let n = names(1);
        assert!(
            n.contains(&"pattern:8@2x".to_string()) && !n.contains(&"pattern:8@4x".to_string()),
            "{n:?}"
        );
        assert!(n.contains(&"pattern:8+connectivity@8x".to_string()), "{n:?}");
        assert!(n.contains(&"block-punched:8x4@8x".to_string()));
        assert_eq!(n.len(), 1 + 1 + 3 + 3 + 3);
        // 1x1: no patterns.
        assert!(names(2).iter().all(|c| !c.starts_with("pattern")));
        // 10 rows: 8x4 blocks do not tile.
        assert!(names(3).iter().all(|c| !c.starts_with("block-punched")));
        assert!(space.excluded().iter().any(|e| e.layer == "odd" && e.reason.contains("8x4")));
        // With padding allowed, 8x4 blocks cover the 10 rows.
        let padded = SearchSpace::new(
            vec![layer("odd", conv(10, 16, 1), LayerRole::Body)],
            &SpaceSpec { pad: true, ..spec() },
        )
        .unwrap();
        assert!(padded.pads());
        assert!(padded.options(0).iter().any(|c| c.to_string() == "block-punched:8x4@8x"));
        // Candidates.
        let u = space.uniform(&"block-punched:8x4".parse().unwrap(), 8.0);
        assert_eq!(space.key(&u), "dense,block-punched:8x4@8x,block-punched:8x4@8x,dense,dense");
        assert_eq!(
            space
                .candidate_of(&space.choices(&u).into_iter().cloned().collect::<Vec<_>>())
                .unwrap(),
            u
        );
        assert!(space.check(&[0, 0]).is_err());
        assert!(space.check(&[0, 0, 0, 0, 1]).is_err());
        // MACs: 16*16*9*64 + 16*16*64 at 8x.
        let dense = space.dense_macs() as f64;
        let kept = space.kept_macs(&u);
        let saved = (16.0 * 16.0 * 9.0 * 64.0 + 16.0 * 16.0 * 64.0) * (1.0 - 1.0 / 8.0);
        assert!((dense - kept - saved).abs() < 1e-6, "{dense} {kept}");
    }

    #[test]
    fn choices_round_trip_through_text() {
        for s in [
            "dense",
            "skip",
            "separable@5.76x",
            "block-punched:8x4@8x",
            "pattern:8+connectivity@2.5x",
            "bcr:4x4@16x",
        ] {
            let c: LayerChoice = s.parse().unwrap();
            assert_eq!(c.to_string(), s);
            let j = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<LayerChoice>(&j).unwrap(), c);
        }
        for bad in [
            "block-punched:8x4",
            "unstructured@1x",
            "unstructured@eightx",
            "nonsense@2x",
            "separable",
            "separable@0.5x",
        ] {
            assert!(bad.parse::<LayerChoice>().is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod skip_tests {
    use super::*;

    fn conv(name: &str, role: LayerRole) -> SearchLayer {
        let g =
            LayerGeometry::Conv2d { out_channels: 16, in_channels: 16, kh: 3, kw: 3, groups: 1 };
        SearchLayer::new(Layer::new(name, g).unwrap().with_output_positions(64), role)
    }

    fn space(skip: bool) -> SearchSpace {
        SearchSpace::new(
            vec![
                conv("stem", LayerRole::First),
                conv("b0.conv1", LayerRole::Body).in_unit("b0"),
                conv("b0.conv2", LayerRole::Depthwise).in_unit("b0"),
                conv("b1.conv1", LayerRole::Body).in_unit("b1"),
                conv("b1.conv2", LayerRole::Body).in_unit("b1"),
            ],
            &SpaceSpec {
                schemes: vec!["block-punched:8x4".parse().unwrap()],
                rates: vec![2.0, 4.0],
                dense_roles: vec![LayerRole::First, LayerRole::Depthwise],
                pad: false,
                skip,
                separable: false,
            },
        )
        .unwrap()
    }

    #[test]
    fn units_are_skipped_whole_and_cost_nothing() {
        let sp = space(true);
        let names =
            |l: usize| -> Vec<String> { sp.options(l).iter().map(|c| c.to_string()).collect() };
        assert_eq!(names(0), ["dense"]);
        // A pinned role still gets `skip` (the unit goes, not the layer's weights).
        assert_eq!(names(2), ["dense", "skip"]);
        assert_eq!(names(1), ["dense", "skip", "block-punched:8x4@2x", "block-punched:8x4@4x"]);
        // The first layer of a unit decides.
        let c = sp.canonical(&[0, 1, 0, 3, 1]);
        assert_eq!(c, [0, 1, 1, 3, 0]);
        assert_eq!(sp.key(&c), "dense,skip,skip,block-punched:8x4@4x,dense");
        sp.check(&c).unwrap();
        let e = sp.check(&[0, 1, 0, 3, 1]).unwrap_err().to_string();
        assert!(e.contains("b0.conv2") && e.contains("as a whole"), "{e}");
        assert_eq!(sp.removed(&c), [false, true, true, false, false]);
        assert_eq!(sp.skipped_units(&c), ["b0"]);
        // MACs: skipped layers none, b1.conv1 a quarter.
        let per = 16.0 * 16.0 * 9.0 * 64.0;
        assert!((sp.kept_macs(&c) - per * (1.0 + 0.25 + 1.0)).abs() < 1e-6);
        assert_eq!(sp.canonical(&c), c, "canonical is idempotent");
        // Without the spec's `skip`, units change nothing.
        let plain = space(false);
        assert!(plain.options(1).iter().all(|c| !c.skip));
        assert_eq!(plain.canonical(&[0, 1, 0, 2, 1]), [0, 1, 0, 2, 1]);
    }

    #[test]
    fn separable_is_offered_on_spatial_body_convolutions_at_their_own_rate() {
        let layers = vec![
            conv("stem", LayerRole::First),
            conv("b0.conv1", LayerRole::Body).in_unit("b0"),
            conv("b0.conv2", LayerRole::Depthwise).in_unit("b0"),
            SearchLayer::new(
                Layer::new(
                    "proj",
                    LayerGeometry::Conv2d {
                        out_channels: 32,
                        in_channels: 16,
                        kh: 1,
                        kw: 1,
                        groups: 1,
                    },
                )
                .unwrap()
                .with_output_positions(64),
                LayerRole::Body,
            ),
            SearchLayer::new(
                Layer::new(
                    "wide",
                    LayerGeometry::Conv2d {
                        out_channels: 64,
                        in_channels: 32,
                        kh: 3,
                        kw: 3,
                        groups: 1,
                    },
                )
                .unwrap()
                .with_output_positions(16),
                LayerRole::Body,
            ),
        ];
        let spec = SpaceSpec {
            schemes: vec!["block-punched:8x4".parse().unwrap()],
            rates: vec![2.0],
            dense_roles: vec![LayerRole::First, LayerRole::Depthwise],
            pad: false,
            skip: true,
            separable: true,
        };
        let sp = SearchSpace::new(layers, &spec).unwrap();
        let names =
            |l: usize| -> Vec<String> { sp.options(l).iter().map(|c| c.to_string()).collect() };
        // 16 -> 16, 3x3: 9 * 16 / (9 + 16) = 5.76.
        assert_eq!(names(1), ["dense", "skip", "separable@5.76x", "block-punched:8x4@2x"]);
        // Pinned roles and 1x1 convolutions have nothing to separate.
        assert_eq!(names(0), ["dense"]);
        assert_eq!(names(2), ["dense", "skip"]);
        assert!(names(3).iter().all(|n| !n.starts_with("separable")));
        // MACs: 32 -> 64 at 4x4 positions: 9*32*64*16 dense, (9*32 + 32*64)*16 separable.
        let c = sp.candidate_of(&[
            LayerChoice::dense(),
            LayerChoice::dense(),
            LayerChoice::dense(),
            LayerChoice::dense(),
            sp.options(4)[1].clone(),
        ]);
        let c = c.unwrap();
        assert!(sp.options(4)[1].separable && !sp.options(4)[1].is_dense());
        assert_eq!(sp.options(4)[1].target(), Target::DENSE);
        assert_eq!(sp.options(4)[1].scheme_name(), "separable");
        let full = sp.kept_macs(&sp.dense());
        let saved = (9.0 * 32.0 * 64.0 - (9.0 * 32.0 + 32.0 * 64.0)) * 16.0;
        assert!((full - sp.kept_macs(&c) - saved).abs() < 1e-6, "{full} {}", sp.kept_macs(&c));
        // Without the spec's `separable`, no layer gets it.
        let plain = SearchSpace::new(sp.layers().to_vec(), &SpaceSpec { separable: false, ..spec })
            .unwrap();
        assert!((0..plain.len()).all(|l| plain.options(l).iter().all(|c| !c.separable)));
    }
}
