//! The convnet through the command line, on small subsets: a run interrupted inside an
//! epoch resumes to the uninterrupted run's bits, and an epoch prints the CPU's metrics
//! to 4 decimals (on the CPU, and on each GPU backend in `MNIST_GPU_TEST_BACKENDS`, which
//! is skipped with a message when it has no adapter, or fails under `CI`); its model
//! evaluates to the accuracy `train` printed, predicts, and starts another run; and
//! `--hidden` is refused with it.

mod common;

use common::cli::{bin, bits, no_panic, s, succeed, text};
use common::gpu::{available, backends, choice};
use mnist_gpu::modelfile;
use std::path::Path;

/// `train --model convnet DEVICE` on 320 training and 200 test images at batch 32 (10
/// steps an epoch) into `dir`, plus `extra`.
fn train_args(device: &[&str], dir: &Path, extra: &[&str]) -> Vec<String> {
    let flags = [
        "train",
        "--model",
        "convnet",
        "--train-limit",
        "320",
        "--test-limit",
        "200",
        "--batch-size",
        "32",
        "--seed",
        "5",
        "--out-dir",
        &s(dir),
    ];
    let all = flags.iter().chain(device).chain(extra);
    all.map(|a| a.to_string()).collect()
}

/// Two epochs straight, and two epochs interrupted at step 4 of epoch 2 then resumed:
/// the same model bits and the same metrics.
fn interrupted_and_resumed_is_bit_identical(device: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let (whole, cut) = (tmp.path().join("whole"), tmp.path().join("cut"));
    succeed(&train_args(device, &whole, &["--epochs", "2"]));
    let out = bin()
        .args(train_args(device, &cut, &["--epochs", "2"]))
        .env("MNIST_GPU_INTERRUPT_AT", "2:4")
        .output()
        .unwrap();
    no_panic(&out);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    let mut resume = vec!["train".to_string(), "--resume".into(), s(&cut)];
    resume.extend(device.iter().map(|d| d.to_string()));
    let out = succeed(&resume);
    assert!(text(&out.stdout).contains("in epoch 2 after step 4"));
    let a = modelfile::load_model(&whole.join("model.safetensors")).unwrap();
    let b = modelfile::load_model(&cut.join("model.safetensors")).unwrap();
    assert!(
        bits(&a) == bits(&b),
        "{device:?}: the resumed convnet differs"
    );
    let metrics = |dir: &Path| {
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let values = |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap();
        let figures = |v: serde_json::Value| [v["loss"].clone(), v["val_accuracy"].clone()];
        text.lines().map(values).map(figures).collect::<Vec<_>>()
    };
    assert_eq!(metrics(&whole), metrics(&cut), "{device:?}: metrics");
}

#[test]
fn an_interrupted_convnet_resumes_to_the_same_bits_on_the_cpu() {
    interrupted_and_resumed_is_bit_identical(&["--cpu-fallback"]);
}

#[test]
fn an_interrupted_convnet_resumes_to_the_same_bits_on_each_gpu_backend() {
    for backend in backends() {
        let listed = mnist_gpu::gpu::list_adapters(&choice(&backend));
        if available("convnet on a GPU", &backend, listed).is_none() {
            continue;
        }
        interrupted_and_resumed_is_bit_identical(&["--backend", &backend]);
    }
}

/// One epoch of the convnet prints the same metrics, to 4 decimals, on the CPU and on
/// each GPU backend.
#[test]
fn one_epoch_gives_the_same_metrics_on_every_device() {
    let tmp = tempfile::tempdir().unwrap();
    let record = |device: &[&str], name: &str| {
        let dir = tmp.path().join(name);
        succeed(&train_args(device, &dir, &["--epochs", "1"]));
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        ["loss", "accuracy", "val_loss", "val_accuracy"].map(|k| v[k].as_f64().unwrap())
    };
    let cpu = record(&["--cpu-fallback"], "cpu");
    for backend in backends() {
        let listed = mnist_gpu::gpu::list_adapters(&choice(&backend));
        if available("convnet metrics", &backend, listed).is_none() {
            continue;
        }
        let gpu = record(&["--backend", &backend], &backend);
        let four = |v: [f64; 4]| v.map(|x| format!("{x:.4}"));
        assert_eq!(four(gpu), four(cpu), "{backend} against the CPU");
    }
}

/// The convnet's model file works as the MLP's: `eval` gives the accuracy `train`
/// printed, `predict` reads a digit, and `--init-from` starts another run from it.
#[test]
fn the_convnet_model_evaluates_predicts_and_starts_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, next) = (tmp.path().join("run"), tmp.path().join("next"));
    let cpu = ["--cpu-fallback"];
    let out = text(&succeed(&train_args(&cpu, &dir, &["--epochs", "2"])).stdout);
    let accuracy = out.split("Test accuracy: ").nth(1).expect("a final line");
    let accuracy = accuracy.split('%').next().unwrap();
    let model = s(&dir.join("model.safetensors"));
    let eval = [
        "eval",
        "--cpu-fallback",
        "--test-limit",
        "200",
        "--model",
        &model,
    ];
    let eval = text(&succeed(&eval).stdout);
    assert!(eval.contains(&format!("accuracy: {accuracy}%")), "{eval}");
    let digit = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/digits/digit-7-large-light.png"
    );
    let predicted = text(&succeed(&["predict", "--model", &model, digit]).stdout);
    assert!(predicted.starts_with(&format!("{digit}: ")), "{predicted}");
    // The model file says what it is: no --model beside --init-from.
    let next = s(&next);
    let init = [
        "train",
        "--cpu-fallback",
        "--train-limit",
        "320",
        "--test-limit",
        "200",
    ];
    let init = [
        &init[..],
        &["--epochs", "1", "--init-from", &model, "--out-dir", &next],
    ]
    .concat();
    let out = text(&succeed(&init).stdout);
    assert!(out.contains("Conv2D 32 3×3"), "{out}");
}

#[test]
fn hidden_widths_are_refused_for_the_convnet() {
    let tmp = tempfile::tempdir().unwrap();
    let args = train_args(&["--cpu-fallback", "--hidden", "64"], tmp.path(), &[]);
    let out = bin().args(args).output().unwrap();
    no_panic(&out);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: --hidden sets the MLP's widths"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
