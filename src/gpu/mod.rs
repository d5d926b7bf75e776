//! The wgpu trainer: the layer families' WGSL kernels (`src/layers/`) dispatched through
//! wgpu, with the parameters, optimiser state and the whole data set resident on the
//! device for the whole run.
//!
//! - [`backend`]: [`GpuBackend`], the training step and evaluation as dispatches.
//! - `epoch`: an epoch's steps, submitted in measured chunks with progress read back.
//!
//! The device itself (adapters, context, errors, kernels) is [`crate::device`].

pub mod backend;
mod epoch;

pub use crate::device::{
    adapters, format_adapters, list_adapters, AdapterSummary, DeviceChoice, DeviceError, GpuContext,
};
pub use backend::GpuBackend;
#[cfg(not(target_arch = "wasm32"))]
pub use backend::{KernelTime, SubmissionTimes};
