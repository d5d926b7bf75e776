//! Softmax + sparse categorical cross-entropy, computed stably from logits with
//! log-sum-exp. GPU twin: `softmax_xent.wgsl` beside it.

/// Sum over the batch of `−log softmax(logits)[label]`, the number of rows whose argmax
/// (first maximum) equals the label, and optionally the gradient of the MEAN loss,
/// `(softmax − onehot) / batch`, and the predicted classes.
pub fn softmax_xent(
    logits: &[f32],
    labels: &[u8],
    classes: usize,
    mut grad: Option<&mut [f32]>,
    mut predictions: Option<&mut [u8]>,
) -> (f32, u32) {
    let batch = labels.len();
    assert_eq!(logits.len(), batch * classes);
    let inv_batch = 1.0 / batch as f32;
    let mut loss_sum = 0.0f32;
    let mut correct = 0u32;
    for (b, row) in logits.chunks_exact(classes).enumerate() {
        let label = labels[b] as usize;
        let (argmax, max) =
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                });
        let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
        loss_sum += max + sum.ln() - row[label];
        correct += (argmax == label) as u32;
        if let Some(grad) = grad.as_deref_mut() {
            let g = &mut grad[b * classes..(b + 1) * classes];
            for (i, (gi, &v)) in g.iter_mut().zip(row).enumerate() {
                let p = (v - max).exp() / sum;
                *gi = (p - (i == label) as u32 as f32) * inv_batch;
            }
        }
        if let Some(predictions) = predictions.as_deref_mut() {
            predictions[b] = argmax as u8;
        }
    }
    (loss_sum, correct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::gradcheck::assert_matches_central_differences;

    #[test]
    fn by_hand() {
        // Row 0: logits [0, ln 3] → p = [1/4, 3/4], label 1 → loss ln(4/3), correct.
        // Row 1: logits [0, 0] → p = [1/2, 1/2], label 1 → loss ln 2, argmax 0 (first max), wrong.
        let logits = [0.0, 3.0f32.ln(), 0.0, 0.0];
        let mut grad = [0.0; 4];
        let mut preds = [9u8; 2];
        let (loss, correct) = softmax_xent(&logits, &[1, 1], 2, Some(&mut grad), Some(&mut preds));
        assert!((loss - ((4.0f32 / 3.0).ln() + 2.0f32.ln())).abs() < 1e-6);
        assert_eq!(correct, 1);
        assert_eq!(preds, [1, 0]);
        let expect = [0.125, -0.125, 0.25, -0.25];
        for (g, e) in grad.iter().zip(expect) {
            assert!((g - e).abs() < 1e-7);
        }
    }

    #[test]
    fn huge_logits_stay_finite() {
        let (loss, _) = softmax_xent(&[1000.0, -1000.0, 0.0], &[2], 3, None, None);
        assert!((loss - 1000.0).abs() < 1e-3);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let logits: Vec<f64> = vec![0.3, -1.2, 2.0, 0.7, 0.1, -0.4, 1.1, 0.0];
        let labels = [2u8, 0];
        let classes = 4;
        let mean_loss = |l: &[f64]| -> f64 {
            l.chunks(classes)
                .zip(labels)
                .map(|(row, y)| {
                    let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
                    lse - row[y as usize]
                })
                .sum::<f64>()
                / labels.len() as f64
        };
        let l32: Vec<f32> = logits.iter().map(|&v| v as f32).collect();
        let mut grad = vec![0.0; logits.len()];
        softmax_xent(&l32, &labels, classes, Some(&mut grad), None);
        assert_matches_central_differences("grad", &grad, 1e-6, |i, d| {
            let mut moved = logits.clone();
            moved[i] += d;
            mean_loss(&moved)
        });
    }
}
