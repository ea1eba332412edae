//! Architecture cost model: the ISAAC organisation (tiles of IMAs of crossbars, ADCs, DACs,
//! eDRAM, buses, routers, HyperTransport) with per-component area and power, and FORMS built on
//! it; peak and per-model throughput, frames/s, GOPs/s/mm^2 and GOPs/W.
//!
//! Sources. ISAAC's component table is Table I of Shafiee et al., ISCA 2016 (32 nm), as
//! transcribed in `research/reram.md` §3.2; the eDRAM, bus, router, ADC, DAC and IMA
//! shift-and-add rows are confirmed by the CiMLoop / Accelergy `isaac.py` comments, and the
//! rows add up exactly to the paper's chip totals (65.8 W, 85.4 mm^2). FORMS' ADC bank (32
//! ADCs at 2.1 GS/s, 15.2 mW and 9,100 um^2 per unit) is Accelergy's `forms.py`; the other
//! FORMS components are not public in a form retrieved here, so the FORMS design reuses
//! ISAAC's (stated in every report).
//!
//! Timing. An IMA's crossbars share its ADCs: one input-bit cycle takes
//! `max(t_xbar, conversions / (ADCs * rate))`, where a crossbar needs one conversion per column
//! and per segment of rows digitized together (128 rows for ISAAC, an m-row fragment for
//! FORMS). Inputs take `input_bits` cycles; FORMS' zero-skipping lowers the cycles per segment
//! to those measured on the model's real activations ([`crate::LayerProfile`]).
//!
//! Per model: weight-stationary and pipelined, each layer replicated over the chip in
//! proportion to its work (the balanced continuous relaxation), so
//! `frames/s = chip crossbars / sum over layers (crossbars * MVMs per frame * time per MVM)`.
//! Ops per frame count `2 * k * out` per MVM (the mapped matrix, zeros included) and are the
//! same for every design that maps the same model.

use serde::{Deserialize, Serialize};

use crate::sim::{LayerInfo, LayerProfile};

/// One component kind: how many per parent, and the power and area of each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    /// Name as in the source table.
    pub name: String,
    /// Instances per parent (IMA, tile or chip).
    pub count: f64,
    /// Power of one instance, mW.
    pub power_mw: f64,
    /// Area of one instance, mm^2.
    pub area_mm2: f64,
}

fn part(name: &str, count: f64, total_power_mw: f64, total_area_mm2: f64) -> Component {
    Component {
        name: name.into(),
        count,
        power_mw: total_power_mw / count,
        area_mm2: total_area_mm2 / count,
    }
}

/// An accelerator design.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    /// Design name.
    pub name: String,
    /// Tiles per chip.
    pub tiles: usize,
    /// IMAs per tile.
    pub imas_per_tile: usize,
    /// Crossbars per IMA.
    pub xbars_per_ima: usize,
    /// Crossbar rows.
    pub xbar_rows: usize,
    /// Crossbar columns.
    pub xbar_cols: usize,
    /// Bits per cell.
    pub cell_bits: u32,
    /// Bits per weight (cells per weight = weight_bits / cell_bits, one column each).
    pub weight_bits: u32,
    /// Bits per input (one per cycle).
    pub input_bits: u32,
    /// Crossbar read + sample-and-hold cycle, ns.
    pub cycle_ns: f64,
    /// Rows digitized together.
    pub segment_rows: usize,
    /// ADC resolution (documentation; the bank's power and area already reflect it).
    pub adc_bits: u32,
    /// ADC conversions per second of one ADC, in GS/s.
    pub adc_rate_gsps: f64,
    /// The ADC bank of one IMA.
    pub adc: Component,
    /// Other IMA components.
    pub ima: Vec<Component>,
    /// Tile components outside the IMAs.
    pub tile: Vec<Component>,
    /// Chip-level components (HyperTransport links).
    pub chip: Vec<Component>,
    /// Whether chip-level I/O counts in area and power.
    pub include_io: bool,
    /// Operations per multiply-accumulate.
    pub ops_per_mac: f64,
}

/// Peak figures of a design.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    /// One input-bit cycle, ns (crossbar- or ADC-bound).
    pub cycle_ns: f64,
    /// Multiply-accumulates per second of the chip.
    pub macs_per_s: f64,
    /// Giga-operations per second.
    pub gops: f64,
    /// Chip area, mm^2.
    pub area_mm2: f64,
    /// Chip power, W.
    pub power_w: f64,
    /// GOPs/s per mm^2.
    pub gops_per_mm2: f64,
    /// GOPs/s per W.
    pub gops_per_w: f64,
}

/// Throughput of one model on one design.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelPerformance {
    /// Design name.
    pub design: String,
    /// Crossbars the model occupies once.
    pub crossbars: usize,
    /// Whether one copy fits on the chip.
    pub fits: bool,
    /// Frames per second with balanced replication.
    pub frames_per_s: f64,
    /// Crossbar operations per frame.
    pub ops_per_frame: f64,
    /// GOPs/s.
    pub gops: f64,
    /// GOPs/s per mm^2.
    pub gops_per_mm2: f64,
    /// GOPs/s per W.
    pub gops_per_w: f64,
    /// Input cycles per segment actually run / without skipping (1 = no skipping).
    pub cycle_fraction: f64,
}

impl Architecture {
    /// ISAAC-CE (168 tiles x 12 IMAs x 8 crossbars of 128x128, 2-bit cells, 16-bit weights and
    /// inputs, 8 ADCs of 8 bits at 1.28 GS/s per IMA, 100 ns cycle), Table I of the paper.
    pub fn isaac() -> Self {
        Architecture {
            name: "ISAAC-CE".into(),
            tiles: 168,
            imas_per_tile: 12,
            xbars_per_ima: 8,
            xbar_rows: 128,
            xbar_cols: 128,
            cell_bits: 2,
            weight_bits: 16,
            input_bits: 16,
            cycle_ns: 100.0,
            segment_rows: 128,
            adc_bits: 8,
            adc_rate_gsps: 1.28,
            adc: part("ADC (8-bit SAR)", 8.0, 16.0, 0.0096),
            ima: vec![
                part("DAC (1-bit)", 8.0 * 128.0, 4.0, 0.00017),
                part("sample-and-hold", 8.0 * 128.0, 0.01, 0.00004),
                part("crossbar 128x128", 8.0, 2.4, 0.0002),
                part("shift-and-add", 4.0, 0.2, 0.00024),
                part("input register (2 KB)", 1.0, 1.24, 0.0021),
                part("output register (256 B)", 1.0, 0.23, 0.00077),
            ],
            tile: vec![
                part("eDRAM buffer (64 KB)", 1.0, 20.7, 0.083),
                part("eDRAM-to-IMA bus", 1.0, 7.0, 0.090),
                part("router (1/4 share)", 1.0, 10.5, 0.0378),
                part("sigmoid", 2.0, 0.52, 0.0006),
                part("shift-and-add", 1.0, 0.05, 0.00006),
                part("max-pool", 1.0, 0.4, 0.00024),
                part("output register (3 KB)", 1.0, 1.68, 0.0032),
            ],
            chip: vec![part("HyperTransport link", 4.0, 10_400.0, 22.88)],
            include_io: true,
            ops_per_mac: 2.0,
        }
    }

    /// ISAAC running the same 8-bit models as FORMS (the "optimized ISAAC" baseline): only
    /// the weight width changes.
    pub fn isaac_8bit() -> Self {
        Architecture { name: "ISAAC (8-bit weights)".into(), weight_bits: 8, ..Self::isaac() }
    }

    /// FORMS with fragments of `m` rows: ISAAC's organisation with 8-bit weights and each
    /// IMA's ADC bank replaced by 32 4-bit ADCs at 2.1 GS/s (15.2 mW, 9,100 um^2 in total).
    pub fn forms(m: usize) -> Self {
        Architecture {
            name: format!("FORMS-{m}"),
            weight_bits: 8,
            segment_rows: m.max(1),
            adc_bits: 4,
            adc_rate_gsps: 2.1,
            adc: part("ADC (4-bit)", 32.0, 15.2, 0.0091),
            ..Self::isaac()
        }
    }

    fn sum(parts: &[Component], f: impl Fn(&Component) -> f64) -> f64 {
        parts.iter().map(|c| c.count * f(c)).sum()
    }

    /// IMA `(power mW, area mm^2)`.
    pub fn ima_totals(&self) -> (f64, f64) {
        let all: Vec<Component> =
            std::iter::once(self.adc.clone()).chain(self.ima.iter().cloned()).collect();
        (Self::sum(&all, |c| c.power_mw), Self::sum(&all, |c| c.area_mm2))
    }

    /// Tile `(power mW, area mm^2)`, IMAs included.
    pub fn tile_totals(&self) -> (f64, f64) {
        let (ip, ia) = self.ima_totals();
        let n = self.imas_per_tile as f64;
        (
            Self::sum(&self.tile, |c| c.power_mw) + n * ip,
            Self::sum(&self.tile, |c| c.area_mm2) + n * ia,
        )
    }

    /// Chip `(power W, area mm^2)`.
    pub fn chip_totals(&self) -> (f64, f64) {
        let (tp, ta) = self.tile_totals();
        let n = self.tiles as f64;
        let (mut p, mut a) = (n * tp, n * ta);
        if self.include_io {
            p += Self::sum(&self.chip, |c| c.power_mw);
            a += Self::sum(&self.chip, |c| c.area_mm2);
        }
        (p / 1000.0, a)
    }

    /// Crossbars on the chip.
    pub fn crossbars(&self) -> usize {
        self.tiles * self.imas_per_tile * self.xbars_per_ima
    }

    /// Columns per weight.
    pub fn cells_per_weight(&self) -> usize {
        self.weight_bits.div_ceil(self.cell_bits) as usize
    }

    /// One input-bit cycle of an IMA whose crossbars each need `conversions` per cycle.
    fn cycle_for(&self, conversions_per_xbar: f64) -> f64 {
        let adc_per_ns = self.adc.count * self.adc_rate_gsps;
        self.cycle_ns.max(self.xbars_per_ima as f64 * conversions_per_xbar / adc_per_ns)
    }

    fn conversions_per_cycle(&self) -> f64 {
        (self.xbar_cols * self.xbar_rows.div_ceil(self.segment_rows)) as f64
    }

    /// Peak throughput with every crossbar busy and no skipping.
    pub fn peak(&self) -> Peak {
        let cycle = self.cycle_for(self.conversions_per_cycle());
        let macs_per_pass =
            (self.xbar_rows * (self.xbar_cols / self.cells_per_weight()) * self.crossbars()) as f64;
        let macs_per_s = macs_per_pass / (self.input_bits as f64 * cycle * 1e-9);
        let gops = macs_per_s * self.ops_per_mac / 1e9;
        let (power_w, area_mm2) = self.chip_totals();
        Peak {
            cycle_ns: cycle,
            macs_per_s,
            gops,
            area_mm2,
            power_w,
            gops_per_mm2: gops / area_mm2,
            gops_per_w: gops / power_w,
        }
    }

    /// Throughput of a model whose layers occupy crossbars as `layers` says (mapped with this
    /// design's weight and cell bits) and did `profile`'s MVMs for `frames` frames. Skipping
    /// applies when `skipping` (FORMS); the cycles measured per segment then replace
    /// `input_bits`.
    pub fn evaluate(
        &self,
        layers: &[LayerInfo],
        profile: &[LayerProfile],
        frames: u64,
        skipping: bool,
    ) -> ModelPerformance {
        let frames = frames.max(1) as f64;
        let mut xbar_seconds = 0.0;
        let mut ops = 0.0;
        let (mut run, mut full) = (0.0, 0.0);
        for l in layers {
            let (mvms, cycles, cycles_full) = profile
                .iter()
                .filter(|p| p.name == l.name)
                .fold((0u64, 0u64, 0u64), |(m, c, f), p| {
                    (m + p.mvms, c + p.cycles_leading_zero, f + p.cycles_full)
                });
            let fraction =
                if skipping && cycles_full > 0 { cycles as f64 / cycles_full as f64 } else { 1.0 };
            run += fraction * cycles_full as f64;
            full += cycles_full as f64;
            let bits = self.input_bits as f64 * fraction;
            let conversions = self.conversions_per_cycle();
            // Each cycle costs its ADC share; a fully skipped MVM still takes no less than
            // zero cycles, so the time is the cycles times the cycle length.
            let t_mvm = bits * self.cycle_for(conversions) * 1e-9;
            let mvms_per_frame = mvms as f64 / frames;
            // Each channel group's crossbars serve only that group's MVMs.
            xbar_seconds += l.crossbars as f64 * mvms_per_frame * t_mvm / l.groups.max(1) as f64;
            ops += self.ops_per_mac * (l.k * l.out) as f64 * mvms_per_frame;
        }
        let crossbars: usize = layers.iter().map(|l| l.crossbars).sum();
        let frames_per_s =
            if xbar_seconds > 0.0 { self.crossbars() as f64 / xbar_seconds } else { 0.0 };
        let gops = ops * frames_per_s / 1e9;
        let (power_w, area_mm2) = self.chip_totals();
        ModelPerformance {
            design: self.name.clone(),
            crossbars,
            fits: crossbars <= self.crossbars(),
            frames_per_s,
            ops_per_frame: ops,
            gops,
            gops_per_mm2: gops / area_mm2,
            gops_per_w: gops / power_w,
            cycle_fraction: if full > 0.0 { run / full } else { 1.0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isaac_component_table_adds_up_to_the_papers_totals() {
        let a = Architecture::isaac();
        let (ip, ia) = a.ima_totals();
        assert!((ip - 24.08).abs() < 0.01 && (ia - 0.01312).abs() < 1e-5, "{ip} {ia}");
        let (tp, ta) = a.tile_totals();
        assert!((tp - 329.8).abs() < 0.5 && (ta - 0.373).abs() < 0.002, "{tp} {ta}");
        let (p, area) = a.chip_totals();
        // Paper: 65.8 W and 85.4 mm^2.
        assert!((p - 65.8).abs() < 0.1, "{p}");
        assert!((area - 85.4).abs() / 85.4 < 0.005, "{area}");
    }

    #[test]
    fn isaac_peak_reproduces_479_gops_per_mm2_within_5_percent() {
        let peak = Architecture::isaac().peak();
        assert!((peak.cycle_ns - 100.0).abs() < 1e-9);
        // 2,016 IMAs x 16,384 MACs per 1.6 us = 41.3 TOPs/s.
        assert!((peak.gops - 41_287.7).abs() < 1.0, "{}", peak.gops);
        assert!((peak.gops_per_mm2 - 479.0).abs() / 479.0 < 0.05, "{}", peak.gops_per_mm2);
        assert!((peak.gops_per_w - 627.5).abs() < 2.0, "{}", peak.gops_per_w);
    }

    #[test]
    fn forms_adc_bank_and_cycle_follow_the_fragment_conversions() {
        let f = Architecture::forms(8);
        assert!((f.adc.power_mw - 0.475).abs() < 1e-9);
        assert!((f.adc.area_mm2 - 0.000_284_375).abs() < 1e-12);
        // 8 crossbars x 128 columns x 16 fragments = 16,384 conversions per cycle over
        // 32 x 2.1 GS/s: 243.8 ns.
        assert!((f.peak().cycle_ns - 16_384.0 / 67.2).abs() < 1e-6);
        // Fragments of 128 rows would be ISAAC's 1,024 conversions: crossbar-bound at 100 ns.
        assert!((Architecture::forms(128).peak().cycle_ns - 100.0).abs() < 1e-9);
    }

    #[test]
    fn one_full_crossbar_layer_runs_at_peak_and_skipping_scales_time() {
        use crate::sim::{LayerInfo, LayerProfile};
        // 128 inputs x 32 outputs of 8-bit weights (4 cells each) fill one 128x128 crossbar.
        let layers = [LayerInfo {
            name: "fc".into(),
            out: 32,
            k: 128,
            groups: 1,
            crossbars: 1,
            cells: 128 * 128,
            nonzero_weights: 128 * 32,
        }];
        let (mvms, segments) = (10u64, 16u64);
        let full = mvms * segments * 16;
        let profile = [LayerProfile {
            name: "fc".into(),
            mvms,
            segment_rows: 8,
            cycles_full: full,
            cycles_leading_zero: full / 2,
            cycles_nonzero_planes: full / 4,
            ..Default::default()
        }];
        let isaac = Architecture::isaac_8bit();
        let p = isaac.evaluate(&layers, &profile, 1, false);
        assert!(
            (p.gops - isaac.peak().gops).abs() / p.gops < 1e-9,
            "{} vs {}",
            p.gops,
            isaac.peak().gops
        );
        assert!((p.frames_per_s - 16_128.0 / (10.0 * 1.6e-6)).abs() / p.frames_per_s < 1e-9);
        let forms = Architecture::forms(8);
        let no_skip = forms.evaluate(&layers, &profile, 1, false);
        let skip = forms.evaluate(&layers, &profile, 1, true);
        assert!((skip.frames_per_s / no_skip.frames_per_s - 2.0).abs() < 1e-9);
        assert!((skip.cycle_fraction - 0.5).abs() < 1e-12);
        // A depthwise layer's crossbars each serve one group's MVMs.
        let grouped = [LayerInfo { groups: 4, crossbars: 4, ..layers[0].clone() }];
        let g = isaac.evaluate(&grouped, &profile, 1, false);
        assert!((g.frames_per_s - p.frames_per_s).abs() / p.frames_per_s < 1e-9);
    }
}
