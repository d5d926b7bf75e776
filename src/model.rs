//! The model definition: architecture, hyper-parameters, and the parameter tensors.
//!
//! All trainable tensors live in one flat `Vec<f32>` (see [`ParamLayout`]) so that the
//! Adam update is a single pass over one buffer on both the CPU and the GPU. Every
//! tensor starts at a multiple of [`TENSOR_ALIGN`] floats: the GPU binds sub-ranges of
//! the flat buffer, and wgpu requires 256-byte aligned binding offsets. The padding is
//! always zero and stays zero (its gradient is zero, so Adam never moves it).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::ops::Range;

/// Pixels per MNIST image (28 × 28), the model's input width.
pub const INPUT: usize = 784;
/// Digit classes, the model's output width.
pub const CLASSES: usize = 10;
/// Alignment of each tensor inside the flat parameter buffer, in f32 elements (256 bytes).
pub const TENSOR_ALIGN: usize = 64;

/// The architecture: Flatten → BatchNorm(784) → [Dense(h, ReLU)]* → Dense(10, softmax).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Widths of the hidden Dense+ReLU layers, in order (default `[128]`).
    pub hidden: Vec<usize>,
    /// Feed pixels as 0..255 (the Keras tutorial) instead of scaling them to [0, 1].
    pub raw_pixels: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            hidden: vec![128],
            raw_pixels: false,
        }
    }
}

/// Largest model accepted (trainable parameters).
pub const MAX_PARAMS: usize = 100_000_000;

impl ModelConfig {
    /// Widths of every activation: `[784, hidden..., 10]`.
    pub fn widths(&self) -> Vec<usize> {
        let mut widths = vec![INPUT];
        widths.extend(&self.hidden);
        widths.push(CLASSES);
        widths
    }

    /// Trainable parameters (BatchNorm γ, β and every kernel and bias), `None` on overflow.
    pub fn parameter_count(&self) -> Option<usize> {
        self.widths().windows(2).try_fold(2 * INPUT, |acc, w| {
            w[0].checked_mul(w[1])
                .and_then(|k| k.checked_add(w[1]))
                .and_then(|n| acc.checked_add(n))
        })
    }

    /// Refuse models too large to train here (more than [`MAX_PARAMS`] parameters: the
    /// parameters, gradients and Adam's two moments would need over 1.6 GB).
    pub fn check_size(&self) -> Result<(), String> {
        match self.parameter_count() {
            Some(n) if n <= MAX_PARAMS => Ok(()),
            count => Err(format!(
                "hidden layers {:?} give {} trainable parameters; at most {MAX_PARAMS} are supported",
                self.hidden,
                count.map_or("too many".to_string(), |n| n.to_string())
            )),
        }
    }

    /// Number of Dense layers (hidden layers plus the output layer).
    pub fn dense_layers(&self) -> usize {
        self.hidden.len() + 1
    }

    /// Factor applied to the u8 pixel values before the BatchNorm layer.
    pub fn pixel_scale(&self) -> f32 {
        if self.raw_pixels {
            1.0
        } else {
            1.0 / 255.0
        }
    }

    /// Human-readable summary, e.g. `784 → BN → 128 (ReLU) → 10 (softmax)`.
    pub fn describe(&self) -> String {
        let mut text = format!("{INPUT} → BatchNorm");
        for h in &self.hidden {
            text.push_str(&format!(" → Dense {h} (ReLU)"));
        }
        text.push_str(&format!(" → Dense {CLASSES} (softmax)"));
        text
    }
}

/// Optimiser and batch-norm hyper-parameters (Keras defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct Hyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// Adam's epsilon (Keras: 1e-7, added to sqrt(v)).
    pub adam_eps: f32,
    /// BatchNorm epsilon (Keras: 1e-3, added to the variance).
    pub bn_eps: f32,
    /// BatchNorm moving-average momentum (Keras: 0.99).
    pub bn_momentum: f32,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            adam_eps: 1e-7,
            bn_eps: 1e-3,
            bn_momentum: 0.99,
        }
    }
}

impl Hyper {
    /// Adam's step size with bias correction for update number `step` (1-based):
    /// `lr · sqrt(1 − β2^t) / (1 − β1^t)`. The CPU computes it per step; the GPU trainer
    /// uploads an epoch's worth at its start.
    pub fn adam_alpha(&self, step: u64) -> f32 {
        let t = step as f32;
        self.lr * (1.0 - self.beta2.powf(t)).sqrt() / (1.0 - self.beta1.powf(t))
    }
}

/// Where each trainable tensor lives inside the flat parameter vector.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    pub gamma: Range<usize>,
    pub beta: Range<usize>,
    /// Dense kernels, Keras layout `[in, out]` row-major.
    pub kernels: Vec<Range<usize>>,
    pub biases: Vec<Range<usize>>,
    /// Total length including padding.
    pub total: usize,
}

impl ParamLayout {
    pub fn new(config: &ModelConfig) -> Self {
        let mut next = 0usize;
        let mut take = |len: usize| {
            let start = next;
            next = (start + len).div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN;
            start..start + len
        };
        let gamma = take(INPUT);
        let beta = take(INPUT);
        let widths = config.widths();
        let mut kernels = Vec::new();
        let mut biases = Vec::new();
        for pair in widths.windows(2) {
            kernels.push(take(pair[0] * pair[1]));
            biases.push(take(pair[1]));
        }
        ParamLayout {
            gamma,
            beta,
            kernels,
            biases,
            total: next,
        }
    }

    /// Every tensor with its name and shape, in a fixed order (Keras shapes).
    pub fn named(&self, config: &ModelConfig) -> Vec<(String, Vec<usize>, Range<usize>)> {
        let widths = config.widths();
        let mut named = vec![
            (
                "batchnorm.gamma".to_string(),
                vec![INPUT],
                self.gamma.clone(),
            ),
            ("batchnorm.beta".to_string(), vec![INPUT], self.beta.clone()),
        ];
        for (l, (k, b)) in self.kernels.iter().zip(&self.biases).enumerate() {
            named.push((
                format!("dense{l}.kernel"),
                vec![widths[l], widths[l + 1]],
                k.clone(),
            ));
            named.push((format!("dense{l}.bias"), vec![widths[l + 1]], b.clone()));
        }
        named
    }
}

/// All model state: trainable parameters (flat) and the BatchNorm moving statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub config: ModelConfig,
    pub layout: ParamLayout,
    pub trainable: Vec<f32>,
    pub moving_mean: Vec<f32>,
    pub moving_var: Vec<f32>,
}

impl Params {
    /// Keras initialisation: gamma 1, beta 0, Glorot-uniform kernels, zero biases,
    /// moving mean 0 and moving variance 1. Deterministic for a given seed.
    pub fn init(config: &ModelConfig, seed: u64) -> Self {
        let layout = ParamLayout::new(config);
        let mut trainable = vec![0.0f32; layout.total];
        trainable[layout.gamma.clone()].fill(1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // A separate stream from the shuffling RNG, so changing one never changes the other.
        rng.set_stream(1);
        let widths = config.widths();
        for (l, kernel) in layout.kernels.iter().enumerate() {
            let (fan_in, fan_out) = (widths[l] as f32, widths[l + 1] as f32);
            let limit = (6.0 / (fan_in + fan_out)).sqrt();
            for w in &mut trainable[kernel.clone()] {
                *w = rng.random_range(-limit..limit);
            }
        }
        Params {
            config: config.clone(),
            layout,
            trainable,
            moving_mean: vec![0.0; INPUT],
            moving_var: vec![1.0; INPUT],
        }
    }

    pub fn gamma(&self) -> &[f32] {
        &self.trainable[self.layout.gamma.clone()]
    }
    pub fn beta(&self) -> &[f32] {
        &self.trainable[self.layout.beta.clone()]
    }
    pub fn kernel(&self, layer: usize) -> &[f32] {
        &self.trainable[self.layout.kernels[layer].clone()]
    }
    pub fn bias(&self, layer: usize) -> &[f32] {
        &self.trainable[self.layout.biases[layer].clone()]
    }
}

/// Adam's state: first and second moments (same layout as the parameters) and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimState {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Number of Adam updates applied so far.
    pub step: u64,
}

impl OptimState {
    pub fn new(len: usize) -> Self {
        OptimState {
            m: vec![0.0; len],
            v: vec![0.0; len],
            step: 0,
        }
    }
}

/// Parse a `--hidden` list such as `128` or `256,128`: comma-separated positive widths.
pub fn parse_hidden(text: &str) -> Result<Vec<usize>, String> {
    if text.trim().is_empty() {
        return Err("expected a comma-separated list of layer widths such as 128 or 256,128, got an empty value".into());
    }
    text.split(',')
        .map(|part| {
            let part = part.trim();
            match part.parse::<usize>() {
                Ok(0) => Err("layer widths must be at least 1, got 0".to_string()),
                Ok(width) if width > 65_536 => {
                    Err(format!("layer width {width} is too large (at most 65536)"))
                }
                Ok(width) => Ok(width),
                Err(_) if part.is_empty() => Err(format!(
                    "empty layer width in '{text}' (expected e.g. 256,128)"
                )),
                Err(_) => Err(format!(
                    "'{part}' is not a layer width (expected e.g. 256,128)"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_complete() {
        let config = ModelConfig {
            hidden: vec![129, 33],
            raw_pixels: false,
        };
        let layout = ParamLayout::new(&config);
        let named = layout.named(&config);
        assert_eq!(named.len(), 2 + 2 * 3);
        for (_, shape, range) in &named {
            assert_eq!(range.start % TENSOR_ALIGN, 0);
            assert_eq!(range.len(), shape.iter().product::<usize>());
        }
        assert_eq!(named[2].1, vec![784, 129]);
        assert_eq!(named[7].1, vec![10]);
    }

    #[test]
    fn init_is_keras_like_and_seeded() {
        let config = ModelConfig::default();
        let p = Params::init(&config, 7);
        assert!(p.gamma().iter().all(|&g| g == 1.0) && p.beta().iter().all(|&b| b == 0.0));
        let limit = (6.0f32 / (784.0 + 128.0)).sqrt();
        assert!(p.kernel(0).iter().all(|w| w.abs() <= limit));
        assert!(p.kernel(0).iter().any(|w| w.abs() > limit * 0.9));
        assert!(p.bias(0).iter().all(|&b| b == 0.0));
        assert_eq!(p, Params::init(&config, 7));
        assert_ne!(p.trainable, Params::init(&config, 8).trainable);
    }

    #[test]
    fn hidden_lists() {
        assert_eq!(parse_hidden("128"), Ok(vec![128]));
        assert_eq!(parse_hidden("256, 128"), Ok(vec![256, 128]));
        for bad in ["", "0", "abc", "128,,64", "12,-3"] {
            assert!(parse_hidden(bad).is_err(), "{bad}");
        }
    }
}
