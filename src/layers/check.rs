//! Agreement cases: a family's CPU reference and its GPU kernel run on the same inputs,
//! the way llm.c checks each kernel against the CPU function beside it. Each family's
//! `check.rs` lists its cases; `tests/gpu_agreement.rs` asserts all of them on every
//! adapter and `cargo bench --bench kernels` times the bench rows.
//!
//! Errors are measured with [`rel_err`]: |gpu − cpu| / max(|cpu|, 1).

use super::Pipelines;
use crate::device::context::GpuContext;
use crate::device::error::DeviceError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Bound on the error of GEMM-based results (sums over up to 784 products, in a
/// different order than the CPU's blocked SIMD kernel).
pub const GEMM_TOL: f64 = 1e-4;
/// [`GEMM_TOL`] for sums `depth` products deep: the rounding error of a sum grows about
/// as the square root of its length, and `GEMM_TOL` is set for 784.
pub fn gemm_tol(depth: usize) -> f64 {
    GEMM_TOL * (depth as f64 / 784.0).sqrt().max(1.0)
}

/// Bound on the error of elementwise and per-feature results.
pub const ELEMENTWISE_TOL: f64 = 1e-5;

/// A case's named results (integers, such as counts and classes, as f32).
pub type Outputs = Vec<(&'static str, Vec<f32>)>;

type CpuSide = Box<dyn Fn() -> Outputs>;
type GpuSide = Box<dyn Fn(&GpuContext, &Pipelines) -> Result<Outputs, DeviceError>>;

/// One kernel at one shape, on both sides.
pub struct Case {
    /// The family's name, set by the registry.
    pub family: &'static str,
    /// The kernel and its shape, such as `gemm_forward 33×784×129 relu`.
    pub name: String,
    /// Bound on [`rel_err`] over every output.
    pub tolerance: f64,
    /// A bench row: the kernel at the shapes of the default training step.
    pub bench: bool,
    pub cpu: CpuSide,
    /// Uploads the inputs, runs one dispatch of the trainer's own pipeline with the
    /// trainer's own dispatch builder, reads the outputs back.
    pub gpu: GpuSide,
}

impl Case {
    pub fn new(
        name: String,
        tolerance: f64,
        cpu: impl Fn() -> Outputs + 'static,
        gpu: impl Fn(&GpuContext, &Pipelines) -> Result<Outputs, DeviceError> + 'static,
    ) -> Case {
        Case {
            family: "",
            name,
            tolerance,
            bench: false,
            cpu: Box::new(cpu),
            gpu: Box::new(gpu),
        }
    }

    /// Mark this case as a bench row.
    pub fn bench(mut self) -> Case {
        self.bench = true;
        self
    }

    /// Run both sides: the largest error, or what disagrees.
    pub fn check(&self, ctx: &GpuContext, pipelines: &Pipelines) -> Result<f64, String> {
        let at = format!("{} {}", self.family, self.name);
        let gpu = (self.gpu)(ctx, pipelines).map_err(|e| format!("{at}: {e}"))?;
        let cpu = (self.cpu)();
        if cpu.len() != gpu.len() {
            return Err(format!("{at}: {} outputs vs {}", gpu.len(), cpu.len()));
        }
        let mut worst = 0.0f64;
        for ((what, c), (_, g)) in cpu.iter().zip(&gpu) {
            let error = max_rel_err(g, c).map_err(|e| format!("{at} {what}: {e}"))?;
            if error > self.tolerance {
                return Err(format!(
                    "{at} {what}: error {error:e}, more than {:e}",
                    self.tolerance
                ));
            }
            worst = worst.max(error);
        }
        Ok(worst)
    }
}

/// Relative error of `a` against the reference `b`: |a − b| / max(|b|, 1) — relative for
/// large values, absolute for values below 1 (where relative error is meaningless near 0).
pub fn rel_err(a: f32, b: f32) -> f64 {
    (a as f64 - b as f64).abs() / (b.abs() as f64).max(1.0)
}

/// Largest [`rel_err`] over two slices, or why they cannot be compared.
pub fn max_rel_err(a: &[f32], b: &[f32]) -> Result<f64, String> {
    if a.len() != b.len() {
        return Err(format!("{} values vs {}", a.len(), b.len()));
    }
    let mut worst = 0.0f64;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        if x.is_finite() != y.is_finite() {
            return Err(format!("finiteness differs at {i}: {x} vs {y}"));
        }
        worst = worst.max(rel_err(x, y));
    }
    Ok(worst)
}

/// The generator of a family's inputs, seeded so every run checks the same values.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `len` values drawn uniformly from `[lo, hi)`.
pub fn uniform_vec(r: &mut ChaCha8Rng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| r.random_range(lo..hi)).collect()
}

/// Integers (counts, classes, step counters) as outputs.
pub fn as_f32<T: Copy + Into<f64>>(values: &[T]) -> Vec<f32> {
    values
        .iter()
        .map(|&v| {
            let wide: f64 = v.into();
            wide as f32
        })
        .collect()
}
