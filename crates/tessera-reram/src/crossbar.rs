//! One weight matrix on crossbars: the stored cell levels after mapping, segment encoding,
//! faults and variation, and the two ways to multiply by it.
//!
//! * [`MappedMatrix::mvm_bit_serial`] is the hardware, step by step: for every input bit (MSB
//!   negative for two's-complement inputs), for every ADC segment (rows digitized together),
//!   sum the conductances of the rows whose bit is set, digitize (round, saturate at the ADC's
//!   top code), undo a complemented segment (`L * popcount - reading`), apply the fragment
//!   sign, shift and add; then combine slices and slots and subtract the offset.
//! * [`MappedMatrix::effective_weights`] folds all of that into one real matrix. It is exact
//!   whenever the ADC never rounds or saturates, which [`MappedMatrix::lossless`] checks per
//!   segment: integer levels (no variation) whose sum fits the ADC, or an ideal ADC. The graph
//!   runner uses it then (a dense GEMM instead of `input_bits` passes) and the bit-serial path
//!   otherwise; a test holds the two equal.

use crate::config::{CrossbarConfig, SegmentEncoding};
use crate::error::{ReramError, Result};
use crate::fault::{Fault, FaultMap};
use crate::mapping::Mapping;

/// A `[out, k]` weight matrix stored on crossbars.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedMatrix {
    /// Layer name for errors and reports.
    pub name: String,
    out: usize,
    k: usize,
    slices: usize,
    slots: usize,
    cols: usize,
    cell_bits: u32,
    top: f32,
    seg_rows: usize,
    segments: usize,
    /// Stored conductance per cell in level units, row-major `[k][cols]`.
    levels: Vec<f32>,
    /// Complemented segments, `[segments][cols]`.
    flip: Vec<bool>,
    /// Fragment sign per segment and column (+1 / -1), `[segments][cols]`.
    sign: Vec<f32>,
    /// Weight quantization step.
    scale: f64,
    /// Offset subtracted per input (offset mapping), else 0.
    bias: f64,
    coef: [f64; 2],
    integral: bool,
    adc_max: Option<f64>,
    xbar: (usize, usize),
}

/// Reusable buffers of [`MappedMatrix::mvm_bit_serial`] (no allocation per MVM).
#[derive(Debug, Clone, Default)]
pub struct MvmScratch {
    acc: Vec<f32>,
    per_column: Vec<f64>,
    active: Vec<u32>,
}

impl MappedMatrix {
    /// Quantizes, slices and maps `weights` (`[out, k]`, row-major) under `cfg`, fault-free.
    pub fn encode(
        cfg: &CrossbarConfig,
        name: &str,
        weights: &[f32],
        out: usize,
        k: usize,
    ) -> Result<Self> {
        cfg.validate()?;
        if weights.len() != out * k || out == 0 || k == 0 {
            return Err(ReramError::Layer {
                layer: name.into(),
                reason: format!("{} weights for a {out} x {k} matrix", weights.len()),
            });
        }
        if let Some(bad) = weights.iter().position(|w| !w.is_finite()) {
            return Err(ReramError::Layer {
                layer: name.into(),
                reason: format!("weight {bad} is not finite"),
            });
        }
        let mapping = cfg.mapping;
        let (slices, slots) = (cfg.slices(), mapping.slots());
        let cols = out * slots * slices;
        let (cb, top) = (cfg.cell_bits, cfg.top_level());
        let seg_rows = cfg.segment_rows();
        let segments = k.div_ceil(seg_rows);
        let (qmax, bias) = mapping.code_range(cfg.weight_bits);
        let max_abs = weights.iter().fold(0.0f64, |m, &w| m.max(f64::from(w).abs()));
        let scale = if max_abs > 0.0 { max_abs / qmax as f64 } else { 1.0 };
        let code = |w: f32| ((f64::from(w) / scale).round() as i64).clamp(-qmax, qmax);

        // Fragment signs (polarized): every non-zero code of a fragment must share one sign.
        let mut frag_positive = vec![true; out * segments];
        if let Mapping::Polarized { .. } = mapping {
            for o in 0..out {
                for s in 0..segments {
                    let row = &weights[o * k..(o + 1) * k];
                    let frag = &row[s * seg_rows..((s + 1) * seg_rows).min(k)];
                    let pos = frag.iter().any(|&w| code(w) > 0);
                    let neg = frag.iter().any(|&w| code(w) < 0);
                    if pos && neg {
                        return Err(ReramError::Layer {
                            layer: name.into(),
                            reason: format!(
                                "output {o}, fragment {s} (rows {}..{}) mixes signs; a polarized \
                                 mapping needs weights polarized with m = {seg_rows} first \
                                 (scheme `polarized:{seg_rows}`)",
                                s * seg_rows,
                                ((s + 1) * seg_rows).min(k)
                            ),
                        });
                    }
                    frag_positive[o * segments + s] = !neg;
                }
            }
        }

        let mut levels = vec![0.0f32; k * cols];
        let mut sign = vec![1.0f32; segments * cols];
        for o in 0..out {
            for r in 0..k {
                let stored = mapping.stored(code(weights[o * k + r]), bias);
                for (slot, &v) in stored.iter().enumerate().take(slots) {
                    for j in 0..slices {
                        let mut lev = ((v >> (cb as usize * j)) as u32) & top;
                        if mapping == Mapping::Differential {
                            lev = top - lev;
                        }
                        levels[r * cols + (o * slots + slot) * slices + j] = lev as f32;
                    }
                }
            }
            for s in 0..segments {
                if !frag_positive[o * segments + s] {
                    let c0 = o * slots * slices;
                    sign[s * cols + c0..s * cols + c0 + slots * slices].fill(-1.0);
                }
            }
        }

        let topf = top as f32;
        let mut flip = vec![false; segments * cols];
        for s in 0..segments {
            let rows = s * seg_rows..((s + 1) * seg_rows).min(k);
            let n = rows.len() as f64;
            for c in 0..cols {
                let sum: f64 = rows.clone().map(|r| f64::from(levels[r * cols + c])).sum();
                let l = f64::from(top);
                let f = match cfg.encoding {
                    SegmentEncoding::Plain => false,
                    SegmentEncoding::FlipHalf => 2.0 * sum > n * l,
                    SegmentEncoding::Complement => true,
                    SegmentEncoding::FaultAware { p_sa0, p_sa1 } => {
                        let plain = p_sa0 * sum + p_sa1 * (n * l - sum);
                        let comp = p_sa0 * (n * l - sum) + p_sa1 * sum;
                        comp < plain
                    }
                };
                if f {
                    flip[s * cols + c] = true;
                    for r in rows.clone() {
                        levels[r * cols + c] = topf - levels[r * cols + c];
                    }
                }
            }
        }
        Ok(MappedMatrix {
            name: name.into(),
            out,
            k,
            slices,
            slots,
            cols,
            cell_bits: cb,
            top: topf,
            seg_rows,
            segments,
            levels,
            flip,
            sign,
            scale,
            bias: bias as f64,
            coef: mapping.slot_coefficients(),
            integral: true,
            adc_max: cfg.adc_max(),
            xbar: (cfg.rows, cfg.cols),
        })
    }

    /// Outputs.
    pub fn out(&self) -> usize {
        self.out
    }

    /// Inputs (word lines in use).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Physical columns (bit lines in use).
    pub fn columns(&self) -> usize {
        self.cols
    }

    /// Cells in use (`k * columns`): the array faults are drawn over.
    pub fn cells(&self) -> usize {
        self.k * self.cols
    }

    /// Crossbars this matrix occupies.
    pub fn crossbars(&self) -> usize {
        self.k.div_ceil(self.xbar.0) * self.cols.div_ceil(self.xbar.1)
    }

    /// Crossbar shape `(rows, cols)`.
    pub fn crossbar_shape(&self) -> (usize, usize) {
        self.xbar
    }

    /// Rows digitized together.
    pub fn segment_rows(&self) -> usize {
        self.seg_rows
    }

    /// Stored level of cell (`row`, `column`) (for tests and reports).
    pub fn level(&self, row: usize, column: usize) -> f32 {
        self.levels[row * self.cols + column]
    }

    /// Sets faulty cells to level 0 (stuck off) or the top level (stuck on). `faults` indexes
    /// the `k x columns` array row-major.
    pub fn inject(&mut self, faults: &FaultMap) -> Result<()> {
        let n = self.cells();
        for &(i, kind) in &faults.cells {
            let i = i as usize;
            if i >= n {
                return Err(ReramError::Layer {
                    layer: self.name.clone(),
                    reason: format!("fault at cell {i} outside the {n} cells in use"),
                });
            }
            self.levels[i] = match kind {
                Fault::StuckOff => 0.0,
                Fault::StuckOn => self.top,
            };
        }
        Ok(())
    }

    /// Multiplies every cell's conductance by its factor (log-normal variation); level 0
    /// stays 0 (an ideal off state).
    pub fn vary(&mut self, factors: &[f32]) -> Result<()> {
        if factors.len() != self.levels.len() {
            return Err(ReramError::Layer {
                layer: self.name.clone(),
                reason: format!(
                    "{} variation factors for {} cells",
                    factors.len(),
                    self.levels.len()
                ),
            });
        }
        for (l, f) in self.levels.iter_mut().zip(factors) {
            *l *= f;
        }
        self.integral = self.levels.iter().all(|l| l.fract() == 0.0);
        Ok(())
    }

    /// Whether the ADC can never round or saturate a reading of this matrix, so the folded
    /// [`Self::effective_weights`] are exact.
    pub fn lossless(&self) -> bool {
        let Some(max) = self.adc_max else { return true };
        if !self.integral {
            return false;
        }
        let mut sums = vec![0.0f64; self.segments * self.cols];
        for r in 0..self.k {
            let s = r / self.seg_rows;
            for (c, &l) in self.levels[r * self.cols..(r + 1) * self.cols].iter().enumerate() {
                sums[s * self.cols + c] += f64::from(l);
            }
        }
        sums.iter().all(|&s| s <= max)
    }

    /// The matrix the crossbars compute when the ADC is lossless, transposed to `[k][out]`
    /// and scaled back to weight units.
    pub fn effective_weights(&self) -> Vec<f32> {
        let mut w = vec![0.0f32; self.k * self.out];
        for r in 0..self.k {
            let s = r / self.seg_rows;
            let cells = &self.levels[r * self.cols..(r + 1) * self.cols];
            for o in 0..self.out {
                let mut v = -self.bias;
                for slot in 0..self.slots {
                    for j in 0..self.slices {
                        let c = (o * self.slots + slot) * self.slices + j;
                        let l = f64::from(cells[c]);
                        let eff =
                            if self.flip[s * self.cols + c] { f64::from(self.top) - l } else { l };
                        v += self.coef[slot]
                            * f64::from(self.sign[s * self.cols + c])
                            * (1u64 << (self.cell_bits as usize * j)) as f64
                            * eff;
                    }
                }
                w[r * self.out + o] = (v * self.scale) as f32;
            }
        }
        w
    }

    /// One matrix-vector product the way the hardware does it: `x` holds the integer input
    /// codes (`input_bits` wide; two's complement when `signed`), `y` receives the outputs in
    /// weight units (multiply by the input scale for real units).
    pub fn mvm_bit_serial(
        &self,
        x: &[i32],
        input_bits: u32,
        signed: bool,
        scratch: &mut MvmScratch,
        y: &mut [f64],
    ) {
        let cols = self.cols;
        scratch.acc.resize(cols, 0.0);
        scratch.per_column.clear();
        scratch.per_column.resize(cols, 0.0);
        let top = f64::from(self.top);
        for b in 0..input_bits {
            let weight = if signed && b + 1 == input_bits {
                -((1u64 << b) as f64)
            } else {
                (1u64 << b) as f64
            };
            for s in 0..self.segments {
                let r0 = s * self.seg_rows;
                let r1 = (r0 + self.seg_rows).min(self.k);
                scratch.active.clear();
                for (r, &v) in x[r0..r1].iter().enumerate() {
                    if (v as u32 >> b) & 1 == 1 {
                        scratch.active.push((r0 + r) as u32);
                    }
                }
                if scratch.active.is_empty() {
                    continue; // every reading is 0, complemented or not
                }
                let pop = scratch.active.len() as f64;
                scratch.acc.fill(0.0);
                for &r in &scratch.active {
                    let row = &self.levels[r as usize * cols..(r as usize + 1) * cols];
                    for (a, &l) in scratch.acc.iter_mut().zip(row) {
                        *a += l;
                    }
                }
                let flips = &self.flip[s * cols..(s + 1) * cols];
                let signs = &self.sign[s * cols..(s + 1) * cols];
                for c in 0..cols {
                    let current = f64::from(scratch.acc[c]);
                    let reading = match self.adc_max {
                        None => current,
                        Some(max) => current.round().clamp(0.0, max),
                    };
                    let decoded = if flips[c] { top * pop - reading } else { reading };
                    scratch.per_column[c] += weight * f64::from(signs[c]) * decoded;
                }
            }
        }
        let x_sum: f64 = x.iter().map(|&v| f64::from(v)).sum();
        for (o, y_o) in y.iter_mut().enumerate().take(self.out) {
            let mut v = -self.bias * x_sum;
            for slot in 0..self.slots {
                for j in 0..self.slices {
                    let c = (o * self.slots + slot) * self.slices + j;
                    v += self.coef[slot]
                        * (1u64 << (self.cell_bits as usize * j)) as f64
                        * scratch.per_column[c];
                }
            }
            *y_o = v * self.scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AdcResolution;

    fn weights(out: usize, k: usize, seed: u32) -> Vec<f32> {
        (0..out * k)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn a_hand_computed_two_column_cell_layout() {
        // 2 outputs x 1 input, 4-bit weights on 2-bit cells: w = [1.0, -0.4], scale = 1/15.
        let cfg = CrossbarConfig { weight_bits: 4, ..Default::default() };
        let m = MappedMatrix::encode(&cfg, "t", &[1.0, -0.4], 2, 1).unwrap();
        // code(1.0) = 15 = 0b11_11; code(-0.4) = -6 = -(0b01_10).
        // Columns: (o0 pos j0, o0 pos j1, o0 neg j0, o0 neg j1, o1 pos.., o1 neg..).
        let got: Vec<f32> = (0..8).map(|c| m.level(0, c)).collect();
        assert_eq!(got, vec![3.0, 3.0, 0.0, 0.0, 0.0, 0.0, 2.0, 1.0]);
        let d = MappedMatrix::encode(
            &CrossbarConfig { mapping: Mapping::Differential, ..cfg.clone() },
            "t",
            &[1.0, -0.4],
            2,
            1,
        )
        .unwrap();
        let got: Vec<f32> = (0..8).map(|c| d.level(0, c)).collect();
        assert_eq!(got, vec![0.0, 0.0, 3.0, 3.0, 3.0, 3.0, 1.0, 2.0]);
        // A zero weight under the differential mapping: both columns at the top level.
        let z = MappedMatrix::encode(
            &CrossbarConfig { mapping: Mapping::Differential, ..cfg },
            "t",
            &[0.0, 1.0],
            2,
            1,
        )
        .unwrap();
        assert!((0..4).all(|c| z.level(0, c) == 3.0));
    }

    #[test]
    fn bit_serial_equals_the_folded_weights_when_the_adc_is_lossless() {
        for mapping in [Mapping::Offset, Mapping::TwoColumn, Mapping::Differential] {
            for encoding in
                [SegmentEncoding::Plain, SegmentEncoding::FlipHalf, SegmentEncoding::Complement]
            {
                let cfg = CrossbarConfig { rows: 16, mapping, encoding, ..Default::default() };
                let (out, k) = (5, 37);
                let m = MappedMatrix::encode(&cfg, "t", &weights(out, k, 3), out, k).unwrap();
                assert!(m.lossless());
                let eff = m.effective_weights();
                let x: Vec<i32> = (0..k as i32).map(|i| (i * 7919) % 4001 - 2000).collect();
                let mut y = vec![0.0; out];
                m.mvm_bit_serial(&x, 16, true, &mut MvmScratch::default(), &mut y);
                for o in 0..out {
                    let want: f64 =
                        (0..k).map(|r| f64::from(eff[r * out + o]) * f64::from(x[r])).sum();
                    assert!(
                        (y[o] - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{mapping} {encoding:?}: {} vs {want}",
                        y[o]
                    );
                }
            }
        }
    }

    #[test]
    fn a_narrow_adc_saturates_and_the_check_says_so() {
        let cfg = CrossbarConfig { adc: AdcResolution::Bits(4), ..Default::default() };
        let (out, k) = (3, 64);
        let w = vec![1.0f32; out * k];
        let m = MappedMatrix::encode(&cfg, "t", &w, out, k).unwrap();
        assert!(!m.lossless());
        let x = vec![1i32; k];
        let mut y = vec![0.0; out];
        m.mvm_bit_serial(&x, 16, false, &mut MvmScratch::default(), &mut y);
        // Each slice column reads 64 * 3 = 192 but saturates at 15.
        let code_sum: f64 = (0..4).map(|j| 15.0 * (1u64 << (2 * j)) as f64).sum();
        assert!((y[0] - code_sum * m.scale).abs() < 1e-9, "{}", y[0]);
    }

    #[test]
    fn polarized_mapping_rejects_mixed_fragments_and_keeps_one_column() {
        let cfg = CrossbarConfig::with_mapping(Mapping::Polarized { m: 4 });
        let err = MappedMatrix::encode(&cfg, "fc", &[1.0, -1.0, 0.0, 0.0], 1, 4).unwrap_err();
        assert!(err.to_string().contains("fragment 0"), "{err}");
        let m = MappedMatrix::encode(&cfg, "fc", &[-1.0, -0.5, 0.0, 0.0, 0.25, 0.5], 1, 6).unwrap();
        assert_eq!(m.columns(), 4);
        let eff = m.effective_weights();
        let want = [-1.0, -0.5, 0.0, 0.0, 0.25, 0.5];
        for (e, w) in eff.iter().zip(want) {
            assert!((e - w).abs() < 1.0 / 255.0, "{e} vs {w}");
        }
    }

    #[test]
    fn fault_aware_encoding_complements_mostly_empty_segments_when_stuck_on_dominates() {
        // Output 0: all weights 1 (every slice at the top level); output 1: all zero.
        let cfg = CrossbarConfig {
            encoding: SegmentEncoding::FaultAware { p_sa0: 0.01, p_sa1: 0.052 },
            ..CrossbarConfig::default()
        };
        let (out, k) = (2, 8);
        let mut w = vec![1.0f32; k];
        w.extend(vec![0.0f32; k]);
        let m = MappedMatrix::encode(&cfg, "t", &w, out, k).unwrap();
        // Output 0 positive slot (columns 0..4): full segments stay plain (stuck-on is then
        // harmless); its empty negative slot (4..8) and all of output 1 (8..16) are complemented.
        for c in 0..4 {
            assert!(!m.flip[c] && m.level(0, c) == 3.0);
        }
        for c in 4..16 {
            assert!(m.flip[c] && m.level(0, c) == 3.0, "column {c}");
        }
        // With the rates the other way round the choice flips.
        let cfg = CrossbarConfig {
            encoding: SegmentEncoding::FaultAware { p_sa0: 0.052, p_sa1: 0.01 },
            ..CrossbarConfig::default()
        };
        let m = MappedMatrix::encode(&cfg, "t", &w, out, k).unwrap();
        assert!(m.flip[0] && !m.flip[8]);
        // Either way the folded weights are the original ones.
        let eff = m.effective_weights();
        assert!((eff[0] - 1.0).abs() < 1e-6 && eff[1] == 0.0);
    }
}
