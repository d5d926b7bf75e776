//! The opened device: the limits the trainer asks for, its error sinks and scopes, and
//! the waits and readbacks every other part goes through ([`GpuContext::settle`],
//! [`read_mapped`]).

use super::adapters::{backend_label, pick_adapter, DeviceChoice};
use super::error::{open_failure_hint, DeviceError};
use std::future::Future;
use std::sync::{Arc, Mutex};

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
                hint: open_failure_hint(&info),
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

    /// The `T`s at element positions `range` of `buffer`, read once the device has
    /// copied them to a host-readable buffer.
    pub async fn read_as<T: bytemuck::Pod>(
        &self,
        buffer: &wgpu::Buffer,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<T>, DeviceError> {
        let size = std::mem::size_of::<T>() as u64;
        let bytes = range.len() as u64 * size;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.copy_to_staging(buffer, range.start as u64 * size, bytes);
        let read = read_mapped(self, &staging, bytes).await?;
        Ok(bytemuck::pod_collect_to_vec(&read))
    }

    /// `len` values of `T` of `buffer` from element `offset` ([`GpuContext::read_as`]),
    /// blocking: for the layer families' agreement cases (`layers/*/check.rs`) and the
    /// profiler, which tests and benches call directly.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_vec<T: bytemuck::Pod>(
        &self,
        buffer: &wgpu::Buffer,
        offset: usize,
        len: usize,
    ) -> Result<Vec<T>, DeviceError> {
        crate::host::block_on(self.read_as(buffer, offset..offset + len))
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
