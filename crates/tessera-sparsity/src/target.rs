//! Pruning targets: a sparsity (`0.875`, `87.5%`) or a compression rate (`8x`).
//!
//! The budget a projection may keep is `floor(total * density)`, with a relative tolerance of
//! 1e-9 so that `0.875 * 8` keeps exactly 1 and not 0 when floating point rounds down.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Result, SparsityError};

/// How much of a layer to keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Fraction of weights removed, in `[0, 1]`.
    Sparsity(f64),
    /// Ratio of dense to kept weights, at least 1.
    Compression(f64),
}

impl Target {
    /// Keep everything.
    pub const DENSE: Target = Target::Sparsity(0.0);

    /// A validated sparsity.
    pub fn sparsity(s: f64) -> Result<Self> {
        Target::Sparsity(s).validated()
    }

    /// A validated compression rate.
    pub fn compression(c: f64) -> Result<Self> {
        Target::Compression(c).validated()
    }

    fn validated(self) -> Result<Self> {
        let ok = match self {
            Target::Sparsity(s) => (0.0..=1.0).contains(&s),
            Target::Compression(c) => c.is_finite() && c >= 1.0,
        };
        if ok {
            Ok(self)
        } else {
            Err(SparsityError::Parse {
                what: "target",
                input: self.to_string(),
                reason: "a sparsity must be in [0, 1], a compression rate finite and at least 1"
                    .into(),
            })
        }
    }

    /// Fraction of weights kept, in `[0, 1]`.
    pub fn density(&self) -> f64 {
        match *self {
            Target::Sparsity(s) => 1.0 - s,
            Target::Compression(c) => 1.0 / c,
        }
    }

    /// Fraction of weights removed.
    pub fn sparsity_value(&self) -> f64 {
        1.0 - self.density()
    }

    /// How many of `total` weights may be kept: `floor(total * density)` (tolerance 1e-9).
    pub fn budget(&self, total: usize) -> usize {
        let exact = total as f64 * self.density();
        let b = (exact * (1.0 + 1e-9) + 1e-9).floor();
        (b as usize).min(total)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Target::Sparsity(s) => write!(f, "{s}"),
            Target::Compression(c) => write!(f, "{c}x"),
        }
    }
}

impl FromStr for Target {
    type Err = SparsityError;

    /// `"0.875"` and `"87.5%"` are sparsities, `"8x"` a compression rate.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let err = |reason: &str| SparsityError::Parse {
            what: "target",
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let num = |x: &str| {
            x.trim().parse::<f64>().map_err(|_| err("expected a number such as 0.875, 87.5% or 8x"))
        };
        let target = if let Some(c) = t.strip_suffix(['x', 'X']) {
            Target::Compression(num(c)?)
        } else if let Some(p) = t.strip_suffix('%') {
            Target::Sparsity(num(p)? / 100.0)
        } else {
            Target::Sparsity(num(t)?)
        };
        target
            .validated()
            .map_err(|_| err("a sparsity must be in [0, 1], a compression rate at least 1"))
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for (text, density) in
            [("0.875", 0.125), ("8x", 0.125), ("87.5%", 0.125), ("0", 1.0), ("1x", 1.0)]
        {
            let t: Target = text.parse().unwrap();
            assert!((t.density() - density).abs() < 1e-12, "{text}");
            let again: Target = t.to_string().parse().unwrap();
            assert_eq!(again, t);
        }
        assert!("1.5".parse::<Target>().is_err());
        assert!("0.5x".parse::<Target>().is_err());
        assert!("eight".parse::<Target>().is_err());
        assert!("NaNx".parse::<Target>().is_err());
    }

    #[test]
    fn budget_floors_with_tolerance() {
        assert_eq!(Target::Sparsity(0.875).budget(8), 1);
        assert_eq!(Target::Compression(8.0).budget(64), 8);
        assert_eq!(Target::Sparsity(0.9).budget(10), 1);
        assert_eq!(Target::Sparsity(0.9).budget(15), 1);
        assert_eq!(Target::Sparsity(0.7).budget(10), 3);
        assert_eq!(Target::Compression(3.0).budget(9), 3);
        assert_eq!(Target::DENSE.budget(7), 7);
        assert_eq!(Target::Sparsity(1.0).budget(7), 0);
    }

    #[test]
    fn serde_uses_the_text_form() {
        let t = Target::Compression(8.0);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"8x\"");
        assert_eq!(serde_json::from_str::<Target>(&json).unwrap(), t);
    }
}
