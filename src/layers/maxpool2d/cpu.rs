//! MaxPool2D, the CPU reference: `size`×`size` windows with stride `size` (Keras'
//! `MaxPooling2D(size)`, `valid`: rows and columns past the last whole window are
//! dropped), on `[batch, channels, height, width]` activations. GPU twin:
//! `maxpool2d.wgsl` beside it.
//!
//! Ties go to the first maximum in the window's row-major order (a later value wins only
//! if it is strictly greater), on every device, so the gradient reaches the same input
//! everywhere.

use super::PoolShape;

/// The flat index in `x` of the largest value of output pixel `(plane, oy, ox)`'s window,
/// `plane` being `b·channels + c`.
pub fn window_argmax(x: &[f32], s: &PoolShape, plane: usize, oy: usize, ox: usize) -> usize {
    let first = (plane * s.height + oy * s.size) * s.width + ox * s.size;
    let mut best = first;
    for wy in 0..s.size {
        for wx in 0..s.size {
            let at = first + wy * s.width + wx;
            if x[at] > x[best] {
                best = at;
            }
        }
    }
    best
}

/// Every output pixel as `(its index, plane, oy, ox)`, in order.
fn outputs(s: &PoolShape) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let (oh, ow) = s.out_size();
    let planes = s.batch * s.channels;
    let pixels =
        (0..planes).flat_map(move |p| (0..oh).flat_map(move |y| (0..ow).map(move |x| (p, y, x))));
    pixels.enumerate().map(|(i, (p, y, x))| (i, p, y, x))
}

/// Forward: each output is its window's maximum.
pub fn maxpool2d_forward(x: &[f32], s: &PoolShape, y: &mut [f32]) {
    assert!(x.len() == s.in_len() && y.len() == s.out_len());
    for (i, plane, oy, ox) in outputs(s) {
        y[i] = x[window_argmax(x, s, plane, oy, ox)];
    }
}

/// Backward: each output's gradient goes to its window's arg-max (the others, and the
/// inputs no window covers, get 0). With `masked`, `x` is the ReLU output of the layer
/// below and the gradient is zeroed where `x <= 0` (that ReLU's backward, fused).
pub fn maxpool2d_backward(x: &[f32], dy: &[f32], s: &PoolShape, masked: bool, dx: &mut [f32]) {
    assert!(x.len() == s.in_len() && dx.len() == x.len() && dy.len() == s.out_len());
    dx.fill(0.0);
    for (i, plane, oy, ox) in outputs(s) {
        let at = window_argmax(x, s, plane, oy, ox);
        if !(masked && x[at] <= 0.0) {
            dx[at] = dy[i];
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
