//! MaxPool2D, the CPU reference: `size`×`size` windows with stride `size` (Keras'
//! `MaxPooling2D(size)`, `valid`: rows and columns past the last whole window are
//! dropped), on `[batch, channels, height, width]` activations. GPU twin:
//! `maxpool2d.wgsl` beside it.
//!
//! Ties go to the first maximum in the window's row-major order (a later value wins only
//! if it is strictly greater), on every device, so the gradient reaches the same input
//! everywhere. The forward records each window's arg-max for the backward (the GPU's
//! backward finds it again from the input).

use super::PoolShape;
use rayon::prelude::*;

/// The row and column in `plane` (one channel, its rows `stride` apart) of the largest
/// value of output pixel `(oy, ox)`'s window.
#[inline(always)]
fn plane_argmax(plane: &[f32], stride: usize, s: &PoolShape, (oy, ox): (usize, usize)) -> usize {
    let (top, left) = (oy * s.size, ox * s.size);
    let mut best = (top, left);
    for row in top..top + s.size {
        for col in left..left + s.size {
            if plane[row * stride + col] > plane[best.0 * stride + best.1] {
                best = (row, col);
            }
        }
    }
    best.0 * stride + best.1
}

/// Forward: each output is its window's maximum, and `argmax` (the output's shape) the
/// index in its input plane (one `height`×`width` channel) of that maximum, which the
/// backward sends the gradient to.
pub fn maxpool2d_forward(x: &[f32], s: &PoolShape, y: &mut [f32], argmax: &mut [u32]) {
    assert!(x.len() == s.in_len() && y.len() == s.out_len() && argmax.len() == y.len());
    let (oh, ow) = s.out_size();
    let planes = x.par_chunks_exact(s.height * s.width);
    let outputs = y.par_chunks_exact_mut(oh * ow);
    planes
        .zip(outputs.zip(argmax.par_chunks_exact_mut(oh * ow)))
        .for_each(|(x, (y, argmax))| maxpool2d_plane(x, s.width, s, y, argmax));
}

/// The two input rows under output row `oy` of a 2×2 pooling, each `2·out_w` long, in a
/// plane whose rows are `stride` apart.
#[inline(always)]
fn rows_of_window<'x>(
    x: &'x [f32],
    stride: usize,
    s: &PoolShape,
    oy: usize,
) -> (&'x [f32], &'x [f32]) {
    let len = 2 * s.out_size().1;
    let top = 2 * oy * stride;
    (&x[top..top + len], &x[top + stride..top + stride + len])
}

/// The first maximum of a 2×2 window (`top` and `bottom` rows of 2) in row-major order:
/// its place (0 to 3) and value. Each later value wins only when strictly greater than
/// the best so far, the order of the general loop in [`plane_argmax`] and of the GPU's,
/// so a NaN gives the same answer everywhere.
#[inline(always)]
fn first_max_2x2(top: &[f32], bottom: &[f32]) -> (usize, f32) {
    let mut best = (0, top[0]);
    for (at, v) in [(1, top[1]), (2, bottom[0]), (3, bottom[1])] {
        if v > best.1 {
            best = (at, v);
        }
    }
    best
}

/// One plane of [`maxpool2d_forward`], its rows `stride` (at least `width`) apart in
/// `x`: a layer below with wider rows can pool its output where it computed it. The
/// arg-maxes are indices in the plane without the gaps (`row·width + column`).
pub fn maxpool2d_plane(x: &[f32], stride: usize, s: &PoolShape, y: &mut [f32], argmax: &mut [u32]) {
    let (oh, ow) = s.out_size();
    let unpadded = |at: usize| (at / stride * s.width + at % stride) as u32;
    if s.size == 2 {
        let rows = y.chunks_exact_mut(ow).zip(argmax.chunks_exact_mut(ow));
        for (oy, (out, at)) in rows.enumerate() {
            let (top, bottom) = rows_of_window(x, stride, s, oy);
            let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2));
            let top_left = 2 * oy * s.width;
            for (ox, ((o, at), (top, bottom))) in out.iter_mut().zip(at).zip(windows).enumerate() {
                let (place, max) = first_max_2x2(top, bottom);
                *o = max;
                *at = (top_left + 2 * ox + place / 2 * s.width + place % 2) as u32;
            }
        }
        return;
    }
    for oy in 0..oh {
        for ox in 0..ow {
            let at = plane_argmax(x, stride, s, (oy, ox));
            (y[oy * ow + ox], argmax[oy * ow + ox]) = (x[at], unpadded(at));
        }
    }
}

/// Backward: each output's gradient goes to its window's arg-max (the others, and the
/// inputs no window covers, get 0), from the forward's output `y` and `argmax`. With
/// `masked`, the input was the ReLU output of the layer below, and the gradient is
/// dropped where the window's maximum `y` is `<= 0` (that ReLU's backward, fused).
pub fn maxpool2d_backward(
    dy: &[f32],
    (y, argmax): (&[f32], &[u32]),
    s: &PoolShape,
    masked: bool,
    dx: &mut [f32],
) {
    assert!(dx.len() == s.in_len() && dy.len() == s.out_len());
    assert!(y.len() == dy.len() && argmax.len() == dy.len());
    let (oh, ow) = s.out_size();
    let windows = dy
        .par_chunks_exact(oh * ow)
        .zip(y.par_chunks_exact(oh * ow));
    let planes = windows.zip(argmax.par_chunks_exact(oh * ow));
    planes
        .zip(dx.par_chunks_exact_mut(s.height * s.width))
        .for_each(|(((dy, y), argmax), dx)| {
            dx.fill(0.0);
            for_each_gradient(dy, (y, argmax), masked, |at, g| dx[at] = g);
        });
}

/// `f(index in the input plane, gradient)` for each output of one plane: the backward as
/// a list, for a layer below that takes its gradient from it directly. The gradient is
/// 0 where the mask drops it (see [`maxpool2d_backward`]): a select, not a branch, as
/// the ReLU's zeros fall at random and a mispredicted branch a window cost more than
/// the rest of the backward.
#[inline(always)]
pub fn for_each_gradient(
    dy: &[f32],
    (y, argmax): (&[f32], &[u32]),
    masked: bool,
    mut f: impl FnMut(usize, f32),
) {
    for ((&g, &max), &at) in dy.iter().zip(y).zip(argmax) {
        let dropped = masked && max <= 0.0;
        f(at as usize, if dropped { 0.0 } else { g });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_by_hand_with_ties_to_the_first_and_an_odd_edge_dropped() {
        // One 3×5 plane: 2×2 windows cover rows 0–1 and columns 0–3.
        let x = [
            1.0, 3.0, 2.0, 2.0, 9.0, //
            3.0, 0.0, -1.0, 2.0, 9.0, //
            9.0, 9.0, 9.0, 9.0, 9.0,
        ];
        let s = PoolShape::new(1, 1, (3, 5), 2);
        let (mut y, mut argmax) = ([0.0; 2], [0; 2]);
        maxpool2d_forward(&x, &s, &mut y, &mut argmax);
        assert_eq!((y, argmax), ([3.0, 2.0], [1, 2]));
        let mut dx = [0.0; 15];
        maxpool2d_backward(&[10.0, 20.0], (&y, &argmax), &s, false, &mut dx);
        // Both windows tie: the first maximum in row-major order gets the gradient.
        let mut want = [0.0; 15];
        (want[1], want[2]) = (10.0, 20.0);
        assert_eq!(dx, want);
    }

    /// The 2×2 rows and the general window loop pick the same arg-max, ties and NaNs
    /// included, and a plane whose rows are padded pools as the packed one, at 2×2 and 3×3.
    #[test]
    fn the_2x2_rows_the_general_loop_and_padded_rows_agree() {
        let levels = [0.0, 0.5, 1.0, f32::NAN, -1.0, 0.5];
        let x: Vec<f32> = (0..63).map(|i| levels[(i * 7 + i / 5) % 6]).collect();
        for size in [2, 3] {
            let s = PoolShape::new(1, 1, (7, 9), size);
            let (oh, ow) = s.out_size();
            let (mut y, mut argmax) = (vec![0.0; oh * ow], vec![0; oh * ow]);
            maxpool2d_forward(&x, &s, &mut y, &mut argmax);
            for (o, &at) in argmax.iter().enumerate() {
                let at = at as usize;
                assert_eq!(at, plane_argmax(&x, 9, &s, (o / ow, o % ow)), "size {size}");
                assert_eq!(y[o].to_bits(), x[at].to_bits());
            }
            let mut padded = vec![9.0; 7 * 12];
            for (dst, src) in padded.chunks_exact_mut(12).zip(x.chunks_exact(9)) {
                dst[..9].copy_from_slice(src);
            }
            let (mut y_padded, mut argmax_padded) = (vec![0.0; oh * ow], vec![0; oh * ow]);
            maxpool2d_plane(&padded, 12, &s, &mut y_padded, &mut argmax_padded);
            assert_eq!(argmax_padded, argmax, "size {size}");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y_padded), bits(&y));
        }
        assert!(x[..18].iter().any(|v| v.is_nan()), "the windows meet a NaN");
    }

    #[test]
    fn the_mask_drops_a_window_whose_maximum_is_not_positive() {
        let x = [0.0, 0.0, 0.0, 0.0, /* */ 0.0, 0.5, 0.0, 0.0];
        let s = PoolShape::new(1, 2, (2, 2), 2);
        let (mut y, mut argmax, mut dx) = ([0.0; 2], [0; 2], [0.0; 8]);
        maxpool2d_forward(&x, &s, &mut y, &mut argmax);
        let forward = (&y[..], &argmax[..]);
        maxpool2d_backward(&[1.0, 2.0], forward, &s, true, &mut dx);
        assert_eq!(dx, [0.0, 0.0, 0.0, 0.0, /* */ 0.0, 2.0, 0.0, 0.0]);
        maxpool2d_backward(&[1.0, 2.0], forward, &s, false, &mut dx);
        assert_eq!(dx, [1.0, 0.0, 0.0, 0.0, /* */ 0.0, 2.0, 0.0, 0.0]);
    }
}
