//! The wgpu trainer's errors. Every failure is a [`DeviceError`] whose message is a
//! complete user-facing sentence on one line (what was asked, what was found, what to
//! do); nothing panics.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("unknown {flag} value '{given}': valid backends are vulkan, gl, metal, dx12")]
    UnknownBackend { flag: String, given: String },
    #[error("no GPU adapter found ({searched}); use --cpu-fallback to train on the CPU")]
    NoAdapter { searched: String },
    #[error("{flag} '{wanted}' matches no adapter; found:\n{found}\n(choose one by index, name or backend, or use --cpu-fallback to train on the CPU)")]
    AdapterNotFound {
        flag: String,
        wanted: String,
        found: String,
    },
    #[error("{flag} '{wanted}' matches {count} adapters: {matches}; choose one by its index (e.g. {flag} {first}) or narrow the search with --backend")]
    AmbiguousAdapter {
        flag: String,
        wanted: String,
        count: usize,
        matches: String,
        first: usize,
    },
    #[error("adapter '{adapter}' cannot run the trainer: {reason} (choose another with --adapter, or use --cpu-fallback)")]
    Unsupported { adapter: String, reason: String },
    #[error("could not open a device on adapter '{adapter}': {message} (use --cpu-fallback to train on the CPU)")]
    RequestDevice { adapter: String, message: String },
    #[error("GPU error: {} (use --cpu-fallback to train on the CPU)", one_line(.0))]
    Gpu(String),
    #[error("the GPU device was lost: {} (use --cpu-fallback to train on the CPU)", one_line(.0))]
    DeviceLost(String),
}

/// wgpu's messages span several lines (`Validation Error\n\nCaused by:\n  In …`): join
/// them into one, so every error stays a single line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "Caused by:")
        .collect::<Vec<_>>()
        .join(": ")
}
