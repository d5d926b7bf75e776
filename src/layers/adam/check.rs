//! The optimiser's agreement cases: one update at step 3 of 1, 129, 100 003 and the
//! default model's 101 770 parameters (the bench row).

use super::{cpu, AdamBindings};
use crate::device::kernel::{run_one, storage_f32, storage_init};
use crate::layers::check::{rng, uniform_vec, Case, Outputs, ELEMENTWISE_TOL};
use crate::model::Hyper;
use std::rc::Rc;

/// Parameters of the default model (784·2 + 784·128 + 128 + 128·10 + 10).
const DEFAULT_PARAMS: usize = 101_770;

struct Inputs {
    params: Vec<f32>,
    grads: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    hyper: Hyper,
}

pub fn cases() -> Vec<Case> {
    [DEFAULT_PARAMS, 1, 129, 100_003]
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let mut r = rng(400 + i as u64);
            let inputs = Rc::new(Inputs {
                params: uniform_vec(&mut r, n, -1.0, 1.0),
                grads: uniform_vec(&mut r, n, -0.1, 0.1),
                m: uniform_vec(&mut r, n, -0.01, 0.01),
                v: uniform_vec(&mut r, n, 0.0, 1e-4),
                hyper: Hyper::default(),
            });
            let case = adam(format!("adam {n} params"), inputs);
            if n == DEFAULT_PARAMS {
                case.bench()
            } else {
                case
            }
        })
        .collect()
}

fn adam(name: String, c: Rc<Inputs>) -> Case {
    let cpu_inputs = c.clone();
    let cpu = move || -> Outputs {
        let c = &cpu_inputs;
        let (mut p, mut m, mut v) = (c.params.clone(), c.m.clone(), c.v.clone());
        let alpha = c.hyper.adam_alpha(3);
        cpu::adam_update(&mut p, &c.grads, &mut m, &mut v, alpha, &c.hyper);
        vec![("params", p), ("m", m), ("v", v)]
    };
    Case::new(name, ELEMENTWISE_TOL, cpu, move |ctx, p| {
        let n = c.params.len();
        // The step counter reads 1 after the step's loss: the first entry of `alphas`.
        let bindings = AdamBindings {
            state: &storage_init(ctx, "state", bytemuck::cast_slice(&[1u32, 0, 0, 0])),
            alphas: &storage_f32(ctx, "alphas", &[c.hyper.adam_alpha(3)]),
            grads: &storage_f32(ctx, "grads", &c.grads),
            params: &storage_f32(ctx, "params", &c.params),
            m: &storage_f32(ctx, "m", &c.m),
            v: &storage_f32(ctx, "v", &c.v),
        };
        run_one(ctx, p.adam.update(n, &c.hyper, &bindings))?;
        Ok(vec![
            ("params", ctx.read_vec(bindings.params, 0, n)?),
            ("m", ctx.read_vec(bindings.m, 0, n)?),
            ("v", ctx.read_vec(bindings.v, 0, n)?),
        ])
    })
}
