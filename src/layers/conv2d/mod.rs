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

use crate::device::kernel::{bindings, uniform, Dispatch};
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

impl Pipelines {
    /// The dispatch of `op` on the layer `s`. As for a dense layer, the ReLU's backward
    /// is the input gradient's mask (by the ReLU output of the layer below), so `dy`
    /// arrives already masked.
    pub fn dispatch(&self, s: &ConvShape, op: LinearOp) -> Dispatch {
        let (op_code, flags, groups) = match op {
            LinearOp::Forward { relu, .. } => {
                let flags = if relu { FLAG_RELU } else { 0 };
                (
                    OP_FORWARD,
                    flags,
                    groups(s.out_channels, s.out_pixels(), s.batch),
                )
            }
            LinearOp::WeightGrad { .. } => {
                (OP_WEIGHT_GRAD, 0, groups(s.out_channels, s.patch() + 1, 1))
            }
            LinearOp::InputGrad { relu_out, .. } => {
                let flags = if relu_out.is_some() { FLAG_MASK } else { 0 };
                let groups = groups(s.in_channels, s.height * s.width, s.batch);
                (OP_INPUT_GRAD, flags, groups)
            }
        };
        let o = op.operands();
        // Without a mask, `y_mask` is not read: bind an input in its place.
        let (lhs, rhs, y_mask, out) = (o.lhs, o.rhs, o.mask.unwrap_or(o.lhs), o.out);
        let u = ConvUniform::new(s, op_code, flags);
        self.conv.dispatch(
            &u,
            &ConvBindings {
                lhs,
                rhs,
                y_mask,
                out,
            },
            groups,
        )
    }
}
