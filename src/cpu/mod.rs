//! The CPU reference: one plain function per kernel family (each the twin of a WGSL
//! kernel in `shaders/`) and [`CpuBackend`], the `--cpu-fallback` trainer built on them.

pub mod adam;
pub mod backend;
pub mod batchnorm;
pub mod forward;
pub mod gemm;
#[cfg(test)]
mod gradcheck;
pub mod profile;
pub mod relu;
pub mod softmax_xent;
pub mod sparse;

pub use backend::CpuBackend;
pub use forward::infer;

/// Gather samples `indices` of a u8 image set into `x` (`[indices.len(), pixels]`), scaled.
pub fn gather_scaled(images: &[u8], pixels: usize, indices: &[u32], scale: f32, x: &mut [f32]) {
    for (row, &index) in x.chunks_exact_mut(pixels).zip(indices) {
        let start = index as usize * pixels;
        for (dst, &src) in row.iter_mut().zip(&images[start..start + pixels]) {
            *dst = src as f32 * scale;
        }
    }
}
