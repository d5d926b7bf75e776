//! The binary on each GPU backend: `train --backend B` names the adapter and trains,
//! `--resume` and `--init-from` work, and `eval` on the same backend reproduces the
//! accuracy `train` reported. (Numerical agreement lives in gpu_agreement.rs.)

mod common;

use common::gpu::{available, backends, choice};
use common::skip::skip;
use std::path::Path;

/// Run the binary; it must succeed. Returns its stdout.
fn run(args: &[&str]) -> String {
    common::cli::text(&common::cli::succeed(args).stdout)
}

fn last_val_accuracy(dir: &Path) -> f64 {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    last["val_accuracy"].as_f64().unwrap()
}

/// The small runs' flags: 640 training and 200 test samples, batches of 64.
const SMALL: [&str; 6] = [
    "--train-limit",
    "640",
    "--test-limit",
    "200",
    "--batch-size",
    "64",
];

#[test]
fn train_resume_init_from_and_eval_on_each_backend() {
    for backend in backends() {
        let Some(adapters) = available(
            "gpu_cli",
            &backend,
            mnist_gpu::gpu::list_adapters(&choice(&backend)),
        ) else {
            continue;
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        train_one_epoch(&backend, &dir, &adapters[0].name);
        let accuracy = resume_for_a_second_epoch(&backend, &dir);
        let model = dir.join("model.safetensors");
        eval_reproduces_the_accuracy(&backend, &model, accuracy);
        init_from_starts_from_the_model(&backend, &tmp.path().join("second"), &model);
    }
}

/// Trains one small epoch into `dir` on `backend` (`more`: further flags); its stdout.
fn train_small_epoch(backend: &str, dir: &Path, more: &[&str]) -> String {
    let mut args = vec![
        "train",
        "--backend",
        backend,
        "--epochs",
        "1",
        "--out-dir",
        dir.to_str().unwrap(),
    ];
    args.extend(more);
    args.extend(SMALL);
    run(&args)
}

/// Trains one epoch into `dir` on `backend`, checking it names the adapter `device`.
fn train_one_epoch(backend: &str, dir: &Path, device: &str) {
    let out = train_small_epoch(backend, dir, &[]);
    assert!(
        out.contains(&format!("device: {device}")),
        "{backend}: {out}"
    );
    assert!(out.contains("Epoch 1/1"), "{out}");
}

/// Resumes the run in `dir` for its second epoch; the accuracy it reached.
fn resume_for_a_second_epoch(backend: &str, dir: &Path) -> f64 {
    let out = run(&[
        "train",
        "--backend",
        backend,
        "--resume",
        dir.to_str().unwrap(),
        "--epochs",
        "2",
    ]);
    assert!(
        out.contains("resuming") && out.contains("Epoch 2/2"),
        "{backend}: {out}"
    );
    let accuracy = last_val_accuracy(dir);
    assert!(
        accuracy > 0.6,
        "{backend}: two epochs on 640 samples reached only {accuracy}"
    );
    accuracy
}

/// `eval` of `model` on the same backend prints the `accuracy` training reported.
fn eval_reproduces_the_accuracy(backend: &str, model: &Path, accuracy: f64) {
    let eval = run(&[
        "eval",
        "--backend",
        backend,
        "--test-limit",
        "200",
        "--model",
        model.to_str().unwrap(),
    ]);
    assert!(
        eval.contains(&format!("accuracy: {:.2}%", accuracy * 100.0)),
        "{backend}: eval {eval} vs train {accuracy}"
    );
}

/// Trains one epoch into `second` from `model`'s weights; it must start trained (over 60%).
fn init_from_starts_from_the_model(backend: &str, second: &Path, model: &Path) {
    train_small_epoch(backend, second, &["--init-from", model.to_str().unwrap()]);
    assert!(
        last_val_accuracy(second) > 0.6,
        "{backend}: --init-from did not start from the trained weights"
    );
}

#[test]
fn an_adapter_name_matching_several_adapters_is_an_error_listing_them() {
    let Ok(list) = mnist_gpu::gpu::list_adapters(&Default::default()) else {
        return;
    };
    let names: Vec<String> = list.iter().map(|a| a.name.clone()).collect();
    // A name shared by two adapters (lavapipe and llvmpipe are both `llvmpipe (LLVM …)`).
    let Some(shared) = names
        .iter()
        .find(|n| names.iter().filter(|m| m == n).count() > 1)
    else {
        let test = "an_adapter_name_matching_several_adapters_is_an_error_listing_them";
        let why = format!("no two adapters share a name here ({names:?})");
        skip(
            test,
            &why,
            "lavapipe and llvmpipe do: install Mesa's drivers as for the GPU tests",
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = common::cli::bin()
        .args(["train", "--adapter", shared, "--epochs", "1", "--out-dir"])
        .arg(tmp.path().join("run"))
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(
        error[0].contains("matches") && error[0].contains("[0]") && error[0].contains("--backend"),
        "{stderr}"
    );
}

/// An adapter keeps its number under `--backend`: each entry of `adapters --backend B` is
/// the same line in the unfiltered `adapters`, and `--adapter N --backend B` opens the
/// adapter the unfiltered list numbers N.
#[test]
fn adapter_numbers_do_not_change_with_the_backend_filter() {
    let every = run(&["adapters"]);
    let mut checked = 0;
    for backend in backends() {
        let filtered = run(&["adapters", "--backend", &backend]);
        for line in filtered.lines().filter(|l| l.starts_with('[')) {
            assert!(
                every.lines().any(|l| l == line),
                "`adapters --backend {backend}` shows {line:?}, which `adapters` does not:\n{every}"
            );
            let number = &line[1..line.find(']').unwrap()];
            let chosen = mnist_gpu::gpu::adapters::chosen_adapter(&mnist_gpu::gpu::DeviceChoice {
                backend: Some(backend.clone()),
                adapter: Some(number.to_string()),
            })
            .unwrap_or_else(|e| panic!("--backend {backend} --adapter {number}: {e}"));
            assert_eq!(chosen.index.to_string(), number, "{line}");
            assert!(line.contains(&chosen.name), "{line} vs {}", chosen.name);
            checked += 1;
        }
    }
    if checked == 0 {
        let why = format!("no adapter on {:?}", backends());
        skip(
            "adapter_numbers_do_not_change_with_the_backend_filter",
            &why,
            common::skip::ADAPTER_FIX,
        );
    }
}
