//! Instance, adapter and device choice, limits, and error plumbing for the wgpu trainer.
//!
//! Every failure here is a [`DeviceError`] whose message is a complete user-facing
//! sentence (what was asked, what was found, what to do); nothing panics.

use std::future::Future;
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Which device to train on (`--backend`, `--adapter`). `None` falls back to wgpu's
/// environment variables `WGPU_BACKEND` / `WGPU_ADAPTER_NAME`, then to the best adapter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceChoice {
    /// Restrict to one backend: `vulkan`, `gl`, `metal` or `dx12`.
    pub backend: Option<String>,
    /// A backend name, an index from [`list_adapters`], or a case-insensitive substring
    /// of the adapter name.
    pub adapter: Option<String>,
}

/// The backend names `--backend` accepts.
pub const BACKEND_NAMES: [&str; 4] = ["vulkan", "gl", "metal", "dx12"];

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
    #[error("could not open a device on adapter '{adapter}': {message} (use --cpu-fallback to train on the CPU)")]
    RequestDevice { adapter: String, message: String },
    #[error("GPU error: {} (use --cpu-fallback to train on the CPU)", one_line(.0))]
    Gpu(String),
    #[error("the GPU device was lost: {} (use --cpu-fallback to train on the CPU)", one_line(.0))]
    DeviceLost(String),
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

/// One adapter as `mnist-gpu adapters` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSummary {
    /// Position in the enumeration (what `--adapter N` selects).
    pub index: usize,
    pub name: String,
    /// `Vulkan`, `GL`, `Metal`, `DX12`.
    pub backend: String,
    /// `discrete`, `integrated`, `virtual`, `cpu`, `other`.
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_storage_size: u32,
    /// Whether the adapter can run compute shaders at all (false on some GL drivers).
    pub compute: bool,
    /// A software rasteriser running on the CPU (see [`is_software`]).
    pub software: bool,
}

fn backend_label(backend: wgpu::Backend) -> &'static str {
    match backend {
        wgpu::Backend::Vulkan => "Vulkan",
        wgpu::Backend::Gl => "GL",
        wgpu::Backend::Metal => "Metal",
        wgpu::Backend::Dx12 => "DX12",
        wgpu::Backend::BrowserWebGpu => "WebGPU",
        wgpu::Backend::Noop => "noop",
    }
}

fn type_label(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete",
        wgpu::DeviceType::IntegratedGpu => "integrated",
        wgpu::DeviceType::VirtualGpu => "virtual",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    }
}

/// Preference order: discrete > integrated > virtual > cpu > other.
fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn parse_backend(name: &str) -> Option<wgpu::Backends> {
    match name.trim().to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Some(wgpu::Backends::VULKAN),
        "gl" | "gles" | "opengl" => Some(wgpu::Backends::GL),
        "metal" | "mtl" => Some(wgpu::Backends::METAL),
        "dx12" | "d3d12" => Some(wgpu::Backends::DX12),
        _ => None,
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The backends to search: `--backend`, else `WGPU_BACKEND`, else all.
fn backends_for(choice: &DeviceChoice) -> Result<(wgpu::Backends, String), DeviceError> {
    let (flag, value) = match (&choice.backend, env_nonempty("WGPU_BACKEND")) {
        (Some(b), _) => ("--backend", b.clone()),
        (None, Some(env)) => ("WGPU_BACKEND", env),
        (None, None) => return Ok((wgpu::Backends::all(), "all backends".into())),
    };
    let backends = parse_backend(&value).ok_or_else(|| DeviceError::UnknownBackend {
        flag: flag.into(),
        given: value.clone(),
    })?;
    Ok((
        backends,
        format!("backend {}", value.trim().to_ascii_lowercase()),
    ))
}

/// An instance over every backend (see [`Found`] for why even under `--backend`).
fn make_instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::all();
    wgpu::Instance::new(desc)
}

/// A software rasteriser (lavapipe, llvmpipe, SwiftShader, WARP): it runs the WGSL
/// kernels correctly but far slower than the CPU path, so it is never picked
/// automatically, and barriers cost there what they save on a GPU (which is why the
/// trainer picks the per-feature BatchNorm backward on it).
pub fn is_software(info: &wgpu::AdapterInfo) -> bool {
    let name = info.name.to_ascii_lowercase();
    info.device_type == wgpu::DeviceType::Cpu
        || ["llvmpipe", "lavapipe", "softpipe", "swiftshader", "warp"]
            .iter()
            .any(|s| name.contains(s))
}

fn summarize(index: usize, adapter: &wgpu::Adapter) -> AdapterSummary {
    let info = adapter.get_info();
    let software = is_software(&info);
    let limits = adapter.limits();
    let compute = adapter
        .get_downlevel_capabilities()
        .flags
        .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS);
    AdapterSummary {
        index,
        name: info.name,
        backend: backend_label(info.backend).into(),
        device_type: type_label(info.device_type).into(),
        driver: info.driver,
        driver_info: info.driver_info,
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
        max_buffer_size: limits.max_buffer_size,
        max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
        max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
        compute,
        software,
    }
}

/// The adapters `choice` allows, each with its number in the list of every adapter on
/// every backend. The numbers do not depend on `--backend`: `adapters` and
/// `adapters --backend gl` give an adapter the same number, so `--adapter N` names the
/// same adapter whatever backend filter is set.
struct Found {
    adapters: Vec<wgpu::Adapter>,
    numbers: Vec<usize>,
    searched: String,
}

fn enumerate(choice: &DeviceChoice) -> Result<Found, DeviceError> {
    let (backends, searched) = backends_for(choice)?;
    let instance = make_instance();
    let every = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let (numbers, adapters) = every
        .into_iter()
        .enumerate()
        .filter(|(_, a)| backends.contains(wgpu::Backends::from(a.get_info().backend)))
        .unzip();
    Ok(Found {
        adapters,
        numbers,
        searched,
    })
}

/// Every adapter wgpu finds (restricted to `choice.backend` / `WGPU_BACKEND` when set),
/// numbered as `--adapter N` selects them.
pub fn list_adapters(choice: &DeviceChoice) -> Result<Vec<AdapterSummary>, DeviceError> {
    let found = enumerate(choice)?;
    Ok(found
        .adapters
        .iter()
        .zip(&found.numbers)
        .map(|(a, &number)| summarize(number, a))
        .collect())
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1024 * 1024))
}

/// The table `mnist-gpu adapters` prints.
pub fn format_adapters(list: &[AdapterSummary]) -> String {
    if list.is_empty() {
        return "no GPU adapters found (use --cpu-fallback to train on the CPU)\n".into();
    }
    let mut out = String::new();
    for a in list {
        let driver = match (a.driver.is_empty(), a.driver_info.is_empty()) {
            (true, true) => "unknown driver".to_string(),
            (false, true) => a.driver.clone(),
            (true, false) => a.driver_info.clone(),
            (false, false) => format!("{} {}", a.driver, a.driver_info),
        };
        out.push_str(&format!(
            "[{}] {} — {}, {}, {}{}\n    storage binding {}, buffer {}, {} storage buffers/stage, {} invocations/workgroup, {} KiB workgroup memory\n",
            a.index,
            a.name,
            a.backend,
            a.device_type,
            driver,
            if a.compute { "" } else { " (NO compute shaders)" },
            mib(a.max_storage_buffer_binding_size),
            mib(a.max_buffer_size),
            a.max_storage_buffers_per_shader_stage,
            a.max_compute_invocations_per_workgroup,
            a.max_compute_workgroup_storage_size / 1024,
        ));
    }
    out
}

fn found_list(found: &Found) -> String {
    found_list_of(found, &(0..found.adapters.len()).collect::<Vec<_>>())
}

/// `found_list` of the adapters at `positions` in `found`, each shown by its number.
fn found_list_of(found: &Found, positions: &[usize]) -> String {
    positions
        .iter()
        .map(|&i| {
            let info = found.adapters[i].get_info();
            format!(
                "  [{}] {} ({}, {})",
                found.numbers[i],
                info.name,
                backend_label(info.backend),
                type_label(info.device_type)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The adapter that `choice` selects, as [`GpuContext::new`] would pick it: for checking
/// `--backend` / `--adapter` before anything slow is loaded.
pub fn chosen_adapter(choice: &DeviceChoice) -> Result<AdapterSummary, DeviceError> {
    let (number, adapter) = pick_adapter(choice)?;
    Ok(summarize(number, &adapter))
}

/// The adapter `choice` asks for (`--adapter`, else `WGPU_ADAPTER_NAME`), or the best one;
/// with its number.
fn pick_adapter(choice: &DeviceChoice) -> Result<(usize, wgpu::Adapter), DeviceError> {
    let mut found = enumerate(choice)?;
    if found.adapters.is_empty() {
        return Err(DeviceError::NoAdapter {
            searched: found.searched,
        });
    }
    let position = match (&choice.adapter, env_nonempty("WGPU_ADAPTER_NAME")) {
        (Some(a), _) => position_of(&found, "--adapter", a.trim())?,
        (None, Some(env)) => position_of(&found, "WGPU_ADAPTER_NAME", env.trim())?,
        (None, None) => best(&found, (0..found.adapters.len()).collect()).expect("non-empty"),
    };
    Ok((
        found.numbers[position],
        found.adapters.swap_remove(position),
    ))
}

/// Of the adapters at `positions`, the best: compute shaders first, then discrete >
/// integrated > virtual > cpu, then the lower number.
fn best(found: &Found, positions: Vec<usize>) -> Option<usize> {
    positions.into_iter().min_by_key(|&i| {
        let adapter = &found.adapters[i];
        let compute = adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS);
        (!compute, type_rank(adapter.get_info().device_type), i)
    })
}

/// The position in `found` of the adapter `wanted` names (given as `flag`): a backend name
/// (the best adapter of that backend), a number from `mnist-gpu adapters`, or a name.
fn position_of(found: &Found, flag: &str, wanted: &str) -> Result<usize, DeviceError> {
    let chosen = if let Some(backend) = parse_backend(wanted) {
        let of_backend = (0..found.adapters.len())
            .filter(|&i| {
                backend.contains(wgpu::Backends::from(found.adapters[i].get_info().backend))
            })
            .collect();
        best(found, of_backend)
    } else if let Ok(number) = wanted.parse::<usize>() {
        found.numbers.iter().position(|&n| n == number)
    } else {
        let names: Vec<String> = found.adapters.iter().map(|a| a.get_info().name).collect();
        match adapters_named(&names, wanted)[..] {
            [] => None,
            [only] => Some(only),
            ref several => {
                return Err(DeviceError::AmbiguousAdapter {
                    flag: flag.into(),
                    wanted: wanted.into(),
                    count: several.len(),
                    matches: found_list_of(found, several)
                        .lines()
                        .map(str::trim)
                        .collect::<Vec<_>>()
                        .join(", "),
                    first: found.numbers[several[0]],
                })
            }
        }
    };
    chosen.ok_or_else(|| DeviceError::AdapterNotFound {
        flag: flag.into(),
        wanted: wanted.into(),
        found: found_list(found),
    })
}

/// The indices of the adapters a name given to `--adapter` selects: those whose name is
/// exactly `wanted` (ignoring case) if any, else those whose name contains it. More than
/// one is ambiguous: lavapipe and llvmpipe are both called `llvmpipe (LLVM …)`, and two
/// identical GPUs share a name, so a guess could train on the wrong one.
pub fn adapters_named(names: &[String], wanted: &str) -> Vec<usize> {
    let needle = wanted.trim().to_lowercase();
    let exact: Vec<usize> = (0..names.len())
        .filter(|&i| names[i].to_lowercase() == needle)
        .collect();
    if !exact.is_empty() {
        return exact;
    }
    (0..names.len())
        .filter(|&i| names[i].to_lowercase().contains(&needle))
        .collect()
}

/// Storage buffers bound by the most demanding kernel (batchnorm and softmax: 7).
pub const STORAGE_BUFFERS_PER_STAGE: u32 = 7;
/// Largest workgroup (softmax, adam, relu: 256 invocations).
pub const INVOCATIONS_PER_WORKGROUP: u32 = 256;
/// Workgroup memory of the GEMM tiles (2 × 2048 f32: the 16 KiB WebGPU guarantees).
pub const WORKGROUP_STORAGE_BYTES: u32 = 16384;

/// What the trainer needs beyond the kernels' fixed demands: the largest single buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    /// Bytes of the largest storage buffer that will be bound (the resident training set).
    pub largest_buffer: u64,
}

/// The limits the trainer asks for: only what its kernels use, and storage bindings
/// large enough for the resident data set.
fn required_limits(needs: &Needs, offered: &wgpu::Limits) -> wgpu::Limits {
    let mut required = wgpu::Limits::downlevel_defaults();
    required.max_storage_buffers_per_shader_stage = STORAGE_BUFFERS_PER_STAGE;
    required.max_compute_invocations_per_workgroup = INVOCATIONS_PER_WORKGROUP;
    required.max_compute_workgroup_size_x = INVOCATIONS_PER_WORKGROUP;
    required.max_compute_workgroup_storage_size = WORKGROUP_STORAGE_BYTES;
    required.max_compute_workgroups_per_dimension =
        required.max_compute_workgroups_per_dimension.max(1024);
    // The data set must fit; beyond it ask for WebGPU's default 128 MiB (or what the
    // adapter has, if less) so batch-sized activation buffers have room.
    const ROOM: u64 = 128 << 20;
    required.max_storage_buffer_binding_size = needs
        .largest_buffer
        .max(ROOM.min(offered.max_storage_buffer_binding_size));
    required.max_buffer_size = required
        .max_storage_buffer_binding_size
        .max(ROOM.min(offered.max_buffer_size));
    // Keep the adapter's alignments (they are minimums: larger is looser).
    required.min_storage_buffer_offset_alignment = offered.min_storage_buffer_offset_alignment;
    required.min_uniform_buffer_offset_alignment = offered.min_uniform_buffer_offset_alignment;
    required
}

/// Every limit the trainer needs must be offered; the error says which is not.
fn check_limits(required: &wgpu::Limits, offered: &wgpu::Limits) -> Result<(), String> {
    let checks: [(&str, u64, u64); 7] = [
        (
            "storage buffers per shader stage",
            required.max_storage_buffers_per_shader_stage as u64,
            offered.max_storage_buffers_per_shader_stage as u64,
        ),
        (
            "invocations per workgroup",
            required.max_compute_invocations_per_workgroup as u64,
            offered.max_compute_invocations_per_workgroup as u64,
        ),
        (
            "workgroup size x",
            required.max_compute_workgroup_size_x as u64,
            offered.max_compute_workgroup_size_x as u64,
        ),
        (
            "workgroup memory (bytes)",
            required.max_compute_workgroup_storage_size as u64,
            offered.max_compute_workgroup_storage_size as u64,
        ),
        (
            "workgroups per dimension",
            required.max_compute_workgroups_per_dimension as u64,
            offered.max_compute_workgroups_per_dimension as u64,
        ),
        (
            "storage buffer binding size (bytes; the resident training set)",
            required.max_storage_buffer_binding_size,
            offered.max_storage_buffer_binding_size,
        ),
        (
            "buffer size (bytes)",
            required.max_buffer_size,
            offered.max_buffer_size,
        ),
    ];
    match checks.iter().find(|(_, need, have)| need > have) {
        Some((what, need, have)) => {
            Err(format!("it offers {have} {what}, the trainer needs {need}"))
        }
        None => Ok(()),
    }
}

/// The device's uncaptured errors, and why it was lost (if it was).
type ErrorSink = Arc<Mutex<Vec<String>>>;
type LostSink = Arc<Mutex<Option<String>>>;

/// Where the device's uncaptured errors and its loss are collected, for
/// [`GpuContext::check`].
fn error_sinks(device: &wgpu::Device) -> (ErrorSink, LostSink) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        if let Ok(mut list) = sink.lock() {
            list.push(e.to_string());
        }
    }));
    let lost = Arc::new(Mutex::new(None));
    let lost_sink = lost.clone();
    device.set_device_lost_callback(move |reason, message| {
        if let Ok(mut slot) = lost_sink.lock() {
            *slot = Some(format!("{reason:?}: {message}"));
        }
    });
    (errors, lost)
}

/// The opened device with its error sinks.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    errors: ErrorSink,
    lost: LostSink,
}

impl GpuContext {
    /// Choose an adapter, check it offers what the trainer needs, and open a device with
    /// exactly those limits.
    pub fn new(choice: &DeviceChoice, needs: Needs) -> Result<GpuContext, DeviceError> {
        let (_, adapter) = pick_adapter(choice)?;
        pollster::block_on(GpuContext::open(adapter, needs))
    }

    /// The browser's WebGPU adapter (high-performance preference), opened as
    /// [`GpuContext::new`] opens a native one. Async all the way: a page cannot block
    /// on the browser's promises.
    pub async fn new_browser(needs: Needs) -> Result<GpuContext, DeviceError> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::BROWSER_WEBGPU;
        let instance = wgpu::Instance::new(desc);
        let options = wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        };
        let adapter =
            instance
                .request_adapter(&options)
                .await
                .map_err(|e| DeviceError::NoAdapter {
                    searched: format!("WebGPU: {e}"),
                })?;
        GpuContext::open(adapter, needs).await
    }

    /// Check `adapter` offers what the trainer needs and open a device with exactly
    /// those limits.
    async fn open(adapter: wgpu::Adapter, needs: Needs) -> Result<GpuContext, DeviceError> {
        let info = adapter.get_info();
        let unsupported = |reason: String| DeviceError::Unsupported {
            adapter: format!("{} ({})", info.name, backend_label(info.backend)),
            reason,
        };
        if !adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            return Err(unsupported("it does not support compute shaders".into()));
        }
        let offered = adapter.limits();
        let required = required_limits(&needs, &offered);
        check_limits(&required, &offered).map_err(unsupported)?;
        // Anything downlevel_defaults asks for beyond what the adapter has (GL quirks):
        // lower it to the adapter's value rather than fail on limits we never use.
        let required = required.or_worse_values_from(&offered);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("mnist-gpu"),
                // Timestamp queries only where offered, for the benchmarks' per-kernel step
                // profile (`GpuBackend::profile_step_on_gpu`); training never uses them.
                required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
                required_limits: required.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| DeviceError::RequestDevice {
                adapter: info.name.clone(),
                message: e.to_string(),
            })?;
        let (errors, lost) = error_sinks(&device);
        Ok(GpuContext {
            device,
            queue,
            info,
            limits: required,
            errors,
            lost,
        })
    }

    /// `llvmpipe (LLVM 15.0.6, 256 bits) — Vulkan, llvmpipe Mesa 22.3.6`.
    pub fn describe(&self) -> String {
        let driver = format!("{} {}", self.info.driver, self.info.driver_info);
        let driver = driver.trim();
        if driver.is_empty() {
            format!("{} — {}", self.info.name, backend_label(self.info.backend))
        } else {
            format!(
                "{} — {}, {}",
                self.info.name,
                backend_label(self.info.backend),
                driver
            )
        }
    }

    /// Report any error wgpu raised outside an error scope, or a lost device.
    pub fn check(&self) -> Result<(), DeviceError> {
        if let Some(reason) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(DeviceError::DeviceLost(reason));
        }
        let mut errors = self
            .errors
            .lock()
            .map_err(|_| DeviceError::Gpu("error sink poisoned".into()))?;
        if !errors.is_empty() {
            let message = errors.join("\n");
            errors.clear();
            return Err(DeviceError::Gpu(message));
        }
        Ok(())
    }

    /// Run `f` inside validation and out-of-memory error scopes; any error becomes a
    /// [`DeviceError::Gpu`] carrying wgpu's message.
    pub fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T, DeviceError> {
        let scopes = self.begin_scope();
        let value = f();
        self.end_scope(what, scopes)?;
        Ok(value)
    }

    /// Open validation and out-of-memory error scopes; close them with [`Self::end_scope`].
    pub fn begin_scope(&self) -> (wgpu::ErrorScopeGuard, wgpu::ErrorScopeGuard) {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        (oom, validation)
    }

    /// Close the scopes of [`Self::begin_scope`]; any error they caught becomes a [`DeviceError::Gpu`].
    pub fn end_scope(
        &self,
        what: &str,
        scopes: (wgpu::ErrorScopeGuard, wgpu::ErrorScopeGuard),
    ) -> Result<(), DeviceError> {
        let (oom, validation) = scopes;
        // A browser resolves the scopes' promises only once this code yields to its event
        // loop, so blocking here would hang the page: their errors go to the error sink
        // instead, which the next `check` (every chunk of training steps) reports.
        #[cfg(target_arch = "wasm32")]
        {
            let (v, o) = (validation.pop(), oom.pop());
            let sink = self.errors.clone();
            let what = what.to_string();
            wasm_bindgen_futures::spawn_local(async move {
                if let Some(e) = v.await.or(o.await) {
                    if let Ok(mut list) = sink.lock() {
                        list.push(format!("{what}: {e}"));
                    }
                }
            });
        }
        #[cfg(not(target_arch = "wasm32"))]
        let v = pollster::block_on(validation.pop());
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = v.or(pollster::block_on(oom.pop())) {
            return Err(DeviceError::Gpu(format!("{what}: {e}")));
        }
        self.check()
    }

    /// Block until all submitted work has finished.
    pub fn wait(&self) -> Result<(), DeviceError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| DeviceError::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check()
    }

    /// Copy `size` bytes of `buffer` from `offset` to a host-readable buffer and read
    /// them once the device has done the copy.
    pub async fn read(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>, DeviceError> {
        if size == 0 {
            return Ok(Vec::new());
        }
        let staging = self.copy_to_staging(buffer, offset, size);
        read_mapped(self, &staging, size).await
    }

    /// `len` f32 values of `buffer` from element `offset`.
    pub async fn read_floats(
        &self,
        buffer: &wgpu::Buffer,
        offset: usize,
        len: usize,
    ) -> Result<Vec<f32>, DeviceError> {
        let bytes = self.read(buffer, offset as u64 * 4, len as u64 * 4).await?;
        Ok(bytemuck::cast_slice::<u8, f32>(&bytes).to_vec())
    }

    /// [`GpuContext::read`], blocking: for the kernels' host-callable twins
    /// (`gpu/twins.rs`) and the profiler, which tests and benches call directly.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_buffer(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>, DeviceError> {
        crate::host::block_on(self.read(buffer, offset, size))
    }

    /// [`GpuContext::read_floats`], blocking (see [`GpuContext::read_buffer`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f32(
        &self,
        buffer: &wgpu::Buffer,
        offset: usize,
        len: usize,
    ) -> Result<Vec<f32>, DeviceError> {
        crate::host::block_on(self.read_floats(buffer, offset, len))
    }

    /// Let the device make progress without waiting for it: natively a non-blocking
    /// poll (it runs the callbacks of finished maps); in a browser one turn of the event
    /// loop, during which the GPU's promises resolve and the page repaints.
    pub async fn turn(&self) -> Result<(), DeviceError> {
        #[cfg(target_arch = "wasm32")]
        crate::host::yield_now().await;
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Poll)
            .map_err(|e| DeviceError::Gpu(format!("polling the GPU: {e}")))?;
        Ok(())
    }

    /// Wait for the submission `index` (every submission: `None`): natively the device
    /// is polled until it is done, which also runs its maps' callbacks; a browser cannot
    /// block, so there it is one turn of the event loop and the caller asks again
    /// (whether its readback has arrived) until it has.
    pub async fn settle(&self, index: Option<wgpu::SubmissionIndex>) -> Result<(), DeviceError> {
        #[cfg(target_arch = "wasm32")]
        {
            let _ = index;
            crate::host::yield_now().await;
        }
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: index,
                timeout: None,
            })
            .map_err(|e| DeviceError::Gpu(format!("waiting for the GPU: {e}")))?;
        Ok(())
    }

    fn copy_to_staging(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::Buffer {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        staging
    }
}

/// Start mapping `size` bytes of the MAP_READ buffer `staging`; the future yields them
/// (and unmaps it). The mapping completes during a device poll on native builds, and by
/// the browser's event loop on the web, so readbacks can always be awaited.
pub fn map_read(
    staging: &wgpu::Buffer,
    size: u64,
) -> impl Future<Output = Result<Vec<u8>, DeviceError>> + 'static {
    let (done, mapped) = futures_channel::oneshot::channel();
    staging.map_async(wgpu::MapMode::Read, 0..size, move |result| {
        let _ = done.send(result);
    });
    let staging = staging.clone();
    async move {
        let failed = |e: String| DeviceError::Gpu(format!("reading results back: {e}"));
        match mapped.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(_) => return Err(failed("the map never completed".into())),
        }
        let bytes = staging
            .get_mapped_range(0..size)
            .map_err(|e| failed(e.to_string()))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }
}

/// Read `size` bytes of `staging` once the device has written them: start the map,
/// [`GpuContext::settle`] the device (natively the map completes there; a browser
/// resolves it on its own), then await it.
pub async fn read_mapped(
    ctx: &GpuContext,
    staging: &wgpu::Buffer,
    size: u64,
) -> Result<Vec<u8>, DeviceError> {
    let read = map_read(staging, size);
    ctx.settle(None).await?;
    read.await
}

#[cfg(test)]
mod tests {
    use super::adapters_named;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_name_part_matching_one_adapter_selects_it() {
        let list = names(&[
            "NVIDIA GeForce RTX 4090",
            "llvmpipe (LLVM 15.0.6, 256 bits)",
        ]);
        assert_eq!(adapters_named(&list, "nvidia"), vec![0]);
        assert_eq!(adapters_named(&list, " LLVMPIPE "), vec![1]);
        assert!(adapters_named(&list, "radeon").is_empty());
    }

    #[test]
    fn a_name_part_matching_several_adapters_returns_them_all() {
        // lavapipe (Vulkan) and llvmpipe (GL) share their name.
        let list = names(&[
            "llvmpipe (LLVM 15.0.6, 256 bits)",
            "llvmpipe (LLVM 15.0.6, 256 bits)",
        ]);
        assert_eq!(adapters_named(&list, "llvmpipe"), vec![0, 1]);
    }

    #[test]
    fn an_exact_name_wins_over_names_that_only_contain_it() {
        let list = names(&["Intel Arc A770", "Intel Arc", "Intel Arc A380"]);
        assert_eq!(adapters_named(&list, "intel arc"), vec![1]);
        assert_eq!(adapters_named(&list, "arc a"), vec![0, 2]);
    }
}
