//! MaxPool2D, the CPU reference: `size`×`size` windows with stride `size` (Keras'
//! `MaxPooling2D(size)`, `valid`: rows and columns past the last whole window are
//! dropped), on `[batch, channels, height, width]` activations. GPU twin:
//! `maxpool2d.wgsl` beside it.
//!
//! Ties go to the first maximum in the window's row-major order (a later value wins only
//! if it is strictly greater), on every device, so the gradient reaches the same input
//! everywhere.

use super::PoolShape;
use rayon::prelude::*;

/// The index in `plane` (one `height`×`width` channel) of the largest value of output
/// pixel `(oy, ox)`'s window.
#[inline(always)]
fn plane_argmax(plane: &[f32], s: &PoolShape, oy: usize, ox: usize) -> usize {
    let first = oy * s.size * s.width + ox * s.size;

    let mut best = first;
    for wy in 0..s.size {
        let row = first + wy * s.width;
        for at in row..row + s.size {
            if plane[at] > plane[best] {
                best = at;
            }
        }
    }
    best
}

/// Forward: each output is its window's maximum.
pub fn maxpool2d_forward(x: &[f32], s: &PoolShape, y: &mut [f32]) {
    assert!(x.len() == s.in_len() && y.len() == s.out_len());
    let (oh, ow) = s.out_size();
    let planes = x.par_chunks_exact(s.height * s.width);
    planes
        .zip(y.par_chunks_exact_mut(oh * ow))
        .for_each(|(x, y)| plane_forward(x, s, y));
}

/// The two input rows under output row `oy` of a 2×2 pooling, each `2·out_w` long.
#[inline(always)]
fn rows_of_window<'x>(x: &'x [f32], s: &PoolShape, oy: usize) -> (&'x [f32], &'x [f32]) {
    let len = 2 * s.out_size().1;
    let top = 2 * oy * s.width;
    (&x[top..top + len], &x[top + s.width..top + s.width + len])
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

/// One plane of [`maxpool2d_forward`].
fn plane_forward(x: &[f32], s: &PoolShape, y: &mut [f32]) {
    let (oh, ow) = s.out_size();
    if s.size == 2 {
        for (oy, out) in y.chunks_exact_mut(ow).enumerate() {
            let rows = rows_of_window(x, s, oy);
            let windows = rows.0.chunks_exact(2).zip(rows.1.chunks_exact(2));
            for (o, (top, bottom)) in out.iter_mut().zip(windows) {
                *o = first_max_2x2(top, bottom).1;
            }
        }
        return;
    }
    for oy in 0..oh {
        for ox in 0..ow {
            y[oy * ow + ox] = x[plane_argmax(x, s, oy, ox)];
        }
    }
}

/// Backward: each output's gradient goes to its window's arg-max (the others, and the
/// inputs no window covers, get 0). With `masked`, `x` is the ReLU output of the layer
/// below and the gradient is zeroed where `x <= 0` (that ReLU's backward, fused).
pub fn maxpool2d_backward(x: &[f32], dy: &[f32], s: &PoolShape, masked: bool, dx: &mut [f32]) {
    assert!(x.len() == s.in_len() && dx.len() == x.len() && dy.len() == s.out_len());
    let (oh, ow) = s.out_size();
    let len = s.height * s.width;
    let planes = x.par_chunks_exact(len).zip(dx.par_chunks_exact_mut(len));
    planes
        .zip(dy.par_chunks_exact(oh * ow))
        .for_each(|((x, dx), dy)| plane_backward(x, dy, (s, masked), dx));
}

/// One plane of [`maxpool2d_backward`].
fn plane_backward(x: &[f32], dy: &[f32], (s, masked): (&PoolShape, bool), dx: &mut [f32]) {
    let (oh, ow) = s.out_size();
    dx.fill(0.0);
    if s.size == 2 {
        for (oy, dy_row) in dy.chunks_exact(ow).enumerate() {
            let (top, bottom) = rows_of_window(x, s, oy);
            let (dx_top, dx_bottom) = dx[2 * oy * s.width..].split_at_mut(s.width);
            for (ox, &g) in dy_row.iter().enumerate() {
                let window = (&top[2 * ox..2 * ox + 2], &bottom[2 * ox..2 * ox + 2]);
                let (at, max) = first_max_2x2(window.0, window.1);
                if !(masked && max <= 0.0) {
                    let row = if at < 2 {
                        &mut *dx_top
                    } else {
                        &mut *dx_bottom
                    };
                    row[2 * ox + at % 2] = g;
                }
            }
        }
        return;
    }
    for oy in 0..oh {
        for ox in 0..ow {
            let at = plane_argmax(x, s, oy, ox);
            if !(masked && x[at] <= 0.0) {
                dx[at] = dy[oy * ow + ox];
            }
        }
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
        let mut y = [0.0; 2];
        maxpool2d_forward(&x, &s, &mut y);
        assert_eq!(y, [3.0, 2.0]);
        let mut dx = [0.0; 15];
        maxpool2d_backward(&x, &[10.0, 20.0], &s, false, &mut dx);
        // Both windows tie: the first maximum in row-major order gets the gradient.
        let mut want = [0.0; 15];
        (want[1], want[2]) = (10.0, 20.0);
        assert_eq!(dx, want);
    }

    #[test]
    fn the_mask_drops_a_window_whose_maximum_is_not_positive() {
        let x = [0.0, 0.0, 0.0, 0.0, /* */ 0.0, 0.5, 0.0, 0.0];
        let s = PoolShape::new(1, 2, (2, 2), 2);
        let mut dx = [0.0; 8];
        maxpool2d_backward(&x, &[1.0, 2.0], &s, true, &mut dx);
        assert_eq!(dx, [0.0, 0.0, 0.0, 0.0, /* */ 0.0, 2.0, 0.0, 0.0]);
        maxpool2d_backward(&x, &[1.0, 2.0], &s, false, &mut dx);
        assert_eq!(dx, [1.0, 0.0, 0.0, 0.0, /* */ 0.0, 2.0, 0.0, 0.0]);
    }
}
