//! Per-layer sparsity configuration: which scheme and target each layer gets.
//!
//! Configs are data (serde): a list of rules matched against layer paths in order, first match
//! wins, plus an optional default. A rule's `layers` is a layer path with `*` wildcards
//! (`"features.*.conv"`, `"*"`). Layers matched by a rule with target `0` stay dense.
//!
//! ```
//! use tessera_sparsity::SparsityConfig;
//! let config: SparsityConfig = serde_json::from_str(r#"{
//!     "rules": [
//!         {"layers": "conv1", "scheme": "unstructured", "target": "0"},
//!         {"layers": "features.*", "scheme": "pattern:8+connectivity", "target": "8x"},
//!         {"layers": "fc*", "scheme": "block:4x4", "target": "0.9", "pad": true}
//!     ],
//!     "default": {"scheme": "block-punched:8x4", "target": "4x"}
//! }"#)?;
//! let rule = config.rule_for("features.3")?;
//! assert_eq!(rule.scheme.to_string(), "pattern:8+connectivity");
//! assert_eq!(config.rule_for("classifier")?.target.to_string(), "4x");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Result, SparsityError};
use crate::scheme::{Scheme, Tiling};
use crate::target::Target;

/// Scheme, target and tiling policy for one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRule {
    /// The scheme (textual form in files).
    pub scheme: Scheme,
    /// The target (textual form: `0.875`, `87.5%`, `8x`).
    pub target: Target,
    /// Pad layers the scheme's blocks do not divide instead of failing.
    #[serde(default)]
    pub pad: bool,
}

impl LayerRule {
    /// The tiling policy of this rule.
    pub fn tiling(&self) -> Tiling {
        if self.pad { Tiling::Pad } else { Tiling::Exact }
    }
}

/// A rule with the layers it applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchRule {
    /// Layer path pattern; `*` matches any run of characters.
    pub layers: String,
    /// What matching layers get.
    #[serde(flatten)]
    pub rule: LayerRule,
}

/// A whole model's sparsity configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SparsityConfig {
    /// Rules, first match wins.
    #[serde(default)]
    pub rules: Vec<MatchRule>,
    /// What layers matched by no rule get; `None` makes them an error.
    #[serde(default)]
    pub default: Option<LayerRule>,
}

impl SparsityConfig {
    /// The rule for layer `name`.
    pub fn rule_for(&self, name: &str) -> Result<&LayerRule> {
        self.rules
            .iter()
            .find(|r| wildcard_match(&r.layers, name))
            .map(|r| &r.rule)
            .or(self.default.as_ref())
            .ok_or_else(|| SparsityError::NoRule { layer: name.to_string() })
    }
}

/// Whether `name` matches `pattern`, where `*` matches any (possibly empty) run of characters.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic greedy matcher with backtracking to the last star.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        for (p, n, want) in [
            ("*", "anything.at.all", true),
            ("conv1", "conv1", true),
            ("conv1", "conv10", false),
            ("features.*.conv", "features.3.conv", true),
            ("features.*.conv", "features.3.bn", false),
            ("*fc", "classifier.fc", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(wildcard_match(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn first_match_wins_and_missing_default_is_an_error() {
        let config: SparsityConfig = serde_json::from_str(
            r#"{"rules": [{"layers": "a.*", "scheme": "filter", "target": "0.5"},
                          {"layers": "*", "scheme": "column", "target": "2x", "pad": true}]}"#,
        )
        .unwrap();
        assert_eq!(config.rule_for("a.b").unwrap().scheme, Scheme::Filter);
        let other = config.rule_for("z").unwrap();
        assert_eq!((other.scheme.clone(), other.tiling()), (Scheme::Column, Tiling::Pad));
        let none = SparsityConfig::default();
        assert!(matches!(none.rule_for("x"), Err(SparsityError::NoRule { .. })));
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<SparsityConfig>(&json).unwrap(), config);
    }
}
