//! [`CpuBackend`], the `--cpu-fallback` trainer, built on the layer families' CPU
//! references (`src/layers/*/cpu.rs`): the one forward pass ([`forward`]), the sparse
//! first layer ([`sparse`]), the step profiler ([`profile`]) and the cache-line-aligned
//! arrays its hot loops sweep ([`aligned`]).

pub mod aligned;
pub mod awake;
pub mod backend;
pub mod forward;
pub mod profile;
pub mod sparse;
pub mod stack;

pub use backend::CpuBackend;
pub use forward::infer;
