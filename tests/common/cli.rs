//! Shared helpers for the tests that run the `mnist-gpu` binary: the runner, the
//! table-driven bad-input check, small data sets and a valid checkpoint to break.

#![allow(dead_code)]

use flate2::write::GzEncoder;
use flate2::Compression;
use mnist_gpu::data::{self, write_idx};
use mnist_gpu::model::{ModelConfig, OptimState, Params};
use mnist_gpu::modelfile::{self, RunSettings, RunState};
use mnist_gpu::settings::{Settings, TrainOptions};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary, with a runtime directory for Mesa, backtraces on (so a panic shows), the
/// interrupt test hook cleared, and a scratch working directory under `target/`: a run
/// without `--out-dir` makes `runs/run-NNN` there, never in the checkout.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mnist-gpu"));
    cmd.current_dir(scratch_dir())
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("RUST_BACKTRACE", "1")
        .env_remove("MNIST_GPU_INTERRUPT_AT");
    cmd
}

/// This test process's working directory for the binary: a fresh folder in cargo's
/// scratch space for integration tests (`target/tmp/`), kept until `cargo clean`.
pub fn scratch_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("cwd-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("a scratch directory under target/tmp")
            .keep()
    })
}

/// Whether `mnist-gpu adapters` (with `--backend BACKEND` when given) lists an adapter;
/// with what it printed on stderr, to say why not.
pub fn adapter_listed(backend: Option<&str>) -> (bool, String) {
    let mut cmd = bin();
    cmd.arg("adapters");
    if let Some(backend) = backend {
        cmd.args(["--backend", backend]);
    }
    let out = cmd.output().expect("the binary runs");
    // Each adapter's line starts with its number, `[N]`.
    let listed = out.status.success() && text(&out.stdout).lines().any(|l| l.starts_with('['));
    (listed, text(&out.stderr).trim().to_string())
}

/// Run the binary with `args` to the end.
pub fn mnist_gpu<S: AsRef<OsStr>>(args: &[S]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

/// Run the binary with `args`, which must succeed (else its output is shown).
pub fn succeed<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> Output {
    let out = mnist_gpu(args);
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// The run printed no panic (the binary runs with RUST_BACKTRACE=1).
pub fn no_panic(out: &Output) {
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
        "{stderr}"
    );
}

/// Every parameter and BatchNorm statistic of `p` as bits, for exact comparisons.
pub fn bits(p: &Params) -> Vec<u32> {
    p.trainable
        .iter()
        .chain(&p.moving_mean)
        .chain(&p.moving_var)
        .map(|v| v.to_bits())
        .collect()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn s(path: &Path) -> String {
    path.display().to_string()
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// One bad input: the arguments, the words the error must contain, and whether the
/// error must fit on one line (adapter errors list the adapters found, one per line).
pub struct Case {
    pub what: String,
    pub args: Vec<String>,
    pub words: Vec<String>,
    pub one_line: bool,
}

pub fn case(what: &str, args: &[&str], words: &[&str]) -> Case {
    Case {
        what: what.to_string(),
        args: strings(args),
        words: strings(words),
        one_line: true,
    }
}

/// What is wrong with one case's run (nothing: it failed as it should).
fn problems(c: &Case, out: &Output) -> Vec<String> {
    let stderr = text(&out.stderr);
    let mut problems = Vec::new();
    if out.status.success() {
        problems.push("succeeded".to_string());
    }
    if out.status.code() != Some(1) && out.status.code() != Some(2) {
        problems.push(format!("exit status {:?}", out.status));
    }
    if stderr.contains("panicked") || stderr.contains("stack backtrace") {
        problems.push("panicked".to_string());
    }
    for word in &c.words {
        if !stderr.contains(word.as_str()) {
            problems.push(format!("lacks '{word}'"));
        }
    }
    // clap's own errors add a usage line and a `--help` tip after the error line.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            !l.trim().is_empty()
                && !l.starts_with("note:")
                && !l.starts_with("For more information")
        })
        .collect();
    let clap = lines.iter().any(|l| l.starts_with("Usage:"));
    if c.one_line && !clap && lines.len() != 1 {
        problems.push(format!("{} lines", lines.len()));
    }
    if !lines.first().is_some_and(|l| l.starts_with("error: ")) {
        problems.push("no 'error: ' line first".to_string());
    }
    problems
}

/// Run every case; collect all failures before failing, so one run shows them all.
pub fn check(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in &cases {
        let out = mnist_gpu(&c.args);
        let found = problems(c, &out);
        if !found.is_empty() {
            failures.push(format!(
                "{}: {}\n  stderr: {}",
                c.what,
                found.join(", "),
                text(&out.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The base of every flag case: a tiny CPU run that would succeed.
pub fn train_with(extra: &[&str], out: &str) -> Vec<String> {
    let mut args = strings(&[
        "train",
        "--cpu-fallback",
        "--epochs",
        "1",
        "--train-limit",
        "64",
        "--test-limit",
        "10",
        "--out-dir",
        out,
    ]);
    args.extend(strings(extra));
    args
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A small valid data set in `dir`: 40 training and 8 test images of `side`×`side`.
pub fn small_set(dir: &Path, side: u32, test_side: u32) {
    small_set_of(dir, (side, side), (test_side, test_side), 40, 8);
}

/// A data set of `train` and `test` pseudo-random images of the given (rows, cols).
pub fn small_set_of(dir: &Path, shape: (u32, u32), test_shape: (u32, u32), train: u32, test: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let images = |n: u32, (rows, cols): (u32, u32)| -> Vec<u8> {
        (0..n * rows * cols)
            .map(|p| (p.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect()
    };
    let labels = |n: u32| (0..n).map(|i| (i % 10) as u8).collect::<Vec<u8>>();
    let idx =
        |name: &str, dims: &[u32], bytes: &[u8]| write_idx(&dir.join(name), dims, bytes).unwrap();
    idx(
        data::TRAIN_IMAGES,
        &[train, shape.0, shape.1],
        &images(train, shape),
    );
    idx(data::TRAIN_LABELS, &[train], &labels(train));
    idx(
        data::TEST_IMAGES,
        &[test, test_shape.0, test_shape.1],
        &images(test, test_shape),
    );
    idx(data::TEST_LABELS, &[test], &labels(test));
}

/// A data directory with one file broken by `damage`.
pub fn broken_set(root: &Path, name: &str, file: &str, damage: impl FnOnce(&Path)) -> PathBuf {
    let dir = root.join(name);
    small_set(&dir, 28, 28);
    damage(&dir.join(file));
    dir
}

pub fn rewrite(path: &Path, f: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, f(bytes)).unwrap();
}

pub fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// The state of a valid checkpoint of a fresh default model, after no epoch, for a run
/// on the built-in data (64 training and 10 test samples, batch 32).
pub fn fresh_run_state(params: &Params) -> RunState {
    RunState {
        optim: OptimState::new(params.layout.total),
        epochs_done: 0,
        run: RunSettings {
            settings: Settings {
                model: params.config.clone(),
                lr: 0.001,
                options: TrainOptions {
                    epochs: 1,
                    batch_size: 32,
                    seed: 1,
                    shuffle: true,
                    augment: false,
                },
                train_limit: Some(64),
                test_limit: Some(10),
            },
            data_dir: data::builtin_dir(),
            grid_offset: 0,
            device: Some("cpu".into()),
            metrics: None,
            data_digest: None,
        },
        history: Vec::new(),
        partial: None,
    }
}

/// Write a valid default model and a checkpoint of a fresh run (see [`fresh_run_state`])
/// into `dir`: (`dir/model.safetensors`, `dir/checkpoint.safetensors`).
pub fn model_and_checkpoint(dir: &Path) -> (PathBuf, PathBuf) {
    let params = Params::init(&ModelConfig::default(), 7);
    let model = dir.join("model.safetensors");
    modelfile::save_model(&params, 0, &model).unwrap();
    let checkpoint = dir.join("checkpoint.safetensors");
    modelfile::save_checkpoint(&params, &fresh_run_state(&params), &checkpoint).unwrap();
    (model, checkpoint)
}

/// Copy the safetensors file `src` to `dst`, passing each tensor through `edit` (`None`
/// drops it) and the metadata through `meta`.
pub fn edit_safetensors(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&str, Dtype, Vec<usize>, Vec<u8>) -> Option<(Dtype, Vec<usize>, Vec<u8>)>,
    meta: impl Fn(&mut HashMap<String, String>),
) {
    let bytes = std::fs::read(src).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap_or_default();
    meta(&mut metadata);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let raw: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(name, view)| {
            edit(
                &name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
            .map(|(d, s, b)| (name, d, s, b))
        })
        .collect();
    let views: Vec<(String, TensorView)> = raw
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(dst, safetensors::serialize(views, Some(metadata)).unwrap()).unwrap();
}

/// Copy `src` to `dst` with only its metadata changed by `meta`.
pub fn edit_metadata(src: &Path, dst: &Path, meta: impl Fn(&mut HashMap<String, String>)) {
    edit_safetensors(src, dst, |_, d, s, b| Some((d, s, b)), meta);
}
