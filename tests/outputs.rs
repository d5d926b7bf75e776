//! What a training run leaves behind, through the binary: every file of the run
//! directory, `eval` reproducing `train`'s accuracy, bit-identical resume on the CPU,
//! `--init-from`, `predict` on the shipped sample digits, and files written before the
//! `layers` metadata still loading in each command.

mod common;

use common::cli::{bits, edit_metadata, model_and_checkpoint, s, succeed, train_with};
use mnist_gpu::model::INPUT;
use mnist_gpu::modelfile;
use safetensors::{Dtype, SafeTensors};
use std::path::Path;
use std::process::Output;

/// Run the binary; it must succeed.
fn mnist_gpu(args: &[&str]) -> Output {
    succeed(args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn train_cpu(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--cpu-fallback",
        "--train-limit",
        "2000",
        "--test-limit",
        "500",
        "--out-dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    mnist_gpu(&args)
}

#[test]
fn a_run_writes_every_file_and_eval_reproduces_its_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let out = stdout(&train_cpu(&dir, &["--epochs", "2", "--hidden", "32,16"]));
    assert_every_file_written_and_listed(&dir, &out);
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    assert_model_file_layout(&dir.join("model.safetensors"));
    // eval gives exactly the accuracy train reported for the last epoch.
    let val = records[1]["val_accuracy"].as_f64().unwrap() * 100.0;
    assert_eval_reproduces(&dir.join("model.safetensors"), val, &out);
}

/// Every file of the run directory exists and is named in `out`; both pictures have
/// sensible sizes.
fn assert_every_file_written_and_listed(dir: &Path, out: &str) {
    for name in [
        "model.safetensors",
        "checkpoint.safetensors",
        "predictions.png",
        "curves.png",
        "metrics.jsonl",
    ] {
        assert!(dir.join(name).is_file(), "{name} missing");
        assert!(
            out.contains(&dir.join(name).display().to_string()),
            "{name} not listed:\n{out}"
        );
    }
    let grid = image::open(dir.join("predictions.png")).unwrap();
    assert!(grid.width() >= 10 * 28 && grid.height() >= 10 * 28);
    let curves = image::open(dir.join("curves.png")).unwrap();
    assert!(curves.width() > 400 && curves.height() > 200);
}

/// The `--hidden 32,16` model file after two epochs: tensor names, shapes, dtypes, step
/// counter and architecture metadata.
fn assert_model_file_layout(model: &Path) {
    // The model file: PyTorch names and shapes, F32 (plus the i64 step counter), metadata.
    let bytes = std::fs::read(model).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let expect: &[(&str, &[usize])] = &[
        ("1.weight", &[INPUT]),
        ("1.bias", &[INPUT]),
        ("1.running_mean", &[INPUT]),
        ("1.running_var", &[INPUT]),
        ("2.weight", &[32, INPUT]),
        ("2.bias", &[32]),
        ("4.weight", &[16, 32]),
        ("4.bias", &[16]),
        ("6.weight", &[10, 16]),
        ("6.bias", &[10]),
    ];
    for (name, shape) in expect {
        let t = st.tensor(name).unwrap_or_else(|_| panic!("{name} missing"));
        assert_eq!((t.shape(), t.dtype()), (*shape, Dtype::F32), "{name}");
    }
    let steps = st.tensor("1.num_batches_tracked").unwrap();
    assert_eq!(steps.dtype(), Dtype::I64);
    assert_eq!(i64::from_le_bytes(steps.data().try_into().unwrap()), 2 * 63);
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let layers = "batchnorm,dense(32,relu),dense(16,relu),dense(10)";
    let architecture = [&meta["layers"], &meta["hidden"], &meta["raw_pixels"]];
    assert_eq!(architecture, [layers, "32,16", "false"]);
}

/// `eval` of `model` on the same 500 test samples prints `val` (percent), as train's
/// output `out` did, and a 10-row confusion matrix.
fn assert_eval_reproduces(model: &Path, val: f64, out: &str) {
    let eval = stdout(&mnist_gpu(&[
        "eval",
        "--cpu-fallback",
        "--test-limit",
        "500",
        "--model",
        model.to_str().unwrap(),
    ]));
    assert!(
        eval.contains(&format!("accuracy: {val:.2}%")),
        "eval says:\n{eval}\ntrain said {val:.2}%"
    );
    assert!(out.contains(&format!("Test accuracy: {val:.2}%")));
    assert_eq!(
        eval.lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .count(),
        10,
        "confusion rows:\n{eval}"
    );
}

#[test]
fn resume_is_bit_identical_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    let resumed = tmp.path().join("resumed");
    train_cpu(&straight, &["--epochs", "3", "--seed", "9"]);
    train_cpu(&resumed, &["--epochs", "1", "--seed", "9"]);
    let out = stdout(&mnist_gpu(&[
        "train",
        "--cpu-fallback",
        "--resume",
        resumed.to_str().unwrap(),
        "--epochs",
        "3",
    ]));
    assert!(
        out.contains("resuming") && out.contains("Epoch 3/3") && !out.contains("Epoch 1/3"),
        "{out}"
    );
    let a = modelfile::load_model(&straight.join("model.safetensors")).unwrap();
    let b = modelfile::load_model(&resumed.join("model.safetensors")).unwrap();
    assert_eq!(bits(&a), bits(&b));
    let (_, state_a) =
        modelfile::load_checkpoint(&straight.join("checkpoint.safetensors")).unwrap();
    let (_, state_b) = modelfile::load_checkpoint(&resumed.join("checkpoint.safetensors")).unwrap();
    assert_eq!(state_a.optim, state_b.optim);
    assert_eq!(state_b.epochs_done, 3);
    // The metrics of the resumed run cover all three epochs, identical but for timing.
    let strip = |p: &Path| -> Vec<(f64, f64)> {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|r| {
                (
                    r["loss"].as_f64().unwrap(),
                    r["val_accuracy"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(strip(&straight), strip(&resumed));
}

#[test]
fn init_from_starts_from_the_given_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let second = tmp.path().join("second");
    train_cpu(&first, &["--epochs", "2"]);
    let model = first.join("model.safetensors");
    let out = stdout(&train_cpu(
        &second,
        &["--epochs", "1", "--init-from", model.to_str().unwrap()],
    ));
    let records = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // It says what it loaded: the architecture and the file.
    let said = format!(
        "init: 784 → BatchNorm → Dense 128 (ReLU) → Dense 10 (softmax) from {}",
        model.display()
    );
    assert!(out.contains(&said), "{out}");
    let before = records(&first);
    let after = records(&second);
    // Starting from trained weights, the first epoch's training loss is far below a fresh start's.
    assert!(
        after[0]["loss"].as_f64().unwrap() < before[0]["loss"].as_f64().unwrap() * 0.7,
        "{out}"
    );
    let (_, state) = modelfile::load_checkpoint(&second.join("checkpoint.safetensors")).unwrap();
    assert_eq!(
        state.optim.step, 63,
        "a fresh optimiser counts only this run's steps"
    );
}

#[test]
fn predict_gets_the_sample_digits_right() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    mnist_gpu(&[
        "train",
        "--cpu-fallback",
        "--train-limit",
        "20000",
        "--test-limit",
        "100",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--out-dir",
        dir.to_str().unwrap(),
    ]);
    let samples = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join("digits");
    let mut files: Vec<String> = std::fs::read_dir(&samples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "png" || e == "jpg" || e == "jpeg")
        })
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "sample digits missing: {files:?}");
    let model = dir.join("model.safetensors");
    let mut args = vec!["predict", "--json", "--model", model.to_str().unwrap()];
    args.extend(files.iter().map(String::as_str));
    let json: serde_json::Value = serde_json::from_str(&stdout(&mnist_gpu(&args))).unwrap();
    for result in json.as_array().unwrap() {
        let file = result["file"].as_str().unwrap();
        // Sample files are named digit-<label>-<style>.<ext>.
        let name = Path::new(file).file_name().unwrap().to_str().unwrap();
        let label: u64 = name.split('-').nth(1).unwrap().parse().unwrap();
        assert_eq!(result["digit"].as_u64().unwrap(), label, "{file}: {result}");
        let top3 = result["top3"].as_array().unwrap();
        assert_eq!(top3.len(), 3);
        let p0 = top3[0][1].as_f64().unwrap();
        assert!(p0 >= top3[1][1].as_f64().unwrap() && p0 > 0.5, "{result}");
        assert_eq!(
            result["warnings"],
            serde_json::json!([]),
            "{file}: {result}"
        );
    }
}

/// `predict` on a directory's every file, README.md included: each picture is predicted,
/// the one bad file gets its own error line and JSON entry, and the exit code is 1.
#[test]
fn predict_reads_every_file_and_reports_each_failure_on_its_own_line() {
    let tmp = tempfile::tempdir().unwrap();
    // Untrained weights: the answers are guesses, so every one carries the unsure warning.
    let model = tmp.path().join("untrained.safetensors");
    mnist_gpu::modelfile::save_model(
        &mnist_gpu::model::Params::init(&mnist_gpu::model::ModelConfig::default(), 3),
        0,
        &model,
    )
    .unwrap();
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/digits");
    let mut files: Vec<String> = std::fs::read_dir(&samples)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    files.sort();
    let readme = files.iter().position(|f| f.ends_with("README.md")).unwrap();
    let pictures = files.len() - 1;
    for json in [false, true] {
        let mut args = vec!["predict", "--model", model.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        args.extend(files.iter().map(String::as_str));
        let out = common::cli::mnist_gpu(&args);
        let (out_text, err_text) = (stdout(&out), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{out_text}\n{err_text}");
        let errors: Vec<&str> = err_text
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{err_text}");
        assert!(errors[0].contains(&files[readme]) && errors[0].contains("not a PNG or JPEG"));
        let unsure = err_text
            .lines()
            .filter(|l| l.contains("the model is unsure"))
            .count();
        assert_eq!(unsure, pictures, "{err_text}");
        assert!(err_text.contains(&format!("note: 1 of {} images", files.len())));
        if !json {
            assert_eq!(out_text.lines().count(), pictures, "{out_text}");
            continue;
        }
        let entries: Vec<serde_json::Value> = serde_json::from_str(&out_text).unwrap();
        assert_eq!(entries.len(), files.len());
        for (entry, file) in entries.iter().zip(&files) {
            assert_eq!(entry["file"], *file);
            if file == &files[readme] {
                assert!(entry["error"]
                    .as_str()
                    .unwrap()
                    .contains("not a PNG or JPEG"));
                assert!(entry.get("digit").is_none());
            } else {
                assert!(entry["digit"].as_u64().unwrap() < 10, "{entry}");
                assert!(entry["warnings"][0].as_str().unwrap().contains("unsure"));
            }
        }
    }
}

/// Model and checkpoint files written before the `layers` metadata (the architecture in
/// `hidden` alone) still load in every command that reads one, to the same parameters
/// and the same answers as the files with `layers`.
#[test]
fn files_written_before_the_layers_metadata_still_load() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (model, checkpoint) = model_and_checkpoint(root);
    let old = |src: &Path, dst: &Path| {
        edit_metadata(src, dst, |m| {
            let layers = m.remove("layers");
            assert_eq!(
                layers.as_deref(),
                Some("batchnorm,dense(128,relu),dense(10)")
            );
            assert_eq!(m["hidden"], "128");
        });
    };
    let old_model = root.join("old-model.safetensors");
    old(&model, &old_model);
    let resume_dir = root.join("old-run");
    std::fs::create_dir(&resume_dir).unwrap();
    old(&checkpoint, &resume_dir.join("checkpoint.safetensors"));
    assert_eq!(
        modelfile::load_model(&old_model).unwrap(),
        modelfile::load_model(&model).unwrap()
    );
    let digit = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/digits/digit-7-large-light.png");
    for command in [
        vec!["eval", "--cpu-fallback", "--test-limit", "100", "--model"],
        vec!["predict", "--json", digit.to_str().unwrap(), "--model"],
    ] {
        let answer = |file: &Path| {
            let mut args = command.clone();
            args.push(file.to_str().unwrap());
            stdout(&mnist_gpu(&args)).replace(file.to_str().unwrap(), "MODEL")
        };
        assert_eq!(answer(&old_model), answer(&model), "{}", command[0]);
    }
    let init = s(&root.join("init"));
    succeed(&train_with(&["--init-from", &s(&old_model)], &init));
    let resume = resume_dir.to_str().unwrap();
    mnist_gpu(&["train", "--cpu-fallback", "--resume", resume]);
    // What the resumed run writes has `layers`.
    let written = std::fs::read(resume_dir.join("model.safetensors")).unwrap();
    let (_, header) = SafeTensors::read_metadata(&written).unwrap();
    assert_eq!(
        header.metadata().as_ref().unwrap()["layers"],
        "batchnorm,dense(128,relu),dense(10)"
    );
}
