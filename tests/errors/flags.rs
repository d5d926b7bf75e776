//! Flags with bad values, outputs that cannot be written, and a model too large for
//! the adapter.

use crate::common::cli::*;
use crate::common::skip::{skip, ADAPTER_FIX};
use mnist_gpu::model::{ModelConfig, Params};
use mnist_gpu::modelfile;
use std::path::Path;

/// A case that trains a tiny CPU run, writing under `out`, with the flags `extra`.
fn flag(out: &str, what: &str, extra: &[&str], words: &[&str]) -> Case {
    let mut c = case(what, &[], words);
    c.args = train_with(extra, out);
    c
}

/// A case that trains with the device flags `extra`, so not with `--cpu-fallback`
/// (which conflicts with them); `one_line` when the error must fit on one line.
fn on_device(out: &str, what: &str, extra: &[&str], words: &[&str], one_line: bool) -> Case {
    let mut args: Vec<String> = train_with(extra, out);
    args.retain(|a| a != "--cpu-fallback");
    Case {
        what: what.to_string(),
        args,
        words: words.iter().map(|s| s.to_string()).collect(),
        one_line,
    }
}

/// Batch sizes, epoch counts and learning rates that are zero, negative, not numbers or
/// not finite.
fn training_values(out: &str) -> Vec<Case> {
    vec![
        flag(
            out,
            "batch 0",
            &["--batch-size", "0"],
            &["--batch-size", "at least 1"],
        ),
        flag(out, "batch -3", &["--batch-size", "-3"], &["--batch-size"]),
        flag(
            out,
            "batch x",
            &["--batch-size", "x"],
            &["--batch-size", "'x'"],
        ),
        flag(
            out,
            "epochs 0",
            &["--epochs", "0"],
            &["--epochs", "at least 1"],
        ),
        flag(out, "lr 0", &["--lr", "0"], &["--lr", "above 0"]),
        flag(out, "lr -1", &["--lr", "-1"], &["--lr", "above 0"]),
        flag(out, "lr NaN", &["--lr", "NaN"], &["--lr", "finite"]),
        flag(out, "lr inf", &["--lr", "inf"], &["--lr", "finite"]),
        flag(out, "lr -inf", &["--lr=-inf"], &["--lr", "finite"]),
        flag(out, "lr word", &["--lr", "fast"], &["--lr", "not a number"]),
    ]
}

/// `--hidden` lists that are empty, hold a bad width, or make a model too large.
fn hidden_layers(out: &str) -> Vec<Case> {
    vec![
        flag(
            out,
            "hidden empty",
            &["--hidden", ""],
            &["--hidden", "empty"],
        ),
        flag(
            out,
            "hidden 0",
            &["--hidden", "0"],
            &["--hidden", "at least 1"],
        ),
        flag(
            out,
            "hidden abc",
            &["--hidden", "abc"],
            &["--hidden", "'abc'"],
        ),
        flag(
            out,
            "hidden 128,,64",
            &["--hidden", "128,,64"],
            &["--hidden", "empty layer width"],
        ),
        flag(
            out,
            "hidden too wide",
            &["--hidden", "200000"],
            &["--hidden", "200000 is too large"],
        ),
        flag(
            out,
            "hidden too many parameters",
            &["--hidden", "65536,65536"],
            &["--hidden", "at most 100000000"],
        ),
    ]
}

/// Sample limits and seeds out of range.
fn limits_and_seeds(out: &str) -> Vec<Case> {
    vec![
        flag(
            out,
            "train-limit 0",
            &["--train-limit", "0"],
            &["--train-limit", "at least 1"],
        ),
        flag(
            out,
            "test-limit 0",
            &["--test-limit", "0"],
            &["--test-limit", "at least 1"],
        ),
        flag(
            out,
            "train-limit -5",
            &["--train-limit", "-5"],
            &["--train-limit", "'-5' is not a positive whole number"],
        ),
        flag(
            out,
            "seed -1",
            &["--seed", "-1"],
            &[
                "--seed",
                "'-1' is not a whole number from 0 to 18446744073709551615",
            ],
        ),
        flag(
            out,
            "seed 2^64",
            &["--seed", "18446744073709551616"],
            &["--seed", "from 0 to 18446744073709551615"],
        ),
    ]
}

/// An unknown flag, and a metrics file in a missing directory.
fn unknown_flag_and_metrics(out: &str) -> Vec<Case> {
    vec![
        flag(out, "unknown flag", &["--frobnicate"], &["--frobnicate"]),
        flag(
            out,
            "metrics in a missing directory",
            &["--metrics", "/no/such/dir/m.jsonl"],
            &["--metrics", "does not exist", "/no/such/dir/m.jsonl"],
        ),
    ]
}

/// An unknown `--backend`, and `--backend` together with `--cpu-fallback`.
fn backends(out: &str) -> Vec<Case> {
    vec![
        on_device(
            out,
            "unknown backend",
            &["--backend", "foo"],
            &["unknown --backend value 'foo'", "vulkan, gl, metal, dx12"],
            true,
        ),
        flag(
            out,
            "--backend with --cpu-fallback",
            &["--backend", "vulkan"],
            &["--backend", "--cpu-fallback"],
        ),
    ]
}

/// An `--adapter` index out of range and an `--adapter` name that matches none.
fn adapters(out: &str) -> Vec<Case> {
    // With adapters present the error lists them; without, it says there are none.
    // Either way it points at --cpu-fallback.
    // Whether wgpu sees any adapter here (Mesa's lavapipe counts).
    let listed: &[&str] = if adapter_listed(None).0 {
        &["matches no adapter; found:", "[0] "]
    } else {
        &["no GPU adapter"]
    };
    let mut words = vec!["--cpu-fallback"];
    words.extend_from_slice(listed);
    let with = |w: &'static str| {
        let mut v = words.clone();
        v.push(w);
        v
    };
    vec![
        on_device(
            out,
            "adapter index out of range",
            &["--adapter", "99"],
            &with("'99'"),
            false,
        ),
        on_device(
            out,
            "adapter name not found",
            &["--adapter", "nosuchgpu"],
            &with("'nosuchgpu'"),
            false,
        ),
    ]
}

#[test]
fn bad_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let out = s(&tmp.path().join("out"));
    let mut cases = training_values(&out);
    cases.extend(hidden_layers(&out));
    cases.extend(limits_and_seeds(&out));
    cases.extend(unknown_flag_and_metrics(&out));
    cases.extend(backends(&out));
    cases.extend(adapters(&out));
    check(cases);
}

#[test]
fn unwritable_outputs_are_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = s(&file.join("run"));
    let model = s(&tmp.path().join("m.safetensors"));
    modelfile::save_model(
        &Params::init(&ModelConfig::default(), 1),
        0,
        Path::new(&model),
    )
    .unwrap();
    check(vec![
        case(
            "--out-dir under a regular file",
            &train_with(&[], &under_file)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            &["output directory", &under_file, "is not writable"],
        ),
        case(
            "--out-dir on a read-only file system",
            &train_with(&[], "/proc/mnist-gpu-run")
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            &["output directory /proc/mnist-gpu-run is not writable"],
        ),
        case(
            "--confusion-png in a missing directory",
            &[
                "eval",
                "--cpu-fallback",
                "--test-limit",
                "10",
                "--model",
                &model,
                "--confusion-png",
                "/no/such/dir/confusion.png",
            ],
            &["/no/such/dir/confusion.png"],
        ),
    ]);
    // Nothing was trained: the failure came before the data was even read.
    assert!(!file.join("run").exists());
}

/// A model too large for the adapter's storage-binding limit is refused with wgpu's
/// reason and the `--cpu-fallback` hint (lavapipe: 128 MiB bindings; 784 × 65536 f32 is
/// 196 MiB).
#[test]
fn gpu_model_too_large_for_the_adapter() {
    if !adapter_listed(None).0 {
        skip(
            "gpu_model_too_large_for_the_adapter",
            "no GPU adapter",
            ADAPTER_FIX,
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = s(&tmp.path().join("out"));
    let mut args = train_with(&["--hidden", "65536", "--adapter", "vulkan"], &out);
    args.retain(|a| a != "--cpu-fallback");
    let mut c = case(
        "--hidden 65536 on the GPU",
        &[],
        &["GPU error", "create_buffer", "--cpu-fallback"],
    );
    c.args = args;
    check(vec![c]);
}

/// Paths and values that are not what they seem: `~` the shell did not expand, an
/// out-dir that is a file or a dangling link, `predict -`, a learning rate too small for
/// 32-bit floats (named as given, not as the 0 or 47-digit decimal it parses to).
#[test]
fn values_that_are_not_what_they_seem() {
    let tmp = tempfile::tempdir().unwrap();
    let out = s(&tmp.path().join("out"));
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let dangling = tmp.path().join("dangling");
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();
    let train = |what: &str, extra: &[&str], words: &[&str]| {
        let mut c = case(what, &[], words);
        c.args = train_with(extra, &out);
        c
    };
    let mut out_dir_file = train("out-dir is a file", &[], &[&s(&file), "not a directory"]);
    out_dir_file.args = train_with(&[], &s(&file));
    let mut out_dir_dangling = train(
        "out-dir is a dangling link",
        &[],
        &[&s(&dangling), "not a directory", "does not exist"],
    );
    out_dir_dangling.args = train_with(&[], &s(&dangling));
    let (model, _) = model_and_checkpoint(tmp.path());
    check(vec![
        train(
            "out-dir ~",
            &["--out-dir=~/runs"],
            &["'~/runs'", "did not expand"],
        ),
        train(
            "metrics ~",
            &["--metrics", "~/m.jsonl"],
            &["--metrics", "'~/m.jsonl'"],
        ),
        out_dir_file,
        out_dir_dangling,
        case(
            "predict -",
            &["predict", "--model", &s(&model), "-"],
            &["standard input is not supported"],
        ),
        train(
            "lr 1e-50",
            &["--lr", "1e-50"],
            &["--lr", "'1e-50' is too small"],
        ),
        train(
            "lr 1e-45",
            &["--lr", "1e-45"],
            &["--lr", "'1e-45' is too small"],
        ),
    ]);
    assert!(!Path::new("~").exists(), "no directory named '~' is made");
    assert!(!tmp.path().join("nowhere").exists());
}
