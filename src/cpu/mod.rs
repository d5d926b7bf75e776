//! The CPU reference: one plain function per kernel family (each the twin of a WGSL
//! kernel in `shaders/`) and [`CpuBackend`], the `--cpu-fallback` trainer built on them.

pub mod adam;
pub mod backend;
pub mod batchnorm;
pub mod gemm;
pub mod profile;
pub mod relu;
pub mod softmax_xent;
pub mod sparse;

pub use backend::CpuBackend;

/// Gather samples `indices` of a u8 image set into `x` (`[indices.len(), pixels]`), scaled.
pub fn gather_scaled(images: &[u8], pixels: usize, indices: &[u32], scale: f32, x: &mut [f32]) {
    for (row, &index) in x.chunks_exact_mut(pixels).zip(indices) {
        let start = index as usize * pixels;
        for (dst, &src) in row.iter_mut().zip(&images[start..start + pixels]) {
            *dst = src as f32 * scale;
        }
    }
}

/// Class probabilities (softmax) for each image in `images` (`count × 784` u8 pixels),
/// in inference mode (BatchNorm with the moving statistics).
pub fn infer(
    params: &crate::model::Params,
    bn_eps: f32,
    images: &[u8],
) -> Vec<[f32; crate::model::CLASSES]> {
    use crate::model::{CLASSES, INPUT};
    let count = images.len() / INPUT;
    let widths = params.config.widths();
    let mut x = vec![0.0f32; count * INPUT];
    let indices: Vec<u32> = (0..count as u32).collect();
    gather_scaled(images, INPUT, &indices, params.config.pixel_scale(), &mut x);
    let mut act = vec![0.0f32; count * INPUT];
    batchnorm::batchnorm_forward_eval(
        &x,
        params.gamma(),
        params.beta(),
        &params.moving_mean,
        &params.moving_var,
        bn_eps,
        &mut act,
    );
    let layers = params.config.dense_layers();
    for l in 0..layers {
        let mut out = vec![0.0f32; count * widths[l + 1]];
        gemm::gemm_forward(
            &act,
            params.kernel(l),
            params.bias(l),
            count,
            widths[l],
            widths[l + 1],
            l + 1 < layers,
            &mut out,
        );
        act = out;
    }
    act.chunks_exact(CLASSES)
        .map(|logits| {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = logits.iter().map(|&v| (v - max).exp()).sum();
            std::array::from_fn(|i| (logits[i] - max).exp() / sum)
        })
        .collect()
}
