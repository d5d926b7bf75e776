//! Ctrl-C / SIGTERM during training: the first signal asks the training loop to stop
//! after the step under way (it then writes a resumable checkpoint and exits with 130);
//! a second one exits at once (every file is written atomically, so the last
//! checkpoint on disk stays whole).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static SIGNALS: AtomicUsize = AtomicUsize::new(0);

/// Exit status of a run stopped by a signal (128 + SIGINT, as shells report Ctrl-C).
pub const EXIT_CODE: u8 = 130;

/// Install the SIGINT/SIGTERM/SIGHUP handler (once per process; later calls do nothing).
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
            eprintln!("\ninterrupted again: exiting now (the last checkpoint on disk is intact)");
            std::process::exit(EXIT_CODE as i32);
        }
        eprintln!("\ninterrupt: finishing the current step and writing a checkpoint (press Ctrl-C again to quit at once)");
        REQUESTED.store(true, Ordering::SeqCst);
    });
}

/// Ask the training loop to stop after the current step (what the signal handler does).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Training was stopped by an interrupt; a resumable checkpoint was written.
#[derive(Debug, thiserror::Error)]
#[error("interrupted in epoch {epoch} after step {steps_done} of {steps_total}: {checkpoint} holds the run so far; continue it with: mnist-gpu train --resume {dir}")]
pub struct Interrupted {
    pub epoch: usize,
    pub steps_done: usize,
    pub steps_total: usize,
    pub checkpoint: String,
    pub dir: String,
}
