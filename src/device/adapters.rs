//! Which adapter trains: wgpu's adapters on every backend, numbered the same whatever
//! `--backend` says, the table `mnist-gpu adapters` prints, and the choice `--backend` /
//! `--adapter` (or wgpu's environment variables) make.

use super::error::DeviceError;

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

pub(super) fn backend_label(backend: wgpu::Backend) -> &'static str {
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
///
/// Without wgpu's validation of indirect calls: the trainer makes none, and wgpu builds
/// that validation's own compute pipelines when it opens a device, any failure of which
/// it reports as "Parent device is lost" (wgpu-core 30's `indirect_validation`). That is
/// the message NVIDIA's driver gave through the GL backend, where wgpu asks EGL for an
/// OpenGL 3.3 context; whether this was the cause is not yet tried on NVIDIA.
fn make_instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::all();
    desc.flags
        .remove(wgpu::InstanceFlags::VALIDATION_INDIRECT_CALL);
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
pub(super) fn pick_adapter(choice: &DeviceChoice) -> Result<(usize, wgpu::Adapter), DeviceError> {
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
/// integrated > virtual > cpu, then any backend before GL (the same GPU under Vulkan,
/// Metal or DX12 is the better driven), then the lower number.
fn best(found: &Found, positions: Vec<usize>) -> Option<usize> {
    positions.into_iter().min_by_key(|&i| {
        let adapter = &found.adapters[i];
        let compute = adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS);
        let info = adapter.get_info();
        let gl = info.backend == wgpu::Backend::Gl;
        (!compute, type_rank(info.device_type), gl, i)
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
