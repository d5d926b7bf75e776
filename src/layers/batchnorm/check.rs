//! The BatchNorm family's agreement cases: the forward passes (with the gather from u8
//! images), the gather alone, the unfused backward and both variants of the BatchNorm +
//! first-dense backward, against [`super::cpu`], at batches 32 (the default step, the
//! bench rows), 1, 33 and 37.

use super::cpu::{self, gather_scaled, Affine, Moments, TrainOutputs};
use super::{
    BatchnormBackwardBindings, BatchnormDenseBackwardBindings, BatchnormForwardBindings, BnForward,
    BnSetup,
};
use crate::device::context::GpuContext;
use crate::device::error::DeviceError;
use crate::device::kernel::{pack_pixels, run_one, storage_f32, storage_init, storage_zeroed};
use crate::layers::check::{rng, uniform_vec, Case, Outputs, ELEMENTWISE_TOL};
use crate::layers::dense::{self, DenseShape};
use crate::layers::Pipelines;
use crate::model::{Hyper, INPUT};
use rand::Rng;
use std::rc::Rc;

const SCALE: f32 = 1.0 / 255.0;
const BATCHES: [usize; 4] = [32, 1, 33, 37];
/// The units of the dense layer after BatchNorm: the default model's 128 at batch 32 (the
/// bench rows), else 37, not a multiple of the 64 threads that stride each row.
fn width(batch: usize) -> usize {
    if batch == 32 {
        128
    } else {
        37
    }
}

/// Random BatchNorm inputs: a batch of `indices` from a pool of 50 images.
struct Inputs {
    images: Vec<u8>,
    indices: Vec<u32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
    hyper: Hyper,
}

impl Inputs {
    fn params(&self) -> Affine<&[f32]> {
        Affine {
            gamma: &self.gamma,
            beta: &self.beta,
        }
    }
}

fn inputs(seed: u64, batch: usize) -> Rc<Inputs> {
    let mut r = rng(seed);
    let pool = 50;
    // Some always-zero pixels, like MNIST's borders.
    let images = (0..pool * INPUT)
        .map(|i| {
            if (i % INPUT) % 28 < 3 {
                0
            } else {
                r.random_range(0..=255u8)
            }
        })
        .collect();
    Rc::new(Inputs {
        images,
        indices: (0..batch).map(|_| r.random_range(0..pool as u32)).collect(),
        gamma: uniform_vec(&mut r, INPUT, 0.5, 1.5),
        beta: uniform_vec(&mut r, INPUT, -0.5, 0.5),
        mean: uniform_vec(&mut r, INPUT, -0.1, 0.1),
        var: uniform_vec(&mut r, INPUT, 0.5, 1.5),
        hyper: Hyper::default(),
    })
}

/// The layer as the GPU sees it: γ and β at the start of the parameter buffer.
fn setup(c: &Inputs) -> BnSetup {
    BnSetup {
        features: INPUT,
        gamma_off: 0,
        beta_off: INPUT,
        scale: SCALE,
        eps: c.hyper.bn_eps,
        momentum: c.hyper.bn_momentum,
        per_feature: true,
    }
}

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, &batch) in BATCHES.iter().enumerate() {
        let c = inputs(200 + i as u64, batch);
        let bench = batch == 32;
        let mut add = |case: Case| cases.push(if bench { case.bench() } else { case });
        for per_feature in [true, false] {
            let variant = if per_feature { "" } else { "_wide" };
            let name = format!("batchnorm_forward_train{variant} b{batch}");
            add(forward_train(name, c.clone(), per_feature));
        }
        add(forward_eval(
            format!("batchnorm_forward_eval b{batch}"),
            c.clone(),
        ));
        add(backward(format!("batchnorm_backward b{batch}"), c.clone()));
        add(gather(format!("gather b{batch}"), c.clone()));
        for per_feature in [false, true] {
            let variant = if per_feature { "_per_feature" } else { "" };
            let width = width(batch);
            let name = format!("batchnorm_dense_backward{variant} {INPUT}x{width} b{batch}");
            add(dense_backward(name, c.clone(), per_feature));
        }
    }
    cases
}

/// The CPU's training forward: xhat, y, inv_std and the moving statistics.
fn cpu_forward_train(c: &Inputs) -> Outputs {
    let batch = c.indices.len();
    let mut x = vec![0.0; batch * INPUT];
    gather_scaled(&c.images, INPUT, &c.indices, SCALE, &mut x);
    let (mut mean, mut var) = (c.mean.clone(), c.var.clone());
    let (mut xhat, mut y) = (vec![0.0; batch * INPUT], vec![0.0; batch * INPUT]);
    let mut inv_std = vec![0.0; INPUT];
    let moving = Moments {
        mean: &mut mean[..],
        var: &mut var[..],
    };
    let out = TrainOutputs {
        xhat: &mut xhat,
        y: &mut y,
        inv_std: &mut inv_std,
    };
    cpu::batchnorm_forward_train(&x, c.params(), &c.hyper, moving, out);
    let stats = [mean, var, inv_std].concat();
    vec![
        ("xhat", xhat),
        ("y", y),
        ("moving mean, var, inv_std", stats),
    ]
}

/// Which kernel [`gpu_forward`] runs.
#[derive(Clone, Copy, PartialEq)]
enum Forward {
    /// A training step's, with a thread per feature or the workgroup variant.
    Train {
        per_feature: bool,
    },
    Eval,
    /// The gather alone, of a training step's rows.
    Gather,
}

/// One forward dispatch on the GPU, read back as the CPU's outputs are named.
fn gpu_forward(
    ctx: &GpuContext,
    p: &Pipelines,
    c: &Inputs,
    forward: Forward,
) -> Result<Outputs, DeviceError> {
    let (d, batch) = (&ctx.device, c.indices.len());
    let pixels = storage_init(ctx, "pixels", bytemuck::cast_slice(&pack_pixels(&c.images)));
    let order = storage_init(ctx, "order", bytemuck::cast_slice(&c.indices));
    let stats = storage_f32(
        ctx,
        "stats",
        &[&c.mean[..], &c.var, &vec![0.0; INPUT]].concat(),
    );
    let bindings = BatchnormForwardBindings {
        pixels: &pixels,
        order: &order,
        state: &storage_zeroed(d, "state", 16),
        params: &storage_f32(ctx, "params", &[&c.gamma[..], &c.beta].concat()),
        stats: &stats,
        xhat: &storage_zeroed(d, "xhat", (batch * INPUT * 4) as u64),
        y: &storage_zeroed(d, "y", (batch * INPUT * 4) as u64),
    };
    let per_feature = forward != Forward::Train { per_feature: false };
    let setup = BnSetup {
        per_feature,
        ..setup(c)
    };
    let dispatch = match forward {
        Forward::Eval => {
            let pass = BnForward::Eval {
                rows: batch,
                base: 0,
            };
            p.batchnorm.forward(pass, &setup, &bindings)
        }
        _ => {
            let pass = BnForward::Train {
                rows: batch,
                stride: batch,
            };
            match forward {
                Forward::Gather => p.batchnorm.gather(pass, &setup, &bindings),
                _ => p.batchnorm.forward(pass, &setup, &bindings),
            }
        }
    };
    run_one(ctx, dispatch)?;
    let y = ctx.read_vec(bindings.y, 0, batch * INPUT)?;
    if !matches!(forward, Forward::Train { .. }) {
        return Ok(vec![("y", y)]);
    }
    let xhat = ctx.read_vec(bindings.xhat, 0, batch * INPUT)?;
    let stats = ctx.read_vec(&stats, 0, 3 * INPUT)?;
    Ok(vec![
        ("xhat", xhat),
        ("y", y),
        ("moving mean, var, inv_std", stats),
    ])
}

/// The training forward, `forward_train` (a thread per feature) or, unless `per_feature`,
/// `forward_train_wide` (its sums in a tree, another order than the CPU's).
fn forward_train(name: String, c: Rc<Inputs>, per_feature: bool) -> Case {
    let cpu_inputs = c.clone();
    let cpu = move || cpu_forward_train(&cpu_inputs);
    Case::new(name, ELEMENTWISE_TOL, cpu, move |ctx, p| {
        gpu_forward(ctx, p, &c, Forward::Train { per_feature })
    })
}

/// The gather alone (a model without BatchNorm): the batch's scaled pixels.
fn gather(name: String, c: Rc<Inputs>) -> Case {
    let cpu_inputs = c.clone();
    let cpu = move || -> Outputs {
        let c = &cpu_inputs;
        let mut x = vec![0.0; c.indices.len() * INPUT];
        gather_scaled(&c.images, INPUT, &c.indices, SCALE, &mut x);
        vec![("y", x)]
    };
    // Exact: one u8 to f32 conversion and one multiplication by the same f32.
    Case::new(name, 0.0, cpu, move |ctx, p| {
        gpu_forward(ctx, p, &c, Forward::Gather)
    })
}

/// Evaluation reads the first `batch` images in order, with the moving statistics.
fn forward_eval(name: String, c: Rc<Inputs>) -> Case {
    let cpu_inputs = c.clone();
    let cpu = move || -> Outputs {
        let c = &cpu_inputs;
        let batch = c.indices.len();
        let first: Vec<u32> = (0..batch as u32).collect();
        let mut x = vec![0.0; batch * INPUT];
        gather_scaled(&c.images, INPUT, &first, SCALE, &mut x);
        let mut y = vec![0.0; batch * INPUT];
        let moving = Moments {
            mean: &c.mean[..],
            var: &c.var[..],
        };
        cpu::batchnorm_forward_eval(&x, c.params(), moving, c.hyper.bn_eps, &mut y);
        vec![("y", y)]
    };
    Case::new(name, ELEMENTWISE_TOL, cpu, move |ctx, p| {
        gpu_forward(ctx, p, &c, Forward::Eval)
    })
}

/// The backward's inputs: G = xhatᵀ·δ and db for a random δ, the dense kernel W.
struct DenseGrads {
    width: usize,
    g: Vec<f32>,
    db: Vec<f32>,
    w: Vec<f32>,
}

fn dense_grads(c: &Inputs) -> DenseGrads {
    let batch = c.indices.len();
    let xhat = &cpu_forward_train(c)[0].1;
    let mut r = rng(batch as u64);
    let width = width(batch);
    let w = uniform_vec(&mut r, INPUT * width, -0.1, 0.1);
    let delta = uniform_vec(&mut r, batch * width, -1.0, 1.0);
    let (mut g, mut db) = (vec![0.0; INPUT * width], vec![0.0; width]);
    dense::cpu::gemm_weight_grad(xhat, &delta, batch, INPUT, width, &mut g);
    dense::cpu::bias_grad(&delta, batch, width, &mut db);
    DenseGrads { width, g, db, w }
}

fn dense_backward(name: String, c: Rc<Inputs>, per_feature: bool) -> Case {
    let grads = Rc::new(dense_grads(&c));
    let (cpu_inputs, cpu_grads) = (c.clone(), grads.clone());
    let cpu = move || -> Outputs {
        let (c, grads) = (&cpu_inputs, &cpu_grads);
        let mut dw = grads.g.clone();
        let (mut dgamma, mut dbeta) = (vec![0.0; INPUT], vec![0.0; INPUT]);
        let bn_grads = Affine {
            gamma: &mut dgamma[..],
            beta: &mut dbeta[..],
        };
        cpu::batchnorm_dense_backward(&mut dw, &grads.w, c.params(), &grads.db, bn_grads);
        vec![("dgamma, dbeta, dW", [dgamma, dbeta, dw].concat())]
    };
    Case::new(name, ELEMENTWISE_TOL, cpu, move |ctx, p| {
        // The trainer's order in both buffers: gamma, beta, kernel, bias.
        let params = [&c.gamma[..], &c.beta, &grads.w].concat();
        let zeros = vec![0.0f32; 2 * INPUT];
        let all_grads = [&zeros[..], &grads.g, &grads.db].concat();
        let bindings = BatchnormDenseBackwardBindings {
            params: &storage_f32(ctx, "params", &params),
            grads: &storage_f32(ctx, "grads", &all_grads),
        };
        let width = grads.width;
        let dense = DenseShape {
            rows: c.indices.len(),
            inputs: INPUT,
            units: width,
            kernel_off: 2 * INPUT,
            bias_off: 2 * INPUT + INPUT * width,
        };
        let pipelines = &p.batchnorm;
        let dispatch = pipelines.dense_backward(&setup(&c), &dense, &bindings, per_feature);
        run_one(ctx, dispatch)?;
        let out = ctx.read_vec(bindings.grads, 0, 2 * INPUT + INPUT * width)?;
        Ok(vec![("dgamma, dbeta, dW", out)])
    })
}

/// BatchNorm's own backward from a random output gradient at the step's xhat.
fn backward(name: String, c: Rc<Inputs>) -> Case {
    let batch = c.indices.len();
    let mut r = rng(1000 + batch as u64);
    let dy = Rc::new(uniform_vec(&mut r, batch * INPUT, -1.0, 1.0));
    let forward = cpu_forward_train(&c);
    let xhat = Rc::new(forward[0].1.clone());
    let inv_std = forward[2].1[2 * INPUT..].to_vec();
    let (cpu_dy, cpu_xhat, gamma) = (dy.clone(), xhat.clone(), c.gamma.clone());
    let cpu = move || -> Outputs {
        let (mut dgamma, mut dbeta) = (vec![0.0; INPUT], vec![0.0; INPUT]);
        let grads = Affine {
            gamma: &mut dgamma[..],
            beta: &mut dbeta[..],
        };
        let dy_and_xhat = (&cpu_dy[..], &cpu_xhat[..]);
        cpu::batchnorm_backward(dy_and_xhat, &gamma, &inv_std, grads, None);
        vec![("dgamma, dbeta", [dgamma, dbeta].concat())]
    };
    Case::new(name, ELEMENTWISE_TOL, cpu, move |ctx, p| {
        let bindings = BatchnormBackwardBindings {
            grads: &storage_zeroed(&ctx.device, "grads", (2 * INPUT * 4) as u64),
            dy: &storage_f32(ctx, "dy", &dy),
            xhat_in: &storage_f32(ctx, "xhat", &xhat),
        };
        run_one(ctx, p.batchnorm.backward(batch, &setup(&c), &bindings))?;
        Ok(vec![(
            "dgamma, dbeta",
            ctx.read_vec(bindings.grads, 0, 2 * INPUT)?,
        )])
    })
}
