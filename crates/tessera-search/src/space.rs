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
}

impl SearchLayer {
    /// Whether the layer is a 2-D 3x3 convolution without channel groups (pattern territory).
    pub fn is_conv3x3(&self) -> bool {
        matches!(self.layer.geometry, LayerGeometry::Conv2d { kh: 3, kw: 3, groups: 1, .. })
    }

    /// Dense multiply-adds per inference.
    pub fn dense_macs(&self) -> u64 {
        self.layer.dense_flops() / 2
    }
}

/// A layer's setting: dense, or a scheme at a compression rate (> 1).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerChoice {
    /// The scheme; `None` = dense.
    pub scheme: Option<Scheme>,
    /// Compression (dense weights / kept weights); 1 for dense.
    pub rate: f64,
}

impl LayerChoice {
    /// The dense choice.
    pub fn dense() -> Self {
        LayerChoice { scheme: None, rate: 1.0 }
    }

    /// `scheme` at `rate`.
    pub fn pruned(scheme: Scheme, rate: f64) -> Self {
        LayerChoice { scheme: Some(scheme), rate }
    }

    /// Whether this is the dense choice.
    pub fn is_dense(&self) -> bool {
        self.scheme.is_none()
    }

    /// The sparsity target of the choice.
    pub fn target(&self) -> Target {
        if self.is_dense() { Target::DENSE } else { Target::Compression(self.rate) }
    }

    /// The scheme's textual form, `dense` for the dense choice (the GP's category).
    pub fn scheme_name(&self) -> String {
        self.scheme.as_ref().map_or_else(|| "dense".to_string(), Scheme::to_string)
    }
}

impl fmt::Display for LayerChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scheme {
            None => f.write_str("dense"),
            Some(s) => write!(f, "{s}@{}x", self.rate),
        }
    }
}

impl FromStr for LayerChoice {
    type Err = SearchError;

    /// `dense` or `<scheme>@<rate>x` (`block-punched:8x4@8x`).
    fn from_str(s: &str) -> Result<Self> {
        if s == "dense" {
            return Ok(LayerChoice::dense());
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
    /// The space of `layers` under `spec`. Option 0 of every layer is dense.
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

    /// Checks that `candidate` has one valid option index per layer.
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
        Ok(())
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

    /// Kept multiply-adds of a candidate per inference (dense MACs / rate per layer).
    pub fn kept_macs(&self, candidate: &[usize]) -> f64 {
        self.layers
            .iter()
            .zip(self.choices(candidate))
            .map(|(l, c)| l.dense_macs() as f64 / c.rate)
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
        }
    }

    fn layer(name: &str, g: LayerGeometry, role: LayerRole) -> SearchLayer {
        SearchLayer { layer: Layer::new(name, g).unwrap().with_output_positions(64), role }
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
        for s in ["dense", "block-punched:8x4@8x", "pattern:8+connectivity@2.5x", "bcr:4x4@16x"] {
            let c: LayerChoice = s.parse().unwrap();
            assert_eq!(c.to_string(), s);
            let j = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<LayerChoice>(&j).unwrap(), c);
        }
        for bad in ["block-punched:8x4", "unstructured@1x", "unstructured@eightx", "nonsense@2x"] {
            assert!(bad.parse::<LayerChoice>().is_err(), "{bad}");
        }
    }
}
