//! Whole-epoch time: seconds per 60,000-sample epoch and samples/s, on the CPU and every
//! adapter, at batch 32/128/512, with the test accuracy after the measured epochs printed
//! beside each (a fast wrong trainer does not count) and the seconds that evaluation of
//! the 10,000 test images took (one run). Run: `cargo bench --bench epoch`.
//!
//! Environment: `MNIST_GPU_BENCH_REPS` epochs per row (default 3; the median is reported),
//! `MNIST_GPU_BENCH_SOFT_SAMPLES` samples per epoch on software adapters (default 6000:
//! lavapipe/llvmpipe need ~75 s for a full epoch; their seconds are scaled to 60,000 and
//! marked `*`), `MNIST_GPU_BENCH_BACKENDS` which GPU backends to try.

mod common;

use mnist_gpu::backend::Backend;
use mnist_gpu::cpu::CpuBackend;
use mnist_gpu::data::{self, Mnist};
use mnist_gpu::gpu::{DeviceChoice, GpuBackend};
use mnist_gpu::host::block_on;
use mnist_gpu::model::{Hyper, ModelConfig, Params};
use mnist_gpu::train::epoch_order;
use std::time::Instant;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What [`measure`] returns: the median seconds per epoch, and the seconds and accuracy
/// of the test-set evaluation after the epochs.
struct Measured {
    epoch_secs: f64,
    eval_secs: f64,
    accuracy: f64,
}

/// Train `reps` epochs of `samples` samples, then evaluate the test set once.
fn measure(backend: &mut dyn Backend, samples: usize, batch: usize, reps: usize) -> Measured {
    let mut times = Vec::new();
    for epoch in 0..reps {
        let order = epoch_order(samples, 42, epoch, true);
        let start = Instant::now();
        block_on(backend.train_epoch(&order, batch, &mut |_| {})).expect("training works");
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let start = Instant::now();
    let accuracy = block_on(backend.evaluate())
        .expect("evaluation works")
        .accuracy;
    Measured {
        epoch_secs: times[times.len() / 2],
        eval_secs: start.elapsed().as_secs_f64(),
        accuracy,
    }
}

/// One device row of the table: the CPU, or a GPU adapter (with its split-K choice
/// overridden when `split_k` is set), and the epoch's samples measured there.
struct Row {
    label: String,
    choice: Option<DeviceChoice>,
    samples: usize,
    split_k: Option<bool>,
}

/// Measures `row` at `batch` and prints its line.
fn measure_row(row: &Row, mnist: &Mnist, config: &ModelConfig, (batch, reps): (usize, usize)) {
    let samples = row.samples;
    let data = Mnist {
        train: mnist.train.clone().truncated(samples),
        test: mnist.test.clone(),
    };
    let params = Params::init(config, 42);
    let mut backend: Box<dyn Backend> = match &row.choice {
        None => Box::new(CpuBackend::new(params, Hyper::default(), data)),
        Some(c) => match GpuBackend::new(params, Hyper::default(), data, c) {
            Ok(mut b) => {
                if let Some(split) = row.split_k {
                    b.set_split_k(split);
                }
                Box::new(b)
            }
            Err(e) => {
                eprintln!("{}: {e}", row.label);
                return;
            }
        },
    };
    let measured = measure(backend.as_mut(), samples, batch, reps);
    let secs = measured.epoch_secs;
    let scaled = secs * 60_000.0 / samples as f64;
    let mark = if samples < 60_000 { "*" } else { " " };
    println!(
        "{:<58} {batch:>6} {scaled:>11.3}{mark} {:>12.0} {:>9.2}% {:>9.4}",
        row.label,
        samples as f64 / secs,
        measured.accuracy * 100.0,
        measured.eval_secs,
    );
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let reps = env_usize("MNIST_GPU_BENCH_REPS", 3);
    let soft_samples = env_usize("MNIST_GPU_BENCH_SOFT_SAMPLES", 6000);
    let mnist = Mnist::load(&data::builtin_dir()).expect("the built-in MNIST loads");
    let config = ModelConfig::default();
    println!(
        "{:<58} {:>6} {:>12} {:>12} {:>10} {:>9}",
        "device", "batch", "s/epoch", "samples/s", "test acc", "eval s"
    );
    let mut rows: Vec<Row> = vec![Row {
        label: "cpu".into(),
        choice: None,
        samples: 60_000,
        split_k: None,
    }];
    for (label, choice, software) in common::adapters() {
        let samples = if software { soft_samples } else { 60_000 };
        // A hardware GPU splits small products over k; its row without, beside.
        let variants = if software {
            vec![None]
        } else {
            vec![None, Some(false)]
        };
        for split_k in variants {
            let label = match split_k {
                Some(false) => format!("{label} (k unsplit)"),
                _ => label.clone(),
            };
            let choice = Some(choice.clone());
            rows.push(Row {
                label,
                choice,
                samples,
                split_k,
            });
        }
    }
    for row in rows {
        for batch in [32, 128, 512] {
            let name = format!("epoch/{}/b{batch}", row.label);
            if filter.as_deref().is_some_and(|f| !name.contains(f)) {
                continue;
            }
            measure_row(&row, &mnist, &config, (batch, reps));
        }
    }
    println!("(* measured on a {soft_samples}-sample epoch and scaled to 60,000; accuracy after {reps} epochs of the measured size; eval s: that one evaluation, not scaled)");
}
