//! ReLU forward and backward. GPU twin: `relu.wgsl` beside it (also fused into the GEMM epilogues).

/// `x = max(x, 0)` in place.
pub fn relu_forward(x: &mut [f32]) {
    for v in x {
        *v = v.max(0.0);
    }
}

/// `dx = dy` where the ReLU output `y > 0`, else 0.
pub fn relu_backward(dy: &[f32], y: &[f32], dx: &mut [f32]) {
    assert!(dy.len() == y.len() && y.len() == dx.len());
    for ((d, &g), &out) in dx.iter_mut().zip(dy).zip(y) {
        *d = if out > 0.0 { g } else { 0.0 };
    }
}

/// [`relu_backward`] with `dx` holding `dy` on entry.
pub fn relu_backward_in_place(grad: &mut [f32], y: &[f32]) {
    for (g, &out) in grad.iter_mut().zip(y) {
        if out <= 0.0 {
            *g = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::gradcheck::assert_matches_central_differences;

    #[test]
    fn forward_and_backward_by_hand() {
        let mut x = [-2.0, 0.0, 3.5];
        relu_forward(&mut x);
        assert_eq!(x, [0.0, 0.0, 3.5]);
        let mut dx = [9.0; 3];
        relu_backward(&[1.0, 2.0, 3.0], &x, &mut dx);
        assert_eq!(dx, [0.0, 0.0, 3.0]);
    }

    #[test]
    fn backward_matches_finite_differences() {
        // d/dx Σ w·relu(x) away from the kink.
        let x = [-1.3f64, -0.2, 0.4, 2.0];
        let w = [0.5f64, -1.0, 2.0, 3.0];
        let f = |x: &[f64]| x.iter().zip(&w).map(|(v, c)| v.max(0.0) * c).sum::<f64>();
        let y: Vec<f32> = x.iter().map(|v| v.max(0.0) as f32).collect();
        let dy: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        let mut dx = [0.0f32; 4];
        relu_backward(&dy, &y, &mut dx);
        assert_matches_central_differences("dx", &dx, 1e-6, |i, d| {
            let mut moved = x;
            moved[i] += d;
            f(&moved)
        });
    }
}
