//! `CpuBackend`: the training step written with the reference kernels. It is both the
//! ground truth for the GPU and the `--cpu-fallback` trainer.

use super::adam::{adam_alpha, adam_update};
use super::batchnorm::{batchnorm_dense_backward, batchnorm_forward_eval, batchnorm_forward_train};
use super::gather_scaled;
use super::gemm::{bias_grad, gemm_forward, gemm_input_grad, gemm_weight_grad};
use super::softmax_xent::softmax_xent;
use crate::backend::{Backend, EpochStats, EvalStats, StepProgress};
use crate::data::Mnist;
use crate::model::{Hyper, OptimState, Params, CLASSES, INPUT};
use anyhow::{ensure, Result};

/// Test samples evaluated per forward pass.
const EVAL_BATCH: usize = 1000;

pub struct CpuBackend {
    params: Params,
    optim: OptimState,
    hyper: Hyper,
    data: Mnist,
    grads: Vec<f32>,
    work: Workspace,
}

/// Activations and gradients of one batch, reused across steps.
#[derive(Default)]
struct Workspace {
    batch: usize,
    x: Vec<f32>,
    xhat: Vec<f32>,
    inv_std: Vec<f32>,
    /// `acts[0]` is the BatchNorm output; `acts[l + 1]` the output of Dense layer l
    /// (the last one holds the logits).
    acts: Vec<Vec<f32>>,
    /// `deltas[l]`: gradient of the mean loss with respect to `acts[l]`.
    deltas: Vec<Vec<f32>>,
    labels: Vec<u8>,
}

impl Workspace {
    fn resize(&mut self, batch: usize, widths: &[usize]) {
        if self.batch == batch && self.acts.len() == widths.len() {
            return;
        }
        self.batch = batch;
        self.x = vec![0.0; batch * INPUT];
        self.xhat = vec![0.0; batch * INPUT];
        self.inv_std = vec![0.0; INPUT];
        self.acts = widths.iter().map(|w| vec![0.0; batch * w]).collect();
        self.deltas = widths.iter().map(|w| vec![0.0; batch * w]).collect();
        self.labels = vec![0; batch];
    }
}

impl CpuBackend {
    pub fn new(params: Params, hyper: Hyper, data: Mnist) -> Self {
        let len = params.trainable.len();
        CpuBackend {
            optim: OptimState::new(len),
            grads: vec![0.0; len],
            params,
            hyper,
            data,
            work: Workspace::default(),
        }
    }

    /// Dense forward from `acts[0]` to the logits in `acts[last]`.
    fn forward_dense(&mut self, batch: usize) {
        let widths = self.params.config.widths();
        let layers = self.params.config.dense_layers();
        for l in 0..layers {
            let (input, output) = self.work.acts.split_at_mut(l + 1);
            gemm_forward(
                &input[l],
                self.params.kernel(l),
                self.params.bias(l),
                batch,
                widths[l],
                widths[l + 1],
                l + 1 < layers,
                &mut output[0],
            );
        }
    }

    /// One training step on the samples `indices`; returns (loss sum, correct count).
    fn train_step(&mut self, indices: &[u32]) -> (f32, u32) {
        let (loss_sum, correct) = self.forward_backward(indices);
        self.optim.step += 1;
        let alpha = adam_alpha(&self.hyper, self.optim.step);
        adam_update(
            &mut self.params.trainable,
            &self.grads,
            &mut self.optim.m,
            &mut self.optim.v,
            alpha,
            &self.hyper,
        );
        (loss_sum, correct)
    }

    /// The mean training-mode loss on `indices` and its gradient with respect to every
    /// trainable parameter (flat layout), without changing the parameters. (The BatchNorm
    /// moving statistics are updated, as in any training-mode forward pass.)
    pub fn loss_and_gradients(&mut self, indices: &[u32]) -> (f32, &[f32]) {
        let (loss_sum, _) = self.forward_backward(indices);
        (loss_sum / indices.len() as f32, &self.grads)
    }

    /// Replaces G = xhatᵀ·δ1 in layer 0's kernel gradient by dW0 and fills dgamma/dbeta
    /// (see [`batchnorm_dense_backward`]).
    fn fold_batchnorm_grads(&mut self) {
        let layout = &self.params.layout;
        let (head, tail) = self.grads.split_at_mut(layout.kernels[0].start);
        let (grad_w0, after) = tail.split_at_mut(layout.kernels[0].len());
        let db0_start = layout.biases[0].start - layout.kernels[0].end;
        let dbias0 = &after[db0_start..db0_start + layout.biases[0].len()];
        let (dgamma, dbeta) = split_two(head, layout.gamma.clone(), layout.beta.clone());
        batchnorm_dense_backward(
            grad_w0,
            self.params.kernel(0),
            self.params.gamma(),
            self.params.beta(),
            dbias0,
            dgamma,
            dbeta,
        );
    }

    /// Forward and backward pass: fills `self.grads`; returns (loss sum, correct count).
    fn forward_backward(&mut self, indices: &[u32]) -> (f32, u32) {
        let batch = indices.len();
        let widths = self.params.config.widths();
        let layers = self.params.config.dense_layers();
        self.work.resize(batch, &widths);
        let w = &mut self.work;
        gather_scaled(
            &self.data.train.images,
            INPUT,
            indices,
            self.params.config.pixel_scale(),
            &mut w.x,
        );
        for (label, &i) in w.labels.iter_mut().zip(indices) {
            *label = self.data.train.labels[i as usize];
        }
        let layout = &self.params.layout;
        let (gamma, beta) = (
            &self.params.trainable[layout.gamma.clone()],
            &self.params.trainable[layout.beta.clone()],
        );
        batchnorm_forward_train(
            &w.x,
            batch,
            gamma,
            beta,
            self.hyper.bn_eps,
            self.hyper.bn_momentum,
            &mut self.params.moving_mean,
            &mut self.params.moving_var,
            &mut w.xhat,
            &mut w.acts[0],
            &mut w.inv_std,
        );
        self.forward_dense(batch);

        let w = &mut self.work;
        let (loss_sum, correct) = softmax_xent(
            &w.acts[layers],
            &w.labels,
            CLASSES,
            Some(&mut w.deltas[layers]),
            None,
        );

        let layout = &self.params.layout;
        for l in (0..layers).rev() {
            let (k, n) = (widths[l], widths[l + 1]);
            // Layer 0's weight-grad GEMM runs on xhat; batchnorm_dense_backward turns the
            // result into dW0, dgamma and dbeta, so layer 0 needs no input-grad GEMM.
            let input = if l == 0 { &w.xhat } else { &w.acts[l] };
            gemm_weight_grad(
                input,
                &w.deltas[l + 1],
                batch,
                k,
                n,
                &mut self.grads[layout.kernels[l].clone()],
            );
            bias_grad(
                &w.deltas[l + 1],
                batch,
                n,
                &mut self.grads[layout.biases[l].clone()],
            );
            if l == 0 {
                break;
            }
            // acts[l] of a hidden layer is a ReLU output: its mask turns the GEMM into ReLU backward.
            let (lower, upper) = w.deltas.split_at_mut(l + 1);
            gemm_input_grad(
                &upper[0],
                self.params.kernel(l),
                batch,
                k,
                n,
                Some(&w.acts[l]),
                &mut lower[l],
            );
        }
        self.fold_batchnorm_grads();
        (loss_sum, correct)
    }
}

/// Two disjoint mutable sub-slices (`a` must come before `b`).
fn split_two(
    v: &mut [f32],
    a: std::ops::Range<usize>,
    b: std::ops::Range<usize>,
) -> (&mut [f32], &mut [f32]) {
    let (head, tail) = v.split_at_mut(b.start);
    (&mut head[a], &mut tail[..b.len()])
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        format!("cpu ({threads} threads)")
    }

    fn train_epoch_from(
        &mut self,
        order: &[u32],
        batch_size: usize,
        start: &StepProgress,
        progress: &mut dyn FnMut(&StepProgress),
        stop: &dyn Fn(usize) -> bool,
    ) -> Result<EpochStats> {
        ensure!(batch_size > 0, "batch size must be at least 1");
        let mut totals = StepProgress {
            steps_total: order.len().div_ceil(batch_size),
            ..*start
        };
        for indices in order.chunks(batch_size).skip(start.steps_done) {
            if stop(totals.steps_done) {
                break;
            }
            let (loss, correct) = self.train_step(indices);
            if !loss.is_finite() {
                return Err(crate::backend::Diverged {
                    step: totals.steps_done + 1,
                    steps_total: totals.steps_total,
                    loss,
                    detected_after: totals.steps_done + 1,
                }
                .into());
            }
            totals.steps_done += 1;
            totals.samples_done += indices.len();
            totals.loss_sum += loss as f64;
            totals.correct += correct as u64;
            progress(&totals);
        }
        Ok(totals.epoch_stats())
    }

    fn evaluate(&mut self) -> Result<EvalStats> {
        let count = self.data.test.len();
        let layers = self.params.config.dense_layers();
        let widths = self.params.config.widths();
        let mut predictions = vec![0u8; count];
        let (mut loss_sum, mut correct) = (0.0f64, 0u64);
        for start in (0..count).step_by(EVAL_BATCH) {
            let batch = EVAL_BATCH.min(count - start);
            self.work.resize(batch, &widths);
            let indices: Vec<u32> = (start as u32..(start + batch) as u32).collect();
            let w = &mut self.work;
            gather_scaled(
                &self.data.test.images,
                INPUT,
                &indices,
                self.params.config.pixel_scale(),
                &mut w.x,
            );
            let p = &self.params;
            batchnorm_forward_eval(
                &w.x,
                p.gamma(),
                p.beta(),
                &p.moving_mean,
                &p.moving_var,
                self.hyper.bn_eps,
                &mut w.acts[0],
            );
            self.forward_dense(batch);
            let labels = &self.data.test.labels[start..start + batch];
            let (loss, ok) = softmax_xent(
                &self.work.acts[layers],
                labels,
                CLASSES,
                None,
                Some(&mut predictions[start..start + batch]),
            );
            loss_sum += loss as f64;
            correct += ok as u64;
        }
        Ok(EvalStats {
            loss: loss_sum / count.max(1) as f64,
            accuracy: correct as f64 / count.max(1) as f64,
            predictions,
        })
    }

    fn params(&mut self) -> Result<Params> {
        Ok(self.params.clone())
    }

    fn optim_state(&mut self) -> Result<OptimState> {
        Ok(self.optim.clone())
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
