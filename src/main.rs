//! `mnist-gpu` command line: parse flags, call the library, turn errors into a one-line
//! message and a non-zero exit code.

use clap::{Args, Parser, Subcommand};
use mnist_gpu::app::{self, AlreadyReported, DeviceRequest};
use mnist_gpu::errln;
use mnist_gpu::gpu::DeviceChoice;
use mnist_gpu::interrupt::{self, Interrupted};
use mnist_gpu::model::{ModelConfig, ModelKind};
use mnist_gpu::run::{self, TrainSettings};
use mnist_gpu::settings::{self, learning_rate, positive, Settings, TrainOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mnist-gpu",
    version,
    about = "Train an MLP on MNIST in hand-written WGSL compute shaders (wgpu), or on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train Flatten → BatchNorm → Dense(128, ReLU) → Dense(10, softmax) with Adam, validating every epoch.
    Train(TrainArgs),
    /// Test loss, accuracy and confusion matrix of a saved model.
    Eval(EvalArgs),
    /// Predict the digit in each image file (PNG or JPEG, any size, light or dark background).
    Predict(PredictArgs),
    /// List every GPU adapter wgpu can see, with the limits that matter here.
    Adapters(AdaptersArgs),
}

#[derive(Args)]
struct EvalArgs {
    /// A model.safetensors written by `train`.
    #[arg(long, value_name = "FILE", value_parser = path_arg)]
    model: PathBuf,
    /// Directory with the four MNIST IDX files (plain or .gz) [default: the built-in MNIST]
    #[arg(long, value_name = "DIR", value_parser = path_arg)]
    data_dir: Option<PathBuf>,
    /// Evaluate only the first N test samples.
    #[arg(long, value_name = "N", value_parser = positive)]
    test_limit: Option<usize>,
    /// Also draw the confusion matrix as a picture.
    #[arg(long, value_name = "FILE", value_parser = path_arg)]
    confusion_png: Option<PathBuf>,
    /// Evaluate on the CPU instead of a GPU.
    #[arg(long, conflicts_with_all = ["backend", "adapter"])]
    cpu_fallback: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct PredictArgs {
    /// A model.safetensors written by `train`.
    #[arg(long, value_name = "FILE", value_parser = path_arg)]
    model: PathBuf,
    /// Image files to classify.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct AdaptersArgs {
    /// List only this backend's adapters: vulkan, gl, metal or dx12 (default: $WGPU_BACKEND, else all).
    #[arg(long, value_name = "NAME")]
    backend: Option<String>,
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
    #[arg(long, value_name = "DIR", value_parser = path_arg)]
    data_dir: Option<PathBuf>,
    /// The model: mlp (the Keras tutorial's; --hidden sets its widths) or convnet (Keras' MNIST convnet).
    #[arg(long, value_name = "NAME", default_value = "mlp", value_parser = model_kind, conflicts_with_all = ["resume", "init_from"])]
    model: ModelKind,
    /// Epochs to train [default: the mlp 10, the convnet 15; with --resume: the checkpoint's total]
    #[arg(long, value_parser = positive)]
    epochs: Option<usize>,
    /// Samples per training step, the last batch of an epoch may be smaller [default: the mlp 32, the convnet 128]
    #[arg(long, value_parser = positive, conflicts_with = "resume")]
    batch_size: Option<usize>,
    /// Adam learning rate.
    #[arg(long, default_value_t = Settings::default().lr, value_parser = learning_rate, conflicts_with = "resume")]
    lr: f32,
    /// Seed for the weight initialisation and the per-epoch shuffling.
    #[arg(long, default_value_t = TrainOptions::default().seed, value_parser = settings::seed, conflicts_with = "resume")]
    seed: u64,
    /// The MLP's hidden layer widths, comma-separated: 128, or 256,128 for a deeper MLP [default: 128]
    #[arg(long, value_parser = hidden_list, conflicts_with_all = ["resume", "init_from"])]
    hidden: Option<HiddenList>,
    /// Feed pixels as 0..255, as the Keras tutorial did (default: scaled to [0, 1]).
    #[arg(long, conflicts_with_all = ["resume", "init_from"])]
    raw_pixels: bool,
    /// Keep the data in file order instead of shuffling every epoch.
    #[arg(long, conflicts_with = "resume")]
    no_shuffle: bool,
    /// Train on augmented images: each epoch, each training image gets its own small
    /// rotation (±12°), scale (0.9–1.1), shift (±3 px) and stroke change (±1 px), the
    /// same on every device and on resume.
    #[arg(long, conflicts_with = "resume")]
    augment: bool,
    /// Use only the first N training samples (more than there are: all of them).
    #[arg(long, value_name = "N", value_parser = positive, conflicts_with = "resume")]
    train_limit: Option<usize>,
    /// Use only the first N test samples (more than there are: all of them).
    #[arg(long, value_name = "N", value_parser = positive, conflicts_with = "resume")]
    test_limit: Option<usize>,
    /// Also write the per-epoch metrics (one JSON object per line) to FILE: a regular file
    /// or a new one (not `-`, a device, or one of the run's own files).
    #[arg(long, value_name = "FILE", value_parser = path_arg)]
    metrics: Option<PathBuf>,
    /// Directory for the run's files [default: the next free runs/run-NNN]
    #[arg(long, value_name = "DIR", value_parser = path_arg, conflicts_with = "resume")]
    out_dir: Option<PathBuf>,
    /// Replace the run already in --out-dir (and a --metrics file that holds metrics).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// First test image shown in predictions.png.
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "resume")]
    grid_offset: usize,
    /// Start from the weights in a model.safetensors (with a fresh optimiser).
    #[arg(long, value_name = "FILE", value_parser = path_arg, conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    /// Continue the interrupted run in DIR from its checkpoint.safetensors.
    #[arg(long, value_name = "DIR", value_parser = path_arg)]
    resume: Option<PathBuf>,
}

/// The parsed `--hidden` value (a newtype, so clap takes the list as one value).
#[derive(Clone)]
struct HiddenList(Vec<usize>);

fn hidden_list(text: &str) -> Result<HiddenList, String> {
    settings::hidden(text).map(HiddenList)
}

fn model_kind(text: &str) -> Result<ModelKind, String> {
    text.parse()
}

/// A path flag's value: `~` is not expanded (the shell expands it only at the start of
/// a word, so `--out-dir=~/runs` reaches the program as it is written).
fn path_arg(text: &str) -> Result<PathBuf, String> {
    if text == "~" || text.starts_with("~/") {
        return Err(format!(
            "'{text}' starts with '~', which the shell did not expand (it does only at the \
             start of a word); write the path with $HOME or in full"
        ));
    }
    Ok(PathBuf::from(text))
}

impl DeviceArgs {
    fn choice(&self) -> DeviceChoice {
        DeviceChoice {
            backend: self.backend.clone(),
            adapter: self.adapter.clone(),
        }
    }
}

fn device(cpu_fallback: bool, args: &DeviceArgs) -> DeviceRequest {
    DeviceRequest::from_flags(cpu_fallback, args.choice())
}

impl TrainArgs {
    fn settings(self) -> anyhow::Result<TrainSettings> {
        let device = device(self.cpu_fallback, &self.device);
        if let Some(dir) = &self.resume {
            return run::resume_settings(dir, self.epochs, self.data_dir, self.metrics, device);
        }
        let (epochs, batch_size) = self.model.default_epochs_and_batch();
        Ok(TrainSettings {
            settings: Settings {
                model: self.model_config()?,
                lr: self.lr,
                options: TrainOptions {
                    epochs: self.epochs.unwrap_or(epochs),
                    batch_size: self.batch_size.unwrap_or(batch_size),
                    seed: self.seed,
                    shuffle: !self.no_shuffle,
                    augment: self.augment,
                },
                train_limit: self.train_limit,
                test_limit: self.test_limit,
            },
            data_dir: app::data_dir_or_builtin(self.data_dir),
            device,
            metrics: self.metrics,
            out_dir: self.out_dir,
            overwrite: self.overwrite,
            grid_offset: self.grid_offset,
            init_from: self.init_from,
            resume: None,
        })
    }
}

impl TrainArgs {
    /// The model `--model` names, with `--hidden`'s widths for the MLP.
    fn model_config(&self) -> anyhow::Result<ModelConfig> {
        match (self.model, &self.hidden) {
            (ModelKind::Mlp, hidden) => {
                let hidden = hidden.as_ref().map_or(&[128][..], |h| &h.0[..]);
                Ok(ModelConfig::mlp(hidden, self.raw_pixels))
            }
            (ModelKind::Convnet, None) => Ok(ModelConfig::convnet(self.raw_pixels)),
            (ModelKind::Convnet, Some(_)) => anyhow::bail!(
                "--hidden sets the MLP's widths; the convnet's layers are fixed (leave out \
                 --hidden, or use --model mlp)"
            ),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Train(_)) {
        default_sigpipe();
    }
    exit_status(run_command(cli.command))
}

fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Train(args) => {
            interrupt::install();
            args.settings().and_then(|s| run::run_train(&s)).map(|_| ())
        }
        Command::Eval(args) => app::run_eval(
            &args.model,
            &app::data_dir_or_builtin(args.data_dir),
            args.test_limit,
            &device(args.cpu_fallback, &args.device),
            args.confusion_png.as_deref(),
        )
        .map(|_| ()),
        Command::Predict(args) => app::run_predict(&args.model, &args.images, args.json),
        Command::Adapters(args) => app::run_adapters(&DeviceChoice {
            backend: args.backend,
            adapter: None,
        }),
    }
}

/// Outside `train`, a closed stdout (`mnist-gpu predict … | head -1`) ends the program
/// quietly, as SIGPIPE's default action does for other command-line tools. (`train`
/// keeps SIGPIPE ignored: a closed stdout is then a write error, and the run stops with
/// a resumable checkpoint instead of dying mid-step.)
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: resetting a signal's disposition to its default touches no Rust state.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The exit status for `result`, with its one-line message on stderr: 130 for a stop by
/// signal, 1 for an error or a failed write to stdout.
fn exit_status(result: anyhow::Result<()>) -> ExitCode {
    let stdout_error = mnist_gpu::output::stdout_error();
    match result {
        Err(error) if error.downcast_ref::<AlreadyReported>().is_some() => ExitCode::FAILURE,
        Err(error) if error.downcast_ref::<Interrupted>().is_some() => match stdout_error {
            Some(why) if !interrupt::signalled() => {
                errln!("error: cannot write to standard output ({why}); {error:#}");
                ExitCode::FAILURE
            }
            _ => {
                errln!("{error:#}");
                ExitCode::from(interrupt::EXIT_CODE)
            }
        },
        Err(error) => {
            errln!("error: {error:#}");
            ExitCode::FAILURE
        }
        Ok(()) => match stdout_error {
            Some(why) => {
                errln!("error: cannot write to standard output ({why})");
                ExitCode::FAILURE
            }
            None => ExitCode::SUCCESS,
        },
    }
}
