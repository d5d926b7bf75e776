//! The seam between the training loop and the hardware: one trait, implemented by the
//! CPU reference ([`crate::cpu::CpuBackend`]) and the wgpu trainer ([`crate::gpu::GpuBackend`]).
//!
//! A backend owns the data set, the parameters and the optimiser state for the whole
//! run. It takes a whole epoch (its shuffled order) at a time, which lets the GPU record
//! many steps per submission without the loop knowing.

use crate::host::Task;
use crate::layers::augment::cpu::AugmentKey;
use crate::model::{OptimState, Params};
use crate::settings::steps_per_epoch;
use serde::{Deserialize, Serialize};

/// Running totals inside an epoch, for the progress line.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepProgress {
    pub steps_done: usize,
    pub steps_total: usize,
    pub samples_done: usize,
    /// Sum of per-sample losses so far.
    pub loss_sum: f64,
    pub correct: u64,
}

impl StepProgress {
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.samples_done.max(1) as f64
    }
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.samples_done.max(1) as f64
    }
    /// The epoch's statistics from these totals.
    pub fn epoch_stats(&self) -> EpochStats {
        EpochStats {
            loss: self.mean_loss(),
            accuracy: self.accuracy(),
            samples: self.samples_done,
        }
    }
}

/// What one epoch of training measured (averages over every sample seen).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochStats {
    pub loss: f64,
    pub accuracy: f64,
    pub samples: usize,
}

/// How a call to [`Backend::train_steps`] ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EpochEnd {
    /// Every step of the epoch ran: the epoch's statistics.
    Finished(EpochStats),
    /// `stop` ended the epoch early: the totals of its steps done so far.
    Stopped(StepProgress),
}

impl EpochEnd {
    /// `Finished` when `totals` (of the whole epoch) hold all its steps, else `Stopped`.
    pub fn from_totals(totals: StepProgress) -> EpochEnd {
        if totals.steps_done >= totals.steps_total {
            EpochEnd::Finished(totals.epoch_stats())
        } else {
            EpochEnd::Stopped(totals)
        }
    }

    /// The statistics of the steps that ran, however the epoch ended.
    pub fn stats(&self) -> EpochStats {
        match self {
            EpochEnd::Finished(stats) => *stats,
            EpochEnd::Stopped(totals) => totals.epoch_stats(),
        }
    }
}

/// One line of `--metrics`: what Keras' `History` holds, plus timing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: f64,
    pub accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    /// Wall time of the training pass (evaluation excluded).
    pub seconds: f64,
    pub samples_per_second: f64,
}

/// Test-set evaluation with the current parameters and moving statistics (all zero and
/// empty without test samples).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalStats {
    pub loss: f64,
    pub accuracy: f64,
    /// The argmax class of every test sample, in data-set order.
    pub predictions: Vec<u8>,
}

/// The training loss stopped being a finite number (the learning rate is usually too
/// large). `step` counts from 1 within the epoch.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("the loss became {loss} at step {step} of {steps_total}{}; try a smaller learning rate (--lr)", detected_note(*.step, *.detected_after))]
pub struct Diverged {
    pub step: usize,
    pub steps_total: usize,
    /// The batch's summed loss, NaN or ±inf.
    pub loss: f32,
    /// The step after which the backend noticed it (the GPU reads losses back in bursts).
    pub detected_after: usize,
}

/// Something other than the training loss stopped being finite: the validation loss or
/// accuracy, or a parameter. The run ends as a divergence.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error(
    "training diverged in epoch {epoch}: {what} became {value}; try a smaller learning rate (--lr)"
)]
pub struct NonFinite {
    pub what: String,
    pub value: f64,
    pub epoch: usize,
}

impl Diverged {
    /// The loss `loss` of the `i`-th step (0-based) of a call that continued from `base`
    /// was not finite; the backend noticed after `seen` of the call's steps.
    pub fn at(base: &StepProgress, i: usize, loss: f32, seen: usize) -> Diverged {
        Diverged {
            step: base.steps_done + i + 1,
            steps_total: base.steps_total,
            loss,
            detected_after: base.steps_done + seen,
        }
    }
}

fn detected_note(step: usize, detected_after: usize) -> String {
    if detected_after > step {
        format!(" (noticed when the losses were read back after step {detected_after})")
    } else {
        String::new()
    }
}

/// A call to [`Backend::train_steps`]: the samples of an epoch's remaining steps in
/// `order`, in batches of `batch_size` (the last one may be smaller), and `base`, the
/// totals of the steps before them (all zero for a whole epoch; `base.steps_total` is the
/// epoch's step count). The totals continue from `base`, in the epoch's step numbers, and
/// reach `progress` from time to time. `stop` is asked between steps (the GPU: between
/// submissions) with the number of the epoch's steps done or under way; when it says yes
/// the backend finishes the step(s) under way and returns [`EpochEnd::Stopped`]. A loss
/// that is not finite ends the call with a [`Diverged`] error at once (built with
/// [`Diverged::at`]).
pub struct Steps<'a> {
    pub order: &'a [u32],
    pub batch_size: usize,
    pub base: StepProgress,
    pub progress: &'a mut dyn FnMut(&StepProgress),
    pub stop: &'a (dyn Fn(usize) -> bool + Sync),
}

/// A trainer of one model on one device. Training, evaluation and reading state back
/// are futures ([`Task`]): the command line blocks on the whole run in one place
/// ([`crate::host::block_on`]), the browser page awaits them. Only [`crate::train`]'s
/// epoch driver calls `train_steps`.
pub trait Backend {
    /// What trains, for the run header: `cpu (2 threads)`, `llvmpipe (Vulkan, Mesa …)`.
    fn name(&self) -> String;

    /// Samples in the training set the backend holds.
    fn train_count(&self) -> usize;

    /// Train on the training-set samples listed in `order`, in batches of `batch_size`
    /// (the last batch may be smaller). `progress` receives running totals from time to time.
    fn train_epoch<'a>(
        &'a mut self,
        order: &'a [u32],
        batch_size: usize,
        progress: &'a mut dyn FnMut(&StepProgress),
    ) -> Task<'a, EpochStats> {
        let base = StepProgress {
            steps_total: steps_per_epoch(order.len(), batch_size),
            ..StepProgress::default()
        };
        Box::pin(async move {
            let steps = Steps {
                order,
                batch_size,
                base,
                progress,
                stop: &|_| false,
            };
            Ok(self.train_steps(steps).await?.stats())
        })
    }

    /// [`Backend::train_epoch`], resumable and interruptible: the [`Steps`] of an epoch
    /// (the samples of its remaining steps, and the totals of those before them).
    fn train_steps<'a>(&'a mut self, steps: Steps<'a>) -> Task<'a, EpochEnd>;

    /// From now on, train on the training images augmented under `key` (the epoch's:
    /// see [`crate::layers::augment`]), each made from the original image, not from the
    /// last epoch's. The epoch driver calls it before each epoch's steps under
    /// `--augment`; evaluation never sees it.
    fn augment(&mut self, key: AugmentKey) -> Task<'_, ()>;

    /// Loss, accuracy and predictions on the whole test set, in inference mode.
    fn evaluate(&mut self) -> Task<'_, EvalStats>;

    /// Read the current parameters (and moving statistics) back.
    fn params(&mut self) -> Task<'_, Params>;

    /// Read Adam's moments and step count back.
    fn optim_state(&mut self) -> Task<'_, OptimState>;

    /// Adam's update count so far, without reading the moments back.
    fn adam_steps(&self) -> u64;

    /// Replace the parameters, and the optimiser state when given (else reset it).
    fn load(&mut self, params: &Params, optim: Option<&OptimState>) -> anyhow::Result<()>;
}
