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
//! Adding a family is a new folder, its `pub mod` line and its line in [`families!`]; the
//! shader test (`tests/shaders.rs`), the agreement test and the bench rows find it from
//! there.

#[cfg(not(target_arch = "wasm32"))]
pub mod check;
#[cfg(test)]
mod gradcheck;
pub mod plan;

use crate::device::context::GpuContext;
use crate::device::error::DeviceError;
use crate::device::kernel::{module, wgsl_declarations, BindingsDecl, UniformDecl};

/// What the registry needs of each family.
pub trait Family {
    /// The family's name: its shader is `NAME.wgsl`, and its kernels are named
    /// `NAME/ENTRY` in errors and profiles.
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
    /// The shader file's text, without the declarations.
    pub wgsl: &'static str,
    pub bindings: &'static [BindingsDecl],
    pub uniform: UniformDecl,
}

impl Shader {
    /// What is compiled: the declarations generated from the Rust side, then the file.
    pub fn source(&self) -> Result<String, String> {
        let declarations = wgsl_declarations(&self.uniform, self.bindings)
            .map_err(|e| format!("{}.wgsl: {e}", self.family))?;
        Ok(declarations + "\n" + self.wgsl)
    }

    /// Compile this shader on `ctx`.
    fn module(&self, ctx: &GpuContext) -> Result<wgpu::ShaderModule, DeviceError> {
        let source = self.source().map_err(DeviceError::Gpu)?;
        module(ctx, self.family, &source)
    }
}

/// Declares a family: its type, its shader file and name, its uniform, and its kernels
/// (a [`Kernel`](crate::device::kernel::Kernel) field of its `Pipelines` for each, with the bindings type and the WGSL
/// entry point), then implements [`Family`] for it. The kernels are named
/// `shader/entry` in errors and profiles; the agreement cases are the family's
/// `check::cases()`.
macro_rules! family {
    (
        $(#[$meta:meta])*
        $ty:ident: $name:literal in $file:literal, uniform $uniform:ty => {
            $($(#[$kmeta:meta])* $field:ident: $bindings:ident = $entry:literal,)+
        }
    ) => {
        $(#[$meta])*
        pub struct $ty;

        /// This family's compiled kernels.
        pub struct Pipelines {
            $($(#[$kmeta])* pub $field: $crate::device::kernel::Kernel,)+
        }

        impl $crate::layers::Family for $ty {
            const NAME: &'static str = $name;
            const WGSL: &'static str = include_str!($file);
            const BINDINGS: &'static [$crate::device::kernel::BindingsDecl] = BINDINGS;
            const UNIFORM: $crate::device::kernel::UniformDecl =
                <$uniform as $crate::device::kernel::Uniform>::DECL;
            type Pipelines = Pipelines;

            fn pipelines(
                ctx: &$crate::device::context::GpuContext,
                module: &wgpu::ShaderModule,
            ) -> Result<Pipelines, $crate::device::error::DeviceError> {
                Ok(Pipelines {
                    $($field: $crate::device::kernel::Kernel::new::<$bindings>(
                        ctx,
                        module,
                        concat!($name, "/", $entry),
                        $entry,
                    )?,)+
                })
            }

            #[cfg(not(target_arch = "wasm32"))]
            fn cases() -> Vec<$crate::layers::check::Case> {
                check::cases()
            }
        }
    };
}

/// Family `F`'s shader.
const fn shader<F: Family>() -> Shader {
    Shader {
        family: F::NAME,
        wgsl: F::WGSL,
        bindings: F::BINDINGS,
        uniform: F::UNIFORM,
    }
}

/// The registry: `folder: Type` for each family. It declares the [`Pipelines`] of every
/// family, [`SHADERS`] and [`cases`].
macro_rules! families {
    ($($family:ident: $ty:ident,)*) => {
        $(pub use $family::$ty;)*

        /// Every family's pipelines, compiled on one device.
        pub struct Pipelines {
            $(pub $family: <$ty as Family>::Pipelines,)*
        }

        impl Pipelines {
            pub fn new(ctx: &GpuContext) -> Result<Pipelines, DeviceError> {
                Ok(Pipelines {
                    $($family: {
                        let module = shader::<$ty>().module(ctx)?;
                        <$ty as Family>::pipelines(ctx, &module)?
                    },)*
                })
            }
        }

        /// Every family's shader with its declarations.
        pub const SHADERS: &[Shader] = &[$(shader::<$ty>()),*];

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

// The families, each a folder: its module (declared here, outside the macro, so that
// rustfmt finds its files) and its line in the registry below. The registry's order is
// the layers' order: a family may use the families listed before it (the dense layer
// fuses ReLU; Conv2D's reference uses the dense layer's GEMM, and runs a first layer
// with the max-pool above it; the augmentation hashes with Dropout's PCG; BatchNorm's
// backward is fused with the dense layer it feeds), which tests/layering.rs checks.
pub mod adam;
pub mod augment;
pub mod batchnorm;
pub mod conv2d;
pub mod dense;
pub mod dropout;
pub mod maxpool2d;
pub mod relu;
pub mod softmax_xent;

families! {
    relu: Relu,
    dense: Dense,
    maxpool2d: MaxPool2d,
    conv2d: Conv2d,
    dropout: Dropout,
    augment: Augment,
    batchnorm: BatchNorm,
    softmax_xent: SoftmaxXent,
    adam: Adam,
}
