//! The dense family's agreement cases: each GEMM form against [`super::cpu`] at shapes
//! that are not tile multiples (batch 1, 33, 37, 70; widths 10, 129, 784).

use super::{cpu, DenseShape, LinearOp};
use crate::device::kernel::{run_one, storage_f32, storage_zeroed};
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

fn operands(seed: u64, (m, k, n): (usize, usize, usize)) -> Rc<Operands> {
    let mut r = rng(seed);
    Rc::new(Operands {
        shape: DenseShape::alone(m, k, n),
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
            add(forward(name, o.clone(), relu));
        }
        add(weight_grad(
            format!("gemm_weight_grad {m}x{k}x{n}"),
            o.clone(),
        ));
        for masked in [false, true] {
            let name = format!("gemm_input_grad {m}x{k}x{n} masked={masked}");
            add(input_grad(name, o.clone(), masked));
        }
    }
    cases
}

fn forward(name: String, o: Rc<Operands>, relu: bool) -> Case {
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
        let params = storage_f32(ctx, "params", &[&o.w[..], &o.bias].concat());
        let y = storage_zeroed(&ctx.device, "y", (s.rows * s.units * 4) as u64);
        let op = LinearOp::Forward {
            x: &x,
            params: &params,
            y: &y,
            relu,
        };
        run_one(ctx, p.dense.dispatch(s, op))?;
        Ok(vec![("y", ctx.read_vec(&y, 0, s.rows * s.units)?)])
    })
}

fn weight_grad(name: String, o: Rc<Operands>) -> Case {
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
        run_one(ctx, p.dense.dispatch(s, op))?;
        let all: Vec<f32> = ctx.read_vec(&grads, 0, s.bias_off + s.units)?;
        let (dw, db) = all.split_at(s.bias_off);
        Ok(vec![("dw", dw.to_vec()), ("db", db.to_vec())])
    })
}

fn input_grad(name: String, o: Rc<Operands>, masked: bool) -> Case {
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
        let (dy, w) = (storage_f32(ctx, "dy", &o.dy), storage_f32(ctx, "w", &o.w));
        let mask = masked.then(|| storage_f32(ctx, "mask", &o.mask));
        let dx = storage_zeroed(&ctx.device, "dx", (s.rows * s.inputs * 4) as u64);
        let op = LinearOp::InputGrad {
            dy: &dy,
            params: &w,
            dx: &dx,
            relu_out: mask.as_ref(),
        };
        run_one(ctx, p.dense.dispatch(s, op))?;
        Ok(vec![("dx", ctx.read_vec(&dx, 0, s.rows * s.inputs)?)])
    })
}
