//! The commands behind the CLI, as library functions: load the data, build the backend
//! the user asked for, train, write what a run leaves behind, evaluate, predict.

use crate::backend::Backend;
use crate::cpu::{self, CpuBackend};
use crate::data::{self, Mnist};
use crate::gpu::{self, DeviceChoice, GpuBackend};
use crate::model::{Hyper, Params, CLASSES};
use crate::modelfile;
use crate::{preprocess, report};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The hardware the flags ask for; [`resolve_device`] turns it into a [`Device`].
#[derive(Clone, Debug)]
pub enum DeviceRequest {
    /// No device flag: a hardware GPU if wgpu finds one, else the CPU.
    Auto,
    Cpu,
    Gpu(DeviceChoice),
}

/// Which hardware trains: a resolved [`DeviceRequest`].
#[derive(Clone, Debug)]
pub enum Device {
    Cpu,
    Gpu(DeviceChoice),
}

impl DeviceRequest {
    /// The request these flags make: `--cpu-fallback`, else an explicit `--backend` /
    /// `--adapter` (or wgpu's `WGPU_BACKEND` / `WGPU_ADAPTER_NAME`), else automatic.
    pub fn from_flags(cpu_fallback: bool, choice: DeviceChoice) -> DeviceRequest {
        let env_set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        if cpu_fallback {
            DeviceRequest::Cpu
        } else if choice.backend.is_some()
            || choice.adapter.is_some()
            || env_set("WGPU_BACKEND")
            || env_set("WGPU_ADAPTER_NAME")
        {
            DeviceRequest::Gpu(choice)
        } else {
            DeviceRequest::Auto
        }
    }
}

/// What [`DeviceRequest::Auto`] means on this machine: a hardware GPU, else the CPU (with a note
/// that says what will run there: `"training"`, `"evaluating"`).
fn resolve_auto(activity: &str) -> Device {
    match gpu::list_adapters(&DeviceChoice::default()) {
        Ok(list) if list.iter().any(|a| a.compute && !a.software) => {
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
            crate::errln!(
                "note: no hardware GPU adapter found (wgpu sees: {seen}); {activity} on the CPU. \
                 Pass --adapter NAME to run the WGSL kernels on a software adapter anyway."
            );
            Device::Cpu
        }
        Err(error) => {
            crate::errln!("note: no GPU adapter available ({error}); {activity} on the CPU");
            Device::Cpu
        }
    }
}

/// Load the data set and apply `--train-limit` / `--test-limit`, limits of a checked
/// [`crate::settings::Settings`] (a limit above the data set's size uses the whole set
/// and says so).
pub fn load_data(
    data_dir: &Path,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
) -> Result<Mnist> {
    let data = Mnist::load_limited(data_dir, train_limit, test_limit)?;
    limit_note(train_limit, data.train.len(), "--train-limit");
    limit_note(test_limit, data.test.len(), "--test-limit");
    Ok(data)
}

/// A note when `flag`'s `limit` asked for more samples than the `kept` there are.
fn limit_note(limit: Option<usize>, kept: usize, flag: &str) {
    if let Some(note) = crate::settings::limit_note(limit, kept, flag) {
        crate::errln!("{note}");
    }
}

/// The device `request` means here, checked before anything slow is loaded: `--backend`
/// and `--adapter` must name an adapter that exists. Returns it with its name for the
/// checkpoint (`cpu`, or the adapter and its backend). `activity` (`"training"`,
/// `"evaluating"`) is what the note about falling back to the CPU names.
pub fn resolve_device(request: &DeviceRequest, activity: &str) -> Result<(Device, String)> {
    let device = match request {
        DeviceRequest::Auto => resolve_auto(activity),
        DeviceRequest::Cpu => Device::Cpu,
        DeviceRequest::Gpu(choice) => Device::Gpu(choice.clone()),
    };
    let label = match &device {
        Device::Gpu(choice) => {
            let adapter = gpu::adapters::chosen_adapter(choice)?;
            format!("{} ({})", adapter.name, adapter.backend)
        }
        Device::Cpu => "cpu".to_string(),
    };
    Ok((device, label))
}

/// Build the backend for `device`: the CPU reference or a wgpu adapter.
pub fn make_backend(
    device: &Device,
    params: Params,
    hyper: Hyper,
    data: Mnist,
) -> Result<Box<dyn Backend>> {
    Ok(match device {
        Device::Gpu(choice) => Box::new(GpuBackend::new(params, hyper, data, choice)?),
        Device::Cpu => Box::new(CpuBackend::new(params, hyper, data)),
    })
}

/// `mnist-gpu eval`: test loss, accuracy and confusion matrix of a saved model.
pub fn run_eval(
    model: &Path,
    data_dir: &Path,
    test_limit: Option<usize>,
    request: &DeviceRequest,
    confusion_png: Option<&Path>,
) -> Result<f64> {
    let params = modelfile::load_model(model)?;
    let (device, _) = resolve_device(request, "evaluating")?;
    if test_limit == Some(0) {
        bail!("--test-limit must be at least 1");
    }
    // Evaluation needs the test set only: the backend gets an empty training set.
    let data = Mnist::load_test(data_dir, test_limit)?;
    limit_note(test_limit, data.test.len(), "--test-limit");
    let labels = data.test.labels.clone();
    let mut backend = make_backend(&device, params, Hyper::default(), data)?;
    let eval = crate::host::block_on(backend.evaluate())?;
    crate::train::check_finite_eval_loss(&eval, &model.display().to_string())?;
    crate::outln!("model: {} | device: {}", model.display(), backend.name());
    crate::outln!(
        "test: {} samples - loss: {:.4} - accuracy: {:.2}%",
        labels.len(),
        eval.loss,
        eval.accuracy * 100.0
    );
    let matrix = report::confusion_matrix(&labels, &eval.predictions);
    crate::outln!(
        "confusion matrix (rows: true digit, columns: predicted):\n{}",
        report::format_confusion(&matrix)
    );
    if let Some(path) = confusion_png {
        report::draw_confusion(&matrix, path)?;
        crate::outln!("wrote {}", path.display());
    }
    Ok(eval.accuracy)
}

/// The exit status is already explained by the lines printed ([`run_predict`]'s
/// per-file errors): `main` exits with 1 and prints nothing more.
#[derive(Debug)]
pub struct AlreadyReported;

impl std::fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("see the errors above")
    }
}

impl std::error::Error for AlreadyReported {}

/// `mnist-gpu predict`: predict every image; each file that fails gets its own `error:` line on stderr (and an
/// `error` entry in `--json`), each doubtful answer a `warning:` line, and the exit code
/// is 1 at the end if any file failed.
pub fn run_predict(model: &Path, images: &[PathBuf], json: bool) -> Result<()> {
    if images.iter().any(|p| p.as_os_str() == "-") {
        bail!(
            "-: reading a picture from standard input is not supported; give the picture's \
             file name"
        );
    }
    let outcomes = predict(model, images)?;
    let mut failed = 0;
    for outcome in &outcomes {
        match outcome {
            PredictOutcome::Predicted(p) => {
                if !json {
                    crate::outln!("{}: {} ({})", p.file, p.digit, top3_text(&p.top3));
                }
                for warning in &p.warnings {
                    crate::errln!("warning: {}: {warning}", p.file);
                }
            }
            PredictOutcome::Failed(f) => {
                failed += 1;
                crate::errln!("error: {}", f.error);
            }
        }
    }
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&outcomes)?);
    }
    if failed == 0 {
        return Ok(());
    }
    if outcomes.len() > 1 {
        crate::errln!(
            "note: {failed} of {} images could not be read; the others are above",
            outcomes.len()
        );
    }
    Err(AlreadyReported.into())
}

fn top3_text(top3: &[(u8, f32)]) -> String {
    let parts: Vec<String> = top3
        .iter()
        .map(|(d, prob)| format!("{d}: {:.1}%", prob * 100.0))
        .collect();
    parts.join(", ")
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
    let probabilities = cpu::infer(&params, Hyper::default().bn_eps, &pixels);
    crate::train::check_finite_outputs(
        &probabilities,
        &model.display().to_string(),
        "it cannot predict",
    )?;
    let mut probabilities = probabilities.into_iter();
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
    crate::output::stdout_text(format_args!("{}", gpu::format_adapters(&list)));
    Ok(())
}

/// The built-in data directory, for callers that take an optional `--data-dir`.
pub fn data_dir_or_builtin(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(data::builtin_dir)
}
