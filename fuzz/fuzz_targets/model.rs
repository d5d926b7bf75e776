//! The safetensors model and checkpoint loader.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mnist_gpu::modelfile::parse_model(data);
    let _ = mnist_gpu::modelfile::parse_checkpoint(data);
});
