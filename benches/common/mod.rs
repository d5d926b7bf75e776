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

/// A device's peak single-precision FLOP/s and memory bytes/s, for the step profile's
/// bound: `MNIST_GPU_PEAKS=TFLOPS,GBPS` (e.g. `67,4800`), else the datasheet figures of
/// the data-centre GPUs this project is measured on, picked by the adapter's name (`None`
/// for any other adapter; software adapters have no fixed peak). Returns the figures and
/// where they came from.
pub fn device_peaks(adapter: &str) -> Option<(f64, f64, String)> {
    if let Ok(given) = std::env::var("MNIST_GPU_PEAKS") {
        let parsed: Vec<f64> = given
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect();
        if let [tflops, gbps] = parsed[..] {
            return Some((
                tflops * 1e12,
                gbps * 1e9,
                format!("MNIST_GPU_PEAKS={given}"),
            ));
        }
        eprintln!("MNIST_GPU_PEAKS={given}: expected TFLOPS,GBPS; ignored");
    }
    // (name contains, FP32 TFLOP/s without tensor cores, memory GB/s): NVIDIA's
    // datasheets; the first match wins, so the variants come before the plain names.
    const DATASHEETS: [(&str, f64, f64); 5] = [
        ("H200 NVL", 60.0, 4800.0),
        ("H200", 67.0, 4800.0),
        ("H100 NVL", 60.0, 3900.0),
        ("H100 PCIe", 51.0, 2000.0),
        ("H100", 67.0, 3350.0),
    ];
    let (name, tflops, gbps) = DATASHEETS.iter().find(|(n, ..)| adapter.contains(n))?;
    let source = format!("{name} datasheet: {tflops} TFLOP/s FP32, {gbps} GB/s");
    Some((tflops * 1e12, gbps * 1e9, source))
}
