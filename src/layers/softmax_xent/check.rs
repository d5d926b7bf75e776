//! The loss family's agreement cases: training (loss, correct count, gradient, the step
//! counter advanced) and evaluation (loss, correct count, predictions), with ties that
//! the first maximum must win, at batches 32 (the bench row), 1, 33, 37 and 300.

use super::{cpu, SoftmaxUniform, SoftmaxXentBindings};
use crate::device::kernel::{run_one, storage_f32, storage_init, storage_zeroed};
use crate::layers::check::{as_f32, rng, uniform_vec, Case, Outputs, ELEMENTWISE_TOL};
use rand::Rng;
use std::rc::Rc;

const CLASSES: usize = 10;

struct Inputs {
    logits: Vec<f32>,
    labels: Vec<u8>,
}

fn inputs(seed: u64, batch: usize) -> Rc<Inputs> {
    let mut r = rng(seed);
    let mut logits = uniform_vec(&mut r, batch * CLASSES, -5.0, 5.0);
    for row in (0..batch).step_by(3) {
        logits[row * CLASSES + 3] = 9.0;
        logits[row * CLASSES + 7] = 9.0;
    }
    let labels = (0..batch)
        .map(|_| r.random_range(0..CLASSES as u8))
        .collect();
    Rc::new(Inputs { logits, labels })
}

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, batch) in [32usize, 1, 33, 37, 300].into_iter().enumerate() {
        let c = inputs(300 + i as u64, batch);
        for training in [true, false] {
            let mode = if training { "training" } else { "evaluation" };
            let case = softmax_xent(format!("softmax_xent {mode} b{batch}"), c.clone(), training);
            cases.push(if batch == 32 && training {
                case.bench()
            } else {
                case
            });
        }
    }
    cases
}

fn softmax_xent(name: String, c: Rc<Inputs>, training: bool) -> Case {
    let cpu_inputs = c.clone();
    let cpu = move || -> Outputs {
        let c = &cpu_inputs;
        let batch = c.labels.len();
        let mut grad = vec![0.0; batch * CLASSES];
        let mut preds = vec![0u8; batch];
        let (loss, correct) = cpu::softmax_xent(
            &c.logits,
            &c.labels,
            CLASSES,
            Some(&mut grad),
            Some(&mut preds),
        );
        let counts = vec![("loss", vec![loss]), ("correct", as_f32(&[correct]))];
        let rest = if training {
            vec![("gradient", grad), ("step counter", vec![1.0])]
        } else {
            vec![("predictions", as_f32(&preds))]
        };
        [counts, rest].concat()
    };
    Case::new(name, ELEMENTWISE_TOL, cpu, move |ctx, p| {
        let (d, batch) = (&ctx.device, c.labels.len());
        let labels: Vec<u32> = c.labels.iter().map(|&l| l as u32).collect();
        let order: Vec<u32> = (0..batch as u32).collect();
        let bindings = SoftmaxXentBindings {
            logits: &storage_f32(ctx, "logits", &c.logits),
            labels: &storage_init(ctx, "labels", bytemuck::cast_slice(&labels)),
            order: &storage_init(ctx, "order", bytemuck::cast_slice(&order)),
            state: &storage_zeroed(d, "state", 16),
            grad: &storage_zeroed(d, "grad", (batch * CLASSES * 4) as u64),
            stats: &storage_zeroed(d, "stats", 16),
            predictions: &storage_zeroed(d, "predictions", (batch * 4) as u64),
        };
        let u = if training {
            SoftmaxUniform::training(batch, CLASSES, batch)
        } else {
            SoftmaxUniform::evaluation(batch, CLASSES, 0, 0)
        };
        run_one(ctx, p.softmax_xent.dispatch(&u, &bindings))?;
        let stats: Vec<u32> = ctx.read_vec(bindings.stats, 0, 2)?;
        let counts = vec![
            ("loss", vec![f32::from_bits(stats[0])]),
            ("correct", as_f32(&stats[1..])),
        ];
        let rest = if training {
            let step: Vec<u32> = ctx.read_vec(bindings.state, 0, 1)?;
            let grad = ctx.read_vec(bindings.grad, 0, batch * CLASSES)?;
            vec![("gradient", grad), ("step counter", as_f32(&step))]
        } else {
            let preds: Vec<u32> = ctx.read_vec(bindings.predictions, 0, batch)?;
            vec![("predictions", as_f32(&preds))]
        };
        Ok([counts, rest].concat())
    })
}
