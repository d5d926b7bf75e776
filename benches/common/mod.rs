//! Shared bits of the benchmarks: timing with a median, and the adapters to measure.

#![allow(dead_code)]

use mnist_gpu::gpu::{self, DeviceChoice};
use std::time::Instant;

/// Median wall time in seconds of `reps` runs of `f` (after one warm-up run).
pub fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Every adapter to benchmark: `MNIST_GPU_BENCH_BACKENDS` (comma-separated backend names,
/// e.g. `vulkan`), default every backend that has an adapter. Returns (label, choice, software?).
pub fn adapters() -> Vec<(String, DeviceChoice, bool)> {
    let wanted =
        std::env::var("MNIST_GPU_BENCH_BACKENDS").unwrap_or_else(|_| "vulkan,gl,metal,dx12".into());
    let mut found = Vec::new();
    for backend in wanted.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let choice = DeviceChoice {
            backend: Some(backend.into()),
            adapter: None,
        };
        match gpu::list_adapters(&choice) {
            Ok(list) if !list.is_empty() => {
                let a = &list[0];
                found.push((format!("{}/{}", a.backend, a.name), choice, a.software));
            }
            _ => eprintln!("(no {backend} adapter: skipped)"),
        }
    }
    found
}
