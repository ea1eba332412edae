//! Data-efficient training: per-example forgetting events counted in-situ (Toneva et al.
//! 2019, as MEST's `main_sparse_train_w_data_efficient.py` does while its masks change), and a
//! one-shot removal of the least-forgotten examples at a chosen epoch.
//!
//! An example's outcome is recorded every time it is in a training batch (the loop's forward
//! pass, before the step; no extra forward). A forgetting event is correct -> wrong between two
//! consecutive presentations. Examples never classified correctly count as maximally
//! forgettable. At the removal epoch the examples are ordered by (forgetting count, index) and
//! the first ones are removed; from then on each epoch trains on the rest. Works for dense
//! training too: it is a [`Hooks`] of its own, composable with [`crate::SparseTrainer`]
//! through [`tessera_models::train::Both`].

use serde::{Deserialize, Serialize};
use tessera_models::train::Hooks;

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

/// When and how much to remove.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Removal {
    /// The first epoch trained without the removed examples (MEST: 70 of 160).
    pub epoch: usize,
    /// How many.
    pub amount: RemovalAmount,
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
}

/// Per-example statistics and the removal schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forgetting {
    /// 0 = not seen yet, 1 = last seen wrong, 2 = last seen correct.
    last: Vec<u8>,
    forgotten: Vec<u32>,
    learned: Vec<bool>,
    presentations: Vec<u32>,
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
            removal,
            kept: None,
            report: None,
        })
    }

    /// Records the outcomes of one batch.
    pub fn record(&mut self, indices: &[u32], correct: &[bool]) {
        for (&i, &c) in indices.iter().zip(correct) {
            let i = i as usize;
            if i >= self.last.len() {
                continue;
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

    /// How often each example was presented.
    pub fn presentations(&self) -> &[u32] {
        &self.presentations
    }

    /// The removal's report, once it happened.
    pub fn report(&self) -> Option<&RemovalReport> {
        self.report.as_ref()
    }

    /// The examples to remove now: ascending (count, index), the first `amount`.
    pub fn select_removed(&self, amount: RemovalAmount) -> Vec<u32> {
        let counts = self.counts();
        let mut order: Vec<u32> = (0..counts.len() as u32).collect();
        order.sort_by_key(|&i| (counts[i as usize], i));
        let n = match amount {
            RemovalAmount::Count { n } => n,
            RemovalAmount::Fraction { f } => (f * counts.len() as f64).floor() as usize,
            RemovalAmount::Unforgettable => self.unforgettable(),
        }
        .min(counts.len().saturating_sub(1));
        order.truncate(n);
        order
    }

    fn remove_now(&mut self, epoch: usize, amount: RemovalAmount) {
        let removed = self.select_removed(amount);
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
        });
        tracing::info!(
            epoch,
            removed = removed.len(),
            kept = kept.len(),
            "removed least-forgotten examples"
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
            self.remove_now(epoch, r.amount);
        }
        self.kept.clone()
    }

    fn on_outcomes(&mut self, _epoch: usize, indices: &[u32], correct: &[bool]) {
        self.record(indices, correct);
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
            f.record(&[0, 1, 2, 3, 4], &s);
        }
        assert_eq!(f.counts(), vec![0, 1, u32::MAX, 2, 0]);
        assert_eq!(f.unforgettable(), 2);
        assert_eq!(f.select_removed(RemovalAmount::Count { n: 3 }), vec![0, 4, 1]);
        assert_eq!(f.select_removed(RemovalAmount::Unforgettable), vec![0, 4]);
        assert_eq!(f.select_removed(RemovalAmount::Fraction { f: 0.2 }), vec![0]);
        Ok(())
    }

    #[test]
    fn removal_takes_effect_at_its_epoch_and_stays() -> anyhow::Result<()> {
        let removal = Removal { epoch: 2, amount: RemovalAmount::Count { n: 2 } };
        let mut f = Forgetting::new(4, Some(removal))?;
        for e in 0..2 {
            assert_eq!(Hooks::<()>::epoch_examples(&mut f, e), None);
            f.record(&[0, 1, 2, 3], &[true, false, true, e == 0]);
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
        Ok(())
    }

    #[test]
    fn rejects_removing_everything() {
        let e =
            Forgetting::new(10, Some(Removal { epoch: 1, amount: RemovalAmount::Count { n: 10 } }));
        assert!(e.unwrap_err().to_string().contains("removal.count"));
    }

    #[test]
    fn state_round_trips() -> anyhow::Result<()> {
        let mut f = Forgetting::new(3, None)?;
        f.record(&[0, 2], &[true, false]);
        let bytes = Hooks::<()>::save_state(&f)?.ok_or_else(|| anyhow::anyhow!("no state"))?;
        let mut g = Forgetting::new(3, None)?;
        Hooks::<()>::load_state(&mut g, &bytes)?;
        assert_eq!(f, g);
        let mut wrong = Forgetting::new(4, None)?;
        assert!(Hooks::<()>::load_state(&mut wrong, &bytes).is_err());
        Ok(())
    }
}
