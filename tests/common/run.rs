//! The README's training runs, each done once per test binary: the default run
//! (`mnist-gpu train --cpu-fallback`, every other flag at its default), the convnet's
//! (`train --model convnet --cpu-fallback`), and both with `--augment`, with their
//! printed output and their models.
//! The CPU path is deterministic, so every binary gets the same models and figures.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

pub struct DefaultRun {
    /// Everything `train` printed on stdout.
    pub stdout: String,
    /// The run directory (`model.safetensors`, `metrics.jsonl`, …).
    pub dir: PathBuf,
}

impl DefaultRun {
    pub fn model(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
}

/// Train with the default settings on the CPU (about 5 s in release), once per binary.
pub fn default_run() -> &'static DefaultRun {
    static RUN: OnceLock<DefaultRun> = OnceLock::new();
    RUN.get_or_init(|| train_once("default-run", &[]))
}

/// Train the convnet with its defaults on the CPU (15 epochs, about 2 to 3 minutes on
/// two cores), once per binary.
pub fn convnet_run() -> &'static DefaultRun {
    static RUN: OnceLock<DefaultRun> = OnceLock::new();
    RUN.get_or_init(|| train_once("convnet-run", &["--model", "convnet"]))
}

/// The default run with `--augment` (about 10 s), once per binary.
pub fn augmented_run() -> &'static DefaultRun {
    static RUN: OnceLock<DefaultRun> = OnceLock::new();
    RUN.get_or_init(|| train_once("augmented-run", &["--augment"]))
}

/// The convnet's run with `--augment` (a few minutes), once per binary.
pub fn augmented_convnet_run() -> &'static DefaultRun {
    static RUN: OnceLock<DefaultRun> = OnceLock::new();
    RUN.get_or_init(|| {
        train_once(
            "augmented-convnet-run",
            &["--model", "convnet", "--augment"],
        )
    })
}

/// One of the runs above: trained when first asked for.
pub type RunOnce = fn() -> &'static DefaultRun;

/// The README's four models, named as its tables name them (the convnets and the
/// augmented runs train when first asked for).
pub fn readme_models() -> [(&'static str, RunOnce); 4] {
    [
        ("MLP", default_run),
        ("MLP --augment", augmented_run),
        ("convnet", convnet_run),
        ("convnet --augment", augmented_convnet_run),
    ]
}

/// `train --cpu-fallback FLAGS` into a directory `name` under target/ (one per test
/// binary: binaries may run concurrently).
fn train_once(name: &str, flags: &[&str]) -> DefaultRun {
    let exe = std::env::current_exe().expect("test binary path");
    let binary = exe.file_stem().expect("binary name").to_string_lossy();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{binary}"));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_mnist-gpu"))
        .args(["train", "--cpu-fallback"])
        .args(flags)
        .arg("--out-dir")
        .arg(&dir)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "training run {flags:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    DefaultRun { stdout, dir }
}
