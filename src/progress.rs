//! Console output of a training run, Keras `fit` style: a live progress bar per epoch on
//! stderr (hidden when stderr is not a terminal) and one summary line per epoch on stdout.

use crate::backend::{Backend, StepProgress};
use crate::train::{EpochRecord, Observer};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::{Duration, Instant};

/// How often the progress line's message (loss, accuracy) is re-formatted.
const MESSAGE_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct Console {
    bar: Option<ProgressBar>,
    last_message: Option<Instant>,
}

impl Observer for Console {
    fn epoch_started(&mut self, epoch: usize, epochs: usize, steps: usize) {
        let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "Epoch {prefix} {pos:>5}/{len} [{bar:30}] ETA {eta} - {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("{epoch}/{epochs}"));
        self.bar = Some(bar);
        self.last_message = None;
    }

    fn step(&mut self, progress: &StepProgress) {
        let Some(bar) = &self.bar else { return };
        bar.set_position(progress.steps_done as u64);
        let due = self
            .last_message
            .is_none_or(|t| t.elapsed() >= MESSAGE_INTERVAL);
        if due {
            bar.set_message(format!(
                "loss: {:.4} - accuracy: {:.4}",
                progress.mean_loss(),
                progress.accuracy()
            ));
            self.last_message = Some(Instant::now());
        }
    }

    fn interrupted(
        &mut self,
        _epoch: usize,
        _progress: &StepProgress,
        _backend: &mut dyn Backend,
    ) -> Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        Ok(())
    }

    fn epoch_finished(
        &mut self,
        r: &EpochRecord,
        epochs: usize,
        _backend: &mut dyn Backend,
    ) -> Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        println!(
            "Epoch {}/{epochs} - {:.2}s ({:.0} samples/s) - loss: {:.4} - accuracy: {:.4} - val_loss: {:.4} - val_accuracy: {:.4}",
            r.epoch, r.seconds, r.samples_per_second, r.loss, r.accuracy, r.val_loss, r.val_accuracy
        );
        Ok(())
    }
}
