//! Model and checkpoint files in the safetensors format, laid out the PyTorch way so that
//! `torch.nn.Sequential(Flatten, BatchNorm1d, Linear, ReLU, …, Linear)` loads them:
//!
//! | name | shape | what |
//! | --- | --- | --- |
//! | `1.weight`, `1.bias` | `[784]` | BatchNorm gamma, beta |
//! | `1.running_mean`, `1.running_var` | `[784]` | BatchNorm moving statistics |
//! | `1.num_batches_tracked` | `[]` (i64) | training steps taken (PyTorch's BatchNorm buffer) |
//! | `{2+2l}.weight` | `[out, in]` | Dense layer l kernel, transposed from Keras' `[in, out]` |
//! | `{2+2l}.bias` | `[out]` | Dense layer l bias |
//!
//! The architecture travels in the file's metadata (`hidden`, `raw_pixels`, …). A
//! checkpoint adds `adam.m` and `adam.v` (the flat parameter layout) and the run's state.

use crate::fsutil::write_atomic;
use crate::model::{ModelConfig, OptimState, ParamLayout, Params, INPUT};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Metadata value of `format`, identifying files this program wrote.
const FORMAT: &str = "mnist-gpu";

#[derive(Debug, Error)]
pub enum ModelFileError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
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
    /// Free-form settings of the run (batch size, seed, lr, …), as strings.
    pub settings: HashMap<String, String>,
}

/// The PyTorch-style name of Dense layer `l`'s tensor (`weight` or `bias`).
pub fn dense_name(l: usize, what: &str) -> String {
    format!("{}.{what}", 2 + 2 * l)
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

/// (name, shape, values) of every model tensor, PyTorch layout.
fn model_tensors(params: &Params) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let widths = params.config.widths();
    let mut tensors = vec![
        ("1.weight".into(), vec![INPUT], params.gamma().to_vec()),
        ("1.bias".into(), vec![INPUT], params.beta().to_vec()),
        (
            "1.running_mean".into(),
            vec![INPUT],
            params.moving_mean.clone(),
        ),
        (
            "1.running_var".into(),
            vec![INPUT],
            params.moving_var.clone(),
        ),
    ];
    for l in 0..params.config.dense_layers() {
        let (fan_in, fan_out) = (widths[l], widths[l + 1]);
        tensors.push((
            dense_name(l, "weight"),
            vec![fan_out, fan_in],
            transpose(params.kernel(l), fan_in, fan_out),
        ));
        tensors.push((
            dense_name(l, "bias"),
            vec![fan_out],
            params.bias(l).to_vec(),
        ));
    }
    tensors
}

fn architecture_metadata(config: &ModelConfig) -> HashMap<String, String> {
    let hidden: Vec<String> = config.hidden.iter().map(|h| h.to_string()).collect();
    HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("hidden".to_string(), hidden.join(",")),
        ("raw_pixels".to_string(), config.raw_pixels.to_string()),
        ("pixel_scale".to_string(), config.pixel_scale().to_string()),
        (
            "input".to_string(),
            "flatten 28x28 u8 pixels, multiplied by pixel_scale".to_string(),
        ),
    ])
}

fn serialize(
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    extra: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    metadata: HashMap<String, String>,
    path: &Path,
) -> Result<Vec<u8>, ModelFileError> {
    let mut raw: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| {
            (
                name,
                Dtype::F32,
                shape,
                bytemuck::cast_slice(&values).to_vec(),
            )
        })
        .collect();
    raw.extend(extra);
    let views = raw
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>();
    views
        .and_then(|views| safetensors::serialize(views, Some(metadata)))
        .map_err(|e| ModelFileError::Invalid {
            path: path.to_path_buf(),
            problem: format!("cannot encode: {e}"),
        })
}

/// Save the trained model (parameters + BatchNorm statistics), atomically.
pub fn save_model(params: &Params, steps: u64, path: &Path) -> Result<(), ModelFileError> {
    let bytes = serialize(
        model_tensors(params),
        steps_tensor(steps),
        architecture_metadata(&params.config),
        path,
    )?;
    write_atomic(path, &bytes).map_err(|source| ModelFileError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn steps_tensor(steps: u64) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    vec![(
        "1.num_batches_tracked".into(),
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
    let mut metadata = architecture_metadata(&params.config);
    metadata.extend(state.settings.clone());
    metadata.insert("adam_step".into(), state.optim.step.to_string());
    metadata.insert("epochs_done".into(), state.epochs_done.to_string());
    let mut tensors = model_tensors(params);
    tensors.push((
        "adam.m".into(),
        vec![state.optim.m.len()],
        state.optim.m.clone(),
    ));
    tensors.push((
        "adam.v".into(),
        vec![state.optim.v.len()],
        state.optim.v.clone(),
    ));
    let bytes = serialize(tensors, steps_tensor(state.optim.step), metadata, path)?;
    write_atomic(path, &bytes).map_err(|source| ModelFileError::Write {
        path: path.to_path_buf(),
        source,
    })
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
        self.metadata.get(key).map(String::as_str).ok_or_else(|| {
            self.invalid(format!(
                "metadata has no '{key}' entry (was this file written by mnist-gpu?)"
            ))
        })
    }

    fn meta_parse<T: std::str::FromStr>(&self, key: &str) -> Result<T, ModelFileError> {
        let text = self.meta(key)?;
        text.parse()
            .map_err(|_| self.invalid(format!("metadata '{key}' has the invalid value '{text}'")))
    }

    fn config(&self) -> Result<ModelConfig, ModelFileError> {
        let hidden = crate::model::parse_hidden(self.meta("hidden")?)
            .map_err(|e| self.invalid(format!("metadata 'hidden': {e}")))?;
        let config = ModelConfig {
            hidden,
            raw_pixels: self.meta_parse("raw_pixels")?,
        };
        config
            .check_size()
            .map_err(|e| self.invalid(format!("metadata 'hidden': {e}")))?;
        Ok(config)
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
        let mut trainable = vec![0.0f32; layout.total];
        trainable[layout.gamma.clone()].copy_from_slice(&self.f32s("1.weight", &[INPUT])?);
        trainable[layout.beta.clone()].copy_from_slice(&self.f32s("1.bias", &[INPUT])?);
        let widths = config.widths();
        for l in 0..config.dense_layers() {
            let (fan_in, fan_out) = (widths[l], widths[l + 1]);
            let weight = self.f32s(&dense_name(l, "weight"), &[fan_out, fan_in])?;
            trainable[layout.kernels[l].clone()]
                .copy_from_slice(&transpose(&weight, fan_out, fan_in));
            trainable[layout.biases[l].clone()]
                .copy_from_slice(&self.f32s(&dense_name(l, "bias"), &[fan_out])?);
        }
        let moving_mean = self.f32s("1.running_mean", &[INPUT])?;
        let moving_var = self.f32s("1.running_var", &[INPUT])?;
        if let Some(i) = moving_var.iter().position(|&v| v < 0.0) {
            return Err(self.invalid(format!(
                "tensor '1.running_var' holds a negative variance at index {i}"
            )));
        }
        Ok(Params {
            config,
            layout,
            trainable,
            moving_mean,
            moving_var,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ModelFileError> {
    if path.is_dir() {
        return Err(ModelFileError::Invalid {
            path: path.to_path_buf(),
            problem: "is a directory, expected a .safetensors file".into(),
        });
    }
    std::fs::read(path).map_err(|source| ModelFileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Load a model (or the model part of a checkpoint), validated against its architecture.
pub fn load_model(path: &Path) -> Result<Params, ModelFileError> {
    let bytes = read(path)?;
    model_from(path, &bytes)
}

/// Load a checkpoint: the model, Adam's state and the run's state.
pub fn load_checkpoint(path: &Path) -> Result<(Params, RunState), ModelFileError> {
    let bytes = read(path)?;
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
        m: reader.f32s("adam.m", &[len])?,
        v: reader.f32s("adam.v", &[len])?,
        step: reader.meta_parse("adam_step")?,
    };
    let epochs_done = reader.meta_parse("epochs_done")?;
    Ok((
        params,
        RunState {
            optim,
            epochs_done,
            settings: reader.metadata.clone(),
        },
    ))
}
