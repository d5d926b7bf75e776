//! The dense family's agreement cases: each GEMM form against [`super::cpu`] at shapes
//! that are not tile multiples (batch 1, 33, 37, 70; widths 10, 129, 784), split over k
//! (`gemm_split` + `reduce`, as hardware GPUs run the first layer's forward at small
//! batches) at the splits [`super::split_k`] chooses and at uneven ones, and through the
//! wide-tile GEMM (`gemm_wide`, as hardware GPUs run large products) at shapes where its
//! vec4 loads are and are not possible.

use super::{cpu, split_k, DenseShape, GemmUniform, LinearOp, Pipelines};
use crate::device::context::GpuContext;
use crate::device::error::DeviceError;
use crate::device::kernel::{run_all, run_one, storage_f32, storage_zeroed};
use crate::layers::check::{rng, uniform_vec, Case, Outputs, GEMM_TOL};
use std::rc::Rc;

/// (m, k, n) shapes; the first is the default training step's first layer.
const SHAPES: [(usize, usize, usize); 8] = [
    (32, 784, 128),
    (1, 784, 128),
    (70, 300, 90),
    (33, 784, 129),
    (37, 129, 10),
    (33, 10, 784),
    (37, 128, 10),
    (1, 129, 10),
];

/// (m, k, n) shapes of the wide-tile cases and the kernel's offset in the parameter
/// buffer: a row of 1, rows and columns that are not multiples of 128, widths that are
/// not multiples of 4 (no vec4 loads along them: 129, 10), an odd kernel offset (no vec4
/// loads from the kernel at all), and a large aligned shape (every load a vec4).
const WIDE_SHAPES: [((usize, usize, usize), usize); 6] = [
    ((1, 784, 128), 0),
    ((33, 784, 129), 0),
    ((130, 300, 260), 0),
    ((130, 300, 260), 3),
    ((257, 129, 10), 0),
    ((256, 512, 384), 0),
];

/// Which GEMM a case runs.
#[derive(Clone, Copy)]
enum Kernel {
    /// `gemm`, or split over k this many ways (`gemm_split` + `reduce`) when more than 1.
    Split(u32),
    /// `gemm_wide`.
    Wide,
}

/// One shape's random operands.
struct Operands {
    shape: DenseShape,
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Vec<f32>,
    dy: Vec<f32>,
    /// About half ≤ 0, some exactly 0.
    mask: Vec<f32>,
}

fn operands(seed: u64, dims: (usize, usize, usize)) -> Rc<Operands> {
    operands_at(seed, dims, 0)
}

/// [`operands`] with the kernel `kernel_off` floats into the parameter buffer, the bias
/// after it.
fn operands_at(seed: u64, (m, k, n): (usize, usize, usize), kernel_off: usize) -> Rc<Operands> {
    let mut r = rng(seed);
    Rc::new(Operands {
        shape: DenseShape {
            kernel_off,
            bias_off: kernel_off + k * n,
            ..DenseShape::alone(m, k, n)
        },
        x: uniform_vec(&mut r, m * k, -1.0, 1.0),
        w: uniform_vec(&mut r, k * n, -1.0, 1.0),
        bias: uniform_vec(&mut r, n, -1.0, 1.0),
        dy: uniform_vec(&mut r, m * n, -1.0, 1.0),
        mask: uniform_vec(&mut r, m * k, -1.0, 1.0)
            .into_iter()
            .map(|v| if v < -0.8 { 0.0 } else { v })
            .collect(),
    })
}

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, &dims) in SHAPES.iter().enumerate() {
        let o = operands(100 + i as u64, dims);
        let (m, k, n) = dims;
        // The default step's shapes (the first) are the bench rows.
        let mut add = |case: Case| cases.push(if i == 0 { case.bench() } else { case });
        for relu in [false, true] {
            let name = format!("gemm_forward {m}x{k}x{n} relu={relu}");
            add(forward(name, o.clone(), relu, Kernel::Split(1)));
        }
        add(weight_grad(
            format!("gemm_weight_grad {m}x{k}x{n}"),
            o.clone(),
            Kernel::Split(1),
        ));
        for masked in [false, true] {
            let name = format!("gemm_input_grad {m}x{k}x{n} masked={masked}");
            add(input_grad(name, o.clone(), masked, Kernel::Split(1)));
        }
    }
    cases.extend(split_cases());
    cases.extend(wide_cases());
    cases
}

/// Every form through `gemm_wide` at [`WIDE_SHAPES`]: the forward with bias and ReLU,
/// the weight gradient with the bias gradient (the ones row), the masked input gradient.
/// The large shape's forward is a bench row.
fn wide_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, &(dims, kernel_off)) in WIDE_SHAPES.iter().enumerate() {
        let o = operands_at(300 + i as u64, dims, kernel_off);
        let (m, k, n) = dims;
        let shape = format!("{m}x{k}x{n} kernel at {kernel_off}");
        let name = format!("gemm_wide forward {shape} relu=true");
        let forward = forward(name, o.clone(), true, Kernel::Wide);
        cases.push(match i == WIDE_SHAPES.len() - 1 {
            true => forward.bench(),
            false => forward,
        });
        let name = format!("gemm_wide weight_grad {shape}");
        cases.push(weight_grad(name, o.clone(), Kernel::Wide));
        let name = format!("gemm_wide input_grad {shape} masked=true");
        cases.push(input_grad(name, o, true, Kernel::Wide));
    }
    cases
}

/// Every form split over k: the forward at the default step's first layer with the
/// rule's splits (25) and the rest at splits that leave a short last range.
fn split_cases() -> Vec<Case> {
    let (m, k, n) = SHAPES[0];
    let splits = split_k(m, k, n);
    assert!(
        splits > 1,
        "the rule splits the first layer's forward at batch 32"
    );
    let o = operands(100, SHAPES[0]);
    let mut cases = vec![forward(
        format!("gemm_split forward {m}x{k}x{n} relu=true splits={splits}"),
        o,
        true,
        Kernel::Split(splits),
    )];
    cases[0].bench = true;
    for (i, &(m, k, n)) in SHAPES[2..5].iter().enumerate() {
        let o = operands(200 + i as u64, (m, k, n));
        let asked = 3 + i as u32;
        // Each form's k: the inputs, the batch rows, the units.
        let [forward_k, weight_k, input_k] = [k, m, n].map(|k| effective_splits(k, asked));
        let shape = format!("{m}x{k}x{n}");
        let name = format!("gemm_split forward {shape} splits={forward_k}");
        cases.push(forward(name, o.clone(), false, Kernel::Split(asked)));
        let name = format!("gemm_split weight_grad {shape} splits={weight_k}");
        cases.push(weight_grad(name, o.clone(), Kernel::Split(asked)));
        let name = format!("gemm_split input_grad {shape} masked=true splits={input_k}");
        cases.push(input_grad(name, o, true, Kernel::Split(asked)));
    }
    cases
}

/// The splits a product over `k` gets when `asked` are asked for (whole k-slices each).
fn effective_splits(k: usize, asked: u32) -> u32 {
    let product = GemmUniform {
        k: k as u32,
        ..Default::default()
    };
    product.split(asked).splits
}

/// The dispatches of `op` on `s` through `kernel`; split, with a `partial` buffer of the
/// size the split needs.
fn run_kernel(
    ctx: &GpuContext,
    p: &crate::layers::Pipelines,
    (s, op): (&DenseShape, LinearOp),
    kernel: Kernel,
) -> Result<(), DeviceError> {
    let dense: &Pipelines = &p.dense;
    let splits = match kernel {
        Kernel::Split(splits) => splits,
        Kernel::Wide => return run_one(ctx, dense.dispatch_wide(s, op)),
    };
    let len = GemmUniform::of(s, &op).split(splits).partial_len().max(4);
    let partial = storage_zeroed(&ctx.device, "partial", (len * 4) as u64);
    run_all(ctx, &dense.dispatch_split(s, op, (&partial, splits)))
}

fn forward(name: String, o: Rc<Operands>, relu: bool, kernel: Kernel) -> Case {
    let c = o.clone();
    let cpu = move || -> Outputs {
        let s = &c.shape;
        let mut y = vec![0.0; s.rows * s.units];
        cpu::gemm_forward(&c.x, &c.w, &c.bias, s.rows, s.inputs, s.units, relu, &mut y);
        vec![("y", y)]
    };
    Case::new(name, GEMM_TOL, cpu, move |ctx, p| {
        let s = &o.shape;
        let x = storage_f32(ctx, "x", &o.x);
        let params = storage_f32(ctx, "params", &layer_params(&o));
        let y = storage_zeroed(&ctx.device, "y", (s.rows * s.units * 4) as u64);
        let op = LinearOp::Forward {
            x: &x,
            params: &params,
            y: &y,
            relu,
        };
        run_kernel(ctx, p, (s, op), kernel)?;
        Ok(vec![("y", ctx.read_vec(&y, 0, s.rows * s.units)?)])
    })
}

fn weight_grad(name: String, o: Rc<Operands>, kernel: Kernel) -> Case {
    let c = o.clone();
    let cpu = move || -> Outputs {
        let s = &c.shape;
        let (mut dw, mut db) = (vec![0.0; s.inputs * s.units], vec![0.0; s.units]);
        cpu::gemm_weight_grad(&c.x, &c.dy, s.rows, s.inputs, s.units, &mut dw);
        cpu::bias_grad(&c.dy, s.rows, s.units, &mut db);
        vec![("dw", dw), ("db", db)]
    };
    Case::new(name, GEMM_TOL, cpu, move |ctx, p| {
        let s = &o.shape;
        let (x, dy) = (storage_f32(ctx, "x", &o.x), storage_f32(ctx, "dy", &o.dy));
        let grads = storage_zeroed(&ctx.device, "grads", (s.bias_off + s.units) as u64 * 4);
        let op = LinearOp::WeightGrad {
            x: &x,
            dy: &dy,
            grads: &grads,
        };
        run_kernel(ctx, p, (s, op), kernel)?;
        let all: Vec<f32> = ctx.read_vec(&grads, 0, s.bias_off + s.units)?;
        let (dw, db) = all.split_at(s.bias_off);
        Ok(vec![
            ("dw", dw[s.kernel_off..].to_vec()),
            ("db", db.to_vec()),
        ])
    })
}

fn input_grad(name: String, o: Rc<Operands>, masked: bool, kernel: Kernel) -> Case {
    let c = o.clone();
    let cpu = move || -> Outputs {
        let s = &c.shape;
        let mut dx = vec![0.0; s.rows * s.inputs];
        let mask = masked.then_some(&c.mask[..]);
        cpu::gemm_input_grad(&c.dy, &c.w, s.rows, s.inputs, s.units, mask, &mut dx);
        vec![("dx", dx)]
    };
    Case::new(name, GEMM_TOL, cpu, move |ctx, p| {
        let s = &o.shape;
        let dy = storage_f32(ctx, "dy", &o.dy);
        let w = storage_f32(ctx, "params", &layer_params(&o));
        let mask = masked.then(|| storage_f32(ctx, "mask", &o.mask));
        let dx = storage_zeroed(&ctx.device, "dx", (s.rows * s.inputs * 4) as u64);
        let op = LinearOp::InputGrad {
            dy: &dy,
            params: &w,
            dx: &dx,
            relu_out: mask.as_ref(),
        };
        run_kernel(ctx, p, (s, op), kernel)?;
        Ok(vec![("dx", ctx.read_vec(&dx, 0, s.rows * s.inputs)?)])
    })
}

/// The parameter buffer of `o`'s layer: its kernel and bias at their offsets, zeros
/// before.
fn layer_params(o: &Operands) -> Vec<f32> {
    let s = &o.shape;
    let mut params = vec![0.0; s.bias_off + s.units];
    params[s.kernel_off..s.bias_off].copy_from_slice(&o.w);
    params[s.bias_off..].copy_from_slice(&o.bias);
    params
}
