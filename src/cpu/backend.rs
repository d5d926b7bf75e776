//! `CpuBackend`, the `--cpu-fallback` trainer. Its dense path runs the reference kernels
//! step by step, exactly as the GPU kernels do (the ground truth of the agreement tests);
//! on sparse data (MNIST) it trains the first layer through [`super::sparse`] instead,
//! which computes the same step from the nonzero pixels only.

use super::forward::{dense_forward, forward_eval, EvalImages};
use super::profile::PhaseClock;
#[cfg(not(target_arch = "wasm32"))]
use super::profile::PhaseTime;
use super::sparse::{
    backward_tasks, batch_stats, fold_and_forward, sparse_first_layer_backward, ColumnBatch,
    FirstLayer, Kernel, KernelAdam, SparseImages,
};
use super::stack::{batchnorm_state, bn_params, LayerStack, Pass};
use crate::aligned::{Aligned, Rows};
use crate::backend::{Backend, Diverged, EpochEnd, EvalStats, Steps};
use crate::data::Mnist;
use crate::host::Task;
use crate::layers::adam::cpu::{adam_update, AdamStep};
use crate::layers::augment::cpu::{augment_part, warp_table, AugmentKey};
use crate::layers::batchnorm::cpu::{
    batchnorm_backward, batchnorm_batch_update, batchnorm_dense_backward, batchnorm_forward_train,
    gather_scaled, Affine, Moments, TrainOutputs,
};
use crate::layers::dense::cpu::{bias_grad, gemm_input_grad, gemm_weight_grad, PARALLEL_MIN_WORK};
use crate::layers::plan::Fusions;
use crate::layers::relu::cpu::relu_backward_in_place;
use crate::layers::softmax_xent::cpu::softmax_xent;
use crate::model::{Hyper, OptimState, ParamLayout, Params, CLASSES, INPUT};
use anyhow::{ensure, Result};

/// Samples trained per hand-off to the rayon pool; progress is reported after each. In a
/// browser one step at a time: the page gets its turn between steps (when due).
const SAMPLES_PER_CHUNK: usize = if cfg!(target_arch = "wasm32") {
    1
} else {
    8192
};
/// Multiply-adds evaluated between two chances to yield to a browser (about 10 ms in
/// wasm).
const EVAL_PART_WORK: usize = 10_000_000;
/// Test samples evaluated per forward pass.
const EVAL_BATCH: usize = 1000;

pub struct CpuBackend {
    params: Params,
    optim: OptimState,
    hyper: Hyper,
    data: Mnist,
    grads: Aligned,
    /// The fusions this model runs ([`Fusions::plan`] of the allowed ones).
    fusions: Fusions,
    /// The training images in sparse rows, when the sparse first-layer path is on.
    sparse_train: Option<SparseImages>,
    /// The test images in sparse rows, when evaluation's first layer runs sparse.
    sparse_test: Option<SparseImages>,
    /// The general path, layer by layer ([`super::stack`]): every model but the MLP,
    /// whose fused path is below (and the MLP too, when a test asks).
    stack: Option<LayerStack>,
    work: Workspace,
    /// The next step's batch, transposed while this step runs the layers above the first
    /// ([`Self::upper_layers`]), and the samples it holds.
    ahead: BatchAhead,
    /// Evaluation's arrays, for batches of [`EVAL_BATCH`].
    eval_work: EvalArrays,
    /// Per-phase wall time of the steps, while [`CpuBackend::profile_epoch`] runs.
    clock: PhaseClock,
    /// A one-thread pool for batches under [`PARALLEL_MIN_BATCH`], built when first needed.
    serial_pool: Option<rayon::ThreadPool>,
    /// Under `--augment`: the training images as loaded (`data.train.images` then holds
    /// the epoch's augmented ones) and the warp table, kept from the first epoch on.
    augment_source: Option<(Vec<u8>, Vec<[i32; 2]>)>,
}

/// Images augmented between two chances to yield to a browser (about 20 ms in wasm).
const AUGMENT_PART: usize = 2048;

/// Batches below this size train on one thread: their steps' parallel sections are so
/// short that handing half to the other thread costs more than it saves. With the
/// workers kept awake between splits (`super::awake`) a split costs about a
/// microsecond, so batches from 16 on split: on two cores batch 32 went from 0.27 s per
/// epoch (one thread, as before) to 0.18 s, batch 16 from 0.40 to 0.37 s. Results are
/// the same bits either way.
const PARALLEL_MIN_BATCH: usize = 16;

/// Activations and gradients of one batch, reused across steps.
#[derive(Default)]
struct Workspace {
    batch: usize,
    x: Rows,
    xhat: Rows,
    inv_std: Vec<f32>,
    /// Sparse path: batch statistics and the folded first layer's coefficients (see
    /// `sparse`).
    mean: Vec<f32>,
    var: Vec<f32>,
    coef: Vec<f32>,
    columns: ColumnBatch,
    /// `acts[0]` is the BatchNorm output; `acts[l + 1]` the output of Dense layer l
    /// (the last one holds the logits).
    acts: Vec<Rows>,
    /// `deltas[l]`: gradient of the mean loss with respect to `acts[l]`.
    deltas: Vec<Rows>,
    labels: Vec<u8>,
}

impl Workspace {
    /// Sizes the arrays for `batch` rows, in place: an epoch's shorter last batch and
    /// the next epoch's first reuse the same memory, and growing back zeroes only the
    /// rows added.
    fn resize(&mut self, batch: usize, widths: &[usize]) {
        if self.batch == batch && self.acts.len() == widths.len() {
            return;
        }
        self.batch = batch;
        self.x.resize(batch * INPUT);
        self.xhat.resize(batch * INPUT);
        for v in [
            &mut self.inv_std,
            &mut self.mean,
            &mut self.var,
            &mut self.coef,
        ] {
            v.resize(INPUT, 0.0);
        }
        resize_all(&mut self.acts, widths, batch);
        resize_all(&mut self.deltas, widths, batch);
        self.labels.resize(batch, 0);
    }
}

/// Evaluation's own arrays (the MLP's path; the layer stack has its own), so that
/// validating between epochs does not resize the training ones: it had made the first
/// step of every epoch allocate and zero them again.
#[derive(Default)]
struct EvalArrays {
    batch: usize,
    /// The batch's scaled pixels.
    x: Rows,
    /// As [`Workspace`]'s.
    acts: Vec<Rows>,
}

impl EvalArrays {
    /// Sizes the arrays for `batch` rows, in place.
    fn resize(&mut self, batch: usize, widths: &[usize]) {
        if self.batch != batch || self.acts.len() != widths.len() {
            self.batch = batch;
            self.x.resize(batch * INPUT);
            resize_all(&mut self.acts, widths, batch);
        }
    }
}

/// Sizes `arrays` (one per width) for `rows` rows each, in place.
fn resize_all(arrays: &mut Vec<Rows>, widths: &[usize], rows: usize) {
    arrays.resize_with(widths.len(), Rows::default);
    for (array, width) in arrays.iter_mut().zip(widths) {
        array.resize(rows * width);
    }
}

impl CpuBackend {
    /// A trainer on `data`; the first layer runs on sparse input (see [`super::sparse`])
    /// when at most [`SPARSE_MAX_DENSITY`](super::sparse::SPARSE_MAX_DENSITY) of the
    /// training pixels are nonzero (and the set has fewer than 2²⁴ images), else on the
    /// dense reference path. Evaluation's first layer runs sparse on the same terms, by
    /// the test set's own density.
    pub fn new(params: Params, hyper: Hyper, data: Mnist) -> Self {
        let len = params.trainable.len();
        let fusions = Fusions::plan(&params.config, Fusions::ALL);
        let stack = (!params.config.is_mlp()).then(|| LayerStack::new(&params.config));
        let sparse = fusions.sparse_first_layer && stack.is_none();
        // Training's transposed batches address their rows with 24 bits.
        let sparse_train = (sparse && data.train.len() < 1 << 24)
            .then(|| SparseImages::if_sparse(&data.train.images, INPUT))
            .flatten();
        let sparse_test = sparse
            .then(|| SparseImages::if_sparse(&data.test.images, INPUT))
            .flatten();
        CpuBackend {
            optim: OptimState::new(len),
            grads: Aligned::zeros(len),
            fusions,
            sparse_train,
            sparse_test,
            stack,
            params,
            hyper,
            data,
            work: Workspace::default(),
            ahead: BatchAhead::default(),
            eval_work: EvalArrays::default(),
            clock: PhaseClock::default(),
            serial_pool: None,
            augment_source: None,
        }
    }

    /// Trains one epoch in `order` at `batch` and returns where a step's time went: each
    /// phase's mean, median and 95th and 99th percentile wall seconds per step, and last
    /// the rest of the epoch's wall time per step (pool hand-offs between chunks of steps,
    /// progress, the loop; mean only, given for the median and percentiles too).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile_epoch(&mut self, order: &[u32], batch: usize) -> Result<Vec<PhaseTime>> {
        self.clock.start();
        let started = web_time::Instant::now();
        let result = crate::host::block_on(self.train_epoch(order, batch, &mut |_| {}));
        let total = started.elapsed().as_secs_f64();
        let mut phases = self.clock.stop();
        result?;
        let steps = crate::settings::steps_per_epoch(order.len(), batch).max(1) as f64;
        let timed: f64 = phases.iter().map(|p| p.total).sum();
        let between = (total - timed).max(0.0) / steps;
        for phase in &mut phases {
            phase.total /= steps;
        }
        phases.push(PhaseTime {
            name: PHASE_BETWEEN,
            total: between,
            median: between,
            p95: between,
            p99: between,
        });
        Ok(phases)
    }

    /// Chooses the first layer's path, in training and evaluation: sparse (folded
    /// BatchNorm, nonzero pixels only) or dense (the reference kernels, as the GPU runs
    /// them). Both train the same model.
    pub fn set_sparse_input(&mut self, sparse: bool) {
        // The layer stack (every model but the MLP) has no sparse first layer.
        let planned = self.fusions.sparse_first_layer && self.stack.is_none();
        let sparse_rows =
            |images: &[u8]| (sparse && planned).then(|| SparseImages::from_dense(images, INPUT));
        self.sparse_train = sparse_rows(&self.data.train.images);
        self.sparse_test = sparse_rows(&self.data.test.images);
    }

    /// Train with only the fusions of `allowed` (all by default), for the tests that
    /// check each fusion against the unfused layers. The sparse first layer, when
    /// allowed, still runs only on data sparse enough for it.
    pub fn set_fusions(&mut self, allowed: Fusions) {
        self.fusions = Fusions::plan(&self.params.config, allowed);
        if let Some(stack) = &mut self.stack {
            stack.set_fusions(self.fusions);
        }
        if !self.fusions.sparse_first_layer {
            (self.sparse_train, self.sparse_test) = (None, None);
        }
    }

    /// Trains and evaluates the MLP layer by layer too ([`super::stack`]), the reference
    /// its fused path is tested against. (Every other model always does.)
    pub fn use_layer_stack(&mut self) {
        (self.sparse_train, self.sparse_test) = (None, None);
        let mut stack = LayerStack::new(&self.params.config);
        stack.set_fusions(self.fusions);
        self.stack = Some(stack);
    }

    /// Whether training uses the sparse first-layer path.
    pub fn sparse_input(&self) -> bool {
        self.sparse_train.is_some()
    }

    /// Whether evaluation's first layer runs on the sparse test images.
    pub fn sparse_evaluation(&self) -> bool {
        self.sparse_test.is_some()
    }

    /// Runs `f` on a worker of the rayon pool, or of a one-thread pool for batches under
    /// [`PARALLEL_MIN_BATCH`].
    fn in_pool<R: Send>(&mut self, batch: usize, f: impl FnOnce(&mut Self) -> R + Send) -> R {
        if batch >= PARALLEL_MIN_BATCH || rayon::current_num_threads() == 1 {
            return super::awake::with_workers_awake(|| f(self));
        }
        let pool = match self.serial_pool.take() {
            Some(pool) => pool,
            None => match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
                Ok(pool) => pool,
                Err(_) => return rayon::scope(|_| f(self)),
            },
        };
        let result = pool.install(|| f(self));
        self.serial_pool = Some(pool);
        result
    }

    /// Trains on `batches` (step numbers `first..` of the epoch), pushing each step's
    /// (loss sum, correct count) to `results`. Stops early, returning true, when `stop`
    /// says so before a step; after a non-finite loss it returns false at once.
    fn run_steps(
        &mut self,
        batches: &[&[u32]],
        first: usize,
        stop: &(dyn Fn(usize) -> bool + Sync),
        results: &mut Vec<(f32, u32)>,
    ) -> bool {
        let mut stopped = false;
        for (i, indices) in batches.iter().enumerate() {
            if stop(first + i) {
                stopped = true;
                break;
            }
            let next = batches.get(i + 1).copied();
            if let (Some(sparse), Some(next)) = (&self.sparse_train, next) {
                sparse.prefetch(next);
            }
            let (loss, correct) = self.train_step(indices, next);
            results.push((loss, correct));
            if !loss.is_finite() {
                break;
            }
        }
        // A batch transposed ahead serves only the next step of this call: before another
        // call the images may change (`--augment`'s next epoch, a load).
        self.ahead.clear();
        stopped
    }

    /// One training step on the samples `indices` (`next`: the next step's, to transpose
    /// ahead); returns (loss sum, correct count).
    fn train_step(&mut self, indices: &[u32], next: Option<&[u32]>) -> (f32, u32) {
        self.clock.skip();
        let step = self.optim.step + 1;
        let alpha = self.hyper.adam_alpha(step);
        // Fused, the backward pass updates layer 0's kernel (all but 3% of the MLP's
        // parameters) as it goes; Adam's sweep below then skips it.
        let update = self.fuses_adam().then(|| AdamStep::new(alpha, &self.hyper));
        let (loss_sum, correct, fused) = self.forward_backward(indices, next, update);
        self.optim.step = step;
        let kernel0 = self.params.layout.kernels[0].clone();
        self.adam_sweep(if fused { kernel0 } else { 0..0 }, alpha);
        self.clock.mark(PHASE_ADAM);
        (loss_sum, correct)
    }

    /// Adam's update of every parameter but those in `skip`, from `self.grads`.
    fn adam_sweep(&mut self, skip: std::ops::Range<usize>, alpha: f32) {
        let (params, m, v) = (
            &mut self.params.trainable,
            &mut self.optim.m,
            &mut self.optim.v,
        );
        for part in [0..skip.start, skip.end..params.len()] {
            let grads = &self.grads[part.clone()];
            let (m, v) = (&mut m[part.clone()], &mut v[part.clone()]);
            adam_update(&mut params[part], grads, m, v, alpha, &self.hyper);
        }
    }

    /// Whether training steps on this pool update layer 0's kernel inside the backward
    /// pass: the `adam_in_backward` fusion, on the sparse path, on more than one thread
    /// (and then only in steps whose pass splits over threads: a step of fewer than about
    /// 16 images still sweeps; see [`Self::first_layer_backward_sparse`]). Row by row,
    /// each row and its gradient are still in cache, on the thread that computed them,
    /// and the step has one fork and join fewer. Measured (whole epochs, `cargo bench
    /// --bench epoch`, ten rounds alternating): on two threads the fused step was 1%
    /// faster at batch 32, 5% at 128 and 1% slower at 512; on one the single sweep after
    /// the pass was 4–6% faster, so there it stays.
    pub fn fuses_adam(&self) -> bool {
        // (No sparse rows on the layer stack, so this is the fused MLP path.)
        let sparse = self.sparse_train.is_some();
        self.fusions.adam_in_backward && sparse && rayon::current_num_threads() > 1
    }

    /// The mean training-mode loss on `indices` and its gradient with respect to every
    /// trainable parameter (flat layout), without changing the parameters. (The BatchNorm
    /// moving statistics are updated, as in any training-mode forward pass.)
    pub fn loss_and_gradients(&mut self, indices: &[u32]) -> (f32, &[f32]) {
        let (loss_sum, _, _) = self.forward_backward(indices, None, None);
        (loss_sum / indices.len() as f32, &self.grads)
    }

    /// Replaces G = xhatᵀ·δ1 in layer 0's kernel gradient by dW0 and fills dgamma/dbeta
    /// (see [`batchnorm_dense_backward`]).
    fn first_layer_backward_dense(&mut self) {
        let (bn_grads, grad_w0, dbias0) = first_layer_slices(&mut self.grads, &self.params.layout);
        let p = &self.params;
        batchnorm_dense_backward(grad_w0, p.kernel(0), bn_params(p), dbias0, bn_grads);
    }

    /// Forward and backward pass: fills `self.grads` (and, with `update`, may update layer
    /// 0's kernel: [`Self::first_layer_backward_sparse`]); returns (loss sum, correct
    /// count, whether layer 0's kernel was updated).
    fn forward_backward(
        &mut self,
        indices: &[u32],
        next: Option<&[u32]>,
        update: Option<AdamStep>,
    ) -> (f32, u32, bool) {
        if let Some(stack) = &mut self.stack {
            let train = &self.data.train;
            let samples = (&train.images[..], &train.labels[..], indices);
            let step = self.optim.step + 1;
            let model = (&mut self.params, &self.hyper);
            let clock = &mut self.clock;
            let (loss_sum, correct) =
                stack.forward_backward(model, samples, step, &mut self.grads, clock);
            return (loss_sum, correct, false);
        }
        let batch = indices.len();
        let widths = self.params.config.widths();
        self.work.resize(batch, &widths);
        for (label, &i) in self.work.labels.iter_mut().zip(indices) {
            *label = self.data.train.labels[i as usize];
        }
        if self.sparse_train.is_some() {
            self.first_layer_forward_sparse(indices);
        } else {
            self.batchnorm_forward_dense(indices);
        }
        let (loss_sum, correct) = self.upper_layers(batch, &widths, next);
        let updated = self.first_layer_backward(batch, update);
        (loss_sum, correct, updated)
    }

    /// The layers above the first of a step ([`upper_layers_step`]; `widths`: the model's
    /// [`ModelConfig::widths`](crate::model::ModelConfig::widths)). On the sparse path,
    /// where those layers' products are small ([`beside_transpose`]), they run on one
    /// thread beside the transpose of the next step's batch `next`.
    fn upper_layers(&mut self, batch: usize, widths: &[usize], next: Option<&[u32]>) -> (f32, u32) {
        let CpuBackend {
            params,
            work,
            grads,
            clock,
            sparse_train,
            ahead,
            fusions,
            ..
        } = self;
        let first = usize::from(sparse_train.is_some());
        let shape = (batch, first, fusions.relu_in_gemm);
        let upper_work: usize = widths[1..]
            .windows(2)
            .map(|k_n| batch * k_n[0] * k_n[1])
            .sum();
        let on_one_thread = beside_transpose(upper_work, rayon::current_num_threads());
        // `upper_layers_step` is a free function so that it borrows only the fields it
        // needs, leaving `ahead` to the other side of the join.
        match (sparse_train, next) {
            (Some(images), Some(next)) if on_one_thread => {
                let scale = params.config.pixel_scale();
                let upper = || upper_layers_step(params, work, grads, shape, clock);
                rayon::join(upper, || ahead.fill(images, next, scale)).0
            }
            _ => upper_layers_step(params, work, grads, shape, clock),
        }
    }

    /// Layer 0's and BatchNorm's backward, from δ1 in `deltas[1]`: fills their part of
    /// `self.grads` (`update`: on the sparse path only); returns whether layer 0's kernel
    /// was updated.
    fn first_layer_backward(&mut self, batch: usize, update: Option<AdamStep>) -> bool {
        let (k, n) = (INPUT, self.params.config.widths()[1]);
        let fusions = self.fusions;
        let w = &mut self.work;
        let layout = &self.params.layout;
        bias_grad(
            &w.deltas[1],
            batch,
            n,
            &mut self.grads[layout.biases[0].clone()],
        );
        // Only the sparse pass applies `update`; elsewhere the kernel would miss its step.
        debug_assert!(update.is_none() || self.sparse_train.is_some());
        let updated = if self.sparse_train.is_some() {
            self.first_layer_backward_sparse(update)
        } else if fusions.batchnorm_dense_backward {
            // Layer 0's weight-grad GEMM runs on xhat; first_layer_backward_dense turns the
            // result into dW0, dgamma and dbeta, so layer 0 needs no input-grad GEMM.
            let grad_w = &mut self.grads[layout.kernels[0].clone()];
            gemm_weight_grad(&w.xhat, &w.deltas[1], batch, k, n, grad_w);
            self.first_layer_backward_dense();
            false
        } else {
            self.first_layer_backward_unfused(batch);
            false
        };
        self.clock.mark(PHASE_FIRST_BACKWARD);
        updated
    }

    /// Layer 0 and BatchNorm, each on its own: the weight gradient against BatchNorm's
    /// output, the input gradient into `deltas[0]`, then BatchNorm's own backward.
    fn first_layer_backward_unfused(&mut self, batch: usize) {
        let (k, n) = (INPUT, self.params.config.widths()[1]);
        let w = &mut self.work;
        let p = &self.params;
        let (bn_grads, grad_w0, _) = first_layer_slices(&mut self.grads, &p.layout);
        gemm_weight_grad(&w.acts[0], &w.deltas[1], batch, k, n, grad_w0);
        let (lower, upper) = w.deltas.split_at_mut(1);
        gemm_input_grad(&upper[0], p.kernel(0), batch, k, n, None, &mut lower[0]);
        let dy_and_xhat = (&lower[0][..], &w.xhat[..]);
        batchnorm_backward(dy_and_xhat, p.gamma(), &w.inv_std, bn_grads, None);
    }

    /// Sparse path: layer 0's and BatchNorm's gradients from the transposed batch; with
    /// `update`, when the pass splits over threads ([`backward_tasks`]), also Adam's
    /// update of layer 0's kernel, row by row (the rest of the parameters are then left
    /// to the caller). Returns whether it updated the kernel.
    fn first_layer_backward_sparse(&mut self, update: Option<AdamStep>) -> bool {
        let update = update.filter(|_| backward_tasks(&self.work.columns) > 1);
        let layout = &self.params.layout;
        let (bn_grads, grad_w0, db0) = first_layer_slices(&mut self.grads, layout);
        let (gamma_beta, w0, _) = first_layer_slices(&mut self.params.trainable, layout);
        let w = &self.work;
        let layer = FirstLayer {
            mean: &w.mean,
            inv_std: &w.inv_std,
            params: Affine {
                gamma: &*gamma_beta.gamma,
                beta: &*gamma_beta.beta,
            },
        };
        let kernel = match update {
            None => Kernel::Read(w0),
            Some(step) => Kernel::Update(KernelAdam {
                w: w0,
                m: &mut self.optim.m[layout.kernels[0].clone()],
                v: &mut self.optim.v[layout.kernels[0].clone()],
                step,
            }),
        };
        let delta = (&w.deltas[1][..], db0);
        sparse_first_layer_backward(&w.columns, delta, (layer, kernel), grad_w0, bn_grads);
        update.is_some()
    }

    /// Reference path: gather the batch densely, BatchNorm forward into `acts[0]`.
    fn batchnorm_forward_dense(&mut self, indices: &[u32]) {
        let w = &mut self.work;
        gather_scaled(
            &self.data.train.images,
            INPUT,
            indices,
            self.params.config.pixel_scale(),
            &mut w.x,
        );
        self.clock.mark(PHASE_GATHER);
        let out = TrainOutputs {
            xhat: &mut w.xhat,
            y: &mut w.acts[0],
            inv_std: &mut w.inv_std,
        };
        let (params, moving) = batchnorm_state(&mut self.params);
        batchnorm_forward_train(&w.x, params, &self.hyper, moving, out);
        self.clock.mark(PHASE_STATS);
    }

    /// Sparse path: batch statistics, BatchNorm folded into layer 0, and layer 0's
    /// forward over the nonzero pixels, straight into `acts[1]`.
    fn first_layer_forward_sparse(&mut self, indices: &[u32]) {
        let sparse = self.sparse_train.as_ref().expect("sparse path");
        let w = &mut self.work;
        let p = &mut self.params;
        let scale = p.config.pixel_scale();
        if !self.ahead.take(indices, &mut w.columns) {
            w.columns.fill(sparse, indices, scale);
        }
        self.clock.mark(PHASE_GATHER);
        batch_stats(&w.columns, indices.len(), &mut w.mean, &mut w.var);
        let batch = Moments {
            mean: &w.mean[..],
            var: &w.var[..],
        };
        let moving = Moments {
            mean: &mut p.moving_mean[..],
            var: &mut p.moving_var[..],
        };
        batchnorm_batch_update(batch, &self.hyper, moving, &mut w.inv_std);
        self.clock.mark(PHASE_STATS);
        let layer = FirstLayer {
            mean: &w.mean,
            inv_std: &w.inv_std,
            params: bn_params(p),
        };
        let dense = (p.kernel(0), p.bias(0), p.config.dense_layers() > 1);
        fold_and_forward(
            sparse,
            (indices, scale),
            layer,
            dense,
            &mut w.coef,
            &mut w.acts[1],
        );
        self.clock.mark(PHASE_FOLD_AND_FORWARD);
    }
}

/// The upper layers of a step, from `acts[first]` (`first`: 1 on the sparse path, whose
/// first layer has written `acts[1]`, else 0): the dense forward to the logits, the
/// softmax cross-entropy and its gradient, and the backward of every layer above the
/// first down to δ1 in `deltas[1]`. Returns (loss sum, correct count).
fn upper_layers_step(
    params: &Params,
    w: &mut Workspace,
    grads: &mut [f32],
    (batch, first, relu_in_gemm): (usize, usize, bool),
    clock: &mut PhaseClock,
) -> (f32, u32) {
    let widths = params.config.widths();
    let layers = params.config.dense_layers();
    dense_forward(params, &mut w.acts, (batch, first), relu_in_gemm);
    clock.mark(PHASE_DENSE_FORWARD);
    let (loss_sum, correct) = softmax_xent(
        &w.acts[layers],
        &w.labels,
        CLASSES,
        Some(&mut w.deltas[layers]),
        None,
    );
    clock.mark(PHASE_SOFTMAX);
    let layout = &params.layout;
    for l in (1..layers).rev() {
        let (k, n) = (widths[l], widths[l + 1]);
        bias_grad(
            &w.deltas[l + 1],
            batch,
            n,
            &mut grads[layout.biases[l].clone()],
        );
        let grad_w = &mut grads[layout.kernels[l].clone()];
        gemm_weight_grad(&w.acts[l], &w.deltas[l + 1], batch, k, n, grad_w);
        // acts[l] of a hidden layer is a ReLU output: as the GEMM's mask it turns the
        // GEMM into the ReLU's backward too.
        let (lower, upper) = w.deltas.split_at_mut(l + 1);
        let mask = relu_in_gemm.then_some(&w.acts[l][..]);
        gemm_input_grad(
            &upper[0],
            params.kernel(l),
            batch,
            k,
            n,
            mask,
            &mut lower[l],
        );
        if !relu_in_gemm {
            relu_backward_in_place(&mut lower[l], &w.acts[l]);
        }
    }
    clock.mark(PHASE_DENSE_BACKWARD);
    (loss_sum, correct)
}

/// Whether a step on `threads` threads runs the layers above the first, of `upper_work`
/// multiply-adds, on one thread beside the transpose of the next batch
/// ([`CpuBackend::upper_layers`]) rather than splitting them and transposing in the step.
/// Below the GEMM's split size they run on one thread anyway, and the other threads would
/// idle. Above it, split over T threads they save (1 − 1/T) of their time, while the
/// transpose in the step costs 1/T of its own: beside it they win while (T − 1) times
/// their time is under the transpose's. On two threads that holds up to about twice the
/// split size (the default model up to batch 204: at 128 its layers take about 0.03 ms
/// on one thread, its transpose 0.035); on more, the split gains more than the
/// transpose costs.
///
/// Measured on two threads (whole epochs of the train command, alternating, seconds an
/// epoch): on an AMD EPYC, batch 32 0.1465 → 0.1405 (20 rounds); on an Intel Xeon (6
/// rounds each), batch 128 0.1163–0.1306 → 0.1114–0.1212 (medians 0.1219 → 0.1153,
/// faster in 5 of 6), 256 no clear change (0.096–0.106 → 0.100–0.102) and 512 slower
/// (0.082–0.090 → 0.089–0.091).
fn beside_transpose(upper_work: usize, threads: usize) -> bool {
    match threads {
        0 | 1 => false,
        2 => upper_work < 2 * PARALLEL_MIN_WORK,
        _ => upper_work < PARALLEL_MIN_WORK,
    }
}

/// A batch transposed a step ahead ([`CpuBackend::upper_layers`]), and its samples.
#[derive(Default)]
struct BatchAhead {
    columns: ColumnBatch,
    indices: Vec<u32>,
}

impl BatchAhead {
    /// Transposes the samples `indices` of `images`, in whole tiles
    /// ([`ColumnBatch::fill_in_tiles`]): at batch 32 on two threads, one group of 32
    /// instead of two of 16 took the step from 0.067 to 0.064 ms (the first-layer backward
    /// visits each column once instead of twice), and the transpose still ends within the
    /// layers it runs beside.
    fn fill(&mut self, images: &SparseImages, indices: &[u32], scale: f32) {
        self.indices.clear();
        self.columns.fill_in_tiles(images, indices, scale);
        self.indices.extend_from_slice(indices);
    }

    /// Drops the batch.
    fn clear(&mut self) {
        self.indices.clear();
    }

    /// Swaps the batch into `columns` if it holds the samples `indices`; says whether it
    /// did. Either way it then holds none.
    fn take(&mut self, indices: &[u32], columns: &mut ColumnBatch) -> bool {
        let ready = !indices.is_empty() && self.indices == indices;
        if ready {
            std::mem::swap(&mut self.columns, columns);
        }
        self.indices.clear();
        ready
    }
}

// Phases of a step, as `profile_epoch` names them (the dense path has no fold and no
// sparse forward: its BatchNorm forward counts as "batch statistics", its layer-0 GEMM
// as the dense forward). A step whose batch was transposed a step ahead
// ([`CpuBackend::upper_layers`]) has only its labels in the gather phase; the transpose's
// time shows in the phases of the layers above the first, which it ran beside, or in the
// first-layer backward's where it outlasted them.
const PHASE_GATHER: &str = "gather: labels + batch transpose/gather";
const PHASE_STATS: &str = "batch statistics + moving update";
const PHASE_FOLD_AND_FORWARD: &str = "fold + sparse_forward 784→128";
const PHASE_DENSE_FORWARD: &str = "gemm_forward (dense layers)";
const PHASE_SOFTMAX: &str = "softmax_xent";
const PHASE_DENSE_BACKWARD: &str = "backward of layers ≥ 1";
const PHASE_FIRST_BACKWARD: &str = "first-layer backward (xᵀ·δ, dW0, dγ, dβ; fused Adam)";
const PHASE_ADAM: &str = "adam_update";
#[cfg(not(target_arch = "wasm32"))]
const PHASE_BETWEEN: &str = "between steps (pool hand-off, loop)";

/// The slices of a flat per-parameter array (the gradients, or the parameters) that hold
/// BatchNorm's and the first dense layer's: (gamma and beta, the kernel) to write, and the
/// bias to read.
fn first_layer_slices<'g>(
    grads: &'g mut [f32],
    layout: &ParamLayout,
) -> (Affine<&'g mut [f32]>, &'g mut [f32], &'g [f32]) {
    // Layout order: gamma, beta, kernel 0, bias 0, … (each range after the previous one).
    let (head, tail) = grads.split_at_mut(layout.biases[0].start);
    let db0 = &tail[..layout.biases[0].len()];
    let (head, kernel0) = head.split_at_mut(layout.kernels[0].start);
    let (head, beta) = head.split_at_mut(layout.beta.start);
    let bn_grads = Affine {
        gamma: &mut head[layout.gamma.clone()],
        beta: &mut beta[..layout.beta.len()],
    };
    (bn_grads, &mut kernel0[..layout.kernels[0].len()], db0)
}

/// The sums of an evaluation under way, part by part ([`CpuBackend::evaluate_part`]).
struct EvalSums {
    loss_sum: f64,
    correct: u64,
    predictions: Vec<u8>,
}

impl EvalSums {
    /// Nothing summed yet, for `count` test samples.
    fn new(count: usize) -> EvalSums {
        EvalSums {
            loss_sum: 0.0,
            correct: 0,
            predictions: vec![0; count],
        }
    }

    fn finish(self) -> EvalStats {
        let count = self.predictions.len().max(1) as f64;
        EvalStats {
            loss: self.loss_sum / count,
            accuracy: self.correct as f64 / count,
            predictions: self.predictions,
        }
    }
}

impl CpuBackend {
    /// Evaluate the test samples in `range` (in batches of at most `EVAL_BATCH`), adding
    /// them to `sums`: the page evaluates in small parts, yielding to the browser between.
    fn evaluate_part(&mut self, range: std::ops::Range<usize>, sums: &mut EvalSums) {
        if self.stack.is_some() {
            return self.evaluate_part_layered(range, sums);
        }
        let layers = self.params.config.dense_layers();
        let widths = self.params.config.widths();
        let end = range.end;
        for start in range.step_by(EVAL_BATCH) {
            let batch = EVAL_BATCH.min(end - start);
            self.eval_work.resize(batch, &widths);
            let indices: Vec<u32> = (start as u32..(start + batch) as u32).collect();
            let w = &mut self.eval_work;
            let images = EvalImages {
                pixels: &self.data.test.images,
                sparse: self.sparse_test.as_ref(),
            };
            let eps = self.hyper.bn_eps;
            forward_eval(&self.params, eps, images, &indices, &mut w.x, &mut w.acts);
            let labels = &self.data.test.labels[start..start + batch];
            let (loss, ok) = softmax_xent(
                &self.eval_work.acts[layers],
                labels,
                CLASSES,
                None,
                Some(&mut sums.predictions[start..start + batch]),
            );
            sums.loss_sum += loss as f64;
            sums.correct += ok as u64;
        }
    }
}

impl CpuBackend {
    /// [`CpuBackend::evaluate_part`] through the layer stack.
    fn evaluate_part_layered(&mut self, range: std::ops::Range<usize>, sums: &mut EvalSums) {
        let stack = self.stack.as_mut().expect("the layer stack");
        let end = range.end;
        for start in range.step_by(EVAL_BATCH) {
            let batch = EVAL_BATCH.min(end - start);
            let indices: Vec<u32> = (start as u32..(start + batch) as u32).collect();
            let pass = Pass {
                batch,
                training: false,
                step: 0,
            };
            let test = &self.data.test;
            stack.forward(
                &mut self.params,
                &self.hyper,
                (&test.images, &indices),
                pass,
            );
            let (loss, ok) = softmax_xent(
                stack.logits(),
                &test.labels[start..start + batch],
                CLASSES,
                None,
                Some(&mut sums.predictions[start..start + batch]),
            );
            sums.loss_sum += loss as f64;
            sums.correct += ok as u64;
        }
    }

    /// The steps of [`Backend::train_steps`], in chunks of about [`SAMPLES_PER_CHUNK`]
    /// samples handed to the rayon pool, progress after each, the host's turn between.
    async fn steps(&mut self, steps: Steps<'_>) -> Result<EpochEnd> {
        let Steps {
            order,
            batch_size,
            base,
            progress,
            stop,
        } = steps;
        ensure!(batch_size > 0, "batch size must be at least 1");
        let mut totals = base;
        let batches: Vec<&[u32]> = order.chunks(batch_size).collect();
        let steps_per_chunk = (SAMPLES_PER_CHUNK / batch_size).max(1);
        let mut results = Vec::with_capacity(steps_per_chunk);
        for (c, chunk) in batches.chunks(steps_per_chunk).enumerate() {
            let first = totals.steps_done;
            // The steps run on a rayon worker, so the thread doing the serial parts
            // (BatchNorm, softmax) is one of the pool's own and the GEMM and Adam splits
            // fork from inside it. Run from this thread instead, every split wakes both
            // workers while this one sleeps, and between splits the idle workers' spinning
            // competes with the serial work for the cores.
            let stopped = self.in_pool(batch_size, |me| {
                me.run_steps(chunk, first, stop, &mut results)
            });
            for (i, (indices, (loss, correct))) in chunk.iter().zip(results.drain(..)).enumerate() {
                if !loss.is_finite() {
                    let step = c * steps_per_chunk + i;
                    return Err(Diverged::at(&base, step, loss, step + 1).into());
                }
                totals.steps_done += 1;
                totals.samples_done += indices.len();
                totals.loss_sum += loss as f64;
                totals.correct += correct as u64;
            }
            // Once per chunk, whose steps all finish together: reporting each of them
            // would hand the progress line a burst of counts with one timestamp.
            progress(&totals);
            if stopped {
                break;
            }
            crate::host::yield_if_due().await;
        }
        Ok(EpochEnd::from_totals(totals))
    }

    /// [`Backend::evaluate`] in parts of [`CpuBackend::eval_part`] samples, the host's
    /// turn between.
    async fn evaluate_in_parts(&mut self) -> Result<EvalStats> {
        let (count, part) = (self.data.test.len(), self.eval_part());
        let mut sums = EvalSums::new(count);
        for start in (0..count).step_by(part) {
            let end = (start + part).min(count);
            // On a worker of the pool, with the others awake: each batch forks and joins
            // a few times, and from outside the pool each fork would wait for a sleeping
            // worker to wake.
            let sums = &mut sums;
            super::awake::with_workers_awake(|| self.evaluate_part(start..end, sums));
            crate::host::yield_if_due().await;
        }
        Ok(sums.finish())
    }

    /// Test samples evaluated between two chances to yield to the host: all of them
    /// natively; in a browser about [`EVAL_PART_WORK`] multiply-adds' worth.
    fn eval_part(&self) -> usize {
        if cfg!(target_arch = "wasm32") {
            let per_image = self.params.config.parameter_count().unwrap_or(1).max(1);
            (EVAL_PART_WORK / per_image).clamp(1, EVAL_BATCH)
        } else {
            self.data.test.len().max(1)
        }
    }
}

impl CpuBackend {
    /// [`Backend::augment`]: the training images remade from the originals in parts, the
    /// host's turn between (so a browser tab stays responsive), then the sparse rows
    /// remade from them.
    async fn augment_images(&mut self, key: AugmentKey) -> Result<()> {
        let images = &mut self.data.train.images;
        let (original, table) = self
            .augment_source
            .get_or_insert_with(|| (images.clone(), warp_table()));
        let part = AUGMENT_PART * INPUT;
        for (p, (source, out)) in original
            .chunks(part)
            .zip(images.chunks_mut(part))
            .enumerate()
        {
            augment_part(source, (key, p * AUGMENT_PART), table, out);
            crate::host::yield_if_due().await;
        }
        if self.sparse_train.is_some() {
            self.sparse_train = Some(SparseImages::from_dense(images, INPUT));
        }
        Ok(())
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        if cfg!(target_arch = "wasm32") {
            return "cpu (wasm, one thread)".into();
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        format!("cpu ({threads} threads)")
    }

    fn train_count(&self) -> usize {
        self.data.train.len()
    }

    fn train_steps<'a>(&'a mut self, steps: Steps<'a>) -> Task<'a, EpochEnd> {
        Box::pin(self.steps(steps))
    }

    fn augment(&mut self, key: AugmentKey) -> Task<'_, ()> {
        Box::pin(self.augment_images(key))
    }

    fn evaluate(&mut self) -> Task<'_, EvalStats> {
        Box::pin(self.evaluate_in_parts())
    }

    fn params(&mut self) -> Task<'_, Params> {
        Box::pin(std::future::ready(Ok(self.params.clone())))
    }

    fn optim_state(&mut self) -> Task<'_, OptimState> {
        Box::pin(std::future::ready(Ok(self.optim.clone())))
    }

    fn adam_steps(&self) -> u64 {
        self.optim.step
    }

    fn load(&mut self, params: &Params, optim: Option<&OptimState>) -> Result<()> {
        ensure!(
            params.layout == self.params.layout,
            "the parameters do not fit this model's architecture"
        );
        self.params = params.clone();
        self.optim = optim
            .cloned()
            .unwrap_or_else(|| OptimState::new(params.trainable.len()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default model's layers above the first (128→10) run beside the next batch's
    /// transpose up to batch 204 on two threads, below the GEMM's split size (batch 102)
    /// on more, and never on one.
    #[test]
    fn small_upper_layers_run_beside_the_next_transpose() {
        let work = |batch: usize| batch * 128 * 10;
        for (batch, threads, beside) in [
            (128, 1, false),
            (32, 2, true),
            (128, 2, true),
            (204, 2, true),
            (205, 2, false),
            (512, 2, false),
            (102, 3, true),
            (103, 3, false),
            (32, 16, true),
            (128, 16, false),
        ] {
            let got = beside_transpose(work(batch), threads);
            assert_eq!(got, beside, "batch {batch} on {threads} threads");
        }
    }

    /// A batch transposed ahead is used once, and only by a step on the same samples.
    /// (That the trained bits are those of a fresh transpose, `tests/cpu_training.rs`
    /// checks on one thread against two and three.)
    #[test]
    fn a_batch_transposed_ahead_serves_only_its_own_samples() {
        let images: Vec<u8> = (0..8 * INPUT).map(|i| (i % 7 * 40) as u8).collect();
        let sparse = SparseImages::from_dense(&images, INPUT);
        let (a, b) = ([0u32, 3, 5], [0u32, 3, 6]);
        let mut ahead = BatchAhead::default();
        let mut columns = ColumnBatch::default();
        ahead.fill(&sparse, &a, 1.0);
        assert!(!ahead.take(&b, &mut columns), "another batch");
        assert!(
            !ahead.take(&a, &mut columns),
            "a batch passed over is dropped"
        );
        ahead.fill(&sparse, &a, 1.0);
        assert!(ahead.take(&a, &mut columns));
        assert!(!ahead.take(&a, &mut columns), "used once");
    }
}
