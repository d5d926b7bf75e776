//! A checkpoint's metadata is validated like the flags it stands for: each broken field
//! of `checkpoint.safetensors` makes `train --resume` fail with the file and the field
//! named, exit 1 and no panic — and changes nothing in the run directory.

mod common;

use common::cli::*;
use std::collections::HashMap;
use std::path::Path;

/// An edit of a checkpoint's metadata.
type Edit = Box<dyn Fn(&mut HashMap<String, String>)>;

/// One metadata mutation: what it is, the edit, and the words the error must contain.
type Mutation = (&'static str, Edit, Vec<&'static str>);

fn set(key: &'static str, value: &'static str) -> Edit {
    Box::new(move |m| {
        m.insert(key.to_string(), value.to_string());
    })
}

fn remove(key: &'static str) -> Edit {
    Box::new(move |m| {
        m.remove(key);
    })
}

/// An interrupted epoch: `steps` steps of batch 32 done.
fn partial(steps: &'static str, samples: &'static str) -> Edit {
    Box::new(move |m| {
        m.insert("epoch_steps_done".into(), steps.into());
        m.insert("epoch_samples_done".into(), samples.into());
        m.insert("epoch_loss_sum".into(), "10.5".into());
        m.insert("epoch_correct".into(), "3".into());
    })
}

/// Every metadata mutation, family by family.
fn mutations() -> Vec<Mutation> {
    [
        setting_mutations(),
        data_mutations(),
        progress_mutations(),
        partial_epoch_mutations(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Broken model and training settings, refused in their flags' words where flags exist.
fn setting_mutations() -> Vec<Mutation> {
    vec![
        (
            "batch size 0",
            set("batch_size", "0"),
            vec!["'batch_size' is 0", "at least 1"],
        ),
        (
            "batch size not a number",
            set("batch_size", "abc"),
            vec!["'batch_size'", "'abc'"],
        ),
        (
            "epochs 0, in the flag's words",
            set("epochs", "0"),
            vec!["'epochs' is 0", "must be at least 1"],
        ),
        (
            "negative seed, in the flag's words",
            set("seed", "-1"),
            vec!["'seed' is -1", "not a whole number from 0 to"],
        ),
        (
            "learning rate too small for 32-bit floats, in the flag's words",
            set("lr", "1e-45"),
            vec!["'lr' is 1e-45", "too small"],
        ),
        (
            "negative learning rate",
            set("lr", "-0.5"),
            vec!["'lr' is -0.5", "finite number above 0"],
        ),
        (
            "infinite learning rate",
            set("lr", "inf"),
            vec!["'lr' is inf"],
        ),
        ("NaN learning rate", set("lr", "NaN"), vec!["'lr' is NaN"]),
        (
            "hidden width 0",
            set("hidden", "0"),
            vec!["metadata 'hidden'"],
        ),
        (
            "hidden too large",
            set("hidden", "999999999"),
            vec!["metadata 'hidden'"],
        ),
    ]
}

/// Broken records of which data the run trains on, and in what order.
fn data_mutations() -> Vec<Mutation> {
    vec![
        (
            "train limit 0",
            set("train_limit", "0"),
            vec!["'train_limit' is 0"],
        ),
        (
            "test limit negative",
            set("test_limit", "-3"),
            vec!["'test_limit'", "'-3'"],
        ),
        (
            "grid offset negative",
            set("grid_offset", "-1"),
            vec!["'grid_offset'", "'-1'"],
        ),
        (
            "empty data directory",
            set("data_dir", ""),
            vec!["'data_dir' is empty"],
        ),
        (
            "no data directory",
            remove("data_dir"),
            vec!["no 'data_dir' entry"],
        ),
        (
            "data digest not a digest",
            Box::new(|meta: &mut HashMap<String, String>| {
                meta.insert("data_train_digest".into(), "abc".into());
                meta.insert("data_test_digest".into(), "fnv1a64:0123456789abcdef".into());
            }),
            vec!["'data_train_digest'", "'abc'", "16 hexadecimal digits"],
        ),
        (
            "one data digest without the other",
            set("data_test_digest", "fnv1a64:0123456789abcdef"),
            vec!["'data_test_digest' but no 'data_train_digest'"],
        ),
        (
            "shuffle not a boolean",
            set("shuffle", "maybe"),
            vec!["'shuffle'", "'maybe'"],
        ),
    ]
}

/// Broken records of how far the run has got: epochs done, optimizer steps, history.
fn progress_mutations() -> Vec<Mutation> {
    vec![
        (
            "epochs done beyond the run",
            set("epochs_done", "18446744073709551615"),
            vec![
                "'epochs_done' is 18446744073709551615",
                "more than the run's 1 epochs",
            ],
        ),
        (
            "epochs done negative",
            set("epochs_done", "-1"),
            vec!["'epochs_done'", "'-1'"],
        ),
        (
            "adam step negative",
            set("adam_step", "-4"),
            vec!["'adam_step'", "'-4'"],
        ),
        (
            "history not JSON",
            set("history", "[{"),
            vec!["'history' is not valid"],
        ),
        (
            "history longer than the epochs done",
            set(
                "history",
                r#"[{"epoch":1,"loss":1.0,"accuracy":0.5,"val_loss":1.0,"val_accuracy":0.5,"seconds":1.0,"samples_per_second":1.0}]"#,
            ),
            vec!["'history' holds 1 epochs but 'epochs_done' is 0"],
        ),
    ]
}

/// Broken records of an interrupted epoch: its steps, samples, correct count and loss.
fn partial_epoch_mutations() -> Vec<Mutation> {
    vec![
        (
            "steps done past the epoch",
            partial("100", "3200"),
            vec![
                "'epoch_steps_done' is 100",
                "an epoch of this run has 2 steps",
            ],
        ),
        (
            "samples done that do not match the steps",
            partial("1", "5000"),
            vec![
                "'epoch_samples_done' is 5000",
                "1 steps of batch 32 take 32 samples",
            ],
        ),
        (
            "steps done 0",
            partial("0", "0"),
            vec!["'epoch_steps_done' is 0"],
        ),
        (
            "steps done not a number",
            partial("x", "32"),
            vec!["'epoch_steps_done'", "'x'"],
        ),
        (
            "more correct than samples",
            Box::new(|m: &mut HashMap<String, String>| {
                partial("1", "32")(m);
                m.insert("epoch_correct".into(), "33".into());
            }),
            vec!["'epoch_correct' is 33", "more than the 32 samples"],
        ),
        (
            "negative loss sum",
            Box::new(|m: &mut HashMap<String, String>| {
                partial("1", "32")(m);
                m.insert("epoch_loss_sum".into(), "-1".into());
            }),
            vec!["'epoch_loss_sum' is -1"],
        ),
    ]
}

/// A run directory holding `src` with its metadata changed by `edit`.
fn broken_run(
    root: &Path,
    name: &str,
    src: &Path,
    edit: &dyn Fn(&mut HashMap<String, String>),
) -> String {
    let dir = root.join(name.replace(' ', "-"));
    std::fs::create_dir(&dir).unwrap();
    edit_metadata(src, &dir.join("checkpoint.safetensors"), edit);
    s(&dir)
}

#[test]
fn every_broken_checkpoint_field_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (_, checkpoint) = model_and_checkpoint(root);
    let mut cases = Vec::new();
    let mut dirs = Vec::new();
    for (what, edit, words) in mutations() {
        let dir = broken_run(root, what, &checkpoint, edit.as_ref());
        let file = format!("{dir}/checkpoint.safetensors");
        let mut c = case(what, &["train", "--cpu-fallback", "--resume", &dir], &words);
        c.words.push(file);
        cases.push(c);
        dirs.push(dir);
    }
    check(cases);
    // Nothing was written: each directory holds only the broken checkpoint.
    for dir in dirs {
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["checkpoint.safetensors"], "{dir}");
    }
}

/// The valid checkpoint the mutations start from resumes fine (so each failure above is
/// the mutation's doing).
#[test]
fn the_unbroken_checkpoint_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, checkpoint) = model_and_checkpoint(tmp.path());
    let dir = broken_run(tmp.path(), "fine", &checkpoint, &|_| {});
    let out = mnist_gpu(&strings(&["train", "--cpu-fallback", "--resume", &dir]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(Path::new(&dir).join("model.safetensors").exists());
}

/// `train --resume DIR --epochs 2` with `extra` flags.
fn resume_two_epochs(dir: &str, extra: &[&str]) -> std::process::Output {
    let mut args = strings(&["train", "--cpu-fallback", "--resume", dir, "--epochs", "2"]);
    args.extend(strings(extra));
    mnist_gpu(&args)
}

/// The small data set the run trains on, written to `dir`.
fn data_set(dir: &Path) {
    // More images than the run's limits (64 and 10) keep, so no note is printed.
    small_set_of(dir, (28, 28), (28, 28), 100, 20);
}

/// A copy of the data set in `root/name` with the byte at `at` of `file` flipped.
fn changed_set(root: &Path, name: &str, file: &str, at: usize) -> String {
    let dir = root.join(name);
    data_set(&dir);
    rewrite(&dir.join(file), |mut bytes| {
        bytes[at] ^= 1;
        bytes
    });
    s(&dir)
}

/// Resuming `run` on the data in `dir` fails with one line naming `dir` and `which` set.
fn assert_other_data_refused(run: &str, dir: &str, which: &str) {
    let out = resume_two_epochs(run, &["--data-dir", dir]);
    no_panic(&out);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!("error: {dir}: not the data the run in {run} trained on ({which})");
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// A copy of the data files in `data`, each gzipped, in the new directory `dir`.
fn gzipped_copy(data: &Path, dir: &Path) {
    std::fs::create_dir(dir).unwrap();
    for entry in std::fs::read_dir(data).unwrap() {
        let path = entry.unwrap().path();
        let name = format!("{}.gz", path.file_name().unwrap().to_string_lossy());
        std::fs::write(dir.join(name), gzip(&std::fs::read(&path).unwrap())).unwrap();
    }
}

/// A resumed run must see the data it started with: the checkpoint stores a digest of
/// the training and test sets, and `--data-dir` holding other data is refused, naming
/// the directory and the set that differs. The same data in other files (gzipped, in
/// another directory) is the same data; so is the built-in set, run after run.
#[test]
fn resume_with_other_data_is_refused_naming_the_set_that_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("data");
    data_set(&data);
    let run = s(&root.join("run"));
    succeed(&train_with(&["--data-dir", &s(&data)], &run));
    // One byte changed after the file's header (8 bytes for labels, 16 for images).
    for (name, file, at, which) in [
        (
            "train",
            mnist_gpu::data::TRAIN_LABELS,
            8,
            "its training set differs",
        ),
        (
            "test",
            mnist_gpu::data::TEST_IMAGES,
            16,
            "its test set differs",
        ),
    ] {
        let dir = changed_set(root, name, file, at);
        assert_other_data_refused(&run, &dir, which);
    }
    // The same images and labels, gzipped in another directory: the same data.
    let gzipped = root.join("gzipped");
    gzipped_copy(&data, &gzipped);
    let out = resume_two_epochs(&run, &["--data-dir", &s(&gzipped)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("note:"),
        "{}",
        text(&out.stderr)
    );
    // The built-in data is recognised as the same from one run to the next.
    let builtin = s(&root.join("builtin"));
    succeed(&train_with(&[], &builtin));
    let out = resume_two_epochs(&builtin, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
