//! The browser page's entry points (wasm32 only; `web/` holds the HTML/JS shell and
//! `web/build.sh`). A [`Session`] holds the data, the model and its trainer (WebGPU, or
//! the CPU path compiled to wasm where WebGPU is missing); the page calls
//! `train_epoch` once per epoch and shows what comes back.

use crate::backend::{Backend, StepProgress};
use crate::cpu::CpuBackend;
use crate::data::Mnist;
use crate::gpu::GpuBackend;
use crate::model::{Hyper, Params};
use crate::settings::{
    in_page_words, limit_note, steps_per_epoch, PageForm, Settings, TrainOptions,
};
use crate::train::{run_epoch, EpochOutcome, FinishedEpoch};
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use wasm_bindgen::prelude::*;

/// Set by the page's Stop button, read between chunks of steps.
static STOP: AtomicBool = AtomicBool::new(false);

/// Ask the running epoch to stop after its chunk of steps under way.
#[wasm_bindgen]
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Forget a stop request (the page calls it when training starts or resumes, so a Stop
/// pressed between two epochs still stops the next one).
#[wasm_bindgen]
pub fn clear_stop() {
    STOP.store(false, Ordering::SeqCst);
}

/// The page's form and URL values (JSON, the CLI's flag names, every value as text)
/// checked with the command line's rules ([`PageForm::validate`]): nothing, or the
/// refusal naming the field.
#[wasm_bindgen]
pub fn check_settings(form: String) -> Result<(), JsValue> {
    settings_from(&form).map(|_| ())
}

/// The epochs and batch size a model's tutorial trains it with (`mlp` or `convnet`),
/// the defaults the form shows for it, as on the command line.
#[wasm_bindgen]
pub fn model_defaults(model: String) -> Result<Vec<usize>, JsValue> {
    let kind: crate::model::ModelKind = model.parse().map_err(js_error)?;
    let (epochs, batch) = kind.default_epochs_and_batch();
    Ok(vec![epochs, batch])
}

/// The run's settings from the page's form, and whether it trains on the CPU.
fn settings_from(form: &str) -> Result<(Settings, bool), JsValue> {
    let form: PageForm = serde_json::from_str(form).map_err(js_error)?;
    Ok((form.validate().map_err(js_error)?, form.cpu))
}

struct State {
    trainer: Box<dyn Backend>,
    options: TrainOptions,
    /// Epochs finished, and the totals of the one stopped part-way (zero otherwise).
    epochs_done: usize,
    partial: StepProgress,
    test: crate::data::Dataset,
    /// The model after the last epoch, for drawing and downloading, and Adam's step
    /// count then (the model file's `num_batches_tracked`, in a model with BatchNorm).
    params: Option<Params>,
    optimizer_steps: u64,
    predictions: Vec<u8>,
}

/// An error for the page: its message (with its causes), naming the page's controls
/// where the command line's would name flags.
fn js_error(e: impl std::fmt::Display) -> JsValue {
    JsValue::from_str(&in_page_words(&format!("{e:#}")))
}

#[wasm_bindgen]
pub struct Session {
    state: Rc<RefCell<State>>,
    device: String,
    notes: String,
}

#[wasm_bindgen]
impl Session {
    /// Parse the four MNIST files (`.gz` bytes: train images, train labels, test images,
    /// test labels) with `settings` (the form as [`check_settings`] takes it, refused as it
    /// refuses) and open the trainer: WebGPU unless `cpu` is set, else the CPU path.
    pub async fn create(files: js_sys::Array, settings: String) -> Result<Session, JsValue> {
        // A panic's message on the console, not only wasm's bare "unreachable".
        std::panic::set_hook(Box::new(|info| {
            web_sys::console::error_1(&format!("mnist-gpu: panic {info}").into());
        }));
        let (settings, cpu) = settings_from(&settings)?;
        let bytes: Vec<Vec<u8>> = files
            .iter()
            .map(|f| js_sys::Uint8Array::new(&f).to_vec())
            .collect();
        let files: [&[u8]; 4] = [&bytes[0], &bytes[1], &bytes[2], &bytes[3]];
        let data = Mnist::from_bytes(files, settings.train_limit, settings.test_limit)
            .map_err(js_error)?;
        let notes: Vec<String> = [
            (settings.train_limit, data.train.len(), "the train limit"),
            (settings.test_limit, data.test.len(), "the test limit"),
        ]
        .into_iter()
        .filter_map(|(limit, kept, name)| limit_note(limit, kept, name))
        .collect();
        let params = Params::init(&settings.model, settings.options.seed);
        let hyper = settings.hyper();
        let test = data.test.clone();
        let trainer: Box<dyn Backend> = if cpu {
            Box::new(CpuBackend::new(params, hyper, data))
        } else {
            let gpu = GpuBackend::new_browser(params, hyper, data).await;
            Box::new(gpu.map_err(js_error)?)
        };
        let device = device_line(trainer.as_ref(), cpu);
        let state = State {
            trainer,
            options: settings.options,
            epochs_done: 0,
            partial: StepProgress::default(),
            test,
            params: None,
            optimizer_steps: 0,
            predictions: Vec::new(),
        };
        Ok(Session {
            state: Rc::new(RefCell::new(state)),
            device,
            notes: notes.join("; "),
        })
    }

    /// What trains: the adapter and `WebGPU`, or `cpu`.
    pub fn device(&self) -> String {
        self.device.clone()
    }

    /// Notes on the settings (a limit above the samples there are), or "".
    pub fn notes(&self) -> String {
        self.notes.clone()
    }

    /// The run's epochs (a resumed run keeps every setting it started with).
    pub fn epochs(&self) -> Result<usize, JsValue> {
        Ok(self.state()?.options.epochs)
    }

    pub fn epochs_done(&self) -> Result<usize, JsValue> {
        Ok(self.state()?.epochs_done)
    }

    /// Train the next epoch (or the rest of a stopped one) and evaluate. `progress` is
    /// called with (steps done, steps total, running loss, running accuracy). Resolves
    /// to the epoch's `metrics.jsonl` line, or to `null` when Stop ended it early.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn train_epoch(&self, progress: js_sys::Function) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            // Held across the awaits on purpose: while an epoch trains, every other call
            // finds the state borrowed and gets a "training is under way" error.
            let mut guard = state.try_borrow_mut().map_err(js_error)?;
            let s = &mut *guard;
            let mut report = |p: &StepProgress| {
                let args = [p.steps_done, p.steps_total].map(|v| JsValue::from(v as u32));
                let _ = progress.call4(
                    &JsValue::NULL,
                    &args[0],
                    &args[1],
                    &p.mean_loss().into(),
                    &p.accuracy().into(),
                );
            };
            let steps_total = s.trainer_steps();
            let base = StepProgress {
                steps_total,
                ..s.partial
            };
            let stop = |_| STOP.load(Ordering::SeqCst);
            let (epoch, options) = (s.epochs_done, &s.options);
            let outcome = run_epoch(s.trainer.as_mut(), options, epoch, base, &mut report, &stop)
                .await
                .map_err(js_error)?;
            match outcome {
                EpochOutcome::Stopped(totals) => {
                    s.partial = totals;
                    Ok(JsValue::NULL)
                }
                EpochOutcome::Finished(finished) => {
                    let FinishedEpoch {
                        record,
                        eval,
                        params,
                        adam_steps,
                    } = *finished;
                    s.epochs_done += 1;
                    s.partial = StepProgress::default();
                    s.predictions = eval.predictions;
                    s.optimizer_steps = adam_steps;
                    s.params = Some(params);
                    Ok(serde_json::to_string(&record).map_err(js_error)?.into())
                }
            }
        })
    }

    /// The test set's first `count` images (784 bytes each), true labels and the
    /// predictions after the last epoch, for the grid and the confusion matrix.
    pub fn test_images(&self, count: usize) -> Result<Vec<u8>, JsValue> {
        let s = self.state()?;
        let count = count.min(s.test.len());
        Ok(s.test.images[..count * s.test.pixels_per_image()].to_vec())
    }

    pub fn test_labels(&self) -> Result<Vec<u8>, JsValue> {
        Ok(self.state()?.test.labels.clone())
    }

    pub fn predictions(&self) -> Result<Vec<u8>, JsValue> {
        Ok(self.state()?.predictions.clone())
    }

    /// The trained model as `mnist-gpu train` writes `model.safetensors`.
    pub fn model_file(&self) -> Result<Vec<u8>, JsValue> {
        let s = self.state()?;
        let params = s
            .params
            .as_ref()
            .ok_or_else(|| js_error("no epoch has finished yet"))?;
        crate::modelfile::model_bytes(params, s.optimizer_steps, Path::new("model.safetensors"))
            .map_err(js_error)
    }

    /// Replace the model by a `model.safetensors` made by the CLI and evaluate it on the
    /// page's test set (on the CPU, as `mnist-gpu eval --cpu-fallback`): resolves to JSON
    /// `{"accuracy": …, "samples": …}`; the predictions replace the grid's. A model whose
    /// outputs overflow is refused with `eval`'s check; `name` names it in the refusal.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn load_model(&self, bytes: Vec<u8>, name: String) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let params = crate::modelfile::parse_model(&bytes).map_err(js_error)?;
            // Held across the awaits, as in `train_epoch`.
            let mut s = state
                .try_borrow_mut()
                .map_err(|_| js_error("training is under way"))?;
            let mut cpu = CpuBackend::new(params.clone(), Hyper::default(), test_only(&s.test));
            let eval = cpu.evaluate().await.map_err(js_error)?;
            crate::train::check_finite_eval_loss(&eval, &name).map_err(js_error)?;
            let samples = eval.predictions.len();
            s.predictions = eval.predictions;
            s.params = Some(params);
            let json = serde_json::json!({ "accuracy": eval.accuracy, "samples": samples });
            Ok(json.to_string().into())
        })
    }

    /// Top-3 (digit, probability) of a drawing given as PNG bytes, prepared exactly as
    /// `mnist-gpu predict` prepares a picture; JSON `[[digit, p], …]`.
    pub fn predict_png(&self, png: Vec<u8>) -> Result<String, JsValue> {
        let s = self.state()?;
        let params = s.params.as_ref().ok_or_else(|| js_error("no model yet"))?;
        let prepared = crate::preprocess::from_bytes(&png).map_err(js_error)?;
        let probs = crate::cpu::infer(params, Hyper::default().bn_eps, &prepared.pixels)[0];
        let mut ranked: Vec<(usize, f32)> = probs.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        serde_json::to_string(&ranked[..3]).map_err(js_error)
    }
}

impl Session {
    fn state(&self) -> Result<std::cell::Ref<'_, State>, JsValue> {
        self.state
            .try_borrow()
            .map_err(|_| js_error("training is under way"))
    }
}

impl State {
    fn trainer_steps(&self) -> usize {
        steps_per_epoch(self.trainer.train_count(), self.options.batch_size)
    }
}

/// The data `eval` loads: the test set alone.
fn test_only(test: &crate::data::Dataset) -> Mnist {
    let train = crate::data::Dataset {
        images: Vec::new(),
        labels: Vec::new(),
        rows: test.rows,
        cols: test.cols,
    };
    Mnist {
        train,
        test: test.clone(),
    }
}

/// The device line: `<adapter> WebGPU` (browsers may hide the adapter's name), or the
/// CPU path's own name.
fn device_line(trainer: &dyn Backend, cpu: bool) -> String {
    if cpu {
        return trainer.name();
    }
    let described = trainer.name();
    let adapter = described.split(" — ").next().unwrap_or("").trim();
    let adapter = if adapter.is_empty() {
        "browser adapter"
    } else {
        adapter
    };
    format!("{adapter} WebGPU")
}
