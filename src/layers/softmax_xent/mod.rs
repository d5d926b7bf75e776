//! The loss: softmax + sparse categorical cross-entropy over a whole batch in one
//! workgroup (`softmax_xent.wgsl`), with the loss sum, correct count, gradient and
//! predictions; the CPU reference is [`cpu`].

#[cfg(not(target_arch = "wasm32"))]
mod check;
pub mod cpu;

use crate::device::kernel::{bindings, uniform, Dispatch, Work};

uniform! {
    /// Uniform block of `softmax_xent.wgsl`.
    pub struct SoftmaxUniform as "Sx" {
        pub batch: u32, pub classes: u32, pub stride: u32, pub use_order: u32,
        pub base: u32, pub training: u32, pub slot: u32, pub pred_base: u32,
    }
}

bindings! {
    /// Loss, correct count, gradient and predictions; advances the step counter `state`
    /// in training (a contract with batchnorm and adam, see `GpuBackend::state`).
    SoftmaxXentBindings(SoftmaxUniform) for ["softmax_xent"] => {
        logits: Read<f32> = 1, labels: Read<u32> = 2, order: Read<u32> = 3,
        state: ReadWrite<u32> = 4, grad: ReadWrite<f32> = 5,
        stats: ReadWrite<u32> = 6, predictions: ReadWrite<u32> = 7,
    }
}

impl SoftmaxUniform {
    /// A training step on `rows` rows of `classes` logits: the samples through the epoch's
    /// order at step s (`order[s·stride + row]`, s the step counter), the loss, correct
    /// count and gradient into step s's slots, then the counter advanced.
    pub fn training(rows: usize, classes: usize, stride: usize) -> Self {
        SoftmaxUniform {
            batch: rows as u32,
            classes: classes as u32,
            stride: stride as u32,
            use_order: 1,
            training: 1,
            ..Default::default()
        }
    }

    /// Evaluation of the `rows` test samples from `base`, in order: loss and correct count
    /// into chunk `slot`'s stats, the predictions from position `base`.
    pub fn evaluation(rows: usize, classes: usize, base: usize, slot: usize) -> Self {
        SoftmaxUniform {
            batch: rows as u32,
            classes: classes as u32,
            base: base as u32,
            slot: slot as u32,
            pred_base: base as u32,
            ..Default::default()
        }
    }
}

family! {
    /// The loss family.
    SoftmaxXent: "softmax_xent" in "softmax_xent.wgsl", uniform SoftmaxUniform => {
        softmax_xent: SoftmaxXentBindings = "softmax_xent",
    }
}

impl Pipelines {
    /// One dispatch (one workgroup) with the uniform `u`, training or evaluation.
    pub fn dispatch(&self, u: &SoftmaxUniform, bindings: &SoftmaxXentBindings) -> Dispatch {
        // Per logit: the max, the exponential, its sum, and the probability less the
        // label (five); the logits and labels read, the gradient written in training.
        let logits = u.batch as f64 * u.classes as f64;
        let floats = logits * (1.0 + u.training as f64) + u.batch as f64;
        let work = Work::new(5.0 * logits, floats);
        self.softmax_xent
            .dispatch(u, bindings, [1, 1, 1])
            .with_work(work)
    }
}
