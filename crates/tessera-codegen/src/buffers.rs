//! Activation buffers by liveness: every value gets a range of one arena, reused once the
//! value's last reader has run, so a plan's memory is the peak of what is live at once rather
//! than the sum of every layer's output.
//!
//! Allocation is first fit over the free ranges in value-definition order (the classic
//! greedy interval allocation), with ranges rounded to 16 floats so each starts on a 64-byte
//! boundary relative to the arena. Values that are views of another (flatten, reshape) share
//! its range and extend its lifetime.

/// Floats per alignment unit (64 bytes).
const ALIGN: usize = 16;

/// One value's place in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// First float.
    pub offset: usize,
    /// Floats (for the whole batch).
    pub len: usize,
}

/// A value to place: its size, the step that defines it and the last step that reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Interval {
    pub len: usize,
    pub def: usize,
    pub last_use: usize,
}

/// Places `values` (in definition order) in one arena; returns each value's slot and the
/// arena length. A value is free for reuse after its `last_use` step; a value may not share
/// memory with any value whose interval overlaps its own (`def..=last_use`).
pub(crate) fn allocate(values: &[Interval]) -> (Vec<Slot>, usize) {
    let mut slots = Vec::with_capacity(values.len());
    // Live allocations: (offset, padded len, last use).
    let mut live: Vec<(usize, usize, usize)> = Vec::new();
    let mut arena = 0usize;
    for v in values {
        // Release everything whose last reader ran before this value is written.
        live.retain(|&(_, _, last)| last >= v.def);
        let need = v.len.next_multiple_of(ALIGN).max(ALIGN);
        live.sort_unstable();
        // First gap between live ranges that fits.
        let mut at = 0usize;
        for &(off, len, _) in &live {
            if off >= at + need {
                break;
            }
            at = at.max(off + len);
        }
        live.push((at, need, v.last_use));
        arena = arena.max(at + need);
        slots.push(Slot { offset: at, len: v.len });
    }
    (slots, arena)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlaps(a: (Slot, Interval), b: (Slot, Interval)) -> bool {
        let time = a.1.def <= b.1.last_use && b.1.def <= a.1.last_use;
        let space = a.0.offset < b.0.offset + b.0.len && b.0.offset < a.0.offset + a.0.len;
        time && space
    }

    #[test]
    fn a_chain_reuses_two_buffers() {
        // x -> a -> b -> c -> d: each value read only by the next step.
        let vals: Vec<Interval> =
            (0..5).map(|i| Interval { len: 100, def: i, last_use: i + 1 }).collect();
        let (slots, arena) = allocate(&vals);
        assert_eq!(arena, 2 * 112, "{slots:?}");
        assert_eq!(slots[0].offset, slots[2].offset);
    }

    #[test]
    fn live_values_never_share_memory() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..200 {
            let n = rng.random_range(1..30);
            let vals: Vec<Interval> = (0..n)
                .map(|i| Interval {
                    len: rng.random_range(1..500),
                    def: i,
                    last_use: i + rng.random_range(0..6),
                })
                .collect();
            let (slots, arena) = allocate(&vals);
            let sum: usize = vals.iter().map(|v| v.len.next_multiple_of(ALIGN)).sum();
            assert!(arena <= sum);
            for i in 0..n {
                assert_eq!(slots[i].offset % ALIGN, 0);
                assert!(slots[i].offset + slots[i].len <= arena);
                for j in 0..i {
                    assert!(
                        !overlaps((slots[i], vals[i]), (slots[j], vals[j])),
                        "{i} {j}: {:?} {:?} {:?} {:?}",
                        slots[i],
                        vals[i],
                        slots[j],
                        vals[j]
                    );
                }
            }
        }
    }
}
