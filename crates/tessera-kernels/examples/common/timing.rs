//! Minimum-of-runs timing shared by the examples that compare kernels on this shared machine:
//! whose speed drifts by 10-30% within minutes, so the minimum over many runs is what stays put
//! between invocations (the criterion suite and `cargo xtask bench` report medians instead).

use std::time::Instant;

/// The fastest of at least 50 runs of `f` taking at least `seconds` in all, after 20 warm-up
/// runs, in microseconds.
pub(crate) fn min_us(seconds: f64, mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let mut best = f64::INFINITY;
    let (start, mut runs) = (Instant::now(), 0);
    while runs < 50 || start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64() * 1e6);
        runs += 1;
    }
    best
}
