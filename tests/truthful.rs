//! Nothing broken is reported as success, and every message tells the truth: a run
//! whose validation metrics or parameters stop being finite is a divergence (and saves
//! no model), a model whose outputs overflow has no accuracy, empty or mis-shaped data
//! and impossible flags are refused before training, a truncated photo is not
//! classified, and the messages about files, checkpoints and devices say what is so.

mod common;

use common::cli::*;
use mnist_gpu::model::{ModelConfig, Params};
use mnist_gpu::modelfile;
use std::path::{Path, PathBuf};

/// A default model whose weights are finite but so large that its outputs overflow.
fn overflowing_model(path: &Path) {
    let mut params = Params::init(&ModelConfig::default(), 3);
    let kernel = params.layout.kernels[0].clone();
    params.trainable[kernel].fill(3e38);
    modelfile::save_model(&params, 0, path).unwrap();
}

/// A JPEG of test digit 0, and the same file cut to its first third.
fn jpegs(dir: &Path) -> (String, String) {
    let m = mnist_gpu::data::Mnist::load(&mnist_gpu::data::builtin_dir()).unwrap();
    let img = image::GrayImage::from_fn(112, 112, |x, y| {
        image::Luma([255 - m.test.image(0)[(y / 4 * 28 + x / 4) as usize]])
    });
    let whole = dir.join("digit.jpg");
    img.save(&whole).unwrap();
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    (s(&whole), s(&cut))
}

/// The run directory `name` under `root`.
fn out_dir(root: &Path, name: &str) -> String {
    s(&root.join(name))
}

/// Runs whose loss overflows or grows absurd: each reported as a divergence.
fn divergence_cases(root: &Path) -> Vec<Case> {
    vec![
        case(
            "--lr 1e30",
            &strs(&train_with(
                &["--lr", "1e30", "--train-limit", "3000"],
                &out_dir(root, "lr"),
            )),
            &["training diverged in epoch 1"],
        ),
        case(
            "--lr 1000: a finite but absurd loss",
            &strs(&train_with(
                &["--lr", "1000", "--train-limit", "1000"],
                &out_dir(root, "lr-1000"),
            )),
            &[
                "training diverged in epoch 1: the loss reached",
                "smaller --lr",
            ],
        ),
    ]
}

/// The overflowing model `huge` given to eval, predict (on the whole JPEG) and --init-from.
fn overflowing_model_cases(root: &Path, huge: &Path, cut: &str) -> Vec<Case> {
    vec![
        case(
            "eval of an overflowing model",
            &[
                "eval",
                "--cpu-fallback",
                "--test-limit",
                "100",
                "--model",
                &s(huge),
            ],
            &["huge.safetensors", "non-finite outputs"],
        ),
        case(
            "predict with an overflowing model",
            &["predict", "--model", &s(huge), &cut.replace("cut", "digit")],
            &["huge.safetensors", "non-finite outputs"],
        ),
        case(
            "--init-from an overflowing model",
            &strs(&train_with(
                &["--init-from", &s(huge)],
                &out_dir(root, "init"),
            )),
            &["huge.safetensors", "cannot be trained from"],
        ),
    ]
}

/// Empty and mis-shaped data sets, and a grid offset past the test set, refused.
fn bad_data_cases(root: &Path) -> Vec<Case> {
    let empty_train = root.join("empty-train");
    small_set_of(&empty_train, (28, 28), (28, 28), 0, 8);
    let empty_test = root.join("empty-test");
    small_set_of(&empty_test, (28, 28), (28, 28), 40, 0);
    let wide = root.join("wide");
    small_set_of(&wide, (14, 56), (14, 56), 40, 8);
    vec![
        case(
            "an empty training set",
            &strs(&train_with(
                &["--data-dir", &s(&empty_train)],
                &out_dir(root, "e1"),
            )),
            &["train-images-idx3-ubyte", "holds no images"],
        ),
        case(
            "an empty test set",
            &strs(&train_with(
                &["--data-dir", &s(&empty_test)],
                &out_dir(root, "e2"),
            )),
            &["t10k-images-idx3-ubyte", "holds no images"],
        ),
        case(
            "14×56 images",
            &strs(&train_with(&["--data-dir", &s(&wide)], &out_dir(root, "w"))),
            &["14×56", "28×28"],
        ),
        case(
            "--grid-offset past the test set",
            &strs(&train_with(&["--grid-offset", "10"], &out_dir(root, "g"))),
            &["--grid-offset 10", "holds 10 images"],
        ),
    ]
}

#[test]
fn broken_results_are_never_success() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let huge = root.join("huge.safetensors");
    overflowing_model(&huge);
    let (model, _) = model_and_checkpoint(root);
    let (_, cut) = jpegs(root);
    let mut cases = divergence_cases(root);
    cases.extend(overflowing_model_cases(root, &huge, &cut));
    cases.extend(bad_data_cases(root));
    cases.push(case(
        "a truncated JPEG",
        &["predict", "--model", &s(&model), &cut],
        &["cut.jpg", "truncated or corrupt"],
    ));
    check(cases);
    for name in ["lr", "init", "e1", "e2", "w", "g"] {
        assert!(
            !root.join(name).exists(),
            "{name}: a failed run left its directory"
        );
    }
    // No learning-rate advice when the starting model is the cause.
    let outp = mnist_gpu(&train_with(
        &["--init-from", &s(&huge)],
        &out_dir(root, "init"),
    ));
    assert!(
        !text(&outp.stderr).contains("--lr"),
        "{}",
        text(&outp.stderr)
    );
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A `--model` that is a symbolic link loop, and a data set whose labels link to themselves.
fn symlink_loops(root: &Path) -> (PathBuf, PathBuf) {
    let (a, b) = (root.join("loop-a"), root.join("loop-b"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let loop_data = broken_set(root, "loop-data", mnist_gpu::data::TRAIN_LABELS, |p| {
        std::fs::remove_file(p).unwrap();
        std::os::unix::fs::symlink(p, p).unwrap();
    });
    (a, loop_data)
}

/// A missing or looping model, looping data, and a bad `--backend`, each named.
fn path_and_backend_cases(root: &Path) -> Vec<Case> {
    let (a, loop_data) = symlink_loops(root);
    let out = s(&root.join("out"));
    vec![
        case(
            "a missing model",
            &[
                "eval",
                "--cpu-fallback",
                "--model",
                "/no/such/model.safetensors",
            ],
            &["/no/such/model.safetensors: does not exist"],
        ),
        case(
            "a symlink loop as --model",
            &["eval", "--cpu-fallback", "--model", &s(&a)],
            &["loop-a", "symbolic link loop"],
        ),
        case(
            "a symlink loop in the data",
            &strs(&train_with(&["--data-dir", &s(&loop_data)], &out)),
            &["train-labels-idx1-ubyte", "symbolic link loop"],
        ),
        case(
            "--backend checked before the data",
            &[
                "train",
                "--backend",
                "nonsense",
                "--data-dir",
                "/no/such/data",
            ],
            &["--backend", "nonsense"],
        ),
    ]
}

/// An unknown `--adapter`, refused before the data is looked at.
fn adapter_case() -> Case {
    // The adapter error lists the adapters found, one per line.
    let mut adapter = case(
        "--adapter checked before the data",
        &[
            "train",
            "--adapter",
            "no-such-adapter-anywhere",
            "--data-dir",
            "/no/such/data",
        ],
        &["no-such-adapter-anywhere"],
    );
    adapter.one_line = false;
    adapter
}

#[test]
fn messages_say_what_is_so() {
    let tmp = tempfile::tempdir().unwrap();
    check(path_and_backend_cases(tmp.path()));
    check(vec![adapter_case()]);
    // An OS error is printed once, not twice.
    let outp = mnist_gpu(&strings(&[
        "eval",
        "--cpu-fallback",
        "--model",
        "/proc/self/mem",
    ]));
    let stderr = text(&outp.stderr);
    assert!(stderr.matches("os error").count() <= 1, "{stderr}");
}

/// `train --resume DIR --epochs EPOCHS` on the CPU.
fn resume_args(dir: &Path, epochs: &str) -> Vec<String> {
    strings(&[
        "train",
        "--cpu-fallback",
        "--resume",
        &s(dir),
        "--epochs",
        epochs,
    ])
}

/// A small two-epoch CPU run in `dir`, which must succeed.
fn train_two_epochs(dir: &Path) {
    let args = strings(&[
        "train",
        "--cpu-fallback",
        "--train-limit",
        "300",
        "--test-limit",
        "20",
        "--epochs",
        "2",
        "--out-dir",
        &s(dir),
    ]);
    assert!(mnist_gpu(&args).status.success());
}

/// Resuming `moved`, whose checkpoint names another device, says so and trains on.
fn assert_resumed_on_another_device(moved: &Path) {
    let outp = mnist_gpu(&resume_args(moved, "3"));
    let stderr = text(&outp.stderr);
    assert!(outp.status.success(), "{stderr}");
    assert!(
        stderr.contains("this run started on llvmpipe (Vulkan); it continues on cpu"),
        "{stderr}"
    );
    let stdout = text(&outp.stdout);
    let said = format!("resuming {} after epoch 2 of 3", s(moved));
    assert!(
        stdout.contains(&said) && stdout.contains("device: cpu"),
        "{stdout}"
    );
}

#[test]
fn resume_messages_say_what_is_so() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dir = root.join("run");
    train_two_epochs(&dir);
    check(vec![case(
        "--epochs not above the epochs done",
        &strs(&resume_args(&dir, "2")),
        &["has done 2 of its epochs", "--epochs N with N above 2"],
    )]);
    let checkpoint = dir.join("checkpoint.safetensors");
    // A relative data directory that is not found from here.
    let moved = root.join("moved");
    std::fs::create_dir(&moved).unwrap();
    edit_metadata(&checkpoint, &moved.join("checkpoint.safetensors"), |m| {
        m.insert("data_dir".into(), "some/relative/mnist".into());
    });
    check(vec![case(
        "a relative data directory",
        &strs(&resume_args(&moved, "3")),
        &[
            "some/relative/mnist",
            "relative to the directory the run was started in",
            "--data-dir",
        ],
    )]);
    // Another device than the run started on: said, then trained.
    edit_metadata(&checkpoint, &moved.join("checkpoint.safetensors"), |m| {
        m.insert("device".into(), "llvmpipe (Vulkan)".into());
    });
    assert_resumed_on_another_device(&moved);
}
