//! Timing helpers shared by the kernel and whole-model suites: medians over a minimum time,
//! and speed-ups measured in rounds interleaved with their baseline.

use std::time::Instant;

/// Median milliseconds of `f` over at least `min_runs` runs and `min_time` seconds (at most
/// `max_runs`), after 3 warm-up runs.
pub fn median_ms(min_time: f64, min_runs: usize, max_runs: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < min_runs
        || (start.elapsed().as_secs_f64() < min_time && times.len() < max_runs)
    {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Rounds of [`paired_speedup`].
pub const ROUNDS: usize = 5;

/// Times `candidate` and `baseline` in [`ROUNDS`] interleaved rounds (each one's median over at
/// least `min_time / ROUNDS` seconds and 3 runs per round) and returns the candidate's median
/// over the rounds and the median of the per-round ratios baseline / candidate. On a shared
/// machine whose speed drifts within a run, a ratio of two times taken seconds apart drifts
/// with it; the rounds put both under the same conditions.
pub fn paired_speedup(
    min_time: f64,
    mut candidate: impl FnMut(),
    mut baseline: impl FnMut(),
) -> (f64, f64) {
    let per_round = min_time / ROUNDS as f64;
    let mut ms = Vec::with_capacity(ROUNDS);
    let mut ratios = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let b = median_ms(per_round, 3, 5000, &mut baseline);
        let c = median_ms(per_round, 3, 5000, &mut candidate);
        ms.push(c);
        ratios.push(b / c);
    }
    ms.sort_by(f64::total_cmp);
    ratios.sort_by(f64::total_cmp);
    (ms[ROUNDS / 2], ratios[ROUNDS / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A candidate doing a third of the baseline's work measures about 3x (loose bounds: the
    /// machine is shared), and its time is its own.
    #[test]
    fn paired_speedup_measures_the_work_ratio() {
        let spin = |n: u64| {
            let mut acc = 0u64;
            for i in 0..n {
                acc = std::hint::black_box(acc.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
            std::hint::black_box(acc);
        };
        let (ms, ratio) = paired_speedup(0.05, || spin(100_000), || spin(300_000));
        assert!(ratio > 1.5 && ratio < 6.0, "ratio {ratio}");
        assert!(ms > 0.0);
    }
}
