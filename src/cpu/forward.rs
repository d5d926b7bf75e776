//! The forward pass, written once: training (after its BatchNorm), evaluation and
//! `predict` all run these.

use super::sparse::{
    fold_batchnorm_into_dense, sparse_forward, FirstLayer, FoldedLayer, SparseImages,
};
use super::stack::{bn_params, moving_stats, LayerStack, Pass};
use crate::aligned::Rows;
use crate::layers::batchnorm::cpu::{batchnorm_forward_eval, gather_scaled};
use crate::layers::dense::cpu::gemm_forward;
use crate::layers::plan::Fusions;
use crate::layers::relu::cpu::relu_forward;
use crate::model::{Hyper, Params, CLASSES, INPUT};
use rayon::prelude::*;

/// The dense layers from `acts[first]` to the logits in the last of `acts`
/// (`acts[l + 1] = acts[l] · W_l + b_l`, ReLU on every layer but the last: in the GEMM
/// when `relu_in_gemm`, else after it), for `batch` rows. `acts[l]` holds
/// `batch × widths[l]` values.
pub fn dense_forward(
    params: &Params,
    acts: &mut [Rows],
    (batch, first): (usize, usize),
    relu_in_gemm: bool,
) {
    let widths = params.config.widths();
    let layers = params.config.dense_layers();
    for l in first..layers {
        let (input, output) = acts.split_at_mut(l + 1);
        let relu = l + 1 < layers;
        gemm_forward(
            &input[l],
            params.kernel(l),
            params.bias(l),
            batch,
            widths[l],
            widths[l + 1],
            relu && relu_in_gemm,
            &mut output[0],
        );
        if relu && !relu_in_gemm {
            relu_forward(&mut output[0]);
        }
    }
}

/// The images an inference pass reads: the pixels (u8, 784 each) and, where the first
/// layer runs sparse, the same images in sparse rows.
#[derive(Clone, Copy)]
pub struct EvalImages<'a> {
    pub pixels: &'a [u8],
    pub sparse: Option<&'a SparseImages>,
}

/// Inference mode on the images `indices` of `images`, the logits into the last of
/// `acts`, which are sized for the batch. With sparse rows, BatchNorm (with the moving
/// statistics) is folded into the first dense layer, which then reads the nonzero pixels
/// only, as in training ([`sparse_first_layer_eval`]); else the pixels are gathered and
/// scaled into `x`, and BatchNorm writes `acts[0]`. The dense layers follow.
pub fn forward_eval(
    params: &Params,
    bn_eps: f32,
    images: EvalImages,
    indices: &[u32],
    x: &mut [f32],
    acts: &mut [Rows],
) {
    if let Some(sparse) = images.sparse {
        sparse_first_layer_eval(params, bn_eps, (sparse, indices), &mut acts[1]);
        return dense_forward(params, acts, (indices.len(), 1), true);
    }
    // Rows are independent here, so the gather and BatchNorm run in equal parts per
    // thread (the same bits on any count). They had run on one thread;
    // `benches/RESULTS.md` ("Aligned arrays") has the evaluation's time before and after.
    let (scale, moving) = (params.config.pixel_scale(), moving_stats(params));
    let rows_per_task = indices.len().div_ceil(rayon::current_num_threads()).max(1);
    x.par_chunks_mut(rows_per_task * INPUT)
        .zip(acts[0].par_chunks_mut(rows_per_task * INPUT))
        .zip(indices.par_chunks(rows_per_task))
        .for_each(|((x, y), indices)| {
            gather_scaled(images.pixels, INPUT, indices, scale, x);
            batchnorm_forward_eval(x, bn_params(params), moving, bn_eps, y);
        });
    dense_forward(params, acts, (indices.len(), 0), true);
}

/// The first dense layer's output `z` in inference mode, from sparse rows: BatchNorm
/// with the moving statistics, `1/sqrt(var + eps)` for its scale, folded into the layer
/// ([`fold_batchnorm_into_dense`]), then [`sparse_forward`]. It reads about a fifth of
/// the multiply-adds of the dense GEMM on MNIST, and agrees with the dense path to
/// rounding.
fn sparse_first_layer_eval(
    params: &Params,
    bn_eps: f32,
    (images, indices): (&SparseImages, &[u32]),
    z: &mut [f32],
) {
    let moving = moving_stats(params);
    let inv_std: Vec<f32> = moving
        .var
        .iter()
        .map(|v| 1.0 / (v + bn_eps).sqrt())
        .collect();
    let layer = FirstLayer {
        mean: moving.mean,
        inv_std: &inv_std,
        params: bn_params(params),
    };
    let (mut coef, mut row) = (vec![0.0; INPUT], vec![0.0; params.bias(0).len()]);
    fold_batchnorm_into_dense(
        layer,
        (params.kernel(0), params.bias(0)),
        &mut coef,
        &mut row,
    );
    let folded = FoldedLayer {
        coef: &coef,
        w: params.kernel(0),
        row: &row,
        relu: params.config.dense_layers() > 1,
    };
    sparse_forward(images, (indices, params.config.pixel_scale()), folded, z);
}

/// Class probabilities (softmax) for each image in `images` (`count × 784` u8 pixels),
/// in inference mode. The first layer runs sparse when the whole call's images are
/// sparse enough (as evaluation decides by the test set's density), so the last bits of
/// an image's probabilities may depend on the other images it is given with.
pub fn infer(params: &Params, bn_eps: f32, images: &[u8]) -> Vec<[f32; CLASSES]> {
    let count = images.len() / INPUT;
    let indices: Vec<u32> = (0..count as u32).collect();
    let logits = if params.config.is_mlp() {
        super::awake::with_workers_awake(|| infer_mlp(params, bn_eps, images, &indices))
    } else {
        infer_layered(params, bn_eps, images, &indices)
    };
    logits
        .chunks_exact(CLASSES)
        .map(|logits| {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = logits.iter().map(|&v| (v - max).exp()).sum();
            std::array::from_fn(|i| (logits[i] - max).exp() / sum)
        })
        .collect()
}

/// The MLP's logits of the images `indices` ([`forward_eval`] on them all at once).
fn infer_mlp(params: &Params, bn_eps: f32, images: &[u8], indices: &[u32]) -> Vec<f32> {
    // The sparse rows, as training and evaluation use them (see `CpuBackend::new`).
    let sparse = Fusions::plan(&params.config, Fusions::ALL)
        .sparse_first_layer
        .then(|| SparseImages::if_sparse(images, INPUT))
        .flatten();
    // The sparse path reads neither the gathered pixels nor BatchNorm's output.
    let rows = |width: usize| Rows::zeros(indices.len() * width);
    let dense_input = if sparse.is_some() { 0 } else { INPUT };
    let mut x = rows(dense_input);
    let mut acts: Vec<Rows> = params.config.widths().iter().map(|&w| rows(w)).collect();
    acts[0] = rows(dense_input);
    let images = EvalImages {
        pixels: images,
        sparse: sparse.as_ref(),
    };
    forward_eval(params, bn_eps, images, indices, &mut x, &mut acts);
    acts.pop().expect("at least one layer").to_vec()
}

/// The logits of the images `indices` through the layer stack, in inference mode, in
/// chunks of [`INFER_CHUNK`] images (a whole test set at once would hold gigabytes of
/// activations).
fn infer_layered(params: &Params, bn_eps: f32, images: &[u8], indices: &[u32]) -> Vec<f32> {
    let hyper = Hyper {
        bn_eps,
        ..Hyper::default()
    };
    let mut stack = LayerStack::new(&params.config);
    // Inference changes nothing in the parameters; the stack's forward takes them
    // mutably for training's moving statistics, so it gets a copy.
    let mut params = params.clone();
    let mut logits = Vec::with_capacity(indices.len() * CLASSES);
    for chunk in indices.chunks(INFER_CHUNK) {
        let pass = Pass {
            batch: chunk.len(),
            training: false,
            step: 0,
        };
        stack.forward(&mut params, &hyper, (images, chunk), pass);
        logits.extend_from_slice(stack.logits());
    }
    logits
}

/// Images per forward pass of [`infer`] through the layer stack.
const INFER_CHUNK: usize = 1000;
