//! The MaxPool2D family's agreement cases: forward and backward (masked and not) against
//! [`super::cpu`], at the convnet's two pools (32×26×26 and 64×11×11, 2×2, batch 32: the
//! bench rows; the second drops an odd row and column) and at odd shapes, with ties
//! (values drawn from a few levels) and zeros in every case.

use super::{cpu, PoolShape};
use crate::device::kernel::{run_one, storage_f32, storage_zeroed};
use crate::layers::check::{rng, uniform_vec, Case, Outputs, ELEMENTWISE_TOL};
use rand::Rng;
use std::rc::Rc;

struct Inputs {
    shape: PoolShape,
    /// A ReLU output: a third zeros, the rest from eight levels, so windows tie.
    x: Vec<f32>,
    dy: Vec<f32>,
}

pub fn cases() -> Vec<Case> {
    let shapes = [
        PoolShape::new(32, 32, (26, 26), 2),
        PoolShape::new(32, 64, (11, 11), 2),
        PoolShape::new(1, 3, (7, 9), 2),
        PoolShape::new(3, 5, (10, 11), 3),
    ];
    let mut cases = Vec::new();
    for (i, shape) in shapes.into_iter().enumerate() {
        let mut r = rng(800 + i as u64);
        let x = (0..shape.in_len())
            .map(|_| (r.random_range(-4..8i32).max(0) as f32) / 8.0)
            .collect();
        let dy = uniform_vec(&mut r, shape.out_len(), -1.0, 1.0);
        let c = Rc::new(Inputs { shape, x, dy });
        let s = &c.shape;
        let at = format!(
            "{}×{}×{} /{} b{}",
            s.channels, s.height, s.width, s.size, s.batch
        );
        let family = [
            forward(format!("maxpool2d_forward {at}"), c.clone()),
            backward(format!("maxpool2d_backward {at} masked"), c.clone(), true),
            backward(format!("maxpool2d_backward {at}"), c, false),
        ];
        cases.extend(family.map(|case| if i < 2 { case.bench() } else { case }));
    }
    cases
}

/// The CPU forward's output and arg-maxes (the GPU's backward finds the arg-max again
/// from `x`).
fn cpu_forward(c: &Inputs) -> (Vec<f32>, Vec<u32>) {
    let (mut y, mut argmax) = (vec![0.0; c.shape.out_len()], vec![0; c.shape.out_len()]);
    cpu::maxpool2d_forward(&c.x, &c.shape, &mut y, &mut argmax);
    (y, argmax)
}

fn forward(name: String, c: Rc<Inputs>) -> Case {
    let cpu_inputs = c.clone();
    let cpu = move || -> Outputs {
        let c = &cpu_inputs;
        let (y, _) = cpu_forward(c);
        vec![("y", y)]
    };
    Case::new(name, ELEMENTWISE_TOL, cpu, move |ctx, p| {
        let len = c.shape.out_len();
        let x = storage_f32(ctx, "x", &c.x);
        let y = &storage_zeroed(&ctx.device, "y", (len * 4) as u64);
        run_one(ctx, p.maxpool2d.forward(&c.shape, &x, y))?;
        Ok(vec![("y", ctx.read_vec(y, 0, len)?)])
    })
}

fn backward(name: String, c: Rc<Inputs>, masked: bool) -> Case {
    let cpu_inputs = c.clone();
    let cpu = move || -> Outputs {
        let c = &cpu_inputs;
        let (y, argmax) = cpu_forward(c);
        let mut dx = vec![0.0; c.x.len()];
        cpu::maxpool2d_backward(&c.dy, (&y, &argmax), &c.shape, masked, &mut dx);
        vec![("dx", dx)]
    };
    Case::new(name, ELEMENTWISE_TOL, cpu, move |ctx, p| {
        let (x, dy) = (&storage_f32(ctx, "x", &c.x), &storage_f32(ctx, "dy", &c.dy));
        let dx = &storage_zeroed(&ctx.device, "dx", (c.x.len() * 4) as u64);
        run_one(ctx, p.maxpool2d.backward(&c.shape, [x, dy, dx], masked))?;
        Ok(vec![("dx", ctx.read_vec(dx, 0, c.x.len())?)])
    })
}
