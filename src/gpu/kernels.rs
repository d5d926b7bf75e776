//! Compute pipelines, their bind-group layouts (from [`super::bindings`]) and uniform
//! blocks, and the buffer helpers the trainer uses. The host-callable twins of each
//! kernel, for tests and benches, are in [`super::twins`].

pub use super::bindings::*;
use super::context::GpuContext;
use super::error::DeviceError;
use crate::model::Hyper;
use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

const GEMM_WGSL: &str = include_str!("../../shaders/gemm.wgsl");
const BATCHNORM_WGSL: &str = include_str!("../../shaders/batchnorm.wgsl");
const SOFTMAX_XENT_WGSL: &str = include_str!("../../shaders/softmax_xent.wgsl");
const ADAM_WGSL: &str = include_str!("../../shaders/adam.wgsl");
#[cfg(not(target_arch = "wasm32"))]
pub(super) const RELU_WGSL: &str = include_str!("../../shaders/relu.wgsl");

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

/// What every BatchNorm forward of one model shares: its feature count, where γ and β
/// sit in the parameter buffer, the pixel scale and the layer's ε and momentum.
#[derive(Clone, Copy, Debug)]
pub struct BnSetup {
    pub features: usize,
    pub gamma_off: usize,
    pub beta_off: usize,
    pub scale: f32,
    pub eps: f32,
    pub momentum: f32,
}

impl BnUniform {
    /// A training step's forward on `rows` rows: the samples through the epoch's order at
    /// step s (`order[s·stride + row]`), batch statistics, the moving averages updated.
    pub fn training(rows: usize, stride: usize, setup: &BnSetup) -> Self {
        BnUniform {
            stride: stride as u32,
            use_order: 1,
            ..BnUniform::evaluation(rows, 0, setup)
        }
    }

    /// Inference on the `rows` samples from `base`, in order, with the moving statistics.
    pub fn evaluation(rows: usize, base: usize, setup: &BnSetup) -> Self {
        BnUniform {
            batch: rows as u32,
            base: base as u32,
            gamma_off: setup.gamma_off as u32,
            beta_off: setup.beta_off as u32,
            features: setup.features as u32,
            scale: setup.scale,
            eps: setup.eps,
            momentum: setup.momentum,
            ..Default::default()
        }
    }

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

impl SoftmaxUniform {
    /// A training step on `rows` rows of `classes` logits: the samples through the epoch's
    /// order at step s (`order[s·stride + row]`, s the step counter), the loss, correct
    /// count and gradient into step s's slots, then the counter advanced.
    pub fn training(rows: usize, classes: usize, stride: usize) -> Self {
        SoftmaxUniform {
            batch: rows as u32,
            classes: classes as u32,
            stride: stride as u32,
            use_order: 1,
            training: 1,
            ..Default::default()
        }
    }

    /// Evaluation of the `rows` test samples from `base`, in order: loss and correct count
    /// into chunk `slot`'s stats, the predictions from position `base`.
    pub fn evaluation(rows: usize, classes: usize, base: usize, slot: usize) -> Self {
        SoftmaxUniform {
            batch: rows as u32,
            classes: classes as u32,
            base: base as u32,
            slot: slot as u32,
            pred_base: base as u32,
            ..Default::default()
        }
    }
}

impl AdamUniform {
    /// One Adam update of `n` parameters with `hyper`'s moments and epsilon (the step
    /// size comes from the `alphas` buffer, per step).
    pub fn new(n: usize, hyper: &Hyper) -> Self {
        AdamUniform {
            n: n as u32,
            one_minus_b1: 1.0 - hyper.beta1,
            one_minus_b2: 1.0 - hyper.beta2,
            eps: hyper.adam_eps,
            ..Default::default()
        }
    }
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

/// One entry point with its explicit bind-group layout, built from its [`Bindings`].
pub struct Kernel {
    /// `family_entry`, the name the CPU twin, tests and benches use (`gemm`,
    /// `batchnorm_forward_train`, …).
    pub name: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    slots: &'static [Slot],
}

impl Kernel {
    /// A dispatch of this kernel over `groups` workgroups with the buffers `bindings`
    /// (which must be this kernel's own [`Bindings`] type).
    pub fn dispatch<B: Bindings>(
        &self,
        device: &wgpu::Device,
        bindings: &B,
        groups: [u32; 3],
    ) -> Dispatch {
        assert!(
            B::SLOTS == self.slots,
            "{}: dispatched with the bindings of {}",
            self.name,
            B::SHADER
        );
        let entries: Vec<wgpu::BindGroupEntry> = self
            .slots
            .iter()
            .zip(bindings.buffers())
            .map(|(&(_, binding, _), buffer)| wgpu::BindGroupEntry {
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
        }
    }
}

/// Every pipeline the trainer uses, named `family_entry` after its shader and entry point.
pub struct Kernels {
    pub gemm: Kernel,
    pub batchnorm_forward_train: Kernel,
    pub batchnorm_forward_eval: Kernel,
    /// BatchNorm + first-dense backward, a workgroup per feature (hardware GPUs) …
    pub batchnorm_dense_backward: Kernel,
    /// … or a thread per feature (CPU adapters, where barriers cost what they save
    /// elsewhere). [`Kernels::batchnorm_dense_backward_for`] picks.
    pub batchnorm_dense_backward_per_feature: Kernel,
    pub softmax_xent: Kernel,
    pub adam: Kernel,
    /// The adapter is a software rasteriser ([`super::adapters::is_software`]).
    cpu_adapter: bool,
}

pub(super) fn module(
    ctx: &GpuContext,
    label: &str,
    source: &str,
) -> Result<wgpu::ShaderModule, DeviceError> {
    ctx.scoped(&format!("compiling shaders/{label}.wgsl"), || {
        ctx.device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            })
    })
}

fn layout_entry(&(_, binding, access): &Slot) -> wgpu::BindGroupLayoutEntry {
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

/// The pipeline of `entry` in `module`, with the bind-group layout of `B`.
pub(super) fn kernel<B: Bindings>(
    ctx: &GpuContext,
    module: &wgpu::ShaderModule,
    name: &'static str,
    entry: &str,
) -> Result<Kernel, DeviceError> {
    debug_assert!(
        B::ENTRY_POINTS.contains(&entry),
        "{name}: not an entry of {}",
        B::SHADER
    );
    ctx.scoped(&format!("creating the {name} pipeline"), || {
        let entries: Vec<_> = B::SLOTS.iter().map(layout_entry).collect();
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
            slots: B::SLOTS,
        }
    })
}

impl Kernels {
    pub fn new(ctx: &GpuContext) -> Result<Kernels, DeviceError> {
        let gemm = module(ctx, "gemm", GEMM_WGSL)?;
        let bn = module(ctx, "batchnorm", BATCHNORM_WGSL)?;
        let sx = module(ctx, "softmax_xent", SOFTMAX_XENT_WGSL)?;
        let adam = module(ctx, "adam", ADAM_WGSL)?;
        type BnForward<'a> = BatchnormForwardBindings<'a>;
        type BnDense<'a> = BatchnormDenseBackwardBindings<'a>;
        Ok(Kernels {
            gemm: kernel::<GemmBindings>(ctx, &gemm, "gemm", "gemm")?,
            batchnorm_forward_train: kernel::<BnForward>(
                ctx,
                &bn,
                "batchnorm_forward_train",
                "forward_train",
            )?,
            batchnorm_forward_eval: kernel::<BnForward>(
                ctx,
                &bn,
                "batchnorm_forward_eval",
                "forward_eval",
            )?,
            batchnorm_dense_backward: kernel::<BnDense>(
                ctx,
                &bn,
                "batchnorm_dense_backward",
                "dense_backward",
            )?,
            batchnorm_dense_backward_per_feature: kernel::<BnDense>(
                ctx,
                &bn,
                "batchnorm_dense_backward_per_feature",
                "dense_backward_per_feature",
            )?,
            softmax_xent: kernel::<SoftmaxXentBindings>(ctx, &sx, "softmax_xent", "softmax_xent")?,
            adam: kernel::<AdamBindings>(ctx, &adam, "adam", "adam")?,
            cpu_adapter: super::adapters::is_software(&ctx.info),
        })
    }

    /// The BatchNorm + first-dense backward kernel for this adapter and its workgroups.
    pub fn batchnorm_dense_backward_for(&self, u: &BnUniform) -> (&Kernel, [u32; 3]) {
        self.batchnorm_dense_backward_variant(u, self.cpu_adapter)
    }

    /// Either variant (the agreement test runs both): a thread per feature when
    /// `per_feature`, else a workgroup per feature.
    pub fn batchnorm_dense_backward_variant(
        &self,
        u: &BnUniform,
        per_feature: bool,
    ) -> (&Kernel, [u32; 3]) {
        if per_feature {
            (&self.batchnorm_dense_backward_per_feature, u.workgroups())
        } else {
            (&self.batchnorm_dense_backward, [u.features, 1, 1])
        }
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
