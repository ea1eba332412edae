//! Signed weights onto unsigned conductances: quantization, bit slicing over cells, and the
//! four mappings.
//!
//! A layer's GEMM matrix `W[out, k]` goes onto crossbars with the `k` inputs on the word lines
//! (rows) and every output on one or two groups of bit lines (columns), one column per cell
//! slice: slice `j` holds bits `[j*b, (j+1)*b)` of the stored value (b = cell bits) and is
//! weighted `2^(j*b)` in the digital shift-and-add. Physical column of output `o`, slot `s`,
//! slice `j`: `(o * slots + s) * slices + j`.
//!
//! | mapping | slots | stored | output |
//! |---|---|---|---|
//! | offset (ISAAC) | 1 | `q + 2^(B-1)`, `q` signed in `[-(2^(B-1)-1), 2^(B-1)-1]` | `sum x*stored - 2^(B-1) * sum x` (bias subtracted digitally) |
//! | two-column (PRIME) | 2 | `(|q|, 0)` for w >= 0, `(0, |q|)` otherwise | `slot0 - slot1` |
//! | differential (ISQED'21) | 2 | per slice `(L - pos, L - neg)`: a zero puts both at G_max | `slot1 - slot0` |
//! | polarized (FORMS) | 1 | `|q|`, one sign per M-row fragment | `sign * column`, per fragment after the ADC |
//!
//! Magnitudes use `B = weight_bits` bits (`q = round(|w| / s)`, `s = max|w| / (2^B - 1)`);
//! the offset mapping spends one of its B bits on the sign. The differential mapping is, cell
//! by cell, the complement of two-column (`L` = top level): so a stuck-on cell under one is a
//! stuck-off cell under the other, and the two give identical outputs under swapped faults.
//! One consequence: at a stuck-off : stuck-on split of 1 : r, the fault rate differential
//! tolerates is at most r times two-column's. Differential at total rate r*p is two-column
//! with two-column-at-p's stuck-on rate plus r^2 times its stuck-off rate, and a two-column
//! stuck-off cell only pulls a weight toward zero. The README's ReRAM section works it out.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ReramError;

/// How signed weights become conductances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Mapping {
    /// ISAAC's biased encoding: one column per slice, zero at mid-range.
    Offset,
    /// Positive and negative columns; a zero weight leaves both at G_min.
    TwoColumn,
    /// The complement of two-column with the columns swapped; a zero puts both at G_max.
    Differential,
    /// FORMS: magnitudes only, one sign per fragment of `m` rows (the weights must be
    /// polarized, see tessera-sparsity's `polarized:M` scheme).
    Polarized {
        /// Fragment height in rows.
        m: usize,
    },
}

impl Mapping {
    /// Physical columns per cell slice of one output.
    pub fn slots(self) -> usize {
        match self {
            Mapping::TwoColumn | Mapping::Differential => 2,
            Mapping::Offset | Mapping::Polarized { .. } => 1,
        }
    }

    /// Digital coefficient of each slot's shift-and-add result.
    pub(crate) fn slot_coefficients(self) -> [f64; 2] {
        match self {
            Mapping::TwoColumn => [1.0, -1.0],
            Mapping::Differential => [-1.0, 1.0],
            Mapping::Offset | Mapping::Polarized { .. } => [1.0, 0.0],
        }
    }

    /// The largest magnitude code and the bias added before storing.
    pub(crate) fn code_range(self, weight_bits: u32) -> (i64, i64) {
        match self {
            Mapping::Offset => ((1i64 << (weight_bits - 1)) - 1, 1i64 << (weight_bits - 1)),
            _ => ((1i64 << weight_bits) - 1, 0),
        }
    }

    /// The stored values (one per slot) of signed code `q`, before slicing; `bias` is
    /// [`Mapping::code_range`]'s bias.
    pub(crate) fn stored(self, q: i64, bias: i64) -> [i64; 2] {
        match self {
            Mapping::Offset => [q + bias, 0],
            Mapping::Polarized { .. } => [q.abs(), 0],
            // The differential mapping's per-slice complement happens in the slicer.
            Mapping::TwoColumn | Mapping::Differential => {
                if q >= 0 {
                    [q, 0]
                } else {
                    [0, -q]
                }
            }
        }
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mapping::Offset => write!(f, "offset"),
            Mapping::TwoColumn => write!(f, "two-column"),
            Mapping::Differential => write!(f, "differential"),
            Mapping::Polarized { m } => write!(f, "polarized:{m}"),
        }
    }
}

impl FromStr for Mapping {
    type Err = ReramError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "offset" => Ok(Mapping::Offset),
            "two-column" => Ok(Mapping::TwoColumn),
            "differential" => Ok(Mapping::Differential),
            _ => s
                .strip_prefix("polarized:")
                .and_then(|m| m.parse().ok())
                .filter(|&m: &usize| m > 0)
                .map(|m| Mapping::Polarized { m })
                .ok_or_else(|| ReramError::MappingName(s.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in [
            Mapping::Offset,
            Mapping::TwoColumn,
            Mapping::Differential,
            Mapping::Polarized { m: 8 },
        ] {
            assert_eq!(m.to_string().parse::<Mapping>().unwrap(), m);
        }
        assert!("polarized:0".parse::<Mapping>().is_err());
        assert!("diff".parse::<Mapping>().unwrap_err().to_string().contains("two-column"));
    }
}
