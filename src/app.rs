//! The commands behind the CLI, as library functions: load the data, build the backend
//! the user asked for, train, report.

use crate::backend::Backend;
use crate::cpu::CpuBackend;
use crate::data::Mnist;
pub use crate::gpu_stub::{self as gpu, DeviceChoice, GpuBackend};
use crate::model::{Hyper, ModelConfig, Params};
use crate::progress::Console;
use crate::train::{train, TrainOptions, TrainOutcome};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::PathBuf;

/// Which hardware trains.
#[derive(Clone, Debug)]
pub enum Device {
    Cpu,
    Gpu(DeviceChoice),
}

/// Everything `mnist-gpu train` was asked to do.
#[derive(Clone, Debug)]
pub struct TrainSettings {
    pub data_dir: PathBuf,
    pub device: Device,
    pub model: ModelConfig,
    pub hyper: Hyper,
    pub options: TrainOptions,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
    pub metrics: Option<PathBuf>,
}

/// Load the data set and apply `--train-limit` / `--test-limit` (a limit above the data
/// set's size uses the whole set and says so).
pub fn load_data(settings: &TrainSettings) -> Result<Mnist> {
    let mut data = Mnist::load(&settings.data_dir)?;
    let limit = |count: Option<usize>, available: usize, flag: &str| -> Result<usize> {
        match count {
            None => Ok(available),
            Some(0) => bail!("{flag} must be at least 1"),
            Some(n) if n > available => {
                eprintln!("note: {flag} {n} is more than the {available} samples available; using all {available}");
                Ok(available)
            }
            Some(n) => Ok(n),
        }
    };
    let train_count = limit(settings.train_limit, data.train.len(), "--train-limit")?;
    let test_count = limit(settings.test_limit, data.test.len(), "--test-limit")?;
    data.train = data.train.truncated(train_count);
    data.test = data.test.truncated(test_count);
    Ok(data)
}

/// Build the backend that trains: the CPU reference or a wgpu adapter.
pub fn make_backend(device: &Device, params: Params, hyper: Hyper, data: Mnist) -> Result<Box<dyn Backend>> {
    Ok(match device {
        Device::Cpu => Box::new(CpuBackend::new(params, hyper, data)),
        Device::Gpu(choice) => Box::new(GpuBackend::new(params, hyper, data, choice)?),
    })
}

/// `mnist-gpu train`: the whole run, printed Keras-style.
pub fn run_train(settings: &TrainSettings) -> Result<TrainOutcome> {
    // Create the metrics file before the (long) training, so a bad path fails at once.
    let metrics = match &settings.metrics {
        Some(path) => {
            let file = File::create(path).with_context(|| format!("cannot create metrics file {}", path.display()))?;
            Some((path.clone(), file))
        }
        None => None,
    };
    let data = load_data(settings)?;
    let (train_set, test_set) = (&data.train, &data.test);
    println!(
        "train: {} × {} × {}, test: {} × {} × {}",
        train_set.len(),
        train_set.rows,
        train_set.cols,
        test_set.len(),
        test_set.rows,
        test_set.cols
    );
    let train_count = train_set.len();
    let params = Params::init(&settings.model, settings.options.seed);
    let trainable = params.layout.named(&settings.model).iter().map(|(_, _, r)| r.len()).sum::<usize>();
    let mut backend = make_backend(&settings.device, params, settings.hyper.clone(), data)?;
    println!(
        "model: {} ({trainable} trainable parameters), pixels {}",
        settings.model.describe(),
        if settings.model.raw_pixels { "raw 0..255" } else { "scaled to [0, 1]" }
    );
    println!(
        "device: {} | batch {} ({} steps/epoch), Adam lr {}, seed {}",
        backend.name(),
        settings.options.batch_size,
        train_count.div_ceil(settings.options.batch_size),
        settings.hyper.lr,
        settings.options.seed
    );
    let mut console = Console::new(metrics);
    let outcome = train(backend.as_mut(), train_count, &settings.options, 0, &mut console)?;
    println!(
        "Test accuracy: {:.2}% (loss {:.4})",
        outcome.final_eval.accuracy * 100.0,
        outcome.final_eval.loss
    );
    Ok(outcome)
}

/// `mnist-gpu adapters`: the table of every adapter wgpu finds.
pub fn run_adapters(choice: &DeviceChoice) -> Result<()> {
    let list = gpu::list_adapters(choice)?;
    print!("{}", gpu::format_adapters(&list));
    Ok(())
}
