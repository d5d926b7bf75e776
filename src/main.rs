//! `mnist-gpu` command line: parse flags, call the library, turn errors into a one-line
//! message and a non-zero exit code.

use clap::{Args, Parser, Subcommand};
use mnist_gpu::app::{self, Device, TrainSettings};
use mnist_gpu::data;
use mnist_gpu::app::DeviceChoice;
use mnist_gpu::model::{parse_hidden, Hyper, ModelConfig};
use mnist_gpu::train::TrainOptions;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "mnist-gpu", version, about = "Train an MLP on MNIST in hand-written WGSL compute shaders (wgpu), or on the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train Flatten → BatchNorm → Dense(128, ReLU) → Dense(10, softmax) with Adam, validating every epoch.
    Train(TrainArgs),
    /// List every GPU adapter wgpu can see, with the limits that matter here.
    Adapters(DeviceArgs),
}

#[derive(Args)]
struct DeviceArgs {
    /// Restrict wgpu to one backend: vulkan, gl, metal or dx12 (default: $WGPU_BACKEND, else all).
    #[arg(long, value_name = "NAME")]
    backend: Option<String>,
    /// Adapter: a backend name (vulkan, gl, …), an index from `mnist-gpu adapters`, or part of its name (llvmpipe, nvidia).
    #[arg(long, value_name = "X")]
    adapter: Option<String>,
}

#[derive(Args)]
#[command(allow_negative_numbers = true, args_override_self = true)]
struct TrainArgs {
    /// Train on the CPU (the reference implementation) instead of a GPU.
    #[arg(long, conflicts_with_all = ["backend", "adapter"])]
    cpu_fallback: bool,
    #[command(flatten)]
    device: DeviceArgs,
    /// Directory with the four MNIST IDX files (plain or .gz) [default: the built-in MNIST]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 10, value_parser = positive)]
    epochs: usize,
    #[arg(long, default_value_t = 32, value_parser = positive)]
    batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3, value_parser = learning_rate)]
    lr: f32,
    /// Seed for the weight initialisation and the per-epoch shuffling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Hidden layer widths, comma-separated: 128, or 256,128 for a deeper MLP.
    #[arg(long, default_value = "128", value_parser = hidden_list)]
    hidden: HiddenList,
    /// Feed pixels as 0..255, as the Keras tutorial did (default: scaled to [0, 1]).
    #[arg(long)]
    raw_pixels: bool,
    /// Keep the data in file order instead of shuffling every epoch.
    #[arg(long)]
    no_shuffle: bool,
    /// Use only the first N training samples (more than there are: all of them).
    #[arg(long, value_name = "N")]
    train_limit: Option<usize>,
    /// Use only the first N test samples (more than there are: all of them).
    #[arg(long, value_name = "N")]
    test_limit: Option<usize>,
    /// Write one JSON object per epoch to FILE.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
}

/// The parsed `--hidden` value (a newtype, so clap takes the list as one value).
#[derive(Clone)]
struct HiddenList(Vec<usize>);

fn hidden_list(text: &str) -> Result<HiddenList, String> {
    parse_hidden(text).map(HiddenList)
}

fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{text}' is not a positive whole number")),
    }
}

fn learning_rate(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(lr) if lr.is_finite() && lr > 0.0 => Ok(lr),
        Ok(lr) => Err(format!("must be a finite number above 0, got {lr}")),
        Err(_) => Err(format!("'{text}' is not a number")),
    }
}

impl DeviceArgs {
    fn choice(&self) -> DeviceChoice {
        DeviceChoice {
            backend: self.backend.clone(),
            adapter: self.adapter.clone(),
        }
    }
}

impl TrainArgs {
    fn settings(self) -> TrainSettings {
        TrainSettings {
            data_dir: self.data_dir.unwrap_or_else(data::builtin_dir),
            device: if self.cpu_fallback { Device::Cpu } else { Device::Gpu(self.device.choice()) },
            model: ModelConfig {
                hidden: self.hidden.0,
                raw_pixels: self.raw_pixels,
            },
            hyper: Hyper { lr: self.lr, ..Hyper::default() },
            options: TrainOptions {
                epochs: self.epochs,
                batch_size: self.batch_size,
                seed: self.seed,
                shuffle: !self.no_shuffle,
            },
            train_limit: self.train_limit,
            test_limit: self.test_limit,
            metrics: self.metrics,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => app::run_train(&args.settings()).map(|_| ()),
        Command::Adapters(args) => app::run_adapters(&args.choice()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
