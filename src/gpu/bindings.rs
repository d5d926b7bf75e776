//! The buffers of each kernel's dispatch, by the names its shader gives them.
//!
//! Each struct below is one entry point's bind group: a field per `var` of the shader,
//! named as in the WGSL, with its binding number and access declared once, here. The
//! bind-group layout is built from that declaration, and a dispatch is built from a
//! filled-in struct, so no call site lists buffers by position. `tests/shaders.rs`
//! checks every declaration against the shader (name, binding, access, and that the
//! entry point uses no other binding) through naga.

/// How a shader reads a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Uniform,
    Read,
    ReadWrite,
}

/// One binding of an entry point: the WGSL variable's name, its binding number, access.
pub type Slot = (&'static str, u32, Access);

/// The buffers of one dispatch of an entry point.
pub trait Bindings {
    /// The shader file (`shaders/NAME.wgsl`) and entry point these bindings are for.
    const SHADER: &'static str;
    const ENTRY_POINTS: &'static [&'static str];
    /// Every binding, in the order of [`Bindings::buffers`].
    const SLOTS: &'static [Slot];
    fn buffers(&self) -> Vec<&wgpu::Buffer>;
}

/// Declares every bindings type, one block each, and [`ALL`], the list of their
/// declarations, so a new kernel's bindings are written in one place.
macro_rules! bindings {
    ($(
        $(#[$meta:meta])*
        $name:ident for $shader:literal $entries:expr => {
            $($field:ident: $access:ident = $binding:literal),* $(,)?
        }
    )*) => {
        $(
            $(#[$meta])*
            pub struct $name<'a> {
                $(pub $field: &'a wgpu::Buffer,)*
            }

            impl Bindings for $name<'_> {
                const SHADER: &'static str = $shader;
                const ENTRY_POINTS: &'static [&'static str] = $entries;
                const SLOTS: &'static [Slot] =
                    &[$((stringify!($field), $binding, Access::$access)),*];
                fn buffers(&self) -> Vec<&wgpu::Buffer> {
                    vec![$(self.$field),*]
                }
            }
        )*

        /// Every bindings declaration, for the shader test: (shader, entry points, slots).
        pub const ALL: &[(&str, &[&str], &[Slot])] =
            &[$(($name::SHADER, $name::ENTRY_POINTS, $name::SLOTS)),*];
    };
}

bindings! {
    /// `gemm.wgsl`: `c = a · b` with the epilogue (bias, ReLU, mask) read from `e`.
    GemmBindings for "gemm" &["gemm"] => {
        u: Uniform = 0,
        a: Read = 1,
        b: Read = 2,
        e: Read = 3,
        c: ReadWrite = 4,
    }

    /// `batchnorm.wgsl`'s forward passes: gather `pixels` (through `order` and the step
    /// counter `state` in training), normalise into `xhat` and `y`, update `stats`.
    BatchnormForwardBindings for "batchnorm" &["forward_train", "forward_eval"] => {
        u: Uniform = 0,
        pixels: Read = 1,
        order: Read = 2,
        state: Read = 3,
        params: Read = 4,
        stats: ReadWrite = 5,
        xhat: ReadWrite = 6,
        y: ReadWrite = 7,
    }

    /// `batchnorm.wgsl`'s BatchNorm + first-dense backward: dγ, dβ and dW₀ from the
    /// first layer's xhatᵀ·δ, in `grads`.
    BatchnormDenseBackwardBindings for "batchnorm" &["dense_backward", "dense_backward_per_feature"] => {
        u: Uniform = 0,
        params: Read = 4,
        grads: ReadWrite = 10,
    }

    /// `softmax_xent.wgsl`: loss, correct count, gradient and predictions; advances the
    /// step counter `state` in training.
    SoftmaxXentBindings for "softmax_xent" &["softmax_xent"] => {
        u: Uniform = 0,
        logits: Read = 1,
        labels: Read = 2,
        order: Read = 3,
        state: ReadWrite = 4,
        grad: ReadWrite = 5,
        stats: ReadWrite = 6,
        predictions: ReadWrite = 7,
    }

    /// `adam.wgsl`: one Adam update of `params`, `m`, `v` from `grads`, with the step
    /// size `alphas[state[0] − 1]`.
    AdamBindings for "adam" &["adam"] => {
        u: Uniform = 0,
        state: Read = 1,
        alphas: Read = 2,
        grads: Read = 3,
        params: ReadWrite = 4,
        m: ReadWrite = 5,
        v: ReadWrite = 6,
    }

    /// `relu.wgsl`'s forward: `x = max(x, 0)` in place.
    ReluForwardBindings for "relu" &["forward"] => {
        u: Uniform = 0,
        x: ReadWrite = 1,
    }

    /// `relu.wgsl`'s backward: `dx = dy` where `y > 0`, else 0.
    ReluBackwardBindings for "relu" &["backward"] => {
        u: Uniform = 0,
        dy: Read = 2,
        y: Read = 3,
        dx: ReadWrite = 4,
    }
}
