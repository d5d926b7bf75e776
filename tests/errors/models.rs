//! Broken model and checkpoint files, for every command that reads one.

use crate::common::cli::*;
use mnist_gpu::data;
use mnist_gpu::model::{ModelConfig, Params};
use mnist_gpu::modelfile;
use safetensors::Dtype;
use std::path::{Path, PathBuf};

/// A broken model: (file, description, words the error must hold).
type Broken = (PathBuf, &'static str, Vec<&'static str>);

/// Every broken model, written from the valid model `src` into `dir`.
fn broken_models(src: &Path, dir: &Path) -> Vec<Broken> {
    let mut broken = not_safetensors(src, dir);
    broken.extend(broken_tensors(src, dir));
    broken.extend(broken_layers(src, dir));
    broken.extend(broken_hidden(src, dir));
    broken
}

/// Files that are not safetensors at all.
fn not_safetensors(src: &Path, dir: &Path) -> Vec<Broken> {
    let path = |name: &str| dir.join(name);
    std::fs::write(path("text.safetensors"), "this is not a model\n").unwrap();
    let bytes = std::fs::read(src).unwrap();
    std::fs::write(path("truncated.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(path("empty.safetensors"), b"").unwrap();
    let words = || vec!["not a safetensors file"];
    vec![
        (path("text.safetensors"), "not safetensors", words()),
        (path("empty.safetensors"), "empty", words()),
        (path("truncated.safetensors"), "truncated", words()),
    ]
}

/// Safetensors files with a tensor missing, misshapen, mistyped or not finite.
fn broken_tensors(src: &Path, dir: &Path) -> Vec<Broken> {
    let path = |name: &str| dir.join(name);
    edit_safetensors(
        src,
        &path("missing.safetensors"),
        |n, d, s, b| (n != "4.bias").then_some((d, s, b)),
        |_| {},
    );
    edit_safetensors(
        src,
        &path("shape.safetensors"),
        |n, d, s, b| match n {
            "2.weight" => Some((d, vec![64, 784], b[..64 * 784 * 4].to_vec())),
            _ => Some((d, s, b)),
        },
        |_| {},
    );
    edit_safetensors(
        src,
        &path("dtype.safetensors"),
        |n, d, s, b| match n {
            "1.weight" => Some((Dtype::I32, s, b)),
            _ => Some((d, s, b)),
        },
        |_| {},
    );
    edit_safetensors(
        src,
        &path("nan.safetensors"),
        |n, d, s, mut b| {
            if n == "2.bias" {
                b[20..24].copy_from_slice(&f32::NAN.to_le_bytes());
            }
            Some((d, s, b))
        },
        |_| {},
    );
    vec![
        (
            path("missing.safetensors"),
            "missing tensor",
            vec!["tensor '4.bias' is missing"],
        ),
        (
            path("shape.safetensors"),
            "wrong shape",
            vec!["tensor '2.weight' has shape [64, 784], expected [128, 784]"],
        ),
        (
            path("dtype.safetensors"),
            "wrong dtype",
            vec!["tensor '1.weight' has dtype I32, expected F32"],
        ),
        (
            path("nan.safetensors"),
            "non-finite value",
            vec!["tensor '2.bias' holds a non-finite value (NaN) at index 5"],
        ),
    ]
}

/// A copy of `src` named `name` in `dir`, with each metadata `(key, value)` of
/// `entries` set (`Some`) or removed (`None`).
fn with_metadata(src: &Path, dir: &Path, name: &str, entries: &[(&str, Option<&str>)]) -> PathBuf {
    let path = dir.join(name);
    edit_metadata(src, &path, |m| {
        for (key, value) in entries {
            match value {
                Some(value) => m.insert(key.to_string(), value.to_string()),
                None => m.remove(*key),
            };
        }
    });
    path
}

/// A `layers` entry that is malformed, unsupported, too large or contradicted by
/// `hidden`, with the key and the bad layer named in the error.
fn broken_layers(src: &Path, dir: &Path) -> Vec<Broken> {
    let layers =
        |name, value| with_metadata(src, dir, name, &[("layers", Some(value)), ("hidden", None)]);
    vec![
        (
            layers("arch.safetensors", "batchnorm,dense(256,relu),dense(10)"),
            "shapes of another architecture",
            vec!["tensor '2.weight' has shape [128, 784], expected [256, 784]"],
        ),
        (
            layers("huge.safetensors", "batchnorm,dense(60000,relu),dense(60000,relu),dense(10)"),
            "architecture larger than the file",
            vec![
                "metadata 'layers': the model batchnorm,dense(60000,relu),dense(60000,relu),dense(10) has",
                "at most 100000000",
            ],
        ),
        (
            layers("unsupported.safetensors", "batchnorm,dense(128,relu),dense(10,relu)"),
            "a layer list the trainers do not implement",
            vec![
                "metadata 'layers': layer 3 (dense(10,relu)) is not supported",
                "the last layer must be dense(10)",
            ],
        ),
        (
            layers("garbage.safetensors", "conv3d(32,3),dense(10)"),
            "an unknown layer",
            vec!["metadata 'layers': layer 1 ('conv3d(32,3)'): unknown layer 'conv3d'"],
        ),
        (
            layers("convnet.safetensors", "conv2d(32,3,relu),flatten,dense(10)"),
            "a convnet's layers over an MLP's tensors",
            vec!["tensor '0.weight' is missing"],
        ),
        (
            layers("late-batchnorm.safetensors", "batchnorm,dense(128,relu),batchnorm,dense(10)"),
            "a batchnorm after the first layer",
            vec![
                "metadata 'layers': layer 3 (batchnorm) is not supported",
                "only as the first layer",
            ],
        ),
        (
            layers("zero-units.safetensors", "batchnorm,dense(0,relu),dense(10)"),
            "a layer of 0 units",
            vec!["metadata 'layers': layer 2 ('dense(0,relu)'): layer widths must be at least 1"],
        ),
        (
            with_metadata(src, dir, "disagree.safetensors", &[("hidden", Some("64"))]),
            "'layers' and 'hidden' disagreeing",
            vec![
                "metadata 'layers' (batchnorm,dense(128,relu),dense(10)) and 'hidden' (64) \
                 describe different models",
            ],
        ),
    ]
}

/// Files written before `layers`, whose architecture is `hidden` alone, broken; and a
/// file with neither.
fn broken_hidden(src: &Path, dir: &Path) -> Vec<Broken> {
    let hidden =
        |name, value| with_metadata(src, dir, name, &[("hidden", Some(value)), ("layers", None)]);
    let neither = [("hidden", None), ("layers", None)];
    vec![
        (
            hidden("old-arch.safetensors", "256"),
            "shapes of another architecture, in a file written before 'layers'",
            vec!["tensor '2.weight' has shape [128, 784], expected [256, 784]"],
        ),
        (
            hidden("old-huge.safetensors", "60000,60000"),
            "architecture larger than the file, in a file written before 'layers'",
            vec!["metadata 'hidden': the model", "at most 100000000"],
        ),
        (
            with_metadata(src, dir, "nometa.safetensors", &neither),
            "no architecture metadata",
            vec!["metadata has neither 'layers' nor 'hidden'"],
        ),
    ]
}

/// A valid default model and a checkpoint of a fresh run, written into `root`:
/// (`root/model.safetensors`, `root/checkpoint-src.safetensors`).
fn valid_model_and_checkpoint(root: &Path) -> (PathBuf, PathBuf) {
    let params = Params::init(&ModelConfig::default(), 7);
    let model = root.join("model.safetensors");
    modelfile::save_model(&params, 0, &model).unwrap();
    let checkpoint = root.join("checkpoint-src.safetensors");
    let state = fresh_run_state(&params);
    modelfile::save_checkpoint(&params, &state, &checkpoint).unwrap();
    (model, checkpoint)
}

/// A picture of a digit from the sample `digits` folder beside the built-in data.
fn sample_digit() -> PathBuf {
    data::builtin_dir()
        .parent()
        .unwrap()
        .join("digits")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

/// Each broken model (written into `models_dir`) given to `eval`, `predict` and
/// `train --init-from`; each error must also name the file.
fn broken_models_for_each_command(root: &Path, model: &Path, models_dir: &Path) -> Vec<Case> {
    let digit = sample_digit();
    let mut cases = Vec::new();
    for (file, what, words) in broken_models(model, models_dir) {
        let name = s(&file);
        let mut with_name = words.clone();
        with_name.push(&name);
        let mk = |cmd: &str, args: Vec<String>| Case {
            what: format!("{cmd}: {what}"),
            args,
            words: with_name.iter().map(|s| s.to_string()).collect(),
            one_line: true,
        };
        cases.push(mk(
            "eval",
            vec![
                "eval".into(),
                "--cpu-fallback".into(),
                "--model".into(),
                name.clone(),
            ],
        ));
        cases.push(mk(
            "predict",
            vec!["predict".into(), "--model".into(), name.clone(), s(&digit)],
        ));
        cases.push(mk(
            "train --init-from",
            train_with(&["--init-from", &name], &s(&root.join("out-init"))),
        ));
    }
    cases
}

/// Each broken model's damage done to the checkpoint `checkpoint` instead, given to
/// `train --resume`; each error must also name the checkpoint.
fn broken_checkpoints_to_resume(root: &Path, checkpoint: &Path) -> Vec<Case> {
    let checkpoints_dir = root.join("checkpoints");
    std::fs::create_dir(&checkpoints_dir).unwrap();
    let mut cases = Vec::new();
    // --resume reads DIR/checkpoint.safetensors: the same damage to a checkpoint.
    for (file, what, words) in broken_models(checkpoint, &checkpoints_dir) {
        let dir = root.join(format!(
            "resume-{}",
            file.file_stem().unwrap().to_string_lossy()
        ));
        std::fs::create_dir(&dir).unwrap();
        let target = dir.join("checkpoint.safetensors");
        std::fs::rename(&file, &target).unwrap();
        let mut words: Vec<String> = words.iter().map(|s| s.to_string()).collect();
        words.push(s(&target));
        cases.push(Case {
            what: format!("train --resume: {what}"),
            args: vec![
                "train".into(),
                "--cpu-fallback".into(),
                "--resume".into(),
                s(&dir),
            ],
            words,
            one_line: true,
        });
    }
    cases
}

/// `train --resume` from a copy of `checkpoint` that lacks a checkpoint-only part:
/// Adam's moments.
fn checkpoint_without_adam(root: &Path, checkpoint: &Path) -> Case {
    edit_safetensors(
        checkpoint,
        &root.join("no-adam.safetensors"),
        |n, d, s, b| (n != "adam.v").then_some((d, s, b)),
        |_| {},
    );
    let dir = root.join("resume-no-adam");
    std::fs::create_dir(&dir).unwrap();
    std::fs::rename(
        root.join("no-adam.safetensors"),
        dir.join("checkpoint.safetensors"),
    )
    .unwrap();
    case(
        "train --resume: no Adam state",
        &["train", "--cpu-fallback", "--resume", &s(&dir)],
        &["tensor 'adam.v' is missing"],
    )
}

/// No checkpoint in the `--resume` directory `no_checkpoint_dir`, a missing model, and
/// a model that is a directory.
fn missing_files(root: &Path, no_checkpoint_dir: &Path) -> Vec<Case> {
    vec![
        case(
            "train --resume: no checkpoint at all",
            &["train", "--cpu-fallback", "--resume", &s(no_checkpoint_dir)],
            &["checkpoint.safetensors", "does not exist"],
        ),
        case(
            "eval: missing model",
            &[
                "eval",
                "--cpu-fallback",
                "--model",
                "/no/such/model.safetensors",
            ],
            &["/no/such/model.safetensors", "does not exist"],
        ),
        case(
            "eval: model is a directory",
            &["eval", "--cpu-fallback", "--model", &s(root)],
            &["is a directory"],
        ),
    ]
}

#[test]
fn bad_model_files_for_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (model, checkpoint) = valid_model_and_checkpoint(root);
    let models_dir = root.join("models");
    std::fs::create_dir(&models_dir).unwrap();
    let mut cases = broken_models_for_each_command(root, &model, &models_dir);
    cases.extend(broken_checkpoints_to_resume(root, &checkpoint));
    cases.push(checkpoint_without_adam(root, &checkpoint));
    // The models directory holds no checkpoint.
    cases.extend(missing_files(root, &models_dir));
    check(cases);
}
