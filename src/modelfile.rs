//! Model and checkpoint files in the safetensors format, laid out the PyTorch way so that
//! the obvious `torch.nn.Sequential` loads them: the layers in order, each ReLU a module
//! of its own after its layer, and a `Flatten` before a `batchnorm` or `dense` layer whose
//! input is an image. The MLP is `Sequential(Flatten, BatchNorm1d, Linear, ReLU, …,
//! Linear)`, the convnet `Sequential(Conv2d, ReLU, MaxPool2d, Conv2d, ReLU, MaxPool2d,
//! Flatten, Dropout, Linear)`. A tensor's name is its module's index `i` in that list:
//!
//! | name | shape | what |
//! | --- | --- | --- |
//! | `i.weight`, `i.bias` | `[784]` | BatchNorm gamma, beta |
//! | `i.running_mean`, `i.running_var` | `[784]` | BatchNorm moving statistics |
//! | `i.num_batches_tracked` | `[]` (i64) | training steps taken (PyTorch's BatchNorm buffer; a model without BatchNorm has none) |
//! | `i.weight` | `[out, in]` | Dense kernel, transposed from Keras' `[in, out]` |
//! | `i.weight` | `[out, in, k, k]` | Conv2D kernel (stored this way) |
//! | `i.bias` | `[out]` | Dense or Conv2D bias |
//!
//! The architecture travels in the file's metadata: `layers`, the layer list in the text
//! form of [`crate::model::LayerSpec`], and `raw_pixels`; `hidden` (the hidden Dense
//! widths) is written too, for PyTorch users and older readers, and is all that files
//! from before `layers` hold. A checkpoint adds `adam.m` and `adam.v` (the flat
//! parameter layout) and the run's state.

use crate::aligned::Aligned;
use crate::backend::EpochRecord;
use crate::backend::StepProgress;
use crate::fsutil::{open_regular, write_atomic, InputFileError};
use crate::model::{
    format_layers, parse_hidden, parse_layers, Activation, LayerSpec, ModelConfig, OptimState,
    ParamLayout, Params, INPUT, MAX_PARAMS,
};
use crate::settings::{steps_per_epoch, FieldError, Settings};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Metadata value of `format`, identifying files this program wrote.
const FORMAT: &str = "mnist-gpu";
/// Architecture metadata keys: the layer list, and the hidden widths of the MLP (all
/// that files written before `layers` hold).
const LAYERS: &str = "layers";
const HIDDEN: &str = "hidden";

#[derive(Debug, Error)]
pub enum ModelFileError {
    #[error("{path}: {error}")]
    Read {
        path: PathBuf,
        error: InputFileError,
    },
    #[error("{path}: cannot write: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a safetensors file ({reason})")]
    NotSafetensors { path: PathBuf, reason: String },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

/// Everything in a checkpoint besides the parameters: enough to continue the run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunState {
    pub optim: OptimState,
    /// Epochs finished so far.
    pub epochs_done: usize,
    /// The settings the run was started with.
    pub run: RunSettings,
    /// The finished epochs' metrics (`epochs_done` records).
    pub history: Vec<EpochRecord>,
    /// Where the run stopped inside epoch `epochs_done + 1` (a checkpoint written on
    /// Ctrl-C); `None` when it was written at the end of an epoch.
    pub partial: Option<StepProgress>,
}

/// A run's settings, as its checkpoint stores them: what defines the run (its model is
/// the file's architecture; the rest is stored as [`Settings::fields`] and read back
/// through [`Settings::read`], each field by the rule of the flag it stands for), and
/// what the command line ran it with.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSettings {
    /// The model (the checkpoint's parameters'), the total epochs and the rest.
    pub settings: Settings,
    pub data_dir: PathBuf,
    pub grid_offset: usize,
    /// What trained (`cpu`, or the GPU adapter's name); `None` in older checkpoints.
    pub device: Option<String>,
    /// The run's extra `--metrics` file, continued on resume.
    pub metrics: Option<PathBuf>,
    /// Fingerprints of the data the run trains on; `None` in older checkpoints.
    pub data_digest: Option<DataDigest>,
}

/// The [`crate::data::Dataset::digest`]s of a run's training and test sets (after the
/// run's limits), compared when the run is resumed.
#[derive(Clone, Debug, PartialEq)]
pub struct DataDigest {
    pub train: String,
    pub test: String,
}

/// Each layer's module index in the model's `torch.nn.Sequential` (see the module
/// header): a `Flatten` goes before a batchnorm or dense layer that takes an image, and
/// a `ReLU` after a layer with `relu`.
pub fn torch_indices(config: &ModelConfig) -> Vec<usize> {
    let mut next = 0;
    let mut indices = Vec::with_capacity(config.layers.len());
    for (layer, input) in config.layers.iter().zip(config.layer_inputs()) {
        let flat_only = matches!(layer, LayerSpec::BatchNorm | LayerSpec::Dense { .. });
        if flat_only && matches!(input, Activation::Image { .. }) {
            next += 1;
        }
        indices.push(next);
        let relu = matches!(
            layer,
            LayerSpec::Dense { relu: true, .. } | LayerSpec::Conv2d { relu: true, .. }
        );
        next += 1 + usize::from(relu);
    }
    indices
}

/// What a model file's tensor holds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Holds {
    Gamma,
    Beta,
    MovingMean,
    MovingVar,
    /// Weighted layer `w`'s kernel; `Some((in, out))` for a dense kernel, which the file
    /// stores transposed (`[out, in]`).
    Kernel(usize, Option<(usize, usize)>),
    Bias(usize),
}

/// Every f32 tensor of a model file, in order: name, PyTorch shape and what it holds.
fn tensor_names(config: &ModelConfig) -> Vec<(String, Vec<usize>, Holds)> {
    let indices = torch_indices(config);
    let features = config.batchnorm_features();
    let mut names = Vec::new();
    if features > 0 {
        let name = |what: &str| format!("{}.{what}", indices[0]);
        names.push((name("weight"), vec![features], Holds::Gamma));
        names.push((name("bias"), vec![features], Holds::Beta));
        names.push((name("running_mean"), vec![features], Holds::MovingMean));
        names.push((name("running_var"), vec![features], Holds::MovingVar));
    }
    for (w, weighted) in config.weighted_layers().iter().enumerate() {
        let index = indices[weighted.layer];
        let out = weighted.bias_len;
        let (shape, transposed) = match config.layers[weighted.layer] {
            LayerSpec::Conv2d { size, .. } => {
                let channels = weighted.kernel_len / (out * size * size);
                (vec![out, channels, size, size], None)
            }
            _ => {
                let fan_in = weighted.kernel_len / out;
                (vec![out, fan_in], Some((fan_in, out)))
            }
        };
        names.push((
            format!("{index}.weight"),
            shape,
            Holds::Kernel(w, transposed),
        ));
        names.push((format!("{index}.bias"), vec![out], Holds::Bias(w)));
    }
    names
}

fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// A tensor to write: name, shape, values (borrowed where the layout is already
/// PyTorch's, so a large model is not copied more than it must be).
type Tensor<'a> = (String, Vec<usize>, Cow<'a, [f32]>);

/// (name, shape, values) of every model tensor, PyTorch layout.
fn model_tensors(params: &Params) -> Vec<Tensor<'_>> {
    let values = |holds: Holds| -> Cow<'_, [f32]> {
        match holds {
            Holds::Gamma => params.gamma().into(),
            Holds::Beta => params.beta().into(),
            Holds::MovingMean => params.moving_mean.as_slice().into(),
            Holds::MovingVar => params.moving_var.as_slice().into(),
            Holds::Kernel(w, Some((rows, cols))) => transpose(params.kernel(w), rows, cols).into(),
            Holds::Kernel(w, None) => params.kernel(w).into(),
            Holds::Bias(w) => params.bias(w).into(),
        }
    };
    tensor_names(&params.config)
        .into_iter()
        .map(|(name, shape, holds)| (name, shape, values(holds)))
        .collect()
}

/// The architecture's metadata. `hidden` is written for the MLP only: a reader that
/// knows nothing else would take any other model for an MLP.
fn architecture_metadata(config: &ModelConfig) -> HashMap<String, String> {
    let input = if config.is_mlp() {
        "flatten 28x28 u8 pixels, multiplied by pixel_scale"
    } else {
        "28x28 u8 pixels as [1, 28, 28] (channels, height, width), multiplied by pixel_scale"
    };
    let mut metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        (LAYERS.to_string(), format_layers(&config.layers)),
        ("raw_pixels".to_string(), config.raw_pixels.to_string()),
        ("pixel_scale".to_string(), config.pixel_scale().to_string()),
        ("input".to_string(), input.to_string()),
    ]);
    if config.is_mlp() {
        let hidden: Vec<String> = config.hidden().iter().map(|h| h.to_string()).collect();
        metadata.insert(HIDDEN.to_string(), hidden.join(","));
    }
    metadata
}

/// The file's bytes. The tensors' values are viewed in place (no copy); the one large
/// allocation is the file itself.
fn serialize(
    tensors: &[Tensor],
    extra: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    metadata: HashMap<String, String>,
    path: &Path,
) -> Result<Vec<u8>, ModelFileError> {
    let f32s = tensors.iter().map(|(name, shape, values)| {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        (name, Dtype::F32, shape, bytes)
    });
    let others = extra
        .iter()
        .map(|(name, dtype, shape, bytes)| (name, *dtype, shape, bytes.as_slice()));
    let views = f32s
        .chain(others)
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(dtype, shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>();
    let encode_err = |e: String| ModelFileError::Invalid {
        path: path.to_path_buf(),
        problem: format!("cannot encode: {e}"),
    };
    let bytes = views
        .and_then(|views| safetensors::serialize(views, Some(metadata)))
        .map_err(|e| encode_err(e.to_string()))?;
    canonical_header(bytes).map_err(encode_err)
}

/// The same safetensors file with its JSON header's keys in sorted order. The
/// safetensors crate writes the metadata in `HashMap` order, which differs from run to
/// run; sorted keys make identical runs write byte-identical files. The header is
/// replaced in place, so the tensors' bytes are not copied again.
fn canonical_header(mut bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().map_err(|_| "short file")?);
    let data_start = 8 + header_len as usize;
    let mut header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..data_start]).map_err(|e| e.to_string())?;
    if let Some(metadata) = header.get_mut("__metadata__") {
        // Through a BTreeMap, so the order is sorted whatever serde_json's map type keeps.
        let sorted: BTreeMap<String, String> =
            serde_json::from_value(metadata.take()).map_err(|e| e.to_string())?;
        *metadata = serde_json::to_value(sorted).map_err(|e| e.to_string())?;
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    // The data must start 8-byte aligned: pad the header with spaces, as safetensors does.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut head = (json.len() as u64).to_le_bytes().to_vec();
    head.extend_from_slice(&json);
    bytes.splice(..data_start, head);
    Ok(bytes)
}

/// Save the trained model (parameters + BatchNorm statistics), atomically.
pub fn save_model(params: &Params, steps: u64, path: &Path) -> Result<(), ModelFileError> {
    let bytes = model_bytes(params, steps, path)?;
    write_atomic(path, &bytes).map_err(|error| ModelFileError::Write {
        path: path.to_path_buf(),
        error,
    })
}

/// The bytes [`save_model`] writes (`path` only names the file in errors).
pub fn model_bytes(params: &Params, steps: u64, path: &Path) -> Result<Vec<u8>, ModelFileError> {
    serialize(
        &model_tensors(params),
        steps_tensor(&params.config, steps),
        architecture_metadata(&params.config),
        path,
    )
}

/// PyTorch's BatchNorm step counter, in a model with a BatchNorm.
fn steps_tensor(config: &ModelConfig, steps: u64) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    if config.batchnorm_features() == 0 {
        return Vec::new();
    }
    vec![(
        format!("{}.num_batches_tracked", torch_indices(config)[0]),
        Dtype::I64,
        vec![],
        (steps as i64).to_le_bytes().to_vec(),
    )]
}

/// Save a resumable checkpoint (model + Adam state + run state), atomically.
pub fn save_checkpoint(
    params: &Params,
    state: &RunState,
    path: &Path,
) -> Result<(), ModelFileError> {
    let bytes = checkpoint_bytes(params, state, path)?;
    write_atomic(path, &bytes).map_err(|error| ModelFileError::Write {
        path: path.to_path_buf(),
        error,
    })
}

/// The bytes [`save_checkpoint`] writes (`path` only names the file in errors).
fn checkpoint_bytes(
    params: &Params,
    state: &RunState,
    path: &Path,
) -> Result<Vec<u8>, ModelFileError> {
    // The run's model is stored as the file's architecture.
    debug_assert_eq!(state.run.settings.model, params.config);
    let mut metadata = architecture_metadata(&params.config);
    metadata.extend(checkpoint_metadata(state));
    let mut tensors = model_tensors(params);
    for (name, values) in [("adam.m", &state.optim.m), ("adam.v", &state.optim.v)] {
        tensors.push((name.into(), vec![values.len()], values[..].into()));
    }
    serialize(
        &tensors,
        steps_tensor(&params.config, state.optim.step),
        metadata,
        path,
    )
}

/// A parsed file: its bytes stay alive while tensors are read.
struct Reader<'a> {
    path: &'a Path,
    tensors: SafeTensors<'a>,
    metadata: HashMap<String, String>,
}

impl<'a> Reader<'a> {
    fn new(path: &'a Path, bytes: &'a [u8]) -> Result<Self, ModelFileError> {
        let not_st = |e: safetensors::SafeTensorError| ModelFileError::NotSafetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(not_st)?;
        let tensors = SafeTensors::deserialize(bytes).map_err(not_st)?;
        Ok(Reader {
            path,
            tensors,
            metadata: meta.metadata().clone().unwrap_or_default(),
        })
    }

    fn invalid(&self, problem: impl Into<String>) -> ModelFileError {
        ModelFileError::Invalid {
            path: self.path.to_path_buf(),
            problem: problem.into(),
        }
    }

    fn meta(&self, key: &str) -> Result<&str, ModelFileError> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| self.missing(key))
    }

    fn missing(&self, key: &str) -> ModelFileError {
        self.invalid(format!(
            "metadata has no '{key}' entry (was this file written by mnist-gpu?)"
        ))
    }

    /// A metadata entry that is not what it stands for, in the words of its rule.
    fn refused(&self, error: FieldError) -> ModelFileError {
        match error {
            FieldError::Missing(key) => self.missing(key),
            error => self.invalid(format!("metadata {error}")),
        }
    }

    fn meta_parse<T: std::str::FromStr>(&self, key: &'static str) -> Result<T, ModelFileError> {
        let text = self.meta(key)?;
        text.parse().map_err(|_| {
            self.refused(FieldError::Invalid {
                key,
                text: text.to_string(),
            })
        })
    }

    /// The architecture: from `layers` (which `hidden`, when present, must agree with),
    /// or in files written before `layers` from `hidden`; either way a model the
    /// trainers implement and small enough to load.
    fn config(&self) -> Result<ModelConfig, ModelFileError> {
        let (key, layers) = match self.metadata.get(LAYERS) {
            Some(text) => {
                let layers = parse_layers(text)
                    .map_err(|e| self.invalid(format!("metadata '{LAYERS}': {e}")))?;
                (LAYERS, layers)
            }
            None => (HIDDEN, ModelConfig::mlp(&self.hidden()?, false).layers),
        };
        let config = ModelConfig {
            layers,
            raw_pixels: self.meta_parse("raw_pixels")?,
        };
        config
            .check()
            .map_err(|e| self.invalid(format!("metadata '{key}': {e}")))?;
        if key == LAYERS {
            self.check_hidden_agrees(&config)?;
        }
        Ok(config)
    }

    /// The widths in metadata `hidden`.
    fn hidden(&self) -> Result<Vec<usize>, ModelFileError> {
        let text = self.metadata.get(HIDDEN).ok_or_else(|| {
            self.invalid(format!(
                "metadata has neither '{LAYERS}' nor '{HIDDEN}' (was this file written by \
                 mnist-gpu?)"
            ))
        })?;
        parse_hidden(text).map_err(|e| self.invalid(format!("metadata '{HIDDEN}': {e}")))
    }

    /// A `hidden` next to `layers` names the same hidden widths (an MLP without hidden
    /// layers writes it empty).
    fn check_hidden_agrees(&self, config: &ModelConfig) -> Result<(), ModelFileError> {
        let hidden = match self.metadata.get(HIDDEN).map(|text| text.trim()) {
            None => return Ok(()),
            Some("") => Vec::new(),
            Some(_) => self.hidden()?,
        };
        if hidden != config.hidden() {
            return Err(self.invalid(format!(
                "metadata '{LAYERS}' ({}) and '{HIDDEN}' ({}) describe different models",
                format_layers(&config.layers),
                self.metadata[HIDDEN].escape_debug()
            )));
        }
        Ok(())
    }

    /// Tensor `name` as f32 values, checked for presence, dtype, shape and finiteness.
    fn f32s(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelFileError> {
        let view = self
            .tensors
            .tensor(name)
            .map_err(|_| self.invalid(format!("tensor '{name}' is missing")))?;
        if view.dtype() != Dtype::F32 {
            return Err(self.invalid(format!(
                "tensor '{name}' has dtype {:?}, expected F32",
                view.dtype()
            )));
        }
        if view.shape() != shape {
            return Err(self.invalid(format!(
                "tensor '{name}' has shape {:?}, expected {shape:?} for this architecture",
                view.shape()
            )));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(self.invalid(format!(
                "tensor '{name}' holds a non-finite value ({}) at index {i}",
                values[i]
            )));
        }
        Ok(values)
    }

    fn params(&self) -> Result<Params, ModelFileError> {
        let config = self.config()?;
        let layout = ParamLayout::new(&config);
        let mut params = Params {
            trainable: Aligned::zeros(layout.total),
            moving_mean: Vec::new(),
            moving_var: Vec::new(),
            config,
            layout,
        };
        for (name, shape, holds) in tensor_names(&params.config) {
            let values = self.f32s(&name, &shape)?;
            let layout = &params.layout;
            let range = match holds {
                Holds::Gamma => layout.gamma.clone(),
                Holds::Beta => layout.beta.clone(),
                Holds::MovingMean => {
                    params.moving_mean = values;
                    continue;
                }
                Holds::MovingVar => {
                    self.check_variances(&name, &values)?;
                    params.moving_var = values;
                    continue;
                }
                Holds::Kernel(w, _) => layout.kernels[w].clone(),
                Holds::Bias(w) => layout.biases[w].clone(),
            };
            let values = match holds {
                Holds::Kernel(_, Some((rows, cols))) => transpose(&values, cols, rows),
                _ => values,
            };
            params.trainable[range].copy_from_slice(&values);
        }
        Ok(params)
    }

    /// A moving variance is never negative.
    fn check_variances(&self, name: &str, var: &[f32]) -> Result<(), ModelFileError> {
        match var.iter().position(|&v| v < 0.0) {
            Some(i) => Err(self.invalid(format!(
                "tensor '{name}' holds a negative variance at index {i}"
            ))),
            None => Ok(()),
        }
    }
}

/// The bytes of a model or checkpoint file. Only a regular file is read, and only
/// after its size has been checked against its header, so a FIFO, a huge file or one
/// whose header promises more data than it holds is refused before it is read.
fn read(path: &Path, checkpoint: bool) -> Result<Vec<u8>, ModelFileError> {
    let read_err = |error: InputFileError| ModelFileError::Read {
        path: path.to_path_buf(),
        error,
    };
    let (mut file, len) = open_regular(path).map_err(read_err)?;
    let mut head = Vec::new();
    (&mut file)
        .take(8)
        .read_to_end(&mut head)
        .map_err(|e| read_err(InputFileError::from_io(e)))?;
    check_file_size(path, &head, len, checkpoint)?;
    let mut bytes = Vec::with_capacity(len as usize);
    bytes.extend_from_slice(&head);
    file.read_to_end(&mut bytes)
        .map_err(|e| read_err(InputFileError::from_io(e)))?;
    Ok(bytes)
}

/// Largest safetensors header accepted (ours are a few KiB).
const MAX_HEADER: u64 = 1 << 20;

/// Refuse a file larger than the largest model (or checkpoint) this program makes, or
/// whose 8-byte header length points past its end.
fn check_file_size(
    path: &Path,
    head: &[u8],
    len: u64,
    checkpoint: bool,
) -> Result<(), ModelFileError> {
    let not_st = |reason: String| ModelFileError::NotSafetensors {
        path: path.to_path_buf(),
        reason,
    };
    let Ok(head) = <[u8; 8]>::try_from(head) else {
        return Err(not_st(format!("{len} bytes, shorter than a header")));
    };
    let header_len = u64::from_le_bytes(head);
    if header_len > MAX_HEADER || 8 + header_len > len {
        return Err(not_st(format!(
            "its header claims {header_len} bytes but the file holds {len}"
        )));
    }
    // Parameters (and for a checkpoint Adam's two moments), the BatchNorm statistics,
    // the step count and the header.
    let copies = if checkpoint { 3 } else { 1 };
    let max = (copies * MAX_PARAMS as u64 + 2 * INPUT as u64) * 4 + 8 + 8 + header_len;
    if len > max {
        return Err(ModelFileError::Invalid {
            path: path.to_path_buf(),
            problem: format!(
                "is {len} bytes, more than the largest {} this program writes ({max} bytes)",
                if checkpoint { "checkpoint" } else { "model" }
            ),
        });
    }
    Ok(())
}

impl RunState {
    /// Refuse an interrupted epoch that does not fit an epoch of `train_samples` samples
    /// (the run's training set, after its limit).
    pub fn check_partial_fits(&self, train_samples: usize) -> Result<(), String> {
        match self.partial {
            Some(p) => check_steps_fit(
                p.steps_done,
                self.run.settings.options.batch_size,
                train_samples,
            ),
            None => Ok(()),
        }
    }
}

/// An interrupted epoch's `steps_done` leave a step of the epoch to take.
fn check_steps_fit(steps_done: usize, batch_size: usize, samples: usize) -> Result<(), String> {
    let steps = steps_per_epoch(samples, batch_size);
    if steps_done >= steps {
        return Err(format!(
            "metadata '{PARTIAL_STEPS}' is {steps_done}, but an epoch of this run has {steps} steps"
        ));
    }
    Ok(())
}

/// Load a model (or the model part of a checkpoint), validated against its architecture.
pub fn load_model(path: &Path) -> Result<Params, ModelFileError> {
    let bytes = read(path, false)?;
    model_from(path, &bytes)
}

/// Load a checkpoint: the model, Adam's state and the run's state.
pub fn load_checkpoint(path: &Path) -> Result<(Params, RunState), ModelFileError> {
    let bytes = read(path, true)?;
    checkpoint_from(path, &bytes)
}

/// Name used in errors from [`parse_model`] and [`parse_checkpoint`], which have no file.
const IN_MEMORY: &str = "<bytes>";

/// [`load_model`] on the bytes of a file (errors name `<bytes>`); for fuzzing.
pub fn parse_model(bytes: &[u8]) -> Result<Params, ModelFileError> {
    model_from(Path::new(IN_MEMORY), bytes)
}

/// [`load_checkpoint`] on the bytes of a file (errors name `<bytes>`); for fuzzing.
pub fn parse_checkpoint(bytes: &[u8]) -> Result<(Params, RunState), ModelFileError> {
    checkpoint_from(Path::new(IN_MEMORY), bytes)
}

fn model_from(path: &Path, bytes: &[u8]) -> Result<Params, ModelFileError> {
    Reader::new(path, bytes)?.params()
}

fn checkpoint_from(path: &Path, bytes: &[u8]) -> Result<(Params, RunState), ModelFileError> {
    let reader = Reader::new(path, bytes)?;
    let params = reader.params()?;
    let len = params.layout.total;
    let optim = OptimState {
        m: reader.f32s("adam.m", &[len])?.into(),
        v: reader.f32s("adam.v", &[len])?.into(),
        step: reader.meta_parse(ADAM_STEP)?,
    };
    let run = reader.run_settings(params.config.clone())?;
    let epochs_done: usize = reader.meta_parse(EPOCHS_DONE)?;
    let epochs = run.settings.options.epochs;
    if epochs_done > epochs {
        return Err(reader.invalid(format!(
            "metadata '{EPOCHS_DONE}' is {epochs_done}, more than the run's {epochs} epochs"
        )));
    }
    let history = reader.history(epochs_done)?;
    let partial = reader.partial_epoch(&run)?;
    Ok((
        params,
        RunState {
            optim,
            epochs_done,
            run,
            history,
            partial,
        },
    ))
}

/// Checkpoint metadata keys (besides the architecture's and the settings',
/// [`Settings::fields`]).
const DATA_DIR: &str = "data_dir";
const GRID_OFFSET: &str = "grid_offset";
const DEVICE: &str = "device";
const METRICS: &str = "metrics";
const TRAIN_DIGEST: &str = "data_train_digest";
const TEST_DIGEST: &str = "data_test_digest";
const HISTORY: &str = "history";
const ADAM_STEP: &str = "adam_step";
const EPOCHS_DONE: &str = "epochs_done";
/// The steps of epoch `epochs_done + 1` already taken and their sums (Ctrl-C mid-epoch).
const PARTIAL_STEPS: &str = "epoch_steps_done";
const PARTIAL_SAMPLES: &str = "epoch_samples_done";
const PARTIAL_LOSS: &str = "epoch_loss_sum";
const PARTIAL_CORRECT: &str = "epoch_correct";

/// The metadata that [`Reader::run_settings`] and friends read back.
fn checkpoint_metadata(state: &RunState) -> HashMap<String, String> {
    let run = &state.run;
    let mut meta = HashMap::from([
        (DATA_DIR, run.data_dir.display().to_string()),
        (GRID_OFFSET, run.grid_offset.to_string()),
        (
            HISTORY,
            serde_json::to_string(&state.history).unwrap_or_default(),
        ),
        (ADAM_STEP, state.optim.step.to_string()),
        (EPOCHS_DONE, state.epochs_done.to_string()),
    ]);
    if let Some(device) = &run.device {
        meta.insert(DEVICE, device.clone());
    }
    if let Some(metrics) = &run.metrics {
        meta.insert(METRICS, metrics.display().to_string());
    }
    if let Some(digest) = &run.data_digest {
        meta.insert(TRAIN_DIGEST, digest.train.clone());
        meta.insert(TEST_DIGEST, digest.test.clone());
    }
    if let Some(p) = &state.partial {
        meta.insert(PARTIAL_STEPS, p.steps_done.to_string());
        meta.insert(PARTIAL_SAMPLES, p.samples_done.to_string());
        meta.insert(PARTIAL_LOSS, p.loss_sum.to_string());
        meta.insert(PARTIAL_CORRECT, p.correct.to_string());
    }
    meta.extend(run.settings.fields());
    meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

impl Reader<'_> {
    /// Metadata `key` as a whole number of at least `min`.
    fn meta_at_least(&self, key: &'static str, min: usize) -> Result<usize, ModelFileError> {
        let value: usize = self.meta_parse(key)?;
        if value < min {
            return Err(self.invalid(format!(
                "metadata '{key}' is {value}; it must be at least {min}"
            )));
        }
        Ok(value)
    }

    /// The run's settings, for the checkpoint's `model`: each through the rule of the
    /// flag it stands for ([`Settings::read`]), so a checkpoint is held to the same rules
    /// in the same words.
    fn run_settings(&self, model: ModelConfig) -> Result<RunSettings, ModelFileError> {
        let text = |key| self.metadata.get(key).map(String::as_str);
        let settings = Settings::read(model, text).map_err(|error| self.refused(error))?;
        let data_dir = self.meta(DATA_DIR)?;
        if data_dir.is_empty() {
            return Err(self.invalid(format!("metadata '{DATA_DIR}' is empty")));
        }
        Ok(RunSettings {
            settings,
            data_dir: PathBuf::from(data_dir),
            grid_offset: self.meta_parse(GRID_OFFSET)?,
            device: self.metadata.get(DEVICE).cloned(),
            metrics: self.metadata.get(METRICS).map(PathBuf::from),
            data_digest: self.data_digest()?,
        })
    }

    /// Both data digests, or neither (a checkpoint written before they were stored).
    fn data_digest(&self) -> Result<Option<DataDigest>, ModelFileError> {
        let (train, test) = (
            self.metadata.get(TRAIN_DIGEST),
            self.metadata.get(TEST_DIGEST),
        );
        let (train, test) = match (train, test) {
            (None, None) => return Ok(None),
            (Some(train), Some(test)) => (train, test),
            (Some(_), None) => {
                return Err(self.invalid(format!(
                    "metadata has '{TRAIN_DIGEST}' but no '{TEST_DIGEST}'"
                )))
            }
            (None, Some(_)) => {
                return Err(self.invalid(format!(
                    "metadata has '{TEST_DIGEST}' but no '{TRAIN_DIGEST}'"
                )))
            }
        };
        for (key, value) in [(TRAIN_DIGEST, train), (TEST_DIGEST, test)] {
            if !crate::data::is_digest(value) {
                return Err(self.invalid(format!(
                    "metadata '{key}' has the invalid value '{value}' (expected {}, then 16 \
                     hexadecimal digits)",
                    crate::data::DIGEST_PREFIX
                )));
            }
        }
        Ok(Some(DataDigest {
            train: train.clone(),
            test: test.clone(),
        }))
    }

    /// The finished epochs' records: one per epoch done, every number finite.
    fn history(&self, epochs_done: usize) -> Result<Vec<EpochRecord>, ModelFileError> {
        let history: Vec<EpochRecord> = serde_json::from_str(self.meta(HISTORY)?)
            .map_err(|e| self.invalid(format!("metadata '{HISTORY}' is not valid: {e}")))?;
        if history.len() != epochs_done {
            return Err(self.invalid(format!(
                "metadata '{HISTORY}' holds {} epochs but '{EPOCHS_DONE}' is {epochs_done}",
                history.len()
            )));
        }
        let finite = |r: &EpochRecord| {
            [r.loss, r.accuracy, r.val_loss, r.val_accuracy, r.seconds]
                .iter()
                .all(|v| v.is_finite())
        };
        if let Some(r) = history.iter().find(|r| !finite(r)) {
            return Err(self.invalid(format!(
                "metadata '{HISTORY}': epoch {} holds a non-finite number",
                r.epoch
            )));
        }
        Ok(history)
    }

    /// The progress of an interrupted epoch, consistent with the batch size (every step
    /// before an interruption is a full batch).
    /// With a training limit the epoch's step count is known here; otherwise it is
    /// checked against the data set when the run resumes.
    fn partial_epoch(&self, run: &RunSettings) -> Result<Option<StepProgress>, ModelFileError> {
        if !self.metadata.contains_key(PARTIAL_STEPS) {
            return Ok(None);
        }
        let batch_size = run.settings.options.batch_size;
        let steps_done = self.meta_at_least(PARTIAL_STEPS, 1)?;
        if let Some(samples) = run.settings.train_limit {
            check_steps_fit(steps_done, batch_size, samples).map_err(|why| self.invalid(why))?;
        }
        let samples_done: usize = self.meta_parse(PARTIAL_SAMPLES)?;
        let correct: u64 = self.meta_parse(PARTIAL_CORRECT)?;
        let loss_sum: f64 = self.meta_parse(PARTIAL_LOSS)?;
        if steps_done.checked_mul(batch_size) != Some(samples_done) {
            return Err(self.invalid(format!(
                "metadata '{PARTIAL_SAMPLES}' is {samples_done}, but {steps_done} steps of \
                 batch {batch_size} take {} samples",
                steps_done.saturating_mul(batch_size)
            )));
        }
        if correct > samples_done as u64 {
            return Err(self.invalid(format!(
                "metadata '{PARTIAL_CORRECT}' is {correct}, more than the {samples_done} samples seen"
            )));
        }
        if !(loss_sum.is_finite() && loss_sum >= 0.0) {
            return Err(self.invalid(format!(
                "metadata '{PARTIAL_LOSS}' is {loss_sum}; it must be a finite sum of losses"
            )));
        }
        Ok(Some(StepProgress {
            steps_done,
            steps_total: 0,
            samples_done,
            loss_sum,
            correct,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(bytes: &[u8]) -> HashMap<String, String> {
        let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
        header.metadata().clone().unwrap()
    }

    /// The model file of `params`, with its metadata changed by `edit`.
    fn model_with(params: &Params, edit: impl FnOnce(&mut HashMap<String, String>)) -> Vec<u8> {
        let mut meta = architecture_metadata(&params.config);
        edit(&mut meta);
        let tensors = model_tensors(params);
        serialize(
            &tensors,
            steps_tensor(&params.config, 0),
            meta,
            Path::new(IN_MEMORY),
        )
        .unwrap()
    }

    /// The state of an interrupted run of `params` with every setting unlike the default
    /// and every optional entry present.
    fn interrupted_state(params: &Params) -> RunState {
        let len = params.layout.total;
        RunState {
            optim: OptimState {
                m: vec![0.5; len].into(),
                v: vec![0.25; len].into(),
                step: 9,
            },
            epochs_done: 0,
            run: RunSettings {
                settings: Settings {
                    model: params.config.clone(),
                    lr: 1e-9,
                    options: crate::settings::TrainOptions {
                        epochs: 3,
                        batch_size: 7,
                        seed: 5,
                        shuffle: false,
                        augment: true,
                    },
                    train_limit: Some(70),
                    test_limit: None,
                },
                data_dir: PathBuf::from("data"),
                grid_offset: 4,
                device: Some("cpu".into()),
                metrics: Some(PathBuf::from("/tmp/m.jsonl")),
                data_digest: Some(DataDigest {
                    train: "fnv1a64:0123456789abcdef".into(),
                    test: "fnv1a64:fedcba9876543210".into(),
                }),
            },
            history: Vec::new(),
            partial: Some(StepProgress {
                steps_done: 9,
                steps_total: 0,
                samples_done: 63,
                loss_sum: 20.5,
                correct: 6,
            }),
        }
    }

    /// A checkpoint's metadata keeps its keys and values (so that checkpoints written
    /// before keep loading), and reads back to the state written.
    #[test]
    fn a_checkpoint_keeps_its_metadata_and_reads_back() {
        let params = Params::init(&ModelConfig::mlp(&[8], false), 5);
        let state = interrupted_state(&params);
        let expected = [
            ("data_dir", "data"),
            ("epochs", "3"),
            ("batch_size", "7"),
            ("seed", "5"),
            ("shuffle", "false"),
            ("augment", "true"),
            ("lr", "0.000000001"),
            ("train_limit", "70"),
            ("test_limit", "all"),
            ("grid_offset", "4"),
            ("device", "cpu"),
            ("metrics", "/tmp/m.jsonl"),
            ("data_train_digest", "fnv1a64:0123456789abcdef"),
            ("data_test_digest", "fnv1a64:fedcba9876543210"),
            ("history", "[]"),
            ("adam_step", "9"),
            ("epochs_done", "0"),
            ("epoch_steps_done", "9"),
            ("epoch_samples_done", "63"),
            ("epoch_loss_sum", "20.5"),
            ("epoch_correct", "6"),
        ];
        let written: BTreeMap<String, String> = checkpoint_metadata(&state).into_iter().collect();
        let expected: BTreeMap<String, String> = expected
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(written, expected);
        let bytes = checkpoint_bytes(&params, &state, Path::new(IN_MEMORY)).unwrap();
        assert_eq!(parse_checkpoint(&bytes).unwrap(), (params, state));
    }

    #[test]
    fn a_model_file_round_trips_its_layers() {
        for (config, layers, hidden) in [
            (
                ModelConfig::default(),
                "batchnorm,dense(128,relu),dense(10)",
                "128",
            ),
            (
                ModelConfig::mlp(&[32, 16], true),
                "batchnorm,dense(32,relu),dense(16,relu),dense(10)",
                "32,16",
            ),
            (ModelConfig::mlp(&[], false), "batchnorm,dense(10)", ""),
        ] {
            let params = Params::init(&config, 5);
            let bytes = model_bytes(&params, 3, Path::new(IN_MEMORY)).unwrap();
            let meta = metadata(&bytes);
            assert_eq!(
                (meta[LAYERS].as_str(), meta[HIDDEN].as_str()),
                (layers, hidden)
            );
            assert_eq!(parse_model(&bytes).unwrap(), params, "{layers}");
        }
    }

    /// The convnet's tensors carry the index of their module in the obvious
    /// `torch.nn.Sequential` and PyTorch's shapes, and read back to the same model.
    #[test]
    fn a_convnet_file_has_pytorch_names_and_round_trips() {
        let params = Params::init(&ModelConfig::convnet(false), 5);
        let bytes = model_bytes(&params, 3, Path::new(IN_MEMORY)).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let mut shapes: Vec<(String, Vec<usize>)> = file
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect();
        shapes.sort();
        let expected = [
            ("0.bias", vec![32]),
            ("0.weight", vec![32, 1, 3, 3]),
            ("3.bias", vec![64]),
            ("3.weight", vec![64, 32, 3, 3]),
            ("8.bias", vec![10]),
            ("8.weight", vec![10, 1600]),
        ];
        let expected: Vec<(String, Vec<usize>)> = expected
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect();
        assert_eq!(shapes, expected);
        assert!(!metadata(&bytes).contains_key(HIDDEN));
        assert_eq!(parse_model(&bytes).unwrap(), params);
        // The dense kernel is stored transposed ([out, in]); the conv kernels as they are.
        let dense = file.tensor("8.weight").unwrap();
        let first: Vec<f32> = dense.data()[..8]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(first, [params.kernel(2)[0], params.kernel(2)[10]]);
    }

    #[test]
    fn a_file_written_before_layers_loads_from_hidden() {
        let params = Params::init(&ModelConfig::mlp(&[32, 16], true), 5);
        let old = model_with(&params, |m| {
            m.remove(LAYERS);
        });
        assert!(!metadata(&old).contains_key(LAYERS));
        assert_eq!(parse_model(&old).unwrap(), params);
    }

    #[test]
    fn bad_architecture_metadata_is_refused_in_one_line() {
        let cases = [
            (
                LAYERS,
                "batchnorm,dense(10,relu)",
                "metadata 'layers': layer 2 (dense(10,relu)) is not supported",
            ),
            (
                LAYERS,
                "batchnorm,dense(128,relu),maxpool2d(2),dense(10)",
                "metadata 'layers': layer 3 (maxpool2d(2)): maxpool2d needs an image, but its \
                 input is 128 flat values",
            ),
            (LAYERS, "", "metadata 'layers': expected a list of layers"),
            (
                LAYERS,
                "batchnorm,dense(70000,relu),dense(10)",
                "metadata 'layers': layer 2 ('dense(70000,relu)'): layer width 70000 is too large",
            ),
            (
                LAYERS,
                "batchnorm,\ndense(1\n28,relu),dense(10)",
                "metadata 'layers': layer 2 ('dense(1\\n28,relu)'): control character '\\n'",
            ),
            (
                HIDDEN,
                "128,64",
                "metadata 'layers' (batchnorm,dense(128,relu),dense(10)) and 'hidden' (128,64) \
                 describe different models",
            ),
            (HIDDEN, "", "and 'hidden' () describe different models"),
            (
                HIDDEN,
                "abc",
                "metadata 'hidden': 'abc' is not a layer width",
            ),
        ];
        let params = Params::init(&ModelConfig::default(), 5);
        for (key, value, words) in cases {
            let bytes = model_with(&params, |m| {
                m.insert(key.to_string(), value.to_string());
            });
            let error = parse_model(&bytes).unwrap_err().to_string();
            assert!(error.starts_with("<bytes>: "), "{error}");
            assert!(error.contains(words), "{words}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }
}
