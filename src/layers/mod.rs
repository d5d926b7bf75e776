//! The layer families: each one folder holding everything of one kind of layer (or of
//! the loss, or of the optimiser), registered once in [`families!`] below.
//!
//! A family's folder holds:
//! - its WGSL (`NAME.wgsl`), with the maths, the memory layout and the measured reasons
//!   in its header;
//! - `cpu.rs`, the CPU reference, a plain function per kernel;
//! - `mod.rs`, the GPU host side: the uniform block and bindings declarations, the
//!   pipelines, and the dispatches a training step and an evaluation record, built by
//!   functions that the GPU trainer *and* the agreement cases call;
//! - `check.rs`, the family's agreement cases: each runs the CPU reference and the GPU
//!   kernel on the same inputs. `tests/gpu_agreement.rs` asserts every case of every
//!   family on every adapter, and `cargo bench --bench kernels` times the cases marked as
//!   bench rows.
//!
//! Adding a family is a new folder and one line in [`families!`]; the shader test
//! (`tests/shaders.rs`), the agreement test and the bench rows find it from there.

#[cfg(not(target_arch = "wasm32"))]
pub mod check;
#[cfg(test)]
mod gradcheck;

use crate::device::context::GpuContext;
use crate::device::error::DeviceError;
use crate::device::kernel::{module, BindingsDecl, UniformDecl};

/// What the registry needs of each family.
pub trait Family {
    /// The family's name: its shader is `NAME.wgsl`, and its kernels are named
    /// `NAME_ENTRY` in profiles and bench rows.
    const NAME: &'static str;
    /// The shader's source.
    const WGSL: &'static str;
    /// Every bindings declaration of its entry points.
    const BINDINGS: &'static [BindingsDecl];
    /// Its uniform block's layout.
    const UNIFORM: UniformDecl;
    /// Its compiled pipelines, with the dispatch builders.
    type Pipelines;
    fn pipelines(
        ctx: &GpuContext,
        module: &wgpu::ShaderModule,
    ) -> Result<Self::Pipelines, DeviceError>;
    /// Its agreement cases (and bench rows).
    #[cfg(not(target_arch = "wasm32"))]
    fn cases() -> Vec<check::Case>;
}

/// One registered shader, as the shader test reads it.
pub struct Shader {
    pub family: &'static str,
    pub source: &'static str,
    pub bindings: &'static [BindingsDecl],
    pub uniform: UniformDecl,
}

/// The registry: `folder: Type` for each family. It declares the modules, the
/// [`Pipelines`] of every family, [`SHADERS`] and [`cases`].
macro_rules! families {
    ($($family:ident: $ty:ident,)*) => {
        $(pub mod $family;)*
        $(pub use $family::$ty;)*

        /// Every family's pipelines, compiled on one device.
        pub struct Pipelines {
            $(pub $family: <$ty as Family>::Pipelines,)*
        }

        impl Pipelines {
            pub fn new(ctx: &GpuContext) -> Result<Pipelines, DeviceError> {
                Ok(Pipelines {
                    $($family: {
                        let module = module(ctx, <$ty as Family>::NAME, <$ty as Family>::WGSL)?;
                        <$ty as Family>::pipelines(ctx, &module)?
                    },)*
                })
            }
        }

        /// Every family's shader with its declarations.
        pub const SHADERS: &[Shader] = &[$(Shader {
            family: <$ty as Family>::NAME,
            source: <$ty as Family>::WGSL,
            bindings: <$ty as Family>::BINDINGS,
            uniform: <$ty as Family>::UNIFORM,
        }),*];

        /// Every family's agreement cases.
        #[cfg(not(target_arch = "wasm32"))]
        pub fn cases() -> Vec<check::Case> {
            let mut cases = Vec::new();
            $(cases.extend(<$ty as Family>::cases().into_iter().map(|mut case| {
                case.family = <$ty as Family>::NAME;
                case
            }));)*
            cases
        }
    };
}

// In order: a family may use the families listed before it (the dense layer fuses ReLU;
// BatchNorm's backward is fused with the dense layer it feeds), which tests/layering.rs
// checks.
families! {
    relu: Relu,
    dense: Dense,
    batchnorm: BatchNorm,
    softmax_xent: SoftmaxXent,
    adam: Adam,
}
