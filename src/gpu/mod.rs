//! The wgpu trainer (filled in by the GPU work).
