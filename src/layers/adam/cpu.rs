//! Adam, exactly as Keras 3 writes it. GPU twin: `adam.wgsl` beside it.

use crate::model::Hyper;

/// Parameters per task below which the update is never split further over the rayon pool
/// (a task then takes about 1 µs).
const MIN_CHUNK: usize = 1 << 13;

/// One update of every parameter: `m += (g − m)(1 − β1)`, `v += (g² − v)(1 − β2)`,
/// `p −= alpha · m / (sqrt(v) + ε)`, with `alpha` from [`Hyper::adam_alpha`]. Elementwise, so
/// splitting it over threads changes no result.
pub fn adam_update(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    alpha: f32,
    hyper: &Hyper,
) {
    assert!(params.len() == grads.len() && m.len() == grads.len() && v.len() == grads.len());
    // An equal part for each thread: two tasks on two threads, a dozen on 16 for the
    // default model's 103,338 parameters (the fixed 32,768 before left 16 cores 4 tasks).
    let chunk = MIN_CHUNK.max(params.len().div_ceil(rayon::current_num_threads()));
    update(
        Slices {
            params,
            grads,
            m,
            v,
        },
        AdamStep::new(alpha, hyper),
        chunk,
    );
}

/// One step's constants of [`adam_update`]: the step size and the moments' rates.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    alpha: f32,
    one_minus_b1: f32,
    one_minus_b2: f32,
    eps: f32,
}

impl AdamStep {
    /// The update with step size `alpha` (from [`Hyper::adam_alpha`]) and `hyper`'s rates.
    pub fn new(alpha: f32, hyper: &Hyper) -> Self {
        AdamStep {
            alpha,
            one_minus_b1: 1.0 - hyper.beta1,
            one_minus_b2: 1.0 - hyper.beta2,
            eps: hyper.adam_eps,
        }
    }
}

/// [`adam_update`] of one run of parameters on the calling thread, inlined into its
/// callers (each compiled for its own SIMD width; the same bits on every target). A
/// fused caller updates rows as it finishes their gradients, while they are in cache.
#[inline(always)]
pub fn adam_run(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], step: AdamStep) {
    let AdamStep {
        alpha,
        one_minus_b1,
        one_minus_b2,
        eps,
    } = step;
    for (((p, &g), m), v) in params
        .iter_mut()
        .zip(grads)
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        *m += (g - *m) * one_minus_b1;
        *v += (g * g - *v) * one_minus_b2;
        *p -= alpha * *m / (v.sqrt() + eps);
    }
}

/// What one update runs over: the parameters, their gradients and Adam's two moments, of
/// equal length.
struct Slices<'a> {
    params: &'a mut [f32],
    grads: &'a [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
}

impl<'a> Slices<'a> {
    /// The first `at` elements of each, and the rest.
    fn split(self, at: usize) -> (Slices<'a>, Slices<'a>) {
        let (params, params_rest) = self.params.split_at_mut(at);
        let (grads, grads_rest) = self.grads.split_at(at);
        let (m, m_rest) = self.m.split_at_mut(at);
        let (v, v_rest) = self.v.split_at_mut(at);
        let rest = Slices {
            params: params_rest,
            grads: grads_rest,
            m: m_rest,
            v: v_rest,
        };
        (
            Slices {
                params,
                grads,
                m,
                v,
            },
            rest,
        )
    }
}

/// [`adam_update`] split in halves over the rayon pool down to `chunk` parameters.
fn update(slices: Slices, step: AdamStep, chunk: usize) {
    let len = slices.params.len();
    if len > chunk {
        let (first, second) = slices.split(len / 2);
        rayon::join(
            || update(first, step, chunk),
            || update(second, step, chunk),
        );
        return;
    }
    update_serial(slices, step);
}

/// The single-threaded body of [`adam_update`], also compiled for AVX2 and AVX and picked
/// at run time: 8-wide `sqrt` and division instead of SSE's 4. Same bits on every target.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "x86_64+avx"
))]
fn update_serial(slices: Slices, step: AdamStep) {
    let Slices {
        params,
        grads,
        m,
        v,
    } = slices;
    adam_run(params, grads, m, v, step);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_parameter_by_about_lr() {
        // With bias correction the first Adam step is lr·g/(|g| + ε/sqrt(1−β2)) ≈ lr·sign(g).
        let hyper = Hyper::default();
        let mut p = [1.0f32, -2.0, 0.5];
        let (mut m, mut v) = ([0.0; 3], [0.0; 3]);
        adam_update(
            &mut p,
            &[0.5, -3.0, 0.0],
            &mut m,
            &mut v,
            hyper.adam_alpha(1),
            &hyper,
        );
        assert!((p[0] - 0.999).abs() < 1e-6, "{}", p[0]);
        assert!((p[1] + 1.999).abs() < 1e-6, "{}", p[1]);
        assert_eq!(p[2], 0.5);
        assert!((m[0] - 0.05).abs() < 1e-7 && (v[0] - 0.00025).abs() < 1e-8);
    }

    #[test]
    fn two_steps_by_hand() {
        let hyper = Hyper {
            lr: 0.1,
            ..Hyper::default()
        };
        let mut p = [0.0f32];
        let (mut m, mut v) = ([0.0f32], [0.0f32]);
        adam_update(&mut p, &[1.0], &mut m, &mut v, hyper.adam_alpha(1), &hyper);
        adam_update(&mut p, &[2.0], &mut m, &mut v, hyper.adam_alpha(2), &hyper);
        // Step 2 by hand in f64: m = 0.1·0.9 + 0.2 = 0.29, v = 0.001·0.999 + 0.004 = 0.004999,
        // alpha = 0.1·sqrt(1−0.999²)/(1−0.81).
        let m2 = 0.29f64;
        let v2 = 0.004999f64;
        let alpha2 = 0.1 * (1.0 - 0.999f64.powi(2)).sqrt() / (1.0 - 0.81);
        let step1 = 0.1 * (1.0 - 0.999f64).sqrt() / 0.1 * 0.1 / (0.001f64.sqrt() + 1e-7);
        let expect = -step1 - alpha2 * m2 / (v2.sqrt() + 1e-7);
        assert!((p[0] as f64 - expect).abs() < 1e-5, "{} vs {expect}", p[0]);
    }
}
