//! Shared helpers for the GPU tests: which backends to run on, skipping or failing when an
//! adapter is missing, random inputs, and the error measure.

#![allow(dead_code)]

use mnist_gpu::gpu::context::Needs;
use mnist_gpu::gpu::{DeviceChoice, DeviceError, GpuContext};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Backends to test: env `MNIST_GPU_TEST_BACKENDS` (comma-separated), default `vulkan,gl`.
pub fn backends() -> Vec<String> {
    std::env::var("MNIST_GPU_TEST_BACKENDS")
        .unwrap_or_else(|_| "vulkan,gl".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

pub fn choice(backend: &str) -> DeviceChoice {
    DeviceChoice {
        backend: Some(backend.to_string()),
        adapter: None,
    }
}

use super::skip::{skip, ADAPTER_FIX};

/// Decide what to do when `backend` has no adapter: fail under CI, else skip visibly.
/// Returns `None` to skip.
pub fn available<T>(test: &str, backend: &str, result: Result<T, DeviceError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(e @ (DeviceError::NoAdapter { .. } | DeviceError::AdapterNotFound { .. })) => {
            skip(
                test,
                &format!("no adapter for backend {backend}: {e}"),
                ADAPTER_FIX,
            );
            None
        }
        Err(e) => panic!("{test}: backend {backend}: {e}"),
    }
}

/// Run `f` with a device on every test backend (skipping or failing as above).
pub fn on_each_backend(test: &str, mut f: impl FnMut(&str, &GpuContext)) {
    for backend in backends() {
        let Some(ctx) = available(
            test,
            &backend,
            GpuContext::new(&choice(&backend), Needs::default()),
        ) else {
            continue;
        };
        eprintln!("{test}: running on {}", ctx.describe());
        f(&backend, &ctx);
    }
}

/// Relative error of `a` against the reference `b`: |a − b| / max(|b|, 1) — relative for
/// large values, absolute for values below 1 (where relative error is meaningless near 0).
pub fn rel_err(a: f32, b: f32) -> f64 {
    (a as f64 - b as f64).abs() / (b.abs() as f64).max(1.0)
}

/// Largest [`rel_err`] over two equally long slices (panics on a length mismatch or NaN).
pub fn max_rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut worst = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        assert!(
            x.is_finite() == y.is_finite(),
            "finiteness differs: {x} vs {y}"
        );
        worst = worst.max(rel_err(x, y));
    }
    worst
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn uniform_vec(rng: &mut ChaCha8Rng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}
