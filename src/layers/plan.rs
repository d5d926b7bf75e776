//! What a trainer runs for a model's layer list: each layer as a [`LayerOp`] with its
//! shapes (what the layer paths, `cpu/stack.rs` and the GPU's `backend/layers.rs`,
//! walk), and which fusions apply ([`Fusions`]: the MLP's fused path, and the CPU layer
//! path's first convolution). Each fusion is an optimisation of a pattern of consecutive
//! layers, never the architecture: the layers run unfused when its rule does not match
//! (or when a test turns it off), and each is tested against the unfused layers
//! (`tests/fusions.rs`).
//!
//! | fusion | rule | what it saves |
//! | --- | --- | --- |
//! | `relu_in_gemm` | Dense followed by ReLU | the ReLU in the GEMM's epilogue, its backward as the mask of the input-grad GEMM below it: two elementwise passes a hidden layer |
//! | `batchnorm_dense_backward` | BatchNorm on the pixels, then Dense | BatchNorm's gradients and the dense kernel's from `xhatᵀ·δ` alone (`batchnorm::cpu::batchnorm_dense_backward`): no input-grad GEMM for the first dense layer |
//! | `sparse_first_layer` (CPU) | BatchNorm on the pixels, then Dense, on data at most half nonzero | BatchNorm folded into the dense layer, its forward and backward over the nonzero pixels only (`cpu/sparse.rs`); evaluation's forward too, with the moving statistics (on test sets as sparse) |
//! | `adam_in_backward` (CPU, on more than one thread) | `sparse_first_layer` | Adam's update of the first dense kernel (97% of the MLP's parameters) row by row inside the sparse backward pass, as each row's gradient is done: the row and its gradient are still in cache on the thread that computed them, and a step has one fork and join fewer (`cpu::sparse::Kernel::Update`; when the pass splits over threads, since on one thread the sweep measured faster); the other parameters get the usual sweep |
//! | `pool_into_first_conv` (CPU) | Conv2D on the pixels, then MaxPool2D | the convolution pooled where it is computed (`conv2d::cpu::conv2d_forward_pooled`) and its weight gradient straight from the pool's gradients (`conv2d_weight_grad_pooled`): the output and gradient between them (11 MB each a step for the convnet) are never written |

use crate::layers::conv2d::ConvShape;
use crate::layers::maxpool2d::PoolShape;
use crate::model::{Activation, LayerSpec, ModelConfig, ParamLayout, INPUT};

/// The fusions a trainer runs (or may run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fusions {
    pub relu_in_gemm: bool,
    pub batchnorm_dense_backward: bool,
    pub sparse_first_layer: bool,
    pub pool_into_first_conv: bool,
    pub adam_in_backward: bool,
}

impl Fusions {
    /// Every fusion, where its rule matches: what the trainers run.
    pub const ALL: Fusions = Fusions {
        relu_in_gemm: true,
        batchnorm_dense_backward: true,
        sparse_first_layer: true,
        pool_into_first_conv: true,
        adam_in_backward: true,
    };

    /// None: every layer on its own kernels, the reference the fusions are tested against.
    pub const NONE: Fusions = Fusions {
        relu_in_gemm: false,
        batchnorm_dense_backward: false,
        sparse_first_layer: false,
        pool_into_first_conv: false,
        adam_in_backward: false,
    };

    /// The fusions of `allowed` whose rules match `config`'s layer list.
    pub fn plan(config: &ModelConfig, allowed: Fusions) -> Fusions {
        let layers = &config.layers;
        let pixels_then_dense = matches!(
            layers.as_slice(),
            [LayerSpec::BatchNorm, LayerSpec::Dense { .. }, ..]
        );
        let dense_then_relu = layers
            .iter()
            .any(|layer| matches!(layer, LayerSpec::Dense { relu: true, .. }));
        let conv_then_pool = matches!(
            layers.as_slice(),
            [LayerSpec::Conv2d { .. }, LayerSpec::MaxPool2d { .. }, ..]
        );
        Fusions {
            pool_into_first_conv: allowed.pool_into_first_conv && conv_then_pool,
            relu_in_gemm: allowed.relu_in_gemm && dense_then_relu,
            batchnorm_dense_backward: allowed.batchnorm_dense_backward && pixels_then_dense,
            sparse_first_layer: allowed.sparse_first_layer && pixels_then_dense,
            adam_in_backward: allowed.adam_in_backward
                && allowed.sparse_first_layer
                && pixels_then_dense,
        }
    }
}

/// One layer as the trainers' general paths (`cpu/stack.rs`, the GPU's layer path) run
/// it, with the shapes of its input and, for a conv2d layer, its tensors' offsets.
#[derive(Clone, Copy, Debug)]
pub enum LayerOp {
    /// On the pixels (the first layer only).
    BatchNorm,
    /// Weighted layer `w`: `inputs` values to `units`.
    Dense {
        w: usize,
        inputs: usize,
        units: usize,
        relu: bool,
    },
    /// Weighted layer `w`, its kernel and bias at `shape`'s offsets; `shape.batch` is
    /// set per call.
    Conv {
        w: usize,
        shape: ConvShape,
        relu: bool,
    },
    /// `shape.batch` is set per call.
    Pool {
        shape: PoolShape,
    },
    Flatten,
    /// The `rank`-th dropout layer of the model (from 0), which sets its masks' seed
    /// (`dropout::cpu::layer_seed`).
    Dropout {
        rate: f32,
        rank: usize,
    },
}

impl LayerOp {
    /// The stack's operations for `config`'s layers.
    pub fn plan(config: &ModelConfig) -> Vec<LayerOp> {
        let layout = ParamLayout::new(config);
        let (mut weighted, mut dropouts) = (0, 0);
        let mut ops = Vec::with_capacity(config.layers.len());
        for (spec, input) in config.layers.iter().zip(config.layer_inputs()) {
            let image = match input {
                Activation::Image {
                    channels,
                    height,
                    width,
                } => (channels, (height, width)),
                Activation::Flat(n) => (n, (1, 1)),
            };
            let op = match *spec {
                LayerSpec::BatchNorm => LayerOp::BatchNorm,
                LayerSpec::Dense { units, relu } => LayerOp::Dense {
                    w: weighted,
                    inputs: input.values(),
                    units,
                    relu,
                },
                LayerSpec::Conv2d {
                    filters,
                    size,
                    relu,
                } => LayerOp::Conv {
                    w: weighted,
                    shape: ConvShape {
                        kernel_off: layout.kernels[weighted].start,
                        bias_off: layout.biases[weighted].start,
                        ..ConvShape::alone(0, image.0, image.1, filters, size)
                    },
                    relu,
                },
                LayerSpec::MaxPool2d { size } => LayerOp::Pool {
                    shape: PoolShape::new(0, image.0, image.1, size),
                },
                LayerSpec::Flatten => LayerOp::Flatten,
                LayerSpec::Dropout { rate } => LayerOp::Dropout {
                    rate,
                    rank: dropouts,
                },
            };
            weighted += usize::from(matches!(op, LayerOp::Dense { .. } | LayerOp::Conv { .. }));
            dropouts += usize::from(matches!(op, LayerOp::Dropout { .. }));
            ops.push(op);
        }
        ops
    }

    /// Whether a ReLU follows the layer.
    pub fn relu(&self) -> bool {
        matches!(
            self,
            LayerOp::Dense { relu: true, .. } | LayerOp::Conv { relu: true, .. }
        )
    }
}

/// Values per sample of each activation of the general paths: the pixels, then every
/// layer's output.
pub fn activation_widths(config: &ModelConfig) -> Vec<usize> {
    let mut widths = vec![INPUT];
    let layers = config.layers.iter().zip(config.layer_inputs());
    widths.extend(layers.map(|(spec, input)| spec.output(input).map_or(0, |out| out.values())));
    widths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_the_layer_patterns() {
        let mlp = ModelConfig::mlp(&[128], false);
        let mlp_fusions = Fusions {
            pool_into_first_conv: false,
            ..Fusions::ALL
        };
        assert_eq!(Fusions::plan(&mlp, Fusions::ALL), mlp_fusions);
        let convnet = Fusions::plan(&ModelConfig::convnet(false), Fusions::ALL);
        let only_the_pool = Fusions {
            pool_into_first_conv: true,
            ..Fusions::NONE
        };
        assert_eq!(convnet, only_the_pool);
        assert_eq!(Fusions::plan(&mlp, Fusions::NONE), Fusions::NONE);
        // A single dense layer has no ReLU to fuse.
        let linear = ModelConfig::mlp(&[], false);
        let planned = Fusions::plan(&linear, Fusions::ALL);
        assert!(!planned.relu_in_gemm && planned.batchnorm_dense_backward);
        // Without BatchNorm first, nothing fuses with it.
        let no_bn = ModelConfig {
            layers: vec![LayerSpec::Dense {
                units: 10,
                relu: false,
            }],
            raw_pixels: false,
        };
        let planned = Fusions::plan(&no_bn, Fusions::ALL);
        assert!(!planned.batchnorm_dense_backward && !planned.sparse_first_layer);
        assert!(!planned.adam_in_backward);
        // Adam inside the backward pass needs the sparse first layer.
        let no_sparse = Fusions {
            sparse_first_layer: false,
            ..Fusions::ALL
        };
        assert!(!Fusions::plan(&mlp, no_sparse).adam_in_backward);
    }
}
