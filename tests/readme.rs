//! The deterministic figures of the README and docs/, rerun: the default CPU run and the
//! convnet's (per-epoch metrics and final accuracy, README.md; the convnet must reach
//! 99.1%), the raw-pixels paragraph (docs/internals.md), the PyTorch snippets' accuracy
//! (docs/cli.md; computed here independently from the saved tensors), the 6,000-sample CPU figure
//! (docs/performance.md), the photo-set score and the `predict` lines (README.md). Each
//! test fails when a document disagrees with what the program does today, so a change
//! that moves a number makes the documents follow.

mod common;

use common::photo::read_photo_set;
use common::run::{augmented_convnet_run, augmented_run, convnet_run, default_run, DefaultRun};
use mnist_gpu::data::{builtin_dir, Mnist};
use safetensors::SafeTensors;
use std::path::Path;
use std::process::Command;

fn readme() -> String {
    doc("README.md")
}

/// A document of the repository (`README.md`, `docs/…`), by its path from the root.
fn doc(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The part of `text` from the heading `heading` to the next heading (or the end).
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("no heading '{heading}'"));
    let rest = &text[start..];
    let end = rest[1..].find("\n#").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

/// The number written right after the first `prefix` in `text` (digits, `.`, `-`).
fn number_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    let at = text
        .find(prefix)
        .unwrap_or_else(|| panic!("README lacks '{prefix}'"))
        + prefix.len();
    let rest = &text[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].trim_end_matches('.')
}

/// Whether `value` printed to the README figure's precision is that figure.
fn agrees(figure: &str, value: f64) -> bool {
    let decimals = figure.split_once('.').map_or(0, |(_, d)| d.len());
    format!("{value:.decimals$}") == figure
}

fn check(what: &str, figure: &str, value: f64, wrong: &mut Vec<String>) {
    if !agrees(figure, value) {
        wrong.push(format!(
            "{what}: the document says {figure}, the program gives {value}"
        ));
    }
}

fn train(args: &[&str], dir: &Path) -> (String, Vec<serde_json::Value>) {
    let out = Command::new(env!("CARGO_BIN_EXE_mnist-gpu"))
        .args(args)
        .arg("--out-dir")
        .arg(dir)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?}: {stdout}");
    (stdout, metrics(dir))
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The metrics part of a closing line: from ` - loss:` on.
fn metrics_part(line: &str) -> &str {
    &line[line
        .find(" - loss:")
        .unwrap_or_else(|| panic!("no metrics in '{line}'"))..]
}

#[test]
fn the_default_run_block_shows_what_the_program_prints() {
    let wrong = check_run_block(
        "$ cargo run --release -- train --cpu-fallback\n",
        default_run(),
        "Default flags give **",
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The convnet's run block and figure, and the accuracy the convnet must reach.
#[test]
fn the_convnet_block_shows_what_the_program_prints() {
    let run = convnet_run();
    let wrong = check_run_block(
        "$ mnist-gpu train --model convnet --cpu-fallback\n",
        run,
        "The convnet reaches **",
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("Test accuracy: "))
        .unwrap();
    let accuracy: f64 = number_after(line, "Test accuracy: ").parse().unwrap();
    assert!(accuracy >= 99.1, "the convnet reached only {accuracy}%");
}

/// The table of augmented training: each row's test accuracy, test loss and last
/// epoch's training accuracy are what its command gives (the augmented runs train here).
#[test]
fn the_augmented_training_table_is_what_the_runs_give() {
    let readme = readme();
    let table = section(&readme, "## Augmented training");
    let runs = [
        ("mnist-gpu train --cpu-fallback", default_run()),
        ("mnist-gpu train --cpu-fallback --augment", augmented_run()),
        (
            "mnist-gpu train --model convnet --cpu-fallback",
            convnet_run(),
        ),
        (
            "mnist-gpu train --model convnet --cpu-fallback --augment",
            augmented_convnet_run(),
        ),
    ];
    let mut wrong = Vec::new();
    for (command, run) in runs {
        let row = format!("| `{command}` | ");
        let cells: Vec<&str> = table
            .lines()
            .find_map(|l| l.strip_prefix(&row))
            .unwrap_or_else(|| panic!("no row for {command}"))
            .split(" | ")
            .map(|c| c.trim_end_matches(" |").trim_end_matches('%'))
            .collect();
        let last = metrics(&run.dir).pop().expect("an epoch");
        let value = |key: &str| last[key].as_f64().unwrap();
        check(
            &format!("{command}: test accuracy"),
            cells[0],
            value("val_accuracy") * 100.0,
            &mut wrong,
        );
        check(
            &format!("{command}: test loss"),
            cells[1],
            value("val_loss"),
            &mut wrong,
        );
        check(
            &format!("{command}: training accuracy"),
            cells[2],
            value("accuracy") * 100.0,
            &mut wrong,
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The README block that starts with `command`: its model and header lines are printed
/// by `run`, each epoch shown has the metrics `run` printed for it, and its final line
/// and the bold figure after `bold` are `run`'s test accuracy. What disagrees.
fn check_run_block(command: &str, run: &DefaultRun, bold: &str) -> Vec<String> {
    let readme = readme();
    let start = readme.find(command).expect("the run's block");
    let block: Vec<&str> = readme[start..]
        .lines()
        .take_while(|l| *l != "```")
        .collect();
    let printed: Vec<&str> = run.stdout.lines().collect();
    let mut wrong = Vec::new();
    let mut epochs_shown = 0;
    for (i, line) in block.iter().enumerate() {
        if line.starts_with("train: ") || line.starts_with("model: ") {
            if !printed.contains(line) {
                wrong.push(format!("'{line}' is not printed"));
            }
        } else if line.starts_with("Epoch ") {
            epochs_shown += 1;
            let at = printed
                .iter()
                .position(|l| l == line)
                .expect("epoch printed");
            if metrics_part(block[i + 1]) != metrics_part(printed[at + 1]) {
                wrong.push(format!(
                    "{line}: README '{}', printed '{}'",
                    block[i + 1],
                    printed[at + 1]
                ));
            }
        } else if line.starts_with("Test accuracy: ") && !printed.contains(line) {
            wrong.push(format!("'{line}' is not printed"));
        }
    }
    assert!(epochs_shown >= 3, "the block shows epochs: {block:?}");
    let final_line = printed
        .iter()
        .find(|l| l.starts_with("Test accuracy: "))
        .unwrap();
    let accuracy = number_after(final_line, "Test accuracy: ");
    let text = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    let figure = number_after(&text, bold);
    if figure != accuracy {
        wrong.push(format!(
            "the text says {figure}%, the run printed {accuracy}%"
        ));
    }
    wrong
}

#[test]
fn the_raw_pixels_paragraph_matches_a_raw_pixels_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, raw) = train(
        &["train", "--cpu-fallback", "--raw-pixels"],
        &tmp.path().join("raw"),
    );
    let scaled = metrics(&default_run().dir);
    let internals = doc("docs/internals.md");
    let text = section(&internals, "### Raw pixels");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let get =
        |m: &[serde_json::Value], epoch: usize, key: &str| m[epoch - 1][key].as_f64().unwrap();
    let column = |m: &[serde_json::Value], key: &str| -> Vec<f64> {
        m.iter().map(|r| r[key].as_f64().unwrap()).collect()
    };
    let min = |v: Vec<f64>| v.into_iter().fold(f64::INFINITY, f64::min);
    let max = |v: Vec<f64>| v.into_iter().fold(f64::NEG_INFINITY, f64::max);
    let mut wrong = Vec::new();
    let mut claim =
        |prefix: &str, value: f64| check(prefix, number_after(&text, prefix), value, &mut wrong);
    claim("training loss falls from ", get(&raw, 1, "loss"));
    claim("(epoch 1) to ", get(&raw, 10, "loss"));
    claim(
        "training accuracy reaches ",
        get(&raw, 10, "accuracy") * 100.0,
    );
    claim("validation loss goes ", get(&raw, 1, "val_loss"));
    claim(
        &format!("{}, ", number_after(&text, "validation loss goes ")),
        get(&raw, 2, "val_loss"),
    );
    let second = number_after(&text, "validation loss goes ");
    let second = number_after(&text, &format!("{second}, "));
    claim(&format!("{second}, "), get(&raw, 3, "val_loss"));
    claim("… ", get(&raw, 9, "val_loss"));
    claim(
        &format!("{}, **", number_after(&text, "… ")),
        get(&raw, 10, "val_loss"),
    );
    claim(
        "accuracy stays between ",
        min(column(&raw, "val_accuracy")) * 100.0,
    );
    claim("% and ", max(column(&raw, "val_accuracy")) * 100.0);
    claim("ends at **", get(&raw, 10, "val_accuracy") * 100.0);
    claim(
        "the default run: ",
        get(&scaled, 10, "val_accuracy") * 100.0,
    );
    claim("validation loss between ", min(column(&scaled, "val_loss")));
    claim(
        &format!("{} and ", number_after(&text, "validation loss between ")),
        max(column(&scaled, "val_loss")),
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every f32 tensor of the model file `model`, by name.
fn f32_tensors(model: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(model).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let values = |view: safetensors::tensor::TensorView| -> Vec<f32> {
        let words = view.data().chunks_exact(4);
        words
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let f32s = tensors
        .tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::F32);
    f32s.map(|(name, view)| (name, values(view))).collect()
}

/// The PyTorch snippet's computation, done here from the tensors by their PyTorch names:
/// BatchNorm1d(eps=1e-3) with the running statistics, Linear, ReLU, Linear, argmax.
fn snippet_accuracy(model: &Path) -> f64 {
    let tensors = f32_tensors(model);
    let f32s = |name: &str| tensors[name].clone();
    let (gamma, beta) = (f32s("1.weight"), f32s("1.bias"));
    let (mean, var) = (f32s("1.running_mean"), f32s("1.running_var"));
    let (w1, b1, w2, b2) = (
        f32s("2.weight"),
        f32s("2.bias"),
        f32s("4.weight"),
        f32s("4.bias"),
    );
    let hidden = b1.len();
    let test = Mnist::load(&builtin_dir()).unwrap().test;
    let mut correct = 0;
    for i in 0..test.len() {
        let x: Vec<f32> = test
            .image(i)
            .iter()
            .enumerate()
            .map(|(j, &p)| {
                (p as f32 / 255.0 - mean[j]) / (var[j] + 1e-3).sqrt() * gamma[j] + beta[j]
            })
            .collect();
        let h: Vec<f32> = (0..hidden)
            .map(|o| (b1[o] + (0..784).map(|j| x[j] * w1[o * 784 + j]).sum::<f32>()).max(0.0))
            .collect();
        let logits: Vec<f32> = (0..10)
            .map(|o| b2[o] + (0..hidden).map(|j| h[j] * w2[o * hidden + j]).sum::<f32>())
            .collect();
        let digit = (0..10)
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap();
        correct += (digit == test.labels[i] as usize) as usize;
    }
    correct as f64 / test.len() as f64
}

#[test]
fn the_pytorch_snippet_gives_the_accuracy_its_comment_says() {
    let cli = doc("docs/cli.md");
    let comment = number_after(&cli, ".float().mean())  # ");
    let accuracy = snippet_accuracy(&default_run().model());
    let mut wrong = Vec::new();
    check("the snippet's comment", comment, accuracy, &mut wrong);
    let text = cli.split_whitespace().collect::<Vec<_>>().join(" ");
    check(
        "the paragraph below it",
        number_after(&text, "checks that it gives the "),
        accuracy,
        &mut wrong,
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The convnet snippet's computation, done here from the tensors by their PyTorch names:
/// Conv2d(1, 32, 3), ReLU, MaxPool2d(2), Conv2d(32, 64, 3), ReLU, MaxPool2d(2), Flatten
/// (channel, row, column), Linear(1600, 10), argmax; written from PyTorch's definitions,
/// not with the program's kernels.
fn convnet_snippet_accuracy(model: &Path) -> f64 {
    use rayon::prelude::*;
    let tensors = f32_tensors(model);
    let f32s = |name: &str| tensors[name].clone();
    let conv1 = (f32s("0.weight"), f32s("0.bias"));
    let conv2 = (f32s("3.weight"), f32s("3.bias"));
    let dense = (f32s("8.weight"), f32s("8.bias"));
    let test = Mnist::load(&builtin_dir()).unwrap().test;
    let correct: usize = (0..test.len())
        .into_par_iter()
        .map(|i| {
            let x: Vec<f32> = test.image(i).iter().map(|&p| p as f32 / 255.0).collect();
            let a = pool(&conv_relu(&x, (1, 28), &conv1), (32, 26));
            let b = pool(&conv_relu(&a, (32, 13), &conv2), (64, 11));
            let (w, bias) = &dense;
            let logits: Vec<f32> = (0..10)
                .map(|o| bias[o] + (0..1600).map(|j| b[j] * w[o * 1600 + j]).sum::<f32>())
                .collect();
            let digit = (0..10)
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap();
            usize::from(digit == test.labels[i] as usize)
        })
        .sum();
    correct as f64 / test.len() as f64
}

/// A 3×3 `valid` convolution of `x` (`channels`×`side`×`side`) by `(weight [out, in, 3,
/// 3], bias)`, then ReLU.
fn conv_relu(
    x: &[f32],
    (channels, side): (usize, usize),
    (w, bias): &(Vec<f32>, Vec<f32>),
) -> Vec<f32> {
    let out = side - 2;
    let mut y = Vec::with_capacity(bias.len() * out * out);
    for (o, &b) in bias.iter().enumerate() {
        for r in 0..out {
            for c in 0..out {
                let mut sum = b;
                for i in 0..channels {
                    for (kr, kc) in (0..3).flat_map(|kr| (0..3).map(move |kc| (kr, kc))) {
                        let weight = w[((o * channels + i) * 3 + kr) * 3 + kc];
                        sum += weight * x[(i * side + r + kr) * side + c + kc];
                    }
                }
                y.push(sum.max(0.0));
            }
        }
    }
    y
}

/// 2×2 max-pooling with stride 2 of `channels`×`side`×`side` (an odd last row and
/// column dropped, as PyTorch does).
fn pool(x: &[f32], (channels, side): (usize, usize)) -> Vec<f32> {
    let out = side / 2;
    let mut y = Vec::with_capacity(channels * out * out);
    for ch in 0..channels {
        for r in 0..out {
            for c in 0..out {
                let at = |dr: usize, dc: usize| x[(ch * side + 2 * r + dr) * side + 2 * c + dc];
                y.push(at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1)));
            }
        }
    }
    y
}

#[test]
fn the_convnet_pytorch_snippet_gives_the_accuracy_its_comment_says() {
    let cli = doc("docs/cli.md");
    let comment = number_after(
        &cli,
        "(c(x.unsqueeze(1)).argmax(1) == y).float().mean())  # ",
    );
    let accuracy = convnet_snippet_accuracy(&convnet_run().model());
    let mut wrong = Vec::new();
    check(
        "the convnet snippet's comment",
        comment,
        accuracy,
        &mut wrong,
    );
    let text = cli.split_whitespace().collect::<Vec<_>>().join(" ");
    check(
        "the paragraph below it",
        number_after(&text, "checks that the convnet gives the "),
        accuracy,
        &mut wrong,
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_6000_sample_cpu_figure_is_what_the_cpu_gives() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "train",
        "--cpu-fallback",
        "--train-limit",
        "6000",
        "--epochs",
        "2",
    ];
    let (_, m) = train(&args, &tmp.path().join("run"));
    let text = doc("docs/performance.md")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let figure = number_after(&text, "The CPU path on the same subset ends at ");
    let mut wrong = Vec::new();
    check(
        "6,000-sample CPU run",
        figure,
        m[1]["val_accuracy"].as_f64().unwrap() * 100.0,
        &mut wrong,
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_photo_figures_are_what_predict_gives() {
    let readme = readme();
    let score = read_photo_set(&default_run().model());
    let claimed = number_after(&readme, "it reads **");
    let total = number_after(&readme, &format!("it reads **{claimed} of "));
    assert_eq!(
        (claimed, total),
        (
            score.correct.to_string().as_str(),
            score.total.to_string().as_str()
        ),
        "photo-set score"
    );
    check_predict_block(&readme, "docs/photos");
    check_predict_block(&readme, "docs/notebook");
}

/// The README's block `mnist-gpu predict … DIR/*.jpg` shows every JPEG in `dir`, in glob
/// order, with what `predict` prints for it with the default run's model.
fn check_predict_block(readme: &str, dir: &str) {
    let command =
        format!("$ mnist-gpu predict --model runs/run-001/model.safetensors {dir}/*.jpg\n");
    let start = readme.find(&command).expect("predict block");
    let shown: Vec<&str> = readme[start..]
        .lines()
        .skip(1)
        .take_while(|l| *l != "```")
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files: Vec<&str> = shown.iter().map(|l| l.split(':').next().unwrap()).collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(root.join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jpg"))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    on_disk.sort();
    assert_eq!(
        files, on_disk,
        "the block shows every {dir}/*.jpg, in glob order"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_mnist-gpu"))
        .current_dir(root)
        .args([
            "predict",
            "--model",
            default_run().model().to_str().unwrap(),
        ])
        .args(&files)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        shown,
        "the predict block for {dir}"
    );
}
