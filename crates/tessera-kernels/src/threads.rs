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

/// Most threads a kernel splits work for (more are clamped).
pub(crate) const MAX_THREADS: usize = 64;

/// Range boundaries of a split, on the stack: kernels must not allocate per call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    b: [usize; MAX_THREADS + 1],
}

impl std::ops::Index<usize> for Bounds {
    type Output = usize;
    fn index(&self, i: usize) -> &usize {
        &self.b[i]
    }
}

/// Splits items `0..n` with costs `cost(i)` into `parts` (<= [`MAX_THREADS`]) contiguous
/// ranges of roughly equal total cost, without allocating: range `t` is `b[t]..b[t + 1]`.
pub(crate) fn split_by_cost(n: usize, parts: usize, cost: impl Fn(usize) -> usize) -> Bounds {
    let parts = parts.clamp(1, MAX_THREADS);
    let total: usize = (0..n).map(&cost).sum();
    let mut b = [n; MAX_THREADS + 1];
    b[0] = 0;
    let (mut acc, mut next) = (0usize, 1usize);
    for i in 0..n {
        acc += cost(i);
        while next < parts && acc * parts >= total * next {
            b[next] = i + 1;
            next += 1;
        }
    }
    Bounds { b }
}

/// Splits `costs` into `parts` contiguous ranges of roughly equal total cost; returns the
/// `parts + 1` boundaries.
#[cfg(test)]
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
    fn stack_split_matches_the_vector_split() {
        for (costs, parts) in [
            (vec![1, 1, 1, 1], 2),
            (vec![10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2),
            (vec![], 3),
            (vec![5; 7], 3),
        ] {
            let v = balanced_split(&costs, parts);
            let b = split_by_cost(costs.len(), parts, |i| costs[i]);
            for (t, &vt) in v.iter().enumerate() {
                assert_eq!(b[t], vt, "{costs:?} {parts}");
            }
        }
    }

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
