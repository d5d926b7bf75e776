//! BatchNormalization on the pixels, fused with the batch gather (`batchnorm.wgsl`:
//! `forward_train` or, on hardware GPUs, `forward_train_wide`, and `forward_eval`; `gather` alone for a model without BatchNorm), and
//! its backward fused with the dense layer it feeds (`dense_backward`); the CPU
//! reference is [`cpu`].

#[cfg(not(target_arch = "wasm32"))]
mod check;
pub mod cpu;

use super::dense::DenseShape;
use crate::device::kernel::{bindings, uniform, Dispatch, Work};

/// Threads per workgroup of the per-feature BatchNorm kernels.
pub const BN_WORKGROUP: u32 = 64;

uniform! {
    /// Uniform block of `batchnorm.wgsl`.
    pub struct BnUniform as "Bn" {
        pub batch: u32, pub stride: u32, pub use_order: u32, pub base: u32, pub features: u32,
        pub gamma_off: u32, pub beta_off: u32, pub scale: f32, pub eps: f32, pub momentum: f32,
        // dense_backward only: where layer 0's kernel [features, width] and bias sit.
        pub kernel_off: u32, pub bias_off: u32, pub width: u32,
    }
}

bindings! {
    /// The forward passes: gather `pixels` (through `order` and the step counter `state`
    /// in training; the counter is a contract with softmax_xent and adam, see
    /// `GpuBackend::state`), normalise into `xhat` and `y`, update `stats`.
    BatchnormForwardBindings(BnUniform) for ["forward_train", "forward_train_wide", "forward_eval", "gather"] => {
        pixels: Read<u32> = 1, order: Read<u32> = 2, state: Read<u32> = 3,
        params: Read<f32> = 4,
        stats: ReadWrite<f32> = 5, xhat: ReadWrite<f32> = 6, y: ReadWrite<f32> = 7,
    }

    /// BatchNorm + first-dense backward: dγ, dβ and dW₀ from the first layer's xhatᵀ·δ,
    /// in `grads`.
    BatchnormDenseBackwardBindings(BnUniform) for ["dense_backward", "dense_backward_per_feature"] => {
        params: Read<f32> = 4,
        grads: ReadWrite<f32> = 10,
    }

    /// BatchNorm's own backward (unfused): dγ and dβ from the output gradient `dy` and
    /// the step's `xhat_in`, into `grads`.
    BatchnormBackwardBindings(BnUniform) for ["backward"] => {
        dy: Read<f32> = 11, xhat_in: Read<f32> = 12,
        grads: ReadWrite<f32> = 10,
    }
}

/// Which forward a dispatch runs: a training step's on `rows` rows of the epoch's order
/// (`stride` a step), or inference on the `rows` samples from `base` (the bindings'
/// `order` and `state` are then not read).
#[derive(Clone, Copy, Debug)]
pub enum BnForward {
    Train { rows: usize, stride: usize },
    Eval { rows: usize, base: usize },
}

/// What every BatchNorm forward of one model shares: its feature count, where γ and β
/// sit in the parameter buffer, the pixel scale and the layer's ε and momentum.
#[derive(Clone, Copy, Debug)]
pub struct BnSetup {
    pub features: usize,
    pub gamma_off: usize,
    pub beta_off: usize,
    pub scale: f32,
    pub eps: f32,
    pub momentum: f32,
    /// The training forward with a thread per feature (`forward_train`: CPU adapters,
    /// where barriers cost what they save elsewhere), or a workgroup per 4 features
    /// (`forward_train_wide`: hardware GPUs).
    pub per_feature: bool,
}

impl BnUniform {
    /// A training step's forward on `rows` rows: the samples through the epoch's order at
    /// step s (`order[s·stride + row]`), batch statistics, the moving averages updated.
    pub fn training(rows: usize, stride: usize, setup: &BnSetup) -> Self {
        BnUniform {
            stride: stride as u32,
            use_order: 1,
            ..BnUniform::evaluation(rows, 0, setup)
        }
    }

    /// Inference on the `rows` samples from `base`, in order, with the moving statistics.
    pub fn evaluation(rows: usize, base: usize, setup: &BnSetup) -> Self {
        BnUniform {
            batch: rows as u32,
            base: base as u32,
            gamma_off: setup.gamma_off as u32,
            beta_off: setup.beta_off as u32,
            features: setup.features as u32,
            scale: setup.scale,
            eps: setup.eps,
            momentum: setup.momentum,
            ..Default::default()
        }
    }

    /// The backward through BatchNorm and the dense layer `dense` it feeds.
    pub fn dense_backward(setup: &BnSetup, dense: &DenseShape) -> Self {
        BnUniform {
            kernel_off: dense.kernel_off as u32,
            bias_off: dense.bias_off as u32,
            width: dense.units as u32,
            ..BnUniform::evaluation(0, 0, setup)
        }
    }

    pub fn workgroups(&self) -> [u32; 3] {
        [self.features.div_ceil(BN_WORKGROUP), 1, 1]
    }

    /// Values in a batch: rows × features.
    fn elements(&self) -> f64 {
        self.batch as f64 * self.features as f64
    }
}

family! {
    /// The BatchNorm layer family.
    BatchNorm: "batchnorm" in "batchnorm.wgsl", uniform BnUniform => {
        forward_train: BatchnormForwardBindings = "forward_train",
        /// The same, a workgroup for each 4 features (hardware GPUs).
        forward_train_wide: BatchnormForwardBindings = "forward_train_wide",
        forward_eval: BatchnormForwardBindings = "forward_eval",
        /// The gather alone (scaled pixels into `y`), for a model without BatchNorm.
        gather: BatchnormForwardBindings = "gather",
        /// BatchNorm + first-dense backward, a workgroup per feature (hardware GPUs) …
        dense_backward: BatchnormDenseBackwardBindings = "dense_backward",
        /// … or a thread per feature (CPU adapters, where barriers cost what they save
        /// elsewhere).
        dense_backward_per_feature: BatchnormDenseBackwardBindings = "dense_backward_per_feature",
        /// The unfused backward, without the dense layer.
        backward: BatchnormBackwardBindings = "backward",
    }
}

impl Pipelines {
    /// BatchNorm's own backward on a step of `rows` rows: dγ and dβ into `grads` at the
    /// layer's offsets.
    pub fn backward(
        &self,
        rows: usize,
        setup: &BnSetup,
        bindings: &BatchnormBackwardBindings,
    ) -> Dispatch {
        let u = BnUniform::evaluation(rows, 0, setup);
        let elements = u.elements();
        // dγ = Σ dy·xhat and dβ = Σ dy over dy and xhat.
        let work = Work::new(3.0 * elements, 2.0 * elements);
        self.backward
            .dispatch(&u, bindings, u.workgroups())
            .with_work(work)
    }

    /// The forward `pass` (its kernel and uniform block); a training pass takes the kernel
    /// `setup.per_feature` names.
    pub fn forward(
        &self,
        pass: BnForward,
        setup: &BnSetup,
        bindings: &BatchnormForwardBindings,
    ) -> Dispatch {
        let dispatch = match pass {
            BnForward::Train { rows, stride } if !setup.per_feature => {
                assert_eq!(setup.features % 4, 0, "pixels come 4 to a word");
                let u = BnUniform::training(rows, stride, setup);
                let groups = [u.features / 4, 1, 1];
                self.forward_train_wide.dispatch(&u, bindings, groups)
            }
            BnForward::Train { rows, stride } => {
                let u = BnUniform::training(rows, stride, setup);
                self.forward_train.dispatch(&u, bindings, u.workgroups())
            }
            BnForward::Eval { rows, base } => {
                let u = BnUniform::evaluation(rows, base, setup);
                self.forward_eval.dispatch(&u, bindings, u.workgroups())
            }
        };
        dispatch.with_work(forward_work(pass, setup))
    }

    /// The gather of `pass`'s rows alone: their scaled pixels into the bindings' `y`, for
    /// a model whose first layer is not BatchNorm (`setup`'s γ, β, ε and momentum unused).
    pub fn gather(
        &self,
        pass: BnForward,
        setup: &BnSetup,
        bindings: &BatchnormForwardBindings,
    ) -> Dispatch {
        let u = match pass {
            BnForward::Train { rows, stride } => BnUniform::training(rows, stride, setup),
            BnForward::Eval { rows, base } => BnUniform::evaluation(rows, base, setup),
        };
        // Each pixel read (a byte), scaled and written.
        let values = u.elements();
        let work = Work {
            flops: values,
            bytes: 5.0 * values,
        };
        self.gather
            .dispatch(&u, bindings, u.workgroups())
            .with_work(work)
    }

    /// The backward through BatchNorm and `dense`: on entry `grads` holds
    /// `G = xhatᵀ·δ` at the dense kernel's offset. A thread per feature when
    /// `per_feature` (the trainer's choice on CPU adapters), else a workgroup per
    /// feature; the agreement cases run both.
    pub fn dense_backward(
        &self,
        setup: &BnSetup,
        dense: &DenseShape,
        bindings: &BatchnormDenseBackwardBindings,
        per_feature: bool,
    ) -> Dispatch {
        let u = BnUniform::dense_backward(setup, dense);
        let dispatch = if per_feature {
            let kernel = &self.dense_backward_per_feature;
            kernel.dispatch(&u, bindings, u.workgroups())
        } else {
            let groups = [u.features, 1, 1];
            self.dense_backward.dispatch(&u, bindings, groups)
        };
        // Per kernel entry: dγ += G·W and dβ += db·W (two each), dW = γ·G + β·db
        // (three), reading G and W and writing dW.
        let entries = (setup.features * dense.units) as f64;
        dispatch.with_work(Work::new(7.0 * entries, 3.0 * entries))
    }
}

/// A forward pass's least work: each pixel read once (a byte), and per value the
/// statistics' sum and sum of squares (training: three operations), normalising and
/// scaling (four); written: `xhat` and `y` in training, `y` in inference.
fn forward_work(pass: BnForward, setup: &BnSetup) -> Work {
    let (rows, train) = match pass {
        BnForward::Train { rows, .. } => (rows, true),
        BnForward::Eval { rows, .. } => (rows, false),
    };
    let values = (rows * setup.features) as f64;
    let (flops, outputs) = if train { (7.0, 2.0) } else { (4.0, 1.0) };
    Work {
        flops: flops * values,
        bytes: values + 4.0 * outputs * values,
    }
}
