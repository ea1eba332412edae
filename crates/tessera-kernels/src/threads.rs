//! Splitting kernel work between threads.
//!
//! Kernels run on the global rayon pool: `run_parallel(n, f)` calls `f(0..n)` with `f(0)` on
//! the calling thread. Work is divided up front into balanced contiguous ranges, so there is no
//! per-item scheduling cost inside the hot loops.

/// A raw output pointer that kernels share between threads; each thread writes a disjoint part.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);

// SAFETY: used only to hand disjoint output regions to worker threads (see each kernel).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// Multiply-accumulates below which a second thread costs more than it saves: waking a pool
/// worker and joining it takes tens of microseconds on the 2-core machines we measure on
/// (a 50 us kernel got slower with 2 threads). Kernels run exactly the threads they are given;
/// planners use [`recommended_threads`] (or measure) to choose.
pub const MIN_MACS_PER_THREAD: usize = 12_000_000;

/// The number of threads worth using for `macs` multiply-accumulates, at most `available`.
pub fn recommended_threads(available: usize, macs: usize) -> usize {
    available.clamp(1, (macs / MIN_MACS_PER_THREAD).max(1))
}

/// Runs `f(t)` for `t in 0..threads`, in parallel, and waits for all of them.
pub(crate) fn run_parallel(threads: usize, f: impl Fn(usize) + Sync) {
    if threads <= 1 {
        f(0);
        return;
    }
    rayon::scope(|s| {
        for t in 1..threads {
            let f = &f;
            s.spawn(move |_| f(t));
        }
        f(0);
    });
}

/// Splits `costs` into `parts` contiguous ranges of roughly equal total cost; returns the
/// `parts + 1` boundaries.
pub(crate) fn balanced_split(costs: &[usize], parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    let total: usize = costs.iter().sum();
    let mut bounds = vec![0];
    let mut acc = 0usize;
    let mut next = 1;
    for (i, &c) in costs.iter().enumerate() {
        acc += c;
        while next < parts && acc * parts >= total * next {
            bounds.push(i + 1);
            next += 1;
        }
    }
    while bounds.len() < parts {
        bounds.push(costs.len());
    }
    bounds.push(costs.len());
    bounds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_contiguous_and_balanced() {
        assert_eq!(balanced_split(&[1, 1, 1, 1], 2), vec![0, 2, 4]);
        assert_eq!(balanced_split(&[10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2), vec![0, 1, 11]);
        assert_eq!(balanced_split(&[], 3), vec![0, 0, 0, 0]);
        let b = balanced_split(&[5; 7], 3);
        assert_eq!((b.len(), b[0], b[3]), (4, 0, 7));
        assert!(b.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn parallel_runs_every_index_once() {
        let hits = std::sync::Mutex::new(Vec::new());
        run_parallel(3, |t| hits.lock().unwrap().push(t));
        let mut h = hits.into_inner().unwrap();
        h.sort_unstable();
        assert_eq!(h, vec![0, 1, 2]);
    }
}
