//! Step profiles for the benches (`cargo bench --bench kernels -- step`): each dispatch
//! of a training step timed on its own from the host, or on the GPU itself with
//! timestamp queries. Training never calls these; they live here, beside the trainer
//! whose plans they time, not in its hot path.

use super::GpuBackend;
use crate::device::error::DeviceError;
use crate::device::kernel::{record, Dispatch, Work};
use anyhow::{ensure, Result};
use web_time::Instant;

/// One dispatch of a profiled step: its kernel, its median seconds and the least work it
/// must do (to set against the device's bound).
#[derive(Clone, Debug)]
pub struct KernelTime {
    pub kernel: &'static str,
    pub secs: f64,
    pub work: Work,
}

impl KernelTime {
    fn of(dispatch: &Dispatch, secs: f64) -> Self {
        KernelTime {
            kernel: dispatch.kernel,
            secs,
            work: dispatch.work,
        }
    }
}

impl GpuBackend {
    /// Profiles one training step at `batch`: each of its dispatches is submitted on its
    /// own `reps` times, and the median seconds per call are returned beside the kernel's
    /// name, in step order. The step's first-sample index repeats and the model trains
    /// on, so profile a throwaway backend.
    pub fn profile_step(&mut self, batch: usize, reps: usize) -> Result<Vec<KernelTime>> {
        ensure!(
            batch > 0 && batch <= self.train_count,
            "batch must be 1..=training samples"
        );
        let len = batch * reps.max(1);
        self.ensure_train_plan(batch, len)?;
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
                ctx.wait()?;
                times.push(started.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            profile.push(KernelTime::of(dispatch, times[times.len() / 2]));
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
    ) -> Result<Option<Vec<KernelTime>>> {
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
        self.ensure_train_plan(batch, batch * reps)?;
        self.upload_profile_batches(batch * reps, reps);
        self.ctx
            .queue
            .write_buffer(&self.state, 0, bytemuck::cast_slice(&[0u32; 4]));
        let ticks = self.timestamped_steps(reps)?;
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
                KernelTime::of(&plan.full[k], secs[secs.len() / 2])
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
        let count = 2 * per_step * reps;
        let (queries, resolved) = self.timestamp_set(count);
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        for (i, dispatch) in plan.full.iter().cycle().take(per_step * reps).enumerate() {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: Some(pass_timestamps(&queries, 2 * i as u32)),
            });
            record(&mut pass, std::slice::from_ref(dispatch));
        }
        self.read_timestamps(encoder, (&queries, &resolved), count)
    }

    /// Whether the host or the GPU bounds a training step at `batch`: `steps` full steps
    /// recorded into one compute pass and submitted, as an epoch records them, timed from
    /// the host (recording; the submit call; until they finish) and, where the adapter has
    /// `TIMESTAMP_QUERY`, on the GPU between the pass's start and end. An epoch records
    /// its next command buffer while the GPU runs the last, so the larger of the
    /// recording and the GPU's time bounds a step. The model trains on, so profile a
    /// throwaway backend.
    pub fn profile_submission(&mut self, batch: usize, steps: usize) -> Result<SubmissionTimes> {
        ensure!(
            batch > 0 && batch <= self.train_count,
            "batch must be 1..=training samples"
        );
        let steps = steps.max(1);
        self.ensure_train_plan(batch, batch * steps)?;
        self.upload_profile_batches(batch * steps, steps);
        let ctx = &self.ctx;
        ctx.queue
            .write_buffer(&self.state, 0, bytemuck::cast_slice(&[0u32; 4]));
        ctx.wait()?;
        let timed = ctx
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY);
        let set = timed.then(|| self.timestamp_set(2));
        let plan = self.train_plan.as_ref().expect("plan");
        let started = Instant::now();
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("training steps"),
                timestamp_writes: set.as_ref().map(|(queries, _)| pass_timestamps(queries, 0)),
            });
            for _ in 0..steps {
                record(&mut pass, &plan.full);
            }
        }
        if let Some((queries, resolved)) = &set {
            encoder.resolve_query_set(queries, 0..2, resolved, 0);
        }
        let commands = encoder.finish();
        let recorded = started.elapsed().as_secs_f64();
        ctx.queue.submit([commands]);
        let submitted = started.elapsed().as_secs_f64();
        ctx.wait()?;
        let wall = started.elapsed().as_secs_f64();
        let gpu = match &set {
            Some((_, resolved)) => Some(self.seconds_between_timestamps(resolved)?),
            None => None,
        };
        let dispatches = plan.full.len();
        let host = [recorded, submitted - recorded, wall];
        Ok(SubmissionTimes::new(steps, dispatches, host, gpu))
    }

    /// The seconds between the two timestamps resolved into `resolved`.
    fn seconds_between_timestamps(&self, resolved: &wgpu::Buffer) -> Result<f64, DeviceError> {
        let raw = self.ctx.read_vec::<u8>(resolved, 0, 16)?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&raw);
        let tick = f64::from(self.ctx.queue.get_timestamp_period()) * 1e-9;
        Ok(ticks[1].saturating_sub(ticks[0]) as f64 * tick)
    }

    /// A timestamp query set of `count` queries and a buffer to resolve it into.
    fn timestamp_set(&self, count: usize) -> (wgpu::QuerySet, wgpu::Buffer) {
        let device = &self.ctx.device;
        let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("step profile"),
            ty: wgpu::QueryType::Timestamp,
            count: count as u32,
        });
        let resolved = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step profile timestamps"),
            size: count as u64 * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        (queries, resolved)
    }

    /// Resolves the `count` timestamps of `queries` at the end of `encoder`, submits it
    /// and returns them (ticks).
    fn read_timestamps(
        &self,
        mut encoder: wgpu::CommandEncoder,
        (queries, resolved): (&wgpu::QuerySet, &wgpu::Buffer),
        count: usize,
    ) -> Result<Vec<u64>, DeviceError> {
        encoder.resolve_query_set(queries, 0..count as u32, resolved, 0);
        self.ctx.queue.submit([encoder.finish()]);
        let raw = self.ctx.read_vec::<u8>(resolved, 0, count * 8)?;
        Ok(bytemuck::pod_collect_to_vec(&raw))
    }
}

/// Timestamps `at` and `at + 1` of `queries` at a compute pass's start and end.
fn pass_timestamps(queries: &wgpu::QuerySet, at: u32) -> wgpu::ComputePassTimestampWrites<'_> {
    wgpu::ComputePassTimestampWrites {
        query_set: queries,
        beginning_of_pass_write_index: Some(at),
        end_of_pass_write_index: Some(at + 1),
    }
}

/// [`GpuBackend::profile_submission`]'s answer, in seconds per training step.
#[derive(Clone, Copy, Debug)]
pub struct SubmissionTimes {
    /// Dispatches in one step.
    pub dispatches: usize,
    /// The host's time to record the step.
    pub record: f64,
    /// The submit call's time for the step (on GL that call runs the work itself).
    pub submit: f64,
    /// From the start of recording until the GPU has finished, over the steps.
    pub wall: f64,
    /// The GPU's own time for the step (timestamps); `None` without them.
    pub gpu: Option<f64>,
}

impl SubmissionTimes {
    fn new(steps: usize, dispatches: usize, host: [f64; 3], gpu: Option<f64>) -> Self {
        let per_step = |secs: f64| secs / steps as f64;
        let [record, submit, wall] = host;
        SubmissionTimes {
            dispatches,
            record: per_step(record),
            submit: per_step(submit),
            wall: per_step(wall),
            gpu: gpu.map(per_step),
        }
    }
}
