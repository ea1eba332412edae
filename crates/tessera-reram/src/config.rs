//! Crossbar settings: geometry, cell and weight bits, bit-serial inputs, the ADC, and how each
//! ADC segment (the rows digitized together in one column) is encoded.
//!
//! Defaults follow ISAAC / FORMS: 128x128 crossbars, 2-bit cells, 16-bit bit-serial inputs
//! through 1-bit DACs, and an ADC just wide enough to be lossless for a fault-free segment
//! (`ceil(log2(rows * (2^cell_bits - 1) + 1))` bits: 9 for 128 rows, 5 for an 8-row FORMS
//! fragment; one fewer with ISAAC's column-flip encoding). Weights default to 8 bits, the
//! FORMS and CrossSim-PRIME setting (ISAAC used 16).

use serde::{Deserialize, Serialize};

use crate::error::{ReramError, Result};
use crate::mapping::Mapping;

/// ADC resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdcResolution {
    /// Just enough bits that a fault-free segment never saturates (derived from the segment's
    /// rows, the DAC's 1 bit and the cell bits, minus one with [`SegmentEncoding::FlipHalf`]).
    Derived,
    /// A fixed width; readings above `2^bits - 1` saturate (the clamp).
    Bits(u32),
    /// No quantization of column currents at all (CrossSim's `adc_bits = 0`).
    Ideal,
}

/// How the cells of one ADC segment (a column's rows that are digitized together) are stored.
/// A complemented segment stores `L - level` (L = the top cell level) and is decoded digitally
/// as `L * popcount(input bits of the segment) - reading`, which is exact.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum SegmentEncoding {
    /// Levels as they are.
    Plain,
    /// ISAAC's encoding: complement a segment when its level sum exceeds half the maximum, so
    /// every reading fits in one bit less.
    FlipHalf,
    /// Complement every segment: zeros sit at the top conductance, so a stuck-on cell over a
    /// zero is harmless (the differential mapping's tolerance without a second column).
    Complement,
    /// Complement a segment when that lowers its expected stuck-at error for the given rates:
    /// plain costs `p0 * level + p1 * (L - level)` per cell (bit-weighted), complemented the
    /// same with the rates swapped.
    FaultAware {
        /// Stuck-off rate the choice assumes.
        p_sa0: f64,
        /// Stuck-on rate the choice assumes.
        p_sa1: f64,
    },
}

/// Everything about the crossbars except the faults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossbarConfig {
    /// Word lines per crossbar.
    pub rows: usize,
    /// Bit lines per crossbar.
    pub cols: usize,
    /// Bits per cell (levels `0..2^cell_bits`).
    pub cell_bits: u32,
    /// Bits stored per weight column: the magnitude for two-column, differential and polarized
    /// mappings, the offset (biased) value for the offset mapping.
    pub weight_bits: u32,
    /// Bits per input, applied one bit per cycle (1-bit DAC).
    pub input_bits: u32,
    /// ADC resolution.
    pub adc: AdcResolution,
    /// How signed weights become conductances.
    pub mapping: Mapping,
    /// Per-segment complement encoding.
    pub encoding: SegmentEncoding,
    /// Remove dead channels (all-zero filters and the inputs they feed) before mapping, so
    /// they occupy no crossbars. Never applied under a polarized mapping: removing an input
    /// channel shifts the weight columns after it across fragment boundaries.
    #[serde(default = "yes")]
    pub compact: bool,
}

fn yes() -> bool {
    true
}

impl Default for CrossbarConfig {
    fn default() -> Self {
        CrossbarConfig {
            rows: 128,
            cols: 128,
            cell_bits: 2,
            weight_bits: 8,
            input_bits: 16,
            adc: AdcResolution::Derived,
            mapping: Mapping::TwoColumn,
            encoding: SegmentEncoding::Plain,
            compact: true,
        }
    }
}

impl CrossbarConfig {
    /// The default geometry with `mapping`.
    pub fn with_mapping(mapping: Mapping) -> Self {
        CrossbarConfig { mapping, ..Default::default() }
    }

    /// Checks the settings; names the field at fault.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |field: &str, reason: String| Err(ReramError::Config { field: field.into(), reason });
        if self.rows == 0 || self.cols == 0 {
            return bad("rows/cols", format!("{}x{} crossbar has no cells", self.rows, self.cols));
        }
        if !(1..=8).contains(&self.cell_bits) {
            return bad("cell_bits", format!("{} (expected 1..=8)", self.cell_bits));
        }
        if !(2..=24).contains(&self.weight_bits) {
            return bad("weight_bits", format!("{} (expected 2..=24)", self.weight_bits));
        }
        if !(2..=24).contains(&self.input_bits) {
            return bad("input_bits", format!("{} (expected 2..=24)", self.input_bits));
        }
        if let AdcResolution::Bits(b) = self.adc
            && !(1..=24).contains(&b)
        {
            return bad("adc", format!("{b} bits (expected 1..=24)"));
        }
        if let Mapping::Polarized { m } = self.mapping
            && (m == 0 || !self.rows.is_multiple_of(m))
        {
            return bad(
                "mapping",
                format!("fragment height {m} must divide the crossbar's {} rows", self.rows),
            );
        }
        if let SegmentEncoding::FaultAware { p_sa0, p_sa1 } = self.encoding
            && !(p_sa0 >= 0.0 && p_sa1 >= 0.0 && p_sa0 + p_sa1 <= 1.0)
        {
            return bad("encoding", format!("rates ({p_sa0}, {p_sa1}) are not probabilities"));
        }
        Ok(())
    }

    /// Top cell level `L = 2^cell_bits - 1`.
    pub fn top_level(&self) -> u32 {
        (1u32 << self.cell_bits) - 1
    }

    /// Cells (columns) per stored weight value: `ceil(weight_bits / cell_bits)`.
    pub fn slices(&self) -> usize {
        self.weight_bits.div_ceil(self.cell_bits) as usize
    }

    /// Rows digitized together: the crossbar's rows, or a FORMS fragment.
    pub fn segment_rows(&self) -> usize {
        match self.mapping {
            Mapping::Polarized { m } => m.min(self.rows),
            _ => self.rows,
        }
    }

    /// The largest reading a fault-free segment can produce (every input bit 1).
    pub fn max_segment_reading(&self) -> u64 {
        let full = self.segment_rows() as u64 * u64::from(self.top_level());
        match self.encoding {
            SegmentEncoding::FlipHalf => full / 2,
            _ => full,
        }
    }

    /// ADC bits in use: the derived width, the fixed one, or `None` for an ideal ADC.
    pub fn adc_bits(&self) -> Option<u32> {
        match self.adc {
            AdcResolution::Derived => Some(bits_for(self.max_segment_reading())),
            AdcResolution::Bits(b) => Some(b),
            AdcResolution::Ideal => None,
        }
    }

    /// The largest ADC code (`None` for an ideal ADC).
    pub fn adc_max(&self) -> Option<f64> {
        self.adc_bits().map(|b| ((1u64 << b) - 1) as f64)
    }
}

/// Bits needed to represent `0..=max`.
pub fn bits_for(max: u64) -> u32 {
    (u64::BITS - max.leading_zeros()).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_adc_bits_match_the_hand_computed_cases() {
        // ISAAC: 128 rows x 3 (2-bit cells) = 384 -> 9 bits; with the flip, 192 -> 8 bits.
        let mut c = CrossbarConfig::default();
        assert_eq!(c.adc_bits(), Some(9));
        c.encoding = SegmentEncoding::FlipHalf;
        assert_eq!(c.adc_bits(), Some(8));
        // FORMS fragments: 8 rows -> 24 -> 5 bits (4 with the flip); 4 rows -> 12 -> 4 bits;
        // 16 rows -> 48 -> 6 bits.
        for (m, plain, flip) in [(8, 5, 4), (4, 4, 3), (16, 6, 5)] {
            let mut c = CrossbarConfig::with_mapping(Mapping::Polarized { m });
            assert_eq!(c.adc_bits(), Some(plain), "m = {m}");
            c.encoding = SegmentEncoding::FlipHalf;
            assert_eq!(c.adc_bits(), Some(flip), "m = {m}");
        }
        assert_eq!(bits_for(0), 1);
        assert_eq!(bits_for(255), 8);
        assert_eq!(bits_for(256), 9);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let c = CrossbarConfig { cell_bits: 0, ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("cell_bits"));
        let c = CrossbarConfig::with_mapping(Mapping::Polarized { m: 12 });
        assert!(c.validate().unwrap_err().to_string().contains("divide"));
        assert_eq!(CrossbarConfig::default().slices(), 4);
    }
}
