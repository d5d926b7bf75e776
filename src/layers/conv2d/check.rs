//! The Conv2D family's agreement cases: the forward (with and without ReLU) and both
//! gradients (the input gradient with and without the ReLU mask) against [`super::cpu`],
//! at the convnet's two layers (1×28×28 → 32 and 32×13×13 → 64, 3×3, batch 32: the bench
//! rows) and at odd shapes: channel counts that are not multiples of the tile, a batch of
//! one, 5×5 and 1×1 kernels, non-square images, a weight gradient split unevenly.

use super::{cpu, ConvShape};
use crate::device::context::GpuContext;
use crate::device::error::DeviceError;
use crate::device::kernel::{run_all, storage_f32, storage_zeroed};
use crate::layers::check::{gemm_tol, rng, uniform_vec, Case, Outputs};
use crate::layers::dense::LinearOp;
use crate::layers::Pipelines;
use std::rc::Rc;

/// A layer's inputs: `x` (a ReLU output, so about a third zeros, which the input
/// gradient's mask reads), the kernel and bias in one buffer (as the trainer lays them
/// out), and an output gradient `dy`.
struct Inputs {
    shape: ConvShape,
    x: Vec<f32>,
    params: Vec<f32>,
    dy: Vec<f32>,
}

impl Inputs {
    fn out_len(&self) -> usize {
        let s = &self.shape;
        s.batch * s.out_channels * s.out_pixels()
    }
}

fn inputs(seed: u64, shape: ConvShape) -> Rc<Inputs> {
    let mut r = rng(seed);
    let s = &shape;
    let limit = (6.0 / (s.patch() + s.out_channels * s.kernel * s.kernel) as f32).sqrt();
    let mut params = uniform_vec(&mut r, s.bias_off, -limit, limit);
    params.extend(uniform_vec(&mut r, s.out_channels, -0.1, 0.1));
    let x = uniform_vec(&mut r, s.batch * s.in_len(), -0.5, 1.0);
    let x = x.into_iter().map(|v| v.max(0.0)).collect();
    let dy = uniform_vec(&mut r, s.batch * s.out_channels * s.out_pixels(), -1.0, 1.0);
    Rc::new(Inputs {
        shape,
        x,
        params,
        dy,
    })
}

pub fn cases() -> Vec<Case> {
    let shapes = [
        ConvShape::alone(32, 1, (28, 28), 32, 3),
        ConvShape::alone(32, 32, (13, 13), 64, 3),
        ConvShape::alone(1, 1, (28, 28), 32, 3),
        ConvShape::alone(3, 3, (9, 7), 5, 3),
        ConvShape::alone(2, 2, (11, 10), 7, 5),
        ConvShape::alone(2, 33, (6, 5), 35, 1),
        // The weight gradient in two uneven splits (4 samples, then 3).
        ConvShape::alone(7, 2, (28, 28), 5, 3),
    ];
    let mut cases = Vec::new();
    for (i, shape) in shapes.into_iter().enumerate() {
        let c = inputs(700 + i as u64, shape);
        let s = &c.shape;
        let (oh, ow) = s.out_size();
        let at = format!(
            "{}×{}×{}→{}×{oh}×{ow} k{} b{}",
            s.in_channels, s.height, s.width, s.out_channels, s.kernel, s.batch
        );
        // ReLU and the input gradient's mask in every other case.
        let relu = i % 2 == 1;
        let products = [
            (
                format!("conv2d_forward {at} relu={relu}"),
                Product::Forward { relu },
            ),
            (format!("conv2d_weight_grad {at}"), Product::WeightGrad),
            (
                format!("conv2d_input_grad {at} masked={relu}"),
                Product::InputGrad { masked: relu },
            ),
        ];
        for (name, product) in products {
            let case = case(name, c.clone(), product);
            cases.push(if i < 2 { case.bench() } else { case });
        }
    }
    cases
}

/// The product a case checks.
#[derive(Clone, Copy)]
enum Product {
    Forward {
        relu: bool,
    },
    WeightGrad,
    /// Masked by `x`, as the ReLU output of the layer below, when `masked`.
    InputGrad {
        masked: bool,
    },
}

impl Product {
    /// How many products each output sums (see [`gemm_tol`]).
    fn depth(self, s: &ConvShape) -> usize {
        match self {
            Product::Forward { .. } => s.patch(),
            Product::WeightGrad => s.batch * s.out_pixels(),
            Product::InputGrad { .. } => s.out_channels * s.kernel * s.kernel,
        }
    }

    /// Values the product writes: `y`, the kernel and bias gradients, or `dx`.
    fn out_len(self, c: &Inputs) -> usize {
        match self {
            Product::Forward { .. } => c.out_len(),
            Product::WeightGrad => c.params.len(),
            Product::InputGrad { .. } => c.x.len(),
        }
    }

    /// The product's result (`out_len` values) as the case's named outputs.
    fn outputs(self, c: &Inputs, mut out: Vec<f32>) -> Outputs {
        match self {
            Product::Forward { .. } => vec![("y", out)],
            Product::WeightGrad => {
                let db = out.split_off(c.shape.bias_off);
                vec![("dW", out), ("db", db)]
            }
            Product::InputGrad { .. } => vec![("dx", out)],
        }
    }
}

fn case(name: String, c: Rc<Inputs>, product: Product) -> Case {
    let cpu_inputs = c.clone();
    let cpu = move || cpu_product(&cpu_inputs, product);
    let tolerance = gemm_tol(product.depth(&c.shape));
    Case::new(name, tolerance, cpu, move |ctx, p| {
        gpu_product(ctx, p, &c, product)
    })
}

fn cpu_product(c: &Inputs, product: Product) -> Outputs {
    let s = &c.shape;
    let mut out = vec![0.0; product.out_len(c)];
    let (kernel, bias) = c.params.split_at(s.bias_off);
    match product {
        Product::Forward { relu } => cpu::conv2d_forward(&c.x, kernel, bias, s, relu, &mut out),
        Product::WeightGrad => {
            let (dw, db) = out.split_at_mut(s.bias_off);
            cpu::conv2d_weight_grad(&c.x, &c.dy, s, dw, db);
        }
        Product::InputGrad { masked } => {
            let mask = masked.then_some(&c.x[..]);
            cpu::conv2d_input_grad(&c.dy, kernel, s, mask, &mut out);
        }
    }
    product.outputs(c, out)
}

/// Uploads the case, runs the product through the trainer's dispatch builder, reads the
/// result back.
fn gpu_product(
    ctx: &GpuContext,
    p: &Pipelines,
    c: &Inputs,
    product: Product,
) -> Result<Outputs, DeviceError> {
    let (x, params) = (
        storage_f32(ctx, "x", &c.x),
        storage_f32(ctx, "params", &c.params),
    );
    let dy = storage_f32(ctx, "dy", &c.dy);
    let len = product.out_len(c);
    let out = storage_zeroed(&ctx.device, "out", (len * 4) as u64);
    let (x, params, dy, out) = (&x, &params, &dy, &out);
    let op = match product {
        Product::Forward { relu } => LinearOp::Forward {
            x,
            params,
            y: out,
            relu,
        },
        Product::WeightGrad => LinearOp::WeightGrad { x, dy, grads: out },
        Product::InputGrad { masked } => {
            let relu_out = masked.then_some(x);
            LinearOp::InputGrad {
                dy,
                params,
                dx: out,
                relu_out,
            }
        }
    };
    run_all(ctx, &p.conv2d.dispatch(&c.shape, op))?;
    Ok(product.outputs(c, ctx.read_vec(out, 0, len)?))
}
