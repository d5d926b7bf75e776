//! ReLU, `y = max(x, 0)`, and its backward (`relu.wgsl`); the CPU reference is [`cpu`].
//! The trainers fuse both into the dense layer's GEMM (its epilogue and its input-grad
//! mask); these standalone kernels are the unfused forms.

#[cfg(not(target_arch = "wasm32"))]
mod check;
pub mod cpu;

use crate::device::kernel::{bindings, elementwise_groups, uniform, Dispatch, Work};

uniform! {
    /// Uniform block of `relu.wgsl`.
    pub struct ReluUniform as "Relu" {
        pub n: u32,
    }
}

bindings! {
    /// The forward: `x = max(x, 0)` in place.
    ReluForwardBindings(ReluUniform) for ["forward"] => {
        x: ReadWrite<f32> = 1,
    }

    /// The backward: `dx = dy` where `y > 0`, else 0.
    ReluBackwardBindings(ReluUniform) for ["backward"] => {
        dy: Read<f32> = 2, y: Read<f32> = 3,
        dx: ReadWrite<f32> = 4,
    }
}

family! {
    /// The ReLU layer family.
    Relu: "relu" in "relu.wgsl", uniform ReluUniform => {
        forward: ReluForwardBindings = "forward",
        backward: ReluBackwardBindings = "backward",
    }
}

fn elementwise(n: usize) -> (ReluUniform, [u32; 3]) {
    let u = ReluUniform {
        n: n as u32,
        ..Default::default()
    };
    (u, elementwise_groups(n))
}

impl Pipelines {
    /// `x = max(x, 0)` over its first `n` values.
    pub fn forward(&self, n: usize, bindings: &ReluForwardBindings) -> Dispatch {
        let (u, groups) = elementwise(n);
        let work = Work::new(n as f64, 2.0 * n as f64);
        self.forward.dispatch(&u, bindings, groups).with_work(work)
    }

    /// `dx = dy · [y > 0]` over the first `n` values.
    pub fn backward(&self, n: usize, bindings: &ReluBackwardBindings) -> Dispatch {
        let (u, groups) = elementwise(n);
        let work = Work::new(n as f64, 3.0 * n as f64);
        self.backward.dispatch(&u, bindings, groups).with_work(work)
    }
}
