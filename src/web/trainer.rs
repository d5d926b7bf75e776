//! The page's epoch driver: the steps of one epoch on WebGPU or on the CPU path, then
//! evaluation and the same finite checks and record as [`crate::train::train_from`].
//!
//! `train_from` is synchronous: natively the GPU backend blocks on `device.poll(Wait)`,
//! which a browser cannot do (the map promises resolve only when the page's code
//! returns to the event loop). So the page drives epochs itself, one call per epoch,
//! reusing the loop's pieces (`epoch_order`, `epoch_record`, the finite checks) and the
//! GPU's recording code through `GpuBackend::train_steps_async`.

use super::sleep_ms;
use crate::backend::{Backend, EpochEnd, EvalStats, StepProgress};
use crate::cpu::CpuBackend;
use crate::gpu::GpuBackend;
use crate::model::Params;
use crate::train::{
    check_finite_eval, check_finite_params, epoch_order, epoch_record, EpochRecord, TrainOptions,
};
use anyhow::Result;

/// CPU steps between yields to the page (so it repaints and Stop can be pressed).
const CPU_STEPS_PER_SLICE: usize = 16;

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
        let started = web_time::Instant::now();
        let end = match self {
            Trainer::Gpu(gpu) => {
                gpu.train_steps_async(&order[skip..], options.batch_size, base, progress, &|_| {
                    stop()
                })
                .await?
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
                .await?
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        let stats = match end {
            EpochEnd::Finished(stats) => stats,
            EpochEnd::Stopped(totals) => return Ok(EpochOutcome::Stopped(totals)),
        };
        anyhow::ensure!(
            stats.loss.is_finite(),
            "training diverged in epoch {}: the loss became {}",
            epoch + 1,
            stats.loss
        );
        let eval = self.evaluate().await?;
        check_finite_eval(&eval, epoch + 1)?;
        check_finite_params(&self.params().await?, epoch + 1)?;
        let record = epoch_record(epoch + 1, &stats, &eval, base, seconds);
        Ok(EpochOutcome::Finished(record, eval))
    }

    pub async fn evaluate(&mut self) -> Result<EvalStats> {
        match self {
            Trainer::Gpu(gpu) => gpu.evaluate_async().await,
            Trainer::Cpu(cpu) => cpu.evaluate(),
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

/// The CPU path's steps, in slices of [`CPU_STEPS_PER_SLICE`] with a yield to the page
/// between them (the CPU backend itself is synchronous; resuming from `base` is how a
/// slice continues the one before).
async fn cpu_steps(
    cpu: &mut CpuBackend,
    order: &[u32],
    batch_size: usize,
    base: &StepProgress,
    progress: &mut dyn FnMut(&StepProgress),
    stop: &dyn Fn() -> bool,
) -> Result<EpochEnd> {
    let mut totals = *base;
    for slice in order.chunks(CPU_STEPS_PER_SLICE * batch_size) {
        if stop() {
            return Ok(EpochEnd::Stopped(totals));
        }
        match cpu.train_steps(slice, batch_size, &totals, progress, &|_| false)? {
            // Only the epoch's last slice finishes it.
            EpochEnd::Finished(stats) => return Ok(EpochEnd::Finished(stats)),
            EpochEnd::Stopped(done) => totals = done,
        }
        sleep_ms(0).await;
    }
    Ok(EpochEnd::from_totals(totals))
}
