//! mnist-gpu: train the Keras tutorial's MLP (Flatten → BatchNorm → Dense 128 ReLU →
//! Dense 10 softmax, Adam) on MNIST, either in hand-written WGSL compute shaders through
//! wgpu ([`gpu`]) or on the CPU ([`cpu`], which is also the numerical ground truth).
//!
//! The training loop ([`train`]) drives either one through the [`backend::Backend`] trait.
//! ARCHITECTURE.md says where each part lives. The modules are public where the command
//! line, the tests or the benches use them; the file helpers, the run directory and the
//! `--metrics` file rules are internal.

pub mod aligned;
#[cfg(not(target_arch = "wasm32"))]
pub mod app;
pub mod backend;
pub mod cpu;
pub mod data;
pub mod device;
mod fsutil;
pub mod gpu;
pub mod host;
pub mod interrupt;
pub mod layers;
#[cfg(not(target_arch = "wasm32"))]
mod metricsfile;
pub mod model;
pub mod modelfile;
pub mod output;
pub mod preprocess;
pub mod progress;
pub mod report;
#[cfg(not(target_arch = "wasm32"))]
pub mod run;
#[cfg(not(target_arch = "wasm32"))]
mod rundir;
pub mod settings;
pub mod train;
#[cfg(target_arch = "wasm32")]
pub mod web;
