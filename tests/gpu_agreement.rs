//! The GPU trainer against the CPU reference, on every backend in
//! `MNIST_GPU_TEST_BACKENDS` (default `vulkan,gl`). A backend without an adapter is
//! skipped with a message, or fails when env `CI` is set.
//!
//! Errors are measured with `common::gpu::rel_err`: |gpu − cpu| / max(|cpu|, 1).

mod common;

use common::epochs::{assert_stopped_and_continued_match, one_epoch};
use common::gpu::*;
use common::skip::{skip, ADAPTER_FIX};
use mnist_gpu::backend::{Backend, StepProgress};
use mnist_gpu::cpu::CpuBackend;
use mnist_gpu::data::Mnist;
use mnist_gpu::gpu::{list_adapters, DeviceChoice, DeviceError, GpuBackend};
use mnist_gpu::host::block_on;
use mnist_gpu::layers::augment::cpu::AugmentKey;
use mnist_gpu::layers::Pipelines;
use mnist_gpu::model::{Hyper, ModelConfig, Params};
use mnist_gpu::train::epoch_order;
use std::time::Instant;

/// Every agreement case of every registered layer family (`src/layers/*/check.rs`): the
/// trainer's own dispatch builders on the GPU against the CPU reference, each failure
/// named by family, kernel, shape and output.
#[test]
fn every_layer_family_matches_its_cpu_reference() {
    let cases = mnist_gpu::layers::cases();
    for family in mnist_gpu::layers::SHADERS {
        let family_cases = cases.iter().filter(|c| c.family == family.family);
        assert!(
            family_cases.count() > 0,
            "family {} has no agreement case",
            family.family
        );
    }
    on_each_backend(
        "every_layer_family_matches_its_cpu_reference",
        |backend, ctx| {
            let pipelines = Pipelines::new(ctx).expect("pipelines");
            let mut failures = Vec::new();
            for case in &cases {
                match case.check(ctx, &pipelines) {
                    Ok(error) => {
                        eprintln!("{backend} {} {}: error {error:.1e}", case.family, case.name)
                    }
                    Err(message) => failures.push(format!("{backend} {message}")),
                }
            }
            assert!(failures.is_empty(), "{}", failures.join("\n"));
        },
    );
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
                assert_predictions_agree(&what, &ge.predictions, &ce.predictions);
            }
        }
    }
}

/// Models the layer path trains (`gpu/backend/layers.rs` against `cpu/stack.rs`): the
/// Keras convnet (dropout on), a list with a BatchNorm first, two dropouts (one right
/// after a ReLU) and a dense layer without one, and a convolution flattened straight
/// into the output. Two epochs of 11 steps each, the last a partial batch (the second
/// epoch's dropout masks count on from the first's), then the parameters, Adam's
/// moments and the evaluation against the CPU's. The convnet trains on augmented
/// images (`--augment`), a new set each epoch. The second epoch splits the dense
/// products over k (`gemm_split` + `reduce`), as hardware GPUs run them (the first dense
/// layer of each list splits at batch 16).
#[test]
fn layer_lists_train_as_on_the_cpu() {
    let data = mnist(170, 100);
    let hyper = Hyper {
        dropout_seed: 9,
        ..Hyper::default()
    };
    for backend in backends() {
        for layers in [
            mnist_gpu::model::KERAS_CONVNET,
            "batchnorm,dense(64,relu),dropout(0.3),dense(32),dropout(0.2),dense(10)",
            "conv2d(4,5,relu),flatten,dense(10)",
        ] {
            let config = ModelConfig {
                layers: mnist_gpu::model::parse_layers(layers).unwrap(),
                raw_pixels: false,
            };
            let params = Params::init(&config, 7);
            let test = "layer_lists_train_as_on_the_cpu";
            let gpu = GpuBackend::new(
                params.clone(),
                hyper.clone(),
                data.clone(),
                &choice(&backend),
            );
            let Some(mut gpu) = available(test, &backend, gpu) else {
                break;
            };
            let mut cpu = CpuBackend::new(params, hyper.clone(), data.clone());
            let augment = layers == mnist_gpu::model::KERAS_CONVNET;
            for epoch in 0..2 {
                gpu.set_split_k(epoch == 1);
                if augment {
                    let key = AugmentKey::new(11, epoch);
                    block_on(gpu.augment(key)).unwrap();
                    block_on(cpu.augment(key)).unwrap();
                }
                let order = epoch_order(data.train.len(), 11, epoch, true);
                let gs = block_on(gpu.train_epoch(&order, 16, &mut |_| {})).unwrap();
                let cs = block_on(cpu.train_epoch(&order, 16, &mut |_| {})).unwrap();
                let what = format!("{backend} {layers}, epoch {}", epoch + 1);
                assert!(
                    rel_err(gs.loss as f32, cs.loss as f32) <= LAYER_LIST_TOL,
                    "{what}: loss"
                );
                assert_eq!(gs.accuracy, cs.accuracy, "{what}: training accuracy");
                compare_state(&what, &mut gpu, &mut cpu, LAYER_LIST_TOL);
            }
            let (ge, ce) = (
                block_on(gpu.evaluate()).unwrap(),
                block_on(cpu.evaluate()).unwrap(),
            );
            let what = format!("{backend} {layers}");
            assert!(
                rel_err(ge.loss as f32, ce.loss as f32) <= LAYER_LIST_TOL,
                "{what}: eval loss"
            );
            assert_predictions_agree(&what, &ge.predictions, &ce.predictions);
        }
    }
}

/// After the 20 steps of [`layer_lists_train_as_on_the_cpu`].
const LAYER_LIST_TOL: f64 = 1e-5;

/// The dense products split over k (`gemm_split` + `reduce`, which hardware GPUs run for
/// products with few output tiles; software adapters only when asked) agree with the CPU
/// as the unsplit GEMM does: an epoch at batch 32 (the forwards split: the first layer's
/// 25 ways) and one at batch 128 (the weight and bias gradients of the layers above the
/// first split too, their k being the batch), each ending in a partial batch.
#[test]
fn split_k_training_matches_cpu() {
    forced_gemm_trains_as_on_the_cpu("split_k_training_matches_cpu", "split k", |gpu| {
        gpu.set_split_k(true)
    });
}

/// The wide-tile GEMM (`gemm_wide`, which hardware GPUs run for products of at least 128
/// tiles of 128×128; forced here for every dense product, however small) agrees with the
/// CPU as the 64×64 GEMM does: an epoch at batch 32 and one at batch 128, each ending in
/// a partial batch, each followed by an evaluation.
#[test]
fn wide_tile_training_matches_cpu() {
    forced_gemm_trains_as_on_the_cpu("wide_tile_training_matches_cpu", "wide tiles", |gpu| {
        gpu.set_wide_tiles(true)
    });
}

/// A two-hidden-layer MLP with a GEMM variant forced by `force` on every backend: an
/// epoch at batch 32 and one at batch 128 (each ending in a partial batch), each followed
/// by an evaluation, against the CPU.
fn forced_gemm_trains_as_on_the_cpu(test: &str, variant: &str, force: fn(&mut GpuBackend)) {
    let data = mnist(650, 100);
    let params = Params::init(&ModelConfig::mlp(&[128, 64], false), 5);
    let order = epoch_order(data.train.len(), 2, 0, true);
    for backend in backends() {
        let Some(mut gpu) = gpu_backend(test, &backend, &params, &data) else {
            continue;
        };
        force(&mut gpu);
        let mut cpu = CpuBackend::new(params.clone(), Hyper::default(), data.clone());
        for batch in [32, 128] {
            let what = format!("{backend}, {variant}, batch {batch}");
            epochs_agree(&what, (&mut gpu, &mut cpu), (&order, batch));
            evaluations_agree(&format!("{what}: eval"), &mut gpu, &mut cpu);
        }
    }
}

/// An epoch in `order` at `batch` on both trainers: the same loss and state within
/// [`TWENTY_STEPS_TOL`].
fn epochs_agree(
    what: &str,
    (gpu, cpu): (&mut GpuBackend, &mut CpuBackend),
    (order, batch): (&[u32], usize),
) {
    let gs = block_on(gpu.train_epoch(order, batch, &mut |_| {})).unwrap();
    let cs = block_on(cpu.train_epoch(order, batch, &mut |_| {})).unwrap();
    let loss_err = rel_err(gs.loss as f32, cs.loss as f32);
    assert!(loss_err <= TWENTY_STEPS_TOL, "{what}: loss {loss_err:.1e}");
    compare_state(what, gpu, cpu, TWENTY_STEPS_TOL);
}

/// Both trainers' evaluations: the same loss within [`TWENTY_STEPS_TOL`], the same
/// predictions.
fn evaluations_agree(what: &str, gpu: &mut GpuBackend, cpu: &mut CpuBackend) {
    let (ge, ce) = (
        block_on(gpu.evaluate()).unwrap(),
        block_on(cpu.evaluate()).unwrap(),
    );
    assert!(
        rel_err(ge.loss as f32, ce.loss as f32) <= TWENTY_STEPS_TOL,
        "{what}"
    );
    assert_predictions_agree(what, &ge.predictions, &ce.predictions);
}

/// `--augment` with the MLP: two epochs of 10 steps on each epoch's augmented images,
/// on the GPU and on both CPU paths (the sparse rows remade each epoch), agree as
/// unaugmented training does; the evaluation, on the test images as they are, too.
#[test]
fn augmented_training_matches_cpu() {
    let data = mnist(320, 100);
    let params = Params::init(&ModelConfig::default(), 7);
    for backend in backends() {
        let Some(mut gpu) = gpu_backend("augmented_training_matches_cpu", &backend, &params, &data)
        else {
            continue;
        };
        for sparse in [true, false] {
            let mut cpu = CpuBackend::new(params.clone(), Hyper::default(), data.clone());
            cpu.set_sparse_input(sparse);
            gpu.load(&params, None).unwrap();
            for epoch in 0..2 {
                let key = AugmentKey::new(3, epoch);
                block_on(gpu.augment(key)).unwrap();
                block_on(cpu.augment(key)).unwrap();
                let order = epoch_order(data.train.len(), 3, epoch, true);
                let what = format!("{backend}, cpu sparse={sparse}, epoch {}", epoch + 1);
                epochs_agree(&what, (&mut gpu, &mut cpu), (&order, 32));
            }
            let what = format!("{backend}, cpu sparse={sparse}: evaluation");
            evaluations_agree(&what, &mut gpu, &mut cpu);
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
    for augment in [false, true] {
        stopped_and_continued(augment);
    }
}

/// [`an_epoch_stopped_and_continued_gives_the_whole_epochs_bits`], with `--augment` or
/// without.
fn stopped_and_continued(augment: bool) {
    let data = mnist(200, 100);
    let params = Params::init(&ModelConfig::default(), 3);
    let test = "an_epoch_stopped_and_continued_gives_the_whole_epochs_bits";
    for backend in backends() {
        let Some(mut whole) = gpu_backend(test, &backend, &params, &data) else {
            continue;
        };
        let Some(mut parts) = gpu_backend(test, &backend, &params, &data) else {
            continue;
        };
        let what = format!("{backend}, augment {augment}");
        assert_stopped_and_continued_match((&mut whole, &mut parts), &one_epoch(augment), &what);
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

/// Every dispatch of a training step says its least work (`Dispatch::work`), so the
/// bench's step profile can set each kernel against the device's bound: on the default
/// model and on the convnet, every kernel has operations and bytes, and the default
/// model's GEMMs are its five products exactly (forwards 784→128 and 128→10, both weight
/// gradients with the bias row, the input gradient of the second layer; software
/// adapters never split a product).
#[test]
fn every_kernel_of_a_step_has_its_work() {
    let data = mnist(256, 10);
    let test = "every_kernel_of_a_step_has_its_work";
    for config in [ModelConfig::default(), ModelConfig::convnet(false)] {
        let params = Params::init(&config, 3);
        for backend in backends() {
            let Some(mut gpu) = gpu_backend(test, &backend, &params, &data) else {
                continue;
            };
            let batch = 16;
            let profile = gpu.profile_step(batch, 1).unwrap();
            for k in &profile {
                let w = k.work;
                assert!(
                    w.flops > 0.0 && w.bytes > 0.0,
                    "{backend}: {} has no work",
                    k.kernel
                );
            }
            if config != ModelConfig::default() {
                continue;
            }
            let gemm_flops: f64 = (profile.iter())
                .filter(|k| k.kernel.starts_with("gemm/"))
                .map(|k| k.work.flops)
                .sum();
            let b = batch as f64;
            let products = [b * 784.0 * 128.0, b * 128.0 * 10.0, 785.0 * b * 128.0]
                .into_iter()
                .chain([129.0 * b * 10.0, b * 10.0 * 128.0]);
            let by_hand: f64 = products.map(|p| 2.0 * p).sum();
            assert_eq!(gemm_flops, by_hand, "{backend}");
        }
    }
}

/// The bench's host-against-GPU profile (`GpuBackend::profile_submission`) runs the
/// steps it times: the parameters move, and its times are in order (the GPU's own time,
/// where the adapter has timestamps, within the wall time around it).
#[test]
fn the_submission_profile_times_real_steps() {
    let data = mnist(256, 10);
    let params = Params::init(&ModelConfig::default(), 3);
    for backend in backends() {
        let test = "the_submission_profile_times_real_steps";
        let Some(mut gpu) = gpu_backend(test, &backend, &params, &data) else {
            continue;
        };
        let before = block_on(gpu.params()).unwrap();
        let times = gpu.profile_submission(32, 4).unwrap();
        let after = block_on(gpu.params()).unwrap();
        assert_ne!(before.trainable, after.trainable, "{backend}: no step ran");
        assert!(
            times.dispatches > 0 && times.record > 0.0,
            "{backend}: {times:?}"
        );
        assert!(
            times.record + times.submit <= times.wall,
            "{backend}: {times:?}"
        );
        if let Some(gpu_secs) = times.gpu {
            // Clocks differ: allow the GPU's count a sliver over the host's.
            assert!(
                gpu_secs > 0.0 && gpu_secs <= times.wall * 1.05,
                "{backend}: {times:?}"
            );
        }
    }
}
