//! The commands behind the CLI, as library functions: load the data, build the backend
//! the user asked for, train, write what a run leaves behind, evaluate, predict.

use crate::backend::Backend;
use crate::backend::{Diverged, StepProgress};
use crate::cpu::{self, CpuBackend};
use crate::data::{self, Mnist};
use crate::fsutil::{ensure_writable_dir, write_atomic};
use crate::gpu::{self, AdapterSummary, DeviceChoice, GpuBackend};
use crate::interrupt::{self, Interrupted};
use crate::model::{Hyper, ModelConfig, Params, CLASSES};
use crate::modelfile::{self, RunState};
use crate::progress::Console;
use crate::train::{train_from, EpochRecord, Observer, Stopped, TrainOptions, TrainOutcome};
use crate::{preprocess, report};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Which hardware trains.
#[derive(Clone, Debug)]
pub enum Device {
    /// No device flag: a hardware GPU if wgpu finds one, else the CPU.
    Auto,
    Cpu,
    Gpu(DeviceChoice),
}

impl Device {
    /// The device for these flags: `--cpu-fallback`, else an explicit `--backend` /
    /// `--adapter` (or wgpu's `WGPU_BACKEND` / `WGPU_ADAPTER_NAME`), else automatic.
    pub fn from_flags(cpu_fallback: bool, choice: DeviceChoice) -> Device {
        let env_set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        if cpu_fallback {
            Device::Cpu
        } else if choice.backend.is_some()
            || choice.adapter.is_some()
            || env_set("WGPU_BACKEND")
            || env_set("WGPU_ADAPTER_NAME")
        {
            Device::Gpu(choice)
        } else {
            Device::Auto
        }
    }
}

/// A software rasteriser (lavapipe, llvmpipe, SwiftShader, WARP): it runs the WGSL
/// kernels correctly but far slower than the CPU path, so it is never picked automatically.
fn is_software(adapter: &AdapterSummary) -> bool {
    let name = adapter.name.to_ascii_lowercase();
    adapter.device_type == "cpu"
        || ["llvmpipe", "lavapipe", "softpipe", "swiftshader", "warp"]
            .iter()
            .any(|s| name.contains(s))
}

/// What `Device::Auto` means on this machine: a hardware GPU, else the CPU (with a note
/// that says what will run there: `"training"`, `"evaluating"`).
fn resolve_auto(activity: &str) -> Device {
    match gpu::list_adapters(&DeviceChoice::default()) {
        Ok(list) if list.iter().any(|a| a.compute && !is_software(a)) => {
            Device::Gpu(DeviceChoice::default())
        }
        Ok(list) => {
            let seen: Vec<String> = list
                .iter()
                .map(|a| format!("{} ({})", a.name, a.backend))
                .collect();
            let seen = if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            };
            eprintln!(
                "note: no hardware GPU adapter found (wgpu sees: {seen}); {activity} on the CPU. \
                 Pass --adapter NAME to run the WGSL kernels on a software adapter anyway."
            );
            Device::Cpu
        }
        Err(error) => {
            eprintln!("note: no GPU adapter available ({error}); {activity} on the CPU");
            Device::Cpu
        }
    }
}

/// Everything `mnist-gpu train` was asked to do.
#[derive(Clone, Debug)]
pub struct TrainSettings {
    pub data_dir: PathBuf,
    pub device: Device,
    pub model: ModelConfig,
    pub hyper: Hyper,
    pub options: TrainOptions,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
    /// Extra copy of the per-epoch metrics (the run directory always has metrics.jsonl).
    pub metrics: Option<PathBuf>,
    /// Where the run's files go (default: the next free `runs/run-NNN`).
    pub out_dir: Option<PathBuf>,
    /// First test image of the predictions grid.
    pub grid_offset: usize,
    /// Start from these weights (fresh optimiser).
    pub init_from: Option<PathBuf>,
    /// Continue the run whose checkpoint is in this directory.
    pub resume: Option<PathBuf>,
}

/// File names inside a run directory.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const MODEL: &str = "model.safetensors";
pub const METRICS: &str = "metrics.jsonl";
pub const PREDICTIONS: &str = "predictions.png";
pub const CURVES: &str = "curves.png";

/// Load the data set and apply `--train-limit` / `--test-limit` (a limit above the data
/// set's size uses the whole set and says so).
pub fn load_data(
    data_dir: &Path,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
) -> Result<Mnist> {
    let mut data = Mnist::load(data_dir)?;
    let limit = |count: Option<usize>, available: usize, flag: &str| -> Result<usize> {
        match count {
            None => Ok(available),
            Some(0) => bail!("{flag} must be at least 1"),
            Some(n) if n > available => {
                eprintln!("note: {flag} {n} is more than the {available} samples available; using all {available}");
                Ok(available)
            }
            Some(n) => Ok(n),
        }
    };
    let train_count = limit(train_limit, data.train.len(), "--train-limit")?;
    let test_count = limit(test_limit, data.test.len(), "--test-limit")?;
    data.train = data.train.truncated(train_count);
    data.test = data.test.truncated(test_count);
    Ok(data)
}

/// Build the backend that trains: the CPU reference or a wgpu adapter.
pub fn make_backend(
    device: &Device,
    params: Params,
    hyper: Hyper,
    data: Mnist,
) -> Result<Box<dyn Backend>> {
    make_backend_for("training", device, params, hyper, data)
}

/// [`make_backend`] for `activity` (`"training"`, `"evaluating"`), which the note about
/// falling back to the CPU names.
pub fn make_backend_for(
    activity: &str,
    device: &Device,
    params: Params,
    hyper: Hyper,
    data: Mnist,
) -> Result<Box<dyn Backend>> {
    let resolved = match device {
        Device::Auto => resolve_auto(activity),
        other => other.clone(),
    };
    Ok(match resolved {
        Device::Gpu(choice) => Box::new(GpuBackend::new(params, hyper, data, &choice)?),
        Device::Cpu | Device::Auto => Box::new(CpuBackend::new(params, hyper, data)),
    })
}

/// The first `runs/run-NNN` that does not exist yet.
pub fn next_run_dir() -> PathBuf {
    (1..)
        .map(|n| Path::new("runs").join(format!("run-{n:03}")))
        .find(|p| !p.exists())
        .expect("some run number is free")
}

/// The run's settings as checkpoint metadata, so `--resume` continues the same run.
fn settings_metadata(s: &TrainSettings, history: &[EpochRecord]) -> HashMap<String, String> {
    let limit = |l: Option<usize>| l.map_or("all".to_string(), |n| n.to_string());
    HashMap::from([
        ("data_dir".into(), s.data_dir.display().to_string()),
        ("epochs".into(), s.options.epochs.to_string()),
        ("batch_size".into(), s.options.batch_size.to_string()),
        ("seed".into(), s.options.seed.to_string()),
        ("shuffle".into(), s.options.shuffle.to_string()),
        ("lr".into(), s.hyper.lr.to_string()),
        ("train_limit".into(), limit(s.train_limit)),
        ("test_limit".into(), limit(s.test_limit)),
        ("grid_offset".into(), s.grid_offset.to_string()),
        (
            "history".into(),
            serde_json::to_string(history).unwrap_or_default(),
        ),
    ])
}

/// Settings to continue the run in `dir`: everything from its checkpoint, except the
/// total `epochs`, `data_dir` and device when given.
pub fn resume_settings(
    dir: &Path,
    epochs: Option<usize>,
    data_dir: Option<PathBuf>,
    device: Device,
) -> Result<TrainSettings> {
    let path = dir.join(CHECKPOINT);
    let (params, state) = modelfile::load_checkpoint(&path)?;
    let get = |key: &str| -> Result<&str> {
        state
            .settings
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("{}: metadata has no '{key}' entry", path.display()))
    };
    let num = |key: &str| -> Result<usize> {
        get(key)?
            .parse()
            .with_context(|| format!("{}: metadata '{key}' is not a number", path.display()))
    };
    let limit = |key: &str| -> Result<Option<usize>> {
        if get(key)? == "all" {
            Ok(None)
        } else {
            num(key).map(Some)
        }
    };
    Ok(TrainSettings {
        data_dir: data_dir.unwrap_or_else(|| PathBuf::from(get("data_dir").unwrap_or_default())),
        device,
        model: params.config.clone(),
        hyper: Hyper {
            lr: get("lr")?
                .parse()
                .with_context(|| format!("{}: metadata 'lr' is not a number", path.display()))?,
            ..Hyper::default()
        },
        options: TrainOptions {
            epochs: epochs.map_or_else(|| num("epochs"), Ok)?,
            batch_size: num("batch_size")?,
            seed: get("seed")?
                .parse()
                .with_context(|| format!("{}: metadata 'seed' is not a number", path.display()))?,
            shuffle: get("shuffle")? == "true",
        },
        train_limit: limit("train_limit")?,
        test_limit: limit("test_limit")?,
        metrics: None,
        out_dir: Some(dir.to_path_buf()),
        grid_offset: num("grid_offset")?,
        init_from: None,
        resume: Some(dir.to_path_buf()),
    })
}

/// Metadata keys of a checkpoint written inside an epoch: the steps of epoch
/// `epochs_done + 1` already taken and their sums, so `--resume` continues from there.
const PARTIAL_STEPS: &str = "epoch_steps_done";
const PARTIAL_SAMPLES: &str = "epoch_samples_done";
const PARTIAL_LOSS: &str = "epoch_loss_sum";
const PARTIAL_CORRECT: &str = "epoch_correct";

/// Test hook: `MNIST_GPU_INTERRUPT_AT=EPOCH:STEP` behaves as if Ctrl-C were pressed
/// during step STEP of epoch EPOCH (both 1-based; the GPU stops at the end of the
/// submission holding that step), so interruption can be tested exactly.
const INTERRUPT_AT_ENV: &str = "MNIST_GPU_INTERRUPT_AT";

fn interrupt_at() -> Option<(usize, usize)> {
    let text = std::env::var(INTERRUPT_AT_ENV).ok()?;
    let (epoch, step) = text.split_once(':')?;
    Some((epoch.trim().parse().ok()?, step.trim().parse().ok()?))
}

/// The partial-epoch progress stored in a checkpoint (`default` when it was written at
/// the end of an epoch).
pub fn partial_epoch(state: &RunState) -> Result<StepProgress> {
    let get = |key: &str| state.settings.get(key).map(String::as_str);
    let Some(steps) = get(PARTIAL_STEPS) else {
        return Ok(StepProgress::default());
    };
    let bad = |key: &str| anyhow::anyhow!("checkpoint metadata '{key}' is not a number");
    let num = |key: &str| -> Result<u64> {
        get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(key))
    };
    Ok(StepProgress {
        steps_done: steps.parse().map_err(|_| bad(PARTIAL_STEPS))?,
        steps_total: 0,
        samples_done: num(PARTIAL_SAMPLES)? as usize,
        loss_sum: get(PARTIAL_LOSS)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .ok_or_else(|| bad(PARTIAL_LOSS))?,
        correct: num(PARTIAL_CORRECT)?,
    })
}

/// Writes the run's per-epoch files: `metrics.jsonl` (and `--metrics`) and the checkpoint.
struct RunWriter<'a> {
    console: Console,
    settings: &'a TrainSettings,
    out_dir: &'a Path,
    history: Vec<EpochRecord>,
}

impl RunWriter<'_> {
    fn write_metrics(&self) -> Result<()> {
        let mut text = String::new();
        for record in &self.history {
            text.push_str(&serde_json::to_string(record)?);
            text.push('\n');
        }
        let mut targets = vec![self.out_dir.join(METRICS)];
        targets.extend(self.settings.metrics.clone());
        for path in targets {
            write_atomic(&path, text.as_bytes())
                .with_context(|| format!("cannot write metrics file {}", path.display()))?;
        }
        Ok(())
    }
}

impl Observer for RunWriter<'_> {
    fn epoch_started(&mut self, epoch: usize, epochs: usize, start: &StepProgress) {
        self.console.epoch_started(epoch, epochs, start);
    }
    fn failed(&mut self) {
        self.console.failed();
    }
    fn step(&mut self, progress: &StepProgress) {
        self.console.step(progress);
    }
    fn interrupted(
        &mut self,
        epoch: usize,
        progress: &StepProgress,
        backend: &mut dyn Backend,
    ) -> Result<()> {
        self.console.interrupted(epoch, progress, backend)?;
        if progress.steps_done >= progress.steps_total {
            return Ok(()); // the end-of-epoch checkpoint is already on disk
        }
        let mut settings = settings_metadata(self.settings, &self.history);
        settings.extend([
            (PARTIAL_STEPS.to_string(), progress.steps_done.to_string()),
            (
                PARTIAL_SAMPLES.to_string(),
                progress.samples_done.to_string(),
            ),
            (PARTIAL_LOSS.to_string(), progress.loss_sum.to_string()),
            (PARTIAL_CORRECT.to_string(), progress.correct.to_string()),
        ]);
        let state = RunState {
            optim: backend.optim_state()?,
            epochs_done: epoch - 1,
            settings,
        };
        modelfile::save_checkpoint(&backend.params()?, &state, &self.out_dir.join(CHECKPOINT))?;
        Ok(())
    }
    fn epoch_finished(
        &mut self,
        record: &EpochRecord,
        epochs: usize,
        backend: &mut dyn Backend,
    ) -> Result<()> {
        self.console.epoch_finished(record, epochs, backend)?;
        self.history.push(record.clone());
        self.write_metrics()?;
        let state = RunState {
            optim: backend.optim_state()?,
            epochs_done: record.epoch,
            settings: settings_metadata(self.settings, &self.history),
        };
        modelfile::save_checkpoint(&backend.params()?, &state, &self.out_dir.join(CHECKPOINT))?;
        Ok(())
    }
}

/// `mnist-gpu train`: the whole run, printed Keras-style; returns the outcome and the
/// directory its files went to.
pub fn run_train(settings: &TrainSettings) -> Result<(TrainOutcome, PathBuf)> {
    let out_dir = settings.out_dir.clone().unwrap_or_else(next_run_dir);
    // Fail before the (long) training if the outputs cannot be written.
    ensure_writable_dir(&out_dir)
        .with_context(|| format!("output directory {} is not writable", out_dir.display()))?;
    if let Some(metrics) = &settings.metrics {
        write_atomic(metrics, b"")
            .with_context(|| format!("cannot create metrics file {}", metrics.display()))?;
    }
    // Read the model or checkpoint before the (slower) data set, so a bad file fails fast.
    let (params, resumed) = match (&settings.resume, &settings.init_from) {
        (Some(dir), _) => {
            let (params, state) = modelfile::load_checkpoint(&dir.join(CHECKPOINT))?;
            (params, Some(state))
        }
        (None, Some(path)) => (modelfile::load_model(path)?, None),
        (None, None) => {
            settings.model.check_size().map_err(anyhow::Error::msg)?;
            (Params::init(&settings.model, settings.options.seed), None)
        }
    };
    let data = load_data(
        &settings.data_dir,
        settings.train_limit,
        settings.test_limit,
    )?;
    let (train_set, test_set) = (&data.train, &data.test);
    println!(
        "train: {} × {} × {}, test: {} × {} × {}",
        train_set.len(),
        train_set.rows,
        train_set.cols,
        test_set.len(),
        test_set.rows,
        test_set.cols
    );
    let train_count = train_set.len();
    let test_images = data.test.clone();

    let trainable: usize = params
        .layout
        .named(&params.config)
        .iter()
        .map(|(_, _, r)| r.len())
        .sum();
    let config = params.config.clone();
    let mut backend = make_backend(
        &settings.device,
        params.clone(),
        settings.hyper.clone(),
        data,
    )?;
    let mut history = Vec::new();
    let mut first_epoch = 0;
    let mut partial = StepProgress::default();
    if let Some(state) = &resumed {
        backend.load(&params, Some(&state.optim))?;
        first_epoch = state.epochs_done;
        partial = partial_epoch(state)
            .with_context(|| format!("{}", out_dir.join(CHECKPOINT).display()))?;
        history = state
            .settings
            .get("history")
            .and_then(|h| serde_json::from_str(h).ok())
            .unwrap_or_default();
        if partial.steps_done > 0 {
            println!(
                "resuming {} in epoch {} after step {} (of {} epochs)",
                out_dir.display(),
                first_epoch + 1,
                partial.steps_done,
                settings.options.epochs
            );
        } else {
            println!(
                "resuming {} after epoch {first_epoch} of {}",
                out_dir.display(),
                settings.options.epochs
            );
        }
    }
    println!(
        "model: {} ({trainable} trainable parameters), pixels {}",
        config.describe(),
        if config.raw_pixels {
            "raw 0..255"
        } else {
            "scaled to [0, 1]"
        }
    );
    println!(
        "device: {} | batch {} ({} steps/epoch), Adam lr {}, seed {}",
        backend.name(),
        settings.options.batch_size,
        train_count.div_ceil(settings.options.batch_size),
        settings.hyper.lr,
        settings.options.seed
    );
    let mut writer = RunWriter {
        console: Console::default(),
        settings,
        out_dir: &out_dir,
        history,
    };
    let hook = interrupt_at();
    let stop = |epoch: usize, steps: usize| {
        interrupt::requested() || hook.is_some_and(|(e, s)| e == epoch && steps >= s)
    };
    let checkpoint = out_dir.join(CHECKPOINT);
    let outcome = match train_from(
        backend.as_mut(),
        train_count,
        &settings.options,
        first_epoch,
        &partial,
        &mut writer,
        &stop,
    ) {
        Ok(outcome) => outcome,
        Err(error) => {
            if let Some(stopped) = error.downcast_ref::<Stopped>() {
                return Err(Interrupted {
                    epoch: stopped.epoch,
                    steps_done: stopped.progress.steps_done,
                    steps_total: stopped.progress.steps_total,
                    checkpoint: checkpoint.display().to_string(),
                    dir: out_dir.display().to_string(),
                }
                .into());
            }
            if error.downcast_ref::<Diverged>().is_some() {
                if checkpoint.exists() {
                    eprintln!(
                        "note: the last good checkpoint, {}, is unchanged",
                        checkpoint.display()
                    );
                } else {
                    eprintln!("note: no epoch finished, so there is no checkpoint");
                }
            }
            return Err(error);
        }
    };
    println!(
        "Test accuracy: {:.2}% (loss {:.4})",
        outcome.final_eval.accuracy * 100.0,
        outcome.final_eval.loss
    );

    let steps = backend.optim_state()?.step;
    modelfile::save_model(&backend.params()?, steps, &out_dir.join(MODEL))?;
    report::draw_predictions(
        &test_images,
        settings.grid_offset,
        &outcome.final_eval.predictions,
        &out_dir.join(PREDICTIONS),
    )?;
    let mut written = vec![MODEL, PREDICTIONS, METRICS, CHECKPOINT];
    if !writer.history.is_empty() {
        report::draw_curves(&writer.history, &out_dir.join(CURVES))?;
        written.insert(2, CURVES);
    }
    println!("wrote:");
    for name in written {
        println!("  {}", out_dir.join(name).display());
    }
    if let Some(metrics) = &settings.metrics {
        println!("  {}", metrics.display());
    }
    Ok((outcome, out_dir))
}

/// `mnist-gpu eval`: test loss, accuracy and confusion matrix of a saved model.
pub fn run_eval(
    model: &Path,
    data_dir: &Path,
    test_limit: Option<usize>,
    device: &Device,
    confusion_png: Option<&Path>,
) -> Result<f64> {
    let params = modelfile::load_model(model)?;
    let mut data = load_data(data_dir, None, test_limit)?;
    // Evaluation needs no training data; keep one sample so every backend has a valid set.
    data.train = data.train.truncated(1);
    let labels = data.test.labels.clone();
    let mut backend = make_backend_for("evaluating", device, params, Hyper::default(), data)?;
    let eval = backend.evaluate()?;
    println!("model: {} | device: {}", model.display(), backend.name());
    println!(
        "test: {} samples - loss: {:.4} - accuracy: {:.2}%",
        labels.len(),
        eval.loss,
        eval.accuracy * 100.0
    );
    let matrix = report::confusion_matrix(&labels, &eval.predictions);
    println!(
        "confusion matrix (rows: true digit, columns: predicted):\n{}",
        report::format_confusion(&matrix)
    );
    if let Some(path) = confusion_png {
        report::draw_confusion(&matrix, path)?;
        println!("wrote {}", path.display());
    }
    Ok(eval.accuracy)
}

/// One image's prediction.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    pub file: String,
    pub digit: u8,
    /// The three most likely digits with their probabilities, most likely first.
    pub top3: Vec<(u8, f32)>,
    /// Why the answer may be wrong: the picture may not show one digit (almost no ink,
    /// several similar marks), or the model is unsure (top probability below 50%).
    pub warnings: Vec<String>,
}

/// A file `predict` could not read, with the one-line reason (which names the file).
#[derive(Clone, Debug, Serialize)]
pub struct PredictFailure {
    pub file: String,
    pub error: String,
}

/// What `predict` made of one file: a prediction or the reason there is none.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum PredictOutcome {
    Predicted(Prediction),
    Failed(PredictFailure),
}

/// Below this top probability a prediction carries a warning.
pub const UNSURE_BELOW: f32 = 0.5;

/// `mnist-gpu predict`: classify image files with a saved model (on the CPU). A file that
/// cannot be read or holds no digit does not stop the others: it gets a
/// [`PredictOutcome::Failed`] in its place. Only an unreadable model is an error.
pub fn predict(model: &Path, images: &[PathBuf]) -> Result<Vec<PredictOutcome>> {
    let params = modelfile::load_model(model)?;
    let prepared: Vec<_> = images
        .iter()
        .map(|path| preprocess::load_digit_detailed(path))
        .collect();
    let pixels: Vec<u8> = prepared
        .iter()
        .flatten()
        .flat_map(|done| done.pixels)
        .collect();
    let mut probabilities = cpu::infer(&params, Hyper::default().bn_eps, &pixels).into_iter();
    Ok(images
        .iter()
        .zip(prepared)
        .map(|(path, done)| match done {
            Ok(done) => {
                let p = probabilities.next().expect("one result per prepared image");
                PredictOutcome::Predicted(ranked(path, &p, done.warnings))
            }
            Err(error) => PredictOutcome::Failed(PredictFailure {
                file: path.display().to_string(),
                error: error.to_string(),
            }),
        })
        .collect())
}

/// The prediction from one image's class probabilities.
fn ranked(path: &Path, probabilities: &[f32], mut warnings: Vec<String>) -> Prediction {
    let mut top: Vec<(u8, f32)> = (0..CLASSES as u8)
        .map(|d| (d, probabilities[d as usize]))
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(3);
    if top[0].1 < UNSURE_BELOW {
        warnings.push(format!(
            "the model is unsure: its top answer has only {:.1}% probability",
            top[0].1 * 100.0
        ));
    }
    Prediction {
        file: path.display().to_string(),
        digit: top[0].0,
        top3: top,
        warnings,
    }
}

/// `mnist-gpu adapters`: the table of every adapter wgpu finds.
pub fn run_adapters(choice: &DeviceChoice) -> Result<()> {
    let list = gpu::list_adapters(choice)?;
    print!("{}", gpu::format_adapters(&list));
    Ok(())
}

/// The built-in data directory, for callers that take an optional `--data-dir`.
pub fn data_dir_or_builtin(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(data::builtin_dir)
}
