//! Conv2D, the CPU reference: stride 1, `valid` padding, PyTorch's layouts (activations
//! `[batch, channels, height, width]`, kernel `[out, in, k, k]`, bias `[out]`). Each
//! sample's convolution is a matrix product through im2col, the way cuDNN and PyTorch's
//! CPU path lower it: the sample's patches become the columns of a
//! `[in·k·k, out_h·out_w]` matrix (see [`im2col`]), and
//!
//! - forward: `y_b = W · cols_b + bias` (`W` viewed as `[out, in·k·k]`);
//! - weight gradient: `dW = Σ_b dy_b · cols_bᵀ`, `db = Σ_b Σ_pixels dy_b`;
//! - input gradient: `dx_b = col2im(Wᵀ · dy_b)`.
//!
//! The products run through [`matmul`] (the dense layer's GEMM). GPU twin: `conv2d.wgsl`
//! beside it, which forms the same products without the im2col buffer.

use super::ConvShape;
use crate::layers::dense::cpu::{matmul, Mat};
use crate::layers::relu::cpu::{relu_backward_in_place, relu_forward};

/// The patches of one sample `x` (`[in, height, width]`) as the columns of `cols`
/// (`[in·k·k, out_h·out_w]`): row `(c, ky, kx)`, column `(oy, ox)` holds
/// `x[c, oy + ky, ox + kx]`.
pub fn im2col(x: &[f32], s: &ConvShape, cols: &mut [f32]) {
    let (k, (oh, ow)) = (s.kernel, s.out_size());
    assert_eq!(cols.len(), s.patch() * oh * ow);
    for (row, out) in cols.chunks_exact_mut(oh * ow).enumerate() {
        let (c, ky, kx) = (row / (k * k), row / k % k, row % k);
        for oy in 0..oh {
            let start = (c * s.height + oy + ky) * s.width + kx;
            out[oy * ow..(oy + 1) * ow].copy_from_slice(&x[start..start + ow]);
        }
    }
}

/// The adjoint of [`im2col`]: adds each column entry of `cols` back onto the input pixel
/// it was read from, into `dx` (`[in, height, width]`, zeroed first).
pub fn col2im(cols: &[f32], s: &ConvShape, dx: &mut [f32]) {
    let (k, (oh, ow)) = (s.kernel, s.out_size());
    dx.fill(0.0);
    for (row, col) in cols.chunks_exact(oh * ow).enumerate() {
        let (c, ky, kx) = (row / (k * k), row / k % k, row % k);
        for oy in 0..oh {
            let start = (c * s.height + oy + ky) * s.width + kx;
            let dst = &mut dx[start..start + ow];
            for (d, &v) in dst.iter_mut().zip(&col[oy * ow..(oy + 1) * ow]) {
                *d += v;
            }
        }
    }
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
    let (pixels, outputs) = (s.out_pixels(), s.out_channels * s.out_pixels());
    assert!(x.len() == s.batch * s.in_len() && y.len() == s.batch * outputs);
    assert!(w.len() == s.out_channels * s.patch() && bias.len() == s.out_channels);
    let mut cols = vec![0.0f32; s.patch() * pixels];
    let kernel = Mat::rows(w, s.out_channels, s.patch());
    for (x_b, y_b) in x.chunks_exact(s.in_len()).zip(y.chunks_exact_mut(outputs)) {
        im2col(x_b, s, &mut cols);
        for (row, &b) in y_b.chunks_exact_mut(pixels).zip(bias) {
            row.fill(b);
        }
        matmul(kernel, Mat::rows(&cols, s.patch(), pixels), 1.0, y_b);
    }
    if relu {
        relu_forward(y);
    }
}

/// Weight and bias gradients from the output gradient `dy` (`[batch, out, out_h,
/// out_w]`): `dw` (`[out, in, k, k]`) and `db` (`[out]`), summed sample by sample.
pub fn conv2d_weight_grad(x: &[f32], dy: &[f32], s: &ConvShape, dw: &mut [f32], db: &mut [f32]) {
    let (pixels, outputs) = (s.out_pixels(), s.out_channels * s.out_pixels());
    assert!(x.len() == s.batch * s.in_len() && dy.len() == s.batch * outputs);
    assert!(dw.len() == s.out_channels * s.patch() && db.len() == s.out_channels);
    let mut cols = vec![0.0f32; s.patch() * pixels];
    dw.fill(0.0);
    db.fill(0.0);
    for (x_b, dy_b) in x.chunks_exact(s.in_len()).zip(dy.chunks_exact(outputs)) {
        im2col(x_b, s, &mut cols);
        let grad = Mat::rows(dy_b, s.out_channels, pixels);
        matmul(grad, Mat::rows(&cols, s.patch(), pixels).t(), 1.0, dw);
        for (acc, row) in db.iter_mut().zip(dy_b.chunks_exact(pixels)) {
            *acc += row.iter().sum::<f32>();
        }
    }
}

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
    let (pixels, outputs) = (s.out_pixels(), s.out_channels * s.out_pixels());
    assert!(dy.len() == s.batch * outputs && dx.len() == s.batch * s.in_len());
    let mut cols = vec![0.0f32; s.patch() * pixels];
    let kernel_t = Mat::rows(w, s.out_channels, s.patch()).t();
    for (dy_b, dx_b) in dy
        .chunks_exact(outputs)
        .zip(dx.chunks_exact_mut(s.in_len()))
    {
        matmul(
            kernel_t,
            Mat::rows(dy_b, s.out_channels, pixels),
            0.0,
            &mut cols,
        );
        col2im(&cols, s, dx_b);
    }
    if let Some(mask) = mask {
        relu_backward_in_place(dx, mask);
    }
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
