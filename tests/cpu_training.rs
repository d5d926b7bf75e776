//! The CPU trainer end to end: whole-model gradients against finite differences,
//! determinism (also across thread counts, and for an epoch stopped and continued),
//! partial batches, shuffling, and that it learns.

mod common;

use common::epochs::{assert_stopped_and_continued_match, one_epoch};
use mnist_gpu::backend::{Backend, EvalStats};
use mnist_gpu::cpu::CpuBackend;
use mnist_gpu::data::{self, Mnist};
use mnist_gpu::host::block_on;
use mnist_gpu::model::{format_layers, parse_layers, Hyper, ModelConfig, Params};
use mnist_gpu::settings::TrainOptions;
use mnist_gpu::train::{self, epoch_order, Silent};

fn subset(train: usize, test: usize) -> Mnist {
    let m = Mnist::load(&data::builtin_dir()).unwrap();
    Mnist {
        train: m.train.truncated(train),
        test: m.test.truncated(test),
    }
}

/// Every trainable tensor's gradient (BN gamma/beta, each kernel and bias, two hidden
/// layers so ReLU backward between dense layers is covered) against central differences
/// of the mean loss, on both first-layer paths (sparse input and dense reference) and
/// layer by layer.
#[test]
fn whole_model_gradient_matches_finite_differences() {
    let mlp = ModelConfig::mlp(&[7, 5], false);
    gradient_check(&mlp, |b| b.set_sparse_input(true));
    gradient_check(&mlp, |b| b.set_sparse_input(false));
    gradient_check(&mlp, CpuBackend::use_layer_stack);
}

/// The same check on models only the layer stack trains: a small convnet (both
/// convolutions, both poolings, flatten and dropout), and an MLP with a dense layer
/// without ReLU and a dropout between dense layers.
#[test]
fn layer_list_gradients_match_finite_differences() {
    for layers in [
        "conv2d(2,3,relu),maxpool2d(2),conv2d(3,3,relu),maxpool2d(2),flatten,dropout(0.25),\
         dense(10)",
        "batchnorm,dense(6),dropout(0.5),dense(5,relu),dropout(0.25),dense(10)",
    ] {
        let config = ModelConfig {
            layers: parse_layers(layers).unwrap(),
            raw_pixels: false,
        };
        gradient_check(&config, |_| {});
    }
}

fn gradient_check(config: &ModelConfig, setup: impl Fn(&mut CpuBackend)) {
    let params = check_point(config);
    let data = subset(16, 1);
    let indices: Vec<u32> = vec![3, 1, 4, 15, 9, 2];
    let loss_and_gradients = |p: &Params| {
        let mut b = CpuBackend::new(p.clone(), Hyper::default(), data.clone());
        setup(&mut b);
        let (loss, grads) = b.loss_and_gradients(&indices);
        (loss as f64, grads.to_vec())
    };
    let (_, grads) = loss_and_gradients(&params);
    let h = 1e-3f32;
    let mut checked = 0;
    let name = format_layers(&config.layers);
    let probes = probes(&params);
    for &i in &probes {
        let mut plus = params.clone();
        plus.trainable[i] += h;
        let mut minus = params.clone();
        minus.trainable[i] -= h;
        let numeric =
            (loss_and_gradients(&plus).0 - loss_and_gradients(&minus).0) / (2.0 * h as f64);
        let analytic = grads[i] as f64;
        let tolerance = 2e-3 + 0.03 * analytic.abs();
        assert!(
            (numeric - analytic).abs() <= tolerance,
            "{name}, param {i}: numeric {numeric} vs analytic {analytic}"
        );
        checked += (analytic.abs() > 1e-4) as usize;
    }
    assert!(
        checked >= probes.len() / 2,
        "{name}: too many probes had a zero gradient to be a meaningful check"
    );
}

/// `config`'s initial parameters moved off the special points where central differences
/// mislead: γ and β not 1 and 0, and every bias nonzero (on a blank patch a
/// convolution's output is its bias, and a zero there would sit on the ReLU's kink,
/// where central differences see half a slope).
fn check_point(config: &ModelConfig) -> Params {
    let mut params = Params::init(config, 3);
    let layout = params.layout.clone();
    for (i, g) in params.trainable[layout.gamma.clone()]
        .iter_mut()
        .enumerate()
    {
        *g = 1.0 + 0.3 * (i as f32 * 0.1).sin();
    }
    for (i, b) in params.trainable[layout.beta.clone()].iter_mut().enumerate() {
        *b = 0.2 * (i as f32 * 0.7).cos();
    }
    for bias in layout.biases {
        for (i, b) in params.trainable[bias].iter_mut().enumerate() {
            *b = 0.05 + 0.02 * (i as f32).sin();
        }
    }
    params
}

/// A spread of indices in every tensor, including pixels in the image's inked middle.
fn probes(params: &Params) -> Vec<usize> {
    let layout = &params.layout;
    let mut probes = Vec::new();
    if !layout.gamma.is_empty() {
        probes.extend([300, 410].map(|i| layout.gamma.start + i));
        probes.extend([350, 500].map(|i| layout.beta.start + i));
    }
    for (k, b) in layout.kernels.iter().zip(&layout.biases) {
        probes.extend([
            k.start,
            k.start + k.len() / 2 + 1,
            k.end - 1,
            b.start,
            b.end - 1,
        ]);
    }
    probes
}

/// The sparse first-layer path (the default on MNIST) and the dense reference path train
/// the same model: after two epochs of 60 steps every parameter, moving statistic and the
/// test accuracy agree to rounding. Batch 37 leaves a partial last batch. With
/// `--augment` too, where the sparse rows are remade from each epoch's images.
#[test]
fn sparse_and_dense_first_layer_paths_agree() {
    for augment in [false, true] {
        sparse_and_dense_paths_agree(augment);
    }
}

fn sparse_and_dense_paths_agree(augment: bool) {
    let data = subset(2220, 500);
    let config = ModelConfig::default();
    let options = TrainOptions {
        epochs: 2,
        batch_size: 37,
        seed: 5,
        shuffle: true,
        augment,
    };
    let run = |sparse: bool| {
        let mut backend = CpuBackend::new(Params::init(&config, 5), Hyper::default(), data.clone());
        backend.set_sparse_input(sparse);
        assert_eq!(backend.sparse_input(), sparse);
        let outcome = block_on(train::train(&mut backend, &options, 0, &mut Silent)).unwrap();
        (block_on(backend.params()).unwrap(), outcome)
    };
    let (sparse, sparse_run) = run(true);
    let (dense, dense_run) = run(false);
    let worst = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
            .fold(0.0f32, f32::max)
    };
    let e = worst(&sparse.trainable, &dense.trainable)
        .max(worst(&sparse.moving_mean, &dense.moving_mean))
        .max(worst(&sparse.moving_var, &dense.moving_var));
    assert!(
        e < 2e-4,
        "sparse and dense paths differ by {e} (augment: {augment})"
    );
    let (a, b) = (
        sparse_run.final_eval.accuracy,
        dense_run.final_eval.accuracy,
    );
    assert!((a - b).abs() <= 0.004, "accuracy {a} vs {b}");
    // Two epochs of 2220 augmented images teach less than of the images themselves.
    let floor = if augment { 0.75 } else { 0.85 };
    assert!(a > floor, "accuracy {a} (augment: {augment})");
}

/// Evaluation's sparse first layer (BatchNorm's moving statistics folded into the dense
/// layer, the nonzero pixels only) and the dense reference give a trained model the same
/// loss to rounding, and predictions of which at most one in a thousand differ (a near
/// tie between two classes may fall either way): the default model, one without a hidden
/// layer (no ReLU after the folded layer), and one on raw pixels (scale 1).
#[test]
fn sparse_and_dense_evaluation_agree() {
    let configs = [
        ModelConfig::default(),
        ModelConfig::mlp(&[], false),
        ModelConfig::mlp(&[64], true),
    ];
    for config in configs {
        let (params, _) = train_model(&config, 1000, (4, 50));
        let what = format_layers(&config.layers);
        let data = subset(100, 3000);
        let evaluate = |sparse: bool| {
            let mut backend = CpuBackend::new(params.clone(), Hyper::default(), data.clone());
            backend.set_sparse_input(sparse);
            assert_eq!(backend.sparse_evaluation(), sparse);
            block_on(backend.evaluate()).unwrap()
        };
        let (sparse, dense) = (evaluate(true), evaluate(false));
        assert!(dense.accuracy > 0.6, "{what}: accuracy {}", dense.accuracy);
        let differ = (sparse.predictions.iter())
            .zip(&dense.predictions)
            .filter(|(a, b)| a != b)
            .count();
        assert!(differ <= 3, "{what}: {differ} of 3000 predictions differ");
        let error = (sparse.loss - dense.loss).abs() / dense.loss;
        assert!(
            error < 1e-5,
            "{what}: loss {} vs {}",
            sparse.loss,
            dense.loss
        );
    }
}

/// MNIST is sparse enough for the sparse path to be chosen, in training and in
/// evaluation; a data set of dense images falls back to the dense path, each set by its
/// own density.
#[test]
fn sparse_path_is_chosen_by_density() {
    let data = subset(100, 10);
    let config = ModelConfig::default();
    let backend = CpuBackend::new(Params::init(&config, 1), Hyper::default(), data.clone());
    assert!(backend.sparse_input() && backend.sparse_evaluation());
    let denser = |images: &mut Vec<u8>| images.iter_mut().for_each(|p| *p = p.saturating_add(1));
    let mut dense = data.clone();
    denser(&mut dense.train.images);
    let backend = CpuBackend::new(Params::init(&config, 1), Hyper::default(), dense);
    assert!(!backend.sparse_input() && backend.sparse_evaluation());
    let mut dense = data;
    denser(&mut dense.test.images);
    let backend = CpuBackend::new(Params::init(&config, 1), Hyper::default(), dense);
    assert!(backend.sparse_input() && !backend.sparse_evaluation());
}

fn train_small(seed: u64, batch: usize) -> (Params, EvalStats) {
    train_model(&ModelConfig::default(), 1000, (seed, batch))
}

/// 2 epochs of `config` on the first `samples` training images, and the evaluation of
/// the first 200 test images after them.
fn train_model(
    config: &ModelConfig,
    samples: usize,
    (seed, batch): (u64, usize),
) -> (Params, EvalStats) {
    let data = subset(samples, 200);
    let options = TrainOptions {
        epochs: 2,
        batch_size: batch,
        seed,
        shuffle: true,
        augment: false,
    };
    let hyper = Hyper {
        dropout_seed: seed as u32,
        ..Hyper::default()
    };
    let mut backend = CpuBackend::new(Params::init(config, seed), hyper, data);
    let outcome = block_on(train::train(&mut backend, &options, 0, &mut Silent)).unwrap();
    (block_on(backend.params()).unwrap(), outcome.final_eval)
}

/// Every trained value's bits: parameters and BatchNorm moving statistics.
fn bits(p: &Params) -> Vec<u32> {
    p.trainable
        .iter()
        .chain(&p.moving_mean)
        .chain(&p.moving_var)
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn same_seed_gives_bit_identical_weights() {
    let (a, eval_a) = train_small(11, 32);
    let (b, eval_b) = train_small(11, 32);
    assert_eq!(bits(&a), bits(&b));
    assert_eq!(eval_a, eval_b);
    let (c, _) = train_small(12, 32);
    assert_ne!(bits(&a), bits(&c));
}

/// The CPU path splits its work by rows and columns, never a sum across threads, so the
/// weights are the same bits on one thread, on two and on three, and so is the
/// evaluation (its batch of 200 split by rows). Every batch here splits its forward and
/// backward. Batch 32 transposes each next batch beside the layers above the first on two
/// threads and on three; 128 and 200 do on two (200 with a partial group of samples) and
/// split their own transposes on three; 300 splits its transpose on both, also with a
/// partial group.
#[test]
fn weights_do_not_depend_on_the_thread_count() {
    for batch in [32, 128, 200, 300] {
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| train_small(5, batch))
        };
        let (one, eval_one) = on(1);
        for threads in [2, 3] {
            let (many, eval_many) = on(threads);
            assert!(
                bits(&one) == bits(&many),
                "batch {batch}, {threads} threads"
            );
            assert_eq!(eval_one, eval_many, "batch {batch}, {threads} threads");
        }
    }
}

/// An epoch stopped after its first step and continued from the totals it returned (as
/// the page's Stop and a resume do) ends with the uninterrupted epoch's bits, with
/// `--augment` and without. On three threads at batch 37, where each step transposes the
/// next step's batch ahead and the stop leaves one transposed.
#[test]
fn an_epoch_stopped_and_continued_gives_the_whole_epochs_bits() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build();
    pool.unwrap().install(|| {
        for augment in [false, true] {
            stopped_and_continued(augment);
        }
    });
}

/// [`an_epoch_stopped_and_continued_gives_the_whole_epochs_bits`], with `--augment` or
/// without.
fn stopped_and_continued(augment: bool) {
    let data = subset(300, 100);
    let params = Params::init(&ModelConfig::default(), 3);
    let open = || CpuBackend::new(params.clone(), Hyper::default(), data.clone());
    let (mut whole, mut parts) = (open(), open());
    let what = format!("augment {augment}");
    assert_stopped_and_continued_match((&mut whole, &mut parts), &one_epoch(augment), &what);
}

/// Evaluation runs in batches of 1,000 with arrays it keeps and resizes in place: on
/// 2,345 test images (a short last batch, then full ones again on the next evaluation)
/// it gives the same result twice, and the predictions of `infer`, which sizes its
/// arrays for all the images at once.
#[test]
fn evaluation_in_batches_matches_inference_at_once() {
    let data = subset(1000, 2345);
    let images = data.test.images.clone();
    let config = ModelConfig::default();
    let mut backend = CpuBackend::new(Params::init(&config, 3), Hyper::default(), data);
    let order = epoch_order(1000, 3, 0, true);
    block_on(backend.train_epoch(&order, 100, &mut |_| {})).unwrap();
    let first = block_on(backend.evaluate()).unwrap();
    let second = block_on(backend.evaluate()).unwrap();
    assert_eq!(first, second);
    assert_eq!(first.predictions.len(), 2345);
    let params = block_on(backend.params()).unwrap();
    let inferred: Vec<u8> = mnist_gpu::cpu::infer(&params, Hyper::default().bn_eps, &images)
        .iter()
        .map(|p| (0..p.len()).fold(0, |best, c| if p[c] > p[best] { c } else { best }) as u8)
        .collect();
    assert_eq!(first.predictions, inferred);
}

/// The convnet (through the layer stack, with dropout) is as deterministic as the MLP:
/// the same bits again, on one thread and on three, and other bits for another seed.
#[test]
fn the_convnet_trains_the_same_bits_on_any_thread_count() {
    let convnet = ModelConfig::convnet(false);
    let on = |threads: usize, seed: u64| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| train_model(&convnet, 300, (seed, 64)))
    };
    let (one, eval_one) = on(1, 5);
    let (three, eval_three) = on(3, 5);
    assert!(bits(&one) == bits(&three));
    assert_eq!(eval_one, eval_three);
    assert!(bits(&on(1, 6).0) != bits(&one));
}

/// Two epochs of the convnet on 2,000 images already read most digits.
#[test]
fn the_convnet_learns() {
    let (_, eval) = train_model(&ModelConfig::convnet(false), 2000, (42, 32));
    let accuracy = eval.accuracy;
    assert!(accuracy > 0.85, "accuracy {accuracy}");
}

#[test]
fn partial_last_batch_is_kept() {
    let data = subset(70, 10);
    let mut backend = CpuBackend::new(
        Params::init(&ModelConfig::default(), 1),
        Hyper::default(),
        data,
    );
    let order: Vec<u32> = (0..70).collect();
    let mut steps = Vec::new();
    let stats = block_on(backend.train_epoch(&order, 32, &mut |p| {
        steps.push((p.steps_done, p.samples_done))
    }))
    .unwrap();
    // One report per chunk of steps handed to the thread pool (here all three steps).
    assert_eq!(steps, vec![(3, 70)]);
    assert_eq!(stats.samples, 70);
    assert_eq!(block_on(backend.optim_state()).unwrap().step, 3);
}

#[test]
fn epoch_orders_are_seeded_permutations() {
    let a = epoch_order(1000, 5, 0, true);
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..1000).collect::<Vec<u32>>());
    assert_eq!(a, epoch_order(1000, 5, 0, true));
    assert_ne!(a, epoch_order(1000, 5, 1, true));
    assert_ne!(a, epoch_order(1000, 6, 0, true));
    assert_eq!(epoch_order(5, 5, 3, false), vec![0, 1, 2, 3, 4]);
}

#[test]
fn it_learns() {
    let data = subset(6000, 2000);
    let config = ModelConfig::default();
    let mut backend = CpuBackend::new(Params::init(&config, 42), Hyper::default(), data);
    let options = TrainOptions {
        epochs: 1,
        ..TrainOptions::default()
    };
    let outcome = block_on(train::train(&mut backend, &options, 0, &mut Silent)).unwrap();
    let record = &outcome.history[0];
    assert!(
        record.val_accuracy > 0.85,
        "one epoch on 6,000 samples reached only {}",
        record.val_accuracy
    );
    assert!(record.loss < 0.7 && record.val_loss < 0.6, "{record:?}");
    assert_eq!(outcome.final_eval.predictions.len(), 2000);
}

#[test]
fn deeper_and_raw_pixel_models_train() {
    let data = subset(2000, 500);
    for config in [
        ModelConfig::mlp(&[64, 32], false),
        ModelConfig::mlp(&[128], true),
    ] {
        let mut backend = CpuBackend::new(Params::init(&config, 1), Hyper::default(), data.clone());
        let options = TrainOptions {
            epochs: 2,
            ..TrainOptions::default()
        };
        let outcome = block_on(train::train(&mut backend, &options, 0, &mut Silent)).unwrap();
        assert!(
            outcome.final_eval.accuracy > 0.8,
            "{config:?}: {}",
            outcome.final_eval.accuracy
        );
    }
}
