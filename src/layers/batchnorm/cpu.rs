//! BatchNormalization over features (Keras semantics). Activations are `[batch, features]`
//! row-major. GPU twin: `batchnorm.wgsl` beside it.
//!
//! Every per-feature sum runs over the batch rows in order 0..batch, which is also the
//! order the GPU kernel uses, so the two agree to rounding.

use crate::model::Hyper;

/// Gather samples `indices` of a u8 image set into `x` (`[indices.len(), pixels]`),
/// scaled: the input of a BatchNorm on pixels (the GPU kernel fuses it in).
pub fn gather_scaled(images: &[u8], pixels: usize, indices: &[u32], scale: f32, x: &mut [f32]) {
    for (row, &index) in x.chunks_exact_mut(pixels).zip(indices) {
        let start = index as usize * pixels;
        for (dst, &src) in row.iter_mut().zip(&images[start..start + pixels]) {
            *dst = src as f32 * scale;
        }
    }
}

/// A BatchNorm layer's two per-feature vectors: its parameters γ (scale) and β (shift)
/// as `Affine<&[f32]>`, or their gradients dγ and dβ as `Affine<&mut [f32]>`.
#[derive(Clone, Copy, Debug)]
pub struct Affine<T> {
    pub gamma: T,
    pub beta: T,
}

/// Per-feature mean and biased variance: a batch's, or the moving averages
/// (`Moments<&mut [f32]>` while a training step updates them).
#[derive(Clone, Copy, Debug)]
pub struct Moments<T> {
    pub mean: T,
    pub var: T,
}

/// What a training-mode forward writes: the normalised input `xhat` and `inv_std`
/// (1/sqrt(var + eps), per feature), both kept for backward, and the output `y`.
pub struct TrainOutputs<'a> {
    pub xhat: &'a mut [f32],
    pub y: &'a mut [f32],
    pub inv_std: &'a mut [f32],
}

/// Training mode on `x` (`[batch, features]`): normalise with the batch mean and the
/// biased batch variance into `out.xhat`, write `out.y = gamma·xhat + beta` and
/// `out.inv_std`, and update the moving statistics (see [`batchnorm_batch_update`]).
pub fn batchnorm_forward_train(
    x: &[f32],
    params: Affine<&[f32]>,
    hyper: &Hyper,
    moving: Moments<&mut [f32]>,
    out: TrainOutputs,
) {
    let features = params.gamma.len();
    assert!(
        out.xhat.len() == x.len() && out.y.len() == x.len() && x.len().is_multiple_of(features)
    );
    let inv_batch = 1.0 / (x.len() / features) as f32;
    let mut mean = vec![0.0f32; features];
    for row in x.chunks_exact(features) {
        for (acc, &v) in mean.iter_mut().zip(row) {
            *acc += v;
        }
    }
    mean.iter_mut().for_each(|m| *m *= inv_batch);
    let mut var = vec![0.0f32; features];
    for row in x.chunks_exact(features) {
        for ((acc, &v), &m) in var.iter_mut().zip(row).zip(&mean) {
            let d = v - m;
            *acc += d * d;
        }
    }
    var.iter_mut().for_each(|v| *v *= inv_batch);
    let batch = Moments {
        mean: &mean[..],
        var: &var[..],
    };
    batchnorm_batch_update(batch, hyper, moving, &mut *out.inv_std);
    let (gamma, beta, inv_std) = (params.gamma, params.beta, &*out.inv_std);
    for ((x_row, xhat_row), y_row) in x
        .chunks_exact(features)
        .zip(out.xhat.chunks_exact_mut(features))
        .zip(out.y.chunks_exact_mut(features))
    {
        for j in 0..features {
            let n = (x_row[j] - mean[j]) * inv_std[j];
            xhat_row[j] = n;
            y_row[j] = gamma[j] * n + beta[j];
        }
    }
}

/// From a batch's mean and biased variance: `inv_std = 1/sqrt(var + eps)` and the
/// moving-statistics update `moving = moving·momentum + batch·(1 − momentum)`.
pub fn batchnorm_batch_update(
    batch: Moments<&[f32]>,
    hyper: &Hyper,
    moving: Moments<&mut [f32]>,
    inv_std: &mut [f32],
) {
    let features = batch.mean.len();
    assert!(batch.var.len() == features && inv_std.len() == features);
    assert!(moving.mean.len() == features && moving.var.len() == features);
    let (eps, momentum) = (hyper.bn_eps, hyper.bn_momentum);
    for (j, inv) in inv_std.iter_mut().enumerate() {
        *inv = 1.0 / (batch.var[j] + eps).sqrt();
        moving.mean[j] = moving.mean[j] * momentum + batch.mean[j] * (1.0 - momentum);
        moving.var[j] = moving.var[j] * momentum + batch.var[j] * (1.0 - momentum);
    }
}

/// Inference mode: normalise `x` with the moving statistics into `y`.
pub fn batchnorm_forward_eval(
    x: &[f32],
    params: Affine<&[f32]>,
    moving: Moments<&[f32]>,
    eps: f32,
    y: &mut [f32],
) {
    let features = params.gamma.len();
    let scale: Vec<f32> = (0..features)
        .map(|j| params.gamma[j] / (moving.var[j] + eps).sqrt())
        .collect();
    for (x_row, y_row) in x.chunks_exact(features).zip(y.chunks_exact_mut(features)) {
        for j in 0..features {
            y_row[j] = (x_row[j] - moving.mean[j]) * scale[j] + params.beta[j];
        }
    }
}

/// Backward from the output gradient `dy`, with the forward's `xhat` and `inv_std`:
/// `dgamma = Σ dy·xhat`, `dbeta = Σ dy` over the batch into `grads`, and, when `dx` is
/// given, the input gradient `dx = gamma·inv_std/B · (B·dy − dbeta − xhat·dgamma)`.
/// (In this model BatchNorm is the first layer, so training never needs `dx`; training
/// uses [`batchnorm_dense_backward`], and this explicit form is what that is tested against.)
pub fn batchnorm_backward(
    (dy, xhat): (&[f32], &[f32]),
    gamma: &[f32],
    inv_std: &[f32],
    grads: Affine<&mut [f32]>,
    dx: Option<&mut [f32]>,
) {
    let features = gamma.len();
    assert!(xhat.len() == dy.len() && dy.len().is_multiple_of(features));
    let (dgamma, dbeta) = (grads.gamma, grads.beta);
    dgamma.fill(0.0);
    dbeta.fill(0.0);
    for (dy_row, xhat_row) in dy.chunks_exact(features).zip(xhat.chunks_exact(features)) {
        for j in 0..features {
            dgamma[j] += dy_row[j] * xhat_row[j];
            dbeta[j] += dy_row[j];
        }
    }
    if let Some(dx) = dx {
        let b = (dy.len() / features) as f32;
        for ((dx_row, dy_row), xhat_row) in dx
            .chunks_exact_mut(features)
            .zip(dy.chunks_exact(features))
            .zip(xhat.chunks_exact(features))
        {
            for j in 0..features {
                dx_row[j] = gamma[j] * inv_std[j] / b
                    * (b * dy_row[j] - dbeta[j] - xhat_row[j] * dgamma[j]);
            }
        }
    }
}

/// Backward through BatchNorm and the dense layer it feeds, without that layer's input
/// gradient. With `y = gamma·xhat + beta` and `z = y·W + bias`, the input gradient
/// `dy = dz·Wᵀ` (a third of a step's GEMM work) is only needed for BatchNorm's
/// parameters, and those follow from `G = xhatᵀ·dz`, the weight-gradient GEMM run on
/// `xhat` instead of `y`:
///
/// - `dW[j,k] = gamma[j]·G[j,k] + beta[j]·dbias[k]`  (since `yᵀ·dz = diag(gamma)·G + beta ⊗ dbias`)
/// - `dgamma[j] = Σ_b dy[b,j]·xhat[b,j] = Σ_k W[j,k]·G[j,k]`
/// - `dbeta[j]  = Σ_b dy[b,j]           = Σ_k W[j,k]·dbias[k]`
///
/// `grad_w` (`[features, n]`) holds `G` on entry and `dW` on return. Row j needs only row j
/// of `W` and `G`; the GPU twin (`dense_backward` in `batchnorm.wgsl`) gives each
/// feature one workgroup.
pub fn batchnorm_dense_backward(
    grad_w: &mut [f32],
    w: &[f32],
    params: Affine<&[f32]>,
    dbias: &[f32],
    grads: Affine<&mut [f32]>,
) {
    let (n, features) = (dbias.len(), params.gamma.len());
    assert!(grad_w.len() == features * n && w.len() == grad_w.len());
    assert!(grads.gamma.len() == features && grads.beta.len() == features);
    // Rows are independent: split them over the pool when there is enough work.
    if features > 1 && features * n >= PARALLEL_MIN_ELEMENTS {
        let half = features / 2;
        let (gw0, gw1) = grad_w.split_at_mut(half * n);
        let (w0, w1) = w.split_at(half * n);
        let (p0, p1) = params.split(|v| v.split_at(half));
        let (g0, g1) = grads.split(|v| v.split_at_mut(half));
        rayon::join(
            || batchnorm_dense_backward(gw0, w0, p0, dbias, g0),
            || batchnorm_dense_backward(gw1, w1, p1, dbias, g1),
        );
        return;
    }
    dense_backward_rows(grad_w, (w, params, dbias), grads);
}

impl<T> Affine<T> {
    /// Features `..mid` and `mid..`, by `split_at`: a slice's `split_at` or `split_at_mut`
    /// at `mid`.
    fn split(self, split_at: impl Fn(T) -> (T, T)) -> (Self, Self) {
        let (gamma0, gamma1) = split_at(self.gamma);
        let (beta0, beta1) = split_at(self.beta);
        let first = Affine {
            gamma: gamma0,
            beta: beta0,
        };
        (
            first,
            Affine {
                gamma: gamma1,
                beta: beta1,
            },
        )
    }
}

/// Elements below which [`batchnorm_dense_backward`] stays on one thread.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 14;
/// Independent partial sums per row: SIMD-width accumulators instead of one serial
/// chain of dependent additions (which ran at a fifth of the speed). The lanes are
/// combined in a fixed order, so the result does not depend on threads or machine.
const LANES: usize = 8;

/// The single-threaded body of [`batchnorm_dense_backward`]. Also compiled for AVX2 and
/// AVX and picked at run time (`multiversion`): the portable x86-64 build has only 4-wide
/// SSE. No version fuses multiply-adds, so every version gives the same bits.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "x86_64+avx"
))]
fn dense_backward_rows(
    grad_w: &mut [f32],
    (w, params, dbias): (&[f32], Affine<&[f32]>, &[f32]),
    grads: Affine<&mut [f32]>,
) {
    let (n, gamma, beta) = (dbias.len(), params.gamma, params.beta);
    let (dgamma, dbeta) = (grads.gamma, grads.beta);
    for (j, (g_row, w_row)) in grad_w
        .chunks_exact_mut(n)
        .zip(w.chunks_exact(n))
        .enumerate()
    {
        (dgamma[j], dbeta[j]) = dense_backward_row(g_row, w_row, gamma[j], beta[j], dbias);
    }
}

/// Row j of [`batchnorm_dense_backward`]: rewrites `g_row` (G_j → dW_j) and returns
/// `(dgamma_j, dbeta_j)`. Inlined into callers compiled for AVX2.
#[inline(always)]
pub(crate) fn dense_backward_row(
    g_row: &mut [f32],
    w_row: &[f32],
    gamma: f32,
    beta: f32,
    dbias: &[f32],
) -> (f32, f32) {
    let dgamma = dot_lanes(w_row, g_row);
    let dbeta = dot_lanes(w_row, dbias);
    for (g, &d) in g_row.iter_mut().zip(dbias) {
        *g = gamma * *g + beta * d;
    }
    (dgamma, dbeta)
}

/// `Σ a·b` in [`LANES`] interleaved partial sums, combined in a fixed order: lane i
/// starts from the product of the tail's element i (past the last whole chunk of
/// [`LANES`]) or 0, then adds its element of each chunk in turn. The lanes pass through
/// `black_box` before [`sum_lanes`]: without it the compiler vectorised the loop around
/// that final pairing of lanes, building them from masked 4-wide loads, blends and
/// extracts (a third of the first-layer backward's time at batch 32 in a profile on an
/// Intel Xeon); with it each chunk is one 8-wide load, multiply and add, the same sums.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let (a_chunks, a_tail) = a.as_chunks::<LANES>();
    let (b_chunks, b_tail) = b.as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for (i, (x, y)) in a_tail.iter().zip(b_tail).enumerate() {
        acc[i] = x * y;
    }
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    sum_lanes(std::hint::black_box(acc))
}

/// Pairwise sum of the lanes, always in the same order.
#[inline(always)]
fn sum_lanes(v: [f32; LANES]) -> f32 {
    ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::gradcheck::assert_matches_central_differences;

    fn affine<'a>(gamma: &'a [f32], beta: &'a [f32]) -> Affine<&'a [f32]> {
        Affine { gamma, beta }
    }

    fn moments<'a>(mean: &'a mut [f32], var: &'a mut [f32]) -> Moments<&'a mut [f32]> {
        Moments { mean, var }
    }

    fn outputs<'a>(
        xhat: &'a mut [f32],
        y: &'a mut [f32],
        inv_std: &'a mut [f32],
    ) -> TrainOutputs<'a> {
        TrainOutputs { xhat, y, inv_std }
    }

    #[test]
    fn forward_train_by_hand() {
        // Two features over a batch of two: column 0 = [1, 3] (mean 2, var 1), column 1 = [5, 5].
        let x = [1.0, 5.0, 3.0, 5.0];
        let (gamma, beta) = ([2.0, 1.0], [0.5, -1.0]);
        let (mut mm, mut mv) = ([0.0, 0.0], [1.0, 1.0]);
        let (mut xhat, mut y, mut inv) = ([0.0; 4], [0.0; 4], [0.0; 2]);
        let (params, moving) = (affine(&gamma, &beta), moments(&mut mm, &mut mv));
        let out = outputs(&mut xhat, &mut y, &mut inv);
        batchnorm_forward_train(&x, params, &Hyper::default(), moving, out);
        let s = 1.0 / (1.0f32 + 1e-3).sqrt();
        assert_eq!(inv[0], s);
        assert_eq!(xhat, [-s, 0.0, s, 0.0]);
        assert_eq!(y, [0.5 - 2.0 * s, -1.0, 0.5 + 2.0 * s, -1.0]);
        assert!((mm[0] - 0.02).abs() < 1e-7 && (mm[1] - 0.05).abs() < 1e-7);
        assert!((mv[0] - 1.0).abs() < 1e-7 && (mv[1] - 0.99).abs() < 1e-7);
    }

    #[test]
    fn forward_eval_uses_moving_statistics() {
        let mut y = [0.0; 2];
        let params = affine(&[2.0, 1.0], &[1.0, 0.0]);
        let moving = Moments {
            mean: &[1.0, 0.0][..],
            var: &[4.0 - 1e-3, 1.0 - 1e-3][..],
        };
        batchnorm_forward_eval(&[3.0, 0.0], params, moving, 1e-3, &mut y);
        assert!((y[0] - 3.0).abs() < 1e-6 && y[1].abs() < 1e-6);
    }

    /// Σ c·y of BatchNorm (training mode) in f64: the loss whose gradients the test
    /// checks.
    fn bn_loss(x: &[f64], gamma: &[f64], beta: &[f64], c: &[f64], eps: f64) -> f64 {
        let features = gamma.len();
        let batch = x.len() / features;
        let mut total = 0.0;
        for j in 0..features {
            let col: Vec<f64> = (0..batch).map(|b| x[b * features + j]).collect();
            let mean = col.iter().sum::<f64>() / batch as f64;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / batch as f64;
            for b in 0..batch {
                let y = gamma[j] * (col[b] - mean) / (var + eps).sqrt() + beta[j];
                total += c[b * features + j] * y;
            }
        }
        total
    }

    /// (dgamma, dbeta, dx) of Σ c·y through the f32 kernels.
    fn bn_grads(x: &[f64], gamma: &[f64], beta: &[f64], c: &[f64], eps: f64) -> [Vec<f32>; 3] {
        let to32 = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let features = gamma.len();
        let (mut mm, mut mv) = (vec![0.0; features], vec![1.0; features]);
        let (mut xhat, mut y, mut inv) =
            (vec![0.0; x.len()], vec![0.0; x.len()], vec![0.0; features]);
        let (gamma32, beta32) = (to32(gamma), to32(beta));
        let hyper = Hyper {
            bn_eps: eps as f32,
            ..Hyper::default()
        };
        let (params, moving) = (affine(&gamma32, &beta32), moments(&mut mm, &mut mv));
        let out = outputs(&mut xhat, &mut y, &mut inv);
        batchnorm_forward_train(&to32(x), params, &hyper, moving, out);
        let (mut dgamma, mut dbeta, mut dx) =
            (vec![0.0; features], vec![0.0; features], vec![0.0; x.len()]);
        let grads = Affine {
            gamma: &mut dgamma[..],
            beta: &mut dbeta[..],
        };
        let dy = to32(c);
        batchnorm_backward((&dy, &xhat), &gamma32, &inv, grads, Some(&mut dx[..]));
        [dgamma, dbeta, dx]
    }

    /// Loss L = Σ c·y over a small batch; compares dx, dgamma, dbeta with central
    /// differences computed in f64 through an f64 copy of the forward pass.
    #[test]
    fn backward_matches_finite_differences() {
        let (batch, features, eps) = (5usize, 3usize, 1e-3f64);
        let x: Vec<f64> = (0..batch * features)
            .map(|i| ((i * 37 % 11) as f64) / 3.0 - 1.5)
            .collect();
        let gamma = [1.5f64, -0.7, 0.9];
        let beta = [0.1f64, 0.2, -0.3];
        let c: Vec<f64> = (0..batch * features)
            .map(|i| ((i * 13 % 7) as f64) / 4.0 - 0.8)
            .collect();
        let [dgamma, dbeta, dx] = bn_grads(&x, &gamma, &beta, &c, eps);
        assert_matches_central_differences("dx", &dx, 1e-4, |i, d| {
            let mut xp = x.clone();
            xp[i] += d;
            bn_loss(&xp, &gamma, &beta, &c, eps)
        });
        assert_matches_central_differences("dgamma", &dgamma, 1e-4, |j, d| {
            let mut g = gamma;
            g[j] += d;
            bn_loss(&x, &g, &beta, &c, eps)
        });
        assert_matches_central_differences("dbeta", &dbeta, 1e-4, |j, d| {
            let mut b = beta;
            b[j] += d;
            bn_loss(&x, &gamma, &b, &c, eps)
        });
    }

    /// The folded gradients equal the explicit chain: dW = yᵀ·dz, dy = dz·Wᵀ, then
    /// BatchNorm backward on dy.
    #[test]
    fn dense_backward_equals_explicit_chain() {
        use crate::layers::dense::cpu::{bias_grad, gemm_input_grad, gemm_weight_grad};
        let (batch, features, n) = (7usize, 5usize, 3usize);
        let val = |i: usize, a: usize, b: usize| ((i * a % b) as f32) / b as f32 - 0.45;
        let x: Vec<f32> = (0..batch * features).map(|i| val(i, 37, 11)).collect();
        let gamma: Vec<f32> = (0..features).map(|i| 0.5 + val(i, 3, 7)).collect();
        let beta: Vec<f32> = (0..features).map(|i| val(i, 5, 9)).collect();
        let w: Vec<f32> = (0..features * n).map(|i| val(i, 13, 17)).collect();
        let dz: Vec<f32> = (0..batch * n).map(|i| val(i, 29, 13)).collect();
        let (mut mm, mut mv) = (vec![0.0; features], vec![1.0; features]);
        let (mut xhat, mut y, mut inv) =
            (vec![0.0; x.len()], vec![0.0; x.len()], vec![0.0; features]);
        let (params, moving) = (affine(&gamma, &beta), moments(&mut mm, &mut mv));
        let out = outputs(&mut xhat, &mut y, &mut inv);
        batchnorm_forward_train(&x, params, &Hyper::default(), moving, out);
        let mut dbias = vec![0.0; n];
        bias_grad(&dz, batch, n, &mut dbias);

        let mut dw_chain = vec![0.0; features * n];
        gemm_weight_grad(&y, &dz, batch, features, n, &mut dw_chain);
        let mut dy = vec![0.0; batch * features];
        gemm_input_grad(&dz, &w, batch, features, n, None, &mut dy);
        let (mut dg_chain, mut db_chain) = (vec![0.0; features], vec![0.0; features]);
        let chain_grads = Affine {
            gamma: &mut dg_chain[..],
            beta: &mut db_chain[..],
        };
        batchnorm_backward((&dy, &xhat), &gamma, &inv, chain_grads, None);

        let mut dw = vec![0.0; features * n];
        gemm_weight_grad(&xhat, &dz, batch, features, n, &mut dw);
        let (mut dg, mut db) = (vec![0.0; features], vec![0.0; features]);
        let grads = Affine {
            gamma: &mut dg[..],
            beta: &mut db[..],
        };
        batchnorm_dense_backward(&mut dw, &w, params, &dbias, grads);

        let close = |a: &[f32], b: &[f32], what: &str| {
            for (i, (p, q)) in a.iter().zip(b).enumerate() {
                assert!((p - q).abs() < 1e-5, "{what}[{i}]: {p} vs {q}");
            }
        };
        close(&dw, &dw_chain, "dW");
        close(&dg, &dg_chain, "dgamma");
        close(&db, &db_chain, "dbeta");
    }
}
