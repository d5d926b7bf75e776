//! [`CpuBackend`], the `--cpu-fallback` trainer, built on the layer families' CPU
//! references (`src/layers/*/cpu.rs`): the one forward pass ([`forward`]), the sparse
//! first layer ([`sparse`]) and the step profiler ([`profile`]). The arrays its hot loops
//! sweep start on a cache line ([`crate::aligned`]).

pub mod awake;
pub mod backend;
pub mod forward;
pub mod profile;
pub mod sparse;
pub mod stack;

pub use backend::CpuBackend;
pub use forward::infer;
