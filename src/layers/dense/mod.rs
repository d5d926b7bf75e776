//! Dense: `y = x · W + b` (ReLU fused into the epilogue when the layer is followed by
//! one), and its two gradients, all through one tiled GEMM (`gemm.wgsl`); the CPU
//! reference is [`cpu`].
//!
//! The trainer and the agreement cases build their dispatches with the same
//! [`Pipelines::dispatch`] of a [`LinearOp`].

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
        pub c2_off: u32,
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

/// How the GEMM reads an operand: its element offset and (row, column) strides.
struct Operand {
    off: usize,
    rs: usize,
    cs: usize,
}

/// A row-major matrix of `cols` columns at element `off`, read as it is stored.
fn as_stored(off: usize, cols: usize) -> Operand {
    Operand {
        off,
        rs: cols,
        cs: 1,
    }
}

/// The same matrix read transposed: transposes are only strides.
fn transposed(off: usize, cols: usize) -> Operand {
    Operand {
        off,
        rs: 1,
        cs: cols,
    }
}

impl GemmUniform {
    /// `c[m,n] = a[m,k] · b[k,n]` into a row-major `c` at offset 0, with the epilogue
    /// `flags`; the callers set the epilogue's offsets.
    fn product([m, n, k]: [usize; 3], a: Operand, b: Operand, flags: u32) -> Self {
        let u = |v: usize| v as u32;
        GemmUniform {
            m: u(m),
            n: u(n),
            k: u(k),
            flags,
            a_off: u(a.off),
            a_rs: u(a.rs),
            a_cs: u(a.cs),
            b_off: u(b.off),
            b_rs: u(b.rs),
            b_cs: u(b.cs),
            ldc: u(n),
            ..Default::default()
        }
    }

    /// `y[m,n] = x[m,k] · w[k,n] + bias` (ReLU when `relu`).
    pub fn forward(s: &DenseShape, relu: bool) -> Self {
        let flags = GEMM_BIAS | if relu { GEMM_RELU } else { 0 };
        let (x, w) = (as_stored(0, s.inputs), as_stored(s.kernel_off, s.units));
        GemmUniform {
            e_off: s.bias_off as u32,
            ..Self::product([s.rows, s.units, s.inputs], x, w, flags)
        }
    }

    /// `dw[k,n] = xᵀ · dy` written at the kernel's offset, and the bias gradient (column
    /// sums of dy, the product with an appended row of ones) at the bias's.
    pub fn weight_grad(s: &DenseShape) -> Self {
        let (x_t, dy) = (transposed(0, s.inputs), as_stored(0, s.units));
        GemmUniform {
            c_off: s.kernel_off as u32,
            c2_off: s.bias_off as u32,
            ..Self::product([s.inputs + 1, s.units, s.rows], x_t, dy, GEMM_ONES_ROW)
        }
    }

    /// `dx[m,k] = dy[m,n] · wᵀ`, zeroed where the epilogue buffer (the layer input's
    /// ReLU output, `[m,k]`) is ≤ 0 when `mask`.
    pub fn input_grad(s: &DenseShape, mask: bool) -> Self {
        let (dy, w_t) = (as_stored(0, s.units), transposed(s.kernel_off, s.units));
        let flags = if mask { GEMM_MASK } else { 0 };
        GemmUniform {
            lde: s.inputs as u32,
            ..Self::product([s.rows, s.inputs, s.units], dy, w_t, flags)
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

/// The three products of a linear layer, with the buffers each reads and writes: a
/// dense layer's, and a Conv2D's (a dense layer applied to every patch).
pub enum LinearOp<'a> {
    /// `y = x · W + b` (then ReLU when `relu`), W and b read from `params` at the layer's
    /// offsets.
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

/// A product's buffers: `out = lhs · rhs` (up to transposes and the layer's layout), and
/// the mask an input gradient applies (the ReLU output of the layer below), if any.
pub struct Operands<'a> {
    pub lhs: &'a wgpu::Buffer,
    pub rhs: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
    pub mask: Option<&'a wgpu::Buffer>,
}

impl<'a> LinearOp<'a> {
    /// The product's buffers; the kernels of both linear families bind them this way.
    pub fn operands(&self) -> Operands<'a> {
        let (lhs, rhs, out, mask) = match *self {
            LinearOp::Forward { x, params, y, .. } => (x, params, y, None),
            LinearOp::WeightGrad { x, dy, grads } => (x, dy, grads, None),
            LinearOp::InputGrad {
                dy,
                params,
                dx,
                relu_out,
            } => (dy, params, dx, relu_out),
        };
        Operands {
            lhs,
            rhs,
            out,
            mask,
        }
    }
}

impl Pipelines {
    /// The dispatch of `op` on the layer `shape`.
    pub fn dispatch(&self, shape: &DenseShape, op: LinearOp) -> Dispatch {
        let u = match op {
            LinearOp::Forward { relu, .. } => GemmUniform::forward(shape, relu),
            LinearOp::WeightGrad { .. } => GemmUniform::weight_grad(shape),
            LinearOp::InputGrad { relu_out, .. } => {
                GemmUniform::input_grad(shape, relu_out.is_some())
            }
        };
        // The epilogue reads the bias from `params` in the forward, and the mask in an
        // input gradient; otherwise it is not read, and an input is bound in its place.
        let o = op.operands();
        let (a, b, e, c) = (o.lhs, o.rhs, o.mask.unwrap_or(o.rhs), o.out);
        self.gemm
            .dispatch(&u, &GemmBindings { a, b, e, c }, u.workgroups())
    }
}
