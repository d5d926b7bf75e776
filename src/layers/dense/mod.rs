//! Dense: `y = x · W + b` (ReLU fused into the epilogue when the layer is followed by
//! one), and its two gradients, all through one tiled GEMM (`gemm.wgsl`); the CPU
//! reference is [`cpu`].
//!
//! The trainer and the agreement cases build their dispatches with the same
//! [`Pipelines::dispatch`] of a [`DenseOp`].

#[cfg(not(target_arch = "wasm32"))]
mod check;
pub mod cpu;

use crate::device::kernel::{bindings, uniform, Dispatch};

/// GEMM output tile edge (rows and columns per workgroup).
pub const GEMM_TILE: u32 = 64;

pub const GEMM_BIAS: u32 = 1;
pub const GEMM_RELU: u32 = 2;
pub const GEMM_MASK: u32 = 4;
pub const GEMM_ONES_ROW: u32 = 8;

uniform! {
    /// Uniform block of `gemm.wgsl` (see the shader for the meaning of each field).
    pub struct GemmUniform as "Gemm" {
        pub m: u32, pub n: u32, pub k: u32, pub flags: u32,
        pub a_off: u32, pub a_rs: u32, pub a_cs: u32,
        pub b_off: u32, pub b_rs: u32, pub b_cs: u32,
        pub c_off: u32, pub ldc: u32,
        pub e_off: u32, pub lde: u32,
        pub c2_off: u32, pub pad: u32,
    }
}

bindings! {
    /// `gemm.wgsl`: `c = a · b` with the epilogue (bias, ReLU, mask) read from `e`.
    GemmBindings(GemmUniform) for ["gemm"] => {
        a: Read<f32> = 1, b: Read<f32> = 2, e: Read<f32> = 3,
        c: ReadWrite<f32> = 4,
    }
}

/// One dense layer on a batch: `rows` rows of `inputs` features to `units` outputs,
/// with its kernel (`[inputs, units]`, row-major) and bias at these element offsets of
/// the parameter (and gradient) buffers.
#[derive(Clone, Copy, Debug)]
pub struct DenseShape {
    pub rows: usize,
    pub inputs: usize,
    pub units: usize,
    pub kernel_off: usize,
    pub bias_off: usize,
}

impl DenseShape {
    /// A layer alone in its buffers: its kernel at the start, its bias after it.
    pub fn alone(rows: usize, inputs: usize, units: usize) -> DenseShape {
        DenseShape {
            rows,
            inputs,
            units,
            kernel_off: 0,
            bias_off: inputs * units,
        }
    }
}

impl GemmUniform {
    /// `y[m,n] = x[m,k] · w[k,n] + bias` (ReLU when `relu`).
    pub fn forward(s: &DenseShape, relu: bool) -> Self {
        GemmUniform {
            m: s.rows as u32,
            n: s.units as u32,
            k: s.inputs as u32,
            flags: GEMM_BIAS | if relu { GEMM_RELU } else { 0 },
            a_rs: s.inputs as u32,
            a_cs: 1,
            b_off: s.kernel_off as u32,
            b_rs: s.units as u32,
            b_cs: 1,
            ldc: s.units as u32,
            e_off: s.bias_off as u32,
            ..Default::default()
        }
    }

    /// `dw[k,n] = xᵀ · dy` written at the kernel's offset, and the bias gradient (column
    /// sums of dy, the product with an appended row of ones) at the bias's.
    pub fn weight_grad(s: &DenseShape) -> Self {
        GemmUniform {
            m: s.inputs as u32 + 1,
            n: s.units as u32,
            k: s.rows as u32,
            flags: GEMM_ONES_ROW,
            a_rs: 1,
            a_cs: s.inputs as u32,
            b_rs: s.units as u32,
            b_cs: 1,
            c_off: s.kernel_off as u32,
            ldc: s.units as u32,
            c2_off: s.bias_off as u32,
            ..Default::default()
        }
    }

    /// `dx[m,k] = dy[m,n] · wᵀ`, zeroed where the epilogue buffer (the layer input's
    /// ReLU output, `[m,k]`) is ≤ 0 when `mask`.
    pub fn input_grad(s: &DenseShape, mask: bool) -> Self {
        GemmUniform {
            m: s.rows as u32,
            n: s.inputs as u32,
            k: s.units as u32,
            flags: if mask { GEMM_MASK } else { 0 },
            a_rs: s.units as u32,
            a_cs: 1,
            b_off: s.kernel_off as u32,
            b_rs: 1,
            b_cs: s.units as u32,
            ldc: s.inputs as u32,
            lde: s.inputs as u32,
            ..Default::default()
        }
    }

    /// Workgroups to dispatch.
    pub fn workgroups(&self) -> [u32; 3] {
        [self.n.div_ceil(GEMM_TILE), self.m.div_ceil(GEMM_TILE), 1]
    }
}

family! {
    /// The dense layer family.
    Dense: "gemm" in "gemm.wgsl", uniform GemmUniform => {
        gemm: GemmBindings = "gemm",
    }
}

/// The three products a dense layer needs, with the buffers each reads and writes.
pub enum DenseOp<'a> {
    /// `y = x · W + b` (then ReLU when `relu`), W and b read from `params`.
    Forward {
        x: &'a wgpu::Buffer,
        params: &'a wgpu::Buffer,
        y: &'a wgpu::Buffer,
        relu: bool,
    },
    /// `dW = xᵀ · dy` and `db = Σ dy` into `grads` at the layer's offsets.
    WeightGrad {
        x: &'a wgpu::Buffer,
        dy: &'a wgpu::Buffer,
        grads: &'a wgpu::Buffer,
    },
    /// `dx = dy · Wᵀ`, zeroed where `relu_out` (the input's ReLU output) is ≤ 0.
    InputGrad {
        dy: &'a wgpu::Buffer,
        params: &'a wgpu::Buffer,
        dx: &'a wgpu::Buffer,
        relu_out: Option<&'a wgpu::Buffer>,
    },
}

impl Pipelines {
    /// The dispatch of `op` on the layer `shape`.
    pub fn dispatch(&self, d: &wgpu::Device, shape: &DenseShape, op: DenseOp) -> Dispatch {
        let (u, bindings) = match op {
            DenseOp::Forward { x, params, y, relu } => {
                let (a, b, e, c) = (x, params, params, y);
                (
                    GemmUniform::forward(shape, relu),
                    GemmBindings { a, b, e, c },
                )
            }
            DenseOp::WeightGrad { x, dy, grads } => {
                // The epilogue buffer is unused; bind one already bound.
                let (a, b, e, c) = (x, dy, x, grads);
                (GemmUniform::weight_grad(shape), GemmBindings { a, b, e, c })
            }
            DenseOp::InputGrad {
                dy,
                params,
                dx,
                relu_out,
            } => {
                let (a, b, e, c) = (dy, params, relu_out.unwrap_or(dy), dx);
                let u = GemmUniform::input_grad(shape, relu_out.is_some());
                (u, GemmBindings { a, b, e, c })
            }
        };
        self.gemm.dispatch(d, &u, &bindings, u.workgroups())
    }
}
