//! Shared helpers for the GPU tests: which backends to run on, skipping or failing when an
//! adapter is missing, random inputs, and the error measure.

#![allow(dead_code)]

use mnist_gpu::backend::Backend;
use mnist_gpu::device::context::Needs;
use mnist_gpu::device::{DeviceChoice, DeviceError, GpuContext};
use mnist_gpu::host::block_on;

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

#[allow(unused_imports)]
pub use mnist_gpu::layers::check::rel_err;

/// The largest [`rel_err`] over two slices (panics on a length mismatch or when one is
/// finite where the other is not).
pub fn max_rel_err(a: &[f32], b: &[f32]) -> f64 {
    mnist_gpu::layers::check::max_rel_err(a, b).unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts that two trainers hold the same model: parameters, moving statistics, Adam's
/// moments and step count, each within `tol` ([`max_rel_err`]).
pub fn compare_state(what: &str, gpu: &mut dyn Backend, cpu: &mut dyn Backend, tol: f64) {
    let (gp, cp) = (
        block_on(gpu.params()).unwrap(),
        block_on(cpu.params()).unwrap(),
    );
    let (go, co) = (
        block_on(gpu.optim_state()).unwrap(),
        block_on(cpu.optim_state()).unwrap(),
    );
    assert_eq!(go.step, co.step, "{what}: step count");
    for (name, a, b) in [
        ("parameters", &gp.trainable[..], &cp.trainable[..]),
        ("moving mean", &gp.moving_mean, &cp.moving_mean),
        ("moving var", &gp.moving_var, &cp.moving_var),
        ("adam m", &go.m, &co.m),
        ("adam v", &go.v, &co.v),
    ] {
        let e = max_rel_err(a, b);
        eprintln!("{what}: {name} max error {e:.2e}");
        assert!(e <= tol, "{what}: {name} error {e} > {tol}");
    }
}

/// Asserts that two evaluations' predictions differ in at most one test sample.
pub fn assert_predictions_agree(what: &str, a: &[u8], b: &[u8]) {
    let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
    assert!(
        differ <= 1,
        "{what}: {differ} of {} test predictions differ",
        a.len()
    );
}
