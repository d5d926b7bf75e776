//! Console output of a training run, Keras 3 style. On stdout, per epoch:
//!
//! ```text
//! Epoch 1/10
//! 1875/1875 - 0.50s 267us/step (119031 samples/s) - loss: 0.2267 - accuracy: 0.9315 - val_loss: 0.1318 - val_accuracy: 0.9618
//! ```
//!
//! While the epoch runs, and only when stderr is a terminal, a live line on stderr between
//! the two, redrawn at most every [`REDRAW_INTERVAL`]:
//!
//! ```text
//!  264/1875 ━━╸───────────────── 0.1s ETA 0.4s - loss: 0.3123 - accuracy: 0.9012
//! ```
//!
//! The counter and the running loss/accuracy on it always come from the same progress
//! report (the backends report them together); the ETA comes from the rate measured
//! between this epoch's first report and its latest, and is `?` until there are two. The line is cleared before the
//! epoch's closing line, on interrupt, on error, and when the console is dropped.

use crate::backend::{EpochRecord, StepProgress};
use crate::train::{Observer, Snapshot};
use anyhow::Result;
use std::io::{IsTerminal, Write};
use std::time::Duration;
use web_time::Instant;

/// Least time between two redraws of the live line.
pub const REDRAW_INTERVAL: Duration = Duration::from_millis(100);
/// Cells of the progress bar.
pub const BAR_CELLS: usize = 20;

/// Time left in the epoch at the rate measured since a reference point (`start_steps`
/// done, `elapsed` ago): `None` until a step has been done and timed since then.
pub fn eta(start_steps: usize, now: &StepProgress, elapsed: Duration) -> Option<Duration> {
    let trained = now.steps_done.checked_sub(start_steps).filter(|&n| n > 0)?;
    if elapsed.is_zero() {
        return None;
    }
    let remaining = now.steps_total.saturating_sub(now.steps_done);
    Some(elapsed.mul_f64(remaining as f64 / trained as f64))
}

/// A duration the way a person reads it: `0.4s`, `12s`, `3m05s`, `1h02m`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 9.95 {
        format!("{s:.1}s")
    } else if s < 59.5 {
        format!("{s:.0}s")
    } else if s < 3599.5 {
        let whole = s.round() as u64;
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        let minutes = (s / 60.0).round() as u64;
        format!("{}h{:02}m", minutes / 60, minutes % 60)
    }
}

/// Time per step: `267us/step`, `12ms/step`, `1.3s/step`.
pub fn format_per_step(seconds: f64, steps: usize) -> String {
    let per = seconds / steps.max(1) as f64;
    if per < 1e-3 {
        format!("{:.0}us/step", per * 1e6)
    } else if per < 1.0 {
        format!("{:.0}ms/step", per * 1e3)
    } else {
        format!("{per:.1}s/step")
    }
}

/// The bar: `━` for the part done, `╸` for a half cell, `─` for the rest.
pub fn bar(done: usize, total: usize) -> String {
    let halves = (done.min(total) * BAR_CELLS * 2)
        .checked_div(total)
        .unwrap_or(0);
    let full = halves / 2;
    let half = halves % 2;
    let mut s = "━".repeat(full);
    if half == 1 {
        s.push('╸');
    }
    s.push_str(&"─".repeat(BAR_CELLS - full - half));
    s
}

/// The live line for `p`, `elapsed` into the epoch, with `eta` left (`?` when unknown).
/// Loss and accuracy are shown once a sample has been seen.
pub fn format_live(p: &StepProgress, elapsed: Duration, eta: Option<Duration>) -> String {
    let width = p.steps_total.to_string().len();
    let mut line = format!(
        "{:>width$}/{} {} {} ETA {}",
        p.steps_done,
        p.steps_total,
        bar(p.steps_done, p.steps_total),
        format_duration(elapsed),
        eta.map_or_else(|| "?".to_string(), format_duration)
    );
    if p.samples_done > 0 {
        line.push_str(&format!(
            " - loss: {:.4} - accuracy: {:.4}",
            p.mean_loss(),
            p.accuracy()
        ));
    }
    line
}

/// The epoch's closing line: steps, time, time per step (over the steps trained in this
/// sitting), throughput, and the training and validation metrics.
pub fn format_closing(r: &EpochRecord, steps_total: usize, steps_trained: usize) -> String {
    format!(
        "{steps_total}/{steps_total} - {:.2}s {} ({:.0} samples/s) - loss: {:.4} - accuracy: {:.4} - val_loss: {:.4} - val_accuracy: {:.4}",
        r.seconds,
        format_per_step(r.seconds, steps_trained),
        r.samples_per_second,
        r.loss,
        r.accuracy,
        r.val_loss,
        r.val_accuracy
    )
}

/// The epoch under way, as far as the live line knows it.
struct Epoch {
    start: StepProgress,
    started: Instant,
    latest: StepProgress,
    last_draw: Option<Instant>,
    /// The first report of the epoch and when it came: the rate is measured from there,
    /// so start-up costs (a GPU's first dispatches, warming caches) do not skew the ETA.
    first_report: Option<(Instant, usize)>,
}

/// The training run's console: the epoch lines on stdout, the live line on `live`.
pub struct Console {
    /// Where the live line goes (stderr), or `None` when it is hidden.
    live: Option<Box<dyn Write + Send>>,
    /// Columns of the terminal (the live line is cut to fit, so it never wraps).
    columns: Option<usize>,
    epoch: Option<Epoch>,
    /// Whether a live line is on screen (and must be cleared).
    shown: bool,
}

impl Default for Console {
    /// The live line on stderr when it is a terminal (and not `TERM=dumb`).
    fn default() -> Self {
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        let live: Option<Box<dyn Write + Send>> = (std::io::stderr().is_terminal() && !dumb)
            .then(|| Box::new(std::io::stderr()) as Box<dyn Write + Send>);
        Console::new(live, terminal_columns())
    }
}

impl Console {
    /// A console drawing its live line on `live` (none: no live line), cut to `columns`.
    pub fn new(live: Option<Box<dyn Write + Send>>, columns: Option<usize>) -> Self {
        Console {
            live,
            columns,
            epoch: None,
            shown: false,
        }
    }

    fn draw(&mut self) {
        let (Some(out), Some(epoch)) = (self.live.as_mut(), self.epoch.as_mut()) else {
            return;
        };
        let elapsed = epoch.started.elapsed();
        let eta = epoch
            .first_report
            .and_then(|(at, steps)| eta(steps, &epoch.latest, at.elapsed()));
        let mut line = format_live(&epoch.latest, elapsed, eta);
        if let Some(columns) = self.columns {
            if let Some((cut, _)) = line.char_indices().nth(columns.saturating_sub(1)) {
                line.truncate(cut);
            }
        }
        // Back to the line's start, the line, then erase whatever a longer line left.
        let _ = write!(out, "\r{line}\x1b[K");
        let _ = out.flush();
        epoch.last_draw = Some(Instant::now());
        self.shown = true;
    }

    /// Erase the live line, leaving the cursor at the start of the empty line.
    pub fn clear(&mut self) {
        if let (true, Some(out)) = (self.shown, self.live.as_mut()) {
            let _ = write!(out, "\r\x1b[K");
            let _ = out.flush();
        }
        self.shown = false;
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Observer for Console {
    fn epoch_started(&mut self, epoch: usize, epochs: usize, start: &StepProgress) {
        self.clear();
        crate::outln!("Epoch {epoch}/{epochs}");
        self.epoch = Some(Epoch {
            start: *start,
            started: Instant::now(),
            latest: *start,
            last_draw: None,
            first_report: None,
        });
        self.draw();
    }

    fn step(&mut self, progress: &StepProgress) {
        let Some(epoch) = self.epoch.as_mut() else {
            return;
        };
        epoch.latest = *progress;
        epoch
            .first_report
            .get_or_insert((Instant::now(), progress.steps_done));
        // The last step is always drawn: the line then stays complete while validating.
        let due = progress.steps_done >= progress.steps_total
            || epoch
                .last_draw
                .is_none_or(|t| t.elapsed() >= REDRAW_INTERVAL);
        if due {
            self.draw();
        }
    }

    fn ended_early(&mut self) {
        self.clear();
        self.epoch = None;
    }

    fn epoch_finished(&mut self, r: &EpochRecord, _epochs: usize, _model: &Snapshot) -> Result<()> {
        self.clear();
        let (total, trained) = match self.epoch.take() {
            Some(e) => (
                e.latest.steps_total,
                e.latest.steps_done.saturating_sub(e.start.steps_done),
            ),
            None => (0, 0),
        };
        crate::outln!("{}", format_closing(r, total, trained));
        Ok(())
    }
}

/// Columns of the terminal on stderr, if it is one.
#[cfg(unix)]
fn terminal_columns() -> Option<usize> {
    // SAFETY: TIOCGWINSZ fills the winsize struct it is given and touches nothing else.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0).then_some(size.ws_col as usize)
}

#[cfg(not(unix))]
fn terminal_columns() -> Option<usize> {
    None
}
