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
/// wake-up (tens of microseconds here); indices are claimed, so a worker that is late costs
/// no waiting. When another thread is dispatching already (tests, nested calls), or the job
/// is wider than the machine, the rayon pool runs it instead.
pub(crate) fn run_parallel(threads: usize, f: impl Fn(usize) + Sync) {
    if threads <= 1 {
        f(0);
        return;
    }
    if SpinPool::global().try_run(threads, &f) {
        return;
    }
    FALLBACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    rayon::scope(|s| {
        for t in 1..threads {
            let f = &f;
            s.spawn(move |_| f(t));
        }
        f(0);
    });
}

static FALLBACKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static HELPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many parallel jobs ran on rayon's pool instead of the spinning pool, and how many
/// indices the pool's workers ran (the rest ran on the dispatching threads), since start.
pub fn pool_counts() -> (usize, usize) {
    use std::sync::atomic::Ordering::Relaxed;
    (FALLBACKS.load(Relaxed), HELPED.load(Relaxed))
}

/// How long an idle worker spins before it sleeps.
const SPIN: std::time::Duration = std::time::Duration::from_micros(300);

type Job = *const (dyn Fn(usize) + Sync);

/// Persistent workers for [`run_parallel`], sharing each job's indices by claiming them from a
/// counter: the dispatcher runs `f(0)`, then claims indices like any worker, then waits only
/// for indices already claimed by workers that are running them. A worker that is slow to wake
/// (asleep, or its core taken by another process on a shared machine) therefore costs at most
/// the serial time, never a wait for it to be scheduled.
///
/// Publishing a job: write the slot, set `remaining` to the thread count and the claim word to
/// (thread count, next index 1) with a release store, then bump `generation` to wake the
/// workers, which spin on it for [`SPIN`] after their last job and then wait on a condition
/// variable. An index is claimed by a compare-exchange that only ever moves the word from
/// `next < threads` to `next + 1`, so once a job is fully claimed no late worker can claim
/// anything until the next job is published, and a successful claim is always of the job
/// whose word it read (acquire: its slot is visible). The dispatcher rewrites the slot, or lets
/// `f` go, only after `remaining` reached zero: every claimed index has finished. (The pool
/// used to reset a `fetch_add` counter to `usize::MAX` after each job; a worker preempted
/// between reading the generation and its `fetch_add` wrapped it to 0 and then ran index 0 of
/// a job whose closure had already returned — the intermittent SIGSEGV of `bench models`.)
/// At most `available_parallelism - 1` workers exist; wider jobs go to rayon.
struct SpinPool {
    /// The current job's claim word ([`Claim`]; workers and the dispatcher race on it).
    claim: CacheLine<std::sync::atomic::AtomicU64>,
    /// Indices of the current job not yet finished.
    remaining: CacheLine<std::sync::atomic::AtomicUsize>,
    /// Bumped per job: the workers' wake-up signal.
    generation: CacheLine<std::sync::atomic::AtomicU64>,
    dispatch: std::sync::Mutex<()>,
    workers: std::sync::atomic::AtomicUsize,
    job: std::cell::UnsafeCell<Option<Job>>,
    panicked: std::sync::atomic::AtomicBool,
    sleep: std::sync::Mutex<()>,
    /// Workers waiting (or about to wait) on `wake`.
    sleepers: std::sync::atomic::AtomicUsize,
    wake: std::sync::Condvar,
    /// Threads the machine runs at once.
    cpus: usize,
}

/// A value alone on its cache lines (128 bytes: adjacent-line prefetch pairs lines), so the
/// counters threads spin on and update share a line with nothing else.
#[repr(align(128))]
struct CacheLine<T>(T);

// SAFETY: `job` is written only by the dispatcher holding `dispatch`, while no index of any
// job is claimed or running (`remaining` zero, the claim word fully claimed); a thread reads it
// only after claiming an index below the thread count, which synchronizes (acquire) with the
// release store of the claim word that follows the write.
unsafe impl Sync for SpinPool {}
// SAFETY: as above; the closure behind `job` is `Sync`, and only shared references to it are
// used on other threads.
unsafe impl Send for SpinPool {}

impl SpinPool {
    fn global() -> &'static SpinPool {
        use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
        static POOL: std::sync::OnceLock<SpinPool> = std::sync::OnceLock::new();
        POOL.get_or_init(|| SpinPool {
            claim: CacheLine(AtomicU64::new(Claim { threads: 0, next: 0 }.pack())),
            remaining: CacheLine(AtomicUsize::new(0)),
            generation: CacheLine(AtomicU64::new(0)),
            dispatch: std::sync::Mutex::new(()),
            workers: AtomicUsize::new(0),
            job: std::cell::UnsafeCell::new(None),
            panicked: AtomicBool::new(false),
            sleep: std::sync::Mutex::new(()),
            sleepers: AtomicUsize::new(0),
            wake: std::sync::Condvar::new(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// Runs the job on the pool; `false` (nothing run) when another dispatch is in progress,
    /// the job wants more threads than the machine runs at once, or a worker cannot start.
    fn try_run(&'static self, threads: usize, f: &(dyn Fn(usize) + Sync)) -> bool {
        use std::sync::TryLockError;
        use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
        if threads > self.cpus || u32::try_from(threads).is_err() {
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
            let seen = self.generation.0.load(Acquire);
            let started = std::thread::Builder::new()
                .name(format!("tessera-kernels-{index}"))
                .spawn(move || self.work(seen));
            if started.is_err() {
                return false;
            }
            self.workers.store(index, Relaxed);
        }
        // SAFETY: erases the borrow's lifetime; `f` is used only by claimed indices, all of
        // which finish before this function returns or unwinds (`remaining` reaches zero).
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        // SAFETY: no index is claimed or running (see the `Sync` impl).
        unsafe { *self.job.get() = Some(job) };
        self.remaining.0.store(threads, Relaxed);
        // `threads` fits in u32 (checked above).
        self.claim.0.store(Claim { threads: threads as u32, next: 1 }.pack(), Release);
        // A sleeping worker counts itself in `sleepers` (under `sleep`) before it rechecks
        // the generation, and this reads `sleepers` after bumping the generation, both
        // sequentially consistent: either the worker sees the new generation, or this sees
        // it counted and notifies it once it waits (the lock is held until then). Spinning
        // workers thus cost no futex call per job (an empty 2-thread job: 0.78 -> 0.47-0.51 us here).
        self.generation.0.fetch_add(1, SeqCst);
        if self.sleepers.load(SeqCst) > 0 {
            let _sleep = self.sleep.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.wake.notify_all();
        }
        // Index 0 here, then whatever the workers have not claimed. Every index counts as
        // finished even when it panics; the first panic here is resumed only after every
        // claimed index is done with `f`.
        let mut first_panic = self.run_index(f, 0).err();
        while let Some(i) = self.claim_index() {
            if let Err(p) = self.run_index(f, i) {
                first_panic.get_or_insert(p);
            }
        }
        while self.remaining.0.load(Acquire) != 0 {
            std::hint::spin_loop();
        }
        if let Some(payload) = first_panic {
            std::panic::resume_unwind(payload);
        }
        assert!(!self.panicked.swap(false, Relaxed), "a kernel worker thread panicked");
        true
    }

    /// Claims the next unclaimed index of the current job; `None` once all are claimed.
    fn claim_index(&self) -> Option<usize> {
        use std::sync::atomic::Ordering::Acquire;
        let mut word = self.claim.0.load(Acquire);
        loop {
            let (index, claimed) = Claim::unpack(word).claim_next()?;
            match self.claim.0.compare_exchange_weak(word, claimed.pack(), Acquire, Acquire) {
                Ok(_) => return Some(index),
                Err(actual) => word = actual,
            }
        }
    }

    /// Runs index `i` of the current job and counts it finished, panic or not.
    fn run_index(&self, f: &(dyn Fn(usize) + Sync), i: usize) -> std::thread::Result<()> {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i)));
        self.remaining.0.fetch_sub(1, std::sync::atomic::Ordering::Release);
        r
    }

    fn work(&self, mut seen: u64) {
        use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
        loop {
            let start = std::time::Instant::now();
            let mut spins = 0u32;
            loop {
                if self.generation.0.load(Acquire) != seen {
                    break;
                }
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                    let mut guard =
                        self.sleep.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    self.sleepers.fetch_add(1, SeqCst);
                    while self.generation.0.load(SeqCst) == seen {
                        guard = self
                            .wake
                            .wait(guard)
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                    }
                    self.sleepers.fetch_sub(1, SeqCst);
                    break;
                }
                std::hint::spin_loop();
            }
            seen = self.generation.0.load(Acquire);
            // Tests stretch the window between waking and claiming, where a worker preempted
            // on a busy machine arrives after its job is over.
            #[cfg(test)]
            tests::late_worker_delay();
            // A claim is of the job whose word it read; its slot was written before the
            // release store of that word.
            while let Some(i) = self.claim_index() {
                // SAFETY: index `i` of the current job is claimed and unfinished, so the
                // dispatcher keeps the slot and `f` alive until this decrement of `remaining`.
                let Some(job) = (unsafe { *self.job.get() }) else { break };
                // SAFETY: as above.
                let f = unsafe { &*job };
                HELPED.fetch_add(1, Relaxed);
                // The flag is set before the index counts as finished, so the dispatcher sees
                // it once `remaining` reaches zero.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))).is_err() {
                    self.panicked.store(true, Relaxed);
                }
                self.remaining.0.fetch_sub(1, Release);
            }
        }
    }
}

/// The claim word of the current job: its thread count and the next index to claim, packed
/// into one `u64` so a claim is a single compare-exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    threads: u32,
    next: u32,
}

impl Claim {
    fn pack(self) -> u64 {
        (u64::from(self.threads) << 32) | u64::from(self.next)
    }

    fn unpack(word: u64) -> Self {
        Claim { threads: (word >> 32) as u32, next: word as u32 }
    }

    /// The index this claim takes and the word after it; `None` when every index is claimed
    /// (the word then stays put: it never wraps into a valid index).
    fn claim_next(self) -> Option<(usize, Claim)> {
        (self.next < self.threads)
            .then(|| (self.next as usize, Claim { next: self.next + 1, ..self }))
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

    static LATE_WORKER_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    /// Spins for the injected delay (zero outside the test that sets it).
    pub(super) fn late_worker_delay() {
        let ns = LATE_WORKER_NS.load(std::sync::atomic::Ordering::Relaxed);
        if ns > 0 {
            let start = std::time::Instant::now();
            while start.elapsed().as_nanos() < u128::from(ns) {
                std::hint::spin_loop();
            }
        }
    }

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
    fn a_fully_claimed_word_stays_fully_claimed() {
        let mut c = Claim { threads: 3, next: 1 };
        let mut taken = Vec::new();
        while let Some((i, next)) = c.claim_next() {
            taken.push(i);
            c = next;
        }
        assert_eq!(taken, vec![1, 2]);
        // No number of late claims moves a finished job's word back to a valid index.
        for _ in 0..1000 {
            assert_eq!(c.claim_next(), None);
        }
        assert_eq!(Claim::unpack(c.pack()), c);
        let idle = Claim { threads: 0, next: 0 };
        assert_eq!(idle.claim_next(), None);
        assert_eq!(Claim::unpack(Claim { threads: u32::MAX, next: 7 }.pack()).threads, u32::MAX);
    }

    /// Back-to-back 2-thread jobs whose counters live in the dispatching stack frame, with
    /// workers made late (an injected delay between waking and claiming, and another thread
    /// competing for the cores). A late
    /// worker running a finished job's closure would bump the counters of the next job, whose
    /// frame sits at the same address (what the old `fetch_add` counter allowed).
    #[test]
    fn preempted_workers_never_run_a_finished_job() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            });
            #[inline(never)]
            fn one_job(round: usize) {
                let hits = [AtomicUsize::new(0), AtomicUsize::new(0)];
                let owner = AtomicUsize::new(round);
                run_parallel(2, |t| {
                    hits[t].fetch_add(1, Ordering::Relaxed);
                    assert_eq!(
                        owner.load(Ordering::Relaxed),
                        round,
                        "a finished job's closure ran"
                    );
                });
                let counts = [hits[0].load(Ordering::Relaxed), hits[1].load(Ordering::Relaxed)];
                assert_eq!(counts, [1, 1], "round {round}");
                owner.store(usize::MAX, Ordering::Relaxed);
            }
            // Workers wait a few microseconds between waking and claiming: most arrive late.
            LATE_WORKER_NS.store(3_000, Ordering::Relaxed);
            for round in 0..200_000 {
                one_job(round);
            }
            LATE_WORKER_NS.store(0, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
        });
    }

    /// A worker asleep past the spin time must be woken by the next job: index 0 (the
    /// dispatcher's) waits for index 1 to start on another thread, which only a woken worker
    /// (or rayon, when the pool is busy with another test) can do; a lost wake-up leaves the
    /// dispatcher to run index 1 itself after index 0 gives up.
    #[test]
    fn a_sleeping_worker_is_woken_by_the_next_job() {
        use std::sync::atomic::{AtomicBool, Ordering};
        for _ in 0..5 {
            std::thread::sleep(SPIN * 4);
            let started = AtomicBool::new(false);
            let seen = AtomicBool::new(false);
            run_parallel(2, |t| {
                if t == 1 {
                    started.store(true, Ordering::Release);
                } else {
                    let wait = std::time::Instant::now();
                    while wait.elapsed() < std::time::Duration::from_secs(2) {
                        if started.load(Ordering::Acquire) {
                            seen.store(true, Ordering::Relaxed);
                            break;
                        }
                        std::hint::spin_loop();
                    }
                }
            });
            assert!(seen.load(Ordering::Relaxed), "no thread ran index 1 alongside index 0");
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
