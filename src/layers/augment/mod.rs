//! Data augmentation (`train --augment`): each training image moved by its own small
//! random affine change and stroke change, again every epoch, computed from a hash of
//! (seed, epoch, image) in integer arithmetic (`augment.wgsl`); the CPU reference is
//! [`cpu`]. Not a layer of the model: the trainers run it over the training set at the
//! start of each epoch, and evaluation never sees it.

#[cfg(not(target_arch = "wasm32"))]
mod check;
pub mod cpu;

use crate::device::kernel::{bindings, elementwise_groups, uniform, Dispatch};
use cpu::AugmentKey;

uniform! {
    /// Uniform block of `augment.wgsl`.
    pub struct AugmentUniform as "Augment" {
        pub count: u32, pub seed: u32, pub epoch: u32,
    }
}

bindings! {
    /// `out` = the `count` images of `images` (u8 pixels packed 4 to a u32), each
    /// augmented with its own warp; `warps` is [`cpu::warp_table`] flattened.
    AugmentBindings(AugmentUniform) for ["augment"] => {
        warps: Read<i32> = 1, images: Read<u32> = 2, out: ReadWrite<u32> = 3,
    }
}

family! {
    /// The data augmentation family.
    Augment: "augment" in "augment.wgsl", uniform AugmentUniform => {
        augment: AugmentBindings = "augment",
    }
}

impl Pipelines {
    /// The `count` images of `bindings.images` augmented under `key` into `bindings.out`.
    pub fn augment(&self, count: usize, key: AugmentKey, bindings: &AugmentBindings) -> Dispatch {
        let u = AugmentUniform {
            count: count as u32,
            seed: key.seed,
            epoch: key.epoch,
            ..Default::default()
        };
        // A grid-stride loop over the output words, one thread each.
        let words = count * cpu::PIXELS / 4;
        self.augment
            .dispatch(&u, bindings, elementwise_groups(words))
    }
}

/// [`cpu::warp_table`] as the kernel's `warps` buffer reads it.
pub fn warp_table_words() -> Vec<i32> {
    cpu::warp_table().into_iter().flatten().collect()
}
