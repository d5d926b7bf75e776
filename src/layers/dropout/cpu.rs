//! Dropout, the CPU reference: inverted dropout (Keras' `Dropout(rate)` in training: each
//! value is dropped with probability `rate`, the kept ones scaled by `1/(1 − rate)`, so
//! evaluation is the identity). GPU twin: `dropout.wgsl` beside it.
//!
//! Which values drop is not drawn from a random stream but computed: a counter-based
//! hash of (the run's seed, the training step, the value's index in the batch), written
//! once here and once in WGSL with the same 32-bit integer operations. So the CPU and
//! every GPU drop the same values, the backward finds the forward's mask again without
//! storing it, and a resumed run drops what the uninterrupted one would.

use rayon::prelude::*;

/// The PCG hash of one 32-bit word (Jarzynski and Olano, "Hash Functions for GPU
/// Rendering", JCGT 2020): a PCG step and its output permutation.
#[inline(always)]
pub fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// The seed of a model's `rank`-th dropout layer (0 for the first) in a run seeded
/// `seed`: the run's seed for the first, each later one mixed with its rank, so that two
/// dropout layers do not drop the same positions at every step.
pub fn layer_seed(seed: u32, rank: usize) -> u32 {
    match rank {
        0 => seed,
        _ => seed ^ pcg(rank as u32),
    }
}

/// The hash deciding value `index` of step `step` in a run seeded `seed`.
pub fn dropout_hash(seed: u32, step: u32, index: u32) -> u32 {
    pcg(index.wrapping_add(step_key(seed, step)))
}

/// The part of [`dropout_hash`] that all of a step's values share.
fn step_key(seed: u32, step: u32) -> u32 {
    pcg(step.wrapping_add(pcg(seed)))
}

/// Which values a step drops, and how the kept ones are scaled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropMask {
    pub seed: u32,
    /// The global step. The GPU kernel takes it in two parts: a base in its uniform,
    /// plus the trainer's step counter (see `Pipelines::apply`).
    pub step: u32,
    /// A value is kept when its hash is at least this: `rate · 2³²`, rounded.
    pub threshold: u32,
    /// `1/(1 − rate)`, as f32 (the same f32 on every device).
    pub scale: f32,
}

impl DropMask {
    /// The mask of step `step` of a run seeded `seed`, for a rate in `[0, 1)`.
    pub fn new(rate: f32, seed: u32, step: u32) -> Self {
        assert!(
            (0.0..1.0).contains(&rate),
            "dropout rate {rate} is not in [0, 1)"
        );
        let threshold = (rate as f64 * 4_294_967_296.0).round() as u32;
        DropMask {
            seed,
            step,
            threshold,
            scale: 1.0 / (1.0 - rate),
        }
    }
}

/// `out = x · scale` where kept, 0 where dropped: the forward (`x` the input, `out` the
/// output) and the backward (`x` the output gradient, `out` the input gradient) are the
/// same product.
pub fn dropout_apply(x: &[f32], mask: &DropMask, out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    let key = step_key(mask.seed, mask.step);
    // Each value's hash depends only on its index: chunks run on any thread alike.
    const CHUNK: usize = 1 << 14;
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (out, x))| apply_chunk(x, mask, (key, (c * CHUNK) as u32), out));
}

/// [`dropout_apply`] on the values from index `first`, with the step's hash key. Also
/// compiled for AVX2 and AVX-512 and picked at run time (`multiversion`): the hash's
/// per-value shift needs AVX2 to run 8 values at a time. Integer arithmetic and one
/// multiplication: the same bits on every target.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "x86_64+avx"
))]
fn apply_chunk(x: &[f32], mask: &DropMask, (key, first): (u32, u32), out: &mut [f32]) {
    for (i, (o, &v)) in (first..).zip(out.iter_mut().zip(x)) {
        let kept = pcg(i.wrapping_add(key)) >= mask.threshold;
        *o = if kept { v * mask.scale } else { 0.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dropout_layer_has_its_own_mask() {
        assert_eq!(layer_seed(42, 0), 42);
        let x = vec![1.0f32; 4096];
        let masks: Vec<Vec<f32>> = (0..3)
            .map(|rank| {
                let mut out = vec![0.0; x.len()];
                dropout_apply(&x, &DropMask::new(0.5, layer_seed(42, rank), 7), &mut out);
                out
            })
            .collect();
        assert!(masks[0] != masks[1] && masks[1] != masks[2] && masks[0] != masks[2]);
    }

    #[test]
    fn drops_about_the_rate_and_scales_the_rest() {
        let n = 100_000;
        let x = vec![1.0f32; n];
        let mut y = vec![0.0; n];
        dropout_apply(&x, &DropMask::new(0.5, 42, 7), &mut y);
        let kept = y.iter().filter(|&&v| v != 0.0).count();
        assert!(
            (kept as f64 / n as f64 - 0.5).abs() < 0.01,
            "{kept} of {n} kept"
        );
        assert!(y.iter().all(|&v| v == 0.0 || v == 2.0));
    }

    #[test]
    fn masks_differ_by_seed_and_step_and_repeat_exactly() {
        let mask = |seed, step| -> Vec<f32> {
            let mut kept = vec![0.0; 256];
            dropout_apply(&[1.0; 256], &DropMask::new(0.5, seed, step), &mut kept);
            kept
        };
        assert_eq!(mask(1, 2), mask(1, 2));
        assert_ne!(mask(1, 2), mask(1, 3));
        assert_ne!(mask(1, 2), mask(2, 2));
    }

    #[test]
    fn rate_zero_keeps_everything_unscaled() {
        let x = [1.0, -2.0, 3.5];
        let mut y = [0.0; 3];
        dropout_apply(&x, &DropMask::new(0.0, 9, 9), &mut y);
        assert_eq!(y, x);
    }

    /// Pinned: a change here would change which values every run drops, and a run
    /// resumed from an older checkpoint would not continue the same way.
    #[test]
    fn the_hash_is_pinned() {
        assert_eq!((pcg(0), pcg(1)), (129_708_002, 2_831_084_092));
        let hashes = [0, 1, 2].map(|i| dropout_hash(42, 7, i));
        assert_eq!(hashes, [1_526_948_790, 2_774_405_599, 2_014_077_293]);
    }
}
