//! `--augment` on the GPU: each epoch's augmented training images made from the
//! resident originals by `augment.wgsl`, into a second resident buffer that the training
//! steps read instead.

use super::GpuBackend;
use crate::device::error::DeviceError;
use crate::device::kernel::{storage_init, storage_zeroed, submit_all};
use crate::layers::augment::cpu::AugmentKey;
use crate::layers::augment::{warp_table_words, AugmentBindings};

/// The buffers `--augment` adds, made at its first epoch.
pub(super) struct AugmentBuffers {
    /// The epoch's augmented training images, packed as `train_pixels` is.
    pub(super) images: wgpu::Buffer,
    /// The warp table (`augment::warp_table_words`).
    warps: wgpu::Buffer,
}

impl GpuBackend {
    /// The training images the steps read: the epoch's augmented ones under
    /// `--augment`, else the originals.
    pub(super) fn train_images(&self) -> &wgpu::Buffer {
        self.augmented
            .as_ref()
            .map_or(&self.train_pixels, |a| &a.images)
    }

    /// [`crate::backend::Backend::augment`]: the kernel queued over the whole set
    /// before the epoch's steps (the queue keeps the order; nothing waits for it).
    pub(super) fn augment_images(&mut self, key: AugmentKey) -> Result<(), DeviceError> {
        if self.augmented.is_none() {
            let ctx = &self.ctx;
            let buffers = ctx.scoped("allocating the augmented training images", || {
                let bytes = self.train_pixels.size();
                let words = warp_table_words();
                AugmentBuffers {
                    images: storage_zeroed(&ctx.device, "augmented train pixels", bytes),
                    warps: storage_init(ctx, "augment warps", bytemuck::cast_slice(&words)),
                }
            })?;
            self.augmented = Some(buffers);
            // Its bind groups read the original images.
            self.train_plan = None;
        }
        let buffers = self.augmented.as_ref().expect("made above");
        let bindings = AugmentBindings {
            warps: &buffers.warps,
            images: &self.train_pixels,
            out: &buffers.images,
        };
        let dispatch = self
            .pipelines
            .augment
            .augment(self.train_count, key, &bindings);
        submit_all(&self.ctx, "augmenting the training images", &[dispatch])
    }
}
