//! How a WGSL entry point becomes something the host can dispatch: the declarations a
//! layer family writes once (its uniform block with [`uniform!`], each entry point's
//! buffers with [`bindings!`]), the pipeline built from them ([`Kernel`]), a recorded
//! [`Dispatch`], and the buffer helpers every family uses.
//!
//! Each declaration is written once, in Rust, and serves both sides: the shader's own
//! declarations (its uniform struct and its `@binding` variables) are generated from it
//! and put before the family's WGSL ([`wgsl_declarations`]), the bind-group layout is
//! built from it, and a dispatch is built from a filled-in bindings struct, so no call
//! site lists buffers by position. `tests/shaders.rs` validates every shader through naga
//! and checks that each entry point uses only the bindings its declaration names, and
//! that naga lays out each generated struct at the Rust struct's offsets.

use super::context::GpuContext;
use super::error::DeviceError;
use bytemuck::Pod;
use wgpu::util::DeviceExt;

/// Threads per workgroup of the elementwise kernels (Adam, ReLU).
pub const ELEMENTWISE_WORKGROUP: u32 = 256;
/// Cap on workgroups of the grid-stride elementwise kernels.
pub const MAX_ELEMENTWISE_GROUPS: u32 = 1024;

/// How a shader reads a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Uniform,
    Read,
    ReadWrite,
}

/// One binding of an entry point: the WGSL variable's name, its binding number, access,
/// and the type of its array's elements (`f32`, `u32`; the uniform's is its struct).
pub type Slot = (&'static str, u32, Access, &'static str);

/// One bindings declaration, as the shader test reads it.
#[derive(Clone, Copy, Debug)]
pub struct BindingsDecl {
    pub name: &'static str,
    pub entry_points: &'static [&'static str],
    /// Every binding, the uniform block `u` (binding 0) first.
    pub slots: &'static [Slot],
}

/// The buffers of one dispatch of an entry point. Binding 0 is always the entry point's
/// uniform block `u`, which [`Kernel::dispatch`] uploads from a value of `Self::Uniform`.
pub trait Bindings {
    type Uniform: Uniform;
    const DECL: BindingsDecl;
    /// The storage buffers, in the order of `DECL.slots` after the uniform.
    fn buffers(&self) -> Vec<&wgpu::Buffer>;
}

/// Declares bindings types, a struct each with a field per storage buffer, and
/// `BINDINGS`, the list of their declarations (for [`crate::layers::Family::BINDINGS`]).
///
/// ```text
/// bindings! {
///     /// What the entry point does.
///     GemmBindings(GemmUniform) for ["gemm"] => { a: Read<f32> = 1, c: ReadWrite<f32> = 4 }
/// }
/// ```
///
/// declares `a` as `@group(0) @binding(1) var<storage, read> a: array<f32>;` in the
/// shader, beside `@group(0) @binding(0) var<uniform> u: Gemm;`.
macro_rules! bindings {
    ($(
        $(#[$meta:meta])*
        $name:ident($uniform:ty) for [$($entry:literal),+] => {
            $($field:ident: $access:ident<$elem:ident> = $binding:literal),* $(,)?
        }
    )*) => {
        $(
            $(#[$meta])*
            pub struct $name<'a> {
                $(pub $field: &'a wgpu::Buffer,)*
            }

            impl $crate::device::kernel::Bindings for $name<'_> {
                type Uniform = $uniform;
                const DECL: $crate::device::kernel::BindingsDecl =
                    $crate::device::kernel::BindingsDecl {
                        name: stringify!($name),
                        entry_points: &[$($entry),+],
                        slots: &[
                            (
                                "u",
                                0,
                                $crate::device::kernel::Access::Uniform,
                                <$uniform as $crate::device::kernel::Uniform>::DECL.wgsl,
                            ),
                            $((
                                stringify!($field),
                                $binding,
                                $crate::device::kernel::Access::$access,
                                stringify!($elem),
                            )),*
                        ],
                    };
                fn buffers(&self) -> Vec<&wgpu::Buffer> {
                    vec![$(self.$field),*]
                }
            }
        )*

        /// Every bindings declaration of this family, for the shader test.
        pub const BINDINGS: &[$crate::device::kernel::BindingsDecl] =
            &[$(<$name as $crate::device::kernel::Bindings>::DECL),*];
    };
}
pub(crate) use bindings;

/// A uniform block's layout: the WGSL struct's name, the size, and every field with its
/// byte offset and type (`u32` or `f32`).
#[derive(Clone, Copy, Debug)]
pub struct UniformDecl {
    pub rust: &'static str,
    pub wgsl: &'static str,
    pub size: usize,
    pub fields: &'static [(&'static str, usize, &'static str)],
}

/// A uniform block: plain data uploaded as the WGSL struct `DECL.wgsl`.
pub trait Uniform: Pod {
    const DECL: UniformDecl;
}

/// Declares a uniform struct (`#[repr(C)]`, plain data, `u32` and `f32` fields) and the
/// WGSL struct named after `as` generated from it. Both are padded to a whole number of
/// 16-byte rows (`_pad` in Rust, `padN` in WGSL), the uniform buffer's unit.
macro_rules! uniform {
    (
        $(#[$meta:meta])*
        pub struct $name:ident as $wgsl:literal { $(pub $field:ident: $ty:ty,)* }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $(pub $field: $ty,)*
            pub _pad: [u32; {
                const FIELDS: usize = [$(stringify!($field)),*].len();
                (4 - FIELDS % 4) % 4
            }],
        }

        impl $crate::device::kernel::Uniform for $name {
            const DECL: $crate::device::kernel::UniformDecl = $crate::device::kernel::UniformDecl {
                rust: stringify!($name),
                wgsl: $wgsl,
                size: std::mem::size_of::<$name>(),
                fields: &[$((
                    stringify!($field),
                    std::mem::offset_of!($name, $field),
                    stringify!($ty),
                )),*],
            };
        }
    };
}
pub(crate) use uniform;

/// One entry point with its explicit bind-group layout, built from its [`Bindings`].
pub struct Kernel {
    /// `family_entry`, the name profiles and benches use (`gemm`,
    /// `batchnorm_forward_train`, …).
    pub name: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    slots: &'static [Slot],
    /// The device the pipeline was made on, which its dispatches' bind groups need.
    device: wgpu::Device,
}

impl Kernel {
    /// The pipeline of `entry` in `module`, with the bind-group layout of `B`.
    pub fn new<B: Bindings>(
        ctx: &GpuContext,
        module: &wgpu::ShaderModule,
        name: &'static str,
        entry: &str,
    ) -> Result<Kernel, DeviceError> {
        debug_assert!(
            B::DECL.entry_points.contains(&entry),
            "{name}: not an entry of {}",
            B::DECL.name
        );
        ctx.scoped(&format!("creating the {name} pipeline"), || {
            let entries: Vec<_> = B::DECL.slots.iter().map(layout_entry).collect();
            let device = &ctx.device;
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(name),
                entries: &entries,
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: Some(&pipeline_layout),
                module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
            Kernel {
                name,
                pipeline,
                layout,
                slots: B::DECL.slots,
                device: device.clone(),
            }
        })
    }

    /// The device this kernel runs on.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// A dispatch of this kernel over `groups` workgroups with the uniform block `u` and
    /// the buffers `bindings` (which must be this kernel's own [`Bindings`] type).
    pub fn dispatch<B: Bindings>(
        &self,
        u: &B::Uniform,
        bindings: &B,
        groups: [u32; 3],
    ) -> Dispatch {
        let device = &self.device;
        assert!(
            B::DECL.slots == self.slots,
            "{}: dispatched with {}",
            self.name,
            B::DECL.name
        );
        let ub = uniform_buffer(device, self.name, u);
        let buffers = std::iter::once(&ub).chain(bindings.buffers());
        let entries: Vec<wgpu::BindGroupEntry> = self
            .slots
            .iter()
            .zip(buffers)
            .map(|(&(_, binding, _, _), buffer)| wgpu::BindGroupEntry {
                binding,
                resource: buffer.as_entire_binding(),
            })
            .collect();
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.name),
            layout: &self.layout,
            entries: &entries,
        });
        Dispatch {
            kernel: self.name,
            pipeline: self.pipeline.clone(),
            bind_group,
            groups,
            work: Work::default(),
        }
    }
}

fn layout_entry(&(_, binding, access, _): &Slot) -> wgpu::BindGroupLayoutEntry {
    let ty = match access {
        Access::Uniform => wgpu::BufferBindingType::Uniform,
        Access::Read => wgpu::BufferBindingType::Storage { read_only: true },
        Access::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
    };
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

/// The WGSL declarations of a family's uniform struct and of every binding its entry
/// points use (each binding once, however many declarations name it), to be put before
/// its shader; an error when two declarations give one binding number different
/// variables.
pub fn wgsl_declarations(
    uniform: &UniformDecl,
    bindings: &[BindingsDecl],
) -> Result<String, String> {
    let mut fields: Vec<String> = uniform
        .fields
        .iter()
        .map(|(name, _, ty)| format!("    {name}: {ty},"))
        .collect();
    // The Rust struct's `_pad` words, as fields (a uniform array would need a 16-byte
    // stride).
    let pad_words = (uniform.size / 4).saturating_sub(uniform.fields.len());
    fields.extend((0..pad_words).map(|i| format!("    pad{i}: u32,")));
    let mut text = format!(
        "// Declared in the family's mod.rs (uniform!, bindings!).\nstruct {} {{\n{}\n}}\n",
        uniform.wgsl,
        fields.join("\n")
    );
    let mut slots: Vec<Slot> = bindings
        .iter()
        .flat_map(|b| b.slots.iter().copied())
        .collect();
    slots.sort_by_key(|slot| slot.1);
    slots.dedup();
    for pair in slots.windows(2) {
        if pair[0].1 == pair[1].1 {
            return Err(format!(
                "binding {} is declared as both {:?} and {:?}",
                pair[0].1, pair[0], pair[1]
            ));
        }
    }
    for (name, binding, access, ty) in slots {
        let (space, ty) = match access {
            Access::Uniform => ("uniform", ty.to_string()),
            Access::Read => ("storage, read", format!("array<{ty}>")),
            Access::ReadWrite => ("storage, read_write", format!("array<{ty}>")),
        };
        text += &format!("@group(0) @binding({binding}) var<{space}> {name}: {ty};\n");
    }
    Ok(text)
}

/// Compile a family's shader (`label` names it in errors).
pub fn module(
    ctx: &GpuContext,
    label: &str,
    source: &str,
) -> Result<wgpu::ShaderModule, DeviceError> {
    ctx.scoped(&format!("compiling the {label} shader"), || {
        ctx.device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            })
    })
}

/// A recorded dispatch: pipeline, bind group, workgroup counts, and the least work it
/// must do (for profiles).
#[derive(Clone)]
pub struct Dispatch {
    /// The kernel's name (for profiles).
    pub kernel: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    pub groups: [u32; 3],
    pub work: Work,
}

impl Dispatch {
    /// This dispatch, with its least work set.
    pub fn with_work(mut self, work: Work) -> Self {
        self.work = work;
        self
    }
}

/// The least a dispatch must do: its floating-point operations (a multiply-add counts
/// two) and its bytes of memory traffic if each input were read once and each output
/// written once. A kernel's time against `max(flops / peak FLOP/s, bytes / peak
/// bandwidth)` says how far it is from the device's bound (the GPU step profile prints
/// it). Zero where the family has not said (the profile then prints no bound).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Work {
    pub flops: f64,
    pub bytes: f64,
}

impl Work {
    /// `flops` operations over `floats` 4-byte values of traffic.
    pub fn new(flops: f64, floats: f64) -> Self {
        Work {
            flops,
            bytes: 4.0 * floats,
        }
    }

    /// Whether the family gave this dispatch's work.
    pub fn known(&self) -> bool {
        self.flops > 0.0 || self.bytes > 0.0
    }

    /// The seconds the device's peaks allow: the arithmetic or the traffic, whichever
    /// takes longer.
    pub fn bound_secs(&self, peak_flops: f64, peak_bytes_per_sec: f64) -> f64 {
        (self.flops / peak_flops).max(self.bytes / peak_bytes_per_sec)
    }
}

/// Record `dispatches` into one compute pass.
pub fn record(pass: &mut wgpu::ComputePass<'_>, dispatches: &[Dispatch]) {
    for d in dispatches {
        pass.set_pipeline(&d.pipeline);
        pass.set_bind_group(0, &d.bind_group, &[]);
        pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
    }
}

/// Run one dispatch now and wait for it (the families' agreement cases).
#[cfg(not(target_arch = "wasm32"))]
pub fn run_one(ctx: &GpuContext, dispatch: Dispatch) -> Result<(), DeviceError> {
    run_all(ctx, std::slice::from_ref(&dispatch))
}

/// Run `dispatches` in order, in one compute pass, now, and wait for them.
#[cfg(not(target_arch = "wasm32"))]
pub fn run_all(ctx: &GpuContext, dispatches: &[Dispatch]) -> Result<(), DeviceError> {
    submit_all(ctx, "running a kernel", dispatches)?;
    ctx.wait()
}

/// Queue `dispatches` in order, in one compute pass, without waiting for them (the
/// queue keeps the order of what is submitted after); `what` names them in errors.
pub fn submit_all(
    ctx: &GpuContext,
    what: &str,
    dispatches: &[Dispatch],
) -> Result<(), DeviceError> {
    ctx.scoped(what, || {
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            record(&mut pass, dispatches);
        }
        ctx.queue.submit([encoder.finish()]);
    })
}

/// Workgroups of a grid-stride elementwise kernel over `n` elements.
pub fn elementwise_groups(n: usize) -> [u32; 3] {
    [
        (n as u32)
            .div_ceil(ELEMENTWISE_WORKGROUP)
            .clamp(1, MAX_ELEMENTWISE_GROUPS),
        1,
        1,
    ]
}

/// Usage of every storage buffer the trainer creates.
pub const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// A storage buffer holding `data` (at least 16 bytes, so empty inputs still bind).
/// Created unmapped and filled through the queue, so an over-limit size becomes a
/// validation error (caught by the caller's error scope) rather than a panic.
pub fn storage_init(ctx: &GpuContext, label: &str, data: &[u8]) -> wgpu::Buffer {
    let buffer = storage_zeroed(&ctx.device, label, data.len() as u64);
    if !data.is_empty() && buffer.size() >= data.len() as u64 {
        if data.len().is_multiple_of(4) {
            ctx.queue.write_buffer(&buffer, 0, data);
        } else {
            let mut padded = data.to_vec();
            padded.resize(data.len().next_multiple_of(4), 0);
            ctx.queue.write_buffer(&buffer, 0, &padded);
        }
    }
    buffer
}

/// A storage buffer holding the f32s `data`.
pub fn storage_f32(ctx: &GpuContext, label: &str, data: &[f32]) -> wgpu::Buffer {
    storage_init(ctx, label, bytemuck::cast_slice(data))
}

/// A zero-filled storage buffer of `bytes` (at least 16).
pub fn storage_zeroed(device: &wgpu::Device, label: &str, bytes: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(16).next_multiple_of(4),
        usage: STORAGE_USAGE,
        mapped_at_creation: false,
    })
}

/// A uniform buffer holding `value`.
fn uniform_buffer<T: Pod>(device: &wgpu::Device, label: &str, value: &T) -> wgpu::Buffer {
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: bytemuck::bytes_of(value),
        usage: wgpu::BufferUsages::UNIFORM,
    })
}

/// u8 pixels packed 4 per u32 (little-endian), padded to whole words.
pub fn pack_pixels(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect()
}
