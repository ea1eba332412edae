//! Splitting kernel work between threads.
//!
//! `run_parallel(n, f)` calls `f(0..n)` with `f(0)` on the calling thread and the rest on a
//! small pool of spinning workers (rayon's pool when that one is busy). Work is divided up front into balanced contiguous ranges, so there is no
//! per-item scheduling cost inside the hot loops.

/// A raw output pointer that kernels share between threads; each thread writes a disjoint part.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);

// SAFETY: used only to hand disjoint output regions to worker threads (see each kernel).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// Multiply-accumulates below which a second thread costs more than it saves. Set when kernels
/// ran on rayon's pool, whose sleeping workers took tens of microseconds to wake on the 2-core
/// machines we measure on (a 50 us kernel got slower with 2 threads); the spinning pool makes
/// back-to-back dispatches cheap (ResNet-20's dense plan on 2 threads: 0.68 -> 0.27 ms), so
/// this is conservative. Kernels run exactly the threads they are given; planners use
/// [`recommended_threads`] (or measure) to choose.
pub const MIN_MACS_PER_THREAD: usize = 12_000_000;

/// The number of threads worth using for `macs` multiply-accumulates, at most `available`.
pub fn recommended_threads(available: usize, macs: usize) -> usize {
    available.clamp(1, (macs / MIN_MACS_PER_THREAD).max(1))
}

/// Runs `f(t)` for `t in 0..threads`, in parallel, and waits for all of them.
///
/// Work goes to [`SpinPool`]'s workers, which spin for a while after each job, so the
/// consecutive layers of a model pay nanoseconds per dispatch instead of a sleeping pool's
/// wake-up (tens of microseconds here). When another thread is dispatching already (tests,
/// nested calls), the rayon pool runs the job instead.
pub(crate) fn run_parallel(threads: usize, f: impl Fn(usize) + Sync) {
    if threads <= 1 {
        f(0);
        return;
    }
    if SpinPool::global().try_run(threads, &f) {
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

/// How long an idle worker spins before it sleeps.
const SPIN: std::time::Duration = std::time::Duration::from_micros(300);

type Job = *const (dyn Fn(usize) + Sync);

/// Bits of the published word that hold a job's thread count (the rest: its generation).
const THREAD_BITS: u32 = 16;

/// Persistent workers for [`run_parallel`]: worker `i` (1-based) runs `f(i)` of each job with
/// more than `i` threads. A job is published by writing it to the slot and then storing one
/// word, `generation << 16 | threads`; a worker acts on a generation only when its index is
/// below that word's thread count, and only then reads the slot, which stays valid until every
/// such worker has decremented `pending`. Workers spin on the word for [`SPIN`] after their
/// last job, then wait on a condition variable. The dispatcher runs `f(0)` itself and waits for
/// `pending` to reach zero before returning or unwinding, so `f` outlives every use (the
/// scoped-thread argument). At most `available_parallelism - 1` workers exist; larger jobs go
/// to rayon.
struct SpinPool {
    /// `generation << THREAD_BITS | threads` of the last job published (workers spin on it).
    published: CacheLine<std::sync::atomic::AtomicU64>,
    /// Workers of the current job still running (the dispatcher spins on it).
    pending: CacheLine<std::sync::atomic::AtomicUsize>,
    dispatch: std::sync::Mutex<()>,
    workers: std::sync::atomic::AtomicUsize,
    job: std::cell::UnsafeCell<Option<Job>>,
    panicked: std::sync::atomic::AtomicBool,
    sleep: std::sync::Mutex<()>,
    wake: std::sync::Condvar,
    /// Threads the machine runs at once.
    cpus: usize,
}

/// A value alone on its cache lines (128 bytes: adjacent-line prefetch pairs lines), so the
/// words two threads spin on share a line with nothing else. Some builds of the unpadded pool
/// ran ResNet-20 on 2 threads in 0.50 ms instead of 0.28 in every run (others never did);
/// the padded build measured 0.28 in each of its runs. False sharing with whatever the linker
/// placed beside the pool is the likely cause; it was not isolated further.
#[repr(align(128))]
struct CacheLine<T>(T);

// SAFETY: `job` is written only by the dispatcher holding `dispatch`, before the release store
// of `published` that participating workers read (acquire) before reading it; it is rewritten
// only after every participant has decremented `pending` (release, read with acquire), and
// non-participants never read it.
unsafe impl Sync for SpinPool {}
// SAFETY: as above; the closure behind `job` is `Sync`, and only shared references to it are
// used on other threads.
unsafe impl Send for SpinPool {}

impl SpinPool {
    fn global() -> &'static SpinPool {
        static POOL: std::sync::OnceLock<SpinPool> = std::sync::OnceLock::new();
        POOL.get_or_init(|| SpinPool {
            dispatch: std::sync::Mutex::new(()),
            workers: std::sync::atomic::AtomicUsize::new(0),
            published: CacheLine(std::sync::atomic::AtomicU64::new(0)),
            job: std::cell::UnsafeCell::new(None),
            pending: CacheLine(std::sync::atomic::AtomicUsize::new(0)),
            panicked: std::sync::atomic::AtomicBool::new(false),
            sleep: std::sync::Mutex::new(()),
            wake: std::sync::Condvar::new(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// Runs the job on the pool; `false` (nothing run) when another dispatch is in progress,
    /// the job wants more threads than the machine runs at once, or a worker cannot start.
    fn try_run(&'static self, threads: usize, f: &(dyn Fn(usize) + Sync)) -> bool {
        use std::sync::TryLockError;
        use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
        if threads > self.cpus || threads >= 1 << THREAD_BITS {
            return false;
        }
        // A panic resumed below poisons the lock; the pool itself is still consistent then.
        let _guard = match self.dispatch.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        while self.workers.load(Relaxed) < threads - 1 {
            let index = self.workers.load(Relaxed) + 1;
            // The worker starts from the generation before this job's (it may first run after
            // the job is published, and must still see it as new).
            let seen = self.published.0.load(Acquire) >> THREAD_BITS;
            let started = std::thread::Builder::new()
                .name(format!("tessera-kernels-{index}"))
                .spawn(move || self.work(index, seen));
            if started.is_err() {
                return false;
            }
            self.workers.store(index, Relaxed);
        }
        // SAFETY: erases the borrow's lifetime; `f` is used by workers only until `pending`
        // reaches zero, which this function waits for before it returns or unwinds.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        // SAFETY: only the dispatcher (holding `dispatch`) writes the slot, and every
        // participant of the previous job is done with it (`pending` was zero).
        unsafe { *self.job.get() = Some(job) };
        self.pending.0.store(threads - 1, Relaxed);
        {
            let _sleep = self.sleep.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let generation = (self.published.0.load(Relaxed) >> THREAD_BITS) + 1;
            self.published.0.store(generation << THREAD_BITS | threads as u64, Release);
            self.wake.notify_all();
        }
        // A panic in `f(0)` is caught and resumed only after the workers are done with `f`.
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        // Pure spinning: the workers are running on the other cores (jobs never ask for more
        // threads than the machine runs), and yielding here measured bimodal: now and then the
        // scheduler handed the core to another process's thread (ResNet-20 on 2 threads:
        // 0.28 or 0.50 ms).
        while self.pending.0.load(Acquire) != 0 {
            std::hint::spin_loop();
        }
        if let Err(payload) = mine {
            std::panic::resume_unwind(payload);
        }
        assert!(!self.panicked.swap(false, Relaxed), "a kernel worker thread panicked");
        true
    }

    fn work(&self, index: usize, mut seen: u64) {
        use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
        let mask = (1u64 << THREAD_BITS) - 1;
        loop {
            let start = std::time::Instant::now();
            let mut spins = 0u32;
            let word = loop {
                let word = self.published.0.load(Acquire);
                if word >> THREAD_BITS != seen {
                    break word;
                }
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                    let mut guard =
                        self.sleep.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    while self.published.0.load(Acquire) >> THREAD_BITS == seen {
                        guard = self
                            .wake
                            .wait(guard)
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                    }
                    continue;
                }
                std::hint::spin_loop();
            };
            seen = word >> THREAD_BITS;
            if index >= (word & mask) as usize {
                // Not part of this job: the slot may change under it, so it is not read.
                continue;
            }
            // SAFETY: this worker participates in generation `seen`, whose job was written
            // before the release store read above; the dispatcher rewrites the slot and lets
            // `f` go only after this worker's decrement of `pending` below.
            let Some(job) = (unsafe { *self.job.get() }) else { continue };
            // SAFETY: as above: the closure is alive until `pending` reaches zero.
            let f = unsafe { &*job };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index))).is_err() {
                self.panicked.store(true, Relaxed);
            }
            self.pending.0.fetch_sub(1, Release);
        }
    }
}

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
    fn concurrent_and_spaced_dispatches_run_every_index_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // Several callers at once: one gets the spinning pool, the others rayon.
        std::thread::scope(|s| {
            for caller in 0..4usize {
                s.spawn(move || {
                    for round in 0..300usize {
                        let threads = 2 + (caller + round) % 3;
                        let hits: Vec<AtomicUsize> =
                            (0..threads).map(|_| AtomicUsize::new(0)).collect();
                        run_parallel(threads, |t| {
                            hits[t].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
        // Dispatches spaced beyond the spin time reach workers that went to sleep.
        for _ in 0..5 {
            std::thread::sleep(SPIN * 3);
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            run_parallel(3, |t| {
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn a_panic_on_either_side_reaches_the_caller_and_the_pool_keeps_working() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        for panicking in [0usize, 1] {
            let done = AtomicUsize::new(0);
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_parallel(2, |t| {
                    if t == panicking {
                        panic!("index {t}");
                    }
                    // The other side keeps using the closure's captures after the panic.
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    done.fetch_add(1, Ordering::Relaxed);
                });
            }));
            assert!(res.is_err(), "panic on index {panicking} must reach the caller");
            assert_eq!(done.load(Ordering::Relaxed), 1);
            let hits: Vec<AtomicUsize> = (0..2).map(|_| AtomicUsize::new(0)).collect();
            run_parallel(2, |t| {
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
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
