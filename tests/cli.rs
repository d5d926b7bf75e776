//! The `mnist-gpu` binary end to end: a small CPU training run, the train-limit note, and
//! a missing data file. (Every bad input, table-driven, is in tests/errors/.)

mod common;

use common::cli::{bin, mnist_gpu, no_panic, succeed, text};

#[test]
fn small_cpu_run_prints_keras_style_lines_and_writes_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("m.jsonl");
    let out = mnist_gpu(&[
        "train",
        "--cpu-fallback",
        "--epochs",
        "2",
        "--train-limit",
        "2000",
        "--test-limit",
        "500",
        "--batch-size",
        "64",
        "--metrics",
        metrics.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("train: 2000 × 28 × 28, test: 500 × 28 × 28"),
        "{stdout}"
    );
    assert!(stdout.contains("device: cpu"), "{stdout}");
    assert!(stdout.contains("batch 64 (32 steps/epoch)"), "{stdout}");
    assert_keras_epoch_lines(&stdout);
    assert!(stdout.contains("Test accuracy: "), "{stdout}");
    let records = finite_metric_records(&metrics);
    // The final line's accuracy is the last epoch's validation accuracy.
    let last = records[1]["val_accuracy"].as_f64().unwrap() * 100.0;
    assert!(
        stdout.contains(&format!("Test accuracy: {last:.2}%")),
        "{stdout}"
    );
}

/// Checks the two epochs' Keras-style lines: `Epoch k/2`, then the epoch's closing line.
fn assert_keras_epoch_lines(stdout: &str) {
    // Keras 3 style: `Epoch k/N` on its own line, then the epoch's closing line.
    let lines: Vec<&str> = stdout.lines().collect();
    for epoch in ["Epoch 1/2", "Epoch 2/2"] {
        let at = lines
            .iter()
            .position(|l| *l == epoch)
            .unwrap_or_else(|| panic!("no {epoch} line: {stdout}"));
        let line = lines[at + 1];
        assert!(line.starts_with("32/32 - "), "{line}");
        for key in [
            "s/step (",
            "samples/s)",
            "loss:",
            "accuracy:",
            "val_loss:",
            "val_accuracy:",
        ] {
            assert!(line.contains(key), "{line}");
        }
    }
}

/// Reads the metrics file, checking it holds two numbered epochs with every value finite.
fn finite_metric_records(metrics: &std::path::Path) -> Vec<serde_json::Value> {
    let records: Vec<serde_json::Value> = std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["epoch"], i + 1);
        for key in [
            "loss",
            "accuracy",
            "val_loss",
            "val_accuracy",
            "seconds",
            "samples_per_second",
        ] {
            assert!(r[key].as_f64().is_some_and(f64::is_finite), "{key} in {r}");
        }
    }
    records
}

#[test]
fn train_limit_above_the_data_set_is_clamped_with_a_note() {
    let out = mnist_gpu(&[
        "train",
        "--cpu-fallback",
        "--epochs",
        "1",
        "--train-limit",
        "99999999",
        "--test-limit",
        "100",
        "--batch-size",
        "1024",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("using all 60000"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn data_dir_with_a_missing_file_names_the_expected_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = mnist_gpu(&[
        "train",
        "--cpu-fallback",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.starts_with("error: ") && stderr.contains("train-images-idx3-ubyte"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
}

/// `mnist-gpu train … | head -1`: a closed stdout stops the run with a resumable
/// checkpoint and exit status 1; no panic, no run directory holding only `.lock`.
#[test]
fn a_closed_stdout_stops_training_with_a_checkpoint() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut child = bin()
        .args(["train", "--cpu-fallback", "--epochs", "1000"])
        .args(["--train-limit", "500", "--test-limit", "50"])
        .arg("--out-dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("train: 500"), "{first}");
    // The reader is dropped here: stdout is closed while the program still has lines to print.
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write to standard output (the reader closed it")
            && stderr.contains("--resume"),
        "{stderr}"
    );
    // Usually epoch 1; on a loaded machine the program may finish epochs into the pipe's
    // buffer before the reader is gone. Resuming trains on into the next epoch.
    let epoch: usize = stderr
        .split("interrupted in epoch ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no epoch named: {stderr}"));
    let epochs = (epoch + 1).to_string();
    let resumed = succeed(&[
        "train",
        "--cpu-fallback",
        "--resume",
        &dir.display().to_string(),
        "--epochs",
        &epochs,
    ]);
    assert!(text(&resumed.stdout).contains("resuming"));
}

/// `eval`/`predict > /dev/full` and an error message into `2>/dev/full`: exit status 1
/// (a write error), never a panic (101).
#[test]
fn a_full_output_stream_is_exit_1_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let model = untrained_model(tmp.path());
    let picture = vertical_stroke_picture(tmp.path());
    let runs: [(&[&str], bool); 3] = [
        (
            &[
                "eval",
                "--model",
                &model,
                "--cpu-fallback",
                "--test-limit",
                "20",
            ],
            true,
        ),
        (
            &["predict", "--model", &model, &picture.display().to_string()],
            true,
        ),
        (
            &["eval", "--model", "/nonexistent/model.safetensors"],
            false,
        ),
    ];
    for (args, on_stdout) in runs {
        let mut cmd = bin();
        cmd.args(args);
        if on_stdout {
            cmd.stdout(dev_full());
        } else {
            cmd.stderr(dev_full());
        }
        let out = cmd.output().unwrap();
        no_panic(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
        if on_stdout {
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains("cannot write to standard output"),
                "{stderr}"
            );
        }
    }
}

/// A 28×28 picture of a vertical stroke (a 1), saved as `digit.png` in `dir`.
fn vertical_stroke_picture(dir: &std::path::Path) -> std::path::PathBuf {
    let picture = dir.join("digit.png");
    let mut digit = image::GrayImage::new(28, 28);
    for y in 6..22 {
        digit.put_pixel(14, y, image::Luma([255]));
    }
    digit.save(&picture).unwrap();
    picture
}

/// `/dev/full` opened for writing: every write to it fails with "no space left".
fn dev_full() -> std::fs::File {
    std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap()
}

/// A model file with freshly initialised weights (no training needed to run `eval`).
fn untrained_model(dir: &std::path::Path) -> String {
    use mnist_gpu::model::{ModelConfig, Params};
    let path = dir.join("untrained.safetensors");
    mnist_gpu::modelfile::save_model(&Params::init(&ModelConfig::default(), 7), 0, &path).unwrap();
    path.display().to_string()
}

#[test]
fn eval_without_a_device_flag_says_it_evaluates_not_trains() {
    let dir = tempfile::tempdir().unwrap();
    let model = untrained_model(dir.path());
    let out = mnist_gpu(&["eval", "--model", &model, "--test-limit", "50"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Without a hardware GPU eval falls back to the CPU and says so; with one there is no note.
    if stderr.contains("on the CPU") {
        assert!(stderr.contains("evaluating on the CPU"), "{stderr}");
    }
    assert!(!stderr.contains("training"), "{stderr}");
}

#[test]
fn adapters_rejects_flags_it_does_not_use() {
    for flag in [["--adapter", "0"], ["--seed", "1"]] {
        let out = mnist_gpu(&["adapters", flag[0], flag[1]]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag:?}: {stderr}");
        assert!(
            stderr.contains("unexpected argument") && stderr.contains(flag[0]),
            "{stderr}"
        );
    }
}
