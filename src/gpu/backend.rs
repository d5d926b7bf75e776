//! `GpuBackend`: the training step and evaluation as sequences of compute dispatches over
//! device-resident buffers.
//!
//! Per training step (L dense layers), with every fusion of [`Fusions`] on: BN forward
//! (gather + batch statistics), L forward GEMMs (ReLU fused), softmax-xent (loss,
//! correct, gradient, step counter), per layer from the top a weight-grad GEMM (bias
//! gradient fused) and, above layer 0, an input-grad GEMM (ReLU mask fused); then BN +
//! first-dense backward (dgamma, dbeta and dW0 from layer 0's xhatᵀ·δ, see
//! `batchnorm_dense_backward`) and Adam: 3 + 3L dispatches. With a fusion off, its
//! layers run on their own kernels (`set_fusions`, for the tests). The host writes
//! the epoch's order, Adam's step sizes and the step counter once per epoch, then
//! (`gpu/epoch.rs`) records as many steps per command buffer as take about 100 ms of GPU
//! time (measured), keeps no more than about 300 ms queued, and reads each submission's
//! per-step loss/correct back asynchronously for progress.

mod augment;
mod layers;
#[cfg(not(target_arch = "wasm32"))]
mod profile;
#[cfg(not(target_arch = "wasm32"))]
pub use profile::{KernelTime, SubmissionTimes};

use super::epoch::{sum_stats, EpochRun, TrainPlan, READBACK_SLOTS, STEPS_PER_SUBMIT};
use crate::backend::{Backend, EpochEnd, EvalStats, Steps};
use crate::data::{Dataset, Mnist};
use crate::device::adapters::{is_software, DeviceChoice};
use crate::device::context::{read_mapped, GpuContext, Needs};
use crate::device::error::DeviceError;
use crate::device::kernel::{pack_pixels, record, storage_init, storage_zeroed, Dispatch};
use crate::host::Task;
use crate::layers::adam::AdamBindings;
use crate::layers::augment::cpu::AugmentKey;
use crate::layers::batchnorm::{
    BatchnormBackwardBindings, BatchnormDenseBackwardBindings, BatchnormForwardBindings, BnForward,
    BnSetup,
};
use crate::layers::dense::{partial_floats, product_splits, product_wide, DenseShape, LinearOp};
use crate::layers::plan::{Fusions, LayerOp};
use crate::layers::relu::{ReluBackwardBindings, ReluForwardBindings};
use crate::layers::softmax_xent::{SoftmaxUniform, SoftmaxXentBindings};
use crate::layers::Pipelines;
use crate::model::{Hyper, ModelConfig, OptimState, ParamLayout, Params, CLASSES, INPUT};
use crate::settings::steps_per_epoch;
use anyhow::{bail, ensure, Result};

/// Test samples per evaluation chunk.
pub const EVAL_CHUNK: usize = 1000;

/// Per-batch activation buffers, sized for `cap` rows.
struct Workspace {
    cap: usize,
    xhat: wgpu::Buffer,
    /// `acts[0]`: BN output; `acts[l + 1]`: output of dense layer l (last: logits).
    acts: Vec<wgpu::Buffer>,
    /// `deltas[l]`: gradient of the mean loss w.r.t. `acts[l]`.
    deltas: Vec<wgpu::Buffer>,
    /// An input gradient before the ReLU backward, when that is not fused (else unused).
    scratch: wgpu::Buffer,
    /// The splits' sums of the dense products split over k (see `split_k`).
    partial: wgpu::Buffer,
}

/// Which dense products run the wide-tile GEMM ([`product_wide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WideTiles {
    /// None (software adapters: as split-K, the rule is for GPUs with many cores).
    Off,
    /// Those [`product_wide`] picks (hardware GPUs).
    Large,
    /// Every one that is not split over k, whatever its size (the tests).
    Every,
}

struct EvalPlan {
    chunks: Vec<Vec<Dispatch>>,
    staging: wgpu::Buffer,
}

pub struct GpuBackend {
    train_plan: Option<TrainPlan>,
    eval_plan: Option<EvalPlan>,
    work: Option<Workspace>,
    pipelines: Pipelines,
    ctx: GpuContext,
    config: ModelConfig,
    /// The fusions this model runs ([`Fusions::plan`] of the allowed ones).
    fusions: Fusions,
    /// Whether the dense products with few output tiles split their k
    /// ([`product_splits`]): on hardware GPUs, whose many cores would otherwise idle.
    split_k: bool,
    /// Which dense products run the wide-tile GEMM (`gemm_wide`).
    wide_tiles: WideTiles,
    layout: ParamLayout,
    hyper: Hyper,
    step: u64,
    train_count: usize,
    test_count: usize,
    train_pixels: wgpu::Buffer,
    train_labels: wgpu::Buffer,
    test_pixels: wgpu::Buffer,
    test_labels: wgpu::Buffer,
    /// Under `--augment`, from its first epoch on.
    augmented: Option<augment::AugmentBuffers>,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    m: wgpu::Buffer,
    v: wgpu::Buffer,
    /// [moving mean | moving var | inv_std], INPUT each.
    bn_stats: wgpu::Buffer,
    /// `[s, unused ×3]`: **the step counter**, a contract between three kernels that
    /// lets a whole command buffer of steps run without the host writing anything
    /// between them. The host zeroes it at the start of each epoch (and of each
    /// profiled step). In step s:
    /// - `batchnorm.wgsl` (forward, training) reads s to find its rows,
    ///   `order[s·stride + row]`;
    /// - `softmax_xent.wgsl` (training) reads s for its rows and for its output slot
    ///   `stats[2s], stats[2s + 1]`, then advances it to s + 1 (thread 0, after every
    ///   read of s in that dispatch);
    /// - `adam.wgsl` then reads s + 1 and takes its step size `alphas[s]`.
    ///
    /// So the dispatch order inside a step matters: BatchNorm forward before
    /// softmax_xent, softmax_xent before Adam.
    state: wgpu::Buffer,
    predictions: wgpu::Buffer,
    eval_stats: wgpu::Buffer,
    dummy: wgpu::Buffer,
}

/// A data set's images, resident as u8 pixels packed 4 per u32.
fn pixels_buffer(ctx: &GpuContext, label: &str, set: &Dataset) -> wgpu::Buffer {
    storage_init(ctx, label, bytemuck::cast_slice(&pack_pixels(&set.images)))
}

/// A data set's labels, one u32 each.
fn labels_buffer(ctx: &GpuContext, label: &str, set: &Dataset) -> wgpu::Buffer {
    let labels: Vec<u32> = set.labels.iter().map(|&l| l as u32).collect();
    storage_init(ctx, label, bytemuck::cast_slice(&labels))
}

/// The parameters must fit their model's layout and the data sets hold 784-pixel
/// images, one per label.
fn check_inputs(params: &Params, data: &Mnist) -> Result<(), DeviceError> {
    let invalid =
        |what: String| DeviceError::Gpu(format!("invalid input to the GPU trainer: {what}"));
    let layout = ParamLayout::new(&params.config);
    if params.layout != layout || params.trainable.len() != layout.total {
        return Err(invalid(
            "the parameters do not fit the model's layout".into(),
        ));
    }
    let features = params.config.batchnorm_features();
    if params.moving_mean.len() != features || params.moving_var.len() != features {
        return Err(invalid(format!(
            "moving statistics must hold {features} values each"
        )));
    }
    for (name, set) in [("training", &data.train), ("test", &data.test)] {
        if !set.is_empty() && set.pixels_per_image() != INPUT {
            return Err(invalid(format!(
                "{name} images have {} pixels, expected {INPUT}",
                set.pixels_per_image()
            )));
        }
        if set.images.len() != set.len() * set.pixels_per_image() {
            return Err(invalid(format!(
                "{name} set has a mismatched image/label count"
            )));
        }
    }
    Ok(())
}

impl GpuBackend {
    /// Open the device `choice` selects, compile the kernels and upload the parameters
    /// and the whole data set (u8 pixels packed 4 per u32).
    pub fn new(
        params: Params,
        hyper: Hyper,
        data: Mnist,
        choice: &DeviceChoice,
    ) -> Result<GpuBackend, DeviceError> {
        check_inputs(&params, &data)?;
        let ctx = GpuContext::new(choice, GpuBackend::needs(&data))?;
        GpuBackend::with_context(ctx, params, hyper, data)
    }

    /// [`GpuBackend::new`] on the browser's WebGPU adapter.
    pub async fn new_browser(
        params: Params,
        hyper: Hyper,
        data: Mnist,
    ) -> Result<GpuBackend, DeviceError> {
        check_inputs(&params, &data)?;
        let ctx = GpuContext::new_browser(GpuBackend::needs(&data)).await?;
        GpuBackend::with_context(ctx, params, hyper, data)
    }

    /// The largest buffer `data` needs: its packed images.
    fn needs(data: &Mnist) -> Needs {
        let train_bytes = data.train.images.len().next_multiple_of(4) as u64;
        let test_bytes = data.test.images.len().next_multiple_of(4) as u64;
        Needs {
            largest_buffer: train_bytes.max(test_bytes),
        }
    }

    /// Compile the kernels on the opened device and upload the parameters and the data.
    fn with_context(
        ctx: GpuContext,
        params: Params,
        hyper: Hyper,
        data: Mnist,
    ) -> Result<GpuBackend, DeviceError> {
        let layout = params.layout.clone();
        let pipelines = Pipelines::new(&ctx)?;
        let d = &ctx.device;
        let scopes = ctx.begin_scope();
        let total = layout.total;
        let mut stats = params.moving_mean.clone();
        stats.extend(&params.moving_var);
        stats.extend(vec![0.0f32; INPUT]);
        let chunks = data.test.len().div_ceil(EVAL_CHUNK);
        let backend = GpuBackend {
            train_plan: None,
            eval_plan: None,
            work: None,
            pipelines,
            train_count: data.train.len(),
            test_count: data.test.len(),
            train_pixels: pixels_buffer(&ctx, "train pixels", &data.train),
            train_labels: labels_buffer(&ctx, "train labels", &data.train),
            test_pixels: pixels_buffer(&ctx, "test pixels", &data.test),
            test_labels: labels_buffer(&ctx, "test labels", &data.test),
            augmented: None,
            params: storage_init(&ctx, "params", bytemuck::cast_slice(&params.trainable)),
            grads: storage_zeroed(d, "grads", (total * 4) as u64),
            m: storage_zeroed(d, "adam m", (total * 4) as u64),
            v: storage_zeroed(d, "adam v", (total * 4) as u64),
            bn_stats: storage_init(&ctx, "bn stats", bytemuck::cast_slice(&stats)),
            state: storage_zeroed(d, "state", 16),
            predictions: storage_zeroed(d, "predictions", (data.test.len() * 4) as u64),
            eval_stats: storage_zeroed(d, "eval stats", (chunks * 8) as u64),
            dummy: storage_zeroed(d, "unused", 16),
            config: params.config.clone(),
            fusions: Fusions::plan(&params.config, Fusions::ALL),
            split_k: !is_software(&ctx.info),
            wide_tiles: match is_software(&ctx.info) {
                true => WideTiles::Off,
                false => WideTiles::Large,
            },
            layout: layout.clone(),
            hyper,
            step: 0,
            ctx,
        };
        backend
            .ctx
            .end_scope("uploading the data set and parameters", scopes)?;
        backend.ctx.wait()?;
        Ok(backend)
    }

    fn widths(&self) -> Vec<usize> {
        self.config.widths()
    }

    /// Whether this model trains on the layer path ([`layers`]) rather than the MLP's
    /// fused step.
    fn layered(&self) -> bool {
        !self.config.is_mlp()
    }

    /// The index in the workspace's `acts` of the logits.
    fn logits_index(&self) -> usize {
        if self.layered() {
            self.config.layers.len()
        } else {
            self.config.dense_layers()
        }
    }

    /// The bytes of the widest activation buffer (`widths` values a row) for `rows` rows,
    /// or an error when that is more than one storage binding may hold.
    fn check_activation_bytes(&self, rows: usize, widths: &[usize]) -> Result<u64, DeviceError> {
        let widest = widths.iter().copied().max().unwrap_or(1);
        let bytes = (rows * widest * 4) as u64;
        let limit = self.ctx.limits.max_storage_buffer_binding_size;
        if bytes > limit {
            return Err(DeviceError::Gpu(format!(
                "{rows} rows (a training batch, or an evaluation chunk of up to 1000) need {bytes}-byte activation buffers, more than this device's {limit}-byte storage binding limit (use a smaller --batch-size, or a smaller model)"
            )));
        }
        Ok(bytes)
    }

    /// Make sure the activation buffers hold `rows` rows; recreating them drops the plans.
    fn ensure_workspace(&mut self, rows: usize) -> Result<(), DeviceError> {
        if self.work.as_ref().is_some_and(|w| w.cap >= rows) {
            return Ok(());
        }
        self.drop_plans_and_workspace();
        let cap = rows.max(1);
        if self.layered() {
            let (ops, widths) = (LayerOp::plan(&self.config), self.layer_widths());
            self.check_activation_bytes(cap, &widths)?;
            let features = self.config.batchnorm_features();
            let d = &self.ctx.device;
            let partial_bytes = self.partial_bytes(cap);
            let work = self.ctx.scoped("allocating activation buffers", || {
                layers::layer_workspace(d, &ops, &widths, (cap, features, partial_bytes))
            })?;
            self.work = Some(work);
            return Ok(());
        }
        let widths = self.widths();
        let bytes = self.check_activation_bytes(cap, &widths)?;
        // Only the unfused ReLU backward needs the scratch buffer.
        let scratch_bytes = if self.fusions.relu_in_gemm { 16 } else { bytes };
        let partial_bytes = self.partial_bytes(cap);
        let d = &self.ctx.device;
        let work = self
            .ctx
            .scoped("allocating activation buffers", || Workspace {
                cap,
                xhat: storage_zeroed(d, "xhat", (cap * INPUT * 4) as u64),
                acts: widths
                    .iter()
                    .enumerate()
                    .map(|(l, w)| storage_zeroed(d, &format!("acts{l}"), (cap * w * 4) as u64))
                    .collect(),
                deltas: widths
                    .iter()
                    .enumerate()
                    .map(|(l, w)| storage_zeroed(d, &format!("deltas{l}"), (cap * w * 4) as u64))
                    .collect(),
                scratch: storage_zeroed(d, "scratch", scratch_bytes),
                partial: storage_zeroed(d, "split-k partial sums", partial_bytes),
            })?;
        self.work = Some(work);
        Ok(())
    }

    /// The model's BatchNorm layer, as its uniforms describe it.
    fn bn_setup(&self) -> BnSetup {
        BnSetup {
            features: INPUT,
            gamma_off: self.layout.gamma.start,
            beta_off: self.layout.beta.start,
            scale: self.config.pixel_scale(),
            eps: self.hyper.bn_eps,
            momentum: self.hyper.bn_momentum,
            per_feature: is_software(&self.ctx.info),
        }
    }

    /// Dense layer `l` of the MLP on `rows` rows.
    fn dense_shape(&self, l: usize, rows: usize) -> DenseShape {
        let widths = self.widths();
        self.weighted_dense(l, rows, (widths[l], widths[l + 1]))
    }

    /// The `l`-th weighted layer, a dense layer of `inputs` to `units`, on `rows` rows,
    /// with its parameters' offsets.
    fn weighted_dense(&self, l: usize, rows: usize, (inputs, units): (usize, usize)) -> DenseShape {
        DenseShape {
            rows,
            inputs,
            units,
            kernel_off: self.layout.kernels[l].start,
            bias_off: self.layout.biases[l].start,
        }
    }

    /// Forgets the recorded plans and the activation buffers, to be made again for a
    /// changed setting (their dispatches and sizes depend on it).
    fn drop_plans_and_workspace(&mut self) {
        self.train_plan = None;
        self.eval_plan = None;
        self.work = None;
    }

    /// Split the dense products with few output tiles over k, or not: hardware adapters
    /// do, software ones do not; the tests ask for both on the software ones.
    pub fn set_split_k(&mut self, split: bool) {
        self.split_k = split;
        self.drop_plans_and_workspace();
    }

    /// Run the dense products through the wide-tile GEMM (`gemm_wide`) or not. On, it
    /// runs every product that is not split over k, bypassing the size rule
    /// ([`product_wide`]) that hardware adapters apply by default, so that the tests can
    /// check it on the software adapters and small models; off, none (as software
    /// adapters do by default).
    pub fn set_wide_tiles(&mut self, on: bool) {
        self.wide_tiles = match on {
            true => WideTiles::Every,
            false => WideTiles::Off,
        };
        self.drop_plans_and_workspace();
    }

    /// The dispatches of dense product `op` on `shape`: on a hardware GPU split over k
    /// where [`product_splits`] says so (`gemm_split` + `reduce`), else through the
    /// wide-tile GEMM where [`product_wide`] says so, else one GEMM.
    fn dense_product(&self, shape: &DenseShape, op: LinearOp) -> Vec<Dispatch> {
        let splits = match self.split_k {
            true => product_splits(shape, &op),
            false => 1,
        };
        let wide = match self.wide_tiles {
            WideTiles::Off => false,
            WideTiles::Large => product_wide(shape, &op),
            WideTiles::Every => true,
        };
        // Split-K wins: its products (few tiles) are never large enough to be wide.
        if wide && splits <= 1 {
            return vec![self.pipelines.dense.dispatch_wide(shape, op)];
        }
        let partial = &self.work.as_ref().expect("workspace").partial;
        self.pipelines
            .dense
            .dispatch_split(shape, op, (partial, splits))
    }

    /// Bytes of the partial sums buffer: the most any dense product on up to `cap` rows
    /// needs (a batch, the last short one, an evaluation chunk); a token 16 when nothing
    /// splits.
    fn partial_bytes(&self, cap: usize) -> u64 {
        self.partial_floats(cap).max(4) as u64 * 4
    }

    /// Floats of partial sums behind [`Self::partial_bytes`]; none when nothing splits.
    fn partial_floats(&self, cap: usize) -> usize {
        if !self.split_k {
            return 0;
        }
        let layers = self.dense_layer_widths();
        let shapes = layers.into_iter().flat_map(|(l, widths)| {
            (1..=cap).map(move |rows| self.weighted_dense(l, rows, widths))
        });
        shapes
            .map(|shape| partial_floats(&shape))
            .max()
            .unwrap_or(0)
    }

    /// Every dense layer's weighted-layer index and (inputs, units), on either path.
    fn dense_layer_widths(&self) -> Vec<(usize, (usize, usize))> {
        if !self.layered() {
            let widths = self.widths();
            let layers = 0..self.config.dense_layers();
            return layers.map(|l| (l, (widths[l], widths[l + 1]))).collect();
        }
        let widths = self.layer_widths();
        let ops = LayerOp::plan(&self.config).into_iter().enumerate();
        ops.filter_map(|(i, op)| match op {
            LayerOp::Dense { w: l, .. } => Some((l, (widths[i], widths[i + 1]))),
            _ => None,
        })
        .collect()
    }

    /// Train with only the fusions of `allowed` (all by default), for the tests that
    /// check each fusion against the unfused layers. The activation buffers and plans are
    /// made again for them.
    pub fn set_fusions(&mut self, allowed: Fusions) {
        self.fusions = Fusions::plan(&self.config, allowed);
        self.drop_plans_and_workspace();
    }

    /// The dense layers' forwards for `rows` rows, with a ReLU after each but the last:
    /// in the GEMM's epilogue, or its own dispatch when that fusion is off.
    fn forward_dispatches(&self, rows: usize) -> Vec<Dispatch> {
        let w = self.work.as_ref().expect("workspace");
        let layers = self.config.dense_layers();
        let fused = self.fusions.relu_in_gemm;
        let mut list = Vec::new();
        for l in 0..layers {
            let relu = l + 1 < layers;
            let shape = self.dense_shape(l, rows);
            let op = LinearOp::Forward {
                x: &w.acts[l],
                params: &self.params,
                y: &w.acts[l + 1],
                relu: relu && fused,
            };
            list.extend(self.dense_product(&shape, op));
            if relu && !fused {
                let bindings = ReluForwardBindings { x: &w.acts[l + 1] };
                let n = rows * shape.units;
                list.push(self.pipelines.relu.forward(n, &bindings));
            }
        }
        list
    }

    /// Every dispatch of one training step on `rows` rows (batch stride `stride`), in
    /// order: BatchNorm forward, the dense forwards, softmax_xent, the dense backwards,
    /// the BatchNorm + first-dense backward, Adam. `plan_bufs`: the epoch's sample
    /// order, Adam's step sizes and the per-step statistics.
    fn step_dispatches(
        &self,
        rows: usize,
        stride: usize,
        plan_bufs: (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    ) -> Vec<Dispatch> {
        if self.layered() {
            return self.layers_step(rows, stride, plan_bufs);
        }
        let (order, alphas, stats) = plan_bufs;
        let mut list = vec![self.batchnorm_forward_dispatch(rows, stride, order)];
        list.extend(self.forward_dispatches(rows));
        list.push(self.softmax_xent_dispatch(rows, stride, order, stats));
        list.extend(self.backward_dispatches(rows));
        list.push(self.adam_dispatch(alphas));
        list
    }

    fn batchnorm_forward_dispatch(
        &self,
        rows: usize,
        stride: usize,
        order: &wgpu::Buffer,
    ) -> Dispatch {
        let bindings = self.batchnorm_forward_bindings(self.train_images(), order);
        let setup = self.bn_setup();
        let pipelines = &self.pipelines.batchnorm;
        let pass = BnForward::Train { rows, stride };
        pipelines.forward(pass, &setup, &bindings)
    }

    /// BatchNorm forward's buffers for the images `pixels` (through `order` when
    /// training), into the workspace's `xhat` and first activations.
    fn batchnorm_forward_bindings<'a>(
        &'a self,
        pixels: &'a wgpu::Buffer,
        order: &'a wgpu::Buffer,
    ) -> BatchnormForwardBindings<'a> {
        let w = self.work.as_ref().expect("workspace");
        BatchnormForwardBindings {
            pixels,
            order,
            state: &self.state,
            params: &self.params,
            stats: &self.bn_stats,
            xhat: &w.xhat,
            y: &w.acts[0],
        }
    }

    fn softmax_xent_dispatch(
        &self,
        rows: usize,
        stride: usize,
        order: &wgpu::Buffer,
        stats: &wgpu::Buffer,
    ) -> Dispatch {
        let w = self.work.as_ref().expect("workspace");
        let layers = self.logits_index();
        let u = SoftmaxUniform::training(rows, CLASSES, stride);
        let bindings = SoftmaxXentBindings {
            logits: &w.acts[layers],
            labels: &self.train_labels,
            order,
            state: &self.state,
            grad: &w.deltas[layers],
            stats,
            predictions: &self.predictions,
        };
        self.pipelines.softmax_xent.dispatch(&u, &bindings)
    }

    /// From the top layer down: each layer's weight-gradient GEMM (bias gradient fused)
    /// and, above the first layer, its input gradient through the ReLU below; then
    /// BatchNorm's gradients ([`GpuBackend::first_layer_backward`]).
    fn backward_dispatches(&self, rows: usize) -> Vec<Dispatch> {
        let w = self.work.as_ref().expect("workspace");
        let mut list = Vec::new();
        for l in (1..self.config.dense_layers()).rev() {
            let shape = self.dense_shape(l, rows);
            let op = LinearOp::WeightGrad {
                x: &w.acts[l],
                dy: &w.deltas[l + 1],
                grads: &self.grads,
            };
            list.extend(self.dense_product(&shape, op));
            list.extend(self.input_grad_through_relu(&shape, l));
        }
        list.extend(self.first_layer_backward(rows));
        list
    }

    /// `deltas[l] = (deltas[l + 1] · Wᵀ) · [acts[l] > 0]`: the ReLU as the GEMM's mask,
    /// or, unfused, the GEMM into `scratch` and the ReLU backward from there.
    fn input_grad_through_relu(&self, shape: &DenseShape, l: usize) -> Vec<Dispatch> {
        let w = self.work.as_ref().expect("workspace");
        let fused = self.fusions.relu_in_gemm;
        let op = LinearOp::InputGrad {
            dy: &w.deltas[l + 1],
            params: &self.params,
            dx: if fused { &w.deltas[l] } else { &w.scratch },
            relu_out: fused.then_some(&w.acts[l]),
        };
        let mut list = self.dense_product(shape, op);
        if fused {
            return list;
        }
        let bindings = ReluBackwardBindings {
            dy: &w.scratch,
            y: &w.acts[l],
            dx: &w.deltas[l],
        };
        let n = shape.rows * shape.inputs;
        list.push(self.pipelines.relu.backward(n, &bindings));
        list
    }

    /// The first dense layer's and BatchNorm's gradients. Fused: the weight gradient
    /// against xhat, turned into dW0, dγ and dβ by the BatchNorm + dense backward, so
    /// layer 0 needs no input-grad GEMM. Unfused: the weight gradient against BatchNorm's
    /// output, the input gradient into `deltas[0]`, then BatchNorm's own backward.
    fn first_layer_backward(&self, rows: usize) -> Vec<Dispatch> {
        let w = self.work.as_ref().expect("workspace");
        let shape = self.dense_shape(0, rows);
        let fused = self.fusions.batchnorm_dense_backward;
        let weight_grad = LinearOp::WeightGrad {
            x: if fused { &w.xhat } else { &w.acts[0] },
            dy: &w.deltas[1],
            grads: &self.grads,
        };
        let mut list = self.dense_product(&shape, weight_grad);
        if fused {
            list.push(self.batchnorm_dense_backward_dispatch(rows));
            return list;
        }
        let input_grad = LinearOp::InputGrad {
            dy: &w.deltas[1],
            params: &self.params,
            dx: &w.deltas[0],
            relu_out: None,
        };
        let bindings = BatchnormBackwardBindings {
            grads: &self.grads,
            dy: &w.deltas[0],
            xhat_in: &w.xhat,
        };
        list.extend(self.dense_product(&shape, input_grad));
        list.push((self.pipelines.batchnorm).backward(rows, &self.bn_setup(), &bindings));
        list
    }

    fn batchnorm_dense_backward_dispatch(&self, rows: usize) -> Dispatch {
        let bindings = BatchnormDenseBackwardBindings {
            params: &self.params,
            grads: &self.grads,
        };
        let (setup, dense) = (self.bn_setup(), self.dense_shape(0, rows));
        // A thread per feature on CPU adapters: there a workgroup's barriers cost more
        // than the parallel sum saves (see batchnorm.wgsl).
        let per_feature = is_software(&self.ctx.info);
        let pipelines = &self.pipelines.batchnorm;
        pipelines.dense_backward(&setup, &dense, &bindings, per_feature)
    }

    fn adam_dispatch(&self, alphas: &wgpu::Buffer) -> Dispatch {
        let bindings = AdamBindings {
            state: &self.state,
            alphas,
            grads: &self.grads,
            params: &self.params,
            m: &self.m,
            v: &self.v,
        };
        let n = self.layout.total;
        self.pipelines.adam.update(n, &self.hyper, &bindings)
    }

    /// Make the training plan for `order` and upload the epoch's inputs: the sample
    /// order, Adam's step sizes and a zeroed step counter.
    fn upload_epoch(&mut self, order: &[u32], batch_size: usize) -> Result<(), DeviceError> {
        self.ensure_train_plan(batch_size, order.len())?;
        let steps = steps_per_epoch(order.len(), batch_size) as u64;
        let alphas: Vec<f32> = (1..=steps)
            .map(|s| self.hyper.adam_alpha(self.step + s))
            .collect();
        let plan = self.train_plan.as_ref().expect("plan");
        let queue = &self.ctx.queue;
        queue.write_buffer(&plan.order, 0, bytemuck::cast_slice(order));
        queue.write_buffer(&plan.alphas, 0, bytemuck::cast_slice(&alphas));
        // The step counter from 0, and the global number of the epoch's first step
        // (dropout's masks count from it).
        let first_step = (self.step + 1) as u32;
        queue.write_buffer(&self.state, 0, bytemuck::cast_slice(&[0, first_step, 0, 0]));
        Ok(())
    }

    fn ensure_train_plan(&mut self, batch: usize, len: usize) -> Result<(), DeviceError> {
        self.ensure_workspace(batch)?;
        if self
            .train_plan
            .as_ref()
            .is_some_and(|p| p.batch == batch && p.len == len)
        {
            return Ok(());
        }
        self.train_plan = None;
        let steps = steps_per_epoch(len, batch);
        let d = &self.ctx.device;
        let plan = self.ctx.scoped("preparing the training step", || {
            let order = storage_zeroed(d, "order", (len * 4) as u64);
            let alphas = storage_zeroed(d, "adam alphas", (steps * 4) as u64);
            let stats = storage_zeroed(d, "step stats", (steps * 8) as u64);
            let staging = d.create_buffer(&wgpu::BufferDescriptor {
                label: Some("step stats readback"),
                size: (steps * 8).max(16) as u64,
                usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
                mapped_at_creation: false,
            });
            let readbacks = (0..READBACK_SLOTS)
                .map(|_| {
                    d.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("submission stats readback"),
                        size: (STEPS_PER_SUBMIT * 8) as u64,
                        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
                        mapped_at_creation: false,
                    })
                })
                .collect();
            let full = self.step_dispatches(batch.min(len), batch, (&order, &alphas, &stats));
            let rest = len % batch;
            let last = (rest != 0 && len > batch)
                .then(|| self.step_dispatches(rest, batch, (&order, &alphas, &stats)));
            TrainPlan {
                batch,
                len,
                order,
                alphas,
                stats,
                staging,
                readbacks,
                full,
                last,
            }
        })?;
        self.train_plan = Some(plan);
        Ok(())
    }

    fn ensure_eval_plan(&mut self) -> Result<(), DeviceError> {
        let chunk = EVAL_CHUNK.min(self.test_count.max(1));
        self.ensure_workspace(chunk)?;
        if self.eval_plan.is_some() {
            return Ok(());
        }
        let d = &self.ctx.device;
        let plan = self.ctx.scoped("preparing evaluation", || {
            // The dense forwards depend only on the chunk's rows (all full but the last).
            let mut forwards: Vec<(usize, Vec<Dispatch>)> = Vec::new();
            let mut chunks = Vec::new();
            for (slot, base) in (0..self.test_count).step_by(EVAL_CHUNK).enumerate() {
                let rows = EVAL_CHUNK.min(self.test_count - base);
                if !forwards.iter().any(|(r, _)| *r == rows) {
                    let forward = if self.layered() {
                        self.layers_forward(rows, false)
                    } else {
                        self.forward_dispatches(rows)
                    };
                    forwards.push((rows, forward));
                }
                let forward = &forwards.iter().find(|(r, _)| *r == rows).expect("made").1;
                chunks.push(self.eval_chunk_dispatches(slot, base, rows, forward));
            }
            let staging = d.create_buffer(&wgpu::BufferDescriptor {
                label: Some("eval readback"),
                size: (self.eval_stats.size() + self.predictions.size()),
                usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
                mapped_at_creation: false,
            });
            EvalPlan { chunks, staging }
        })?;
        self.eval_plan = Some(plan);
        Ok(())
    }

    /// The evaluation of test chunk `slot` (`rows` rows from sample `base`): BatchNorm in
    /// inference mode, the dense `forward`, then softmax_xent's loss, correct count and
    /// predictions into the chunk's slots.
    fn eval_chunk_dispatches(
        &self,
        slot: usize,
        base: usize,
        rows: usize,
        forward: &[Dispatch],
    ) -> Vec<Dispatch> {
        let w = self.work.as_ref().expect("workspace");
        // Evaluation reads rows in order: no sample order, no step counter.
        let pass = BnForward::Eval { rows, base };
        let first = if self.layered() {
            self.layers_input(pass, [&self.test_pixels, &self.dummy])
        } else {
            let bindings = self.batchnorm_forward_bindings(&self.test_pixels, &self.dummy);
            let batchnorm = &self.pipelines.batchnorm;
            batchnorm.forward(pass, &self.bn_setup(), &bindings)
        };
        let mut list = vec![first];
        list.extend(forward.iter().cloned());
        let u = SoftmaxUniform::evaluation(rows, CLASSES, base, slot);
        let layers = self.logits_index();
        let bindings = SoftmaxXentBindings {
            logits: &w.acts[layers],
            labels: &self.test_labels,
            order: &self.dummy,
            state: &self.state,
            grad: &w.deltas[layers],
            stats: &self.eval_stats,
            predictions: &self.predictions,
        };
        list.push(self.pipelines.softmax_xent.dispatch(&u, &bindings));
        list
    }
}

impl GpuBackend {
    /// Record and submit the evaluation of every test chunk with the copy of its results
    /// to the plan's staging buffer; the bytes to read there.
    fn submit_evaluation(&mut self) -> Result<u64> {
        self.ensure_eval_plan()?;
        let plan = self.eval_plan.as_ref().expect("eval plan");
        let ctx = &self.ctx;
        let stats_size = self.eval_stats.size();
        let preds_size = (self.test_count * 4) as u64;
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("evaluation"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("evaluation"),
                timestamp_writes: None,
            });
            for chunk in &plan.chunks {
                record(&mut pass, chunk);
            }
        }
        encoder.copy_buffer_to_buffer(&self.eval_stats, 0, &plan.staging, 0, stats_size);
        encoder.copy_buffer_to_buffer(&self.predictions, 0, &plan.staging, stats_size, preds_size);
        ctx.queue.submit([encoder.finish()]);
        Ok(stats_size + preds_size)
    }

    /// Loss, accuracy and predictions from the evaluation's read-back `bytes`.
    fn eval_stats_from(&self, bytes: &[u8]) -> EvalStats {
        let count = self.test_count;
        let words: &[u32] = bytemuck::cast_slice(bytes);
        let chunks = count.div_ceil(EVAL_CHUNK);
        let (loss_sum, correct) = sum_stats(&words[..chunks * 2]);
        let offset = (self.eval_stats.size() / 4) as usize;
        let predictions = words[offset..offset + count]
            .iter()
            .map(|&p| p as u8)
            .collect();
        EvalStats {
            loss: loss_sum / count as f64,
            accuracy: correct as f64 / count as f64,
            predictions,
        }
    }

    /// Check `order` and upload the epoch's inputs; false when there is nothing to train.
    fn prepare_steps(&mut self, order: &[u32], batch_size: usize) -> Result<bool> {
        ensure!(batch_size > 0, "batch size must be at least 1");
        if order.is_empty() {
            return Ok(false);
        }
        if let Some(&bad) = order.iter().find(|&&i| i as usize >= self.train_count) {
            bail!(
                "sample index {bad} is out of range: the training set holds {} samples",
                self.train_count
            );
        }
        self.upload_epoch(order, batch_size)?;
        Ok(true)
    }

    /// [`Backend::train_steps`]: upload the epoch's inputs, then run the recorded steps
    /// through the GPU ([`EpochRun::run`]).
    async fn steps(&mut self, steps: Steps<'_>) -> Result<EpochEnd> {
        let (order, batch_size, base) = (steps.order, steps.batch_size, steps.base);
        if !self.prepare_steps(order, batch_size)? {
            return Ok(EpochEnd::from_totals(base));
        }
        let plan = self.train_plan.as_ref().expect("plan");
        let run = EpochRun::new(&self.ctx, plan, &base, batch_size, order.len());
        // Fewer steps than the epoch's when `stop` ended it early.
        let stop = steps.stop;
        let (totals, taken) = run
            .run(steps.progress, &|done| stop(base.steps_done + done))
            .await?;
        self.step += taken as u64;
        Ok(EpochEnd::from_totals(totals))
    }

    /// [`Backend::evaluate`]: every test chunk in one submission, read back once.
    async fn evaluation(&mut self) -> Result<EvalStats> {
        if self.test_count == 0 {
            return Ok(EvalStats::default());
        }
        let size = self.submit_evaluation()?;
        let staging = &self.eval_plan.as_ref().expect("plan").staging;
        let bytes = read_mapped(&self.ctx, staging, size).await?;
        Ok(self.eval_stats_from(&bytes))
    }

    /// [`Backend::params`]: the parameters and the moving statistics read back.
    async fn read_params(&self) -> Result<Params> {
        let features = self.config.batchnorm_features();
        let trainable = self.ctx.read_as(&self.params, 0..self.layout.total).await?;
        let stats = match features {
            0 => Vec::new(),
            _ => self.ctx.read_as(&self.bn_stats, 0..2 * features).await?,
        };
        Ok(Params {
            config: self.config.clone(),
            layout: self.layout.clone(),
            trainable: trainable.into(),
            moving_mean: stats[..features].to_vec(),
            moving_var: stats[features..].to_vec(),
        })
    }

    /// [`Backend::optim_state`]: Adam's moments read back, and its step count.
    async fn read_optim_state(&self) -> Result<OptimState> {
        Ok(OptimState {
            m: self
                .ctx
                .read_as(&self.m, 0..self.layout.total)
                .await?
                .into(),
            v: self
                .ctx
                .read_as(&self.v, 0..self.layout.total)
                .await?
                .into(),
            step: self.step,
        })
    }
}

impl Backend for GpuBackend {
    fn name(&self) -> String {
        self.ctx.describe()
    }

    fn train_count(&self) -> usize {
        self.train_count
    }

    fn train_steps<'a>(&'a mut self, steps: Steps<'a>) -> Task<'a, EpochEnd> {
        Box::pin(self.steps(steps))
    }

    fn augment(&mut self, key: AugmentKey) -> Task<'_, ()> {
        Box::pin(std::future::ready(
            self.augment_images(key).map_err(Into::into),
        ))
    }

    fn evaluate(&mut self) -> Task<'_, EvalStats> {
        Box::pin(self.evaluation())
    }

    fn params(&mut self) -> Task<'_, Params> {
        Box::pin(self.read_params())
    }

    fn optim_state(&mut self) -> Task<'_, OptimState> {
        Box::pin(self.read_optim_state())
    }

    fn adam_steps(&self) -> u64 {
        self.step
    }

    fn load(&mut self, params: &Params, optim: Option<&OptimState>) -> Result<()> {
        ensure!(
            params.layout == self.layout && params.trainable.len() == self.layout.total,
            "the parameters do not fit this model's architecture"
        );
        let features = self.config.batchnorm_features();
        ensure!(
            params.moving_mean.len() == features && params.moving_var.len() == features,
            "the moving statistics must hold {features} values each"
        );
        let total = self.layout.total;
        let fresh;
        let optim = match optim {
            Some(o) => {
                ensure!(
                    o.m.len() == total && o.v.len() == total,
                    "the optimiser state does not fit this model"
                );
                o
            }
            None => {
                fresh = OptimState::new(total);
                &fresh
            }
        };
        let q = &self.ctx.queue;
        q.write_buffer(&self.params, 0, bytemuck::cast_slice(&params.trainable));
        q.write_buffer(&self.bn_stats, 0, bytemuck::cast_slice(&params.moving_mean));
        q.write_buffer(
            &self.bn_stats,
            (features * 4) as u64,
            bytemuck::cast_slice(&params.moving_var),
        );
        q.write_buffer(&self.m, 0, bytemuck::cast_slice(&optim.m));
        q.write_buffer(&self.v, 0, bytemuck::cast_slice(&optim.v));
        self.step = optim.step;
        // The pixel scale is baked into the recorded uniforms: rebuild them. (The layers,
        // and so the planned fusions, are this model's: the layouts match.)
        self.config = params.config.clone();
        self.train_plan = None;
        self.eval_plan = None;
        self.ctx.wait()?;
        Ok(())
    }
}
