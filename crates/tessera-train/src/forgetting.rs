//! Data-efficient training: per-example forgetting events counted in-situ (Toneva et al.
//! 2019, as MEST's `main_sparse_train_w_data_efficient.py` does while its masks change), and a
//! one-shot removal of the least-forgotten examples at a chosen epoch.
//!
//! An example's outcome is recorded every time it is in a training batch (the loop's forward
//! pass, before the step; no extra forward): whether it was right and its margin (label logit
//! minus the largest other). A forgetting event is correct -> wrong between two consecutive
//! presentations. Examples never classified correctly count as maximally forgettable. At the
//! removal epoch the examples are ranked ([`Ranking`]) and the first ones are removed; from
//! then on each epoch trains on the rest. Rankings: MEST's and Toneva et al.'s (forgetting
//! count, ties by index), the same with ties broken by the mean margin over the presentations
//! (largest first: early in a short run most examples are still tied at zero events, and the
//! index order then removes a random sample of them), and a seeded random sample as the
//! control that says whether the statistics matter. Works for dense training too: it is a
//! [`Hooks`] of its own, composable with [`crate::SparseTrainer`] through
//! [`tessera_models::train::Both`].

use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tessera_models::train::{Hooks, Outcomes};

use crate::error::{Result, TrainError};

/// How many examples to remove.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RemovalAmount {
    /// A fixed number (MEST's `--remove-n`), least forgotten first.
    Count {
        /// How many.
        n: usize,
    },
    /// A fraction of the training set, least forgotten first.
    Fraction {
        /// Fraction in `[0, 1)`.
        f: f64,
    },
    /// Every unforgettable example (learned and never forgotten), however many.
    Unforgettable,
}

/// Which examples go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ranking {
    /// Ascending (forgetting count, index): MEST's code and Toneva et al.'s (a stable sort).
    #[default]
    Forgetting,
    /// Ascending forgetting count, ties by descending mean margin over the example's
    /// presentations (the most confidently right first), then index.
    ForgettingThenMargin,
    /// A uniform random sample (ChaCha8 from `seed`): the control.
    Random {
        /// Seed.
        seed: u64,
    },
}

/// When and how much to remove.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Removal {
    /// The first epoch trained without the removed examples (MEST: 70 of 160).
    pub epoch: usize,
    /// How many.
    pub amount: RemovalAmount,
    /// Which first (default: MEST's).
    #[serde(default)]
    pub ranking: Ranking,
}

/// What the removal did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemovalReport {
    /// The epoch it took effect.
    pub epoch: usize,
    /// Examples removed.
    pub removed: usize,
    /// Of them, unforgettable (learned, never forgotten).
    pub removed_unforgettable: usize,
    /// Unforgettable examples in the whole set at removal time.
    pub unforgettable: usize,
    /// Examples never classified correctly at removal time.
    pub never_learned: usize,
    /// Examples kept.
    pub kept: usize,
    /// Histogram of forgetting counts at removal time (`[i]` = examples forgotten `i` times;
    /// never-learned ones excluded).
    pub histogram: Vec<usize>,
    /// Mean margin (over presentations) of the removed and of the kept examples.
    #[serde(default)]
    pub mean_margin: Option<(f64, f64)>,
}

/// Per-example statistics and the removal schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forgetting {
    /// 0 = not seen yet, 1 = last seen wrong, 2 = last seen correct.
    last: Vec<u8>,
    forgotten: Vec<u32>,
    learned: Vec<bool>,
    presentations: Vec<u32>,
    /// Sum of the margins over the presentations with a margin (empty in state saved before
    /// margins: those presentations have none).
    #[serde(default)]
    margin_sum: Vec<f64>,
    /// Presentations with a margin.
    #[serde(default)]
    margin_presentations: Vec<u32>,
    removal: Option<Removal>,
    kept: Option<Vec<u32>>,
    report: Option<RemovalReport>,
}

impl Forgetting {
    /// Statistics over a training set of `examples`, with an optional removal.
    pub fn new(examples: usize, removal: Option<Removal>) -> Result<Self> {
        if let Some(r) = removal {
            match r.amount {
                RemovalAmount::Fraction { f } if !(0.0..1.0).contains(&f) => {
                    return Err(TrainError::config(
                        "removal.fraction",
                        format!("must be in [0, 1), got {f}"),
                    ));
                }
                RemovalAmount::Count { n } if n >= examples => {
                    return Err(TrainError::config(
                        "removal.count",
                        format!("removing {n} of {examples} examples leaves nothing to train on"),
                    ));
                }
                _ => {}
            }
        }
        Ok(Forgetting {
            last: vec![0; examples],
            forgotten: vec![0; examples],
            learned: vec![false; examples],
            presentations: vec![0; examples],
            margin_sum: vec![0.0; examples],
            margin_presentations: vec![0; examples],
            removal,
            kept: None,
            report: None,
        })
    }

    /// Records the outcomes of one batch (margins: see [`Outcomes::margins`]; a missing or
    /// non-finite one is not recorded).
    pub fn record(&mut self, indices: &[u32], correct: &[bool], margins: &[f32]) {
        for (k, (&i, &c)) in indices.iter().zip(correct).enumerate() {
            let i = i as usize;
            if i >= self.last.len() {
                continue;
            }
            if let Some(&m) = margins.get(k).filter(|m| m.is_finite()) {
                self.margin_sum[i] += f64::from(m);
                self.margin_presentations[i] += 1;
            }
            if self.last[i] == 2 && !c {
                self.forgotten[i] += 1;
            }
            self.last[i] = if c { 2 } else { 1 };
            self.learned[i] |= c;
            self.presentations[i] += 1;
        }
    }

    /// Forgetting count per example (`u32::MAX` for examples never classified correctly).
    pub fn counts(&self) -> Vec<u32> {
        self.forgotten
            .iter()
            .zip(&self.learned)
            .map(|(&f, &l)| if l { f } else { u32::MAX })
            .collect()
    }

    /// Examples learned and never forgotten.
    pub fn unforgettable(&self) -> usize {
        self.forgotten.iter().zip(&self.learned).filter(|&(&f, &l)| l && f == 0).count()
    }

    /// Mean margin over each example's presentations with a margin (0 before the first).
    pub fn mean_margins(&self) -> Vec<f64> {
        self.margin_sum
            .iter()
            .zip(&self.margin_presentations)
            .map(|(&sum, &n)| if n == 0 { 0.0 } else { sum / f64::from(n) })
            .collect()
    }

    /// How often each example was presented.
    pub fn presentations(&self) -> &[u32] {
        &self.presentations
    }

    /// The removal's report, once it happened.
    pub fn report(&self) -> Option<&RemovalReport> {
        self.report.as_ref()
    }

    /// The examples to remove now: the first `amount` in `ranking`'s order.
    pub fn select_removed(&self, amount: RemovalAmount, ranking: Ranking) -> Vec<u32> {
        let counts = self.counts();
        let mut order: Vec<u32> = (0..counts.len() as u32).collect();
        match ranking {
            Ranking::Forgetting => order.sort_by_key(|&i| (counts[i as usize], i)),
            Ranking::ForgettingThenMargin => {
                let margins = self.mean_margins();
                order.sort_by(|&a, &b| {
                    let (a, b) = (a as usize, b as usize);
                    counts[a]
                        .cmp(&counts[b])
                        .then(margins[b].total_cmp(&margins[a]))
                        .then(a.cmp(&b))
                });
            }
            Ranking::Random { seed } => order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed)),
        }
        let n = match amount {
            RemovalAmount::Count { n } => n,
            RemovalAmount::Fraction { f } => (f * counts.len() as f64).floor() as usize,
            RemovalAmount::Unforgettable => self.unforgettable(),
        }
        .min(counts.len().saturating_sub(1));
        order.truncate(n);
        order
    }

    fn remove_now(&mut self, epoch: usize, amount: RemovalAmount, ranking: Ranking) {
        let removed = self.select_removed(amount, ranking);
        let counts = self.counts();
        let mut gone = vec![false; counts.len()];
        for &i in &removed {
            gone[i as usize] = true;
        }
        let max = counts.iter().filter(|&&c| c != u32::MAX).max().copied().unwrap_or(0) as usize;
        let mut histogram = vec![0; max + 1];
        for &c in counts.iter().filter(|&&c| c != u32::MAX) {
            histogram[c as usize] += 1;
        }
        let kept: Vec<u32> = (0..counts.len() as u32).filter(|&i| !gone[i as usize]).collect();
        let margins = self.mean_margins();
        let mean = |set: &[u32]| {
            set.iter().map(|&i| margins[i as usize]).sum::<f64>() / set.len().max(1) as f64
        };
        self.report = Some(RemovalReport {
            epoch,
            removed: removed.len(),
            removed_unforgettable: removed
                .iter()
                .filter(|&&i| self.learned[i as usize] && self.forgotten[i as usize] == 0)
                .count(),
            unforgettable: self.unforgettable(),
            never_learned: counts.iter().filter(|&&c| c == u32::MAX).count(),
            kept: kept.len(),
            histogram,
            mean_margin: Some((mean(&removed), mean(&kept))),
        });
        tracing::info!(
            epoch,
            removed = removed.len(),
            kept = kept.len(),
            ?ranking,
            "removed examples"
        );
        self.kept = Some(kept);
    }
}

impl<M> Hooks<M> for Forgetting {
    fn epoch_examples(&mut self, epoch: usize) -> Option<Vec<u32>> {
        if let Some(r) = self.removal
            && epoch >= r.epoch
            && self.kept.is_none()
        {
            self.remove_now(epoch, r.amount, r.ranking);
        }
        self.kept.clone()
    }

    fn on_outcomes(&mut self, _epoch: usize, batch: &Outcomes<'_>) {
        self.record(batch.indices, batch.correct, batch.margins);
    }

    fn save_state(&self) -> tessera_models::Result<Option<Vec<u8>>> {
        serde_json::to_vec(self).map(Some).map_err(|e| {
            TrainError::State { reason: format!("cannot serialize forgetting statistics: {e}") }
                .into()
        })
    }

    fn load_state(&mut self, bytes: &[u8]) -> tessera_models::Result<()> {
        let saved: Forgetting = serde_json::from_slice(bytes)
            .map_err(|e| TrainError::State { reason: format!("not forgetting statistics: {e}") })?;
        if saved.last.len() != self.last.len() || saved.removal != self.removal {
            return Err(TrainError::State {
                reason: format!(
                    "statistics for {} examples with removal {:?}; this run has {} with {:?}",
                    saved.last.len(),
                    saved.removal,
                    self.last.len(),
                    self.removal
                ),
            }
            .into());
        }
        *self = saved;
        // State saved before margins were recorded: margins count from here on (the mean is
        // over the presentations that have one).
        if self.margin_sum.len() != self.last.len()
            || self.margin_presentations.len() != self.last.len()
        {
            self.margin_sum = vec![0.0; self.last.len()];
            self.margin_presentations = vec![0; self.last.len()];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-made sequences: 0 = always right (unforgettable), 1 = right, wrong, right
    /// (forgotten once), 2 = never right (maximal), 3 = right, wrong, right, wrong (twice),
    /// 4 = wrong, right, right (learned, never forgotten).
    #[test]
    fn counts_forgetting_events_by_hand() -> anyhow::Result<()> {
        let mut f = Forgetting::new(5, None)?;
        let seq = [
            [true, true, false, true, false],
            [true, false, false, false, true],
            [true, true, false, true, true],
            [true, true, false, false, true],
        ];
        for s in seq {
            f.record(&[0, 1, 2, 3, 4], &s, &[]);
        }
        assert_eq!(f.counts(), vec![0, 1, u32::MAX, 2, 0]);
        assert_eq!(f.unforgettable(), 2);
        let by = Ranking::Forgetting;
        assert_eq!(f.select_removed(RemovalAmount::Count { n: 3 }, by), vec![0, 4, 1]);
        assert_eq!(f.select_removed(RemovalAmount::Unforgettable, by), vec![0, 4]);
        assert_eq!(f.select_removed(RemovalAmount::Fraction { f: 0.2 }, by), vec![0]);
        Ok(())
    }

    /// The count comes first, the mean margin breaks its ties, never-learned examples come
    /// last. Hand-computed: counts [0, 0, 1, 0, never, 0]; mean margins 1.0, 3.0, 9.5 (forgotten
    /// once, yet the largest), 2.0, -0.25 (never learned), -2.75 (learned late, never
    /// forgotten). By margin alone the order would start with 2 and end with 5.
    #[test]
    fn margin_breaks_ties_among_equal_counts() -> anyhow::Result<()> {
        let mut f = Forgetting::new(6, None)?;
        let all = [0, 1, 2, 3, 4, 5];
        f.record(
            &all,
            &[true, true, true, true, false, false],
            &[0.5, 2.0, 20.0, 1.0, -0.25, -6.0],
        );
        f.record(&all, &[true, true, false, true, false, true], &[1.5, 4.0, -1.0, 3.0, -0.25, 0.5]);
        assert_eq!(f.counts(), vec![0, 0, 1, 0, u32::MAX, 0]);
        assert_eq!(f.mean_margins(), vec![1.0, 3.0, 9.5, 2.0, -0.25, -2.75]);
        let n = RemovalAmount::Count { n: 5 };
        assert_eq!(f.select_removed(n, Ranking::ForgettingThenMargin), vec![1, 3, 0, 5, 2]);
        assert_eq!(f.select_removed(n, Ranking::Forgetting), vec![0, 1, 3, 5, 2]);
        Ok(())
    }

    /// A non-finite margin is not recorded: the mean stays over the finite ones.
    #[test]
    fn non_finite_margins_are_skipped() -> anyhow::Result<()> {
        let mut f = Forgetting::new(2, None)?;
        f.record(&[0, 1], &[true, false], &[2.0, f32::NAN]);
        f.record(&[0, 1], &[true, false], &[f32::INFINITY, -1.0]);
        assert_eq!(f.mean_margins(), vec![2.0, -1.0]);
        assert_eq!(f.presentations(), &[2, 2]);
        Ok(())
    }

    /// State saved before margins existed loads: counts and presentations carry on, margins
    /// count from the load (the mean is over the presentations that have one).
    #[test]
    fn state_from_before_margins_loads() -> anyhow::Result<()> {
        let mut f = Forgetting::new(2, None)?;
        f.record(&[0, 1], &[true, true], &[5.0, 5.0]);
        let bytes = Hooks::<()>::save_state(&f)?.ok_or_else(|| anyhow::anyhow!("no state"))?;
        let mut old: serde_json::Value = serde_json::from_slice(&bytes)?;
        let fields = old.as_object_mut().ok_or_else(|| anyhow::anyhow!("not an object"))?;
        assert!(fields.remove("margin_sum").is_some());
        assert!(fields.remove("margin_presentations").is_some());
        let mut g = Forgetting::new(2, None)?;
        Hooks::<()>::load_state(&mut g, &serde_json::to_vec(&old)?)?;
        g.record(&[0, 1], &[false, true], &[-1.0, 3.0]);
        assert_eq!(g.counts(), vec![1, 0]);
        assert_eq!(g.presentations(), &[2, 2]);
        assert_eq!(g.mean_margins(), vec![-1.0, 3.0]);
        Ok(())
    }

    /// The random control: a seeded sample of the requested size without repeats, the same
    /// for the same seed, another for another seed, and blind to the statistics.
    #[test]
    fn random_ranking_is_a_seeded_sample() -> anyhow::Result<()> {
        let mut f = Forgetting::new(100, None)?;
        let all: Vec<u32> = (0..100).collect();
        f.record(&all, &[true; 100], &[1.0; 100]);
        let n = RemovalAmount::Fraction { f: 0.3 };
        let a = f.select_removed(n, Ranking::Random { seed: 1 });
        let mut sorted = a.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 30);
        assert_eq!(a, f.select_removed(n, Ranking::Random { seed: 1 }));
        assert_ne!(a, f.select_removed(n, Ranking::Random { seed: 2 }));
        assert_ne!(sorted, (0..30).collect::<Vec<u32>>());
        Ok(())
    }

    #[test]
    fn removal_takes_effect_at_its_epoch_and_stays() -> anyhow::Result<()> {
        let removal = Removal {
            epoch: 2,
            amount: RemovalAmount::Count { n: 2 },
            ranking: Ranking::Forgetting,
        };
        let mut f = Forgetting::new(4, Some(removal))?;
        for e in 0..2 {
            assert_eq!(Hooks::<()>::epoch_examples(&mut f, e), None);
            f.record(&[0, 1, 2, 3], &[true, false, true, e == 0], &[1.0, -1.0, 2.0, 0.5]);
        }
        assert_eq!(f.counts(), vec![0, u32::MAX, 0, 1]);
        assert_eq!(Hooks::<()>::epoch_examples(&mut f, 2), Some(vec![1, 3]));
        assert_eq!(Hooks::<()>::epoch_examples(&mut f, 3), Some(vec![1, 3]));
        let r = f.report().cloned().ok_or_else(|| anyhow::anyhow!("no report"))?;
        assert_eq!(
            (r.removed, r.removed_unforgettable, r.unforgettable, r.never_learned),
            (2, 2, 2, 1)
        );
        assert_eq!(r.histogram, vec![2, 1]);
        // Removed 0 and 2 (mean margins 1 and 2), kept 1 and 3 (-1 and 0.5).
        assert_eq!(r.mean_margin, Some((1.5, -0.25)));
        Ok(())
    }

    #[test]
    fn rejects_removing_everything() {
        let e = Forgetting::new(
            10,
            Some(Removal {
                epoch: 1,
                amount: RemovalAmount::Count { n: 10 },
                ranking: Ranking::Forgetting,
            }),
        );
        assert!(e.unwrap_err().to_string().contains("removal.count"));
    }

    #[test]
    fn state_round_trips() -> anyhow::Result<()> {
        let mut f = Forgetting::new(3, None)?;
        f.record(&[0, 2], &[true, false], &[0.25, -0.5]);
        let bytes = Hooks::<()>::save_state(&f)?.ok_or_else(|| anyhow::anyhow!("no state"))?;
        let mut g = Forgetting::new(3, None)?;
        Hooks::<()>::load_state(&mut g, &bytes)?;
        assert_eq!(f, g);
        let mut wrong = Forgetting::new(4, None)?;
        assert!(Hooks::<()>::load_state(&mut wrong, &bytes).is_err());
        Ok(())
    }
}
