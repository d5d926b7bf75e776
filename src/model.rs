//! The model definition: architecture, hyper-parameters, and the parameter tensors.
//!
//! All trainable tensors live in one flat `Vec<f32>` (see [`ParamLayout`]) so that the
//! Adam update is a single pass over one buffer on both the CPU and the GPU. Every
//! tensor starts at a multiple of [`TENSOR_ALIGN`] floats: the GPU binds sub-ranges of
//! the flat buffer, and wgpu requires 256-byte aligned binding offsets. The padding is
//! always zero and stays zero (its gradient is zero, so Adam never moves it).

use crate::aligned::Aligned;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// Pixels per MNIST image (28 × 28), the model's input width.
pub const INPUT: usize = 784;
/// Digit classes, the model's output width.
pub const CLASSES: usize = 10;
/// Alignment of each tensor inside the flat parameter buffer, in f32 elements (256 bytes).
pub const TENSOR_ALIGN: usize = 64;
/// Widest layer accepted (`--hidden`'s widths, `dense(UNITS)`).
pub const MAX_WIDTH: usize = 65_536;

/// One layer of the model. A model is a list of them, applied in order to an image (scaled
/// by [`ModelConfig::pixel_scale`]); each layer's input is the previous layer's output
/// (see [`ModelConfig::activations`]).
///
/// The text form, Keras' names in lower case, is what [`parse_layers`] reads and
/// [`format_layers`] writes: the layers separated by commas, each one of
///
/// - `batchnorm`: batch normalisation of every feature of its input (Keras'
///   `BatchNormalization`; same width out as in);
/// - `dense(UNITS)`: a fully connected layer of UNITS outputs (1 to 65536);
/// - `dense(UNITS,relu)`: the same, followed by ReLU;
/// - `conv2d(FILTERS,SIZE)` and `conv2d(FILTERS,SIZE,relu)`: a convolution with FILTERS
///   square SIZE×SIZE filters, stride 1, `valid` padding (Keras' `Conv2D`);
/// - `maxpool2d(SIZE)`: the maximum of each SIZE×SIZE window, stride SIZE;
/// - `flatten`: an image to a flat vector, channels first (PyTorch's order);
/// - `dropout(RATE)`: inverted dropout in training, RATE in [0, 1).
///
/// For example `batchnorm,dense(128,relu),dense(10)` (the default), or Keras' MNIST
/// convnet `conv2d(32,3,relu),maxpool2d(2),conv2d(64,3,relu),maxpool2d(2),flatten,
/// dropout(0.5),dense(10)`. The input is the 28×28 image, one channel; `batchnorm` and
/// `dense` see their input flattened. Spaces around the names, numbers and commas are
/// allowed. The softmax of the last layer is part of the loss, not a layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LayerSpec {
    BatchNorm,
    Dense {
        units: usize,
        relu: bool,
    },
    Conv2d {
        filters: usize,
        size: usize,
        relu: bool,
    },
    MaxPool2d {
        size: usize,
    },
    Flatten,
    Dropout {
        rate: f32,
    },
}

/// What flows from one layer to the next: an image of `channels`×`height`×`width`
/// values, or a flat vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Image {
        channels: usize,
        height: usize,
        width: usize,
    },
    Flat(usize),
}

/// The model's input: one 28×28 image with one channel.
pub const INPUT_IMAGE: Activation = Activation::Image {
    channels: 1,
    height: 28,
    width: 28,
};

impl Activation {
    /// Values in one sample.
    pub fn values(&self) -> usize {
        match *self {
            Activation::Image {
                channels,
                height,
                width,
            } => channels * height * width,
            Activation::Flat(n) => n,
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Activation::Image {
                channels,
                height,
                width,
            } => write!(f, "{channels}×{height}×{width}"),
            Activation::Flat(n) => write!(f, "{n}"),
        }
    }
}

impl LayerSpec {
    /// This layer's output for `input`, or why it cannot take it.
    pub fn output(&self, input: Activation) -> Result<Activation, String> {
        // The input image of a conv2d or maxpool2d `layer` whose `size`×`size` `window`
        // (its filters or its pooling window) must fit in it.
        let image = |layer: &str, size: usize, window: &str| match input {
            Activation::Image {
                channels,
                height,
                width,
            } if size <= height && size <= width => Ok((channels, height, width)),
            Activation::Image { .. } => Err(format!(
                "its {size}×{size} {window} larger than its {input} input"
            )),
            Activation::Flat(n) => Err(format!(
                "{layer} needs an image, but its input is {n} flat values"
            )),
        };
        match *self {
            LayerSpec::BatchNorm | LayerSpec::Flatten => Ok(Activation::Flat(input.values())),
            LayerSpec::Dense { units, .. } => Ok(Activation::Flat(units)),
            LayerSpec::Dropout { .. } => Ok(input),
            LayerSpec::Conv2d { filters, size, .. } => {
                let (_, height, width) = image("conv2d", size, "filters are")?;
                Ok(Activation::Image {
                    channels: filters,
                    height: height + 1 - size,
                    width: width + 1 - size,
                })
            }
            LayerSpec::MaxPool2d { size } => {
                let (channels, height, width) = image("maxpool2d", size, "window is")?;
                Ok(Activation::Image {
                    channels,
                    height: height / size,
                    width: width / size,
                })
            }
        }
    }

    /// Trainable parameters of this layer on `input`, `None` on overflow.
    fn parameters(&self, input: Activation) -> Option<usize> {
        match *self {
            LayerSpec::BatchNorm => input.values().checked_mul(2),
            LayerSpec::Dense { units, .. } => input.values().checked_mul(units)?.checked_add(units),
            LayerSpec::Conv2d { filters, size, .. } => {
                let Activation::Image { channels, .. } = input else {
                    return Some(0);
                };
                let kernel = channels.checked_mul(size * size)?.checked_mul(filters)?;
                kernel.checked_add(filters)
            }
            LayerSpec::MaxPool2d { .. } | LayerSpec::Flatten | LayerSpec::Dropout { .. } => Some(0),
        }
    }
}

impl fmt::Display for LayerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerSpec::BatchNorm => write!(f, "batchnorm"),
            LayerSpec::Dense { units, relu: true } => write!(f, "dense({units},relu)"),
            LayerSpec::Dense { units, relu: false } => write!(f, "dense({units})"),
            LayerSpec::Conv2d {
                filters,
                size,
                relu: true,
            } => {
                write!(f, "conv2d({filters},{size},relu)")
            }
            LayerSpec::Conv2d {
                filters,
                size,
                relu: false,
            } => write!(f, "conv2d({filters},{size})"),
            LayerSpec::MaxPool2d { size } => write!(f, "maxpool2d({size})"),
            LayerSpec::Flatten => write!(f, "flatten"),
            LayerSpec::Dropout { rate } => write!(f, "dropout({rate})"),
        }
    }
}

/// The layers of a known kind that this text form names, for errors.
const KNOWN_LAYERS: &str = "batchnorm, dense(UNITS[,relu]), conv2d(FILTERS,SIZE[,relu]), \
                            maxpool2d(SIZE), flatten and dropout(RATE)";

impl FromStr for LayerSpec {
    type Err = String;

    /// One layer in the text form (see [`LayerSpec`]), e.g. `dense(128,relu)`.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(format!("control character {c:?} in the layer"));
        }
        let unbalanced = || "unbalanced parentheses".to_string();
        let (name, args) = match text.split_once('(') {
            None => (text, None),
            Some((name, rest)) => (
                name.trim_end(),
                Some(rest.strip_suffix(')').ok_or_else(unbalanced)?),
            ),
        };
        if name.contains(')') || args.is_some_and(|a| a.contains(['(', ')'])) {
            return Err(unbalanced());
        }
        match (name, args) {
            ("batchnorm", None) => Ok(LayerSpec::BatchNorm),
            ("batchnorm", Some(_)) => Err("batchnorm takes no arguments".into()),
            ("dense", Some(args)) => dense(args),
            ("dense", None) => {
                Err("dense needs its units, e.g. dense(128) or dense(128,relu)".into())
            }
            ("conv2d", Some(args)) => conv2d(args),
            ("maxpool2d", Some(args)) if args.contains(',') => {
                Err("maxpool2d takes one argument, its window size".into())
            }
            ("maxpool2d", Some(args)) => Ok(LayerSpec::MaxPool2d {
                size: size(args.trim(), "window")?,
            }),
            ("flatten", None) => Ok(LayerSpec::Flatten),
            ("dropout", Some(args)) => dropout(args.trim()),
            ("conv2d" | "maxpool2d" | "dropout", None) => Err(format!(
                "{name} needs its arguments, e.g. {}",
                match name {
                    "conv2d" => "conv2d(32,3,relu)",
                    "maxpool2d" => "maxpool2d(2)",
                    _ => "dropout(0.5)",
                }
            )),
            ("flatten", Some(_)) => Err("flatten takes no arguments".into()),
            ("", _) => Err(format!("no layer name (known: {KNOWN_LAYERS})")),
            (other, _) => Err(format!("unknown layer '{other}' (known: {KNOWN_LAYERS})")),
        }
    }
}

/// The arguments of `dense(…)`: the units, then optionally `relu`.
fn dense(args: &str) -> Result<LayerSpec, String> {
    let mut args = args.split(',').map(str::trim);
    let units = width(args.next().unwrap_or_default())?;
    let relu = match args.next() {
        None => false,
        Some("relu") => true,
        Some(other) => {
            return Err(format!(
                "unknown activation '{other}' (dense takes relu, or nothing for none)"
            ))
        }
    };
    if args.next().is_some() {
        return Err("dense takes at most two arguments, its units and relu".into());
    }
    Ok(LayerSpec::Dense { units, relu })
}

/// The arguments of `conv2d(…)`: the filters, the filter size, then optionally `relu`.
fn conv2d(args: &str) -> Result<LayerSpec, String> {
    let args: Vec<&str> = args.split(',').map(str::trim).collect();
    let relu = match args.get(2) {
        None => false,
        Some(&"relu") => true,
        Some(other) => {
            return Err(format!(
                "unknown activation '{other}' (conv2d takes relu, or nothing for none)"
            ))
        }
    };
    if !(2..=3).contains(&args.len()) {
        return Err("conv2d takes its filters, its filter size and optionally relu".into());
    }
    let filters = width(args[0]).map_err(|_| {
        format!(
            "'{}' is not a filter count (a whole number from 1 to {MAX_WIDTH})",
            args[0]
        )
    })?;
    let size = size(args[1], "filter")?;
    Ok(LayerSpec::Conv2d {
        filters,
        size,
        relu,
    })
}

/// A filter or window size: a whole number from 1 to 28 (the image's side).
fn size(text: &str, what: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(s) if (1..=28).contains(&s) => Ok(s),
        _ => Err(format!(
            "'{text}' is not a {what} size (a whole number from 1 to 28)"
        )),
    }
}

/// The argument of `dropout(…)`: a rate in [0, 1).
fn dropout(text: &str) -> Result<LayerSpec, String> {
    match text.parse::<f32>() {
        // `+ 0.0` turns -0 into 0.
        Ok(rate) if (0.0..1.0).contains(&rate) => Ok(LayerSpec::Dropout { rate: rate + 0.0 }),
        Ok(1.0) if text.trim_start_matches('0').starts_with('.') => Err(format!(
            "dropout rate {text} rounds to 1 as a 32-bit float (it must be below 1)"
        )),
        _ => Err(format!(
            "'{text}' is not a dropout rate (a number from 0 up to, not including, 1)"
        )),
    }
}

/// One layer width: a whole number from 1 to [`MAX_WIDTH`].
fn width(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("layer widths must be at least 1, got 0".into()),
        Ok(w) if w > MAX_WIDTH => Err(format!(
            "layer width {w} is too large (at most {MAX_WIDTH})"
        )),
        Ok(w) => Ok(w),
        Err(_) => Err(format!(
            "'{text}' is not a layer width (a whole number from 1 to {MAX_WIDTH})"
        )),
    }
}

/// Parse the text form of a layer list (see [`LayerSpec`]), such as
/// `batchnorm,dense(128,relu),dense(10)`. An error names the first bad layer.
pub fn parse_layers(text: &str) -> Result<Vec<LayerSpec>, String> {
    if text.trim().is_empty() {
        return Err(format!(
            "expected a list of layers such as {}, got an empty value",
            format_layers(&ModelConfig::default().layers)
        ));
    }
    top_level_parts(text)
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let named = |why| format!("layer {} ('{}'): {why}", i + 1, part.trim().escape_debug());
            part.parse().map_err(named)
        })
        .collect()
}

/// `text` split at the commas outside parentheses.
fn top_level_parts(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0isize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// The text form of a layer list, which [`parse_layers`] reads back.
pub fn format_layers(layers: &[LayerSpec]) -> String {
    let texts: Vec<String> = layers.iter().map(LayerSpec::to_string).collect();
    texts.join(",")
}

/// The architecture: a list of layers, and how pixels are scaled before the first.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The layers in order from the input (default `batchnorm,dense(128,relu),dense(10)`).
    pub layers: Vec<LayerSpec>,
    /// Feed pixels as 0..255 (the Keras tutorial) instead of scaling them to [0, 1].
    pub raw_pixels: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig::mlp(&[128], false)
    }
}

/// Largest model accepted (trainable parameters).
pub const MAX_PARAMS: usize = 100_000_000;

/// Most activation values a sample (the input and every layer's output) of a model
/// accepted: 4 MiB a sample, so a batch of 128 keeps 512 MiB of activations and as much
/// of their gradients. The convnet has 40,378.
pub const MAX_ACTIVATIONS: usize = 1 << 20;

/// The output layer: one unit per class, no activation (the softmax is in the loss).
const OUTPUT: LayerSpec = LayerSpec::Dense {
    units: CLASSES,
    relu: false,
};

/// The layer lists the trainers implement, in words, for errors.
const SUPPORTED: &str = "conv2d, maxpool2d, flatten, dropout and dense layers, with \
                         batchnorm only as the first layer, ending with dense(10)";

/// The models `--model` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// The Keras tutorial's MLP: `batchnorm`, `dense(h,relu)` per `--hidden` width,
    /// `dense(10)`.
    Mlp,
    /// Keras' "Simple MNIST convnet" ([`KERAS_CONVNET`]).
    Convnet,
}

/// Keras' "Simple MNIST convnet" (keras-io `examples/vision/mnist_convnet.py`).
pub const KERAS_CONVNET: &str =
    "conv2d(32,3,relu),maxpool2d(2),conv2d(64,3,relu),maxpool2d(2),flatten,dropout(0.5),dense(10)";

impl ModelKind {
    /// The names `--model` takes.
    pub const NAMES: &'static str = "mlp or convnet";

    /// Epochs and batch size of the tutorial each model comes from.
    pub fn default_epochs_and_batch(self) -> (usize, usize) {
        match self {
            ModelKind::Mlp => (10, 32),
            ModelKind::Convnet => (15, 128),
        }
    }
}

impl FromStr for ModelKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "mlp" => Ok(ModelKind::Mlp),
            "convnet" => Ok(ModelKind::Convnet),
            other => Err(format!(
                "unknown model '{}' (expected {})",
                other.escape_debug(),
                ModelKind::NAMES
            )),
        }
    }
}

impl ModelConfig {
    /// The MLP `batchnorm, dense(h, relu) for each of hidden, dense(10)` (`--hidden`).
    pub fn mlp(hidden: &[usize], raw_pixels: bool) -> Self {
        let dense = |&units: &usize| LayerSpec::Dense { units, relu: true };
        let mut layers = vec![LayerSpec::BatchNorm];
        layers.extend(hidden.iter().map(dense));
        layers.push(OUTPUT);
        ModelConfig { layers, raw_pixels }
    }

    /// Keras' MNIST convnet ([`KERAS_CONVNET`]).
    pub fn convnet(raw_pixels: bool) -> Self {
        let layers = parse_layers(KERAS_CONVNET).expect("the convnet's layer list parses");
        ModelConfig { layers, raw_pixels }
    }

    /// Whether this is the MLP shape (`batchnorm`, then `dense(UNITS,relu)` layers, then
    /// `dense(10)`), which the GPU trainer and the CPU's fused first-layer paths build.
    pub fn is_mlp(&self) -> bool {
        let Some((last, middle)) = self.layers.split_last() else {
            return false;
        };
        let hidden = |layer: &LayerSpec| matches!(layer, LayerSpec::Dense { relu: true, .. });
        middle.first() == Some(&LayerSpec::BatchNorm)
            && middle[1..].iter().all(hidden)
            && *last == OUTPUT
    }

    /// Refuse a layer list the trainers do not implement: a batchnorm anywhere but first,
    /// a last layer other than dense(10) without relu, or a layer that cannot take its
    /// input. The error names the first layer out of place.
    pub fn check_supported(&self) -> Result<(), String> {
        let Some(last) = self.layers.len().checked_sub(1) else {
            return Err(format!("the model has no layers (supported: {SUPPORTED})"));
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let rule = if i == last && *layer != OUTPUT {
                "the last layer must be dense(10), without relu"
            } else if i > 0 && *layer == LayerSpec::BatchNorm {
                "batchnorm is supported only as the first layer, on the pixels"
            } else {
                continue;
            };
            return Err(format!(
                "layer {} ({layer}) is not supported: {rule} (supported: {SUPPORTED})",
                i + 1
            ));
        }
        self.activations().map(|_| ())
    }

    /// The input and every layer's output, in order; an error names the first layer that
    /// cannot take its input, or a last layer without one output per class.
    pub fn activations(&self) -> Result<Vec<Activation>, String> {
        let mut shapes = vec![INPUT_IMAGE];
        for (i, layer) in self.layers.iter().enumerate() {
            let input = shapes[i];
            if i > 0 && *layer == LayerSpec::BatchNorm && matches!(input, Activation::Image { .. })
            {
                return Err(format!(
                    "layer {} (batchnorm): on a convolution's output Keras normalises each \
                     channel, and this batchnorm normalises each value; put flatten before it \
                     for that",
                    i + 1
                ));
            }
            let output = layer
                .output(input)
                .map_err(|why| format!("layer {} ({layer}): {why}", i + 1))?;
            shapes.push(output);
        }
        match shapes.last() {
            Some(&Activation::Flat(CLASSES)) => Ok(shapes),
            Some(last) => Err(format!(
                "the model ends with {last} values; it must end with {CLASSES}, one per class"
            )),
            None => unreachable!("the input is always there"),
        }
    }

    /// A model from outside (flags, a file's metadata) that the trainers implement and
    /// that is small enough to train here.
    pub fn check(&self) -> Result<(), String> {
        self.check_supported()?;
        self.check_size()?;
        self.check_activations()
    }

    /// Refuse models whose activations are too large to train here (more than
    /// [`MAX_ACTIVATIONS`] values a sample over the input and every layer's output: a
    /// batch keeps them all, and their gradients, for the backward pass).
    pub fn check_activations(&self) -> Result<(), String> {
        let shapes = self.activations()?;
        let values = shapes
            .iter()
            .try_fold(0usize, |sum, shape| sum.checked_add(shape.values()));
        match values {
            Some(n) if n <= MAX_ACTIVATIONS => Ok(()),
            values => Err(format!(
                "the model {} has {} activation values a sample; at most {MAX_ACTIVATIONS} \
                 are supported",
                format_layers(&self.layers),
                values.map_or("too many".to_string(), |n| n.to_string())
            )),
        }
    }

    /// The units of every Dense layer, in order.
    fn dense_units(&self) -> impl Iterator<Item = usize> + '_ {
        self.layers.iter().filter_map(|layer| match layer {
            LayerSpec::Dense { units, .. } => Some(*units),
            _ => None,
        })
    }

    /// Widths of the hidden Dense layers (every Dense layer but the last).
    pub fn hidden(&self) -> Vec<usize> {
        let mut hidden: Vec<usize> = self.dense_units().collect();
        hidden.pop();
        hidden
    }

    /// For the MLP (its fused paths): the widths of the input and of every Dense layer's
    /// output, `[784, hidden..., 10]` (BatchNorm keeps its input's width). The layer
    /// paths use `layers::plan::activation_widths`, which every model has.
    pub fn widths(&self) -> Vec<usize> {
        std::iter::once(INPUT).chain(self.dense_units()).collect()
    }

    /// Trainable parameters (BatchNorm γ and β, every kernel and bias), `None` on overflow
    /// or when a layer cannot take its input.
    pub fn parameter_count(&self) -> Option<usize> {
        let mut input = INPUT_IMAGE;
        let mut total = 0usize;
        for layer in &self.layers {
            total = total.checked_add(layer.parameters(input)?)?;
            input = layer.output(input).ok()?;
        }
        Some(total)
    }

    /// Refuse models too large to train here (more than [`MAX_PARAMS`] parameters: the
    /// parameters, gradients and Adam's two moments would need over 1.6 GB).
    pub fn check_size(&self) -> Result<(), String> {
        match self.parameter_count() {
            Some(n) if n <= MAX_PARAMS => Ok(()),
            count => Err(format!(
                "the model {} has {} trainable parameters; at most {MAX_PARAMS} are supported",
                format_layers(&self.layers),
                count.map_or("too many".to_string(), |n| n.to_string())
            )),
        }
    }

    /// Number of Dense layers (hidden layers plus the output layer).
    pub fn dense_layers(&self) -> usize {
        self.dense_units().count()
    }

    /// Factor applied to the u8 pixel values before the BatchNorm layer.
    pub fn pixel_scale(&self) -> f32 {
        if self.raw_pixels {
            1.0
        } else {
            1.0 / 255.0
        }
    }

    /// Human-readable summary, e.g. `784 → BatchNorm → Dense 128 (ReLU) → Dense 10 (softmax)`.
    pub fn describe(&self) -> String {
        let last = self.layers.len().saturating_sub(1);
        // The input as the first layer sees it: the image, or flat pixels.
        let first_sees_image = matches!(
            self.layers.first(),
            Some(LayerSpec::Conv2d { .. } | LayerSpec::MaxPool2d { .. })
        );
        let mut text = if first_sees_image {
            INPUT_IMAGE.to_string()
        } else {
            INPUT.to_string()
        };
        for (i, layer) in self.layers.iter().enumerate() {
            text.push_str(&match *layer {
                LayerSpec::BatchNorm => " → BatchNorm".to_string(),
                LayerSpec::Dense { units, relu: true } => format!(" → Dense {units} (ReLU)"),
                LayerSpec::Dense { units, .. } if i == last => {
                    format!(" → Dense {units} (softmax)")
                }
                LayerSpec::Dense { units, .. } => format!(" → Dense {units}"),
                LayerSpec::Conv2d {
                    filters,
                    size,
                    relu,
                } => {
                    let relu = if relu { " (ReLU)" } else { "" };
                    format!(" → Conv2D {filters} {size}×{size}{relu}")
                }
                LayerSpec::MaxPool2d { size } => format!(" → MaxPool {size}×{size}"),
                LayerSpec::Flatten => " → Flatten".to_string(),
                LayerSpec::Dropout { rate } => format!(" → Dropout {rate}"),
            });
        }
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
    /// The seed of the dropout masks (see `layers::dropout`): the run's seed.
    pub dropout_seed: u32,
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
            dropout_seed: 0,
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
    /// The first layer's BatchNorm γ and β (empty ranges in a model without one).
    pub gamma: Range<usize>,
    pub beta: Range<usize>,
    /// The kernel of every dense and conv2d layer, in layer order: dense in Keras' layout
    /// `[in, out]`, conv2d in PyTorch's `[out, in, k, k]`, row-major.
    pub kernels: Vec<Range<usize>>,
    /// Their biases, `[out]`.
    pub biases: Vec<Range<usize>>,
    /// Total length including padding.
    pub total: usize,
}

/// A layer with a kernel and a bias, as [`ModelConfig::weighted_layers`] lists them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightedLayer {
    /// Index in [`ModelConfig::layers`].
    pub layer: usize,
    /// Values in the kernel and in the bias.
    pub kernel_len: usize,
    pub bias_len: usize,
    /// Glorot's fan-in and fan-out (Keras: `k·k·channels` for a convolution).
    pub fan_in: usize,
    pub fan_out: usize,
}

impl ModelConfig {
    /// Each layer's input: the image, then the previous layer's output (a layer that
    /// cannot take its input passes it on; [`ModelConfig::check`] refuses such lists).
    pub fn layer_inputs(&self) -> Vec<Activation> {
        let mut input = INPUT_IMAGE;
        let mut inputs = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            inputs.push(input);
            input = layer.output(input).unwrap_or(input);
        }
        inputs
    }

    /// The dense and conv2d layers, in order, with their tensors' sizes.
    pub fn weighted_layers(&self) -> Vec<WeightedLayer> {
        let mut weighted = Vec::new();
        for (layer, (spec, input)) in self.layers.iter().zip(self.layer_inputs()).enumerate() {
            let (fan_in, fan_out, out) = match (*spec, input) {
                (LayerSpec::Dense { units, .. }, _) => (input.values(), units, units),
                (LayerSpec::Conv2d { filters, size, .. }, Activation::Image { channels, .. }) => {
                    (channels * size * size, filters * size * size, filters)
                }
                _ => continue,
            };
            weighted.push(WeightedLayer {
                layer,
                kernel_len: fan_in * out,
                bias_len: out,
                fan_in,
                fan_out,
            });
        }
        weighted
    }

    /// Values the first layer's BatchNorm normalises (0 without one).
    pub fn batchnorm_features(&self) -> usize {
        match self.layers.first() {
            Some(LayerSpec::BatchNorm) => INPUT,
            _ => 0,
        }
    }
}

impl ParamLayout {
    /// The layout of a model the trainers implement (see [`ModelConfig::check_supported`]):
    /// the first layer's BatchNorm γ and β, then each dense or conv2d layer's kernel and
    /// bias, in layer order.
    pub fn new(config: &ModelConfig) -> Self {
        let mut next = 0usize;
        let mut take = |len: usize| {
            let start = next;
            next = (start + len).div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN;
            start..start + len
        };
        let features = config.batchnorm_features();
        let gamma = take(features);
        let beta = take(features);
        let mut kernels = Vec::new();
        let mut biases = Vec::new();
        for weighted in config.weighted_layers() {
            kernels.push(take(weighted.kernel_len));
            biases.push(take(weighted.bias_len));
        }
        ParamLayout {
            gamma,
            beta,
            kernels,
            biases,
            total: next,
        }
    }
}

/// All model state: trainable parameters (flat) and the BatchNorm moving statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub config: ModelConfig,
    pub layout: ParamLayout,
    /// Every trainable tensor at its [`ParamLayout`] offset, from the start of a cache
    /// line ([`Aligned`]: the CPU trainer reads the kernels' rows with 512-bit loads).
    pub trainable: Aligned,
    pub moving_mean: Vec<f32>,
    pub moving_var: Vec<f32>,
}

impl Params {
    /// Keras initialisation: gamma 1, beta 0, Glorot-uniform kernels, zero biases,
    /// moving mean 0 and moving variance 1. Deterministic for a given seed.
    pub fn init(config: &ModelConfig, seed: u64) -> Self {
        let layout = ParamLayout::new(config);
        let mut trainable = Aligned::zeros(layout.total);
        trainable[layout.gamma.clone()].fill(1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // A separate stream from the shuffling RNG, so changing one never changes the other.
        rng.set_stream(1);
        for (weighted, kernel) in config.weighted_layers().iter().zip(&layout.kernels) {
            let (fan_in, fan_out) = (weighted.fan_in as f32, weighted.fan_out as f32);
            let limit = (6.0 / (fan_in + fan_out)).sqrt();
            for w in &mut trainable[kernel.clone()] {
                *w = rng.random_range(-limit..limit);
            }
        }
        let features = config.batchnorm_features();
        Params {
            config: config.clone(),
            layout,
            trainable,
            moving_mean: vec![0.0; features],
            moving_var: vec![1.0; features],
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
    /// Cache-line aligned, as [`Params::trainable`] is.
    pub m: Aligned,
    pub v: Aligned,
    /// Number of Adam updates applied so far.
    pub step: u64,
}

impl OptimState {
    pub fn new(len: usize) -> Self {
        OptimState {
            m: Aligned::zeros(len),
            v: Aligned::zeros(len),
            step: 0,
        }
    }
}

/// Parse a `--hidden` list such as `128` or `256,128`: comma-separated layer widths.
pub fn parse_hidden(text: &str) -> Result<Vec<usize>, String> {
    if text.trim().is_empty() {
        return Err("expected a comma-separated list of layer widths such as 128 or 256,128, got an empty value".into());
    }
    text.split(',')
        .map(|part| match part.trim() {
            "" => Err(format!(
                "empty layer width in '{text}' (expected e.g. 256,128)"
            )),
            part => width(part),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(text: &str) -> Vec<LayerSpec> {
        parse_layers(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn config(text: &str) -> ModelConfig {
        ModelConfig {
            layers: layers(text),
            raw_pixels: false,
        }
    }

    #[test]
    fn the_keras_convnet_has_keras_shapes_and_parameter_count() {
        let convnet = config(KERAS_CONVNET);
        assert_eq!(format_layers(&convnet.layers), KERAS_CONVNET);
        let image = |channels, height, width| Activation::Image {
            channels,
            height,
            width,
        };
        let shapes = convnet.activations().unwrap();
        let want = [
            image(1, 28, 28),
            image(32, 26, 26),
            image(32, 13, 13),
            image(64, 11, 11),
            image(64, 5, 5),
            Activation::Flat(1600),
            Activation::Flat(1600),
            Activation::Flat(10),
        ];
        assert_eq!(shapes, want);
        // Keras' model.summary(): 320 + 18,496 + 16,010.
        assert_eq!(convnet.parameter_count(), Some(34_826));
        // The MLPs' shapes and counts are what they were.
        assert_eq!(ModelConfig::default().parameter_count(), Some(103_338));
        assert_eq!(ModelConfig::default().activations().unwrap().len(), 4);
    }

    #[test]
    fn a_layer_that_cannot_take_its_input_is_named() {
        let error = |text: &str| config(text).activations().unwrap_err();
        assert_eq!(
            error("conv2d(8,3),flatten,conv2d(4,3),flatten,dense(10)"),
            "layer 3 (conv2d(4,3)): conv2d needs an image, but its input is 5408 flat values"
        );
        assert!(error("conv2d(8,5),maxpool2d(25),flatten,dense(10)")
            .starts_with("layer 2 (maxpool2d(25)): its 25×25 window is larger than its 8×24×24"));
        assert!(error("dense(10),maxpool2d(2)").contains("maxpool2d needs an image"));
        // BatchNorm on the input image is the tutorial's (each pixel); on a convolution's
        // output it would not be Keras' (each channel), so it is refused.
        assert!(error("conv2d(8,3),batchnorm,flatten,dense(10)")
            .starts_with("layer 2 (batchnorm): on a convolution's output Keras normalises"));
        assert!(config("conv2d(8,3),flatten,batchnorm,dense(10)")
            .activations()
            .is_ok());
        assert_eq!(
            error("conv2d(8,3),flatten"),
            "the model ends with 5408 values; it must end with 10, one per class"
        );
    }

    #[test]
    fn convnet_layers_parse_strictly() {
        let error = |text: &str| parse_layers(text).unwrap_err();
        assert!(error("conv2d(8)").contains("conv2d takes its filters, its filter size"));
        assert!(error("conv2d(8,3,tanh)").contains("unknown activation 'tanh'"));
        assert!(error("conv2d(8,29)").contains("not a filter size"));
        assert!(error("maxpool2d(0)").contains("not a window size"));
        assert!(error("maxpool2d").contains("e.g. maxpool2d(2)"));
        assert!(error("flatten(2)").contains("flatten takes no arguments"));
        assert!(error("dropout(1)").contains("not a dropout rate"));
        assert!(error("dropout(-0.1)").contains("not a dropout rate"));
        assert_eq!(
            layers(" dropout( 0.25 ) "),
            [LayerSpec::Dropout { rate: 0.25 }]
        );
        assert_eq!(format_layers(&layers("dropout(-0)")), "dropout(0)");
        assert!(error("dropout(0.99999999)").contains("rounds to 1"));
        assert!(error("conv2d(abc,3)").contains("'abc' is not a filter count"));
        assert!(error("maxpool2d(2,2)").contains("maxpool2d takes one argument"));
    }

    #[test]
    fn layout_is_aligned_and_complete() {
        let config = ModelConfig::mlp(&[129, 33], false);
        let layout = ParamLayout::new(&config);
        let ranges = [&layout.gamma, &layout.beta].into_iter().chain(
            layout
                .kernels
                .iter()
                .zip(&layout.biases)
                .flat_map(|(k, b)| [k, b]),
        );
        let mut end = 0;
        for range in ranges {
            assert_eq!(range.start % TENSOR_ALIGN, 0);
            assert!(range.start >= end, "tensors overlap");
            end = range.end;
        }
        let lens = |ranges: &[Range<usize>]| ranges.iter().map(|r| r.len()).collect::<Vec<_>>();
        assert_eq!(lens(&layout.kernels), [784 * 129, 129 * 33, 33 * 10]);
        assert_eq!(lens(&layout.biases), [129, 33, 10]);
        assert_eq!(layout.total, end.next_multiple_of(TENSOR_ALIGN));
    }

    /// Every tensor, and so every 128-wide kernel row, starts on a 64-byte cache line in
    /// the parameters and in Adam's moments, as the CPU trainer's 512-bit loads want.
    #[test]
    fn parameters_and_moments_start_on_a_cache_line() {
        let config = ModelConfig::mlp(&[128], false);
        let params = Params::init(&config, 1);
        let optim = OptimState::new(params.trainable.len());
        let line = |values: &[f32]| values.as_ptr() as usize % 64;
        for values in [&params.trainable, &optim.m, &optim.v] {
            assert_eq!(values.len(), params.layout.total);
            for tensor in params.layout.kernels.iter().chain(&params.layout.biases) {
                assert_eq!(line(&values[tensor.clone()]), 0, "{tensor:?}");
            }
        }
        assert_eq!(line(params.kernel(0)), 0);
        let copy = params.clone();
        assert_eq!((line(&copy.trainable), copy), (0, params));
    }

    /// The convnet's tensors: two conv kernels `[out, in, 3, 3]` with Keras' fans, the
    /// dense kernel on the 1600 flattened values, and no BatchNorm.
    #[test]
    fn the_convnet_layout_and_init_follow_keras() {
        let convnet = ModelConfig::convnet(false);
        let weighted = convnet.weighted_layers();
        let fans: Vec<_> = weighted
            .iter()
            .map(|w| (w.layer, w.fan_in, w.fan_out))
            .collect();
        assert_eq!(fans, [(0, 9, 288), (2, 288, 576), (6, 1600, 10)]);
        let layout = ParamLayout::new(&convnet);
        assert!(layout.gamma.is_empty() && layout.beta.is_empty());
        let params = Params::init(&convnet, 1);
        assert!(params.moving_mean.is_empty() && params.moving_var.is_empty());
        let limit = (6.0f32 / (288.0 + 576.0)).sqrt();
        assert!(params.kernel(1).iter().all(|w| w.abs() <= limit));
        assert!(params.kernel(1).iter().any(|w| w.abs() > limit * 0.9));
        assert_eq!(params.kernel(1).len(), 64 * 32 * 9);
        assert!(params.bias(0).iter().all(|&b| b == 0.0));
    }

    #[test]
    fn the_default_is_the_keras_tutorials_mlp() {
        let default = ModelConfig::default();
        assert_eq!(default, config("batchnorm,dense(128,relu),dense(10)"));
        assert_eq!(default.widths(), [784, 128, 10]);
        assert_eq!(default.hidden(), [128]);
        assert_eq!(default.dense_layers(), 2);
        // The figure the README's default run prints.
        assert_eq!(default.parameter_count(), Some(103_338));
        assert_eq!(
            default.describe(),
            "784 → BatchNorm → Dense 128 (ReLU) → Dense 10 (softmax)"
        );
    }

    #[test]
    fn mlp_builds_the_hidden_layers() {
        let deep = ModelConfig::mlp(&[256, 128], true);
        assert_eq!(
            format_layers(&deep.layers),
            "batchnorm,dense(256,relu),dense(128,relu),dense(10)"
        );
        assert_eq!(deep.hidden(), [256, 128]);
        assert_eq!(deep.widths(), [784, 256, 128, 10]);
        assert!(deep.raw_pixels);
        assert_eq!(ModelConfig::mlp(&[], false).widths(), [784, 10]);
    }

    #[test]
    fn layer_lists_round_trip() {
        for text in [
            "batchnorm,dense(128,relu),dense(10)",
            "batchnorm,dense(10)",
            "dense(1),batchnorm,dense(65536,relu)",
            "batchnorm",
        ] {
            assert_eq!(format_layers(&layers(text)), text);
        }
        assert_eq!(
            layers(" batchnorm , dense( 256 , relu ),dense (10) "),
            layers("batchnorm,dense(256,relu),dense(10)")
        );
    }

    #[test]
    fn bad_layer_lists_are_refused_naming_the_layer() {
        let cases = [
            ("", "got an empty value"),
            (" ", "got an empty value"),
            ("conv3d(3)", "layer 1 ('conv3d(3)'): unknown layer 'conv3d'"),
            ("batchnorm,reshape", "layer 2 ('reshape'): unknown layer"),
            (
                "batchnorm,dense(abc)",
                "layer 2 ('dense(abc)'): 'abc' is not a layer width",
            ),
            ("dense(-3)", "'-3' is not a layer width"),
            ("dense(1.5)", "'1.5' is not a layer width"),
            ("dense()", "'' is not a layer width"),
            (
                "dense(0)",
                "layer 1 ('dense(0)'): layer widths must be at least 1",
            ),
            (
                "dense(65537)",
                "layer width 65537 is too large (at most 65536)",
            ),
            ("dense(99999999999999999999)", "is not a layer width"),
            ("dense(8,tanh)", "unknown activation 'tanh'"),
            ("dense(8,relu,relu)", "at most two arguments"),
            ("dense", "dense needs its units"),
            ("batchnorm()", "batchnorm takes no arguments"),
            ("batchnorm,,dense(10)", "layer 2 (''): no layer name"),
            ("batchnorm,", "layer 2 (''): no layer name"),
            ("(10)", "no layer name"),
            ("dense(10", "layer 1 ('dense(10'): unbalanced parentheses"),
            ("dense(10))", "unbalanced parentheses"),
            ("dense((10))", "unbalanced parentheses"),
            ("batchnorm),dense(10)", "unbalanced parentheses"),
            (
                "batchnorm,dense(1\n0)",
                "layer 2 ('dense(1\\n0)'): control character '\\n'",
            ),
        ];
        for (text, words) in cases {
            let error = parse_layers(text).expect_err(text);
            assert!(error.contains(words), "{text}: {error}");
            assert!(!error.contains('\n'), "{text}: {error}");
        }
    }

    #[test]
    fn the_trainers_take_layer_lists_that_end_in_ten_classes() {
        for text in [
            "batchnorm,dense(128,relu),dense(10)",
            "batchnorm,dense(10)",
            "batchnorm,dense(256,relu),dense(1,relu),dense(10)",
            KERAS_CONVNET,
            "dense(10)",
            "batchnorm,dense(64),dropout(0.2),dense(10)",
            "conv2d(4,5),flatten,dense(10)",
        ] {
            assert_eq!(config(text).check_supported(), Ok(()), "{text}");
        }
        let cases = [
            (
                "batchnorm,batchnorm,dense(10)",
                "layer 2 (batchnorm) is not supported",
                "only as the first layer",
            ),
            (
                "batchnorm,dense(64,relu),dense(10,relu)",
                "layer 3 (dense(10,relu)) is not supported",
                "last layer must be dense(10)",
            ),
            (
                "batchnorm,dense(12)",
                "layer 2 (dense(12)) is not supported",
                "last layer must be dense(10)",
            ),
            (
                "batchnorm",
                "layer 1 (batchnorm) is not supported",
                "last layer must be dense(10)",
            ),
            (
                "conv2d(8,3),dense(5)",
                "layer 2 (dense(5)) is not supported",
                "last layer must be dense(10)",
            ),
        ];
        for (text, layer, rule) in cases {
            let error = config(text).check_supported().expect_err(text);
            assert!(error.starts_with(layer), "{text}: {error}");
            assert!(
                error.contains(rule) && error.contains(SUPPORTED),
                "{text}: {error}"
            );
            assert_eq!(config(text).check(), Err(error));
        }
        // A list whose shapes do not fit gets the shape error, naming the layer.
        let misshapen = config("dense(64),conv2d(3,3),dense(10)")
            .check()
            .unwrap_err();
        assert!(misshapen.starts_with("layer 2 (conv2d(3,3)): conv2d needs an image"));
        let empty = ModelConfig {
            layers: Vec::new(),
            raw_pixels: false,
        };
        assert!(empty.check_supported().unwrap_err().contains("no layers"));
    }

    /// The MLP shape, which the GPU trainer and the CPU's fused paths build.
    /// A model of few parameters but huge activations is refused in one line.
    #[test]
    fn models_with_huge_activations_are_refused() {
        let wide = config("conv2d(65536,3,relu),maxpool2d(26),flatten,dense(10)");
        assert!(wide.check_size().is_ok());
        let error = wide.check().unwrap_err();
        assert!(
            error.contains("activation values a sample; at most 1048576"),
            "{error}"
        );
        assert!(!error.contains('\n'));
        let convnet = ModelConfig::convnet(false);
        assert_eq!(convnet.check(), Ok(()));
        let values: usize = convnet
            .activations()
            .unwrap()
            .iter()
            .map(|a| a.values())
            .sum();
        assert_eq!(values, 40_378);
    }

    #[test]
    fn the_mlp_shape_is_recognised() {
        for text in ["batchnorm,dense(128,relu),dense(10)", "batchnorm,dense(10)"] {
            assert!(config(text).is_mlp(), "{text}");
        }
        for text in [KERAS_CONVNET, "dense(10)", "batchnorm,dense(64),dense(10)"] {
            assert!(!config(text).is_mlp(), "{text}");
        }
    }

    #[test]
    fn shapes_follow_the_layers() {
        // A BatchNorm after a Dense layer normalises that layer's 3 outputs.
        let mixed = config("batchnorm,dense(3,relu),batchnorm,dense(10)");
        let expected = 2 * 784 + (784 * 3 + 3) + 2 * 3 + (3 * 10 + 10);
        assert_eq!(mixed.parameter_count(), Some(expected));
        assert_eq!(mixed.widths(), [784, 3, 10]);
        assert_eq!(
            mixed.describe(),
            "784 → BatchNorm → Dense 3 (ReLU) → BatchNorm → Dense 10 (softmax)"
        );
        assert_eq!(
            config("dense(5),dense(10)").describe(),
            "784 → Dense 5 → Dense 10 (softmax)"
        );
    }

    #[test]
    fn models_too_large_are_refused_naming_their_layers() {
        let wide = ModelConfig::mlp(&[65_536, 65_536], false);
        let error = wide.check_size().unwrap_err();
        assert!(
            error.starts_with(
                "the model batchnorm,dense(65536,relu),dense(65536,relu),dense(10) has 4347"
            ),
            "{error}"
        );
        assert!(
            error.ends_with("at most 100000000 are supported"),
            "{error}"
        );
        assert_eq!(wide.check(), Err(error));
        let overflow = ModelConfig {
            layers: vec![LayerSpec::Dense {
                units: usize::MAX,
                relu: false,
            }],
            raw_pixels: false,
        };
        assert_eq!(overflow.parameter_count(), None);
        assert!(overflow.check_size().unwrap_err().contains("too many"));
        assert!(ModelConfig::mlp(&[4096, 4096], false).check().is_ok());
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
        // One width rule for --hidden and dense(UNITS).
        let hidden = parse_hidden("64,70000").unwrap_err();
        let dense = parse_layers("dense(70000)").unwrap_err();
        assert_eq!(hidden, "layer width 70000 is too large (at most 65536)");
        assert!(dense.ends_with(&hidden), "{dense}");
    }
}
