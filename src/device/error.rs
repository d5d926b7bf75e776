//! The wgpu trainer's errors. Every failure is a [`DeviceError`] whose message is a
//! complete user-facing sentence on one line (what was asked, what was found, what to
//! do); nothing panics.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("unknown {flag} value '{given}': valid backends are vulkan, gl, metal, dx12")]
    UnknownBackend { flag: String, given: String },
    #[error("no GPU adapter found ({searched}); use --cpu-fallback to train on the CPU")]
    NoAdapter { searched: String },
    #[error("{flag} '{wanted}' matches no adapter; found:\n{found}\n(choose one by index, name or backend, or use --cpu-fallback to train on the CPU)")]
    AdapterNotFound {
        flag: String,
        wanted: String,
        found: String,
    },
    #[error("{flag} '{wanted}' matches {count} adapters: {matches}; choose one by its index (e.g. {flag} {first}) or narrow the search with --backend")]
    AmbiguousAdapter {
        flag: String,
        wanted: String,
        count: usize,
        matches: String,
        first: usize,
    },
    #[error("adapter '{adapter}' cannot run the trainer: {reason} (choose another with --adapter, or use --cpu-fallback)")]
    Unsupported { adapter: String, reason: String },
    #[error("could not open a device on adapter '{adapter}': {message} ({hint})")]
    RequestDevice {
        adapter: String,
        message: String,
        /// What to do instead ([`open_failure_hint`]).
        hint: String,
    },
    #[error("GPU error: {} (use --cpu-fallback to train on the CPU)", one_line(.0))]
    Gpu(String),
    #[error("the GPU device was lost: {} (use --cpu-fallback to train on the CPU)", one_line(.0))]
    DeviceLost(String),
}

/// What to suggest when an adapter cannot be opened: for NVIDIA's driver through wgpu's
/// GL backend, which fails where its Vulkan driver works, that backend; else the CPU.
pub fn open_failure_hint(info: &wgpu::AdapterInfo) -> String {
    const NVIDIA: u32 = 0x10de;
    let nvidia = info.vendor == NVIDIA || info.name.to_ascii_lowercase().contains("nvidia");
    if info.backend == wgpu::Backend::Gl && nvidia {
        "wgpu's GL backend has failed to open NVIDIA's OpenGL driver before, a \
         limitation of wgpu or the driver; use --adapter vulkan for this GPU, or \
         --cpu-fallback"
            .into()
    } else {
        "use --cpu-fallback to train on the CPU".into()
    }
}

/// wgpu's messages span several lines (`Validation Error\n\nCaused by:\n  In …`): join
/// them into one, so every error stays a single line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "Caused by:")
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(name: &str, vendor: u32, backend: wgpu::Backend) -> wgpu::AdapterInfo {
        wgpu::AdapterInfo {
            name: name.into(),
            vendor,
            ..wgpu::AdapterInfo::new(wgpu::DeviceType::DiscreteGpu, backend)
        }
    }

    #[test]
    fn a_failed_nvidia_gl_device_points_to_vulkan() {
        let nvidia_gl = adapter("NVIDIA H200/PCIe/SSE2", 0x10de, wgpu::Backend::Gl);
        let error = DeviceError::RequestDevice {
            adapter: nvidia_gl.name.clone(),
            message: "Parent device is lost".into(),
            hint: open_failure_hint(&nvidia_gl),
        };
        let text = error.to_string();
        assert!(text.contains("use --adapter vulkan for this GPU"), "{text}");
        assert!(!text.contains('\n'), "{text}");
        for other in [
            adapter("NVIDIA H200", 0x10de, wgpu::Backend::Vulkan),
            adapter(
                "llvmpipe (LLVM 15.0.6, 256 bits)",
                0x10005,
                wgpu::Backend::Gl,
            ),
        ] {
            assert_eq!(
                open_failure_hint(&other),
                "use --cpu-fallback to train on the CPU"
            );
        }
    }
}
