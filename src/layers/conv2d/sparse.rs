//! Conv2D's two gradients over the nonzero output gradients only, on the CPU. Under a
//! max-pool at most a quarter of a convolution's output gradient is nonzero (one value a
//! window), and fewer after its ReLU: the convnet's second layer keeps about a fifth.
//! These skip the rest, and so do about a fifth of the arithmetic of the GEMMs in
//! [`super::cpu`], which they are tested against.
//!
//! They work channels last: with an input pixel's channels side by side, the patch under
//! an output pixel is `k·k` runs of `in` values, so each nonzero `dy` costs `k·k`
//! vectorised multiply-adds of `in` values (32 for the convnet's second layer) instead
//! of scattered 3-value ones.

use super::ConvShape;
use rayon::prelude::*;

/// Largest fraction of nonzero output gradients for which the sparse gradients run.
pub const SPARSE_MAX_DENSITY: f64 = 0.3;

/// Fewest input channels for the channels-last runs to be worth it (below, the direct
/// paths of [`super::cpu`] serve).
pub const SPARSE_MIN_CHANNELS: usize = 8;

/// Whether `dy` is sparse enough, and the layer wide enough, for these gradients.
pub fn worth_it(dy: &[f32], s: &ConvShape) -> bool {
    if s.in_channels < SPARSE_MIN_CHANNELS {
        return false;
    }
    let nonzero: usize = dy
        .par_chunks(1 << 14)
        .map(|chunk| chunk.iter().filter(|&&g| g != 0.0).count())
        .sum();
    nonzero as f64 <= SPARSE_MAX_DENSITY * dy.len() as f64
}

/// `dst[j][i] = src[i][j]` for `src` of `rows`×`cols`.
fn transpose(src: &[f32], (rows, cols): (usize, usize), dst: &mut [f32]) {
    for (i, row) in src.chunks_exact(cols).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            dst[j * rows + i] = v;
        }
    }
}

/// One output plane's nonzero gradients as `(offset, value)` in row-major order, the
/// offset that of the first value of the patch under the pixel in a channels-last sample.
/// Built without a branch on the values (each pixel is written, and the count advances
/// only past a nonzero one): the zeros a ReLU leaves fall at random, and a branch
/// mispredicted on them cost more than the multiply-adds they skip.
fn nonzeros(dy_o: &[f32], s: &ConvShape, list: &mut Vec<(u32, f32)>) {
    let (c, ow) = (s.in_channels, s.out_size().1);
    list.resize(dy_o.len(), (0, 0.0));
    let mut count = 0;
    for (oy, row) in dy_o.chunks_exact(ow).enumerate() {
        for (ox, &g) in row.iter().enumerate() {
            list[count] = (((oy * s.width + ox) * c) as u32, g);
            count += usize::from(g != 0.0);
        }
    }
    list.truncate(count);
}

/// Where each filter value's run of `in` values starts in a channels-last sample,
/// relative to its patch's first: `[k·k]`.
fn run_offsets(s: &ConvShape) -> Vec<usize> {
    let k = s.kernel;
    (0..k * k)
        .map(|run| ((run / k) * s.width + run % k) * s.in_channels)
        .collect()
}

/// The weight and bias gradients (as `super::cpu::conv2d_weight_grad` defines them) from
/// the nonzero values of `dy`: filter `o`'s gradient, kept as `[k, k, in]`, gets
/// `dy[b, o, p]` times the channels-last patch under `p`. Filters are split over the
/// pool; each sums its samples and pixels in order, so the thread count does not matter.
pub fn weight_grad_sparse(x: &[f32], dy: &[f32], s: &ConvShape, dw: &mut [f32], db: &mut [f32]) {
    let (pixels, plane, patch) = (s.out_pixels(), s.height * s.width, s.patch());
    let outputs = s.out_channels * pixels;
    let mut x_last = vec![0.0f32; x.len()];
    let samples = x_last.par_chunks_exact_mut(s.in_len());
    samples
        .zip(x.par_chunks_exact(s.in_len()))
        .for_each(|(dst, src)| transpose(src, (s.in_channels, plane), dst));
    let filters = dw.par_chunks_exact_mut(patch).zip(db.par_iter_mut());
    filters.enumerate().for_each(|(o, (dw_o, db_o))| {
        // Every sample's nonzero gradients of filter `o`, one after another, and where
        // each sample's end.
        let (mut list, mut all, mut ends) = (Vec::new(), Vec::new(), Vec::new());
        *db_o = 0.0;
        for dy_b in dy.chunks_exact(outputs) {
            nonzeros(&dy_b[o * pixels..(o + 1) * pixels], s, &mut list);
            *db_o += list.iter().map(|&(_, g)| g).sum::<f32>();
            all.extend_from_slice(&list);
            ends.push(all.len());
        }
        let mut grad = vec![0.0f32; patch];
        filter_grad(&x_last, (&all, &ends), s, &mut grad);
        // [k, k, in] back to PyTorch's [in, k, k].
        transpose(&grad, (s.kernel * s.kernel, s.in_channels), dw_o);
    });
}

/// Channels [`filter_grad`] sums at a time, in registers: two AVX-512 vectors.
const LANES: usize = 32;

/// One filter's gradient `grad` (`[k, k, in]`): for each filter value's run of channels,
/// `Σ_b Σ_p dy[b, o, p] · x_last[b]`'s run under `p`, from each sample's nonzero list
/// (`nonzeros`, concatenated, with each sample's end). Each run's [`LANES`] channels at a
/// time stay in registers over every sample. The sums run in sample, then pixel order.
/// Also compiled for AVX2 and AVX-512 and picked at run time (`multiversion`; no fused
/// multiply-adds, so the same bits on every target).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "x86_64+avx"
))]
fn filter_grad(
    x_last: &[f32],
    (nonzeros, ends): (&[(u32, f32)], &[usize]),
    s: &ConvShape,
    grad: &mut [f32],
) {
    let c = s.in_channels;
    let runs = grad.chunks_exact_mut(c).zip(run_offsets(s));
    for (grad_run, run_off) in runs {
        for (first, out) in (0..c).step_by(LANES).zip(grad_run.chunks_mut(LANES)) {
            let mut acc = [0.0f32; LANES];
            let mut begin = 0;
            for (x_b, &end) in x_last.chunks_exact(s.in_len()).zip(ends) {
                for &(at, g) in &nonzeros[begin..end] {
                    let from = at as usize + run_off + first;
                    add_scaled(&mut acc, g, &x_b[from..from + out.len()]);
                }
                begin = end;
            }
            out.copy_from_slice(&acc[..out.len()]);
        }
    }
}

/// `acc += g · xs` over `xs`'s length (at most [`LANES`]); a whole [`LANES`] as one
/// fixed-length loop the compiler unrolls into vectors.
#[inline(always)]
fn add_scaled(acc: &mut [f32; LANES], g: f32, xs: &[f32]) {
    if let Ok(xs) = <&[f32; LANES]>::try_from(xs) {
        for l in 0..LANES {
            acc[l] += g * xs[l];
        }
    } else {
        for (a, &v) in acc.iter_mut().zip(xs) {
            *a += g * v;
        }
    }
}

/// The input gradient (before any mask) from the nonzero values of `dy`: each adds
/// `dy[b, o, p] · W[o]` (channels last) onto the input pixels under `p`. Samples are split
/// over the pool, each summed in a fixed order.
pub fn input_grad_sparse(dy: &[f32], w: &[f32], s: &ConvShape, dx: &mut [f32]) {
    let (pixels, plane, patch) = (s.out_pixels(), s.height * s.width, s.patch());
    let outputs = s.out_channels * pixels;
    let mut w_last = vec![0.0f32; w.len()];
    for (src, dst) in w.chunks_exact(patch).zip(w_last.chunks_exact_mut(patch)) {
        transpose(src, (s.in_channels, s.kernel * s.kernel), dst);
    }
    let samples = dx
        .par_chunks_exact_mut(s.in_len())
        .zip(dy.par_chunks_exact(outputs));
    samples.for_each_init(
        || (vec![0.0f32; s.in_len()], Vec::new()),
        |(dx_last, list), (dx_b, dy_b)| {
            dx_last.fill(0.0);
            sample_input_grad(dy_b, &w_last, s, (dx_last, list));
            transpose(dx_last, (plane, s.in_channels), dx_b);
        },
    );
}

/// One sample of [`input_grad_sparse`] into `dx_last` (`[pixels, in]`, zeroed), with
/// `list` room for a plane's nonzero gradients. Multiversioned as [`filter_grad`].
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "x86_64+avx"
))]
fn sample_input_grad(
    dy_b: &[f32],
    w_last: &[f32],
    s: &ConvShape,
    (dx_last, list): (&mut [f32], &mut Vec<(u32, f32)>),
) {
    let (c, pixels, run_offs) = (s.in_channels, s.out_pixels(), run_offsets(s));
    for (dy_o, w_o) in dy_b
        .chunks_exact(pixels)
        .zip(w_last.chunks_exact(s.patch()))
    {
        nonzeros(dy_o, s, list);
        for &(at, g) in list.iter() {
            for (w_run, &run_off) in w_o.chunks_exact(c).zip(&run_offs) {
                let at = at as usize + run_off;
                for (d, &wv) in dx_last[at..at + c].iter_mut().zip(w_run) {
                    *d += g * wv;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::cpu::{input_grad_gemm, weight_grad_gemm};
    use super::*;

    /// Both sparse gradients against the GEMMs', on 9 input channels of 6×7, 5 filters of
    /// 3×3, a batch of 3, and a `dy` three quarters zeros.
    #[test]
    fn the_sparse_gradients_are_the_gemms() {
        let s = ConvShape::alone(3, 9, (6, 7), 5, 3);
        let values = |len: usize, a: usize, b: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * a % b) as f32) / b as f32 - 0.45)
                .collect()
        };
        let x = values(s.batch * s.in_len(), 37, 11);
        let w = values(s.out_channels * s.patch(), 13, 17);
        let mut dy = values(s.batch * s.out_channels * s.out_pixels(), 29, 13);
        dy.iter_mut()
            .enumerate()
            .filter(|(i, _)| i % 4 != 0)
            .for_each(|(_, g)| *g = 0.0);
        assert!(worth_it(&dy, &s));
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-5);
        let (mut dw, mut db) = (vec![0.0; w.len()], vec![0.0; 5]);
        let (mut dw_gemm, mut db_gemm) = (vec![1.0; w.len()], vec![1.0; 5]);
        weight_grad_sparse(&x, &dy, &s, &mut dw, &mut db);
        weight_grad_gemm(&x, &dy, &s, &mut dw_gemm, &mut db_gemm);
        assert!(close(&dw, &dw_gemm) && close(&db, &db_gemm));
        let (mut dx, mut dx_gemm) = (vec![0.0; x.len()], vec![1.0; x.len()]);
        input_grad_sparse(&dy, &w, &s, &mut dx);
        input_grad_gemm(&dy, &w, &s, &mut dx_gemm);
        assert!(close(&dx, &dx_gemm));
    }

    #[test]
    fn dense_gradients_or_few_channels_take_the_gemms() {
        let s = ConvShape::alone(2, 9, (6, 7), 5, 3);
        let dense = vec![0.5f32; s.batch * s.out_channels * s.out_pixels()];
        assert!(!worth_it(&dense, &s));
        let zeros = vec![0.0f32; dense.len()];
        assert!(!worth_it(&zeros, &ConvShape::alone(2, 4, (6, 7), 5, 3)));
    }
}
