//! The wgpu trainer: hand-written WGSL compute shaders (`shaders/*.wgsl`) driven through
//! wgpu, with the parameters, optimiser state and the whole data set resident on the
//! device for the whole run.
//!
//! - [`adapters`]: which adapter trains ([`DeviceChoice`], the adapters table).
//! - [`context`]: the opened device: limits, error scopes, waits and readbacks.
//! - [`error`]: [`DeviceError`], every failure as one user-facing line.
//! - [`kernels`]: the pipelines and host-callable wrappers for tests and benchmarks.
//! - [`backend`]: [`GpuBackend`], the training step and evaluation.

pub mod adapters;
pub mod backend;
pub mod bindings;
pub mod context;
mod epoch;
pub mod error;
pub mod kernels;
#[cfg(not(target_arch = "wasm32"))]
pub mod twins;

pub use adapters::{format_adapters, list_adapters, AdapterSummary, DeviceChoice};
pub use backend::GpuBackend;
pub use context::GpuContext;
pub use error::DeviceError;
