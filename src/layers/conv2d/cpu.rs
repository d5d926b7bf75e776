//! Conv2D, the CPU reference: stride 1, `valid` padding, PyTorch's layouts (activations
//! `[batch, channels, height, width]`, kernel `[out, in, k, k]`, bias `[out]`). The
//! convolution is a matrix product through im2col, the way cuDNN and PyTorch's CPU path
//! lower it: a group of samples' patches become the columns of a
//! `[in·k·k, group·out_h·out_w]` matrix `cols` (see [`im2col`]), and
//!
//! - forward: `y = W · cols + bias` (`W` viewed as `[out, in·k·k]`);
//! - weight gradient: `dW = dy · colsᵀ`, `db = Σ_pixels dy`;
//! - input gradient: `dx = col2im(Wᵀ · dy)`,
//!
//! with `dy` viewed as `[out, group·out_h·out_w]` ([`channels_first`]). A whole group in
//! one product, rather than a product per sample, keeps the GEMM large enough to split
//! over the cores and to amortise its packing: the convnet's second layer takes 15
//! samples at a time, 64×288·288×1815 products, instead of a product 121 columns wide
//! per sample. Groups hold at most [`GROUP_VALUES`] values of `cols`, so a group's
//! patches stay in the cache from im2col to the product, and evaluating a large batch
//! does not need a huge buffer. The products run through [`matmul`] (the dense layer's GEMM),
//! whose sums do not depend on the thread count, and the groups are fixed by the shape,
//! so neither are the results. GPU twin: `conv2d.wgsl` beside it, which forms the same
//! products without the im2col buffer.
//!
//! Two kinds of layer take other routes to the same values: one with small filters (the
//! first layer on the pixels: 9 values a filter) computes its forward and weight
//! gradient from the definition ([`DIRECT_MAX_PATCH`]), and one whose output gradient is
//! mostly zeros (under a max-pool) takes both gradients from the nonzero values only
//! (`sparse.rs`). Each is tested against the GEMMs. A first layer with small filters
//! under a max-pool also runs with the pool ([`conv2d_forward_pooled`],
//! [`conv2d_weight_grad_pooled`]), bit for bit the two layers' results, tested against
//! them.

use super::{sparse, ConvShape};
use crate::layers::dense::cpu::{matmul, Mat};
use crate::layers::maxpool2d::cpu::{
    for_each_gradient, maxpool2d_backward, maxpool2d_forward, maxpool2d_plane,
};
use crate::layers::maxpool2d::PoolShape;
use crate::layers::relu::cpu::relu_backward_in_place;
use rayon::prelude::*;

/// Most values in one group's `cols` (2 MiB): small enough to stay in the cache between
/// im2col and the product. The convnet's second forward took 2.1 ms a step (b128, 2
/// cores) with this against 2.9 ms with the batch in one 32 MiB group
/// (`cargo bench --bench kernels -- step`); 1 and 4 MiB groups were between.
const GROUP_VALUES: usize = 1 << 19;

/// Samples per group for `s`.
fn group_size(s: &ConvShape) -> usize {
    (GROUP_VALUES / (s.patch() * s.out_pixels()).max(1)).clamp(1, s.batch.max(1))
}

/// The patches of the samples `x` (`[group, in, height, width]`) as the columns of
/// `cols` (`[in·k·k, group·out_h·out_w]`): row `(c, ky, kx)`, column `(b, oy, ox)` holds
/// `x[b, c, oy + ky, ox + kx]`.
pub fn im2col(x: &[f32], s: &ConvShape, cols: &mut [f32]) {
    let (k, (oh, ow)) = (s.kernel, s.out_size());
    let group = x.len() / s.in_len();
    assert_eq!(cols.len(), s.patch() * group * oh * ow);
    cols.par_chunks_exact_mut(group * oh * ow)
        .enumerate()
        .for_each(|(row, out)| {
            let (c, ky, kx) = (row / (k * k), row / k % k, row % k);
            for (x_b, out_b) in x
                .chunks_exact(s.in_len())
                .zip(out.chunks_exact_mut(oh * ow))
            {
                for oy in 0..oh {
                    let start = (c * s.height + oy + ky) * s.width + kx;
                    out_b[oy * ow..(oy + 1) * ow].copy_from_slice(&x_b[start..start + ow]);
                }
            }
        });
}

/// The adjoint of [`im2col`]: adds each entry of `cols` back onto the input pixel it
/// was read from, into `dx` (`[group, in, height, width]`, zeroed first).
pub fn col2im(cols: &[f32], s: &ConvShape, dx: &mut [f32]) {
    let (k, (oh, ow)) = (s.kernel, s.out_size());
    let group = dx.len() / s.in_len();
    let columns = group * oh * ow;
    assert_eq!(cols.len(), s.patch() * columns);
    dx.par_chunks_exact_mut(s.in_len())
        .enumerate()
        .for_each(|(b, dx_b)| {
            dx_b.fill(0.0);
            for (row, col) in cols.chunks_exact(columns).enumerate() {
                let (c, ky, kx) = (row / (k * k), row / k % k, row % k);
                let col_b = &col[b * oh * ow..(b + 1) * oh * ow];
                for oy in 0..oh {
                    let start = (c * s.height + oy + ky) * s.width + kx;
                    let dst = &mut dx_b[start..start + ow];
                    for (d, &v) in dst.iter_mut().zip(&col_b[oy * ow..(oy + 1) * ow]) {
                        *d += v;
                    }
                }
            }
        });
}

/// `[group, channels, pixels]` as `[channels, group·pixels]`, into `out`.
pub fn channels_first(x: &[f32], channels: usize, pixels: usize, out: &mut [f32]) {
    let group = x.len() / (channels * pixels);
    assert_eq!(out.len(), x.len());
    out.par_chunks_exact_mut(group * pixels)
        .enumerate()
        .for_each(|(c, row)| {
            for (b, dst) in row.chunks_exact_mut(pixels).enumerate() {
                let start = (b * channels + c) * pixels;
                dst.copy_from_slice(&x[start..start + pixels]);
            }
        });
}

/// Reusable buffers: `cols` and a channels-first copy of an output or its gradient.
#[derive(Default)]
struct Scratch {
    cols: Vec<f32>,
    channels: Vec<f32>,
}

thread_local! {
    /// Each thread's [`Scratch`], taken for a call and put back after it, so a step
    /// does not allocate (and fault in) tens of megabytes per layer.
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers sized for `s`'s groups.
fn with_scratch<R>(s: &ConvShape, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    let mut scratch = SCRATCH.take();
    let columns = group_size(s) * s.out_pixels();
    scratch.cols.resize(s.patch() * columns, 0.0);
    scratch.channels.resize(s.out_channels * columns, 0.0);
    let result = f(&mut scratch.cols, &mut scratch.channels);
    SCRATCH.set(scratch);
    result
}

/// Runs `f(first, n, cols, other)` for each group of `s`'s batch (its first sample and
/// its `n` samples) with this thread's scratch buffers cut to the group: `cols`
/// (`[in·k·k, n·pixels]`) holding the group's patches of `x` when `x` is given, and
/// `other` room for `[out, n·pixels]` values.
fn for_each_group(
    s: &ConvShape,
    x: Option<&[f32]>,
    mut f: impl FnMut(usize, usize, &mut [f32], &mut [f32]),
) {
    let (pixels, outputs) = (s.out_pixels(), s.out_channels * s.out_pixels());
    with_scratch(s, |cols, other| {
        for (first, n) in groups(s) {
            let cols = &mut cols[..s.patch() * n * pixels];
            if let Some(x) = x {
                im2col(&x[first * s.in_len()..(first + n) * s.in_len()], s, cols);
            }
            f(first, n, cols, &mut other[..n * outputs]);
        }
    });
}

/// The samples of `s`'s batch in groups: `(first sample, samples)`.
fn groups(s: &ConvShape) -> impl Iterator<Item = (usize, usize)> {
    let (batch, group) = (s.batch, group_size(s));
    (0..batch)
        .step_by(group)
        .map(move |b| (b, group.min(batch - b)))
}

/// Forward: `y = conv(x, w) + bias`, then ReLU when `relu`. `x` is `[batch, in, h, w]`,
/// `y` is `[batch, out, out_h, out_w]`.
pub fn conv2d_forward(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    s: &ConvShape,
    relu: bool,
    y: &mut [f32],
) {
    let outputs = s.out_channels * s.out_pixels();
    assert!(x.len() == s.batch * s.in_len() && y.len() == s.batch * outputs);
    assert!(w.len() == s.out_channels * s.patch() && bias.len() == s.out_channels);
    if s.patch() <= DIRECT_MAX_PATCH {
        forward_direct(x, w, bias, s, relu, y);
    } else {
        forward_gemm(x, w, bias, s, relu, y);
    }
}

/// `out = product + bias`, then ReLU when `relu`: a forward's last step.
#[inline(always)]
fn add_bias(out: &mut f32, product: f32, bias: f32, relu: bool) {
    let y = product + bias;
    *out = if relu { y.max(0.0) } else { y };
}

/// [`add_bias`] over a row.
#[inline(always)]
fn add_bias_row(out: &mut [f32], product: &[f32], bias: f32, relu: bool) {
    for (v, &p) in out.iter_mut().zip(product) {
        add_bias(v, p, bias, relu);
    }
}

/// [`conv2d_forward`] as `W · cols`, group by group.
fn forward_gemm(x: &[f32], w: &[f32], bias: &[f32], s: &ConvShape, relu: bool, y: &mut [f32]) {
    let (pixels, outputs) = (s.out_pixels(), s.out_channels * s.out_pixels());
    let kernel = Mat::rows(w, s.out_channels, s.patch());
    for_each_group(s, Some(x), |first, n, cols, products| {
        let pixels_n = n * pixels;
        matmul(kernel, Mat::rows(cols, s.patch(), pixels_n), 0.0, products);
        let y = &mut y[first * outputs..(first + n) * outputs];
        y.par_chunks_exact_mut(outputs)
            .enumerate()
            .for_each(|(b, y_b)| {
                for (o, (row, &bias)) in y_b.chunks_exact_mut(pixels).zip(bias).enumerate() {
                    let product = &products[(o * n + b) * pixels..(o * n + b + 1) * pixels];
                    add_bias_row(row, product, bias, relu);
                }
            });
    });
}

/// Filters of at most this many values (`in·k·k`; the first layer on the pixels has 9)
/// are computed from the convolution's definition ([`forward_direct`],
/// [`weight_grad_direct`]) rather than through im2col and a GEMM: with so short an inner
/// (forward) or outer (weight gradient) dimension, packing the GEMM's operands costs
/// more than its arithmetic.
const DIRECT_MAX_PATCH: usize = 32;

/// Partial sums [`dot`] and [`sum`] keep: four 8-wide chains, so the additions of one
/// chain wait on each other but the four overlap (one chain was latency-bound: the
/// first layer's weight gradient took 1.5 ms a step, most of it waiting on adds).
const LANES: usize = 32;

/// `Σ a[i]·b[i]` in [`LANES`] interleaved partial sums (which the compiler keeps in SIMD
/// registers), added in a fixed order.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (a_n, b_n) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_n
        .remainder()
        .iter()
        .zip(b_n.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (a, b) in a_n.zip(b_n) {
        for l in 0..LANES {
            lanes[l] += a[l] * b[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `Σ a[i]` in [`LANES`] interleaved partial sums, added in a fixed order.
#[inline(always)]
fn sum(a: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let a_n = a.chunks_exact(LANES);
    let tail: f32 = a_n.remainder().iter().sum();
    for a in a_n {
        for l in 0..LANES {
            lanes[l] += a[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Weight and bias gradients from the output gradient `dy` (`[batch, out, out_h,
/// out_w]`): `dw` (`[out, in, k, k]`) and `db` (`[out]`).
pub fn conv2d_weight_grad(x: &[f32], dy: &[f32], s: &ConvShape, dw: &mut [f32], db: &mut [f32]) {
    let outputs = s.out_channels * s.out_pixels();
    assert!(x.len() == s.batch * s.in_len() && dy.len() == s.batch * outputs);
    assert!(dw.len() == s.out_channels * s.patch() && db.len() == s.out_channels);
    if s.patch() <= DIRECT_MAX_PATCH {
        weight_grad_direct(x, dy, s, dw, db);
    } else if sparse::worth_it(dy, s) {
        sparse::weight_grad_sparse(x, dy, s, dw, db);
    } else {
        weight_grad_gemm(x, dy, s, dw, db);
    }
}

/// The output gradient of a layer under a max-pool, as that pool's backward holds it:
/// the pool's output gradient `dy`, its forward's output `y` and arg-maxes, its shape,
/// and whether it masks this layer's ReLU (see `maxpool2d::cpu::maxpool2d_backward`).
pub struct PooledGrad<'a> {
    pub dy: &'a [f32],
    pub y: &'a [f32],
    pub argmax: &'a [u32],
    pub shape: PoolShape,
    pub masked: bool,
}

/// Asserts that `pool` pools the output of the layer `s`, at the same batch.
fn assert_pool_above(s: &ConvShape, pool: &PoolShape) {
    let (oh, ow) = s.out_size();
    let same_shape = (pool.batch, pool.channels, pool.height, pool.width);
    assert_eq!(
        same_shape,
        (s.batch, s.out_channels, oh, ow),
        "the pool above"
    );
}

/// [`conv2d_weight_grad`] of a layer under a max-pool, with the pool's backward fused in:
/// for a first layer, which needs no input gradient. With small filters, each filter's
/// gradient plane of a sample is spread from the pool's few gradients into a buffer of
/// one plane, as [`weight_grad_direct`] spreads it from the dense gradient, so the
/// results are the same bits, without writing and reading back the batch's dense
/// gradient (11 MB a step for the convnet's first layer). Larger filters take the
/// pool's backward and [`conv2d_weight_grad`].
pub fn conv2d_weight_grad_pooled(
    x: &[f32],
    above: &PooledGrad,
    s: &ConvShape,
    dw: &mut [f32],
    db: &mut [f32],
) {
    let (oh, ow) = s.out_size();
    let pool = &above.shape;
    assert_pool_above(s, pool);
    assert!(x.len() == s.batch * s.in_len() && above.dy.len() == pool.out_len());
    let forward = (above.y, above.argmax);
    if s.patch() > DIRECT_MAX_PATCH {
        let mut dense = vec![0.0; pool.in_len()];
        maxpool2d_backward(above.dy, forward, pool, above.masked, &mut dense);
        return conv2d_weight_grad(x, &dense, s, dw, db);
    }
    // Where each output pixel sits at the input's row stride (see [`span`]).
    let spread_at: Vec<u32> = (0..oh * ow)
        .map(|at| (at / ow * s.width + at % ow) as u32)
        .collect();
    let windows = pool.out_size().0 * pool.out_size().1;
    let filters = dw.par_chunks_exact_mut(s.patch()).zip(db.par_iter_mut());
    filters.enumerate().for_each(|(o, (dw_o, db_o))| {
        dw_o.fill(0.0);
        *db_o = 0.0;
        let mut spread = vec![0.0f32; span(s)];
        for (b, x_b) in x.chunks_exact(s.in_len()).enumerate() {
            let first = (b * s.out_channels + o) * windows;
            let plane = first..first + windows;
            let forward = (&forward.0[plane.clone()], &forward.1[plane.clone()]);
            spread.fill(0.0);
            for_each_gradient(&above.dy[plane], forward, above.masked, |at, g| {
                spread[spread_at[at] as usize] = g;
            });
            *db_o += filter_grad(x_b, &spread, s, dw_o);
        }
    });
}

/// [`conv2d_weight_grad`] as `dy · colsᵀ`, summed group by group.
pub(super) fn weight_grad_gemm(
    x: &[f32],
    dy: &[f32],
    s: &ConvShape,
    dw: &mut [f32],
    db: &mut [f32],
) {
    let (pixels, outputs) = (s.out_pixels(), s.out_channels * s.out_pixels());
    dw.fill(0.0);
    db.fill(0.0);
    for_each_group(s, Some(x), |first, n, cols, grad| {
        let dy = &dy[first * outputs..(first + n) * outputs];
        channels_first(dy, s.out_channels, pixels, grad);
        let grad_t = Mat::rows(grad, s.out_channels, n * pixels);
        matmul(grad_t, Mat::rows(cols, s.patch(), n * pixels).t(), 1.0, dw);
        for (acc, row) in db.iter_mut().zip(grad.chunks_exact(n * pixels)) {
            *acc += row.iter().sum::<f32>();
        }
    });
}

/// The direct paths work on output planes laid out with the input's row stride: output
/// pixel `(oy, ox)` at `oy·width + ox`, the last `kernel − 1` values of each row unused.
/// Then every filter value `(c, ky, kx)` pairs the whole plane with one contiguous run of
/// the input, starting at `(c·height + ky)·width + kx`, `span` values long, and each
/// product is one long vectorised loop instead of a short one per row.
fn span(s: &ConvShape) -> usize {
    let (oh, ow) = s.out_size();
    (oh - 1) * s.width + ow
}

/// Where filter value `r` = `(c, ky, kx)`'s run starts in a sample's input.
fn run_start(s: &ConvShape, r: usize) -> usize {
    let k = s.kernel;
    let (c, ky, kx) = (r / (k * k), r / k % k, r % k);
    (c * s.height + ky) * s.width + kx
}

/// [`conv2d_weight_grad`] from its definition: `dW[o, r]` is the sum over samples of
/// `dy[b, o]` (spread to the input's row stride) dotted with filter value `r`'s run of
/// `x[b]`. Filters are split over the pool, each summing in a fixed order, so the thread
/// count does not matter.
fn weight_grad_direct(x: &[f32], dy: &[f32], s: &ConvShape, dw: &mut [f32], db: &mut [f32]) {
    let (_, ow) = s.out_size();
    let (pixels, outputs, span) = (s.out_pixels(), s.out_channels * s.out_pixels(), span(s));
    let filters = dw.par_chunks_exact_mut(s.patch()).zip(db.par_iter_mut());
    filters.enumerate().for_each(|(o, (dw_o, db_o))| {
        dw_o.fill(0.0);
        *db_o = 0.0;
        let mut spread = vec![0.0f32; span];
        for (x_b, dy_b) in x.chunks_exact(s.in_len()).zip(dy.chunks_exact(outputs)) {
            let dy_o = &dy_b[o * pixels..(o + 1) * pixels];
            for (row, dst) in dy_o.chunks_exact(ow).zip(spread.chunks_mut(s.width)) {
                dst[..ow].copy_from_slice(row);
            }
            *db_o += filter_grad(x_b, &spread, s, dw_o);
        }
    });
}

/// One sample's share of filter `o`'s gradient: `dw_o[r] += spread · x_b`'s run `r`;
/// returns the sum of `spread` (the bias's share).
/// Also compiled for AVX2 and AVX-512 and picked at run time (`multiversion`; the portable
/// build has only 4-wide SSE). No version fuses multiply-adds: the same bits on each.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "x86_64+avx"
))]
fn filter_grad(x_b: &[f32], spread: &[f32], s: &ConvShape, dw_o: &mut [f32]) -> f32 {
    for (r, d) in dw_o.iter_mut().enumerate() {
        let start = run_start(s, r);
        *d += dot(spread, &x_b[start..start + spread.len()]);
    }
    sum(spread)
}

/// [`conv2d_forward`] from its definition: output plane `o` is, for every filter value
/// `r`, `w[o, r]` times `r`'s run of the input, summed at the input's row stride, then
/// packed with the bias added. Samples are split over the pool.
fn forward_direct(x: &[f32], w: &[f32], bias: &[f32], s: &ConvShape, relu: bool, y: &mut [f32]) {
    let (_, ow) = s.out_size();
    let (pixels, outputs, span) = (s.out_pixels(), s.out_channels * s.out_pixels(), span(s));
    let samples = x
        .par_chunks_exact(s.in_len())
        .zip(y.par_chunks_exact_mut(outputs));
    samples.for_each_init(
        || vec![0.0f32; span],
        |spread, (x_b, y_b)| {
            let filters = y_b.chunks_exact_mut(pixels).zip(w.chunks_exact(s.patch()));
            for ((y_o, w_o), &bias) in filters.zip(bias) {
                spread.fill(0.0);
                plane_forward(x_b, w_o, s, spread);
                for (dst, row) in y_o.chunks_exact_mut(ow).zip(spread.chunks(s.width)) {
                    add_bias_row(dst, &row[..ow], bias, relu);
                }
            }
        },
    );
}

/// [`conv2d_forward`] and the forward of the max-pool above it (`pool`, its batch set)
/// in one pass: the pool's output `y` and arg-maxes, as `maxpool2d_forward` gives them
/// from the convolution's output, bit for bit. With small filters each output plane is
/// pooled where [`forward_direct`] computes it, so the convolution's output (11 MB a
/// step for the convnet's first layer) is never written; larger filters run the two
/// forwards.
pub fn conv2d_forward_pooled(
    (x, w, bias): (&[f32], &[f32], &[f32]),
    (s, relu): (&ConvShape, bool),
    pool: &PoolShape,
    (y, argmax): (&mut [f32], &mut [u32]),
) {
    assert_pool_above(s, pool);
    if s.patch() > DIRECT_MAX_PATCH {
        let mut out = vec![0.0; pool.in_len()];
        conv2d_forward(x, w, bias, s, relu, &mut out);
        return maxpool2d_forward(&out, pool, y, argmax);
    }
    assert!(x.len() == s.batch * s.in_len() && w.len() == s.out_channels * s.patch());
    let windows = pool.out_size().0 * pool.out_size().1;
    let outputs = y.par_chunks_exact_mut(s.out_channels * windows);
    let samples = x.par_chunks_exact(s.in_len()).zip(outputs);
    samples
        .zip(argmax.par_chunks_exact_mut(s.out_channels * windows))
        .for_each_init(
            || vec![0.0f32; span(s)],
            |spread, ((x_b, y_b), argmax_b)| {
                let filters = w.chunks_exact(s.patch()).zip(bias);
                let pooled = y_b.chunks_exact_mut(windows);
                let planes = pooled.zip(argmax_b.chunks_exact_mut(windows));
                for ((w_o, &bias), (y_o, argmax_o)) in filters.zip(planes) {
                    spread.fill(0.0);
                    plane_forward(x_b, w_o, s, spread);
                    spread.iter_mut().for_each(|v| add_bias(v, *v, bias, relu));
                    maxpool2d_plane(spread, s.width, pool, y_o, argmax_o);
                }
            },
        );
}

/// One output plane of [`forward_direct`] at the input's row stride: `spread +=
/// w_o[r] · x_b`'s run `r` for every filter value, added in filter order. A block of
/// [`PLANE_BLOCK`] outputs at a time takes every filter value's share before it is
/// stored, rather than a pass over the plane per filter value. Multiversioned as
/// [`filter_grad`].
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "x86_64+avx"
))]
fn plane_forward(x_b: &[f32], w_o: &[f32], s: &ConvShape, spread: &mut [f32]) {
    let starts: Vec<usize> = (0..w_o.len()).map(|r| run_start(s, r)).collect();
    let first = spread.len() / PLANE_BLOCK * PLANE_BLOCK;
    let mut blocks = spread.chunks_exact_mut(PLANE_BLOCK);
    for (j, out) in (0..).step_by(PLANE_BLOCK).zip(&mut blocks) {
        let mut acc = [0.0f32; PLANE_BLOCK];
        acc.copy_from_slice(out);
        for (&weight, &start) in w_o.iter().zip(&starts) {
            let run = &x_b[start + j..start + j + PLANE_BLOCK];
            for (a, &xv) in acc.iter_mut().zip(run) {
                *a += weight * xv;
            }
        }
        out.copy_from_slice(&acc);
    }
    let tail = blocks.into_remainder();
    for (&weight, &start) in w_o.iter().zip(&starts) {
        for (v, &xv) in tail.iter_mut().zip(&x_b[start + first..]) {
            *v += weight * xv;
        }
    }
}

/// Outputs [`plane_forward`] keeps in registers at a time: two AVX-512 vectors.
const PLANE_BLOCK: usize = 32;

/// Input gradient: `dx` (`[batch, in, h, w]`) from `dy` through the kernel `w`; when
/// `mask` (the ReLU output of the layer below, `dx`'s shape) is given, zeroed where
/// `mask <= 0` (that ReLU's backward, fused, as in the dense layer).
pub fn conv2d_input_grad(
    dy: &[f32],
    w: &[f32],
    s: &ConvShape,
    mask: Option<&[f32]>,
    dx: &mut [f32],
) {
    let outputs = s.out_channels * s.out_pixels();
    assert!(dy.len() == s.batch * outputs && dx.len() == s.batch * s.in_len());
    if sparse::worth_it(dy, s) {
        sparse::input_grad_sparse(dy, w, s, dx);
    } else {
        input_grad_gemm(dy, w, s, dx);
    }
    if let Some(mask) = mask {
        relu_backward_in_place(dx, mask);
    }
}

/// [`conv2d_input_grad`] (before the mask) as `col2im(Wᵀ · dy)`, group by group.
pub(super) fn input_grad_gemm(dy: &[f32], w: &[f32], s: &ConvShape, dx: &mut [f32]) {
    let (pixels, outputs) = (s.out_pixels(), s.out_channels * s.out_pixels());
    let kernel_t = Mat::rows(w, s.out_channels, s.patch()).t();
    for_each_group(s, None, |first, n, cols, grad| {
        let dy = &dy[first * outputs..(first + n) * outputs];
        channels_first(dy, s.out_channels, pixels, grad);
        let grad = Mat::rows(grad, s.out_channels, n * pixels);
        matmul(kernel_t, grad, 0.0, cols);
        col2im(
            cols,
            s,
            &mut dx[first * s.in_len()..(first + n) * s.in_len()],
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::gradcheck::assert_matches_central_differences;

    /// Two input channels of 4×5, three 3×3 filters, a batch of two.
    fn shape() -> ConvShape {
        ConvShape::alone(2, 2, (4, 5), 3, 3)
    }

    fn values(len: usize, a: usize, b: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * a % b) as f32) / b as f32 - 0.45)
            .collect()
    }

    fn wide(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&a| a as f64).collect()
    }

    /// The convolution written as its definition, in f64.
    fn direct(x: &[f64], w: &[f64], bias: &[f64], s: &ConvShape) -> Vec<f64> {
        let (oh, ow) = s.out_size();
        let mut y = Vec::new();
        for b in 0..s.batch {
            for (o, &b_o) in bias.iter().enumerate() {
                for (oy, ox) in (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox))) {
                    let mut acc = b_o;
                    for c in 0..s.in_channels {
                        for (ky, kx) in (0..3).flat_map(|ky| (0..3).map(move |kx| (ky, kx))) {
                            let xi =
                                ((b * s.in_channels + c) * s.height + oy + ky) * s.width + ox + kx;
                            let wi = ((o * s.in_channels + c) * 3 + ky) * 3 + kx;
                            acc += x[xi] * w[wi];
                        }
                    }
                    y.push(acc);
                }
            }
        }
        y
    }

    /// The test layer's x, kernel and bias.
    fn layer(s: &ConvShape) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = values(s.batch * s.in_len(), 37, 11);
        (x, values(s.bias_off, 13, 17), values(s.out_channels, 3, 5))
    }

    #[test]
    fn forward_is_the_convolution() {
        let s = shape();
        let (x, w, bias) = layer(&s);
        let mut y = vec![0.0; s.batch * s.out_channels * s.out_pixels()];
        conv2d_forward(&x, &w, &bias, &s, false, &mut y);
        let want = direct(&wide(&x), &wide(&w), &wide(&bias), &s);
        for (i, (&got, want)) in y.iter().zip(want).enumerate() {
            assert!((got as f64 - want).abs() < 1e-5, "y[{i}]: {got} vs {want}");
        }
        conv2d_forward(&x, &w, &bias, &s, true, &mut y);
        assert!(y.iter().all(|&v| v >= 0.0) && y.iter().any(|&v| v > 0.0));
    }

    /// L = Σ c·y; every gradient against central differences of the f64 definition.
    #[test]
    fn gradients_match_finite_differences() {
        let s = shape();
        let (x, w, bias) = layer(&s);
        let c = values(s.batch * s.out_channels * s.out_pixels(), 29, 13);
        let loss = |x: &[f64], w: &[f64], bias: &[f64]| -> f64 {
            direct(x, w, bias, &s)
                .iter()
                .zip(&c)
                .map(|(y, &c)| y * c as f64)
                .sum()
        };
        let (mut dw, mut db, mut dx) = (vec![0.0; w.len()], vec![0.0; 3], vec![0.0; x.len()]);
        conv2d_weight_grad(&x, &c, &s, &mut dw, &mut db);
        conv2d_input_grad(&c, &w, &s, None, &mut dx);
        let (x, w, bias) = (wide(&x), wide(&w), wide(&bias));
        let nudged = |v: &[f64], i: usize, d: f64| {
            let mut v = v.to_vec();
            v[i] += d;
            v
        };
        assert_matches_central_differences("dx", &dx, 1e-4, |i, d| {
            loss(&nudged(&x, i, d), &w, &bias)
        });
        assert_matches_central_differences("dw", &dw, 1e-4, |i, d| {
            loss(&x, &nudged(&w, i, d), &bias)
        });
        assert_matches_central_differences("db", &db, 1e-4, |i, d| {
            loss(&x, &w, &nudged(&bias, i, d))
        });
    }

    /// The direct forward and weight gradient (small filters) agree with the GEMM ones.
    #[test]
    fn direct_and_gemm_paths_agree() {
        let s = shape();
        assert!(s.patch() <= DIRECT_MAX_PATCH);
        let (x, w, _) = layer(&s);
        let mut dy = values(s.batch * s.out_channels * s.out_pixels(), 29, 13);
        dy.iter_mut().step_by(2).for_each(|g| *g = 0.0);
        let (mut dw, mut db) = (vec![0.0; w.len()], vec![0.0; 3]);
        let (mut dw_gemm, mut db_gemm) = (vec![1.0; w.len()], vec![1.0; 3]);
        weight_grad_direct(&x, &dy, &s, &mut dw, &mut db);
        weight_grad_gemm(&x, &dy, &s, &mut dw_gemm, &mut db_gemm);
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-5);
        assert!(close(&dw, &dw_gemm) && close(&db, &db_gemm));
        let (_, _, bias) = layer(&s);
        let mut y = vec![0.0; dy.len()];
        let mut y_gemm = vec![1.0; dy.len()];
        forward_direct(&x, &w, &bias, &s, true, &mut y);
        forward_gemm(&x, &w, &bias, &s, true, &mut y_gemm);
        assert!(close(&y, &y_gemm));
    }

    /// A first layer under a max-pool, its forward and weight gradient taken with the
    /// pool's (`conv2d_forward_pooled`, `conv2d_weight_grad_pooled`), gives the two
    /// layers' own results bit for bit: small filters (the direct paths, an odd row and
    /// column left out of the pool) and larger ones (the GEMMs), with ReLU and without.
    #[test]
    fn the_pooled_paths_are_the_two_layers_bit_for_bit() {
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for s in [
            ConvShape::alone(3, 2, (9, 8), 4, 3),
            ConvShape::alone(2, 5, (8, 9), 3, 3),
        ] {
            let (x, w, bias) = layer(&s);
            let (oh, ow) = s.out_size();
            let pool = PoolShape::new(s.batch, s.out_channels, (oh, ow), 2);
            let dy = values(pool.out_len(), 29, 13);
            for relu in [true, false] {
                let mut out = vec![0.0; pool.in_len()];
                conv2d_forward(&x, &w, &bias, &s, relu, &mut out);
                let (mut y, mut argmax) = (vec![0.0; pool.out_len()], vec![0; pool.out_len()]);
                maxpool2d_forward(&out, &pool, &mut y, &mut argmax);
                let (mut y_fused, mut argmax_fused) = (vec![1.0; y.len()], vec![7; y.len()]);
                let fused_out = (&mut y_fused[..], &mut argmax_fused[..]);
                conv2d_forward_pooled((&x, &w, &bias), (&s, relu), &pool, fused_out);
                assert_eq!((bits(&y_fused), &argmax_fused), (bits(&y), &argmax));
                assert!(relu == y.contains(&0.0), "ReLU drops some windows");

                let mut dense = vec![0.0; pool.in_len()];
                maxpool2d_backward(&dy, (&y, &argmax), &pool, relu, &mut dense);
                let (mut dw, mut db) = (vec![0.0; w.len()], vec![0.0; bias.len()]);
                conv2d_weight_grad(&x, &dense, &s, &mut dw, &mut db);
                let above = PooledGrad {
                    dy: &dy,
                    y: &y,
                    argmax: &argmax,
                    shape: pool,
                    masked: relu,
                };
                let (mut dw_fused, mut db_fused) = (vec![1.0; w.len()], vec![1.0; bias.len()]);
                conv2d_weight_grad_pooled(&x, &above, &s, &mut dw_fused, &mut db_fused);
                assert_eq!((bits(&dw_fused), bits(&db_fused)), (bits(&dw), bits(&db)));
            }
        }
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), c> = <x, col2im(c)> for any x and c.
        let s = shape();
        let x = values(s.in_len(), 7, 13);
        let c = values(s.patch() * s.out_pixels(), 11, 19);
        let mut cols = vec![0.0; c.len()];
        im2col(&x, &s, &mut cols);
        let mut back = vec![0.0; x.len()];
        col2im(&c, &s, &mut back);
        let dot = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(p, q)| *p as f64 * *q as f64)
                .sum::<f64>()
        };
        assert!((dot(&cols, &c) - dot(&x, &back)).abs() < 1e-5);
    }
}
