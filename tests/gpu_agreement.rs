//! The GPU trainer against the CPU reference, on every backend in
//! `MNIST_GPU_TEST_BACKENDS` (default `vulkan,gl`). A backend without an adapter is
//! skipped with a message, or fails when env `CI` is set.
//!
//! Errors are measured with `common::gpu::rel_err`: |gpu − cpu| / max(|cpu|, 1).

mod common;

use common::gpu::*;
use common::skip::{skip, ADAPTER_FIX};
use mnist_gpu::backend::{Backend, StepProgress};
use mnist_gpu::cpu::{adam, batchnorm, gemm, relu, softmax_xent, CpuBackend};
use mnist_gpu::data::Mnist;
use mnist_gpu::gpu::kernels::Kernels;
use mnist_gpu::gpu::{list_adapters, DeviceChoice, DeviceError, GpuBackend};
use mnist_gpu::host::block_on;
use mnist_gpu::model::{Hyper, ModelConfig, Params, INPUT};
use mnist_gpu::settings::{steps_per_epoch, TrainOptions};
use mnist_gpu::train::{epoch_order, run_epoch, EpochOutcome};
use rand::Rng;
use std::time::Instant;

/// Bound on the error of GEMM-based results (sums over up to 784 products, in a
/// different order than the CPU's blocked SIMD kernel).
const GEMM_TOL: f64 = 1e-4;
/// Bound on the error of elementwise and per-feature results.
const ELEMENTWISE_TOL: f64 = 1e-5;

/// (m, k, n) shapes: batch 1, 33, 37, 70 and widths 10, 129, 784, none of them tile
/// multiples.
const GEMM_SHAPES: [(usize, usize, usize); 7] = [
    (1, 784, 128),
    (70, 300, 90),
    (33, 784, 129),
    (37, 129, 10),
    (33, 10, 784),
    (37, 128, 10),
    (1, 129, 10),
];

#[test]
fn gemm_forms_match_cpu() {
    on_each_backend("gemm_forms_match_cpu", |backend, ctx| {
        let kernels = Kernels::new(ctx).expect("pipelines");
        let mut r = rng(1);
        for (m, k, n) in GEMM_SHAPES {
            let x = uniform_vec(&mut r, m * k, -1.0, 1.0);
            let w = uniform_vec(&mut r, k * n, -1.0, 1.0);
            let bias = uniform_vec(&mut r, n, -1.0, 1.0);
            let dy = uniform_vec(&mut r, m * n, -1.0, 1.0);
            for relu in [false, true] {
                let mut cpu = vec![0.0; m * n];
                gemm::gemm_forward(&x, &w, &bias, m, k, n, relu, &mut cpu);
                let gpu = kernels
                    .gemm_forward(ctx, &x, &w, &bias, m, k, n, relu)
                    .unwrap();
                let e = max_rel_err(&gpu, &cpu);
                assert!(
                    e <= GEMM_TOL,
                    "{backend} forward {m}x{k}x{n} relu={relu}: error {e}"
                );
            }
            let mut dw = vec![0.0; k * n];
            let mut db = vec![0.0; n];
            gemm::gemm_weight_grad(&x, &dy, m, k, n, &mut dw);
            gemm::bias_grad(&dy, m, n, &mut db);
            let (gdw, gdb) = kernels.gemm_weight_grad(ctx, &x, &dy, m, k, n).unwrap();
            let e = max_rel_err(&gdw, &dw).max(max_rel_err(&gdb, &db));
            assert!(
                e <= GEMM_TOL,
                "{backend} weight grad {m}x{k}x{n}: error {e}"
            );
            // A mask with about half its entries ≤ 0 (some exactly 0).
            let mask: Vec<f32> = uniform_vec(&mut r, m * k, -1.0, 1.0)
                .into_iter()
                .map(|v| if v < -0.8 { 0.0 } else { v })
                .collect();
            for masked in [false, true] {
                let mut dx = vec![0.0; m * k];
                let mask_arg = masked.then_some(&mask[..]);
                gemm::gemm_input_grad(&dy, &w, m, k, n, mask_arg, &mut dx);
                let gdx = kernels
                    .gemm_input_grad(ctx, &dy, &w, m, k, n, mask_arg)
                    .unwrap();
                let e = max_rel_err(&gdx, &dx);
                assert!(
                    e <= GEMM_TOL,
                    "{backend} input grad {m}x{k}x{n} masked={masked}: error {e}"
                );
            }
        }
    });
}

/// Random u8 images with some always-zero pixels, like MNIST's borders.
fn random_images(r: &mut rand_chacha::ChaCha8Rng, count: usize) -> Vec<u8> {
    (0..count * INPUT)
        .map(|i| {
            if (i % INPUT) % 28 < 3 {
                0
            } else {
                r.random_range(0..=255u8)
            }
        })
        .collect()
}

/// Random BatchNorm inputs for a batch of `batch` samples of a 50-image pool.
struct BnCase {
    images: Vec<u8>,
    indices: Vec<u32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean0: Vec<f32>,
    var0: Vec<f32>,
}

const BN_SCALE: f32 = 1.0 / 255.0;

fn bn_case(r: &mut rand_chacha::ChaCha8Rng, batch: usize) -> BnCase {
    let pool = 50;
    let images = random_images(r, pool);
    let indices = (0..batch).map(|_| r.random_range(0..pool as u32)).collect();
    BnCase {
        images,
        indices,
        gamma: uniform_vec(r, INPUT, 0.5, 1.5),
        beta: uniform_vec(r, INPUT, -0.5, 0.5),
        mean0: uniform_vec(r, INPUT, -0.1, 0.1),
        var0: uniform_vec(r, INPUT, 0.5, 1.5),
    }
}

/// The CPU's training-mode forward of `c`: (xhat, y, inv_std, moving mean, moving var).
type BnForward = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

fn cpu_bn_forward_train(c: &BnCase, hyper: &Hyper) -> BnForward {
    let batch = c.indices.len();
    let mut x = vec![0.0; batch * INPUT];
    mnist_gpu::cpu::gather_scaled(&c.images, INPUT, &c.indices, BN_SCALE, &mut x);
    let (mut mm, mut mv) = (c.mean0.clone(), c.var0.clone());
    let (mut xhat, mut y, mut inv) = (
        vec![0.0; batch * INPUT],
        vec![0.0; batch * INPUT],
        vec![0.0; INPUT],
    );
    batchnorm::batchnorm_forward_train(
        &x,
        batch,
        &c.gamma,
        &c.beta,
        hyper.bn_eps,
        hyper.bn_momentum,
        &mut mm,
        &mut mv,
        &mut xhat,
        &mut y,
        &mut inv,
    );
    (xhat, y, inv, mm, mv)
}

#[test]
fn batchnorm_forward_train_matches_cpu() {
    on_each_backend("batchnorm_forward_train_matches_cpu", |backend, ctx| {
        let kernels = Kernels::new(ctx).expect("pipelines");
        let mut r = rng(2);
        let hyper = Hyper::default();
        for batch in [1usize, 33, 37] {
            let c = bn_case(&mut r, batch);
            let (xhat, y, inv, mm, mv) = cpu_bn_forward_train(&c, &hyper);
            let (mut gmm, mut gmv) = (c.mean0.clone(), c.var0.clone());
            let g = kernels
                .batchnorm_forward_train(
                    ctx,
                    &c.images,
                    &c.indices,
                    BN_SCALE,
                    &c.gamma,
                    &c.beta,
                    hyper.bn_eps,
                    hyper.bn_momentum,
                    &mut gmm,
                    &mut gmv,
                )
                .unwrap();
            for (what, a, b) in [
                ("xhat", &g.xhat, &xhat),
                ("y", &g.y, &y),
                ("inv_std", &g.inv_std, &inv),
                ("moving mean", &gmm, &mm),
                ("moving var", &gmv, &mv),
            ] {
                let e = max_rel_err(a, b);
                assert!(
                    e <= ELEMENTWISE_TOL,
                    "{backend} batchnorm_forward_train batch {batch} {what}: error {e}"
                );
            }
        }
    });
}

#[test]
fn batchnorm_forward_eval_matches_cpu() {
    on_each_backend("batchnorm_forward_eval_matches_cpu", |backend, ctx| {
        let kernels = Kernels::new(ctx).expect("pipelines");
        let mut r = rng(3);
        let hyper = Hyper::default();
        for batch in [1usize, 33, 37] {
            let c = bn_case(&mut r, batch);
            // Evaluation mode on the first `batch` images.
            let mut x = vec![0.0; batch * INPUT];
            let first: Vec<u32> = (0..batch as u32).collect();
            mnist_gpu::cpu::gather_scaled(&c.images, INPUT, &first, BN_SCALE, &mut x);
            let mut y = vec![0.0; batch * INPUT];
            batchnorm::batchnorm_forward_eval(
                &x,
                &c.gamma,
                &c.beta,
                &c.mean0,
                &c.var0,
                hyper.bn_eps,
                &mut y,
            );
            let gy = kernels
                .batchnorm_forward_eval(
                    ctx,
                    &c.images,
                    batch,
                    BN_SCALE,
                    &c.gamma,
                    &c.beta,
                    &c.mean0,
                    &c.var0,
                    hyper.bn_eps,
                )
                .unwrap();
            let e = max_rel_err(&gy, &y);
            assert!(
                e <= ELEMENTWISE_TOL,
                "{backend} batchnorm_forward_eval batch {batch}: error {e}"
            );
        }
    });
}

/// BatchNorm + first-dense backward from G = xhatᵀ·δ, both variants (per workgroup:
/// hardware GPUs; per feature: CPU adapters).
#[test]
fn batchnorm_dense_backward_matches_cpu() {
    on_each_backend("batchnorm_dense_backward_matches_cpu", |backend, ctx| {
        let kernels = Kernels::new(ctx).expect("pipelines");
        let mut r = rng(4);
        let hyper = Hyper::default();
        for batch in [1usize, 33, 37] {
            let c = bn_case(&mut r, batch);
            let (xhat, ..) = cpu_bn_forward_train(&c, &hyper);
            let width = 37; // not a multiple of the 64 threads that stride each row
            let w = uniform_vec(&mut r, INPUT * width, -0.1, 0.1);
            let delta = uniform_vec(&mut r, batch * width, -1.0, 1.0);
            let (mut grad_w, mut dbias) = (vec![0.0; INPUT * width], vec![0.0; width]);
            gemm::gemm_weight_grad(&xhat, &delta, batch, INPUT, width, &mut grad_w);
            gemm::bias_grad(&delta, batch, width, &mut dbias);
            let (gamma, beta) = (&c.gamma, &c.beta);
            let gpu = [false, true].map(|per_feature| {
                kernels
                    .batchnorm_dense_backward(ctx, per_feature, &grad_w, &w, gamma, beta, &dbias)
                    .unwrap()
            });
            let (mut dg, mut db) = (vec![0.0; INPUT], vec![0.0; INPUT]);
            batchnorm::batchnorm_dense_backward(
                &mut grad_w,
                &w,
                gamma,
                beta,
                &dbias,
                &mut dg,
                &mut db,
            );
            for (variant, gpu) in ["per workgroup", "per feature"].iter().zip(&gpu) {
                let e = max_rel_err(&gpu.dw, &grad_w)
                    .max(max_rel_err(&gpu.dgamma, &dg))
                    .max(max_rel_err(&gpu.dbeta, &db));
                assert!(
                    e <= ELEMENTWISE_TOL,
                    "{backend} batchnorm_dense_backward ({variant}) batch {batch}: error {e}"
                );
            }
        }
    });
}

#[test]
fn softmax_xent_matches_cpu() {
    on_each_backend("softmax_xent_matches_cpu", |backend, ctx| {
        let kernels = Kernels::new(ctx).expect("pipelines");
        let mut r = rng(3);
        let classes = 10;
        for batch in [1usize, 33, 37, 300] {
            let mut logits = uniform_vec(&mut r, batch * classes, -5.0, 5.0);
            // Ties: the first maximum must win, as on the CPU.
            for row in (0..batch).step_by(3) {
                logits[row * classes + 3] = 9.0;
                logits[row * classes + 7] = 9.0;
            }
            let labels: Vec<u8> = (0..batch).map(|_| r.random_range(0..10u8)).collect();
            let mut grad = vec![0.0; batch * classes];
            let mut preds = vec![0u8; batch];
            let (loss, correct) = softmax_xent::softmax_xent(
                &logits,
                &labels,
                classes,
                Some(&mut grad),
                Some(&mut preds),
            );
            let (gl, gc, ggrad, _) = kernels
                .softmax_xent(ctx, &logits, &labels, classes, true)
                .unwrap();
            let (el, ec, _, gpreds) = kernels
                .softmax_xent(ctx, &logits, &labels, classes, false)
                .unwrap();
            assert_eq!(
                (gc, ec),
                (correct, correct),
                "{backend} batch {batch}: correct count"
            );
            assert_eq!(gpreds, preds, "{backend} batch {batch}: predictions");
            for l in [gl, el] {
                let e = rel_err(l, loss);
                assert!(
                    e <= ELEMENTWISE_TOL,
                    "{backend} batch {batch}: loss {l} vs {loss}"
                );
            }
            let e = max_rel_err(&ggrad, &grad);
            assert!(
                e <= ELEMENTWISE_TOL,
                "{backend} batch {batch}: gradient error {e}"
            );
        }
    });
}

#[test]
fn adam_matches_cpu() {
    on_each_backend("adam_matches_cpu", |backend, ctx| {
        let kernels = Kernels::new(ctx).expect("pipelines");
        let mut r = rng(5);
        let hyper = Hyper::default();
        for n in [1usize, 129, 100_003] {
            let p0 = uniform_vec(&mut r, n, -1.0, 1.0);
            let g = uniform_vec(&mut r, n, -0.1, 0.1);
            let m0 = uniform_vec(&mut r, n, -0.01, 0.01);
            let v0 = uniform_vec(&mut r, n, 0.0, 1e-4);
            let alpha = hyper.adam_alpha(3);
            let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
            adam::adam_update(&mut p, &g, &mut m, &mut v, alpha, &hyper);
            let (mut gp, mut gm, mut gv) = (p0, m0, v0);
            kernels
                .adam(ctx, &mut gp, &g, &mut gm, &mut gv, alpha, &hyper)
                .unwrap();
            let e = max_rel_err(&gp, &p)
                .max(max_rel_err(&gm, &m))
                .max(max_rel_err(&gv, &v));
            assert!(e <= ELEMENTWISE_TOL, "{backend} adam n={n}: error {e}");
        }
    });
}

#[test]
fn relu_matches_cpu() {
    on_each_backend("relu_matches_cpu", |backend, ctx| {
        let kernels = Kernels::new(ctx).expect("pipelines");
        let mut r = rng(6);
        for n in [1usize, 129, 100_003] {
            let x = uniform_vec(&mut r, n, -1.0, 1.0);
            let mut y = x.clone();
            relu::relu_forward(&mut y);
            let gy = kernels.relu_forward(ctx, &x).unwrap();
            assert!(
                max_rel_err(&gy, &y) <= ELEMENTWISE_TOL,
                "{backend} relu_forward n={n}"
            );
            let dy = uniform_vec(&mut r, n, -1.0, 1.0);
            let mut dx = vec![0.0; n];
            relu::relu_backward(&dy, &y, &mut dx);
            let gdx = kernels.relu_backward(ctx, &dy, &y).unwrap();
            assert!(
                max_rel_err(&gdx, &dx) <= ELEMENTWISE_TOL,
                "{backend} relu_backward n={n}"
            );
        }
    });
}

// ---------------------------------------------------------------------------------------
// Whole-trainer tests on real MNIST subsets.
// ---------------------------------------------------------------------------------------

/// After 1 step, parameters, moving statistics and Adam moments agree within this
/// (|gpu − cpu| / max(|cpu|, 1)).
const ONE_STEP_TOL: f64 = 1e-5;
/// After 20 steps (differences compound through Adam's normalisation).
const TWENTY_STEPS_TOL: f64 = 1e-4;

fn mnist(train: usize, test: usize) -> Mnist {
    let data = Mnist::load(&mnist_gpu::data::builtin_dir()).expect("assets/mnist loads");
    Mnist {
        train: data.train.truncated(train),
        test: data.test.truncated(test),
    }
}

/// Try to open a GpuBackend on `backend`: `None` means skip (see `common::gpu::available`).
fn gpu_backend(test: &str, backend: &str, params: &Params, data: &Mnist) -> Option<GpuBackend> {
    available(
        test,
        backend,
        GpuBackend::new(
            params.clone(),
            Hyper::default(),
            data.clone(),
            &choice(backend),
        ),
    )
}

fn compare_state(what: &str, gpu: &mut dyn Backend, cpu: &mut dyn Backend, tol: f64) {
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
        ("parameters", &gp.trainable, &cp.trainable),
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

#[test]
fn training_steps_match_cpu() {
    let data = mnist(640, 100);
    for backend in backends() {
        for (hidden, batch, samples, steps_label) in [
            (vec![128], 32, 32, "1 step"),
            (vec![128], 32, 640, "20 steps"),
            (vec![129, 33], 33, 634, "20 steps, partial last batch"),
        ] {
            let config = ModelConfig::mlp(&hidden, false);
            let params = Params::init(&config, 7);
            let Some(mut gpu) = gpu_backend("training_steps_match_cpu", &backend, &params, &data)
            else {
                break;
            };
            let order = epoch_order(data.train.len(), 11, 0, true)[..samples].to_vec();
            let mut last = StepProgress::default();
            let gs = block_on(gpu.train_epoch(&order, batch, &mut |p| last = *p)).unwrap();
            assert_eq!(last.steps_done, last.steps_total, "final progress report");
            let ge = block_on(gpu.evaluate()).unwrap();
            // Against the dense reference path (the GPU's kernel-by-kernel twin) and the
            // sparse path the CPU trainer uses on MNIST.
            for sparse in [false, true] {
                let mut cpu = CpuBackend::new(params.clone(), Hyper::default(), data.clone());
                cpu.set_sparse_input(sparse);
                let cs = block_on(cpu.train_epoch(&order, batch, &mut |_| {})).unwrap();
                assert_eq!(gs.samples, cs.samples);
                let tol = if samples == batch {
                    ONE_STEP_TOL
                } else {
                    TWENTY_STEPS_TOL
                };
                let what = format!(
                    "{backend} hidden {hidden:?} batch {batch}, cpu sparse={sparse}: {steps_label}"
                );
                assert!(
                    rel_err(gs.loss as f32, cs.loss as f32) <= tol,
                    "{what}: loss {} vs {}",
                    gs.loss,
                    cs.loss
                );
                assert_eq!(gs.accuracy, cs.accuracy, "{what}: training accuracy");
                compare_state(&what, &mut gpu, &mut cpu, tol);
                let ce = block_on(cpu.evaluate()).unwrap();
                assert!(
                    rel_err(ge.loss as f32, ce.loss as f32) <= tol,
                    "{what}: eval loss {} vs {}",
                    ge.loss,
                    ce.loss
                );
                let differ = ge
                    .predictions
                    .iter()
                    .zip(&ce.predictions)
                    .filter(|(a, b)| a != b)
                    .count();
                assert!(
                    differ <= 1,
                    "{what}: {differ} of 100 test predictions differ"
                );
            }
        }
    }
}

#[test]
fn one_epoch_accuracy_matches_cpu() {
    let data = mnist(6000, 1000);
    let config = ModelConfig::default();
    let params = Params::init(&config, 42);
    let order = epoch_order(data.train.len(), 42, 0, true);
    let mut cpu = CpuBackend::new(params.clone(), Hyper::default(), data.clone());
    let started = Instant::now();
    block_on(cpu.train_epoch(&order, 32, &mut |_| {})).unwrap();
    let cpu_eval = block_on(cpu.evaluate()).unwrap();
    eprintln!(
        "cpu: 1 epoch of 6000 at batch 32 + eval in {:.2?}: accuracy {:.4}",
        started.elapsed(),
        cpu_eval.accuracy
    );
    for backend in backends() {
        let Some(mut gpu) = gpu_backend("one_epoch_accuracy_matches_cpu", &backend, &params, &data)
        else {
            continue;
        };
        let started = Instant::now();
        let mut reports = 0;
        block_on(gpu.train_epoch(&order, 32, &mut |_| reports += 1)).unwrap();
        let trained = started.elapsed();
        let gpu_eval = block_on(gpu.evaluate()).unwrap();
        eprintln!(
            "{backend}: 1 epoch of 6000 at batch 32 in {trained:.2?} ({reports} progress reports), eval in {:.2?}: accuracy {:.4} (cpu {:.4})",
            started.elapsed() - trained,
            gpu_eval.accuracy,
            cpu_eval.accuracy
        );
        let gap = (gpu_eval.accuracy - cpu_eval.accuracy).abs();
        assert!(
            gap <= 0.01,
            "{backend}: test accuracy {} vs cpu {}",
            gpu_eval.accuracy,
            cpu_eval.accuracy
        );
        assert_eq!(gpu_eval.predictions.len(), 1000);
    }
}

#[test]
fn gpu_training_is_deterministic() {
    let data = mnist(200, 100);
    let params = Params::init(&ModelConfig::default(), 3);
    let order = epoch_order(data.train.len(), 5, 0, true);
    for backend in backends() {
        let mut runs = Vec::new();
        for _ in 0..2 {
            let Some(mut gpu) =
                gpu_backend("gpu_training_is_deterministic", &backend, &params, &data)
            else {
                break;
            };
            let stats = block_on(gpu.train_epoch(&order, 37, &mut |_| {})).unwrap();
            let p = block_on(gpu.params()).unwrap();
            let o = block_on(gpu.optim_state()).unwrap();
            let e = block_on(gpu.evaluate()).unwrap();
            runs.push((stats.loss.to_bits(), p, o, e.loss.to_bits(), e.predictions));
        }
        if runs.len() == 2 {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                runs[0].0, runs[1].0,
                "{backend}: epoch loss differs between runs"
            );
            assert_eq!(
                bits(&runs[0].1.trainable),
                bits(&runs[1].1.trainable),
                "{backend}: parameters differ"
            );
            assert_eq!(
                bits(&runs[0].1.moving_var),
                bits(&runs[1].1.moving_var),
                "{backend}: moving var differs"
            );
            assert_eq!(
                bits(&runs[0].2.v),
                bits(&runs[1].2.v),
                "{backend}: adam v differs"
            );
            assert_eq!(runs[0].3, runs[1].3, "{backend}: eval loss differs");
            assert_eq!(runs[0].4, runs[1].4, "{backend}: predictions differ");
        }
    }
}

/// The one epoch driver as the page calls it (an epoch at a time; Stop part-way, then
/// the rest of the epoch from the totals it returned) leaves the parameters of an
/// uninterrupted epoch, to the bit, and the same evaluation.
#[test]
fn an_epoch_stopped_and_continued_gives_the_whole_epochs_bits() {
    let data = mnist(200, 100);
    let params = Params::init(&ModelConfig::default(), 3);
    let options = TrainOptions {
        epochs: 1,
        batch_size: 37,
        seed: 5,
        shuffle: true,
    };
    let base = StepProgress {
        steps_total: steps_per_epoch(data.train.len(), 37),
        ..StepProgress::default()
    };
    let test = "an_epoch_stopped_and_continued_gives_the_whole_epochs_bits";
    for backend in backends() {
        let Some(mut whole) = gpu_backend(test, &backend, &params, &data) else {
            continue;
        };
        let Some(mut parts) = gpu_backend(test, &backend, &params, &data) else {
            continue;
        };
        let epoch = |b: &mut GpuBackend, base, stop: &(dyn Fn(usize) -> bool + Sync)| {
            block_on(run_epoch(b, &options, 0, base, &mut |_| {}, stop)).unwrap()
        };
        let EpochOutcome::Finished(whole_epoch) = epoch(&mut whole, base, &|_| false) else {
            panic!("{backend}: the whole epoch stopped");
        };
        let EpochOutcome::Stopped(partial) = epoch(&mut parts, base, &|done| done >= 1) else {
            panic!("{backend}: the epoch did not stop");
        };
        assert!(
            (1..base.steps_total).contains(&partial.steps_done),
            "{backend}: stopped after {partial:?}"
        );
        let EpochOutcome::Finished(parts_epoch) = epoch(&mut parts, partial, &|_| false) else {
            panic!("{backend}: the rest of the epoch stopped");
        };
        let (model, whole_model) = (&parts_epoch, &whole_epoch);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&model.params.trainable),
            bits(&whole_model.params.trainable),
            "{backend}: parameters"
        );
        assert_eq!(
            block_on(parts.optim_state()).unwrap(),
            block_on(whole.optim_state()).unwrap(),
            "{backend}: Adam's state"
        );
        assert_eq!(parts_epoch.eval, whole_epoch.eval, "{backend}: evaluation");
    }
}

#[test]
fn load_round_trips_parameters() {
    let data = mnist(100, 50);
    let params = Params::init(&ModelConfig::default(), 9);
    for backend in backends() {
        let Some(mut gpu) = gpu_backend("load_round_trips_parameters", &backend, &params, &data)
        else {
            continue;
        };
        let mut other = Params::init(&ModelConfig::default(), 10);
        other.moving_mean[5] = 0.25;
        other.moving_var[7] = 2.5;
        let mut optim = mnist_gpu::model::OptimState::new(other.trainable.len());
        optim.m[3] = 0.5;
        optim.v[4] = 0.125;
        optim.step = 17;
        gpu.load(&other, Some(&optim)).unwrap();
        assert_eq!(
            block_on(gpu.params()).unwrap(),
            other,
            "{backend}: params after load"
        );
        assert_eq!(
            block_on(gpu.optim_state()).unwrap(),
            optim,
            "{backend}: optimiser state after load"
        );
        let wrong = Params::init(&ModelConfig::mlp(&[64], false), 1);
        assert!(
            gpu.load(&wrong, None).is_err(),
            "{backend}: a mismatched layout must be refused"
        );
    }
}

#[test]
fn device_errors_are_clear() {
    let tiny = mnist(10, 10);
    let params = Params::init(&ModelConfig::default(), 1);
    let open = |backend: Option<&str>, adapter: Option<&str>| {
        let choice = DeviceChoice {
            backend: backend.map(str::to_string),
            adapter: adapter.map(str::to_string),
        };
        match GpuBackend::new(params.clone(), Hyper::default(), tiny.clone(), &choice) {
            Ok(_) => panic!("{choice:?} should fail"),
            Err(e) => e,
        }
    };
    let e = open(Some("directx9"), None);
    assert!(matches!(e, DeviceError::UnknownBackend { .. }), "{e}");
    let text = e.to_string();
    for name in ["--backend", "directx9", "vulkan", "gl", "metal", "dx12"] {
        assert!(text.contains(name), "message lacks {name}: {text}");
    }
    assert!(list_adapters(&DeviceChoice {
        backend: Some("nope".into()),
        adapter: None
    })
    .is_err());

    let found = list_adapters(&DeviceChoice::default()).expect("enumeration works");
    if found.is_empty() {
        let e = open(None, None);
        assert!(e.to_string().contains("--cpu-fallback"), "{e}");
        let why = "no GPU adapter, so only the unknown-backend case was checked";
        skip("device_errors_are_clear", why, ADAPTER_FIX);
        return;
    }
    for wanted in ["99", "no-such-gpu-anywhere"] {
        let e = open(None, Some(wanted));
        assert!(matches!(e, DeviceError::AdapterNotFound { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(wanted) && text.contains("--adapter") && text.contains("--cpu-fallback"),
            "{text}"
        );
        for a in &found {
            assert!(
                text.contains(&a.name),
                "message does not list adapter {}: {text}",
                a.name
            );
        }
    }
    let table = mnist_gpu::gpu::format_adapters(&found);
    assert!(table.contains(&found[0].name), "{table}");
}
