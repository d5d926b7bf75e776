//! Kernel throughput, CPU and GPU side by side: GEMM GFLOP/s for the three MNIST forms at
//! batch 32/128/512 and square 1024³ (4096³ on hardware GPUs; the square products also
//! through the wide-tile GEMM, `gemm_wide`, on the GPUs), time per call of the other
//! kernels, the CPU trainer's step phase by phase (`step/cpu/…`), and each adapter's
//! training step dispatch by dispatch (`step/…`; also timed on the GPU itself where the
//! adapter offers TIMESTAMP_QUERY). Every layer family's agreement cases marked as bench
//! rows (`src/layers/*/check.rs`) are timed on both sides, under the case's name:
//! `other/cpu/NAME` and `other/gpu/BACKEND/NAME`. Run: `cargo bench --bench kernels [filter]`.
//!
//! GPU timings record `reps` dispatches into one command buffer, submit once and wait, so
//! they measure the kernel (plus per-dispatch overhead), not uploads or readbacks.

mod common;

use mnist_gpu::cpu;
use mnist_gpu::device::kernel::{record, storage_f32};
use mnist_gpu::device::{context::Needs, GpuContext};
use mnist_gpu::gpu::KernelTime;
use mnist_gpu::layers::dense::{self, DenseShape, LinearOp};
use mnist_gpu::layers::Pipelines;
use mnist_gpu::model::Hyper;
use rand::{Rng, SeedableRng};

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Which GEMM kernel a row times on the GPUs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GemmKernel {
    /// `gemm` (64×64 tiles), as the trainer dispatches it unsplit.
    Tiled,
    /// `gemm_wide` (128×128 tiles), which hardware GPUs run for large products.
    Wide,
}

/// One GEMM row: label, (m, k, n) as the dense layer sees them, form (0: X·W, 1: Xᵀ·dY,
/// 2: dY·Wᵀ) and the GPU kernel.
type GemmRow = (String, (usize, usize, usize), u8, GemmKernel);

/// The GEMM rows: the `(label, m, k, n, form)` of [`gemm_shapes`] through `gemm`, and the
/// square products through `gemm_wide` too, each beside its `gemm` row.
fn gemm_cases(large: bool) -> Vec<GemmRow> {
    let mut rows = Vec::new();
    for (label, m, k, n, form) in gemm_shapes(large) {
        let square = label.starts_with("gemm/square/");
        let wide = format!("{label} wide");
        rows.push((label, (m, k, n), form, GemmKernel::Tiled));
        if square {
            rows.push((wide, (m, k, n), form, GemmKernel::Wide));
        }
    }
    rows
}

/// (label, m, k, n, form) — form 0: X·W, 1: Xᵀ·dY, 2: dY·Wᵀ; (m, k, n) as the dense layer sees them.
fn gemm_shapes(large: bool) -> Vec<(String, usize, usize, usize, u8)> {
    let mut cases = Vec::new();
    for batch in [32, 128, 512] {
        cases.push((
            format!("gemm/forward/b{batch} ({batch}×784·784×128)"),
            batch,
            784,
            128,
            0,
        ));
        cases.push((
            format!("gemm/weight_grad/b{batch} (784×{batch}·{batch}×128)"),
            batch,
            784,
            128,
            1,
        ));
        cases.push((
            format!("gemm/input_grad/b{batch} ({batch}×128·128×784)"),
            batch,
            784,
            128,
            2,
        ));
    }
    // The convnet's second convolution at batch 128 as one product, both ways round: as
    // the CPU path forms it (W · cols) and transposed (colsᵀ · Wᵀ), PyTorch's shape.
    cases.push((
        "gemm/conv2 W·cols (64×288·288×15488)".into(),
        64,
        288,
        15488,
        0,
    ));
    cases.push((
        "gemm/conv2 colsᵀ·Wᵀ (15488×288·288×64)".into(),
        15488,
        288,
        64,
        0,
    ));
    cases.push(("gemm/square/1024".into(), 1024, 1024, 1024, 0));
    if large {
        cases.push(("gemm/square/4096".into(), 4096, 4096, 4096, 0));
    }
    cases
}

fn cpu_gemm(m: usize, k: usize, n: usize, form: u8, reps: usize) -> f64 {
    let (x, w, dy) = (random(m * k, 1), random(k * n, 2), random(m * n, 3));
    let bias = vec![0.0; n];
    let (mut y, mut dw, mut dx) = (vec![0.0; m * n], vec![0.0; k * n], vec![0.0; m * k]);
    common::median_secs(reps, || match form {
        0 => dense::cpu::gemm_forward(&x, &w, &bias, m, k, n, false, &mut y),
        1 => dense::cpu::gemm_weight_grad(&x, &dy, m, k, n, &mut dw),
        _ => dense::cpu::gemm_input_grad(&dy, &w, m, k, n, None, &mut dx),
    })
}

fn gpu_gemm(
    (ctx, pipelines): (&GpuContext, &Pipelines),
    (m, k, n): (usize, usize, usize),
    form: u8,
    kernel: GemmKernel,
    reps: usize,
) -> f64 {
    let buf = |len: usize, seed| storage_f32(ctx, "bench", &random(len, seed));
    let shape = DenseShape::alone(m, k, n);
    let dense = &pipelines.dense;
    let (x, dy, w) = (buf(m * k, 1), buf(m * n, 3), buf(k * n + n, 2));
    let out = buf(m * k.max(n) + k * n + n, 5);
    let op = match form {
        0 => LinearOp::Forward {
            x: &x,
            params: &w,
            y: &out,
            relu: false,
        },
        1 => LinearOp::WeightGrad {
            x: &x,
            dy: &dy,
            grads: &out,
        },
        _ => LinearOp::InputGrad {
            dy: &dy,
            params: &w,
            dx: &out,
            relu_out: None,
        },
    };
    let dispatch = match kernel {
        GemmKernel::Tiled => dense.dispatch(&shape, op),
        GemmKernel::Wide => dense.dispatch_wide(&shape, op),
    };
    let batch: Vec<_> = vec![dispatch; reps];
    let run = || {
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            record(&mut pass, &batch);
        }
        ctx.queue.submit([encoder.finish()]);
        ctx.wait().expect("the GPU finishes");
    };
    common::median_secs(3, run) / reps as f64
}

/// An adapter the bench times: its label, its device and kernels, and whether it is a
/// software rasteriser.
type Context = (String, GpuContext, Pipelines, bool);

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects rows by substring.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |label: &str| filter.as_deref().is_none_or(|f| label.contains(f));
    let adapters = common::adapters();
    let contexts = open_contexts(&adapters);
    gemm_rows(&contexts, &wanted);
    if wanted("other") {
        family_rows(&contexts);
        sparse_first_layer_cpu();
    }
    if wanted("step") {
        // The GPU's first: on a GPU machine they are what a time-limited run is for.
        step_profiles(&adapters);
        cpu_step_profiles();
    }
}

/// A device and the kernels on each adapter of `adapters` that opens (those that do not
/// are named on standard error).
fn open_contexts(adapters: &[(String, mnist_gpu::gpu::DeviceChoice, bool)]) -> Vec<Context> {
    let mut contexts = Vec::new();
    for (label, choice, software) in adapters {
        match GpuContext::new(choice, Needs::default())
            .and_then(|ctx| Pipelines::new(&ctx).map(|k| (ctx, k)))
        {
            Ok((ctx, k)) => contexts.push((label.clone(), ctx, k, *software)),
            Err(e) => eprintln!("{label}: {e}"),
        }
    }
    contexts
}

/// The GEMM table: a header, then a row of GFLOP/s per product `wanted`, the CPU's and
/// each adapter's.
fn gemm_rows(contexts: &[Context], wanted: &dyn Fn(&str) -> bool) {
    println!(
        "{:<44} {:>14} {}",
        "kernel",
        "cpu GFLOP/s",
        contexts
            .iter()
            .map(|c| format!("{:>14}", short(&c.0)))
            .collect::<String>()
    );
    let large = contexts.iter().any(|c| !c.3);
    for (label, (m, k, n), form, kernel) in gemm_cases(large) {
        if !wanted(&label) {
            continue;
        }
        let flops = 2.0 * (m * k * n) as f64;
        let reps = ((2e9 / flops) as usize).clamp(3, 200);
        // The CPU has no wide kernel: its figure is on the `gemm` row beside.
        let cpu = if m * k * n > 1 << 32 || kernel == GemmKernel::Wide {
            f64::NAN
        } else {
            flops / cpu_gemm(m, k, n, form, reps) / 1e9
        };
        let mut row = format!("{label:<44} {cpu:>14.2}");
        for (_, ctx, kernels, software) in contexts {
            // Software rasterisers manage ~1 GFLOP/s: keep their repetitions small.
            let gpu_reps = if *software {
                (reps / 20).max(1)
            } else {
                reps.max(20)
            };
            row.push_str(&format!(
                "{:>14.2}",
                flops / gpu_gemm((ctx, kernels), (m, k, n), form, kernel, gpu_reps) / 1e9
            ));
        }
        println!("{row}");
    }
}

/// The CPU trainer's step phase by phase (`CpuBackend::profile_epoch`: a whole real
/// epoch, the second of the run, with a wall clock read at each phase boundary), on the
/// default pool and on a one-thread pool, plus the per-epoch and per-run work outside the
/// steps (the shuffle, building the sparse copy of the training set).
fn cpu_step_profiles() {
    use mnist_gpu::data::{self, Mnist};
    use mnist_gpu::model::{ModelConfig, INPUT};
    use mnist_gpu::train::epoch_order;
    let mnist = Mnist::load(&data::builtin_dir()).expect("the built-in MNIST loads");
    let count = mnist.train.len();
    let shuffle = common::median_secs(5, || drop(epoch_order(count, 42, 1, true)));
    let build = common::median_secs(5, || {
        drop(cpu::sparse::SparseImages::from_dense(
            &mnist.train.images,
            INPUT,
        ))
    });
    println!(
        "step/cpu: per epoch, epoch_order (shuffle) {:.3} ms; per run, sparse copy of the training set {:.3} ms",
        shuffle * 1e3,
        build * 1e3
    );
    let default_threads = rayon::current_num_threads();
    let mut pools = vec![(default_threads, None)];
    if default_threads > 1 {
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build();
        pools.push((1, Some(one.expect("a one-thread pool"))));
    }
    let models = [
        ("", ModelConfig::default(), &[32, 128, 512][..]),
        ("convnet/", ModelConfig::convnet(false), &[128][..]),
    ];
    for (threads, pool) in &pools {
        for (name, config, batches) in &models {
            for &batch in batches.iter() {
                let label = format!("step/cpu/{name}{threads} threads/b{batch}");
                let profile = cpu_epoch_profile(&mnist, config, batch, pool.as_ref());
                print_cpu_profile(&label, &profile);
            }
        }
    }
}

/// [`CpuBackend::profile_epoch`] of one epoch of `config` at `batch` (after one epoch to
/// warm up), on `pool` or the default pool.
fn cpu_epoch_profile(
    mnist: &mnist_gpu::data::Mnist,
    config: &mnist_gpu::model::ModelConfig,
    batch: usize,
    pool: Option<&rayon::ThreadPool>,
) -> Vec<cpu::profile::PhaseTime> {
    use mnist_gpu::backend::Backend;
    use mnist_gpu::cpu::CpuBackend;
    use mnist_gpu::model::Params;
    use mnist_gpu::train::epoch_order;
    let count = mnist.train.len();
    let mut backend = CpuBackend::new(Params::init(config, 42), Hyper::default(), mnist.clone());
    let mut run = || {
        let warm_up = epoch_order(count, 42, 0, true);
        mnist_gpu::host::block_on(backend.train_epoch(&warm_up, batch, &mut |_| {}))
            .expect("trains");
        let order = epoch_order(count, 42, 1, true);
        backend.profile_epoch(&order, batch).expect("trains")
    };
    match pool {
        Some(pool) => pool.install(run),
        None => run(),
    }
}

fn print_cpu_profile(title: &str, profile: &[cpu::profile::PhaseTime]) {
    let total: f64 = profile.iter().map(|p| p.total).sum();
    let median: f64 = profile.iter().map(|p| p.median).sum();
    println!(
        "{title}: {:.3} ms per step (mean; sum of the medians {:.3} ms), phase by phase (mean, median, share of the medians; 95th and 99th percentile):",
        total * 1e3,
        median * 1e3
    );
    for p in profile {
        println!(
            "    {:<44} {:>8.3} ms {:>8.3} ms {:>5.1}%   {:>7.3} {:>7.3} ms",
            p.name,
            p.total * 1e3,
            p.median * 1e3,
            p.median / median * 100.0,
            p.p95 * 1e3,
            p.p99 * 1e3
        );
    }
}

fn print_profile(title: &str, profile: &[KernelTime], what: &str) {
    let total: f64 = profile.iter().map(|p| p.secs).sum();
    println!("{title}: {:.3} ms per step, {what}:", total * 1e3);
    for p in profile {
        println!(
            "    {:<44} {:>10.3} ms {:>5.1}%",
            p.kernel,
            p.secs * 1e3,
            p.secs / total * 100.0
        );
    }
}

/// Each kernel of a GPU-timed step against the device's bound: its GFLOP/s and GB/s from
/// its least work ([`mnist_gpu::device::kernel::Work`]), and, where the device's peaks
/// are known ([`common::device_peaks`]), its time over its bound, the larger of
/// `max(flops / peak, bytes / bandwidth)` and the step's fastest dispatch (the fixed cost
/// of any dispatch, which no kernel can go under). Then the kernels over 3× theirs, by
/// their place in the step (`#1` is its first dispatch).
fn print_bounds(title: &str, adapter: &str, profile: &[KernelTime]) {
    let peaks = common::device_peaks(adapter);
    let floor = profile.iter().map(|p| p.secs).fold(f64::INFINITY, f64::min);
    match &peaks {
        Some((.., source)) => println!(
            "{title}: each kernel against its bound ({source}; the step's fastest dispatch, {:.1} µs, as the least any dispatch takes):",
            floor * 1e6
        ),
        None => println!("{title}: each kernel's rates (no peak figures for this adapter: set MNIST_GPU_PEAKS=TFLOPS,GBPS for its bound):"),
    }
    let mut over = Vec::new();
    for (i, p) in profile.iter().enumerate().filter(|(_, p)| p.work.known()) {
        let name = format!("#{} {}", i + 1, p.kernel);
        let rates = format!(
            "{:>9.1} GFLOP/s {:>8.1} GB/s",
            p.work.flops / p.secs / 1e9,
            p.work.bytes / p.secs / 1e9
        );
        let Some((flops, bytes, _)) = &peaks else {
            println!("    {name:<44} {rates}");
            continue;
        };
        let bound = p.work.bound_secs(*flops, *bytes).max(floor);
        let times = p.secs / bound;
        println!("    {name:<44} {rates} {times:>6.1}× its bound");
        if times > 3.0 {
            over.push(format!("{name} ({times:.1}×)"));
        }
    }
    if peaks.is_some() {
        let list = if over.is_empty() {
            "none".into()
        } else {
            over.join(", ")
        };
        println!("{title}: kernels over 3× their bound: {list}");
    }
}

/// One training step of the default model, dispatch by dispatch, on every adapter:
/// where a step's time goes (each dispatch submitted alone, so this includes one
/// submission's overhead per line).
fn step_profiles(adapters: &[(String, mnist_gpu::gpu::DeviceChoice, bool)]) {
    use mnist_gpu::data::{self, Mnist};
    use mnist_gpu::gpu::GpuBackend;
    use mnist_gpu::model::{ModelConfig, Params};
    let mnist = Mnist::load(&data::builtin_dir()).expect("the built-in MNIST loads");
    let config = ModelConfig::default();
    for (label, choice, software) in adapters {
        for batch in [32, 128, 512] {
            let params = Params::init(&config, 42);
            let mut backend = match GpuBackend::new(params, Hyper::default(), mnist.clone(), choice)
            {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("{label}: {e}");
                    break;
                }
            };
            let reps = if *software { 3 } else { 20 };
            let profile = backend.profile_step(batch, reps).expect("profiling works");
            print_profile(
                &format!("step/{label}/b{batch}"),
                &profile,
                "dispatch by dispatch, each submitted alone (wall clock)",
            );
            match backend.profile_step_on_gpu(batch, reps.max(5)) {
                Ok(Some(profile)) => {
                    let title = format!("step/{label}/b{batch}");
                    let what =
                        "each dispatch timed on the GPU (TIMESTAMP_QUERY, median of the steps)";
                    print_profile(&title, &profile, what);
                    print_bounds(&title, label, &profile);
                }
                Ok(None) => println!("step/{label}: no TIMESTAMP_QUERY on this adapter"),
                Err(e) => println!("step/{label}: timestamp profile failed: {e}"),
            }
            let steps = if *software { 10 } else { 200 };
            match backend.profile_submission(batch, steps) {
                Ok(times) => print_submission(&format!("step/{label}/b{batch}"), steps, &times),
                Err(e) => println!("step/{label}: submission profile failed: {e}"),
            }
        }
    }
}

/// Whether the host or the GPU bounds a step: [`GpuBackend::profile_submission`]'s times.
fn print_submission(title: &str, steps: usize, times: &mnist_gpu::gpu::SubmissionTimes) {
    let ms = |s: f64| s * 1e3;
    let gpu = times
        .gpu
        .map_or("no timestamps".into(), |g| format!("{:.4} ms", ms(g)));
    let bound = match times.gpu {
        Some(g) if g >= times.record => "the GPU bounds the step",
        Some(_) => "recording bounds the step",
        None => "unknown",
    };
    println!(
        "{title}: {steps} steps of {} dispatches in one submission, per step: recording {:.4} ms, the submit call {:.4} ms, GPU {gpu}, wall {:.4} ms; {bound}",
        times.dispatches,
        ms(times.record),
        ms(times.submit),
        ms(times.wall),
    );
}

fn short(label: &str) -> String {
    label.chars().take(13).collect()
}

/// Every layer family's bench rows (its agreement cases at the shapes of the default
/// step): the CPU reference per call, then on each adapter the GPU side as the agreement
/// test runs it, a round trip with upload and readback, so these bound the kernel from
/// above (the `step/…` rows time the training step's own dispatches alone, and on the
/// GPU itself where it can).
fn family_rows(contexts: &[Context]) {
    let cases: Vec<_> = mnist_gpu::layers::cases()
        .into_iter()
        .filter(|case| case.bench)
        .collect();
    let us = |s: f64| s * 1e6;
    for case in &cases {
        let t = common::median_secs(200, || drop((case.cpu)()));
        println!("other/cpu/{}: {:.1} µs", case.name, us(t));
    }
    for (label, ctx, pipelines, software) in contexts {
        // `vulkan`, `gl`: one adapter per backend here.
        let backend = label
            .split('/')
            .next()
            .unwrap_or(label)
            .to_ascii_lowercase();
        let reps = if *software { 5 } else { 50 };
        for case in &cases {
            let t = common::median_secs(reps, || {
                (case.gpu)(ctx, pipelines).expect("the kernel runs");
            });
            println!(
                "other/gpu/{backend}/{} (round trip): {:.1} µs",
                case.name,
                us(t)
            );
        }
    }
}

/// The CPU trainer's sparse first layer (784 → 128) on real MNIST batches: the batch
/// transpose and statistics, the folded forward, and the fused backward, per call.
fn sparse_first_layer_cpu() {
    use cpu::sparse::{batch_stats, fold_and_forward, ColumnBatch, FirstLayer, SparseImages};
    use mnist_gpu::layers::batchnorm::cpu::Affine;
    let mnist = mnist_gpu::data::Mnist::load(&mnist_gpu::data::builtin_dir())
        .expect("the built-in MNIST loads");
    let (features, n, scale) = (784, 128, 1.0 / 255.0);
    let images = SparseImages::from_dense(&mnist.train.images, features);
    let (gamma, beta) = (vec![1.0; features], vec![0.0; features]);
    let (w, bias) = (random(features * n, 21), vec![0.0; n]);
    let us = |s: f64| s * 1e6;
    for batch in [32usize, 512] {
        let indices: Vec<u32> = (0..batch as u32).map(|i| i * 97 % 60_000).collect();
        let mut columns = ColumnBatch::default();
        let (mut mean, mut var) = (vec![0.0; features], vec![0.0; features]);
        let t = common::median_secs(200, || {
            columns.fill(&images, &indices, scale);
            batch_stats(&columns, batch, &mut mean, &mut var);
        });
        println!("other/cpu/sparse transpose+stats b{batch}: {:.1} µs", us(t));
        let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + 1e-3).sqrt()).collect();
        let mut coef = vec![0.0; features];
        let mut z = vec![0.0; batch * n];
        let first = FirstLayer {
            mean: &mean,
            inv_std: &inv_std,
            params: Affine {
                gamma: &gamma,
                beta: &beta,
            },
        };
        let t = common::median_secs(200, || {
            let dense = (&w[..], &bias[..], true);
            fold_and_forward(&images, (&indices, scale), first, dense, &mut coef, &mut z);
        });
        println!(
            "other/cpu/sparse forward (fold + 784→128) b{batch}: {:.1} µs",
            us(t)
        );
        sparse_backward_rows(&columns, first, &w, batch);
    }
}

/// The bench lines of the sparse first layer's backward, for [`sparse_first_layer_cpu`]:
/// the pass alone on the batch `columns` of `batch` images, then with Adam's update of the
/// kernel `w` in it.
fn sparse_backward_rows(
    columns: &cpu::sparse::ColumnBatch,
    first: cpu::sparse::FirstLayer,
    w: &[f32],
    batch: usize,
) {
    use cpu::sparse::{sparse_first_layer_backward, Kernel, KernelAdam};
    use mnist_gpu::layers::adam::cpu::AdamStep;
    use mnist_gpu::layers::batchnorm::cpu::Affine;
    let (features, n) = (first.mean.len(), w.len() / first.mean.len());
    let delta = random(batch * n, 22);
    let db = random(n, 23);
    let mut grad_w = vec![0.0; features * n];
    let (mut dg, mut dbeta) = (vec![0.0; features], vec![0.0; features]);
    let t = common::median_secs(200, || {
        let grads = Affine {
            gamma: &mut dg[..],
            beta: &mut dbeta[..],
        };
        let layer = (first, Kernel::Read(w));
        sparse_first_layer_backward(columns, (&delta, &db), layer, &mut grad_w, grads)
    });
    println!(
        "other/cpu/sparse backward (dW, dγ, dβ) b{batch}: {:.1} µs",
        t * 1e6
    );
    // The same pass with Adam's update of the kernel in it (`adam_in_backward`).
    let (mut w_trained, mut m, mut v) = (w.to_vec(), vec![0.0; w.len()], vec![0.0; w.len()]);
    let step = AdamStep::new(1e-3, &mnist_gpu::model::Hyper::default());
    let t = common::median_secs(200, || {
        let grads = Affine {
            gamma: &mut dg[..],
            beta: &mut dbeta[..],
        };
        let (w, m, v) = (&mut w_trained[..], &mut m[..], &mut v[..]);
        let layer = (first, Kernel::Update(KernelAdam { w, m, v, step }));
        sparse_first_layer_backward(columns, (&delta, &db), layer, &mut grad_w, grads)
    });
    println!(
        "other/cpu/sparse backward + Adam of dW b{batch}: {:.1} µs",
        t * 1e6
    );
}
