//! Running a stretch of training steps with the pool's other workers kept awake.
//!
//! A training step forks and joins a dozen times (the first layer's passes, Adam, the
//! batch transpose), with serial phases between (BatchNorm's fold, the small dense
//! layers, softmax). A rayon worker that finds no work for about 20 µs goes to sleep,
//! and waking it again costs about 17 µs on the 2-core virtual machines measured here:
//! more than most of the step's parallel phases take. Measured there, a `join` of two
//! 10 µs halves took 10.7 µs when the other worker had been idle for under 10 µs, and 27–30
//! µs after 20–100 µs of idle. So for the length of [`with_workers_awake`] every other
//! worker polls for work instead of sleeping, as an OpenMP runtime's threads spin between
//! parallel regions. Results do not depend on it: it changes which thread runs a job and
//! when, never what a job computes.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` on a worker of the current rayon pool (as `rayon::scope` does) while every
/// other worker of the pool polls for work (`rayon::yield_now`) until `f` returns.
///
/// Why this cannot deadlock: a poller waits only for `f`, and `f` never waits for a job
/// beneath a poller on a worker's stack. A worker takes its broadcast job (the poller)
/// before it steals anything (rayon looks in its own deque, then its broadcast queue,
/// then steals), and the pollers are broadcast before `f` makes its first job, so every
/// job of `f` that a worker steals runs above that worker's poller, never beneath it.
/// `f`'s own worker skips its poller.
pub fn with_workers_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_num_threads() < 2 {
        return rayon::scope(|_| f());
    }
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        let runner = rayon::current_thread_index();
        let done = &done;
        scope.spawn_broadcast(move |_, worker| {
            if Some(worker.index()) != runner {
                poll_until(done);
            }
        });
        let result = f();
        done.store(true, Ordering::Release);
        result
    })
}

/// Runs whatever work the pool has, spinning between jobs, until `done` is set.
fn poll_until(done: &AtomicBool) {
    while !done.load(Ordering::Acquire) {
        if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// Nested splits inside, two callers at once, and pools of 1 to 3 threads: every
    /// call returns its own result (a deadlock would hang the test).
    #[test]
    fn nested_and_concurrent_work_completes() {
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a pool");
            let sums = pool.install(|| {
                let caller = || {
                    (0..50u64)
                        .map(|round| {
                            with_workers_awake(|| {
                                (0..2000u64).into_par_iter().map(|i| i * round).sum::<u64>()
                            })
                        })
                        .sum::<u64>()
                };
                rayon::join(caller, caller)
            });
            let expected: u64 = (0..50u64).map(|r| r * 1999 * 2000 / 2).sum();
            assert_eq!(sums, (expected, expected), "{threads} threads");
        }
    }
}
