//! The wgpu trainer: hand-written WGSL compute shaders (`shaders/*.wgsl`) driven through
//! wgpu, with the parameters, optimiser state and the whole data set resident on the
//! device for the whole run.
//!
//! - [`context`]: adapter and device choice ([`DeviceChoice`]), limits, errors.
//! - [`kernels`]: the pipelines and host-callable wrappers for tests and benchmarks.
//! - [`backend`]: [`GpuBackend`], the training step and evaluation.

pub mod backend;
pub mod bindings;
pub mod context;
mod epoch;
pub mod kernels;
#[cfg(not(target_arch = "wasm32"))]
pub mod twins;

pub use backend::GpuBackend;
pub use context::{
    format_adapters, list_adapters, AdapterSummary, DeviceChoice, DeviceError, GpuContext,
};
