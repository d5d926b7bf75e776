//! The default training run (`mnist-gpu train --cpu-fallback`, every other flag at its
//! default), done once per test binary: its printed output and its model. The CPU path
//! is deterministic, so every binary gets the same model and the same printed figures.

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
    RUN.get_or_init(|| {
        // Under target/, one directory per test binary (binaries may run concurrently).
        let exe = std::env::current_exe().expect("test binary path");
        let name = exe.file_stem().expect("binary name").to_string_lossy();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("default-run-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(env!("CARGO_BIN_EXE_mnist-gpu"))
            .args(["train", "--cpu-fallback", "--out-dir"])
            .arg(&dir)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .expect("the binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "default training run failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        DefaultRun { stdout, dir }
    })
}
