//! The ReLU family's agreement cases: forward and backward over 1, 129 and 100 003
//! values, and the default step's hidden layer (32×128, the bench rows).

use super::{cpu, ReluBackwardBindings, ReluForwardBindings};
use crate::device::kernel::{run_one, storage_f32, storage_zeroed};
use crate::layers::check::{rng, uniform_vec, Case, Outputs, ELEMENTWISE_TOL};
use std::rc::Rc;

struct Inputs {
    x: Vec<f32>,
    dy: Vec<f32>,
}

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, n) in [32 * 128usize, 1, 129, 100_003].into_iter().enumerate() {
        let mut r = rng(500 + i as u64);
        let x = uniform_vec(&mut r, n, -1.0, 1.0);
        let dy = uniform_vec(&mut r, n, -1.0, 1.0);
        let inputs = Rc::new(Inputs { x, dy });
        let pair = [
            forward(format!("relu_forward {n}"), inputs.clone()),
            backward(format!("relu_backward {n}"), inputs),
        ];
        cases.extend(pair.map(|case| if i == 0 { case.bench() } else { case }));
    }
    cases
}

fn forward(name: String, c: Rc<Inputs>) -> Case {
    let cpu_inputs = c.clone();
    let cpu = move || -> Outputs {
        let mut y = cpu_inputs.x.clone();
        cpu::relu_forward(&mut y);
        vec![("y", y)]
    };
    Case::new(name, ELEMENTWISE_TOL, cpu, move |ctx, p| {
        let bindings = ReluForwardBindings {
            x: &storage_f32(ctx, "x", &c.x),
        };
        run_one(ctx, p.relu.forward(c.x.len(), &bindings))?;
        Ok(vec![("y", ctx.read_vec(bindings.x, 0, c.x.len())?)])
    })
}

/// The backward at the forward's output `y = max(x, 0)`.
fn backward(name: String, c: Rc<Inputs>) -> Case {
    let cpu_inputs = c.clone();
    let cpu = move || -> Outputs {
        let c = &cpu_inputs;
        let mut y = c.x.clone();
        cpu::relu_forward(&mut y);
        let mut dx = vec![0.0; y.len()];
        cpu::relu_backward(&c.dy, &y, &mut dx);
        vec![("dx", dx)]
    };
    Case::new(name, ELEMENTWISE_TOL, cpu, move |ctx, p| {
        let n = c.x.len();
        let y: Vec<f32> = c.x.iter().map(|v| v.max(0.0)).collect();
        let bindings = ReluBackwardBindings {
            dy: &storage_f32(ctx, "dy", &c.dy),
            y: &storage_f32(ctx, "y", &y),
            dx: &storage_zeroed(&ctx.device, "dx", (n * 4) as u64),
        };
        run_one(ctx, p.relu.backward(n, &bindings))?;
        Ok(vec![("dx", ctx.read_vec(bindings.dx, 0, n)?)])
    })
}
