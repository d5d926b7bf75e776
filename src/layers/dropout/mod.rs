//! Dropout (Keras' `Dropout(rate)`): inverted dropout in training, the identity in
//! evaluation, with its mask computed from a hash of (seed, step, index)
//! (`dropout.wgsl`); the CPU reference is [`cpu`].

#[cfg(not(target_arch = "wasm32"))]
mod check;
pub mod cpu;

use crate::device::kernel::{bindings, elementwise_groups, uniform, Dispatch, Work};
use cpu::DropMask;

uniform! {
    /// Uniform block of `dropout.wgsl`.
    pub struct DropoutUniform as "Dropout" {
        pub n: u32, pub seed: u32, pub step_base: u32, pub threshold: u32, pub scale: f32,
    }
}

bindings! {
    /// `out = x · scale` where kept, else 0, at step `step_base + state[0] + state[1]`
    /// (`state` holds the trainer's step counter and the epoch's first step, see
    /// `GpuBackend::state`).
    DropoutBindings(DropoutUniform) for ["apply"] => {
        state: Read<u32> = 1, x: Read<f32> = 2, out: ReadWrite<f32> = 3,
    }
}

family! {
    /// The Dropout layer family.
    Dropout: "dropout" in "dropout.wgsl", uniform DropoutUniform => {
        apply: DropoutBindings = "apply",
    }
}

impl Pipelines {
    /// `mask` applied to the first `n` values: a step's forward or backward. The mask's
    /// step is `mask.step` plus the two counts in the bindings' `state`.
    pub fn apply(&self, n: usize, mask: &DropMask, bindings: &DropoutBindings) -> Dispatch {
        let u = DropoutUniform {
            n: n as u32,
            seed: mask.seed,
            step_base: mask.step,
            threshold: mask.threshold,
            scale: mask.scale,
            ..Default::default()
        };
        // Per value a comparison and a scaling; read and written once.
        let work = Work::new(2.0 * n as f64, 2.0 * n as f64);
        self.apply
            .dispatch(&u, bindings, elementwise_groups(n))
            .with_work(work)
    }
}
