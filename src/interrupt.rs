//! Ctrl-C / SIGTERM / SIGHUP during training: the first signal asks the training loop to
//! stop after the step under way (it then writes a resumable checkpoint and exits with
//! 130); another one more than [`REPEAT_WINDOW`] later exits at once (every file is
//! written atomically, so the last checkpoint on disk stays whole). Signals within the
//! window are the same request: GNU `timeout` and a closing terminal signal the process
//! and its process group, so one stop arrives twice.
//!
//! The handler sets the stop flag before it prints anything, and its printing cannot
//! fail: a stop works with stderr closed, full, or on a terminal that hung up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static REQUESTED: AtomicBool = AtomicBool::new(false);
/// Whether a signal arrived (as against the test hook or a failed write asking).
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// Exit status of a run stopped by a signal (128 + SIGINT, as shells report Ctrl-C).
pub const EXIT_CODE: u8 = 130;

/// Signals this close after the first are part of the same stop request.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(1);

/// Install the SIGINT/SIGTERM/SIGHUP handler (once per process; later calls do nothing).
/// (No signals in a browser: the page's Stop button asks instead.)
pub fn install() {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::io::Write;
        let mut first: Option<web_time::Instant> = None;
        let _ = ctrlc::set_handler(move || {
            REQUESTED.store(true, Ordering::SeqCst);
            SIGNALLED.store(true, Ordering::SeqCst);
            let mut stderr = std::io::stderr();
            let Some(at) = first else {
                first = Some(web_time::Instant::now());
                let _ = writeln!(
                    stderr,
                    "\ninterrupt: finishing the current step and writing a checkpoint (press \
                     Ctrl-C again to quit at once)"
                );
                return;
            };
            if at.elapsed() >= REPEAT_WINDOW {
                let _ = writeln!(
                    stderr,
                    "\ninterrupted again: exiting now (the last checkpoint on disk is intact)"
                );
                std::process::exit(EXIT_CODE as i32);
            }
        });
    }
}

/// Whether a signal (not the test hook or a failed output) asked for the stop.
pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst)
}

/// Ask the training loop to stop after the current step (what the signal handler does).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Test hook: `MNIST_GPU_INTERRUPT_AT=EPOCH:STEP` behaves as if Ctrl-C were pressed
/// during step STEP of epoch EPOCH (both 1-based; the GPU stops at the end of the
/// submission holding that step), so interruption can be tested exactly.
const INTERRUPT_AT_ENV: &str = "MNIST_GPU_INTERRUPT_AT";

fn interrupt_at() -> Option<(usize, usize)> {
    static AT: std::sync::OnceLock<Option<(usize, usize)>> = std::sync::OnceLock::new();
    *AT.get_or_init(|| {
        let text = std::env::var(INTERRUPT_AT_ENV).ok()?;
        let (epoch, step) = text.split_once(':')?;
        Some((epoch.trim().parse().ok()?, step.trim().parse().ok()?))
    })
}

/// The training loop's `stop` question: was a stop asked for (by a signal, or by the
/// test hook for this epoch and step count)?
pub fn stop_requested(epoch: usize, steps_done: usize) -> bool {
    requested() || interrupt_at().is_some_and(|(e, s)| e == epoch && steps_done >= s)
}

/// Training was stopped by an interrupt; a resumable checkpoint was written.
#[derive(Debug, thiserror::Error)]
#[error("interrupted in epoch {epoch} after step {steps_done} of {steps_total}: {checkpoint} holds the run so far; continue it with: {resume}")]
pub struct Interrupted {
    pub epoch: usize,
    pub steps_done: usize,
    pub steps_total: usize,
    pub checkpoint: String,
    /// The command that continues the run.
    pub resume: String,
}
