//! Decoding and preparing a user's digit picture (PNG or JPEG bytes).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mnist_gpu::preprocess::from_bytes(data);
});
