//! Test support for the kernels' unit tests: an analytic gradient against central
//! differences of the same loss computed in f64.

/// Asserts that every `analytic[i]` is within `tol` of the central difference
/// `(loss_at(i, h) − loss_at(i, −h)) / 2h` with `h = 1e-6`, where `loss_at(i, d)` is the
/// loss with input `i` moved by `d`. `what` names the gradient in the failure message.
pub fn assert_matches_central_differences(
    what: &str,
    analytic: &[f32],
    tol: f64,
    loss_at: impl Fn(usize, f64) -> f64,
) {
    let h = 1e-6;
    for (i, &a) in analytic.iter().enumerate() {
        let numeric = (loss_at(i, h) - loss_at(i, -h)) / (2.0 * h);
        assert!(
            (numeric - a as f64).abs() < tol,
            "{what}[{i}]: {numeric} vs {a}"
        );
    }
}
