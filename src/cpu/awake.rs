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
use std::time::Duration;
use web_time::Instant;

/// Whether a [`with_workers_awake`] region is running, in any pool of the process.
static REGION: AtomicBool = AtomicBool::new(false);

/// How long a polling worker goes without finding work before it stops polling (and may
/// sleep). A training step's serial stretches are under 0.1 ms; this bounds the delay
/// of the rare case below where a poller sits above a job that `f` waits for.
const MAX_IDLE: Duration = Duration::from_millis(1);

/// Runs `f` on a worker of the current rayon pool (as `rayon::scope` does) while every
/// other worker of the pool polls for work (`rayon::yield_now`) until `f` returns.
///
/// A poller waits for `f`, so it must not run on top of a job that `f` waits for. Rayon
/// looks in a worker's own deque, then its broadcast queue (the pollers), then steals,
/// so a worker normally starts its poller before it can steal any of `f`'s jobs; but a
/// worker that had looked at its broadcast queue just before the pollers were sent can
/// steal a job of `f` first and start its poller inside it while waiting. So a poller
/// also stops after [`MAX_IDLE`] without work, which turns that case into a short delay.
/// Only one region runs at a time in the process (others run as a plain scope): two
/// runners' pollers could otherwise each end up on top of the other runner's `f`. A
/// panic in `f` stops the pollers too, and then propagates.
pub fn with_workers_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_num_threads() < 2 || REGION.swap(true, Ordering::Acquire) {
        return rayon::scope(|_| f());
    }
    let _region = SetOnDrop(&REGION, false);
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        let runner = rayon::current_thread_index();
        let done = &done;
        scope.spawn_broadcast(move |_, worker| {
            if Some(worker.index()) != runner {
                poll_until(done);
            }
        });
        let _finished = SetOnDrop(done, true);
        f()
    })
}

/// Stores its value into the flag when dropped (also while a panic unwinds).
struct SetOnDrop<'a>(&'a AtomicBool, bool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(self.1, Ordering::Release);
    }
}

/// Runs whatever work the pool has, spinning between jobs, until `done` is set or no
/// work has come for [`MAX_IDLE`].
fn poll_until(done: &AtomicBool) {
    let mut last_work = Instant::now();
    while !done.load(Ordering::Acquire) {
        if matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
            last_work = Instant::now();
        } else if last_work.elapsed() > MAX_IDLE {
            return;
        } else {
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

    /// A panic inside stops the pollers and reaches the caller (instead of a hang), and
    /// the next region runs normally.
    #[test]
    fn a_panic_inside_reaches_the_caller() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build();
        let pool = pool.expect("a pool");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| with_workers_awake(|| panic!("inside")))
        }));
        assert!(panicked.is_err());
        let sum = pool.install(|| with_workers_awake(|| (0..100u32).into_par_iter().sum::<u32>()));
        assert_eq!(sum, 4950);
    }
}
