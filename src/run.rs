//! `mnist-gpu train`: one run, in named phases — read the starting point (a fresh
//! model, `--init-from` or a checkpoint), check the device flags, load and check the
//! data, claim the run directory, train, write what a run leaves behind.
//!
//! Every input is validated before the run directory is touched, so a run that fails
//! on bad input leaves nothing behind and changes no earlier file.

use crate::app::{self, DeviceRequest};
use crate::backend::{Diverged, EpochRecord, NonFinite, StepProgress};
use crate::cpu;
use crate::data::{self, Mnist};
use crate::fsutil::write_atomic;
use crate::interrupt::{self, Interrupted};
use crate::metricsfile;
use crate::model::Params;
use crate::modelfile::{self, DataDigest, RunSettings, RunState};
use crate::progress::Console;
use crate::report;
use crate::rundir::{Claim, RunDir, CHECKPOINT, CURVES, METRICS, MODEL, PREDICTIONS};
use crate::settings::{steps_per_epoch, Settings, TrainOptions};
use crate::train::{train_from, Observer, Snapshot, StartAt, Stopped, TrainOutcome};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Everything `mnist-gpu train` was asked to do: the run's [`Settings`], and where it
/// reads, trains and writes.
#[derive(Clone, Debug)]
pub struct TrainSettings {
    /// What defines the run. With `init_from`, the model trained is that file's, not
    /// `settings.model`.
    pub settings: Settings,
    pub data_dir: PathBuf,
    pub device: DeviceRequest,
    /// Extra copy of the per-epoch metrics (the run directory always has metrics.jsonl).
    pub metrics: Option<PathBuf>,
    /// Where the run's files go (default: the next free `runs/run-NNN`).
    pub out_dir: Option<PathBuf>,
    /// Replace a run already in `out_dir`.
    pub overwrite: bool,
    /// First test image of the predictions grid.
    pub grid_offset: usize,
    /// Start from these weights (fresh optimiser).
    pub init_from: Option<PathBuf>,
    /// The run to continue, read from its checkpoint.
    pub resume: Option<Resume>,
}

/// A run to continue: its directory and what its checkpoint holds.
#[derive(Clone, Debug)]
pub struct Resume {
    pub dir: PathBuf,
    pub params: Params,
    pub state: RunState,
}

/// Settings to continue the run in `dir`: everything from its checkpoint (read once,
/// here), except the total `epochs`, `data_dir`, `metrics` and the device when given.
pub fn resume_settings(
    dir: &Path,
    epochs: Option<usize>,
    data_dir: Option<PathBuf>,
    metrics: Option<PathBuf>,
    device: DeviceRequest,
) -> Result<TrainSettings> {
    let path = dir.join(CHECKPOINT);
    let (params, state) = modelfile::load_checkpoint(&path)?;
    let run = &state.run;
    let epochs = epochs.unwrap_or(run.settings.options.epochs);
    let done = state.epochs_done;
    // All epochs done but no model of them on disk (a full disk at the last write, say):
    // the run is finished from its checkpoint, without training.
    let finishing = epochs == done && state.partial.is_none();
    if epochs < done || (finishing && model_is_written(dir, &params, &state)) {
        let model = if epochs < done {
            ""
        } else {
            " and its model is written"
        };
        bail!(
            "{}: the run has done {done} of its epochs already{model}; pass --epochs N with N \
             above {done} to train it further",
            dir.display()
        );
    }
    let options = TrainOptions {
        epochs,
        ..run.settings.options.clone()
    };
    Ok(TrainSettings {
        settings: Settings {
            options,
            ..run.settings.clone()
        },
        data_dir: resume_data_dir(&path, run, data_dir)?,
        device,
        metrics: metrics.or_else(|| run.metrics.clone()),
        out_dir: Some(dir.to_path_buf()),
        overwrite: false,
        grid_offset: run.grid_offset,
        init_from: None,
        resume: Some(Resume {
            dir: dir.to_path_buf(),
            params,
            state,
        }),
    })
}

/// Whether `dir` holds the model of its checkpoint: the bytes `train` writes at the end
/// of the run (only a regular file is read).
fn model_is_written(dir: &Path, params: &Params, state: &RunState) -> bool {
    let path = dir.join(MODEL);
    let regular = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
    let expected = modelfile::model_bytes(params, state.optim.step, &path);
    match (regular, expected) {
        (true, Ok(expected)) => std::fs::read(&path).is_ok_and(|bytes| bytes == expected),
        _ => false,
    }
}

/// The data directory of a resumed run: `--data-dir`, else the checkpoint's, which must
/// be found from here (a relative one is relative to where the run was started).
fn resume_data_dir(checkpoint: &Path, run: &RunSettings, flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir);
    }
    let dir = &run.data_dir;
    if !dir.exists() && *dir != data::builtin_dir() {
        let relative = if dir.is_relative() {
            " (relative to the directory the run was started in)"
        } else {
            ""
        };
        bail!(
            "{}: the run's data directory {}{relative} is not found from here; pass \
             --data-dir DIR",
            checkpoint.display(),
            dir.display()
        );
    }
    Ok(dir.clone())
}

/// The run's settings as its checkpoint stores them, for the model it trains (`params`).
fn run_settings(
    s: &TrainSettings,
    params: &Params,
    device: &str,
    data_digest: DataDigest,
) -> RunSettings {
    RunSettings {
        settings: Settings {
            model: params.config.clone(),
            ..s.settings.clone()
        },
        data_dir: s.data_dir.clone(),
        grid_offset: s.grid_offset,
        device: Some(device.to_string()),
        // Absolute, so a run resumed from another directory writes the same file.
        metrics: s
            .metrics
            .as_ref()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
        data_digest: Some(data_digest),
    }
}

/// The fingerprints of the data a run trains on (after its limits).
fn data_digest(data: &Mnist) -> DataDigest {
    DataDigest {
        train: data.train.digest(),
        test: data.test.digest(),
    }
}

/// A resumed run must train on the data it started with: `--data-dir` (or the data
/// directory, changed since) holding other data is refused, saying which set differs.
fn check_same_data(settings: &TrainSettings, digest: &DataDigest) -> Result<()> {
    let Some(resume) = &settings.resume else {
        return Ok(());
    };
    let checkpoint = resume.dir.join(CHECKPOINT);
    let Some(before) = &resume.state.run.data_digest else {
        crate::errln!(
            "note: {} does not record which data the run trained on (an older checkpoint), \
             so the data is not compared",
            checkpoint.display()
        );
        return Ok(());
    };
    let which = match (before.train == digest.train, before.test == digest.test) {
        (true, true) => return Ok(()),
        (false, true) => "training set differs",
        (true, false) => "test set differs",
        (false, false) => "training and test sets differ",
    };
    bail!(
        "{}: not the data the run in {} trained on (its {which}); resume with that data, or \
         start a new run from these weights with --init-from {}",
        settings.data_dir.display(),
        resume.dir.display(),
        checkpoint.display()
    )
}

/// Where training starts: the parameters, and the checkpoint's state when resuming.
fn starting_point(settings: &TrainSettings) -> Result<(Params, Option<RunState>)> {
    Ok(match (&settings.resume, &settings.init_from) {
        (Some(resume), _) => (resume.params.clone(), Some(resume.state.clone())),
        (None, Some(path)) => {
            let params = modelfile::load_model(path)?;
            crate::outln!("init: {} from {}", params.config.describe(), path.display());
            (params, None)
        }
        (None, None) => {
            let s = &settings.settings;
            (Params::init(&s.model, s.options.seed), None)
        }
    })
}

/// Checks that need the data set: the grid offset, an interrupted epoch's step count,
/// a starting model that produces finite outputs, and the `--metrics` file (returned as
/// the file that will be written, links followed).
fn check_inputs(
    settings: &TrainSettings,
    data: &Mnist,
    params: &Params,
    digest: &DataDigest,
) -> Result<Option<PathBuf>> {
    check_same_data(settings, digest)?;
    let test_count = data.test.len();
    if settings.grid_offset >= test_count {
        bail!(
            "--grid-offset {} is past the test set, which holds {test_count} images",
            settings.grid_offset
        );
    }
    if let Some(resume) = &settings.resume {
        if let Err(why) = resume.state.check_partial_fits(data.train.len()) {
            bail!("{}: {why}", resume.dir.join(CHECKPOINT).display());
        }
    }
    if let Some(path) = &settings.init_from {
        let bn_eps = settings.settings.hyper().bn_eps;
        let outputs = cpu::infer(params, bn_eps, &data.test.images);
        let name = path.display().to_string();
        crate::train::check_finite_outputs(&outputs, &name, "it cannot be trained from")?;
    }
    check_metrics_file(settings)
}

/// The `--metrics` file is written only once training runs; here it is only checked
/// (see [`metricsfile`]). The file that will be written, links followed.
fn check_metrics_file(settings: &TrainSettings) -> Result<Option<PathBuf>> {
    let Some(path) = &settings.metrics else {
        return Ok(None);
    };
    let history = settings.resume.as_ref().map(|r| r.state.history.as_slice());
    let out_dir = settings.out_dir.as_deref();
    metricsfile::check(path, out_dir, history, settings.overwrite).map(Some)
}

/// `mnist-gpu train`: the whole run, printed Keras-style; returns the outcome and the
/// directory its files went to.
pub fn run_train(settings: &TrainSettings) -> Result<(TrainOutcome, PathBuf)> {
    settings.settings.check().map_err(anyhow::Error::msg)?;
    let (params, resumed) = starting_point(settings)?;
    let (device, device_label) = app::resolve_device(&settings.device, "training")?;
    if let Some(before) = resumed.as_ref().and_then(|s| s.run.device.as_deref()) {
        if before != device_label {
            crate::errln!("note: this run started on {before}; it continues on {device_label}");
        }
    }
    let s = &settings.settings;
    let data = app::load_data(&settings.data_dir, s.train_limit, s.test_limit)?;
    let digest = data_digest(&data);
    let metrics_target = check_inputs(settings, &data, &params, &digest)?;
    let run = run_settings(settings, &params, &device_label, digest);
    let claim = match (&settings.resume, settings.overwrite) {
        (Some(_), _) => Claim::Resume,
        (None, true) => Claim::Overwrite,
        (None, false) => Claim::Fresh,
    };
    let run_dir = RunDir::claim(settings.out_dir.as_deref(), claim)?;
    // An automatic run directory is known only now (a chosen one was checked above).
    if let (Some(path), Some(target), None) =
        (&settings.metrics, &metrics_target, &settings.out_dir)
    {
        if let Err(error) = metricsfile::check_not_run_file(path, target, run_dir.path()) {
            run_dir.discard_if_unused();
            return Err(error);
        }
    }
    let result = train_in(settings, &run_dir, params, resumed, device, run, data);
    if result.is_err() {
        run_dir.discard_if_unused();
        return result.map(|outcome| (outcome, PathBuf::new()));
    }
    result.map(|outcome| (outcome, run_dir.path().to_path_buf()))
}

/// The phases after the run directory is claimed: build the backend, train, write.
fn train_in(
    settings: &TrainSettings,
    run_dir: &RunDir,
    params: Params,
    resumed: Option<RunState>,
    device: app::Device,
    run: RunSettings,
    data: Mnist,
) -> Result<TrainOutcome> {
    print_header(&data, &params);
    let train_count = data.train.len();
    let test_images = data.test.clone();
    let s = &settings.settings;
    let mut backend = app::make_backend(&device, params.clone(), s.hyper(), data)?;
    let mut writer = RunWriter {
        console: Console::default(),
        settings,
        run,
        run_dir,
        history: Vec::new(),
        checkpoint_epoch: None,
    };
    let mut partial = StepProgress::default();
    if let Some(state) = &resumed {
        backend.load(&params, Some(&state.optim))?;
        partial = state.partial.unwrap_or_default();
        writer.resume_from(state)?;
    }
    crate::outln!(
        "device: {} | batch {} ({} steps/epoch), Adam lr {}, seed {}{}",
        backend.name(),
        s.options.batch_size,
        steps_per_epoch(train_count, s.options.batch_size),
        format_lr(s.lr),
        s.options.seed,
        if s.options.augment { ", augmented" } else { "" }
    );
    let start = StartAt {
        first_epoch: resumed.as_ref().map_or(0, |s| s.epochs_done),
        partial,
    };
    let stop = interrupt::stop_requested;
    let training = train_from(backend.as_mut(), &s.options, &start, &mut writer, &stop);
    let outcome = crate::host::block_on(training).map_err(|error| writer.explain(error))?;
    crate::outln!(
        "Test accuracy: {:.2}% (loss {:.4})",
        outcome.final_eval.accuracy * 100.0,
        outcome.final_eval.loss
    );
    write_outputs(&mut writer, &test_images, &outcome).map_err(|error| writer.explain(error))?;
    Ok(outcome)
}

/// A learning rate as people write it: `0.001`, and `1e-9` rather than its long decimal.
fn format_lr(lr: f32) -> String {
    if (1e-4..1e6).contains(&lr) {
        lr.to_string()
    } else {
        format!("{lr:e}")
    }
}

fn print_header(data: &Mnist, params: &Params) {
    let (train, test) = (&data.train, &data.test);
    crate::outln!(
        "train: {} × {} × {}, test: {} × {} × {}",
        train.len(),
        train.rows,
        train.cols,
        test.len(),
        test.rows,
        test.cols
    );
    let config = &params.config;
    let trainable = config.parameter_count().unwrap_or(0);
    crate::outln!(
        "model: {} ({trainable} trainable parameters), pixels {}",
        config.describe(),
        if config.raw_pixels {
            "raw 0..255"
        } else {
            "scaled to [0, 1]"
        }
    );
}

fn print_resume(dir: &Path, state: &RunState, epochs: usize) {
    if state.partial.is_none() && state.epochs_done >= epochs {
        crate::outln!(
            "finishing {}: epoch {epochs} of {epochs} is done; writing the model, the pictures \
             and the metrics from its checkpoint, without training",
            dir.display()
        );
        return;
    }
    match state.partial {
        Some(p) => crate::outln!(
            "resuming {} in epoch {} after step {} (of {epochs} epochs)",
            dir.display(),
            state.epochs_done + 1,
            p.steps_done,
        ),
        None => crate::outln!(
            "resuming {} after epoch {} of {epochs}",
            dir.display(),
            state.epochs_done
        ),
    }
}

/// The model, the pictures, then the list of what was written.
fn write_outputs(
    writer: &mut RunWriter,
    test_images: &data::Dataset,
    outcome: &TrainOutcome,
) -> Result<()> {
    let dir = writer.run_dir;
    let model = &outcome.model;
    modelfile::save_model(&model.params, model.optim.step, &dir.file(MODEL))?;
    report::draw_predictions(
        test_images,
        writer.settings.grid_offset,
        &outcome.final_eval.predictions,
        &dir.file(PREDICTIONS),
    )?;
    let mut written = vec![MODEL, PREDICTIONS, METRICS, CHECKPOINT];
    if !writer.history.is_empty() {
        report::draw_curves(&writer.history, &dir.file(CURVES))?;
        written.insert(2, CURVES);
    }
    crate::outln!("wrote:");
    for name in written {
        crate::outln!("  {}", dir.file(name).display());
    }
    if let Some(metrics) = &writer.settings.metrics {
        crate::outln!("  {}", metrics.display());
    }
    Ok(())
}

/// Writes the run's per-epoch files: `metrics.jsonl` (and `--metrics`) and the checkpoint.
struct RunWriter<'a> {
    console: Console,
    settings: &'a TrainSettings,
    run: RunSettings,
    run_dir: &'a RunDir,
    history: Vec<EpochRecord>,
    /// The epoch whose end the checkpoint on disk holds (`None`: no checkpoint of this
    /// run exists yet).
    checkpoint_epoch: Option<usize>,
}

impl RunWriter<'_> {
    /// Write the metrics so far to `path` (`None`: the run's own metrics.jsonl).
    fn write_metrics(&self, path: Option<&Path>) -> Result<()> {
        let mut text = String::new();
        for record in &self.history {
            text.push_str(&serde_json::to_string(record)?);
            text.push('\n');
        }
        let own = self.run_dir.file(METRICS);
        let path = path.unwrap_or(&own);
        write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write metrics file {}", path.display()))
    }

    /// Continue from the checkpoint's `state`: its history, said where; the metrics
    /// files are rewritten to list the checkpoint's epochs, whatever an earlier failure
    /// left in them.
    fn resume_from(&mut self, state: &RunState) -> Result<()> {
        self.history = state.history.clone();
        self.checkpoint_epoch = Some(state.epochs_done);
        let epochs = self.settings.settings.options.epochs;
        print_resume(self.run_dir.path(), state, epochs);
        self.write_all_metrics()
            .map_err(|error| self.explain(error))
    }

    /// `metrics.jsonl`, then the `--metrics` file.
    fn write_all_metrics(&self) -> Result<()> {
        self.write_metrics(None)?;
        if let Some(path) = &self.settings.metrics {
            self.write_metrics(Some(path))?;
        }
        Ok(())
    }

    fn save_checkpoint(
        &self,
        model: &Snapshot,
        epochs_done: usize,
        partial: Option<StepProgress>,
    ) -> Result<()> {
        let state = RunState {
            optim: model.optim.clone(),
            epochs_done,
            run: self.run.clone(),
            history: self.history.clone(),
            partial,
        };
        modelfile::save_checkpoint(&model.params, &state, &self.run_dir.file(CHECKPOINT))?;
        Ok(())
    }

    /// The error that ended training, as the user should read it: an interrupt names
    /// the checkpoint to resume from; a divergence says whether a checkpoint of this run
    /// is left, and from which epoch.
    fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        let dir = self.run_dir.path();
        if let Some(stopped) = error.downcast_ref::<Stopped>() {
            return Interrupted {
                epoch: stopped.epoch,
                steps_done: stopped.progress.steps_done,
                steps_total: stopped.progress.steps_total,
                checkpoint: self.run_dir.file(CHECKPOINT).display().to_string(),
                resume: resume_command(dir, &self.settings.device),
            }
            .into();
        }
        let diverged = error.downcast_ref::<Diverged>().is_some()
            || error.downcast_ref::<NonFinite>().is_some();
        let checkpoint = self.run_dir.file(CHECKPOINT);
        match (self.checkpoint_epoch, diverged) {
            (Some(epoch), true) => crate::errln!(
                "note: the last checkpoint of this run, {} (from epoch {epoch}), is unchanged",
                checkpoint.display()
            ),
            (None, true) => {
                crate::errln!("note: no epoch of this run finished, so it has no checkpoint")
            }
            // A write failed (a full disk): the checkpoint on disk is whole (files are
            // replaced atomically), and the run continues from it.
            (Some(epoch), false) => {
                return WithNote {
                    error,
                    note: format!(
                        "the last checkpoint of this run, {} (from epoch {epoch}), is intact; \
                         once there is room, continue it with: {}",
                        checkpoint.display(),
                        resume_command(dir, &self.settings.device)
                    ),
                }
                .into()
            }
            (None, false) => {}
        }
        error
    }
}

/// An error followed by a note on a line of its own.
#[derive(Debug, thiserror::Error)]
#[error("{error:#}\nnote: {note}")]
struct WithNote {
    error: anyhow::Error,
    note: String,
}

/// The command that continues the run in `dir` on the same device.
fn resume_command(dir: &Path, device: &DeviceRequest) -> String {
    let quote = |text: &str| {
        let plain = text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=,@".contains(c));
        if plain {
            text.to_string()
        } else {
            format!("'{}'", text.replace('\'', "'\\''"))
        }
    };
    let mut command = format!(
        "mnist-gpu train --resume {}",
        quote(&dir.display().to_string())
    );
    match device {
        DeviceRequest::Cpu => command.push_str(" --cpu-fallback"),
        DeviceRequest::Gpu(choice) => {
            for (flag, value) in [
                ("--backend", &choice.backend),
                ("--adapter", &choice.adapter),
            ] {
                if let Some(value) = value {
                    command.push_str(&format!(" {flag} {}", quote(value)));
                }
            }
        }
        DeviceRequest::Auto => {}
    }
    command
}

impl Observer for RunWriter<'_> {
    fn epoch_started(&mut self, epoch: usize, epochs: usize, start: &StepProgress) {
        self.console.epoch_started(epoch, epochs, start);
    }
    fn ended_early(&mut self) {
        self.console.ended_early();
    }
    fn step(&mut self, progress: &StepProgress) {
        self.console.step(progress);
    }
    fn interrupted(
        &mut self,
        epoch: usize,
        progress: &StepProgress,
        model: &Snapshot,
    ) -> Result<()> {
        if progress.steps_done >= progress.steps_total {
            return Ok(()); // the end-of-epoch checkpoint is already on disk
        }
        // No step taken yet: the checkpoint is that of the epoch's start.
        let partial = (progress.steps_done > 0).then_some(*progress);
        self.save_checkpoint(model, epoch - 1, partial)
    }
    fn epoch_finished(
        &mut self,
        record: &EpochRecord,
        epochs: usize,
        model: &Snapshot,
    ) -> Result<()> {
        self.console.epoch_finished(record, epochs, model)?;
        self.history.push(record.clone());
        self.save_checkpoint(model, record.epoch, None)?;
        self.checkpoint_epoch = Some(record.epoch);
        // After the checkpoint: a failure here leaves the epoch resumable, and the
        // metrics never list an epoch the checkpoint lacks.
        self.write_all_metrics()
    }
}
