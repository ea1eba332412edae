//! The sparse-training methods and their settings. Defaults follow the public code of each
//! method (MEST: `boone891214/MEST`; RigL and SET: `google-research/rigl`); every one is a
//! field a caller can change.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// How the first mask is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitMask {
    /// Units chosen uniformly at random (SET's Erdős–Rényi graph, RigL).
    #[default]
    Random,
    /// The largest units of the random initial weights (MEST's `prune_harden` at t = 0).
    Magnitude,
}

/// How often the mask changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    /// At the start of every `n`-th epoch (epoch 0 included for MEST).
    Epochs(usize),
    /// After every `n` optimizer steps.
    Steps(usize),
}

impl Interval {
    pub(crate) fn validate(self, field: &str) -> Result<()> {
        match self {
            Interval::Epochs(0) | Interval::Steps(0) => {
                Err(TrainError::config(field, "the interval must be at least 1"))
            }
            _ => Ok(()),
        }
    }
}

/// How the drop fraction of SET / RigL changes over the updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anneal {
    /// The same fraction at every update (SET's zeta).
    #[default]
    Constant,
    /// `f(t) = f0 / 2 (1 + cos(pi t / T_end))` (RigL's `drop_fraction_anneal = cosine`).
    Cosine,
}

/// How grown units are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Growth {
    /// Uniformly among the empty units (SET, MEST).
    Random,
    /// The empty units with the largest dense-gradient norm on the last batch (RigL).
    Gradient,
}

/// Drop-and-grow at a constant live count (SET and RigL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DropGrowConfig {
    /// First mask.
    pub init: InitMask,
    /// Fraction of live units dropped (smallest magnitude) and regrown at each update.
    pub drop_fraction: f64,
    /// How the fraction decays.
    pub anneal: Anneal,
    /// Update interval.
    pub every: Interval,
    /// No updates after this fraction of training (RigL: 0.75).
    pub end_fraction: f64,
    /// Growth criterion.
    pub growth: Growth,
}

impl DropGrowConfig {
    /// SET (Mocanu et al. 2018): random mask, drop zeta = 0.3 of the live weights after every
    /// epoch, regrow as many at random (at zero, as in the RigL code base's SET).
    pub fn set() -> Self {
        DropGrowConfig {
            init: InitMask::Random,
            drop_fraction: 0.3,
            anneal: Anneal::Constant,
            every: Interval::Epochs(1),
            end_fraction: 1.0,
            growth: Growth::Random,
        }
    }

    /// RigL (Evci et al. 2020): random mask, every 100 steps until 75% of training drop the
    /// cosine-annealed fraction (from 0.3) of the smallest weights and grow as many by
    /// dense-gradient magnitude, at zero.
    pub fn rigl() -> Self {
        DropGrowConfig {
            init: InitMask::Random,
            drop_fraction: 0.3,
            anneal: Anneal::Cosine,
            every: Interval::Steps(100),
            end_fraction: 0.75,
            growth: Growth::Gradient,
        }
    }

    /// The drop fraction at training fraction `t`.
    pub fn fraction_at(&self, t: f64) -> f64 {
        match self.anneal {
            Anneal::Constant => self.drop_fraction,
            Anneal::Cosine => {
                let x = (t / self.end_fraction.max(1e-12)).clamp(0.0, 1.0);
                self.drop_fraction / 2.0 * (1.0 + (std::f64::consts::PI * x).cos())
            }
        }
    }
}

/// One stage of MEST's mutation schedule: from `from_fraction` of training on, each update
/// prunes every layer to `prune_to` sparsity by its score and regrows random units (at zero)
/// up to `grow_to` sparsity. `grow_to == prune_to` means no growth (a frozen mask);
/// `grow_to < target` is the soft memory bound.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MestPhase {
    /// Where the phase starts, as a fraction of training (0 = first epoch).
    pub from_fraction: f64,
    /// Sparsity pruned to (MEST's `--lower-bound`).
    pub prune_to: f64,
    /// Sparsity grown back to (MEST's `--upper-bound`).
    pub grow_to: f64,
}

/// MEST's importance score for the prune step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MestScore {
    /// `|w|`: what the public code computes (its gradient term is zero at update time).
    Magnitude,
    /// `|w| + lambda |g|` with `g` the last batch's *masked* gradient (the paper's score,
    /// computed without a dense gradient).
    MagnitudeGradient {
        /// Weight of the gradient term.
        lambda: f32,
    },
}

/// MEST (Yuan et al., NeurIPS 2021) as its public code runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MestConfig {
    /// The mutation schedule, in increasing `from_fraction` (the first starts at 0).
    pub phases: Vec<MestPhase>,
    /// Update interval (the code: every 5 of 160 epochs, from epoch 0).
    pub every: Interval,
    /// Prune score.
    pub score: MestScore,
}

/// MEST's decay points: epochs 90 and 120 of 160.
const MEST_DECAY: [f64; 2] = [90.0 / 160.0, 120.0 / 160.0];

impl MestConfig {
    /// MEST (EM), elastic mutation at target sparsity `s`: prune to a sparsity that removes
    /// 20%, then 10% of the live weights (92%/91% at a 90% target, 96%/95.5% at 95%), regrow
    /// to `s`; frozen from 75% of training.
    pub fn elastic_mutation(s: f64) -> Self {
        let d = 1.0 - s;
        let prune = [1.0 - d * 0.8, 1.0 - d * 0.9, s];
        MestConfig {
            phases: (0..3)
                .map(|k| MestPhase {
                    from_fraction: if k == 0 { 0.0 } else { MEST_DECAY[k - 1] },
                    prune_to: prune[k],
                    grow_to: s,
                })
                .collect(),
            every: Interval::Epochs(5),
            score: MestScore::Magnitude,
        }
    }

    /// MEST (EM&S), elastic mutation with the soft memory bound: train 5%, then 2.5% of the
    /// dense count above the target (85%/87.5% at 90%, as the public scripts), prune back to
    /// `s` at every update; from 75% of training prune to `s` without growth.
    pub fn soft_memory_bound(s: f64) -> Self {
        let grow = [(s - 0.05).max(0.0), (s - 0.025).max(0.0), s];
        MestConfig {
            phases: (0..3)
                .map(|k| MestPhase {
                    from_fraction: if k == 0 { 0.0 } else { MEST_DECAY[k - 1] },
                    prune_to: s,
                    grow_to: grow[k],
                })
                .collect(),
            every: Interval::Epochs(5),
            score: MestScore::Magnitude,
        }
    }

    /// The phase in force at training fraction `t`.
    pub fn phase_at(&self, t: f64) -> Option<&MestPhase> {
        self.phase_index_at(t).map(|i| &self.phases[i])
    }

    /// The index of the phase in force at training fraction `t`.
    pub fn phase_index_at(&self, t: f64) -> Option<usize> {
        self.phases.iter().rposition(|p| p.from_fraction <= t + 1e-12)
    }

    /// The smallest grow-to sparsity: what the peak memory is sized by.
    pub fn min_grow_to(&self) -> f64 {
        self.phases.iter().map(|p| p.grow_to).fold(1.0, f64::min)
    }
}

/// A sparse-training method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Method {
    /// A fixed mask from the start.
    Static {
        /// How it is drawn.
        init: InitMask,
    },
    /// SET.
    Set(DropGrowConfig),
    /// RigL.
    Rigl(DropGrowConfig),
    /// MEST (EM or EM&S, by its phases).
    Mest(MestConfig),
}

impl Method {
    /// Short name for tables.
    pub fn name(&self) -> String {
        match self {
            Method::Static { .. } => "static".into(),
            Method::Set(_) => "set".into(),
            Method::Rigl(_) => "rigl".into(),
            Method::Mest(m) => {
                let target = m.phases.last().map_or(0.0, |p| p.prune_to);
                let soft = m.phases.iter().any(|p| p.grow_to < target - 1e-12);
                if soft { "mest-ems".into() } else { "mest-em".into() }
            }
        }
    }

    pub(crate) fn validate(&self, target: f64) -> Result<()> {
        let frac = |f: f64, field: &str| {
            if (0.0..=1.0).contains(&f) {
                Ok(())
            } else {
                Err(TrainError::config(field, format!("must be in [0, 1], got {f}")))
            }
        };
        match self {
            Method::Static { .. } => Ok(()),
            Method::Set(c) | Method::Rigl(c) => {
                frac(c.drop_fraction, "drop_fraction")?;
                frac(c.end_fraction, "end_fraction")?;
                c.every.validate("every")
            }
            Method::Mest(c) => {
                c.every.validate("every")?;
                let Some(first) = c.phases.first() else {
                    return Err(TrainError::config("phases", "MEST needs at least one phase"));
                };
                if first.from_fraction != 0.0 {
                    return Err(TrainError::config("phases", "the first phase must start at 0"));
                }
                for (i, p) in c.phases.iter().enumerate() {
                    frac(p.from_fraction, "phases.from_fraction")?;
                    frac(p.prune_to, "phases.prune_to")?;
                    frac(p.grow_to, "phases.grow_to")?;
                    if p.prune_to < p.grow_to {
                        return Err(TrainError::config(
                            "phases",
                            format!(
                                "phase {i}: prune_to {} is below grow_to {} (growth would remove weights)",
                                p.prune_to, p.grow_to
                            ),
                        ));
                    }
                    if i > 0 && p.from_fraction < c.phases[i - 1].from_fraction {
                        return Err(TrainError::config("phases", "phases must be in order"));
                    }
                }
                let last = c.phases[c.phases.len() - 1];
                if (last.prune_to - target).abs() > 1e-9 {
                    return Err(TrainError::config(
                        "phases",
                        format!(
                            "the last phase prunes to {}, but the target sparsity is {target}",
                            last.prune_to
                        ),
                    ));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The public scripts' bounds at 90%: EM `--lower-bound 0.92-0.91-0.9 --upper-bound
    /// 0.9-0.9-0.9`, EM&S `--lower-bound 0.9-0.9-0.9 --upper-bound 0.85-0.875-0.9`, decay at
    /// epochs 90 and 120 of 160; at 95%: EM 0.96-0.955-0.95, EM&S upper 0.90-0.925-0.95.
    #[test]
    fn defaults_reproduce_the_public_scripts() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        let em = MestConfig::elastic_mutation(0.9);
        let got: Vec<(f64, f64, f64)> =
            em.phases.iter().map(|p| (p.from_fraction, p.prune_to, p.grow_to)).collect();
        for (g, w) in got.iter().zip([(0.0, 0.92, 0.9), (0.5625, 0.91, 0.9), (0.75, 0.9, 0.9)]) {
            assert!(close(g.0, w.0) && close(g.1, w.1) && close(g.2, w.2), "{got:?}");
        }
        let ems = MestConfig::soft_memory_bound(0.9);
        let grow: Vec<f64> = ems.phases.iter().map(|p| p.grow_to).collect();
        assert!(close(grow[0], 0.85) && close(grow[1], 0.875) && close(grow[2], 0.9));
        assert!(close(ems.min_grow_to(), 0.85));
        let em95: Vec<f64> =
            MestConfig::elastic_mutation(0.95).phases.iter().map(|p| p.prune_to).collect();
        assert!(close(em95[0], 0.96) && close(em95[1], 0.955), "{em95:?}");
        let ems95: Vec<f64> =
            MestConfig::soft_memory_bound(0.95).phases.iter().map(|p| p.grow_to).collect();
        assert!(close(ems95[0], 0.90) && close(ems95[1], 0.925), "{ems95:?}");
        assert_eq!(Method::Mest(ems).name(), "mest-ems");
        assert_eq!(Method::Mest(em).name(), "mest-em");
    }

    #[test]
    fn phase_lookup_follows_the_decay_points() {
        let em = MestConfig::elastic_mutation(0.9);
        assert_eq!(em.phase_at(0.0).map(|p| p.prune_to), Some(0.92));
        assert_eq!(em.phase_at(89.0 / 160.0).map(|p| p.prune_to), Some(0.92));
        assert_eq!(em.phase_at(90.0 / 160.0).map(|p| p.prune_to), Some(0.91));
        assert_eq!(em.phase_at(0.99).map(|p| p.prune_to), Some(0.9));
    }

    /// RigL's cosine: f(0) = 0.3, f(T_end / 2) = 0.15, f(T_end) = 0.
    #[test]
    fn rigl_drop_fraction_is_cosine_annealed() {
        let r = DropGrowConfig::rigl();
        assert!((r.fraction_at(0.0) - 0.3).abs() < 1e-12);
        assert!((r.fraction_at(0.375) - 0.15).abs() < 1e-12);
        assert!(r.fraction_at(0.75).abs() < 1e-12);
        assert!((DropGrowConfig::set().fraction_at(0.9) - 0.3).abs() < 1e-12);
    }

    #[test]
    fn validation_names_the_bad_field() {
        let mut m = MestConfig::soft_memory_bound(0.9);
        m.phases[0].grow_to = 0.95;
        let e = Method::Mest(m).validate(0.9).unwrap_err().to_string();
        assert!(e.contains("phases") && e.contains("below grow_to"), "{e}");
        let e = Method::Mest(MestConfig::elastic_mutation(0.9)).validate(0.95).unwrap_err();
        assert!(e.to_string().contains("target sparsity"), "{e}");
        let mut s = DropGrowConfig::set();
        s.every = Interval::Steps(0);
        assert!(Method::Set(s).validate(0.9).is_err());
    }
}
