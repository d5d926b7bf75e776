//! The GPU trainer's general path, the twin of `cpu/stack.rs`: every model but the MLP
//! (whose fused step is in the parent module) as its list of layers ([`LayerOp`]), each
//! dispatched through its family's host side. Activations follow the CPU's layout:
//! `acts[0]` holds the gathered pixels and `acts[i + 1]` layer `i`'s output, `deltas[i]`
//! the gradient of the mean loss with respect to `acts[i]`. A `flatten` is no kernel:
//! its output and gradient are its input's buffers.
//!
//! A ReLU's backward is the mask of whichever kernel writes the gradient of its output:
//! the input gradient of a dense or conv2d layer above it, or the backward of a max-pool
//! above it (through any `flatten` in between). Only a dropout directly above a ReLU
//! masks with a kernel of its own.

use super::{GpuBackend, Workspace};
use crate::device::kernel::{storage_zeroed, Dispatch};
use crate::layers::batchnorm::{BatchnormBackwardBindings, BnForward};
use crate::layers::conv2d::ConvShape;
use crate::layers::dense::{DenseShape, LinearOp};
use crate::layers::dropout::cpu::{layer_seed, DropMask};
use crate::layers::dropout::DropoutBindings;
use crate::layers::maxpool2d::PoolShape;
use crate::layers::plan::{activation_widths, LayerOp};
use crate::layers::relu::ReluBackwardBindings;

/// The activation and gradient buffers of the layer path for `cap` rows (a `flatten`'s
/// output sharing its input's), and `partial_bytes` of split-K partial sums.
pub(super) fn layer_workspace(
    device: &wgpu::Device,
    ops: &[LayerOp],
    widths: &[usize],
    (cap, features, partial_bytes): (usize, usize, u64),
) -> Workspace {
    let buffers = |name: &str| {
        let mut list: Vec<wgpu::Buffer> = Vec::with_capacity(widths.len());
        for (i, &width) in widths.iter().enumerate() {
            let flattened = i > 0 && matches!(ops[i - 1], LayerOp::Flatten);
            list.push(if flattened {
                list[i - 1].clone()
            } else {
                storage_zeroed(device, &format!("{name}{i}"), (cap * width * 4) as u64)
            });
        }
        list
    };
    Workspace {
        cap,
        xhat: storage_zeroed(device, "xhat", (cap * features * 4) as u64),
        acts: buffers("acts"),
        deltas: buffers("deltas"),
        scratch: storage_zeroed(
            device,
            "scratch",
            (cap * widths.iter().max().unwrap_or(&1) * 4) as u64,
        ),
        partial: storage_zeroed(device, "split-k partial sums", partial_bytes),
    }
}

/// Global step numbers of a dropout mask: the forward's uniform part is 0, the
/// backward's one less (wrapping), since softmax_xent advances the step counter between
/// them; the rest is the counter and the epoch's first step (`GpuBackend::state`).
const FORWARD_STEP_BASE: u32 = 0;
const BACKWARD_STEP_BASE: u32 = u32::MAX;

impl GpuBackend {
    /// Values per sample of each activation (the pixels, then every layer's output).
    pub(super) fn layer_widths(&self) -> Vec<usize> {
        activation_widths(&self.config)
    }

    /// The model's layers as the layer path runs them.
    fn ops(&self) -> Vec<LayerOp> {
        LayerOp::plan(&self.config)
    }

    fn work(&self) -> &Workspace {
        self.work.as_ref().expect("workspace")
    }

    /// The first layer's dispatch of a step (`BnForward::Train`) or an evaluation chunk:
    /// BatchNorm on the gathered pixels into `acts[1]`, or the gather alone into `acts[0]`.
    pub(super) fn layers_input(
        &self,
        pass: BnForward,
        pixels_and_order: [&wgpu::Buffer; 2],
    ) -> Dispatch {
        let [pixels, order] = pixels_and_order;
        let mut bindings = self.batchnorm_forward_bindings(pixels, order);
        let setup = self.bn_setup();
        let batchnorm = &self.pipelines.batchnorm;
        match self.ops().first() {
            Some(LayerOp::BatchNorm) => {
                bindings.y = &self.work().acts[1];
                batchnorm.forward(pass, &setup, &bindings)
            }
            _ => batchnorm.gather(pass, &setup, &bindings),
        }
    }

    /// The forwards of every layer after the first's BatchNorm, for `rows` rows; in
    /// training with dropout, else with every dropout the identity.
    pub(super) fn layers_forward(&self, rows: usize, training: bool) -> Vec<Dispatch> {
        let mut list = Vec::new();
        for (i, op) in self.ops().into_iter().enumerate() {
            list.extend(self.layer_forward(i, op, rows, training));
        }
        list
    }

    fn layer_forward(&self, i: usize, op: LayerOp, rows: usize, training: bool) -> Vec<Dispatch> {
        let w = self.work();
        let (x, y) = (&w.acts[i], &w.acts[i + 1]);
        let params = &self.params;
        match op {
            LayerOp::BatchNorm | LayerOp::Flatten => Vec::new(),
            LayerOp::Dense { w: l, relu, .. } => {
                let op = LinearOp::Forward { x, params, y, relu };
                self.dense_product(&self.layer_dense_shape(l, rows, i), op)
            }
            LayerOp::Conv { shape, relu, .. } => {
                let op = LinearOp::Forward { x, params, y, relu };
                self.pipelines.conv2d.dispatch(
                    &ConvShape {
                        batch: rows,
                        ..shape
                    },
                    op,
                )
            }
            LayerOp::Pool { shape } => {
                let shape = PoolShape {
                    batch: rows,
                    ..shape
                };
                vec![self.pipelines.maxpool2d.forward(&shape, x, y)]
            }
            LayerOp::Dropout { rate, rank } => {
                let rate = if training { rate } else { 0.0 };
                let n = rows * self.layer_widths()[i];
                vec![self.dropout(n, (rate, rank), FORWARD_STEP_BASE, [x, y])]
            }
        }
    }

    /// The `rank`-th dropout layer at `rate` over `n` values of `x` into `out`, its step
    /// `step_base` plus the step counter's two parts.
    fn dropout(
        &self,
        n: usize,
        (rate, rank): (f32, usize),
        step_base: u32,
        [x, out]: [&wgpu::Buffer; 2],
    ) -> Dispatch {
        let seed = layer_seed(self.hyper.dropout_seed, rank);
        let mask = DropMask::new(rate, seed, step_base);
        let bindings = DropoutBindings {
            state: &self.state,
            x,
            out,
        };
        self.pipelines.dropout.apply(n, &mask, &bindings)
    }

    /// Dense layer `l` (the `l`-th weighted layer, layer `i` of the list) on `rows` rows.
    fn layer_dense_shape(&self, l: usize, rows: usize, i: usize) -> DenseShape {
        let widths = self.layer_widths();
        self.weighted_dense(l, rows, (widths[i], widths[i + 1]))
    }

    /// The backwards from the top layer down, for `rows` rows: each layer's parameter
    /// gradients and, but for the first layer, its input gradient.
    pub(super) fn layers_backward(&self, rows: usize) -> Vec<Dispatch> {
        let ops = self.ops();
        let mut list = Vec::new();
        for i in (0..ops.len()).rev() {
            list.extend(self.layer_backward(&ops, i, rows));
        }
        list
    }

    /// Whether `acts[i]` is a ReLU's output (through any flatten below it).
    fn relu_output(ops: &[LayerOp], i: usize) -> bool {
        let producer = ops[..i]
            .iter()
            .rev()
            .find(|op| !matches!(op, LayerOp::Flatten));
        producer.is_some_and(LayerOp::relu)
    }

    fn layer_backward(&self, ops: &[LayerOp], i: usize, rows: usize) -> Vec<Dispatch> {
        let w = self.work();
        let (x, dy, dx) = (&w.acts[i], &w.deltas[i + 1], &w.deltas[i]);
        let mask = Self::relu_output(ops, i).then_some(x);
        match ops[i] {
            LayerOp::BatchNorm => {
                let bindings = BatchnormBackwardBindings {
                    grads: &self.grads,
                    dy,
                    xhat_in: &w.xhat,
                };
                let batchnorm = &self.pipelines.batchnorm;
                vec![batchnorm.backward(rows, &self.bn_setup(), &bindings)]
            }
            LayerOp::Dense { .. } | LayerOp::Conv { .. } => {
                self.weighted_backward(ops[i], (i, rows), mask)
            }
            LayerOp::Pool { shape } => {
                let shape = PoolShape {
                    batch: rows,
                    ..shape
                };
                let pool = &self.pipelines.maxpool2d;
                vec![pool.backward(&shape, [x, dy, dx], mask.is_some())]
            }
            LayerOp::Dropout { rate, rank } => {
                let n = rows * self.layer_widths()[i];
                let dropout = (rate, rank);
                let Some(relu_out) = mask else {
                    return vec![self.dropout(n, dropout, BACKWARD_STEP_BASE, [dy, dx])];
                };
                // Through the scratch buffer, then the ReLU below's backward.
                let bindings = ReluBackwardBindings {
                    dy: &w.scratch,
                    y: relu_out,
                    dx,
                };
                vec![
                    self.dropout(n, dropout, BACKWARD_STEP_BASE, [dy, &w.scratch]),
                    self.pipelines.relu.backward(n, &bindings),
                ]
            }
            LayerOp::Flatten => Vec::new(),
        }
    }

    /// A dense or conv2d layer `op` (layer `i`, `rows` rows): its weight and bias
    /// gradients and, but for the first layer, its input gradient (masked by `mask`, the
    /// ReLU output below, if any).
    fn weighted_backward(
        &self,
        op: LayerOp,
        (i, rows): (usize, usize),
        mask: Option<&wgpu::Buffer>,
    ) -> Vec<Dispatch> {
        let w = self.work();
        let (x, dy, dx) = (&w.acts[i], &w.deltas[i + 1], &w.deltas[i]);
        let (params, grads) = (&self.params, &self.grads);
        let weight_grad = LinearOp::WeightGrad { x, dy, grads };
        let input_grad = (i > 0).then_some(LinearOp::InputGrad {
            dy,
            params,
            dx,
            relu_out: mask,
        });
        let products = [Some(weight_grad), input_grad].into_iter().flatten();
        match op {
            LayerOp::Dense { w: l, .. } => {
                let shape = self.layer_dense_shape(l, rows, i);
                products
                    .flat_map(|op| self.dense_product(&shape, op))
                    .collect()
            }
            LayerOp::Conv { shape, .. } => {
                let shape = ConvShape {
                    batch: rows,
                    ..shape
                };
                let conv = &self.pipelines.conv2d;
                products.flat_map(|op| conv.dispatch(&shape, op)).collect()
            }
            _ => unreachable!("only dense and conv2d layers have weights"),
        }
    }

    /// Every dispatch of one training step of the layer path on `rows` rows (batch
    /// stride `stride`): the input, the forwards, softmax_xent, the backwards, Adam.
    pub(super) fn layers_step(
        &self,
        rows: usize,
        stride: usize,
        (order, alphas, stats): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    ) -> Vec<Dispatch> {
        let pass = BnForward::Train { rows, stride };
        let mut list = vec![self.layers_input(pass, [self.train_images(), order])];
        list.extend(self.layers_forward(rows, true));
        list.push(self.softmax_xent_dispatch(rows, stride, order, stats));
        list.extend(self.layers_backward(rows));
        list.push(self.adam_dispatch(alphas));
        list
    }
}
