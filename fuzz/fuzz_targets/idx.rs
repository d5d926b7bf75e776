//! The IDX reader (plain or gzipped), as images and as labels: errors are fine, panics
//! and runaway allocations are not.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mnist_gpu::data::parse_images(data);
    let _ = mnist_gpu::data::parse_labels(data);
});
