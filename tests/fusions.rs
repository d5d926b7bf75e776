//! Each fusion the planner chooses (`src/layers/plan.rs`) against the unfused layers: the
//! same steps trained with only that fusion on, and with every one, end with the model
//! the unfused trainer ends with, on the CPU and on every GPU backend in
//! `MNIST_GPU_TEST_BACKENDS` (default `vulkan,gl`; a backend without an adapter is
//! skipped with a message, or fails when env `CI` is set).

mod common;

use common::gpu::{assert_predictions_agree, available, backends, choice, compare_state};
use mnist_gpu::backend::{Backend, EvalStats};
use mnist_gpu::cpu::CpuBackend;
use mnist_gpu::data::{self, Mnist};
use mnist_gpu::gpu::GpuBackend;
use mnist_gpu::host::block_on;
use mnist_gpu::layers::plan::Fusions;
use mnist_gpu::model::{Hyper, ModelConfig, Params};
use mnist_gpu::train::epoch_order;

/// After 20 steps (differences in summation order compound through Adam's
/// normalisation), as the GPU/CPU agreement test allows.
const TOL: f64 = 1e-4;

/// Each fusion alone, and all of them, against none.
fn fused_sets() -> [(&'static str, Fusions); 4] {
    let none = Fusions::NONE;
    [
        (
            "relu_in_gemm",
            Fusions {
                relu_in_gemm: true,
                ..none
            },
        ),
        (
            "batchnorm_dense_backward",
            Fusions {
                batchnorm_dense_backward: true,
                ..none
            },
        ),
        (
            "sparse_first_layer",
            Fusions {
                sparse_first_layer: true,
                ..none
            },
        ),
        ("all", Fusions::ALL),
    ]
}

fn subset() -> Mnist {
    let m = Mnist::load(&data::builtin_dir()).unwrap();
    Mnist {
        train: m.train.truncated(640),
        test: m.test.truncated(100),
    }
}

/// 20 steps of batch 32 (two hidden layers, so a ReLU sits between two dense layers).
fn train(backend: &mut dyn Backend, data: &Mnist) {
    let order = epoch_order(data.train.len(), 11, 0, true);
    block_on(backend.train_epoch(&order, 32, &mut |_| {})).unwrap();
}

fn start() -> (Params, Mnist) {
    (
        Params::init(&ModelConfig::mlp(&[129, 33], false), 7),
        subset(),
    )
}

#[test]
fn each_cpu_fusion_matches_the_unfused_layers() {
    let (params, data) = start();
    let mut unfused = CpuBackend::new(params.clone(), Hyper::default(), data.clone());
    unfused.set_fusions(Fusions::NONE);
    assert!(!unfused.sparse_input(), "no fusion: the dense first layer");
    train(&mut unfused, &data);
    for (name, fusions) in fused_sets() {
        let mut fused = CpuBackend::new(params.clone(), Hyper::default(), data.clone());
        fused.set_fusions(fusions);
        assert_eq!(fused.sparse_input(), fusions.sparse_first_layer, "{name}");
        train(&mut fused, &data);
        compare_state(&format!("cpu, {name} fused"), &mut fused, &mut unfused, TOL);
    }
}

/// The MLP trained layer by layer through the general path (`cpu/stack.rs`, which
/// trains every other model) ends where the fused path ends.
#[test]
fn the_layer_stack_matches_the_fused_mlp() {
    let (params, data) = start();
    let mut fused = CpuBackend::new(params.clone(), Hyper::default(), data.clone());
    train(&mut fused, &data);
    let mut stack = CpuBackend::new(params, Hyper::default(), data.clone());
    stack.use_layer_stack();
    assert!(!stack.sparse_input());
    train(&mut stack, &data);
    compare_state("cpu, layer stack", &mut stack, &mut fused, TOL);
    let (a, b) = (block_on(stack.evaluate()), block_on(fused.evaluate()));
    let predictions = |eval: anyhow::Result<EvalStats>| eval.unwrap().predictions;
    assert_predictions_agree("cpu, layer stack", &predictions(a), &predictions(b));
}

/// The convnet's first convolution and the max-pool above it as one forward and one
/// backward (`pool_into_first_conv`, the CPU layer path's fusion) train the same model as
/// the two layers, bit for bit. (The GPU runs the two layers.)
#[test]
fn the_pooled_first_convolution_is_the_two_layers_bit_for_bit() {
    let params = Params::init(&ModelConfig::convnet(false), 7);
    let pooled = Fusions {
        pool_into_first_conv: true,
        ..Fusions::NONE
    };
    same_bits("pool_into_first_conv", params, (pooled, Fusions::NONE));
}

/// Adam's update of the first kernel inside the sparse backward pass (`adam_in_backward`,
/// which the trainer runs on more than one thread only) trains the same model as Adam's
/// sweep after the pass, bit for bit, on two threads and on three.
#[test]
fn adam_in_the_backward_pass_is_the_sweep_bit_for_bit() {
    let (params, _) = start();
    let sparse = Fusions {
        sparse_first_layer: true,
        ..Fusions::NONE
    };
    let fused = Fusions {
        adam_in_backward: true,
        ..sparse
    };
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
        pool.expect("a thread pool").install(|| {
            // The trainer fuses on more than one thread only.
            let data = subset();
            let mut backend = CpuBackend::new(params.clone(), Hyper::default(), data);
            backend.set_fusions(fused);
            assert_eq!(backend.fuses_adam(), threads > 1, "{threads} threads");
            if threads > 1 {
                same_bits("adam_in_backward", params.clone(), (fused, sparse));
            }
        });
    }
}

/// Trains `params` with each of `fusions`: the parameters and Adam's moments end the
/// same to the bit (and not where they started), and so do the test predictions.
fn same_bits(name: &str, params: Params, (fused, unfused): (Fusions, Fusions)) {
    let data = subset();
    let open = |fusions| {
        let mut backend = CpuBackend::new(params.clone(), Hyper::default(), data.clone());
        backend.set_fusions(fusions);
        backend
    };
    let (mut fused, mut unfused) = (open(fused), open(unfused));
    train(&mut fused, &data);
    train(&mut unfused, &data);
    let bits = |backend: &mut CpuBackend| {
        let params = block_on(backend.params()).unwrap();
        let optim = block_on(backend.optim_state()).unwrap();
        let all = [params.trainable, optim.m, optim.v].concat();
        all.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    let (a, b) = (bits(&mut fused), bits(&mut unfused));
    assert!(a == b, "{name}: the fused layers trained another model");
    let untrained = bits(&mut CpuBackend::new(params, Hyper::default(), data));
    assert!(a != untrained, "{name}: nothing trained");
    let (a, b) = (block_on(fused.evaluate()), block_on(unfused.evaluate()));
    let predictions = |eval: anyhow::Result<EvalStats>| eval.unwrap().predictions;
    assert_eq!(predictions(a), predictions(b), "{name}");
}

#[test]
fn each_gpu_fusion_matches_the_unfused_layers() {
    let (params, data) = start();
    let test = "each_gpu_fusion_matches_the_unfused_layers";
    for backend in backends() {
        let open = || {
            GpuBackend::new(
                params.clone(),
                Hyper::default(),
                data.clone(),
                &choice(&backend),
            )
        };
        let Some(mut unfused) = available(test, &backend, open()) else {
            continue;
        };
        unfused.set_fusions(Fusions::NONE);
        train(&mut unfused, &data);
        // The GPU has no sparse first layer: that set is the unfused trainer again.
        for (name, fusions) in fused_sets() {
            let mut fused = open().unwrap();
            fused.set_fusions(fusions);
            train(&mut fused, &data);
            let what = format!("{backend}, {name} fused");
            compare_state(&what, &mut fused, &mut unfused, TOL);
            let (a, b) = (
                block_on(fused.evaluate()).unwrap(),
                block_on(unfused.evaluate()).unwrap(),
            );
            assert_predictions_agree(&what, &a.predictions, &b.predictions);
        }
    }
}
