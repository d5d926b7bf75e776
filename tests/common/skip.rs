//! Tests that need something this machine may lack (a GPU adapter, Chromium): under CI
//! (`CI` set) a missing dependency fails the test; elsewhere the test says visibly that it
//! skipped, and why, and how to get what it needs.
//!
//! The line is written straight to the process's stderr: the test harness captures
//! `print!`/`eprint!` output (and shows it only for failing tests), so an `eprintln!` skip
//! would vanish behind an "ok".

#![allow(dead_code)]

use std::io::Write;

/// Whether a missing dependency must fail the test (env `CI` set) instead of skipping.
pub fn strict() -> bool {
    std::env::var_os("CI").is_some()
}

/// `test` cannot run here because of `why`; `fix` says how to make it run. Panics under CI;
/// elsewhere prints `SKIPPED: test: why (fix)` where `cargo test` shows it. The caller
/// returns after this.
pub fn skip(test: &str, why: &str, fix: &str) {
    assert!(!strict(), "{test}: {why} (CI is set, so this fails; {fix})");
    let line = format!("\nSKIPPED: {test}: {why} ({fix})\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// How to get the software adapters the GPU tests run on without a GPU.
pub const ADAPTER_FIX: &str = "without a GPU, install Mesa's software drivers: apt-get install mesa-vulkan-drivers libvulkan1 libegl1 libegl-mesa0 libgl1-mesa-dri libgles2";
