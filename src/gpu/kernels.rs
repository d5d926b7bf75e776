//! Compute pipelines, their bind-group layouts and uniform blocks, plus small
//! host-callable wrappers (upload → one dispatch → read back) used by the agreement
//! tests and benchmarks to check each kernel against its CPU twin in isolation.

use super::context::{DeviceError, GpuContext};
use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

const GEMM_WGSL: &str = include_str!("../../shaders/gemm.wgsl");
const BATCHNORM_WGSL: &str = include_str!("../../shaders/batchnorm.wgsl");
const SOFTMAX_WGSL: &str = include_str!("../../shaders/softmax_xent.wgsl");
const ADAM_WGSL: &str = include_str!("../../shaders/adam.wgsl");
const RELU_WGSL: &str = include_str!("../../shaders/relu.wgsl");

/// GEMM output tile edge (rows and columns per workgroup).
pub const GEMM_TILE: u32 = 64;
/// Threads per workgroup of the per-feature BatchNorm kernels.
pub const BN_WORKGROUP: u32 = 64;
/// Threads per workgroup of the elementwise kernels (Adam, ReLU).
pub const ELEMENTWISE_WORKGROUP: u32 = 256;
/// Cap on workgroups of the grid-stride elementwise kernels.
pub const MAX_ELEMENTWISE_GROUPS: u32 = 1024;

pub const GEMM_BIAS: u32 = 1;
pub const GEMM_RELU: u32 = 2;
pub const GEMM_MASK: u32 = 4;
pub const GEMM_ONES_ROW: u32 = 8;

/// Uniform block of `gemm.wgsl` (see the shader for the meaning of each field).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct GemmUniform {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub flags: u32,
    pub a_off: u32,
    pub a_rs: u32,
    pub a_cs: u32,
    pub b_off: u32,
    pub b_rs: u32,
    pub b_cs: u32,
    pub c_off: u32,
    pub ldc: u32,
    pub e_off: u32,
    pub lde: u32,
    pub c2_off: u32,
    pub pad: u32,
}

impl GemmUniform {
    /// `y[m,n] = x[m,k] · w[k,n] + bias` (ReLU when `relu`); `w` and `bias` at element
    /// offsets of the B / epilogue buffers.
    pub fn forward(
        m: usize,
        k: usize,
        n: usize,
        w_off: usize,
        bias_off: usize,
        relu: bool,
    ) -> Self {
        GemmUniform {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            flags: GEMM_BIAS | if relu { GEMM_RELU } else { 0 },
            a_rs: k as u32,
            a_cs: 1,
            b_off: w_off as u32,
            b_rs: n as u32,
            b_cs: 1,
            ldc: n as u32,
            e_off: bias_off as u32,
            ..Default::default()
        }
    }

    /// `dw[k,n] = xᵀ · dy` (x: `[m,k]`, dy: `[m,n]`) written at `dw_off`, and the bias
    /// gradient (column sums of dy, the product with an appended row of ones) at `db_off`.
    pub fn weight_grad(m: usize, k: usize, n: usize, dw_off: usize, db_off: usize) -> Self {
        GemmUniform {
            m: k as u32 + 1,
            n: n as u32,
            k: m as u32,
            flags: GEMM_ONES_ROW,
            a_rs: 1,
            a_cs: k as u32,
            b_rs: n as u32,
            b_cs: 1,
            c_off: dw_off as u32,
            ldc: n as u32,
            c2_off: db_off as u32,
            ..Default::default()
        }
    }

    /// `dx[m,k] = dy[m,n] · wᵀ` (w: `[k,n]` at `w_off`), zeroed where the epilogue buffer
    /// (the layer's ReLU output, `[m,k]`) is ≤ 0 when `mask`.
    pub fn input_grad(m: usize, k: usize, n: usize, w_off: usize, mask: bool) -> Self {
        GemmUniform {
            m: m as u32,
            n: k as u32,
            k: n as u32,
            flags: if mask { GEMM_MASK } else { 0 },
            a_rs: n as u32,
            a_cs: 1,
            b_off: w_off as u32,
            b_rs: 1,
            b_cs: n as u32,
            ldc: k as u32,
            lde: k as u32,
            ..Default::default()
        }
    }

    /// Workgroups to dispatch.
    pub fn workgroups(&self) -> [u32; 3] {
        [self.n.div_ceil(GEMM_TILE), self.m.div_ceil(GEMM_TILE), 1]
    }
}

/// Uniform block of `batchnorm.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct BnUniform {
    pub batch: u32,
    pub stride: u32,
    pub use_order: u32,
    pub base: u32,
    pub gamma_off: u32,
    pub beta_off: u32,
    pub features: u32,
    pub pad0: u32,
    pub scale: f32,
    pub eps: f32,
    pub momentum: f32,
    pub pad1: f32,
    pub kernel_off: u32,
    pub bias_off: u32,
    pub width: u32,
    pub pad2: u32,
}

impl BnUniform {
    pub fn workgroups(&self) -> [u32; 3] {
        [self.features.div_ceil(BN_WORKGROUP), 1, 1]
    }
}

/// Uniform block of `softmax_xent.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct SoftmaxUniform {
    pub batch: u32,
    pub classes: u32,
    pub stride: u32,
    pub use_order: u32,
    pub base: u32,
    pub training: u32,
    pub slot: u32,
    pub pred_base: u32,
}

/// Uniform block of `adam.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct AdamUniform {
    pub n: u32,
    pub pad0: [u32; 3],
    pub one_minus_b1: f32,
    pub one_minus_b2: f32,
    pub eps: f32,
    pub pad1: f32,
}

/// Uniform block of `relu.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ReluUniform {
    pub n: u32,
    pub pad: [u32; 3],
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Uniform,
    Read,
    ReadWrite,
}

/// One entry point with its explicit bind-group layout.
pub struct Kernel {
    pub name: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    slots: Vec<(u32, Slot)>,
}

impl Kernel {
    /// A dispatch of this kernel with a fresh bind group.
    pub fn dispatch(
        &self,
        device: &wgpu::Device,
        uniform: &wgpu::Buffer,
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) -> Dispatch {
        Dispatch {
            kernel: self.name,
            pipeline: self.pipeline.clone(),
            bind_group: self.bind(device, uniform, buffers),
            groups,
        }
    }

    /// A bind group: `uniform` at binding 0, then `buffers` in the order of the storage
    /// bindings of this entry point.
    pub fn bind(
        &self,
        device: &wgpu::Device,
        uniform: &wgpu::Buffer,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let storage: Vec<u32> = self
            .slots
            .iter()
            .filter(|s| s.1 != Slot::Uniform)
            .map(|s| s.0)
            .collect();
        assert_eq!(
            storage.len(),
            buffers.len(),
            "{}: wrong number of buffers",
            self.name
        );
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (binding, buffer) in storage.iter().zip(buffers) {
            entries.push(wgpu::BindGroupEntry {
                binding: *binding,
                resource: buffer.as_entire_binding(),
            });
        }
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.name),
            layout: &self.layout,
            entries: &entries,
        })
    }
}

/// What [`Kernels::batchnorm_dense_backward`] reads back.
pub struct BnDenseGrads {
    pub dw: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}

/// Every pipeline the trainer uses.
pub struct Kernels {
    pub gemm: Kernel,
    pub bn_train: Kernel,
    pub bn_eval: Kernel,
    /// BatchNorm + first-dense backward: a workgroup per feature (hardware GPUs) or a
    /// thread per feature (CPU adapters); [`Kernels::bn_dense_backward`] picks.
    pub bn_dense_backward_groups: Kernel,
    pub bn_dense_backward_threads: Kernel,
    /// The adapter runs compute on the CPU (lavapipe, llvmpipe): barriers are expensive.
    pub cpu_adapter: bool,
    pub softmax: Kernel,
    pub adam: Kernel,
    pub relu_forward: Kernel,
    pub relu_backward: Kernel,
}

fn module(ctx: &GpuContext, label: &str, source: &str) -> Result<wgpu::ShaderModule, DeviceError> {
    ctx.scoped(&format!("compiling shaders/{label}.wgsl"), || {
        ctx.device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            })
    })
}

fn kernel(
    ctx: &GpuContext,
    module: &wgpu::ShaderModule,
    name: &'static str,
    entry: &str,
    slots: &[(u32, Slot)],
) -> Result<Kernel, DeviceError> {
    ctx.scoped(&format!("creating the {name} pipeline"), || {
        let entries: Vec<wgpu::BindGroupLayoutEntry> = slots
            .iter()
            .map(|&(binding, slot)| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match slot {
                        Slot::Uniform => wgpu::BufferBindingType::Uniform,
                        Slot::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Slot::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let layout = ctx
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(name),
                entries: &entries,
            });
        let pipeline_layout = ctx
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = ctx
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
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
            slots: slots.to_vec(),
        }
    })
}

impl Kernels {
    pub fn new(ctx: &GpuContext) -> Result<Kernels, DeviceError> {
        use Slot::{Read as R, ReadWrite as W, Uniform as U};
        let gemm = module(ctx, "gemm", GEMM_WGSL)?;
        let bn = module(ctx, "batchnorm", BATCHNORM_WGSL)?;
        let sx = module(ctx, "softmax_xent", SOFTMAX_WGSL)?;
        let adam = module(ctx, "adam", ADAM_WGSL)?;
        let relu = module(ctx, "relu", RELU_WGSL)?;
        let bn_fwd = [
            (0, U),
            (1, R),
            (2, R),
            (3, R),
            (4, R),
            (5, W),
            (6, W),
            (7, W),
        ];
        Ok(Kernels {
            gemm: kernel(
                ctx,
                &gemm,
                "gemm",
                "gemm",
                &[(0, U), (1, R), (2, R), (3, R), (4, W)],
            )?,
            bn_train: kernel(
                ctx,
                &bn,
                "batchnorm forward (training)",
                "forward_train",
                &bn_fwd,
            )?,
            bn_eval: kernel(
                ctx,
                &bn,
                "batchnorm forward (evaluation)",
                "forward_eval",
                &bn_fwd,
            )?,
            bn_dense_backward_groups: kernel(
                ctx,
                &bn,
                "batchnorm + dense backward",
                "dense_backward",
                &[(0, U), (4, R), (10, W)],
            )?,
            bn_dense_backward_threads: kernel(
                ctx,
                &bn,
                "batchnorm + dense backward (per thread)",
                "dense_backward_per_feature",
                &[(0, U), (4, R), (10, W)],
            )?,
            cpu_adapter: ctx.info.device_type == wgpu::DeviceType::Cpu,
            softmax: kernel(
                ctx,
                &sx,
                "softmax cross-entropy",
                "softmax_xent",
                &[
                    (0, U),
                    (1, R),
                    (2, R),
                    (3, R),
                    (4, W),
                    (5, W),
                    (6, W),
                    (7, W),
                ],
            )?,
            adam: kernel(
                ctx,
                &adam,
                "adam",
                "adam",
                &[(0, U), (1, R), (2, R), (3, R), (4, W), (5, W), (6, W)],
            )?,
            relu_forward: kernel(ctx, &relu, "relu forward", "forward", &[(0, U), (1, W)])?,
            relu_backward: kernel(
                ctx,
                &relu,
                "relu backward",
                "backward",
                &[(0, U), (2, R), (3, R), (4, W)],
            )?,
        })
    }
}

/// A recorded dispatch: pipeline, bind group, workgroup counts.
#[derive(Clone)]
pub struct Dispatch {
    /// The kernel's name (for profiles).
    pub kernel: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    pub groups: [u32; 3],
}

/// Record `dispatches` into one compute pass.
pub fn record(pass: &mut wgpu::ComputePass<'_>, dispatches: &[Dispatch]) {
    for d in dispatches {
        pass.set_pipeline(&d.pipeline);
        pass.set_bind_group(0, &d.bind_group, &[]);
        pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
    }
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
pub fn uniform<T: Pod>(device: &wgpu::Device, label: &str, value: &T) -> wgpu::Buffer {
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

// ---------------------------------------------------------------------------------------
// Host-callable wrappers: each uploads its inputs, runs ONE dispatch of the trainer's own
// pipeline, and reads the outputs back. For tests and benchmarks, not for training.
// ---------------------------------------------------------------------------------------

/// Outputs of [`Kernels::batchnorm_forward_train`].
pub struct BnTrainOutput {
    pub xhat: Vec<f32>,
    pub y: Vec<f32>,
    pub inv_std: Vec<f32>,
}

fn f32s(bytes: &[u8], len: usize) -> Vec<f32> {
    bytemuck::cast_slice::<u8, f32>(&bytes[..len * 4]).to_vec()
}

fn run_one(ctx: &GpuContext, dispatch: Dispatch) -> Result<(), DeviceError> {
    ctx.scoped("running a kernel", || {
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            record(&mut pass, std::slice::from_ref(&dispatch));
        }
        ctx.queue.submit([encoder.finish()]);
    })?;
    ctx.wait()
}

fn read_f32(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset: usize,
    len: usize,
) -> Result<Vec<f32>, DeviceError> {
    Ok(f32s(
        &ctx.read_buffer(buffer, offset as u64 * 4, len as u64 * 4)?,
        len,
    ))
}

impl Kernels {
    fn gemm_dispatch(
        &self,
        ctx: &GpuContext,
        u: GemmUniform,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        e: &wgpu::Buffer,
        c: &wgpu::Buffer,
    ) -> Result<(), DeviceError> {
        let ub = uniform(&ctx.device, "gemm", &u);
        let bind_group = self.gemm.bind(&ctx.device, &ub, &[a, b, e, c]);
        run_one(
            ctx,
            Dispatch {
                kernel: self.gemm.name,
                pipeline: self.gemm.pipeline.clone(),
                bind_group,
                groups: u.workgroups(),
            },
        )
    }

    /// GPU twin of [`crate::cpu::gemm::gemm_forward`].
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_forward(
        &self,
        ctx: &GpuContext,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        m: usize,
        k: usize,
        n: usize,
        relu: bool,
    ) -> Result<Vec<f32>, DeviceError> {
        let d = &ctx.device;
        let (xb, wb, bb) = (
            storage_init(ctx, "x", bytemuck::cast_slice(x)),
            storage_init(ctx, "w", bytemuck::cast_slice(w)),
            storage_init(ctx, "bias", bytemuck::cast_slice(bias)),
        );
        let y = storage_zeroed(d, "y", (m * n * 4) as u64);
        self.gemm_dispatch(
            ctx,
            GemmUniform::forward(m, k, n, 0, 0, relu),
            &xb,
            &wb,
            &bb,
            &y,
        )?;
        read_f32(ctx, &y, 0, m * n)
    }

    /// GPU twin of [`crate::cpu::gemm::gemm_weight_grad`] and [`crate::cpu::gemm::bias_grad`]
    /// (one fused dispatch): returns `(dw [k,n], db [n])`.
    pub fn gemm_weight_grad(
        &self,
        ctx: &GpuContext,
        x: &[f32],
        dy: &[f32],
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<(Vec<f32>, Vec<f32>), DeviceError> {
        let d = &ctx.device;
        let (xb, dyb) = (
            storage_init(ctx, "x", bytemuck::cast_slice(x)),
            storage_init(ctx, "dy", bytemuck::cast_slice(dy)),
        );
        let out = storage_zeroed(d, "dw", ((k + 1) * n * 4) as u64);
        self.gemm_dispatch(
            ctx,
            GemmUniform::weight_grad(m, k, n, 0, k * n),
            &xb,
            &dyb,
            &xb,
            &out,
        )?;
        let all = read_f32(ctx, &out, 0, (k + 1) * n)?;
        Ok((all[..k * n].to_vec(), all[k * n..].to_vec()))
    }

    /// GPU twin of [`crate::cpu::gemm::gemm_input_grad`] (with the fused ReLU mask).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_input_grad(
        &self,
        ctx: &GpuContext,
        dy: &[f32],
        w: &[f32],
        m: usize,
        k: usize,
        n: usize,
        mask: Option<&[f32]>,
    ) -> Result<Vec<f32>, DeviceError> {
        let d = &ctx.device;
        let (dyb, wb) = (
            storage_init(ctx, "dy", bytemuck::cast_slice(dy)),
            storage_init(ctx, "w", bytemuck::cast_slice(w)),
        );
        let eb = storage_init(ctx, "mask", bytemuck::cast_slice(mask.unwrap_or(&[0.0])));
        let dx = storage_zeroed(d, "dx", (m * k * 4) as u64);
        self.gemm_dispatch(
            ctx,
            GemmUniform::input_grad(m, k, n, 0, mask.is_some()),
            &dyb,
            &wb,
            &eb,
            &dx,
        )?;
        read_f32(ctx, &dx, 0, m * k)
    }

    /// GPU twin of [`crate::cpu::batchnorm::batchnorm_forward_train`] fused with
    /// [`crate::cpu::gather_scaled`]: gathers `indices` from `images` (u8, `features` per
    /// image); the moving statistics are updated in place.
    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm_forward_train(
        &self,
        ctx: &GpuContext,
        images: &[u8],
        indices: &[u32],
        scale: f32,
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        momentum: f32,
        moving_mean: &mut [f32],
        moving_var: &mut [f32],
    ) -> Result<BnTrainOutput, DeviceError> {
        let f = gamma.len();
        let b = indices.len();
        let d = &ctx.device;
        let pixels = storage_init(ctx, "pixels", bytemuck::cast_slice(&pack_pixels(images)));
        let order = storage_init(ctx, "order", bytemuck::cast_slice(indices));
        let state = storage_init(ctx, "state", bytemuck::cast_slice(&[0u32; 4]));
        let params = storage_init(ctx, "params", bytemuck::cast_slice(&[gamma, beta].concat()));
        let stats_host = [&moving_mean[..], &moving_var[..], &vec![0.0; f][..]].concat();
        let stats = storage_init(ctx, "stats", bytemuck::cast_slice(&stats_host));
        let xhat = storage_zeroed(d, "xhat", (b * f * 4) as u64);
        let y = storage_zeroed(d, "y", (b * f * 4) as u64);
        let u = BnUniform {
            batch: b as u32,
            stride: b as u32,
            use_order: 1,
            gamma_off: 0,
            beta_off: f as u32,
            features: f as u32,
            scale,
            eps,
            momentum,
            ..Default::default()
        };
        let ub = uniform(d, "bn", &u);
        let bind_group = self.bn_train.bind(
            d,
            &ub,
            &[&pixels, &order, &state, &params, &stats, &xhat, &y],
        );
        run_one(
            ctx,
            Dispatch {
                kernel: self.bn_train.name,
                pipeline: self.bn_train.pipeline.clone(),
                bind_group,
                groups: u.workgroups(),
            },
        )?;
        let stats_out = read_f32(ctx, &stats, 0, 3 * f)?;
        moving_mean.copy_from_slice(&stats_out[..f]);
        moving_var.copy_from_slice(&stats_out[f..2 * f]);
        Ok(BnTrainOutput {
            xhat: read_f32(ctx, &xhat, 0, b * f)?,
            y: read_f32(ctx, &y, 0, b * f)?,
            inv_std: stats_out[2 * f..].to_vec(),
        })
    }

    /// GPU twin of [`crate::cpu::batchnorm::batchnorm_forward_eval`] fused with the gather
    /// of images `0..batch`.
    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm_forward_eval(
        &self,
        ctx: &GpuContext,
        images: &[u8],
        batch: usize,
        scale: f32,
        gamma: &[f32],
        beta: &[f32],
        moving_mean: &[f32],
        moving_var: &[f32],
        eps: f32,
    ) -> Result<Vec<f32>, DeviceError> {
        let f = gamma.len();
        let d = &ctx.device;
        let pixels = storage_init(ctx, "pixels", bytemuck::cast_slice(&pack_pixels(images)));
        let dummy = storage_zeroed(d, "unused", 16);
        let state = storage_zeroed(d, "state", 16);
        let params = storage_init(ctx, "params", bytemuck::cast_slice(&[gamma, beta].concat()));
        let stats = storage_init(
            ctx,
            "stats",
            bytemuck::cast_slice(&[moving_mean, moving_var].concat()),
        );
        let xhat = storage_zeroed(d, "xhat", 16);
        let y = storage_zeroed(d, "y", (batch * f * 4) as u64);
        let u = BnUniform {
            batch: batch as u32,
            gamma_off: 0,
            beta_off: f as u32,
            features: f as u32,
            scale,
            eps,
            ..Default::default()
        };
        let ub = uniform(d, "bn", &u);
        let bind_group = self.bn_eval.bind(
            d,
            &ub,
            &[&pixels, &dummy, &state, &params, &stats, &xhat, &y],
        );
        run_one(
            ctx,
            Dispatch {
                kernel: self.bn_eval.name,
                pipeline: self.bn_eval.pipeline.clone(),
                bind_group,
                groups: u.workgroups(),
            },
        )?;
        read_f32(ctx, &y, 0, batch * f)
    }

    /// The BatchNorm + first-dense backward kernel and its workgroups for `u`: a thread
    /// per feature when `per_thread` (CPU adapters), else a workgroup per feature.
    pub fn bn_dense_backward(&self, u: &BnUniform, per_thread: bool) -> (&Kernel, [u32; 3]) {
        if per_thread {
            (&self.bn_dense_backward_threads, u.workgroups())
        } else {
            (&self.bn_dense_backward_groups, [u.features, 1, 1])
        }
    }

    /// GPU twin of [`crate::cpu::batchnorm::batchnorm_dense_backward`]: from
    /// `G = xhatᵀ·δ` (`[features, n]`) returns `(dW, dgamma, dbeta)`, with the per-thread
    /// kernel when `per_thread`, else the per-workgroup one.
    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm_dense_backward(
        &self,
        ctx: &GpuContext,
        per_thread: bool,
        grad_w: &[f32],
        w: &[f32],
        gamma: &[f32],
        beta: &[f32],
        dbias: &[f32],
    ) -> Result<BnDenseGrads, DeviceError> {
        let d = &ctx.device;
        let (f, n) = (gamma.len(), dbias.len());
        // Both buffers use the trainer's order: gamma, beta, kernel (, bias).
        let params = storage_init(
            ctx,
            "params",
            bytemuck::cast_slice(&[gamma, beta, w].concat()),
        );
        let zeros = vec![0.0f32; 2 * f];
        let grads = storage_init(
            ctx,
            "grads",
            bytemuck::cast_slice(&[&zeros[..], grad_w, dbias].concat()),
        );
        let u = BnUniform {
            gamma_off: 0,
            beta_off: f as u32,
            features: f as u32,
            kernel_off: 2 * f as u32,
            bias_off: (2 * f + f * n) as u32,
            width: n as u32,
            ..Default::default()
        };
        let ub = uniform(d, "bn", &u);
        let (kernel, groups) = self.bn_dense_backward(&u, per_thread);
        run_one(ctx, kernel.dispatch(d, &ub, &[&params, &grads], groups))?;
        let all = read_f32(ctx, &grads, 0, 2 * f + f * n)?;
        Ok(BnDenseGrads {
            dw: all[2 * f..].to_vec(),
            dgamma: all[..f].to_vec(),
            dbeta: all[f..2 * f].to_vec(),
        })
    }

    /// GPU twin of [`crate::cpu::softmax_xent::softmax_xent`]: `(loss_sum, correct,
    /// gradient (training) or empty, predictions (evaluation) or empty)`.
    pub fn softmax_xent(
        &self,
        ctx: &GpuContext,
        logits: &[f32],
        labels: &[u8],
        classes: usize,
        training: bool,
    ) -> Result<(f32, u32, Vec<f32>, Vec<u8>), DeviceError> {
        let b = labels.len();
        let d = &ctx.device;
        let lb = storage_init(ctx, "logits", bytemuck::cast_slice(logits));
        let labels32: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        let lab = storage_init(ctx, "labels", bytemuck::cast_slice(&labels32));
        let order: Vec<u32> = (0..b as u32).collect();
        let ob = storage_init(ctx, "order", bytemuck::cast_slice(&order));
        let state = storage_zeroed(d, "state", 16);
        let grad = storage_zeroed(d, "grad", (b * classes * 4) as u64);
        let stats = storage_zeroed(d, "stats", 16);
        let preds = storage_zeroed(d, "preds", (b * 4) as u64);
        let u = SoftmaxUniform {
            batch: b as u32,
            classes: classes as u32,
            stride: b as u32,
            use_order: training as u32,
            training: training as u32,
            ..Default::default()
        };
        let ub = uniform(d, "softmax", &u);
        let bind_group =
            self.softmax
                .bind(d, &ub, &[&lb, &lab, &ob, &state, &grad, &stats, &preds]);
        run_one(
            ctx,
            Dispatch {
                kernel: self.softmax.name,
                pipeline: self.softmax.pipeline.clone(),
                bind_group,
                groups: [1, 1, 1],
            },
        )?;
        let s = ctx.read_buffer(&stats, 0, 8)?;
        let words: &[u32] = bytemuck::cast_slice(&s);
        let (loss, correct) = (f32::from_bits(words[0]), words[1]);
        if training {
            let st = ctx.read_buffer(&state, 0, 4)?;
            let t = bytemuck::cast_slice::<u8, u32>(&st)[0];
            if t != 1 {
                return Err(DeviceError::Gpu(format!(
                    "softmax kernel left the step counter at {t}, expected 1"
                )));
            }
            Ok((
                loss,
                correct,
                read_f32(ctx, &grad, 0, b * classes)?,
                Vec::new(),
            ))
        } else {
            let p = ctx.read_buffer(&preds, 0, (b * 4) as u64)?;
            let p: Vec<u8> = bytemuck::cast_slice::<u8, u32>(&p)
                .iter()
                .map(|&v| v as u8)
                .collect();
            Ok((loss, correct, Vec::new(), p))
        }
    }

    /// GPU twin of [`crate::cpu::adam::adam_update`] with a given `alpha`; updates in place.
    #[allow(clippy::too_many_arguments)]
    pub fn adam(
        &self,
        ctx: &GpuContext,
        params: &mut [f32],
        grads: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        alpha: f32,
        hyper: &crate::model::Hyper,
    ) -> Result<(), DeviceError> {
        let n = params.len();
        let d = &ctx.device;
        let state = storage_init(ctx, "state", bytemuck::cast_slice(&[1u32, 0, 0, 0]));
        let alphas = storage_init(ctx, "alphas", bytemuck::cast_slice(&[alpha]));
        let gb = storage_init(ctx, "grads", bytemuck::cast_slice(grads));
        let pb = storage_init(ctx, "params", bytemuck::cast_slice(params));
        let mb = storage_init(ctx, "m", bytemuck::cast_slice(m));
        let vb = storage_init(ctx, "v", bytemuck::cast_slice(v));
        let u = AdamUniform {
            n: n as u32,
            one_minus_b1: 1.0 - hyper.beta1,
            one_minus_b2: 1.0 - hyper.beta2,
            eps: hyper.adam_eps,
            ..Default::default()
        };
        let ub = uniform(d, "adam", &u);
        let bind_group = self
            .adam
            .bind(d, &ub, &[&state, &alphas, &gb, &pb, &mb, &vb]);
        run_one(
            ctx,
            Dispatch {
                kernel: self.adam.name,
                pipeline: self.adam.pipeline.clone(),
                bind_group,
                groups: elementwise_groups(n),
            },
        )?;
        params.copy_from_slice(&read_f32(ctx, &pb, 0, n)?);
        m.copy_from_slice(&read_f32(ctx, &mb, 0, n)?);
        v.copy_from_slice(&read_f32(ctx, &vb, 0, n)?);
        Ok(())
    }

    /// GPU twin of [`crate::cpu::relu::relu_forward`].
    pub fn relu_forward(&self, ctx: &GpuContext, x: &[f32]) -> Result<Vec<f32>, DeviceError> {
        let d = &ctx.device;
        let xb = storage_init(ctx, "x", bytemuck::cast_slice(x));
        let u = ReluUniform {
            n: x.len() as u32,
            ..Default::default()
        };
        let ub = uniform(d, "relu", &u);
        let bind_group = self.relu_forward.bind(d, &ub, &[&xb]);
        run_one(
            ctx,
            Dispatch {
                kernel: self.relu_forward.name,
                pipeline: self.relu_forward.pipeline.clone(),
                bind_group,
                groups: elementwise_groups(x.len()),
            },
        )?;
        read_f32(ctx, &xb, 0, x.len())
    }

    /// GPU twin of [`crate::cpu::relu::relu_backward`].
    pub fn relu_backward(
        &self,
        ctx: &GpuContext,
        dy: &[f32],
        y: &[f32],
    ) -> Result<Vec<f32>, DeviceError> {
        let d = &ctx.device;
        let dyb = storage_init(ctx, "dy", bytemuck::cast_slice(dy));
        let yb = storage_init(ctx, "y", bytemuck::cast_slice(y));
        let dx = storage_zeroed(d, "dx", (dy.len() * 4) as u64);
        let u = ReluUniform {
            n: dy.len() as u32,
            ..Default::default()
        };
        let ub = uniform(d, "relu", &u);
        let bind_group = self.relu_backward.bind(d, &ub, &[&dyb, &yb, &dx]);
        run_one(
            ctx,
            Dispatch {
                kernel: self.relu_backward.name,
                pipeline: self.relu_backward.pipeline.clone(),
                bind_group,
                groups: elementwise_groups(dy.len()),
            },
        )?;
        read_f32(ctx, &dx, 0, dy.len())
    }
}
