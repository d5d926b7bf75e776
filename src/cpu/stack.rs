//! The CPU trainer's general path: the model as its list of layers, run forward in order
//! and backward in reverse, each layer through its family's CPU reference
//! (`src/layers/*/cpu.rs`). Every model the trainers accept runs here; the MLP also has
//! a fused path ([`super::backend`], with the sparse first layer) that
//! `tests/fusions.rs` checks against this one.
//!
//! Activations are `[batch, values]` row-major, images channels first
//! (`[batch, channels, height, width]`), so `flatten` is a copy and a dense layer reads an
//! image as its flat values. `acts[0]` is the scaled pixels and `acts[i + 1]` layer `i`'s
//! output; `deltas[i]` is the gradient of the mean loss with respect to `acts[i]`.
//!
//! Of [`Fusions`], this path runs `pool_into_first_conv`: a first convolution pools its
//! output as it computes it, and takes its gradient from the max-pool's, so the two
//! layers' forward is one pass, and their backward one, and `acts[1]` and `deltas[1]`
//! (between them) are never written.

use super::profile::PhaseClock;
use crate::aligned::Rows;
use crate::layers::batchnorm::cpu::{
    batchnorm_backward, batchnorm_forward_eval, batchnorm_forward_train, gather_scaled, Affine,
    Moments, TrainOutputs,
};
use crate::layers::conv2d::cpu::{
    conv2d_forward, conv2d_forward_pooled, conv2d_input_grad, conv2d_weight_grad,
    conv2d_weight_grad_pooled, PooledGrad,
};
use crate::layers::conv2d::ConvShape;
use crate::layers::dense::cpu::{bias_grad, gemm_forward, gemm_input_grad, gemm_weight_grad};
use crate::layers::dropout::cpu::{dropout_apply, layer_seed, DropMask};
use crate::layers::maxpool2d::cpu::{maxpool2d_backward, maxpool2d_forward};
use crate::layers::maxpool2d::PoolShape;
use crate::layers::plan::{activation_widths, Fusions, LayerOp};
use crate::layers::relu::cpu::relu_backward_in_place;
use crate::layers::softmax_xent::cpu::softmax_xent;
use crate::model::{Hyper, ModelConfig, ParamLayout, Params, CLASSES, INPUT};

/// The batch, the step and the mode a forward pass runs in.
#[derive(Clone, Copy, Debug)]
pub struct Pass {
    pub batch: usize,
    /// Training: batch statistics and dropout, whose mask is that of `step`.
    pub training: bool,
    /// The Adam update this pass's gradient feeds (1-based), the dropout mask's step.
    pub step: u64,
}

/// The layer list of one model with its activations and gradients, reused across steps.
pub struct LayerStack {
    ops: Vec<LayerOp>,
    /// Whether the first convolution takes its gradient from the pool above it.
    pool_into_first_conv: bool,
    /// Each layer's forward and backward phase names, for the step profile.
    phases: Vec<[&'static str; 2]>,
    /// Values per sample of `acts[i]`.
    widths: Vec<usize>,
    batch: usize,
    acts: Vec<Rows>,
    deltas: Vec<Rows>,
    /// Each max-pool layer's arg-maxes (see `maxpool2d_forward`), by layer; empty for
    /// the others.
    argmax: Vec<Vec<u32>>,
    /// The first layer's BatchNorm: normalised input and 1/sqrt(var + eps).
    xhat: Rows,
    inv_std: Vec<f32>,
    labels: Vec<u8>,
}

impl LayerStack {
    pub fn new(config: &ModelConfig) -> LayerStack {
        let ops = LayerOp::plan(config);
        LayerStack {
            phases: phase_names(config),
            pool_into_first_conv: Fusions::plan(config, Fusions::ALL).pool_into_first_conv,
            ops,
            widths: activation_widths(config),
            batch: 0,
            acts: Vec::new(),
            deltas: Vec::new(),
            argmax: Vec::new(),
            xhat: Rows::default(),
            inv_std: vec![0.0; config.batchnorm_features()],
            labels: Vec::new(),
        }
    }

    /// Runs those of `planned` (as [`Fusions::plan`] chose them for this model) that this
    /// path has (see the module's header).
    pub(super) fn set_fusions(&mut self, planned: Fusions) {
        self.pool_into_first_conv = planned.pool_into_first_conv;
    }

    /// Layer `i`'s ReLU's backward, in place on `deltas[i + 1]`, unless a max-pool above
    /// masked it already (it zeroes its input gradient where this ReLU's output is zero).
    fn relu_backward(&mut self, i: usize) {
        let pooled_above = matches!(self.ops.get(i + 1), Some(LayerOp::Pool { .. }));
        if self.ops[i].relu() && !pooled_above {
            relu_backward_in_place(&mut self.deltas[i + 1], &self.acts[i + 1]);
        }
    }

    /// The first two layers' backward, a convolution and the max-pool above it, in one
    /// pass (`pool_into_first_conv`): the convolution's gradients straight from the
    /// pool's output gradient `deltas[2]`.
    fn backward_first_pooled(&self, params: &Params, batch: usize, grads: &mut [f32]) {
        let (w, shape, relu, pool) = self.first_conv_and_pool(batch);
        let above = PooledGrad {
            dy: &self.deltas[2],
            y: &self.acts[2],
            argmax: &self.argmax[1],
            shape: pool,
            masked: relu,
        };
        let (dw, db) = weighted_grads(grads, &params.layout, w);
        conv2d_weight_grad_pooled(&self.acts[0], &above, &shape, dw, db);
    }

    /// Activations for `batch` rows, and their gradients too when `grads` (training):
    /// inference never allocates them.
    fn resize(&mut self, batch: usize, grads: bool) {
        if self.batch != batch || self.acts.is_empty() {
            self.batch = batch;
            self.acts = self.widths.iter().map(|w| Rows::zeros(batch * w)).collect();
            let pooled = |(op, w): (&LayerOp, &usize)| match op {
                LayerOp::Pool { .. } => vec![0; batch * w],
                _ => Vec::new(),
            };
            self.argmax = self.ops.iter().zip(&self.widths[1..]).map(pooled).collect();
            self.labels = vec![0; batch];
        }
        let grad_rows = self.deltas.first().map_or(0, |d| d.len() / INPUT);
        if grads && grad_rows != batch {
            self.deltas = self.acts.clone();
            self.xhat = Rows::zeros(batch * self.inv_std.len());
        }
    }

    /// The logits of the last forward pass, `[batch, 10]`.
    pub fn logits(&self) -> &[f32] {
        self.acts.last().map_or(&[], |v| &v[..])
    }

    /// A forward pass on the images `indices` of `images` (u8, 784 each), scaled by the
    /// model's pixel scale; the logits end in [`LayerStack::logits`]. In training mode the
    /// BatchNorm moving statistics are updated.
    pub fn forward(
        &mut self,
        params: &mut Params,
        hyper: &Hyper,
        (images, indices): (&[u8], &[u32]),
        pass: Pass,
    ) {
        self.resize(pass.batch, pass.training);
        self.forward_layers(
            (params, hyper),
            (images, indices),
            pass,
            &mut PhaseClock::default(),
        );
    }

    /// The gather and every layer's forward, `clock` marking each (when it runs).
    fn forward_layers(
        &mut self,
        (params, hyper): (&mut Params, &Hyper),
        (images, indices): (&[u8], &[u32]),
        pass: Pass,
        clock: &mut PhaseClock,
    ) {
        let scale = params.config.pixel_scale();
        gather_scaled(images, INPUT, indices, scale, &mut self.acts[0]);
        clock.mark(PHASE_GATHER);
        for i in 0..self.ops.len() {
            match i {
                0 if self.pool_into_first_conv => self.forward_first_pooled(params, pass.batch),
                // The first convolution pooled its output as it computed it.
                1 if self.pool_into_first_conv => {}
                _ => self.forward_layer(i, params, hyper, pass),
            }
            clock.mark(self.phases[i][0]);
        }
    }

    /// The first layer, a convolution (its weighted-layer index, shape and ReLU), and the
    /// second, a max-pool, at `batch`: the layers `pool_into_first_conv` fuses.
    fn first_conv_and_pool(&self, batch: usize) -> (usize, ConvShape, bool, PoolShape) {
        let (LayerOp::Conv { w, shape, relu }, LayerOp::Pool { shape: pool }) =
            (self.ops[0], self.ops[1])
        else {
            unreachable!("pool_into_first_conv needs a convolution, then a max-pool");
        };
        (
            w,
            ConvShape { batch, ..shape },
            relu,
            PoolShape { batch, ..pool },
        )
    }

    /// The first two layers' forward, a convolution and the max-pool above it, in one
    /// pass (`pool_into_first_conv`): `acts[2]` and the pool's arg-maxes, while `acts[1]`,
    /// the convolution's output, is not written.
    fn forward_first_pooled(&mut self, params: &Params, batch: usize) {
        let (w, shape, relu, pool) = self.first_conv_and_pool(batch);
        let (pixels, above) = self.acts.split_at_mut(1);
        let conv = (&pixels[0][..], params.kernel(w), params.bias(w));
        let (y, argmax) = (&mut above[1][..], &mut self.argmax[1][..]);
        conv2d_forward_pooled(conv, (&shape, relu), &pool, (y, argmax));
    }

    /// Layer `i`'s forward: `acts[i + 1]` from `acts[i]`.
    fn forward_layer(&mut self, i: usize, params: &mut Params, hyper: &Hyper, pass: Pass) {
        let (lower, upper) = self.acts.split_at_mut(i + 1);
        let (x, y) = (&lower[i][..], &mut upper[0][..]);
        let batch = pass.batch;
        match self.ops[i] {
            LayerOp::BatchNorm if pass.training => {
                let out = TrainOutputs {
                    xhat: &mut self.xhat,
                    y,
                    inv_std: &mut self.inv_std,
                };
                let (affine, moving) = batchnorm_state(params);
                batchnorm_forward_train(x, affine, hyper, moving, out);
            }
            LayerOp::BatchNorm => {
                let (affine, moving) = (bn_params(params), moving_stats(params));
                batchnorm_forward_eval(x, affine, moving, hyper.bn_eps, y);
            }
            LayerOp::Dense {
                w,
                inputs,
                units,
                relu,
            } => gemm_forward(
                x,
                params.kernel(w),
                params.bias(w),
                batch,
                inputs,
                units,
                relu,
                y,
            ),
            LayerOp::Conv { w, shape, relu } => {
                let shape = ConvShape { batch, ..shape };
                conv2d_forward(x, params.kernel(w), params.bias(w), &shape, relu, y);
            }
            LayerOp::Pool { shape } => {
                let argmax = &mut self.argmax[i];
                maxpool2d_forward(x, &PoolShape { batch, ..shape }, y, argmax);
            }
            LayerOp::Dropout { rate, rank } if pass.training => {
                dropout_apply(x, &drop_mask((rate, rank), hyper, pass.step), y);
            }
            LayerOp::Flatten | LayerOp::Dropout { .. } => y.copy_from_slice(x),
        }
    }

    /// A training step's forward and backward on `indices`: `grads` (the flat layout)
    /// gets the gradient of the mean loss; returns (loss sum, correct count).
    /// `clock` times each layer's forward and backward (when it runs).
    pub fn forward_backward(
        &mut self,
        (params, hyper): (&mut Params, &Hyper),
        (images, labels, indices): (&[u8], &[u8], &[u32]),
        step: u64,
        grads: &mut [f32],
        clock: &mut PhaseClock,
    ) -> (f32, u32) {
        let pass = Pass {
            batch: indices.len(),
            training: true,
            step,
        };
        self.resize(pass.batch, true);
        for (label, &i) in self.labels.iter_mut().zip(indices) {
            *label = labels[i as usize];
        }
        self.forward_layers((params, hyper), (images, indices), pass, clock);
        let last = self.ops.len();
        let (logits, delta) = (&self.acts[last], &mut self.deltas[last]);
        let (loss_sum, correct) = softmax_xent(logits, &self.labels, CLASSES, Some(delta), None);
        clock.mark(PHASE_SOFTMAX);
        for i in (0..last).rev() {
            self.backward_layer(i, params, hyper, pass, grads);
            clock.mark(self.phases[i][1]);
        }
        (loss_sum, correct)
    }

    /// Layer `i`'s backward: its parameters' gradients from `deltas[i + 1]`, and
    /// `deltas[i]` unless `i` is the first layer (nothing needs the pixels' gradient).
    fn backward_layer(
        &mut self,
        i: usize,
        params: &Params,
        hyper: &Hyper,
        pass: Pass,
        grads: &mut [f32],
    ) {
        if self.pool_into_first_conv && i < 2 {
            // The convolution and its max-pool: one backward, at the convolution's turn.
            if i == 0 {
                self.backward_first_pooled(params, pass.batch, grads);
            }
            return;
        }
        let op = self.ops[i];
        self.relu_backward(i);
        let relu_below = i > 0 && self.ops[i - 1].relu();
        let (lower, upper) = self.deltas.split_at_mut(i + 1);
        let (dy, dx) = (&upper[0][..], &mut lower[i][..]);
        let (x, batch, first) = (&self.acts[i][..], pass.batch, i == 0);
        let layout = &params.layout;
        match op {
            LayerOp::BatchNorm => {
                let (dgamma, dbeta) = pair_mut(grads, &layout.gamma, &layout.beta);
                let bn_grads = Affine {
                    gamma: dgamma,
                    beta: dbeta,
                };
                let dy_and_xhat = (dy, &self.xhat[..]);
                batchnorm_backward(dy_and_xhat, params.gamma(), &self.inv_std, bn_grads, None);
            }
            LayerOp::Dense {
                w, inputs, units, ..
            } => {
                let (dw, db) = weighted_grads(grads, layout, w);
                bias_grad(dy, batch, units, db);
                gemm_weight_grad(x, dy, batch, inputs, units, dw);
                if !first {
                    gemm_input_grad(dy, params.kernel(w), batch, inputs, units, None, dx);
                }
            }
            LayerOp::Conv { w, shape, .. } => {
                let shape = ConvShape { batch, ..shape };
                let (dw, db) = weighted_grads(grads, layout, w);
                conv2d_weight_grad(x, dy, &shape, dw, db);
                if !first {
                    conv2d_input_grad(dy, params.kernel(w), &shape, None, dx);
                }
            }
            LayerOp::Pool { shape } => {
                let forward = (&self.acts[i + 1][..], &self.argmax[i][..]);
                maxpool2d_backward(dy, forward, &PoolShape { batch, ..shape }, relu_below, dx);
            }
            LayerOp::Dropout { rate, rank } => {
                dropout_apply(dy, &drop_mask((rate, rank), hyper, pass.step), dx);
            }
            LayerOp::Flatten => dx.copy_from_slice(dy),
        }
    }
}

const PHASE_GATHER: &str = "gather + labels";
const PHASE_SOFTMAX: &str = "softmax_xent";

/// "layer N KIND forward" and "… backward" for each layer of `config`: names made once
/// per distinct text and kept for the process (a profile's phases are `&'static str`).
fn phase_names(config: &ModelConfig) -> Vec<[&'static str; 2]> {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let mut intern = |text: String| -> &'static str {
        match names.iter().find(|name| **name == text) {
            Some(name) => name,
            None => {
                let name: &'static str = text.leak();
                names.push(name);
                name
            }
        }
    };
    let layers = config.layers.iter().enumerate();
    layers
        .map(|(i, layer)| {
            let kind = layer.to_string();
            let kind = kind.split('(').next().unwrap_or("");
            ["forward", "backward"].map(|pass| intern(format!("layer {} {kind} {pass}", i + 1)))
        })
        .collect()
}

/// The mask of the `rank`-th dropout layer, at `rate`, in the Adam update `step`
/// (1-based): the hash takes the step's low 32 bits.
fn drop_mask((rate, rank): (f32, usize), hyper: &Hyper, step: u64) -> DropMask {
    DropMask::new(rate, layer_seed(hyper.dropout_seed, rank), step as u32)
}

/// BatchNorm's parameters γ and β in `params`.
pub(super) fn bn_params(params: &Params) -> Affine<&[f32]> {
    Affine {
        gamma: params.gamma(),
        beta: params.beta(),
    }
}

/// BatchNorm's moving mean and variance in `params`, to read.
pub(super) fn moving_stats(params: &Params) -> Moments<&[f32]> {
    Moments {
        mean: &params.moving_mean[..],
        var: &params.moving_var[..],
    }
}

/// The first layer's BatchNorm γ and β, and its moving statistics to update.
pub(super) fn batchnorm_state(params: &mut Params) -> (Affine<&[f32]>, Moments<&mut [f32]>) {
    let Params {
        layout,
        trainable,
        moving_mean,
        moving_var,
        ..
    } = params;
    let affine = Affine {
        gamma: &trainable[layout.gamma.clone()],
        beta: &trainable[layout.beta.clone()],
    };
    let moving = Moments {
        mean: &mut moving_mean[..],
        var: &mut moving_var[..],
    };
    (affine, moving)
}

/// Weighted layer `w`'s kernel and bias gradients in the flat `grads`.
fn weighted_grads<'g>(
    grads: &'g mut [f32],
    layout: &ParamLayout,
    w: usize,
) -> (&'g mut [f32], &'g mut [f32]) {
    pair_mut(grads, &layout.kernels[w], &layout.biases[w])
}

/// Two disjoint ranges of `values`, `first` before `second`, both mutable.
fn pair_mut<'v>(
    values: &'v mut [f32],
    first: &std::ops::Range<usize>,
    second: &std::ops::Range<usize>,
) -> (&'v mut [f32], &'v mut [f32]) {
    assert!(first.end <= second.start, "tensors out of layout order");
    let (head, tail) = values.split_at_mut(second.start);
    (&mut head[first.clone()], &mut tail[..second.len()])
}
