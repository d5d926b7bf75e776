//! One training epoch's trip through the GPU, in named phases: record and submit a chunk
//! of steps ([`EpochRun::submit_chunk`]), keep the queue short ([`EpochRun::throttle`]),
//! report the steps whose statistics have come back ([`EpochRun::drain`]), and read
//! every step's statistics once more at the end ([`EpochRun::finish`]).
//!
//! Command buffers are sized by measured GPU time ([`Pacer`]): on a fast GPU many steps
//! go into one (few round trips), on a software adapter or a huge model only as many as
//! take about [`SUBMIT_TARGET`], and no more than about [`QUEUE_TARGET`] of work is
//! queued — queued work cannot be taken back, so this bounds how long a stop (Ctrl-C)
//! waits beyond the step under way, on every device.
//!
//! The same code runs natively and in a browser: its waits are [`GpuContext::settle`]
//! and [`GpuContext::turn`], which block on the device natively and give the event loop
//! a turn in a browser (where the GPU's callbacks run only then).

use crate::backend::{Diverged, StepProgress};
use crate::device::context::{read_mapped, GpuContext};
use crate::device::error::DeviceError;
use crate::device::kernel::{record, Dispatch};
use crate::settings::steps_per_epoch;
use anyhow::{bail, Result};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use web_time::Instant;

/// Buffers and recorded dispatch lists for one (batch size, epoch length).
pub struct TrainPlan {
    pub(super) batch: usize,
    pub(super) len: usize,
    pub(super) order: wgpu::Buffer,
    pub(super) alphas: wgpu::Buffer,
    /// Every step's (loss, correct) of the epoch, and its host-readable copy.
    pub(super) stats: wgpu::Buffer,
    pub(super) staging: wgpu::Buffer,
    /// One submission's stats each, read back for the progress line.
    pub(super) readbacks: Vec<wgpu::Buffer>,
    /// Dispatches of a full step, and of the last partial step when there is one.
    pub(super) full: Vec<Dispatch>,
    pub(super) last: Option<Vec<Dispatch>>,
}

/// Most training steps recorded into one command buffer.
pub const STEPS_PER_SUBMIT: usize = 256;
/// Most submitted-but-unfinished command buffers before the host waits.
pub const MAX_IN_FLIGHT: usize = 3;
/// Readback buffers for per-submission statistics: one per submission that may await
/// its read.
pub const READBACK_SLOTS: usize = MAX_IN_FLIGHT + 2;
/// GPU time one command buffer of steps should take.
const SUBMIT_TARGET: Duration = Duration::from_millis(100);
/// GPU time of all queued work at most.
const QUEUE_TARGET: Duration = Duration::from_millis(300);

/// Measured GPU time per step, and the command-buffer sizes that follow from it.
#[derive(Default)]
struct Pacer {
    /// Seconds per step (a running mean); `None` until a command buffer has finished.
    per_step: Option<f64>,
}

impl Pacer {
    /// Steps for the next command buffer (one until there is a measurement).
    fn chunk(&self) -> usize {
        match self.per_step {
            None => 1,
            Some(t) => ((SUBMIT_TARGET.as_secs_f64() / t) as usize).clamp(1, STEPS_PER_SUBMIT),
        }
    }

    /// Command buffers that may be queued at once.
    fn max_in_flight(&self) -> usize {
        match self.per_step {
            None => 1,
            Some(t) => {
                let buffer = t * self.chunk() as f64;
                ((QUEUE_TARGET.as_secs_f64() / buffer) as usize).clamp(1, MAX_IN_FLIGHT)
            }
        }
    }

    /// `steps` steps took `seconds` of GPU time.
    fn observe(&mut self, steps: usize, seconds: f64) {
        let t = seconds / steps.max(1) as f64;
        self.per_step = Some(self.per_step.map_or(t, |mean| 0.7 * mean + 0.3 * t));
    }
}

/// A submitted command buffer of training steps.
struct InFlight {
    index: wgpu::SubmissionIndex,
    steps: usize,
    /// The call's steps up to the end of this submission.
    end: usize,
    /// Taken before the submit: on some backends (GL) the submit itself runs the work.
    submitted: Instant,
}

/// One submission's per-step (loss, correct) words on their way back to the host.
struct Readback {
    /// Which of the plan's readback buffers holds them.
    slot: usize,
    /// The submission's first step (counted from the start of this call) and its steps.
    first: usize,
    steps: usize,
    samples: usize,
    /// 0 while mapping, 1 mapped, 2 failed.
    flag: Arc<AtomicU8>,
}

/// The first step among `words` (the call's steps from `first` on) whose loss is not
/// finite, as a [`Diverged`] error; `seen`: the call's steps read back so far.
fn diverged(base: &StepProgress, words: &[u32], first: usize, seen: usize) -> Result<()> {
    match words
        .chunks_exact(2)
        .position(|pair| !f32::from_bits(pair[0]).is_finite())
    {
        Some(i) => Err(Diverged::at(base, first + i, f32::from_bits(words[2 * i]), seen).into()),
        None => Ok(()),
    }
}

/// `call`'s totals (of this call's steps) continued from `base`.
fn continued(base: &StepProgress, call: StepProgress) -> StepProgress {
    StepProgress {
        steps_done: base.steps_done + call.steps_done,
        steps_total: base.steps_total,
        samples_done: base.samples_done + call.samples_done,
        loss_sum: base.loss_sum + call.loss_sum,
        correct: base.correct + call.correct,
    }
}

/// Sums of (loss, correct) over per-step words `[loss bits, correct]…`.
pub fn sum_stats(words: &[u32]) -> (f64, u64) {
    words
        .chunks_exact(2)
        .fold((0.0, 0), |(loss, correct), pair| {
            (
                loss + f32::from_bits(pair[0]) as f64,
                correct + pair[1] as u64,
            )
        })
}

fn gpu(what: &str, e: impl std::fmt::Display) -> anyhow::Error {
    DeviceError::Gpu(format!("{what}: {e}")).into()
}

/// The steps of one call to `Backend::train_steps` on their way through the GPU.
pub struct EpochRun<'a> {
    ctx: &'a GpuContext,
    plan: &'a TrainPlan,
    /// The epoch's totals before this call.
    base: &'a StepProgress,
    batch_size: usize,
    /// Samples in this call's order, and its steps.
    len: usize,
    pub steps: usize,
    /// Steps recorded and submitted so far, and their samples.
    pub done: usize,
    samples: usize,
    in_flight: VecDeque<InFlight>,
    readbacks: VecDeque<Readback>,
    pacer: Pacer,
    /// When the GPU last finished a command buffer the host waited for.
    last_done: Instant,
    /// Totals of the steps whose statistics have come back.
    reported: StepProgress,
}

impl<'a> EpochRun<'a> {
    pub fn new(
        ctx: &'a GpuContext,
        plan: &'a TrainPlan,
        base: &'a StepProgress,
        batch_size: usize,
        len: usize,
    ) -> Self {
        EpochRun {
            ctx,
            plan,
            base,
            batch_size,
            len,
            steps: steps_per_epoch(len, batch_size),
            done: 0,
            samples: 0,
            in_flight: VecDeque::new(),
            readbacks: VecDeque::new(),
            pacer: Pacer::default(),
            last_done: Instant::now(),
            reported: StepProgress::default(),
        }
    }

    /// Record the next chunk of steps with a copy of their statistics into a free
    /// readback buffer, submit it and start mapping that buffer.
    async fn submit_chunk(&mut self, progress: &mut dyn FnMut(&StepProgress)) -> Result<()> {
        // The oldest readback's buffer is needed again when all are taken: wait for it.
        let free = |run: &Self| run.readbacks.len() < READBACK_SLOTS;
        self.settle_until(None, progress, free).await?;
        let Some(slot) = (0..READBACK_SLOTS).find(|s| self.readbacks.iter().all(|r| r.slot != *s))
        else {
            bail!("reading training progress back from the GPU fell behind");
        };
        let (first, end) = (self.done, (self.done + self.pacer.chunk()).min(self.steps));
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        let samples = self.record_steps(&mut encoder, first..end);
        let bytes = ((end - first) * 8) as u64;
        let buffer = &self.plan.readbacks[slot];
        encoder.copy_buffer_to_buffer(&self.plan.stats, (first * 8) as u64, buffer, 0, bytes);
        let submitted = Instant::now();
        let index = self.ctx.queue.submit([encoder.finish()]);
        let flag = Arc::new(AtomicU8::new(0));
        let f = flag.clone();
        buffer.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
            f.store(if r.is_ok() { 1 } else { 2 }, Ordering::SeqCst);
        });
        self.in_flight.push_back(InFlight {
            index,
            steps: end - first,
            end,
            submitted,
        });
        self.readbacks.push_back(Readback {
            slot,
            first,
            steps: end - first,
            samples,
            flag,
        });
        self.done = end;
        self.samples += samples;
        Ok(())
    }

    /// Record steps `range` into one compute pass; returns their samples.
    fn record_steps(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        range: std::ops::Range<usize>,
    ) -> usize {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("training steps"),
            timestamp_writes: None,
        });
        let mut samples = 0;
        for s in range {
            let rows = self.batch_size.min(self.len - s * self.batch_size);
            let list = match &self.plan.last {
                Some(last) if rows < self.batch_size => last,
                _ => &self.plan.full,
            };
            record(&mut pass, list);
            samples += rows;
        }
        samples
    }

    /// Submit chunks until the call's steps are done or `stop` (asked with the call's
    /// steps submitted) says so, keeping the queue short; then [`Self::finish`].
    /// Returns the epoch's totals and this call's step count.
    pub async fn run(
        mut self,
        progress: &mut dyn FnMut(&StepProgress),
        stop: &dyn Fn(usize) -> bool,
    ) -> Result<(StepProgress, usize)> {
        while self.done < self.steps && !stop(self.done) {
            self.submit_chunk(progress).await?;
            self.throttle(progress).await?;
        }
        self.finish(progress).await
    }

    /// When the queue is full, wait until the oldest submission's statistics have come
    /// back (its readback maps only after it ran), measuring its GPU time; else let the
    /// device make progress without waiting. Either way report what has arrived and
    /// surface any device error.
    async fn throttle(&mut self, progress: &mut dyn FnMut(&StepProgress)) -> Result<()> {
        if self.in_flight.len() < self.pacer.max_in_flight() {
            self.ctx.turn().await?;
            self.ctx.check()?;
            return self.drain(progress);
        }
        let oldest = self.in_flight.pop_front().expect("in flight");
        let end = oldest.end;
        let reported = move |run: &Self| run.reported.steps_done >= end;
        self.settle_until(Some(oldest.index), progress, reported)
            .await?;
        // The GPU worked on it from its submission or from the previous one's end.
        let began = self.last_done.max(oldest.submitted);
        self.last_done = Instant::now();
        self.pacer
            .observe(oldest.steps, (self.last_done - began).as_secs_f64());
        Ok(())
    }

    /// Wait until `done` holds: settle the device (for submission `index`, else for all of
    /// it) and report the statistics that arrived, as often as needed. Natively one settle
    /// runs the callbacks of every map it waited for, so one that brings nothing while
    /// `done` still fails is an error rather than a wait forever; a browser resolves the
    /// maps between its turns, so there it asks again (a lost device fails the maps).
    async fn settle_until(
        &mut self,
        index: Option<wgpu::SubmissionIndex>,
        progress: &mut dyn FnMut(&StepProgress),
        done: impl Fn(&Self) -> bool,
    ) -> Result<()> {
        while !done(self) {
            let pending = self.readbacks.len();
            self.ctx.settle(index.clone()).await?;
            self.ctx.check()?;
            self.drain(progress)?;
            let stuck = self.readbacks.len() == pending && !done(self);
            if stuck && !cfg!(target_arch = "wasm32") {
                bail!("reading training progress back from the GPU did not finish");
            }
        }
        Ok(())
    }

    /// Report, in order, every submission whose statistics have arrived: the count and
    /// the sums shown always belong together. A non-finite loss is a [`Diverged`] error.
    pub fn drain(&mut self, progress: &mut dyn FnMut(&StepProgress)) -> Result<()> {
        while let Some(front) = self.readbacks.front() {
            match front.flag.load(Ordering::SeqCst) {
                0 => break,
                1 => {}
                _ => bail!("reading training progress back from the GPU failed"),
            }
            let r = self.readbacks.pop_front().expect("front exists");
            let buffer = &self.plan.readbacks[r.slot];
            let words: Vec<u32> = {
                let view = buffer
                    .get_mapped_range(0..(r.steps * 8) as u64)
                    .map_err(|e| gpu("reading progress", e))?;
                bytemuck::cast_slice::<u8, u32>(&view).to_vec()
            };
            buffer.unmap();
            diverged(self.base, &words, r.first, r.first + r.steps)?;
            let (loss, correct) = sum_stats(&words);
            self.reported.steps_done += r.steps;
            self.reported.samples_done += r.samples;
            self.reported.loss_sum += loss;
            self.reported.correct += correct;
            progress(&continued(self.base, self.reported));
        }
        Ok(())
    }

    /// After the last submission (or a stop): let every readback arrive and report it,
    /// then read every step's statistics once more, in one copy, for the exact totals.
    async fn finish(
        mut self,
        progress: &mut dyn FnMut(&StepProgress),
    ) -> Result<(StepProgress, usize)> {
        let all_in = |run: &Self| run.readbacks.is_empty();
        self.settle_until(None, progress, all_in).await?;
        let bytes = if self.done == 0 {
            Vec::new()
        } else {
            let size = self.copy_all_stats();
            read_mapped(self.ctx, &self.plan.staging, size).await?
        };
        self.totals(&bytes, progress)
    }

    /// Copy every step's statistics so far to the plan's staging buffer; their bytes.
    fn copy_all_stats(&self) -> u64 {
        let size = (self.done * 8) as u64;
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&self.plan.stats, 0, &self.plan.staging, 0, size);
        self.ctx.queue.submit([encoder.finish()]);
        size
    }

    /// The exact totals from every step's statistics `bytes`, reported once more.
    fn totals(
        &self,
        bytes: &[u8],
        progress: &mut dyn FnMut(&StepProgress),
    ) -> Result<(StepProgress, usize)> {
        let words: &[u32] = bytemuck::cast_slice(bytes);
        diverged(self.base, words, 0, self.done)?;
        let (loss_sum, correct) = sum_stats(words);
        let call = StepProgress {
            steps_done: self.done,
            steps_total: self.steps,
            samples_done: self.samples,
            loss_sum,
            correct,
        };
        // The exact totals, so the last report and a checkpoint agree to the bit.
        let totals = continued(self.base, call);
        progress(&totals);
        Ok((totals, self.done))
    }
}
