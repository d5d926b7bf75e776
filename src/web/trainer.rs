//! The page's epoch driver: the steps of one epoch on WebGPU or on the CPU path, then
//! evaluation and the same finite checks and record as [`crate::train::train_from`].
//!
//! `train_from` is synchronous: natively the GPU backend blocks on `device.poll(Wait)`,
//! which a browser cannot do (the map promises resolve only when the page's code
//! returns to the event loop). So the page drives epochs itself, one call per epoch,
//! reusing the loop's pieces (`epoch_order`, `check_divergence`, the finite checks,
//! `epoch_record`) and the GPU's recording code through `GpuBackend::train_steps_async`.
//! The CPU path trains one step at a time and evaluates in small parts, yielding to the
//! browser between them whenever 20 ms of work have passed.

use super::yield_if_due;
use crate::backend::{Backend, EpochEnd, EvalStats, StepProgress};
use crate::cpu::backend::EvalSums;
use crate::cpu::CpuBackend;
use crate::gpu::GpuBackend;
use crate::model::Params;
use crate::train::{
    check_divergence, check_finite_eval, check_finite_params, epoch_order, epoch_record,
    EpochRecord, TrainOptions,
};
use anyhow::Result;

/// Multiply-adds the CPU path evaluates between two chances to yield (about 10 ms in
/// wasm): the test set is evaluated in parts this size.
const EVAL_PART_WORK: usize = 10_000_000;

pub enum Trainer {
    /// Both boxed: the two differ much in size.
    Gpu(Box<GpuBackend>),
    Cpu(Box<CpuBackend>),
}

/// How one call to [`Trainer::epoch`] ended.
pub enum EpochOutcome {
    Finished(EpochRecord, EvalStats),
    /// Stopped inside the epoch: the totals of its steps done (resume from them).
    Stopped(StepProgress),
}

impl Trainer {
    /// The device line, `<adapter> WebGPU` (browsers may hide the adapter's name), or
    /// the CPU path.
    pub fn name(&self) -> String {
        match self {
            Trainer::Gpu(gpu) => {
                let described = gpu.name();
                let adapter = described.split(" — ").next().unwrap_or("").trim();
                let adapter = if adapter.is_empty() {
                    "browser adapter"
                } else {
                    adapter
                };
                format!("{adapter} WebGPU")
            }
            Trainer::Cpu(_) => "cpu (wasm, one thread)".into(),
        }
    }

    pub fn train_count(&self) -> usize {
        match self {
            Trainer::Gpu(gpu) => gpu.train_count(),
            Trainer::Cpu(cpu) => cpu.train_count(),
        }
    }

    /// Train epoch `epoch` (0-based) from the steps in `base`, then evaluate; `stop` is
    /// asked between chunks of steps.
    pub async fn epoch(
        &mut self,
        options: &TrainOptions,
        epoch: usize,
        base: &StepProgress,
        progress: &mut dyn FnMut(&StepProgress),
        stop: &dyn Fn() -> bool,
    ) -> Result<EpochOutcome> {
        let order = epoch_order(self.train_count(), options.seed, epoch, options.shuffle);
        let skip = (base.steps_done * options.batch_size).min(order.len());
        yield_if_due().await;
        let started = web_time::Instant::now();
        let result = match self {
            Trainer::Gpu(gpu) => {
                gpu.train_steps_async(&order[skip..], options.batch_size, base, progress, &|_| {
                    stop()
                })
                .await
            }
            Trainer::Cpu(cpu) => {
                cpu_steps(
                    cpu,
                    &order[skip..],
                    options.batch_size,
                    base,
                    progress,
                    stop,
                )
                .await
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        let stats = match check_divergence(result, epoch + 1)? {
            EpochEnd::Finished(stats) => stats,
            EpochEnd::Stopped(totals) => return Ok(EpochOutcome::Stopped(totals)),
        };
        let eval = self.evaluate().await?;
        check_finite_eval(&eval, epoch + 1)?;
        check_finite_params(&self.params().await?, epoch + 1)?;
        let record = epoch_record(epoch + 1, &stats, &eval, base, seconds);
        Ok(EpochOutcome::Finished(record, eval))
    }

    pub async fn evaluate(&mut self) -> Result<EvalStats> {
        match self {
            Trainer::Gpu(gpu) => gpu.evaluate_async().await,
            Trainer::Cpu(cpu) => {
                let count = cpu.test_count();
                let per_image = cpu.params()?.config.parameter_count().unwrap_or(1).max(1);
                let part = (EVAL_PART_WORK / per_image).clamp(1, 1000);
                let mut sums = EvalSums::new(count);
                for start in (0..count).step_by(part) {
                    cpu.evaluate_part(start..(start + part).min(count), &mut sums);
                    yield_if_due().await;
                }
                Ok(sums.finish())
            }
        }
    }

    pub async fn params(&mut self) -> Result<Params> {
        match self {
            Trainer::Gpu(gpu) => gpu.params_async().await,
            Trainer::Cpu(cpu) => cpu.params(),
        }
    }

    /// Adam's step count (the model file's `num_batches_tracked`).
    pub fn optimizer_steps(&mut self) -> Result<u64> {
        match self {
            Trainer::Gpu(gpu) => Ok(gpu.steps_taken()),
            Trainer::Cpu(cpu) => Ok(cpu.optim_state()?.step),
        }
    }
}

/// The CPU path's steps, one at a time, yielding to the page whenever it has worked
/// long enough (the CPU backend itself is synchronous; resuming from the totals so far
/// is how a step continues the one before).
async fn cpu_steps(
    cpu: &mut CpuBackend,
    order: &[u32],
    batch_size: usize,
    base: &StepProgress,
    progress: &mut dyn FnMut(&StepProgress),
    stop: &dyn Fn() -> bool,
) -> Result<EpochEnd> {
    let mut totals = *base;
    for step in order.chunks(batch_size) {
        if stop() {
            return Ok(EpochEnd::Stopped(totals));
        }
        match cpu.train_steps(step, batch_size, &totals, progress, &|_| false)? {
            // Only the epoch's last step finishes it.
            EpochEnd::Finished(stats) => return Ok(EpochEnd::Finished(stats)),
            EpochEnd::Stopped(done) => totals = done,
        }
        yield_if_due().await;
    }
    Ok(EpochEnd::from_totals(totals))
}
