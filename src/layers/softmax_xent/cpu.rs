//! Softmax + sparse categorical cross-entropy, computed stably from logits with
//! log-sum-exp. GPU twin: `softmax_xent.wgsl` beside it.

use rayon::prelude::*;

/// Batches from this size on split their rows over the rayon pool (below it, a fork
/// costs more than the rows).
const PARALLEL_MIN_ROWS: usize = 64;
/// Rows per task when split.
const ROWS_PER_TASK: usize = 128;

/// Sum over the batch of `−log softmax(logits)[label]`, the number of rows whose argmax
/// (first maximum) equals the label, and optionally the gradient of the MEAN loss,
/// `(softmax − onehot) / batch`, and the predicted classes. Rows are independent, so a
/// large batch splits them over threads; the loss is summed in row order afterwards,
/// the same sum whatever the split.
pub fn softmax_xent(
    logits: &[f32],
    labels: &[u8],
    classes: usize,
    grad: Option<&mut [f32]>,
    predictions: Option<&mut [u8]>,
) -> (f32, u32) {
    let batch = labels.len();
    assert_eq!(logits.len(), batch * classes);
    assert!(classes <= 256, "classes are stored as bytes");
    let rows = Rows {
        classes,
        inv_batch: 1.0 / batch as f32,
    };
    let mut terms = vec![0.0f32; batch];
    let mut argmaxes = vec![0u8; batch];
    let split = batch >= PARALLEL_MIN_ROWS && rayon::current_num_threads() > 1;
    let per_task = if split {
        ROWS_PER_TASK.min(batch.div_ceil(rayon::current_num_threads()))
    } else {
        batch.max(1)
    };
    let tasks = logits
        .par_chunks(per_task * classes)
        .zip(labels.par_chunks(per_task))
        .zip(terms.par_chunks_mut(per_task))
        .zip(argmaxes.par_chunks_mut(per_task));
    match grad {
        Some(grad) => tasks
            .zip(grad.par_chunks_mut(per_task * classes))
            .for_each(|((((x, y), t), a), g)| rows.run((x, y), (t, a), Some(g))),
        None => tasks.for_each(|(((x, y), t), a)| rows.run((x, y), (t, a), None)),
    }
    let mut loss_sum = 0.0f32;
    for &term in &terms {
        loss_sum += term;
    }
    let correct = argmaxes.iter().zip(labels).filter(|(a, y)| a == y).count() as u32;
    if let Some(predictions) = predictions {
        predictions.copy_from_slice(&argmaxes);
    }
    (loss_sum, correct)
}

/// What every row of one [`softmax_xent`] shares.
#[derive(Clone, Copy)]
struct Rows {
    classes: usize,
    inv_batch: f32,
}

impl Rows {
    /// Rows `logits` with their `labels`: each row's loss term and argmax, and its
    /// gradient into `grad` when given.
    fn run(
        self,
        (logits, labels): (&[f32], &[u8]),
        (terms, argmaxes): (&mut [f32], &mut [u8]),
        mut grad: Option<&mut [f32]>,
    ) {
        let classes = self.classes;
        // Without a gradient to write, the row's exponentials wait here.
        let mut scratch = [0.0f32; 256];
        let training = grad.is_some();
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
            argmaxes[b] = argmax as u8;
            // The gradient row (or the scratch) holds the exponentials until their sum is
            // known: each is computed once (the exponentials are most of a row's time).
            let exps = match grad.as_deref_mut() {
                Some(grad) => &mut grad[b * classes..(b + 1) * classes],
                None => &mut scratch[..classes],
            };
            let mut sum = 0.0f32;
            for (e, &v) in exps.iter_mut().zip(row) {
                *e = (v - max).exp();
                sum += *e;
            }
            terms[b] = max + sum.ln() - row[label];
            if training {
                for (i, g) in exps.iter_mut().enumerate() {
                    *g = (*g / sum - (i == label) as u32 as f32) * self.inv_batch;
                }
            }
        }
    }
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

    /// A batch large enough to be split over threads gives the bits of one pass over
    /// its rows in order, on a pool of 2 and of 3 threads.
    #[test]
    fn a_split_batch_gives_the_bits_of_one_pass() {
        // 100 rows: two tasks of 50 on 2 threads; 1000: tasks of 128.
        for batch in [100, 1000] {
            check_split_bits(batch);
        }
    }

    /// [`softmax_xent`] on `batch` rows gives the same bits on pools of 1, 2 and 3 threads,
    /// and the same loss without the gradient as with it.
    fn check_split_bits(batch: usize) {
        let classes = 10;
        let logits: Vec<f32> = (0..batch * classes)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
            .collect();
        let labels: Vec<u8> = (0..batch).map(|b| (b * 31 % classes) as u8).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (mut grad, mut preds) = (vec![0.0; batch * classes], vec![0u8; batch]);
            let (loss, correct) = pool.install(|| {
                softmax_xent(&logits, &labels, classes, Some(&mut grad), Some(&mut preds))
            });
            let (loss_alone, _) =
                pool.install(|| softmax_xent(&logits, &labels, classes, None, None));
            assert_eq!(loss_alone.to_bits(), loss.to_bits(), "batch {batch}");
            let grad_bits: Vec<u32> = grad.iter().map(|g| g.to_bits()).collect();
            (loss.to_bits(), correct, grad_bits, preds)
        };
        let one_pass = run(1);
        assert_eq!(run(2), one_pass, "batch {batch}");
        assert_eq!(run(3), one_pass, "batch {batch}");
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
