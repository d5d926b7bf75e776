//! The optimiser: one Adam update of every parameter (`adam.wgsl`), with the step size
//! of step s read from a per-epoch table through the step counter; the CPU reference is
//! [`cpu`].

#[cfg(not(target_arch = "wasm32"))]
mod check;
pub mod cpu;

use crate::device::kernel::{bindings, elementwise_groups, uniform, Dispatch, Work};
use crate::model::Hyper;

uniform! {
    /// Uniform block of `adam.wgsl`.
    pub struct AdamUniform as "Adam" {
        pub n: u32, pub one_minus_b1: f32, pub one_minus_b2: f32, pub eps: f32,
    }
}

bindings! {
    /// One Adam update of `params`, `m`, `v` from `grads`, with the step size
    /// `alphas[state[0] − 1]`. `state` is the step counter, a contract with batchnorm and
    /// softmax_xent (see `GpuBackend::state`).
    AdamBindings(AdamUniform) for ["adam"] => {
        state: Read<u32> = 1, alphas: Read<f32> = 2, grads: Read<f32> = 3,
        params: ReadWrite<f32> = 4, m: ReadWrite<f32> = 5, v: ReadWrite<f32> = 6,
    }
}

impl AdamUniform {
    /// One Adam update of `n` parameters with `hyper`'s moments and epsilon (the step
    /// size comes from the `alphas` buffer, per step).
    pub fn new(n: usize, hyper: &Hyper) -> Self {
        AdamUniform {
            n: n as u32,
            one_minus_b1: 1.0 - hyper.beta1,
            one_minus_b2: 1.0 - hyper.beta2,
            eps: hyper.adam_eps,
            ..Default::default()
        }
    }
}

family! {
    /// The optimiser family.
    Adam: "adam" in "adam.wgsl", uniform AdamUniform => {
        adam: AdamBindings = "adam",
    }
}

impl Pipelines {
    /// The update of the first `n` parameters.
    pub fn update(&self, n: usize, hyper: &Hyper, bindings: &AdamBindings) -> Dispatch {
        let u = AdamUniform::new(n, hyper);
        // Per parameter: m (three operations), v (four), the step (five, a square root
        // and a division among them); g, p, m, v read and p, m, v written.
        let work = Work::new(12.0 * n as f64, 7.0 * n as f64);
        self.adam
            .dispatch(&u, bindings, elementwise_groups(n))
            .with_work(work)
    }
}
