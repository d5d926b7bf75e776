//! `GpuBackend`: the training step and evaluation as sequences of compute dispatches over
//! device-resident buffers.
//!
//! Per training step (L dense layers): BN forward (gather + batch statistics), L forward
//! GEMMs, softmax-xent (loss, correct, gradient, step counter), per layer from the top a
//! weight-grad GEMM (bias gradient fused) and, above layer 0, an input-grad GEMM (ReLU
//! mask fused); then BN + first-dense backward (dgamma, dbeta and dW0 from layer 0's
//! xhatᵀ·δ, see `batchnorm_dense_backward`) and Adam: 3 + 3L dispatches. The host writes the epoch's order, Adam's step
//! sizes and the step counter once per epoch, records [`STEPS_PER_SUBMIT`] steps per
//! command buffer, and reads the per-step loss/correct back asynchronously for progress.

use super::context::{map_blocking, DeviceError, GpuContext, Needs};
use super::kernels::{
    elementwise_groups, pack_pixels, record, storage_init, storage_zeroed, uniform, AdamUniform,
    BnUniform, Dispatch, GemmUniform, Kernels, SoftmaxUniform,
};
use crate::backend::{Backend, EpochStats, EvalStats, StepProgress};
use crate::cpu::adam::adam_alpha;
use crate::data::Mnist;
use crate::model::{Hyper, ModelConfig, OptimState, ParamLayout, Params, CLASSES, INPUT};
use anyhow::{bail, ensure, Result};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Training steps recorded into one command buffer.
pub const STEPS_PER_SUBMIT: usize = 32;
/// Test samples per evaluation chunk.
pub const EVAL_CHUNK: usize = 1000;
/// Submitted-but-unfinished command buffers allowed before the host waits.
const MAX_IN_FLIGHT: usize = 3;
/// Minimum time between progress readbacks.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Per-batch activation buffers, sized for `cap` rows.
struct Workspace {
    cap: usize,
    xhat: wgpu::Buffer,
    /// `acts[0]`: BN output; `acts[l + 1]`: output of dense layer l (last: logits).
    acts: Vec<wgpu::Buffer>,
    /// `deltas[l]`: gradient of the mean loss w.r.t. `acts[l]`.
    deltas: Vec<wgpu::Buffer>,
}

/// Buffers and recorded dispatch lists for one (batch size, epoch length).
struct TrainPlan {
    batch: usize,
    len: usize,
    order: wgpu::Buffer,
    alphas: wgpu::Buffer,
    stats: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// Dispatches of a full step, and of the last partial step when there is one.
    full: Vec<Dispatch>,
    last: Option<Vec<Dispatch>>,
}

struct EvalPlan {
    chunks: Vec<Vec<Dispatch>>,
    staging: wgpu::Buffer,
}

pub struct GpuBackend {
    train_plan: Option<TrainPlan>,
    eval_plan: Option<EvalPlan>,
    work: Option<Workspace>,
    kernels: Kernels,
    ctx: GpuContext,
    config: ModelConfig,
    layout: ParamLayout,
    hyper: Hyper,
    step: u64,
    train_count: usize,
    test_count: usize,
    train_pixels: wgpu::Buffer,
    train_labels: wgpu::Buffer,
    test_pixels: wgpu::Buffer,
    test_labels: wgpu::Buffer,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    m: wgpu::Buffer,
    v: wgpu::Buffer,
    /// [moving mean | moving var | inv_std], INPUT each.
    bn_stats: wgpu::Buffer,
    /// [step index inside the epoch, unused ×3].
    state: wgpu::Buffer,
    predictions: wgpu::Buffer,
    eval_stats: wgpu::Buffer,
    dummy: wgpu::Buffer,
}

fn labels_u32(labels: &[u8]) -> Vec<u32> {
    labels.iter().map(|&l| l as u32).collect()
}

fn gpu_err(e: DeviceError) -> anyhow::Error {
    anyhow::Error::new(e)
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
        let layout = ParamLayout::new(&params.config);
        let invalid =
            |what: String| DeviceError::Gpu(format!("invalid input to the GPU trainer: {what}"));
        if params.layout != layout || params.trainable.len() != layout.total {
            return Err(invalid(
                "the parameters do not fit the model's layout".into(),
            ));
        }
        if params.moving_mean.len() != INPUT || params.moving_var.len() != INPUT {
            return Err(invalid(
                "moving statistics must hold 784 values each".into(),
            ));
        }
        for (name, set) in [("training", &data.train), ("test", &data.test)] {
            if !set.is_empty() && set.pixels_per_image() != INPUT {
                return Err(invalid(format!(
                    "{name} images have {} pixels, expected 784",
                    set.pixels_per_image()
                )));
            }
            if set.images.len() != set.len() * set.pixels_per_image() {
                return Err(invalid(format!(
                    "{name} set has a mismatched image/label count"
                )));
            }
        }
        let train_bytes = data.train.images.len().next_multiple_of(4) as u64;
        let test_bytes = data.test.images.len().next_multiple_of(4) as u64;
        let ctx = GpuContext::new(
            choice,
            Needs {
                largest_buffer: train_bytes.max(test_bytes),
            },
        )?;
        let kernels = Kernels::new(&ctx)?;
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
            kernels,
            train_count: data.train.len(),
            test_count: data.test.len(),
            train_pixels: storage_init(
                &ctx,
                "train pixels",
                bytemuck::cast_slice(&pack_pixels(&data.train.images)),
            ),
            train_labels: storage_init(
                &ctx,
                "train labels",
                bytemuck::cast_slice(&labels_u32(&data.train.labels)),
            ),
            test_pixels: storage_init(
                &ctx,
                "test pixels",
                bytemuck::cast_slice(&pack_pixels(&data.test.images)),
            ),
            test_labels: storage_init(
                &ctx,
                "test labels",
                bytemuck::cast_slice(&labels_u32(&data.test.labels)),
            ),
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

    /// Make sure the activation buffers hold `rows` rows; recreating them drops the plans.
    fn ensure_workspace(&mut self, rows: usize) -> Result<(), DeviceError> {
        if self.work.as_ref().is_some_and(|w| w.cap >= rows) {
            return Ok(());
        }
        self.train_plan = None;
        self.eval_plan = None;
        self.work = None;
        let cap = rows.max(1);
        let widths = self.widths();
        let widest = *widths.iter().max().expect("widths");
        let bytes = (cap * widest * 4) as u64;
        if bytes > self.ctx.limits.max_storage_buffer_binding_size {
            return Err(DeviceError::Gpu(format!(
                "a batch of {cap} rows needs {bytes}-byte activation buffers, more than this device's {}-byte storage binding limit (use a smaller --batch-size)",
                self.ctx.limits.max_storage_buffer_binding_size
            )));
        }
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
            })?;
        self.work = Some(work);
        Ok(())
    }

    fn bn_uniform(&self, rows: usize, stride: usize, use_order: bool, base: usize) -> BnUniform {
        BnUniform {
            batch: rows as u32,
            stride: stride as u32,
            use_order: use_order as u32,
            base: base as u32,
            gamma_off: self.layout.gamma.start as u32,
            beta_off: self.layout.beta.start as u32,
            features: INPUT as u32,
            scale: self.config.pixel_scale(),
            eps: self.hyper.bn_eps,
            momentum: self.hyper.bn_momentum,
            ..Default::default()
        }
    }

    /// The forward GEMMs for `rows` rows.
    fn forward_dispatches(&self, rows: usize) -> Vec<Dispatch> {
        let k = &self.kernels;
        let d = &self.ctx.device;
        let w = self.work.as_ref().expect("workspace");
        let widths = self.widths();
        let layers = self.config.dense_layers();
        (0..layers)
            .map(|l| {
                let u = GemmUniform::forward(
                    rows,
                    widths[l],
                    widths[l + 1],
                    self.layout.kernels[l].start,
                    self.layout.biases[l].start,
                    l + 1 < layers,
                );
                let ub = uniform(d, "gemm forward", &u);
                k.gemm.dispatch(
                    d,
                    &ub,
                    &[&w.acts[l], &self.params, &self.params, &w.acts[l + 1]],
                    u.workgroups(),
                )
            })
            .collect()
    }

    /// Every dispatch of one training step on `rows` rows (batch stride `stride`).
    fn step_dispatches(
        &self,
        rows: usize,
        stride: usize,
        plan_bufs: (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    ) -> Vec<Dispatch> {
        let (order, alphas, stats) = plan_bufs;
        let k = &self.kernels;
        let d = &self.ctx.device;
        let w = self.work.as_ref().expect("workspace");
        let widths = self.widths();
        let layers = self.config.dense_layers();
        let mut list = Vec::new();

        let u = self.bn_uniform(rows, stride, true, 0);
        let ub = uniform(d, "bn forward", &u);
        list.push(k.bn_train.dispatch(
            d,
            &ub,
            &[
                &self.train_pixels,
                order,
                &self.state,
                &self.params,
                &self.bn_stats,
                &w.xhat,
                &w.acts[0],
            ],
            u.workgroups(),
        ));
        list.extend(self.forward_dispatches(rows));

        let u = SoftmaxUniform {
            batch: rows as u32,
            classes: CLASSES as u32,
            stride: stride as u32,
            use_order: 1,
            training: 1,
            ..Default::default()
        };
        let ub = uniform(d, "softmax", &u);
        list.push(k.softmax.dispatch(
            d,
            &ub,
            &[
                &w.acts[layers],
                &self.train_labels,
                order,
                &self.state,
                &w.deltas[layers],
                stats,
                &self.predictions,
            ],
            [1, 1, 1],
        ));

        for l in (0..layers).rev() {
            let (kin, nout) = (widths[l], widths[l + 1]);
            let u = GemmUniform::weight_grad(
                rows,
                kin,
                nout,
                self.layout.kernels[l].start,
                self.layout.biases[l].start,
            );
            let ub = uniform(d, "gemm weight grad", &u);
            // Layer 0's weight gradient is taken against xhat: bn_dense_backward turns it
            // into dW0, dgamma and dbeta, so layer 0 needs no input-grad GEMM.
            let input = if l == 0 { &w.xhat } else { &w.acts[l] };
            list.push(k.gemm.dispatch(
                d,
                &ub,
                &[input, &w.deltas[l + 1], &self.params, &self.grads],
                u.workgroups(),
            ));
            if l == 0 {
                break;
            }
            let u = GemmUniform::input_grad(rows, kin, nout, self.layout.kernels[l].start, true);
            let ub = uniform(d, "gemm input grad", &u);
            list.push(k.gemm.dispatch(
                d,
                &ub,
                &[&w.deltas[l + 1], &self.params, &w.acts[l], &w.deltas[l]],
                u.workgroups(),
            ));
        }

        let u = BnUniform {
            kernel_off: self.layout.kernels[0].start as u32,
            bias_off: self.layout.biases[0].start as u32,
            width: widths[1] as u32,
            ..self.bn_uniform(rows, stride, true, 0)
        };
        let ub = uniform(d, "bn dense backward", &u);
        let (kernel, groups) = k.bn_dense_backward(&u, k.cpu_adapter);
        list.push(kernel.dispatch(d, &ub, &[&self.params, &self.grads], groups));

        let u = AdamUniform {
            n: self.layout.total as u32,
            one_minus_b1: 1.0 - self.hyper.beta1,
            one_minus_b2: 1.0 - self.hyper.beta2,
            eps: self.hyper.adam_eps,
            ..Default::default()
        };
        let ub = uniform(d, "adam", &u);
        list.push(k.adam.dispatch(
            d,
            &ub,
            &[
                &self.state,
                alphas,
                &self.grads,
                &self.params,
                &self.m,
                &self.v,
            ],
            elementwise_groups(self.layout.total),
        ));
        list
    }

    /// Profiles one training step at `batch`: each of its dispatches is submitted on its
    /// own `reps` times, and the median seconds per call are returned beside the kernel's
    /// name, in step order. The step's first-sample index repeats and the model trains
    /// on, so profile a throwaway backend.
    pub fn profile_step(&mut self, batch: usize, reps: usize) -> Result<Vec<(&'static str, f64)>> {
        ensure!(
            batch > 0 && batch <= self.train_count,
            "batch must be 1..=training samples"
        );
        let len = batch * reps.max(1);
        self.ensure_train_plan(batch, len).map_err(gpu_err)?;
        self.upload_profile_batches(len, reps);
        let plan = self.train_plan.as_ref().expect("plan");
        let ctx = &self.ctx;
        let mut profile = Vec::new();
        for dispatch in &plan.full {
            let mut times = Vec::with_capacity(reps);
            for _ in 0..reps.max(1) {
                // The step counter stays 0, so every call reads the same batch.
                ctx.queue
                    .write_buffer(&self.state, 0, bytemuck::cast_slice(&[0u32; 4]));
                let started = Instant::now();
                let mut encoder = ctx.device.create_command_encoder(&Default::default());
                {
                    let mut pass = encoder.begin_compute_pass(&Default::default());
                    record(&mut pass, std::slice::from_ref(dispatch));
                }
                ctx.queue.submit([encoder.finish()]);
                ctx.wait().map_err(gpu_err)?;
                times.push(started.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            profile.push((dispatch.kernel, times[times.len() / 2]));
        }
        Ok(profile)
    }

    /// The sample order (`len` samples, wrapping around the training set) and `reps` step
    /// sizes that the profiles train on.
    fn upload_profile_batches(&self, len: usize, reps: usize) {
        let plan = self.train_plan.as_ref().expect("plan");
        let order: Vec<u32> = (0..len as u32)
            .map(|i| i % self.train_count as u32)
            .collect();
        let alphas = vec![self.hyper.lr; reps.max(1)];
        let queue = &self.ctx.queue;
        queue.write_buffer(&plan.order, 0, bytemuck::cast_slice(&order));
        queue.write_buffer(&plan.alphas, 0, bytemuck::cast_slice(&alphas));
    }

    /// Like [`Self::profile_step`], but each dispatch is timed on the GPU itself
    /// (`TIMESTAMP_QUERY`): `reps` whole steps are recorded into one submission, each
    /// dispatch in its own compute pass between two timestamps, and the median seconds of
    /// each dispatch over the steps are returned. `None` where the adapter has no
    /// timestamp queries. Without submission overheads, these are the kernels' own times.
    pub fn profile_step_on_gpu(
        &mut self,
        batch: usize,
        reps: usize,
    ) -> Result<Option<Vec<(&'static str, f64)>>> {
        let device = &self.ctx.device;
        if !device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Ok(None);
        }
        ensure!(
            batch > 0 && batch <= self.train_count,
            "batch must be 1..=training samples"
        );
        // Two timestamps per dispatch; a query set holds at most 4096.
        let reps = reps.clamp(1, 100);
        self.ensure_train_plan(batch, batch * reps)
            .map_err(gpu_err)?;
        self.upload_profile_batches(batch * reps, reps);
        self.ctx
            .queue
            .write_buffer(&self.state, 0, bytemuck::cast_slice(&[0u32; 4]));
        let ticks = self.timestamped_steps(reps).map_err(gpu_err)?;
        let tick = f64::from(self.ctx.queue.get_timestamp_period()) * 1e-9;
        let plan = self.train_plan.as_ref().expect("plan");
        let per_step = plan.full.len();
        let profile = (0..per_step)
            .map(|k| {
                let mut secs: Vec<f64> = (0..reps)
                    .map(|r| {
                        let at = 2 * (r * per_step + k);
                        ticks[at + 1].saturating_sub(ticks[at]) as f64 * tick
                    })
                    .collect();
                secs.sort_by(f64::total_cmp);
                (plan.full[k].kernel, secs[secs.len() / 2])
            })
            .collect();
        Ok(Some(profile))
    }

    /// Records `reps` training steps into one submission, each dispatch in its own compute
    /// pass with a timestamp before and after, and returns the timestamps (ticks).
    fn timestamped_steps(&self, reps: usize) -> Result<Vec<u64>, DeviceError> {
        let ctx = &self.ctx;
        let plan = self.train_plan.as_ref().expect("plan");
        let per_step = plan.full.len();
        let count = (2 * per_step * reps) as u32;
        let queries = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("step profile"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let bytes = u64::from(count) * 8;
        let resolved = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step profile timestamps"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        for (i, dispatch) in plan.full.iter().cycle().take(per_step * reps).enumerate() {
            let at = 2 * i as u32;
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &queries,
                    beginning_of_pass_write_index: Some(at),
                    end_of_pass_write_index: Some(at + 1),
                }),
            });
            record(&mut pass, std::slice::from_ref(dispatch));
        }
        encoder.resolve_query_set(&queries, 0..count, &resolved, 0);
        ctx.queue.submit([encoder.finish()]);
        let raw = ctx.read_buffer(&resolved, 0, bytes)?;
        Ok(bytemuck::pod_collect_to_vec(&raw))
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
        let steps = len.div_ceil(batch);
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
        let k = &self.kernels;
        let d = &self.ctx.device;
        let layers = self.config.dense_layers();
        let plan = self.ctx.scoped("preparing evaluation", || {
            let w = self.work.as_ref().expect("workspace");
            let mut chunks = Vec::new();
            let mut forward_cache: Vec<(usize, Vec<Dispatch>)> = Vec::new();
            for (slot, base) in (0..self.test_count).step_by(EVAL_CHUNK).enumerate() {
                let rows = EVAL_CHUNK.min(self.test_count - base);
                let mut list = Vec::new();
                let u = self.bn_uniform(rows, 0, false, base);
                let ub = uniform(d, "bn eval", &u);
                list.push(k.bn_eval.dispatch(
                    d,
                    &ub,
                    &[
                        &self.test_pixels,
                        &self.dummy,
                        &self.state,
                        &self.params,
                        &self.bn_stats,
                        &w.xhat,
                        &w.acts[0],
                    ],
                    u.workgroups(),
                ));
                if !forward_cache.iter().any(|(r, _)| *r == rows) {
                    forward_cache.push((rows, self.forward_dispatches(rows)));
                }
                let fwd = &forward_cache
                    .iter()
                    .find(|(r, _)| *r == rows)
                    .expect("cached")
                    .1;
                list.extend(fwd.iter().cloned());
                let u = SoftmaxUniform {
                    batch: rows as u32,
                    classes: CLASSES as u32,
                    base: base as u32,
                    training: 0,
                    slot: slot as u32,
                    pred_base: base as u32,
                    ..Default::default()
                };
                let ub = uniform(d, "softmax eval", &u);
                list.push(k.softmax.dispatch(
                    d,
                    &ub,
                    &[
                        &w.acts[layers],
                        &self.test_labels,
                        &self.dummy,
                        &self.state,
                        &w.deltas[layers],
                        &self.eval_stats,
                        &self.predictions,
                    ],
                    [1, 1, 1],
                ));
                chunks.push(list);
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

    fn read_f32(
        &self,
        buffer: &wgpu::Buffer,
        offset: usize,
        len: usize,
    ) -> Result<Vec<f32>, DeviceError> {
        let bytes = self
            .ctx
            .read_buffer(buffer, (offset * 4) as u64, (len * 4) as u64)?;
        Ok(bytemuck::cast_slice::<u8, f32>(&bytes).to_vec())
    }

    /// Sum the per-step (loss bits, correct) pairs in step order.
    fn sum_stats(words: &[u32]) -> (f64, u64) {
        let mut loss = 0.0f64;
        let mut correct = 0u64;
        for pair in words.chunks_exact(2) {
            loss += f32::from_bits(pair[0]) as f64;
            correct += pair[1] as u64;
        }
        (loss, correct)
    }

    fn name_string(&self) -> String {
        self.ctx.describe()
    }
}

use super::context::DeviceChoice;

/// An asynchronous readback of the step statistics in flight.
struct Pending {
    flag: Arc<AtomicU8>,
    steps: usize,
    samples: usize,
}

impl Backend for GpuBackend {
    fn name(&self) -> String {
        self.name_string()
    }

    fn train_epoch_from(
        &mut self,
        order: &[u32],
        batch_size: usize,
        start: &StepProgress,
        progress: &mut dyn FnMut(&StepProgress),
        stop: &(dyn Fn(usize) -> bool + Sync),
    ) -> Result<EpochStats> {
        ensure!(batch_size > 0, "batch size must be at least 1");
        let epoch_steps = order.len().div_ceil(batch_size);
        // Steps already done (a resumed epoch): train on the rest of the order as if it
        // were a whole epoch; the batches are the same, since `skip` is a whole number of
        // batches, and Adam's step count continues from `self.step`.
        let skip = (start.steps_done * batch_size).min(order.len());
        let order = &order[skip..];
        let offset = |mut t: StepProgress| {
            t.steps_done += start.steps_done;
            t.samples_done += start.samples_done;
            t.loss_sum += start.loss_sum;
            t.correct += start.correct;
            t.steps_total = epoch_steps;
            t
        };
        // The first step whose loss is not finite, as a `Diverged` error.
        let diverged = |words: &[u32], seen_after: usize| -> Result<()> {
            match words
                .chunks_exact(2)
                .position(|pair| !f32::from_bits(pair[0]).is_finite())
            {
                Some(i) => Err(crate::backend::Diverged {
                    step: start.steps_done + i + 1,
                    steps_total: epoch_steps,
                    loss: f32::from_bits(words[2 * i]),
                    detected_after: start.steps_done + seen_after,
                }
                .into()),
                None => Ok(()),
            }
        };
        if order.is_empty() {
            let totals = offset(StepProgress::default());
            return Ok(totals.epoch_stats());
        }
        if let Some(&bad) = order.iter().find(|&&i| i as usize >= self.train_count) {
            bail!(
                "sample index {bad} is out of range: the training set holds {} samples",
                self.train_count
            );
        }
        let len = order.len();
        let steps = len.div_ceil(batch_size);
        self.ensure_train_plan(batch_size, len).map_err(gpu_err)?;
        let alphas: Vec<f32> = (1..=steps as u64)
            .map(|s| adam_alpha(&self.hyper, self.step + s))
            .collect();
        let plan = self.train_plan.as_ref().expect("plan");
        let ctx = &self.ctx;
        ctx.queue
            .write_buffer(&plan.order, 0, bytemuck::cast_slice(order));
        ctx.queue
            .write_buffer(&plan.alphas, 0, bytemuck::cast_slice(&alphas));
        ctx.queue
            .write_buffer(&self.state, 0, bytemuck::cast_slice(&[0u32; 4]));

        let mut totals = StepProgress {
            steps_total: steps,
            ..StepProgress::default()
        };
        let mut in_flight: VecDeque<wgpu::SubmissionIndex> = VecDeque::new();
        let mut pending: Option<Pending> = None;
        let mut last_report = Instant::now();
        let mut done = 0usize;
        let mut samples = 0usize;
        while done < steps {
            if stop(start.steps_done + done) {
                break;
            }
            let end = (done + STEPS_PER_SUBMIT).min(steps);
            let mut encoder = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("training steps"),
                });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("training steps"),
                    timestamp_writes: None,
                });
                for s in done..end {
                    let rows = batch_size.min(len - s * batch_size);
                    let list = match &plan.last {
                        Some(last) if rows < batch_size => last,
                        _ => &plan.full,
                    };
                    record(&mut pass, list);
                    samples += rows;
                }
            }
            done = end;
            let want_report =
                pending.is_none() && done < steps && last_report.elapsed() >= PROGRESS_INTERVAL;
            if want_report {
                encoder.copy_buffer_to_buffer(&plan.stats, 0, &plan.staging, 0, (done * 8) as u64);
            }
            in_flight.push_back(ctx.queue.submit([encoder.finish()]));
            if want_report {
                let flag = Arc::new(AtomicU8::new(0));
                let f = flag.clone();
                plan.staging
                    .map_async(wgpu::MapMode::Read, 0..(done * 8) as u64, move |r| {
                        f.store(if r.is_ok() { 1 } else { 2 }, Ordering::SeqCst);
                    });
                pending = Some(Pending {
                    flag,
                    steps: done,
                    samples,
                });
            }
            if in_flight.len() > MAX_IN_FLIGHT {
                let oldest = in_flight.pop_front().expect("in flight");
                ctx.device
                    .poll(wgpu::PollType::Wait {
                        submission_index: Some(oldest),
                        timeout: None,
                    })
                    .map_err(|e| gpu_err(DeviceError::Gpu(format!("waiting for the GPU: {e}"))))?;
            } else {
                ctx.device
                    .poll(wgpu::PollType::Poll)
                    .map_err(|e| gpu_err(DeviceError::Gpu(format!("polling the GPU: {e}"))))?;
            }
            ctx.check().map_err(gpu_err)?;
            if let Some(p) = &pending {
                match p.flag.load(Ordering::SeqCst) {
                    0 => {}
                    1 => {
                        let words: Vec<u32> = {
                            let view = plan
                                .staging
                                .get_mapped_range(0..(p.steps * 8) as u64)
                                .map_err(|e| {
                                    gpu_err(DeviceError::Gpu(format!("reading progress: {e}")))
                                })?;
                            bytemuck::cast_slice::<u8, u32>(&view).to_vec()
                        };
                        plan.staging.unmap();
                        diverged(&words, p.steps)?;
                        let (loss, correct) = Self::sum_stats(&words);
                        totals.steps_done = p.steps;
                        totals.samples_done = p.samples;
                        totals.loss_sum = loss;
                        totals.correct = correct;
                        progress(&offset(totals));
                        last_report = Instant::now();
                        pending = None;
                    }
                    _ => bail!("reading training progress back from the GPU failed"),
                }
            }
        }
        // Finish: drop any progress readback still in flight, then read every step's stats.
        if let Some(p) = pending.take() {
            ctx.wait().map_err(gpu_err)?;
            if p.flag.load(Ordering::SeqCst) == 1 {
                plan.staging.unmap();
            }
        }
        // `done` < `steps` when `stop` ended the epoch early.
        let bytes = if done == 0 {
            Vec::new()
        } else {
            let mut encoder = ctx.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(&plan.stats, 0, &plan.staging, 0, (done * 8) as u64);
            ctx.queue.submit([encoder.finish()]);
            map_blocking(ctx, &plan.staging, (done * 8) as u64).map_err(gpu_err)?
        };
        self.step += done as u64;
        diverged(bytemuck::cast_slice(&bytes), done)?;
        let (loss, correct) = Self::sum_stats(bytemuck::cast_slice(&bytes));
        totals.steps_done = done;
        totals.samples_done = samples;
        totals.loss_sum = loss;
        totals.correct = correct;
        let totals = offset(totals);
        progress(&totals);
        Ok(totals.epoch_stats())
    }

    fn evaluate(&mut self) -> Result<EvalStats> {
        let count = self.test_count;
        if count == 0 {
            return Ok(EvalStats {
                loss: 0.0,
                accuracy: 0.0,
                predictions: Vec::new(),
            });
        }
        self.ensure_eval_plan().map_err(gpu_err)?;
        let plan = self.eval_plan.as_ref().expect("eval plan");
        let ctx = &self.ctx;
        let stats_size = self.eval_stats.size();
        let preds_size = (count * 4) as u64;
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
        let bytes = map_blocking(ctx, &plan.staging, stats_size + preds_size).map_err(gpu_err)?;
        let words: &[u32] = bytemuck::cast_slice(&bytes);
        let chunks = count.div_ceil(EVAL_CHUNK);
        let (loss_sum, correct) = Self::sum_stats(&words[..chunks * 2]);
        let offset = (stats_size / 4) as usize;
        let predictions = words[offset..offset + count]
            .iter()
            .map(|&p| p as u8)
            .collect();
        Ok(EvalStats {
            loss: loss_sum / count as f64,
            accuracy: correct as f64 / count as f64,
            predictions,
        })
    }

    fn params(&mut self) -> Result<Params> {
        let trainable = self
            .read_f32(&self.params, 0, self.layout.total)
            .map_err(gpu_err)?;
        let stats = self
            .read_f32(&self.bn_stats, 0, 2 * INPUT)
            .map_err(gpu_err)?;
        Ok(Params {
            config: self.config.clone(),
            layout: self.layout.clone(),
            trainable,
            moving_mean: stats[..INPUT].to_vec(),
            moving_var: stats[INPUT..].to_vec(),
        })
    }

    fn optim_state(&mut self) -> Result<OptimState> {
        Ok(OptimState {
            m: self
                .read_f32(&self.m, 0, self.layout.total)
                .map_err(gpu_err)?,
            v: self
                .read_f32(&self.v, 0, self.layout.total)
                .map_err(gpu_err)?,
            step: self.step,
        })
    }

    fn load(&mut self, params: &Params, optim: Option<&OptimState>) -> Result<()> {
        ensure!(
            params.layout == self.layout && params.trainable.len() == self.layout.total,
            "the parameters do not fit this model's architecture"
        );
        ensure!(
            params.moving_mean.len() == INPUT && params.moving_var.len() == INPUT,
            "the moving statistics must hold {INPUT} values each"
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
            (INPUT * 4) as u64,
            bytemuck::cast_slice(&params.moving_var),
        );
        q.write_buffer(&self.m, 0, bytemuck::cast_slice(&optim.m));
        q.write_buffer(&self.v, 0, bytemuck::cast_slice(&optim.v));
        self.step = optim.step;
        // The pixel scale is baked into the recorded uniforms: rebuild them.
        self.config = params.config.clone();
        self.train_plan = None;
        self.eval_plan = None;
        self.ctx.wait().map_err(gpu_err)?;
        Ok(())
    }
}
