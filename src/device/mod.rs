//! The GPU device, below every layer family: which adapter trains ([`adapters`]), the
//! opened device with its limits, error scopes, waits and readbacks ([`context`]), every
//! failure as one user-facing line ([`error`]), and how a WGSL entry point becomes a
//! dispatch ([`kernel`]).

pub mod adapters;
pub mod context;
pub mod error;
pub mod kernel;

pub use adapters::{format_adapters, list_adapters, AdapterSummary, DeviceChoice};
pub use context::GpuContext;
pub use error::DeviceError;
