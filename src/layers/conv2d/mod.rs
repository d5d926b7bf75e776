//! Conv2D: `y = conv(x, W) + b` with stride 1 and `valid` padding (Keras' `Conv2D`, in
//! PyTorch's layouts), ReLU fused into the forward's epilogue. On the GPU three implicit
//! GEMMs (`conv2d.wgsl`), which read the patches straight from the activations; the CPU
//! reference is [`cpu`] (im2col + GEMM).
//!
//! The trainer and the agreement cases build their dispatches with the same
//! [`Pipelines::dispatch`] of a [`LinearOp`], the dense layer's three products.

#[cfg(not(target_arch = "wasm32"))]
mod check;
pub mod cpu;
mod sparse;

use crate::device::kernel::{
    bindings, elementwise_groups, storage_zeroed, uniform, Dispatch, Work,
};
use crate::layers::dense::LinearOp;

/// Output tile edge of `conv2d.wgsl` (rows and columns of C per workgroup).
pub const CONV_TILE: u32 = 32;

const FLAG_RELU: u32 = 1;
const FLAG_MASK: u32 = 2;

uniform! {
    /// Uniform block of `conv2d.wgsl`.
    pub struct ConvUniform as "Conv" {
        pub batch: u32, pub in_ch: u32, pub h: u32, pub w: u32,
        pub out_ch: u32, pub ks: u32, pub out_h: u32, pub out_w: u32,
        pub op: u32, pub flags: u32, pub kernel_off: u32, pub bias_off: u32,
        pub split_samples: u32,
    }
}

bindings! {
    /// Any of the three products, `out = lhs · rhs` as [`LinearOp::operands`] gives them
    /// (`lhs`: `x`, `x` or `dy`; `rhs`: the parameters, `dy` or the parameters), with the
    /// input gradient's mask `y_mask`.
    ConvBindings(ConvUniform) for ["conv"] => {
        lhs: Read<f32> = 1, rhs: Read<f32> = 2, y_mask: Read<f32> = 3,
        out: ReadWrite<f32> = 4,
    }
}

family! {
    /// The Conv2D layer family.
    Conv2d: "conv2d" in "conv2d.wgsl", uniform ConvUniform => {
        conv: ConvBindings = "conv",
        /// The weight gradient's second pass: the splits' partial sums, added in order.
        reduce_splits: ConvBindings = "reduce_splits",
    }
}

/// One Conv2D layer on a batch: `batch` images of `in_channels`×`height`×`width`,
/// `out_channels` square filters of `kernel`×`kernel`, with the kernel
/// (`[out, in, k, k]`) and the bias at these element offsets of the parameter (and
/// gradient) buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub kernel_off: usize,
    pub bias_off: usize,
}

impl ConvShape {
    /// A layer alone in its buffers (kernel first, bias after it): `batch` images of
    /// `in_channels` × `(height, width)` to `out_channels` of `kernel`×`kernel` filters.
    pub fn alone(
        batch: usize,
        in_channels: usize,
        (height, width): (usize, usize),
        out_channels: usize,
        kernel: usize,
    ) -> ConvShape {
        let kernel_len = out_channels * in_channels * kernel * kernel;
        ConvShape {
            batch,
            in_channels,
            height,
            width,
            out_channels,
            kernel,
            kernel_off: 0,
            bias_off: kernel_len,
        }
    }

    /// Values in one filter: `in·k·k`.
    pub fn patch(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    /// One sample's input values: `in·height·width`.
    pub fn in_len(&self) -> usize {
        self.in_channels * self.height * self.width
    }

    /// The output's height and width (`valid`: the input's less `kernel − 1`).
    pub fn out_size(&self) -> (usize, usize) {
        assert!(
            self.kernel <= self.height.min(self.width),
            "filters larger than the input"
        );
        (self.height + 1 - self.kernel, self.width + 1 - self.kernel)
    }

    /// Pixels in one output channel.
    pub fn out_pixels(&self) -> usize {
        let (oh, ow) = self.out_size();
        oh * ow
    }

    /// The forward's or the input gradient's least work: `2·batch·out pixels·out
    /// channels·patch` operations; the input, the kernel and bias, and the output each
    /// moved once (and the mask read when `masked`).
    fn product_work(&self, masked: bool) -> Work {
        let inputs = (self.batch * self.in_len()) as f64;
        let outputs = (self.batch * self.out_channels * self.out_pixels()) as f64;
        let kernel = (self.out_channels * (self.patch() + 1)) as f64;
        let flops = 2.0 * outputs * self.patch() as f64;
        let mask = if masked { inputs } else { 0.0 };
        Work::new(flops, inputs + kernel + outputs + mask)
    }
}

/// Which product a dispatch forms (`u.op`).
const OP_FORWARD: u32 = 0;
const OP_WEIGHT_GRAD: u32 = 1;
const OP_INPUT_GRAD: u32 = 2;

impl ConvUniform {
    fn new(s: &ConvShape, op: u32, flags: u32) -> Self {
        let (out_h, out_w) = s.out_size();
        let u = |v: usize| v as u32;
        ConvUniform {
            batch: u(s.batch),
            in_ch: u(s.in_channels),
            h: u(s.height),
            w: u(s.width),
            out_ch: u(s.out_channels),
            ks: u(s.kernel),
            out_h: u(out_h),
            out_w: u(out_w),
            op,
            flags,
            kernel_off: u(s.kernel_off),
            bias_off: u(s.bias_off),
            ..Default::default()
        }
    }
}

/// Workgroups for a C of `m`×`n`, `samples` deep.
fn groups(m: usize, n: usize, samples: usize) -> [u32; 3] {
    let tiles = |v: usize| (v as u32).div_ceil(CONV_TILE);
    [tiles(n), tiles(m), samples as u32]
}

/// Terms of the weight gradient's sums (sample·pixel pairs) per split, about: the sums
/// are split over the batch so that the grid has workgroups enough to fill a device
/// (the first layer's gradient is a single 32×32 tile), and each split's partial sums
/// are added in a second pass, in split order, so the result does not depend on the
/// device. 2,048 keeps the partial sums small (`splits` × the gradient's size).
const TERMS_PER_SPLIT: usize = 2048;

/// Samples per split of the weight gradient of `s`, and the number of splits.
pub fn weight_grad_splits(s: &ConvShape) -> (usize, usize) {
    let samples = TERMS_PER_SPLIT
        .div_ceil(s.out_pixels())
        .clamp(1, s.batch.max(1));
    (samples, s.batch.div_ceil(samples))
}

impl Pipelines {
    /// The dispatches of `op` on the layer `s`: one, or for the weight gradient two (the
    /// splits' partial sums into a scratch buffer made here, then their sum). As for a
    /// dense layer, the ReLU's backward is the input gradient's mask (by the ReLU output
    /// of the layer below), so `dy` arrives already masked.
    pub fn dispatch(&self, s: &ConvShape, op: LinearOp) -> Vec<Dispatch> {
        let o = op.operands();
        // Without a mask, `y_mask` is not read: bind an input in its place.
        let (lhs, rhs, y_mask) = (o.lhs, o.rhs, o.mask.unwrap_or(o.lhs));
        let masked = o.mask.is_some();
        let (op_code, flags, groups) = match op {
            LinearOp::Forward { relu, .. } => {
                let flags = if relu { FLAG_RELU } else { 0 };
                let groups = groups(s.out_channels, s.out_pixels(), s.batch);
                (OP_FORWARD, flags, groups)
            }
            LinearOp::WeightGrad { .. } => return self.weight_grad(s, [lhs, rhs], o.out),
            LinearOp::InputGrad { relu_out, .. } => {
                let flags = if relu_out.is_some() { FLAG_MASK } else { 0 };
                let groups = groups(s.in_channels, s.height * s.width, s.batch);
                (OP_INPUT_GRAD, flags, groups)
            }
        };
        let u = ConvUniform::new(s, op_code, flags);
        let bindings = ConvBindings {
            lhs,
            rhs,
            y_mask,
            out: o.out,
        };
        let work = s.product_work(masked);
        vec![self.conv.dispatch(&u, &bindings, groups).with_work(work)]
    }

    /// The weight gradient of `x` (`lhs`) and `dy` (`rhs`) into `grads`, in two passes.
    fn weight_grad(
        &self,
        s: &ConvShape,
        [lhs, rhs]: [&wgpu::Buffer; 2],
        grads: &wgpu::Buffer,
    ) -> Vec<Dispatch> {
        let (samples, splits) = weight_grad_splits(s);
        let outputs = s.out_channels * (s.patch() + 1);
        let partials = storage_zeroed(
            self.conv.device(),
            "conv2d weight-grad splits",
            (splits * outputs * 4) as u64,
        );
        let u = ConvUniform {
            split_samples: samples as u32,
            ..ConvUniform::new(s, OP_WEIGHT_GRAD, 0)
        };
        let first = ConvBindings {
            lhs,
            rhs,
            y_mask: lhs,
            out: &partials,
        };
        let sum = ConvBindings {
            lhs: &partials,
            rhs,
            y_mask: rhs,
            out: grads,
        };
        // The products read x and dy once and write each split's sums; the reduction
        // reads those and writes the gradient.
        let (x_len, dy_len) = (
            s.batch * s.in_len(),
            s.batch * s.out_channels * s.out_pixels(),
        );
        let flops = 2.0 * (dy_len * (s.patch() + 1)) as f64;
        let partial = (splits * outputs) as f64;
        let products = Work::new(flops, (x_len + dy_len) as f64 + partial);
        let reduce = Work::new(partial, partial + outputs as f64);
        vec![
            (self
                .conv
                .dispatch(&u, &first, groups(s.out_channels, s.patch() + 1, splits)))
            .with_work(products),
            (self
                .reduce_splits
                .dispatch(&u, &sum, elementwise_groups(outputs)))
            .with_work(reduce),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weight_gradient_splits_about_2048_terms_each() {
        let splits = |batch, channels, side| {
            weight_grad_splits(&ConvShape::alone(batch, channels, (side, side), 8, 3))
        };
        // 26×26 output pixels: 4 samples (2,704 terms) a split.
        assert_eq!(splits(32, 1, 28), (4, 8));
        assert_eq!(splits(7, 1, 28), (4, 2));
        // 11×11: 17 samples (2,057 terms).
        assert_eq!(splits(32, 32, 13), (17, 2));
        assert_eq!(splits(1, 1, 28), (1, 1));
    }
}
