//! The Dropout family's agreement cases: the mask and the scaling against
//! [`super::cpu`], exactly, at rates 0.5 (the convnet's), 0.25 and 0, over the
//! convnet's flattened batch (32×1600, the bench row) and odd lengths, with the step
//! split between the uniform and the step counter as the trainer splits it.

use super::cpu::{self, DropMask};
use super::DropoutBindings;
use crate::device::kernel::{run_one, storage_f32, storage_init, storage_zeroed};
use crate::layers::check::{rng, uniform_vec, Case, Outputs};
use std::rc::Rc;

pub fn cases() -> Vec<Case> {
    let runs = [(32 * 1600, 0.5), (1, 0.5), (1001, 0.25), (333, 0.0)];
    let mut cases = Vec::new();
    for (i, (n, rate)) in runs.into_iter().enumerate() {
        let x = Rc::new(uniform_vec(&mut rng(900 + i as u64), n, -1.0, 1.0));
        // Global step 1000 + i: 1000 − 7 in the uniform, i in the counter and 7 as the
        // epoch's first step.
        let mask = DropMask::new(rate, 42 + i as u32, 1000 + i as u32);
        let case = apply(format!("dropout {n} rate={rate}"), x, mask, i as u32);
        cases.push(if i == 0 { case.bench() } else { case });
    }
    cases
}

fn apply(name: String, x: Rc<Vec<f32>>, mask: DropMask, counted: u32) -> Case {
    let cpu_x = x.clone();
    let cpu = move || -> Outputs {
        let mut out = vec![0.0; cpu_x.len()];
        cpu::dropout_apply(&cpu_x, &mask, &mut out);
        vec![("out", out)]
    };
    // Exact: the same mask, and one multiplication by the same f32.
    Case::new(name, 0.0, cpu, move |ctx, p| {
        let n = x.len();
        let bindings = DropoutBindings {
            state: &storage_init(ctx, "state", bytemuck::cast_slice(&[counted, 7, 0, 0])),
            x: &storage_f32(ctx, "x", &x),
            out: &storage_zeroed(&ctx.device, "out", (n * 4) as u64),
        };
        let uniform_part = DropMask {
            step: mask.step - counted - 7,
            ..mask
        };
        run_one(ctx, p.dropout.apply(n, &uniform_part, &bindings))?;
        Ok(vec![("out", ctx.read_vec(bindings.out, 0, n)?)])
    })
}
