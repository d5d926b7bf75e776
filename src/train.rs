//! The one training loop, over any [`Backend`]: epochs, shuffling, metrics, progress.

use crate::backend::{
    Backend, Diverged, EpochEnd, EpochRecord, EpochStats, EvalStats, NonFinite, StepProgress, Steps,
};
use crate::layers::augment::cpu::AugmentKey;
use crate::model::{OptimState, Params, CLASSES};
use crate::settings::steps_per_epoch;
use crate::settings::TrainOptions;
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use web_time::Instant;

/// The model as an epoch left it: parameters (checked finite) and Adam's state.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub params: Params,
    pub optim: OptimState,
}

/// Hooks for whoever shows the run (the CLI's progress bar and run files, or nothing in
/// tests). They are plain functions: the driver reads what they need from the backend
/// (a [`Snapshot`]) before calling them.
pub trait Observer {
    /// Epoch `epoch` of `epochs` starts, with `start.steps_done` of its `start.steps_total`
    /// steps already done (a resumed epoch; their sums are in `start`).
    fn epoch_started(&mut self, _epoch: usize, _epochs: usize, _start: &StepProgress) {}
    fn step(&mut self, _progress: &StepProgress) {}
    /// Called after each epoch with the model it left (to save a checkpoint, say); an
    /// error stops training (e.g. the disk is full).
    fn epoch_finished(
        &mut self,
        _record: &EpochRecord,
        _epochs: usize,
        _model: &Snapshot,
    ) -> Result<()> {
        Ok(())
    }
    /// Called when `stop` ended training inside epoch `epoch` (1-based) after
    /// `progress.steps_done` of its steps (all of them: at the epoch's end), before
    /// [`train_from`] returns [`Stopped`]: the place to write a resumable checkpoint.
    fn interrupted(
        &mut self,
        _epoch: usize,
        _progress: &StepProgress,
        _model: &Snapshot,
    ) -> Result<()> {
        Ok(())
    }
    /// Training ended inside an epoch: an error (divergence, a device error), before it
    /// is reported, or a stop, before [`Observer::interrupted`] (where the
    /// [`StepProgress`] of the steps done is): the place to clear a progress line.
    fn ended_early(&mut self) {}
}

/// Training stopped because `stop` said so; the observer has been told.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("stopped in epoch {epoch} after step {} of {}", progress.steps_done, progress.steps_total)]
pub struct Stopped {
    /// 1-based.
    pub epoch: usize,
    pub progress: StepProgress,
}

/// An observer that shows nothing.
pub struct Silent;
impl Observer for Silent {}

/// The sample order of one epoch: a permutation of `0..count` from the seeded RNG (each
/// epoch its own stream, so epoch k's order does not depend on how epochs before it ran),
/// or `0..count` when not shuffling.
pub fn epoch_order(count: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<u32> {
    let mut order: Vec<u32> = (0..count as u32).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(1000 + epoch as u64);
        order.shuffle(&mut rng);
    }
    order
}

/// What a whole run produced: every epoch's record, the last evaluation and the model.
pub struct TrainOutcome {
    pub history: Vec<EpochRecord>,
    pub final_eval: EvalStats,
    pub model: Snapshot,
}

/// Train up to epoch `options.epochs`, starting after `first_epoch` epochs already done
/// (0 for a fresh run, k when resuming after epoch k), evaluating on the test set after each.
pub async fn train(
    backend: &mut dyn Backend,
    options: &TrainOptions,
    first_epoch: usize,
    observer: &mut dyn Observer,
) -> Result<TrainOutcome> {
    let start = StartAt {
        first_epoch,
        partial: StepProgress::default(),
    };
    train_from(backend, options, &start, observer, &|_, _| false).await
}

/// Where training starts: after `first_epoch` epochs, and inside epoch
/// `first_epoch + 1` after the steps whose totals are in `partial` (all zero to start
/// that epoch from its beginning).
#[derive(Clone, Copy, Debug, Default)]
pub struct StartAt {
    pub first_epoch: usize,
    pub partial: StepProgress,
}

impl StartAt {
    /// The totals epoch `epoch` (0-based) of `steps` steps starts from: those of the
    /// steps already done in the first epoch, else none.
    fn base(&self, epoch: usize, steps: usize) -> StepProgress {
        let partial = if epoch == self.first_epoch {
            self.partial
        } else {
            StepProgress::default()
        };
        StepProgress {
            steps_total: steps,
            ..partial
        }
    }
}

/// How one call to [`run_epoch`] ended.
pub enum EpochOutcome {
    /// Every step ran.
    Finished(Box<FinishedEpoch>),
    /// `stop` ended the epoch early: the totals of its steps done (resume from them).
    Stopped(StepProgress),
}

/// A finished epoch: its record, the evaluation after it and the model it left.
pub struct FinishedEpoch {
    pub record: EpochRecord,
    pub eval: EvalStats,
    /// The parameters the epoch left, checked finite.
    pub params: Params,
    /// Adam's update count then (its moments are read only where a checkpoint needs them).
    pub adam_steps: u64,
}

/// [`train`] from `start`, stopping when `stop(epoch, steps done in it)` says so (it is
/// asked between steps): after the step under way, with [`Observer::interrupted`]
/// called and a [`Stopped`] error returned. A non-finite loss stops training at once
/// with an error naming the epoch and step (it wraps [`crate::backend::Diverged`]).
pub async fn train_from(
    backend: &mut dyn Backend,
    options: &TrainOptions,
    start: &StartAt,
    observer: &mut dyn Observer,
    stop: &(dyn Fn(usize, usize) -> bool + Sync),
) -> Result<TrainOutcome> {
    let steps = steps_per_epoch(backend.train_count(), options.batch_size);
    let mut history = Vec::new();
    let mut last = None;
    for epoch in start.first_epoch..options.epochs {
        let base = start.base(epoch, steps);
        observer.epoch_started(epoch + 1, options.epochs, &base);
        let mut progress = |p: &StepProgress| observer.step(p);
        let stop_in_epoch = |done| stop(epoch + 1, done);
        let outcome = run_epoch(backend, options, epoch, base, &mut progress, &stop_in_epoch).await;
        let finished = match outcome.inspect_err(|_| observer.ended_early())? {
            EpochOutcome::Finished(finished) => *finished,
            EpochOutcome::Stopped(progress) => {
                return Err(stopped_in_epoch(backend, observer, epoch + 1, progress).await)
            }
        };
        let optim = backend.optim_state().await;
        let optim = optim.inspect_err(|_| observer.ended_early())?;
        let FinishedEpoch {
            record,
            eval,
            params,
            ..
        } = finished;
        let model = Snapshot { params, optim };
        observer.epoch_finished(&record, options.epochs, &model)?;
        history.push(record);
        if epoch + 1 < options.epochs && stop(epoch + 1, steps) {
            // The checkpoint written at the end of this epoch is the one to resume from.
            let progress = StepProgress {
                steps_done: steps,
                steps_total: steps,
                samples_done: backend.train_count(),
                ..StepProgress::default()
            };
            return Err(stopped(observer, epoch + 1, progress, &model));
        }
        last = Some((eval, model));
    }
    let (final_eval, model) = match last {
        Some(last) => last,
        None => (
            backend.evaluate().await?,
            snapshot(backend, start.first_epoch).await?,
        ),
    };
    Ok(TrainOutcome {
        history,
        final_eval,
        model,
    })
}

/// A stop inside epoch `epoch` (1-based) after `progress`: the model as it is, its
/// parameters checked finite, then [`stopped`]; the error to return.
async fn stopped_in_epoch(
    backend: &mut dyn Backend,
    observer: &mut dyn Observer,
    epoch: usize,
    progress: StepProgress,
) -> anyhow::Error {
    match snapshot(backend, epoch).await {
        Ok(model) => stopped(observer, epoch, progress, &model),
        Err(error) => {
            observer.ended_early();
            error
        }
    }
}

/// Tell the observer that training stopped in epoch `epoch` (1-based) after `progress`,
/// with the model as it is; the [`Stopped`] error to return (or the observer's own).
fn stopped(
    observer: &mut dyn Observer,
    epoch: usize,
    progress: StepProgress,
    model: &Snapshot,
) -> anyhow::Error {
    observer.ended_early();
    match observer.interrupted(epoch, &progress, model) {
        Ok(()) => Stopped { epoch, progress }.into(),
        Err(error) => error,
    }
}

/// **The epoch driver**, shared by the command line's loop ([`train_from`]) and the
/// browser page (one call per epoch): the steps of epoch `epoch` (0-based) after those in
/// `base` (its order, less the samples of the steps already done) — on the epoch's
/// augmented images under `--augment` — then evaluation, the
/// finite checks and the epoch's record. A divergence is named with its epoch.
pub async fn run_epoch(
    backend: &mut dyn Backend,
    options: &TrainOptions,
    epoch: usize,
    base: StepProgress,
    progress: &mut dyn FnMut(&StepProgress),
    stop: &(dyn Fn(usize) -> bool + Sync),
) -> Result<EpochOutcome> {
    let order = epoch_order(backend.train_count(), options.seed, epoch, options.shuffle);
    // A resumed epoch: the same batches as the uninterrupted run, since the steps done
    // cover a whole number of batches.
    let skip = (base.steps_done * options.batch_size).min(order.len());
    crate::host::yield_if_due().await;
    let started = Instant::now();
    if options.augment {
        backend
            .augment(AugmentKey::new(options.seed, epoch))
            .await?;
    }
    let steps = Steps {
        order: &order[skip..],
        batch_size: options.batch_size,
        base,
        progress,
        stop,
    };
    let result = backend.train_steps(steps).await;
    let seconds = started.elapsed().as_secs_f64();
    let stats = match check_divergence(result, epoch + 1)? {
        EpochEnd::Finished(stats) => stats,
        EpochEnd::Stopped(totals) => return Ok(EpochOutcome::Stopped(totals)),
    };
    let eval = backend.evaluate().await?;
    check_finite_eval(&eval, epoch + 1)?;
    let params = backend.params().await?;
    check_finite_params(&params, epoch + 1)?;
    let record = epoch_record(epoch + 1, &stats, &eval, &base, seconds);
    Ok(EpochOutcome::Finished(Box::new(FinishedEpoch {
        record,
        eval,
        params,
        adam_steps: backend.adam_steps(),
    })))
}

/// The backend's parameters (checked finite; `epoch`: the last one trained) and Adam's
/// state.
async fn snapshot(backend: &mut dyn Backend, epoch: usize) -> Result<Snapshot> {
    let params = backend.params().await?;
    check_finite_params(&params, epoch)?;
    let optim = backend.optim_state().await?;
    Ok(Snapshot { params, optim })
}

/// The steps of epoch `epoch` (1-based) as a backend returned them, with a divergence
/// named by its epoch: a [`Diverged`] error from the steps, or a finished epoch whose
/// loss is not finite.
fn check_divergence(result: Result<EpochEnd>, epoch: usize) -> Result<EpochEnd> {
    let end = result.map_err(|error| match error.downcast::<Diverged>() {
        Ok(diverged) => {
            anyhow::Error::new(diverged).context(format!("training diverged in epoch {epoch}"))
        }
        Err(other) => other,
    })?;
    if let EpochEnd::Finished(stats) = end {
        if !stats.loss.is_finite() {
            bail!(
                "training diverged in epoch {epoch}: the loss became {} (try a smaller --lr)",
                stats.loss
            );
        }
        if stats.loss > MAX_LOSS {
            bail!(
                "training diverged in epoch {epoch}: the loss reached {:.3e}, where an untrained \
                 model starts near 2.3 (try a smaller --lr)",
                stats.loss
            );
        }
    }
    Ok(end)
}

/// An epoch's mean loss above this is divergence even while it is finite. Cross-entropy
/// is the gap between the true class's logit and the others' (plus at most ln 10); a
/// mean gap of a million means logits far past where a 32-bit softmax tells classes
/// apart, and whether such a run reaches an infinite value, and so a NaN, depends only on
/// the order of the sums (native builds hit NaN at `--lr 1e30`, the single-threaded page
/// stayed at 1.6e30). A run that merely trains badly, with losses in the thousands, is
/// still reported as it is.
pub const MAX_LOSS: f64 = 1e6;

/// Epoch `epoch`'s record (a `metrics.jsonl` line) from its training statistics, the
/// evaluation after it, the totals it resumed from and its training time.
fn epoch_record(
    epoch: usize,
    stats: &EpochStats,
    eval: &EvalStats,
    base: &StepProgress,
    seconds: f64,
) -> EpochRecord {
    EpochRecord {
        epoch,
        loss: stats.loss,
        accuracy: stats.accuracy,
        val_loss: eval.loss,
        val_accuracy: eval.accuracy,
        seconds,
        samples_per_second: (stats.samples - base.samples_done) as f64 / seconds.max(1e-9),
    }
}

/// A validation loss or accuracy that is not finite ends the run as a divergence.
fn check_finite_eval(eval: &EvalStats, epoch: usize) -> Result<()> {
    for (what, value) in [
        ("the validation loss", eval.loss),
        ("the validation accuracy", eval.accuracy),
    ] {
        if !value.is_finite() {
            return Err(NonFinite {
                what: what.into(),
                value,
                epoch,
            }
            .into());
        }
    }
    Ok(())
}

/// Parameters (or BatchNorm statistics) that are not finite end the run as a divergence
/// before anything is saved from them (`epoch`: the last one trained).
fn check_finite_params(params: &Params, epoch: usize) -> Result<()> {
    let values = params
        .trainable
        .iter()
        .chain(&params.moving_mean)
        .chain(&params.moving_var);
    match values.copied().find(|v| !v.is_finite()) {
        Some(value) => Err(NonFinite {
            what: "a model parameter".into(),
            value: value as f64,
            epoch,
        }
        .into()),
        None => Ok(()),
    }
}

/// Refuse the evaluation `eval` of the model `name` when its loss is not finite: the
/// model's outputs overflow (`eval` and the page's model loading).
pub fn check_finite_eval_loss(eval: &EvalStats, name: &str) -> Result<()> {
    if !eval.loss.is_finite() {
        bail!(
            "{name}: the model produces non-finite outputs (its weights overflow), so it has \
             no meaningful accuracy"
        );
    }
    Ok(())
}

/// Refuse a model whose outputs (`probabilities`, one row per image) are not finite:
/// its weights overflow. `name` names the model, `consequence` what cannot be done.
pub fn check_finite_outputs(
    probabilities: &[[f32; CLASSES]],
    name: &str,
    consequence: &str,
) -> Result<()> {
    if probabilities.iter().flatten().any(|p| !p.is_finite()) {
        bail!(
            "{name}: the model produces non-finite outputs (its weights overflow); {consequence}"
        );
    }
    Ok(())
}
