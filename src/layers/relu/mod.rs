//! ReLU, `y = max(x, 0)`, and its backward (`relu.wgsl`); the CPU reference is [`cpu`].
//! The trainers fuse both into the dense layer's GEMM (its epilogue and its input-grad
//! mask); these standalone kernels are the unfused forms.

#[cfg(not(target_arch = "wasm32"))]
mod check;
pub mod cpu;

use super::Family;
use crate::device::context::GpuContext;
use crate::device::error::DeviceError;
use crate::device::kernel::{
    bindings, elementwise_groups, uniform, BindingsDecl, Dispatch, Kernel, Uniform, UniformDecl,
};

uniform! {
    /// Uniform block of `relu.wgsl`.
    pub struct ReluUniform as "Relu" {
        pub n: u32,
        pub pad0: u32,
        pub pad1: u32,
        pub pad2: u32,
    }
}

bindings! {
    /// The forward: `x = max(x, 0)` in place.
    ReluForwardBindings(ReluUniform) for ["forward"] => {
        x: ReadWrite = 1,
    }

    /// The backward: `dx = dy` where `y > 0`, else 0.
    ReluBackwardBindings(ReluUniform) for ["backward"] => {
        dy: Read = 2,
        y: Read = 3,
        dx: ReadWrite = 4,
    }
}

/// The ReLU family's pipelines.
pub struct Pipelines {
    pub forward: Kernel,
    pub backward: Kernel,
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
    pub fn forward(&self, d: &wgpu::Device, n: usize, bindings: &ReluForwardBindings) -> Dispatch {
        let (u, groups) = elementwise(n);
        self.forward.dispatch(d, &u, bindings, groups)
    }

    /// `dx = dy · [y > 0]` over the first `n` values.
    pub fn backward(&self, d: &wgpu::Device, n: usize, bindings: &ReluBackwardBindings) -> Dispatch {
        let (u, groups) = elementwise(n);
        self.backward.dispatch(d, &u, bindings, groups)
    }
}

/// The ReLU layer family.
pub struct Relu;

impl Family for Relu {
    const NAME: &'static str = "relu";
    const WGSL: &'static str = include_str!("relu.wgsl");
    const BINDINGS: &'static [BindingsDecl] = BINDINGS;
    const UNIFORM: UniformDecl = <ReluUniform as Uniform>::DECL;
    type Pipelines = Pipelines;

    fn pipelines(ctx: &GpuContext, module: &wgpu::ShaderModule) -> Result<Pipelines, DeviceError> {
        Ok(Pipelines {
            forward: Kernel::new::<ReluForwardBindings>(ctx, module, "relu_forward", "forward")?,
            backward: Kernel::new::<ReluBackwardBindings>(ctx, module, "relu_backward", "backward")?,
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn cases() -> Vec<super::check::Case> {
        check::cases()
    }
}
