//! A run never loses a user's earlier results: a directory that holds a run is not
//! trained into again without `--overwrite`, a run owns its directory through a lock,
//! automatic run directories are claimed atomically and removed again when a run fails
//! before writing anything, and `--metrics` is written only once training runs — through
//! a symbolic link to its target, and continued on resume.

mod common;

use common::cli::*;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

/// A small, quick CPU run of `epochs` epochs into `dir`, plus `extra`.
fn run_args(dir: &str, epochs: &str, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&[
        "train",
        "--cpu-fallback",
        "--epochs",
        epochs,
        "--train-limit",
        "300",
        "--test-limit",
        "50",
        "--out-dir",
        dir,
    ]);
    args.extend(strings(extra));
    args
}

/// Every file in `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn fail(args: &[String], words: &[&str]) {
    let out = mnist_gpu(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for word in words {
        assert!(stderr.contains(word), "lacks '{word}': {stderr}");
    }
}

#[test]
fn a_directory_holding_a_run_is_kept_unless_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = s(&tmp.path().join("run"));
    succeed(&run_args(&dir, "1", &[]));
    let before = snapshot(Path::new(&dir));
    assert!(
        before.contains_key("model.safetensors") && before.contains_key("checkpoint.safetensors")
    );
    fail(
        &run_args(&dir, "1", &["--seed", "9"]),
        &[
            &dir,
            "already holds a run",
            &format!("--resume {dir}"),
            "--overwrite",
        ],
    );
    assert_eq!(
        snapshot(Path::new(&dir)),
        before,
        "the first run's files are unchanged"
    );

    succeed(&run_args(&dir, "1", &["--seed", "9", "--overwrite"]));
    let after = snapshot(Path::new(&dir));
    assert_ne!(
        after["model.safetensors"], before["model.safetensors"],
        "replaced"
    );
    assert_eq!(
        after.len(),
        before.len(),
        "no file of the first run is left beside"
    );
}

#[test]
fn a_locked_directory_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    // This test process plays the run in progress.
    let lock = File::create(dir.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    fail(
        &run_args(&s(&dir), "1", &[]),
        &[&s(&dir), "in use by another mnist-gpu run"],
    );
    assert!(!dir.join("metrics.jsonl").exists());
    drop(lock);
    succeed(&run_args(&s(&dir), "1", &[]));
}

#[test]
fn concurrent_runs_get_their_own_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let start = || {
        bin()
            .current_dir(tmp.path())
            .args([
                "train",
                "--cpu-fallback",
                "--epochs",
                "1",
                "--train-limit",
                "2000",
                "--test-limit",
                "50",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children: Vec<_> = (0..3).map(|_| start()).collect();
    let mut dirs = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let stdout = text(&out.stdout);
        let line = stdout
            .lines()
            .find(|l| l.contains("model.safetensors"))
            .unwrap();
        dirs.push(line.trim().to_string());
    }
    dirs.sort();
    dirs.dedup();
    assert_eq!(dirs.len(), 3, "{dirs:?}");
}

#[test]
fn a_run_that_fails_before_writing_leaves_no_directory() {
    let tmp = tempfile::tempdir().unwrap();
    // Diverges in the first epoch: the run directory it made is removed again.
    let out = bin()
        .current_dir(tmp.path())
        .args([
            "train",
            "--cpu-fallback",
            "--epochs",
            "1",
            "--train-limit",
            "300",
            "--lr",
            "3e38",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let runs: Vec<_> = std::fs::read_dir(tmp.path().join("runs"))
        .unwrap()
        .collect();
    assert!(runs.is_empty(), "{runs:?}");
    let dir = tmp.path().join("given");
    fail(&run_args(&s(&dir), "1", &["--lr", "3e38"]), &["diverged"]);
    assert!(!dir.exists());
}

#[test]
fn metrics_are_written_only_when_training_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let metrics = tmp.path().join("m.jsonl");
    std::fs::write(&metrics, b"{\"epoch\":1}\n").unwrap();
    let bad_data = tmp.path().join("no-data");
    let mut args = run_args(
        &s(&tmp.path().join("r")),
        "1",
        &["--metrics", &s(&metrics), "--overwrite"],
    );
    args.extend(strings(&["--data-dir", &s(&bad_data)]));
    fail(&args, &["does not exist"]);
    assert_eq!(
        std::fs::read(&metrics).unwrap(),
        b"{\"epoch\":1}\n",
        "untouched"
    );
    // Another run's metrics in FILE are kept unless --overwrite.
    fail(
        &run_args(
            &s(&tmp.path().join("r2")),
            "1",
            &["--metrics", &s(&metrics)],
        ),
        &["already holds metrics", "--overwrite"],
    );
    assert_eq!(
        std::fs::read(&metrics).unwrap(),
        b"{\"epoch\":1}\n",
        "untouched"
    );
}

#[test]
fn metrics_follow_a_symlink_and_continue_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target.jsonl");
    let link = tmp.path().join("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let dir = s(&tmp.path().join("run"));
    succeed(&run_args(&dir, "1", &["--metrics", &s(&link)]));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link stays"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap().lines().count(), 1);
    // Resumed without --metrics: the run's own metrics file goes on.
    succeed(&strings(&[
        "train",
        "--cpu-fallback",
        "--resume",
        &dir,
        "--epochs",
        "2",
    ]));
    let lines: Vec<String> = std::fs::read_to_string(&target)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains("\"epoch\":2"), "{lines:?}");
    assert_eq!(
        std::fs::read_to_string(Path::new(&dir).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
}

#[test]
fn temporary_files_of_dead_processes_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    succeed(&run_args(&s(&dir), "1", &[]));
    // pid_t's largest value is never a live process; this test's own is.
    let stale = dir.join(".checkpoint.safetensors.tmp-2147483647");
    let live = dir.join(format!(".metrics.jsonl.tmp-{}", std::process::id()));
    std::fs::write(&stale, b"half").unwrap();
    std::fs::write(&live, b"half").unwrap();
    succeed(&strings(&[
        "train",
        "--cpu-fallback",
        "--resume",
        &s(&dir),
        "--epochs",
        "2",
    ]));
    assert!(
        !stale.exists(),
        "the dead process's temporary file is removed"
    );
    assert!(live.exists(), "a live process's temporary file is kept");
}

#[test]
fn identical_runs_write_identical_model_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    succeed(&run_args(&s(&a), "1", &[]));
    succeed(&run_args(&s(&b), "1", &[]));
    let model = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(
        model(&a) == model(&b),
        "model.safetensors differs between identical runs"
    );
}

/// `fail`, and the run left no directory behind: the check came before training.
fn refused_before_training(args: &[String], dir: &Path, words: &[&str]) {
    fail(args, words);
    assert!(!dir.exists(), "{args:?}: a run directory was made");
}

#[test]
fn metrics_must_name_a_regular_file_or_a_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let fifo = tmp.path().join("fifo");
    mkfifo(&fifo);
    let null = tmp.path().join("null");
    let node = std::process::Command::new("mknod")
        .args([&s(&null), "c", "1", "3"])
        .status()
        .is_ok_and(|st| st.success());
    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, "my notes\n").unwrap();
    let link = tmp.path().join("link-to-fifo");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let mut cases = vec![
        (s(&fifo), "is not a regular file", false),
        (s(&link), "is not a regular file", false),
        (s(tmp.path()), "is a directory", false),
        (
            "/dev/stdout".to_string(),
            "is a device or process stream",
            false,
        ),
        ("-".to_string(), "standard output is not supported", false),
        (s(&notes), "holds something other than metrics", true),
    ];
    if node {
        cases.push((s(&null), "is not a regular file", false));
    }
    for (metrics, words, overwrite) in cases {
        let mut extra = vec!["--metrics", metrics.as_str()];
        if overwrite {
            extra.push("--overwrite");
        }
        let args = run_args(&s(&dir), "1", &extra);
        refused_before_training(&args, &dir, &[&format!("--metrics {metrics}:"), words]);
    }
    assert_eq!(std::fs::read(&notes).unwrap(), b"my notes\n");
    if node {
        use std::os::unix::fs::FileTypeExt;
        let kind = std::fs::symlink_metadata(&null).unwrap().file_type();
        assert!(kind.is_char_device(), "the device node is kept");
    }
}

/// `--metrics log > log`: the file stdout goes to is refused, not replaced.
#[test]
fn metrics_into_the_file_stdout_goes_to_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let log = tmp.path().join("train.log");
    let out = bin()
        .args(run_args(&s(&dir), "1", &["--metrics", &s(&log)]))
        .stdout(File::create(&log).unwrap())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is where this program's standard output goes"),
        "{stderr}"
    );
    assert!(!dir.exists());
}

/// The run's own files (lock, model, checkpoint, pictures, metrics.jsonl) are never the
/// `--metrics` file, by name or through a link; nothing of the old run is removed.
#[test]
fn the_runs_own_files_are_never_the_metrics_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    succeed(&run_args(&s(&dir), "1", &[]));
    let before = snapshot(&dir);
    let link = tmp.path().join("link.jsonl");
    std::os::unix::fs::symlink(dir.join("checkpoint.safetensors"), &link).unwrap();
    let cases = [
        (s(&dir.join(".lock")), ".lock"),
        (s(&dir.join("model.safetensors")), "model.safetensors"),
        (s(&dir.join("predictions.png")), "predictions.png"),
        (s(&dir.join("metrics.jsonl")), "metrics.jsonl"),
        (s(&link), "checkpoint.safetensors"),
    ];
    for (metrics, name) in cases {
        fail(
            &run_args(&s(&dir), "1", &["--metrics", &metrics, "--overwrite"]),
            &[
                &format!("--metrics {metrics}:"),
                &format!("is the run's own {name}"),
            ],
        );
        assert_eq!(snapshot(&dir), before, "{metrics}");
    }
}

/// Interrupted in folder A with `--metrics log.jsonl`, resumed from folder B: A's file
/// is continued, and B's own log.jsonl is untouched.
#[test]
fn a_resumed_run_writes_its_own_metrics_file_from_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("A"), tmp.path().join("B"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let first = |cwd: &Path, epochs: &str, interrupt: Option<&str>| {
        let mut cmd = bin();
        cmd.current_dir(cwd)
            .args(run_args("run", epochs, &["--metrics", "log.jsonl"]));
        if let Some(at) = interrupt {
            cmd.env("MNIST_GPU_INTERRUPT_AT", at);
        }
        cmd.output().unwrap()
    };
    assert_eq!(first(&a, "3", Some("2:3")).status.code(), Some(130));
    assert!(first(&b, "1", None).status.success());
    let b_log = std::fs::read(b.join("log.jsonl")).unwrap();
    let out = bin()
        .current_dir(&b)
        .args(["train", "--cpu-fallback", "--resume", "../A/run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(b.join("log.jsonl")).unwrap(),
        b_log,
        "B's file kept"
    );
    let a_log = std::fs::read_to_string(a.join("log.jsonl")).unwrap();
    assert_eq!(a_log.lines().count(), 3, "{a_log}");
}

/// A `--metrics` file the run named but had not written yet (stopped in epoch 1), since
/// filled by another run, is not replaced on resume: it is not this run's.
#[test]
fn resume_keeps_a_metrics_file_another_run_filled() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared.jsonl");
    let dir = tmp.path().join("run");
    let out = bin()
        .args(run_args(&s(&dir), "2", &["--metrics", &s(&shared)]))
        .env("MNIST_GPU_INTERRUPT_AT", "1:3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(!shared.exists());
    succeed(&run_args(
        &s(&tmp.path().join("other")),
        "1",
        &["--metrics", &s(&shared)],
    ));
    let other = std::fs::read(&shared).unwrap();
    fail(
        &strings(&["train", "--cpu-fallback", "--resume", &s(&dir)]),
        &[&s(&shared), "holds metrics of another run"],
    );
    assert_eq!(std::fs::read(&shared).unwrap(), other);
}

/// Stale temporaries are removed only when they are this program's (a run file's name)
/// and only once the directory is claimed: a refused run removes nothing.
#[test]
fn only_this_programs_stale_temporaries_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    succeed(&run_args(&s(&dir), "1", &[]));
    let users = dir.join(".thesis.docx.tmp-2147483647");
    let stale = dir.join(".checkpoint.safetensors.tmp-2147483647");
    std::fs::write(&users, b"chapter 1").unwrap();
    std::fs::write(&stale, b"half").unwrap();
    fail(&run_args(&s(&dir), "1", &[]), &["already holds a run"]);
    assert!(stale.exists(), "a refused run removes nothing");
    succeed(&strings(&[
        "train",
        "--cpu-fallback",
        "--resume",
        &s(&dir),
        "--epochs",
        "2",
    ]));
    assert!(!stale.exists());
    assert_eq!(std::fs::read(&users).unwrap(), b"chapter 1");
}

/// `--overwrite` checks every file of the old run before it removes any.
#[test]
fn overwrite_removes_nothing_when_it_cannot_remove_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    succeed(&run_args(&s(&dir), "1", &[]));
    std::fs::remove_file(dir.join("curves.png")).unwrap();
    std::fs::create_dir(dir.join("curves.png")).unwrap();
    fail(
        &run_args(&s(&dir), "1", &["--overwrite"]),
        &["curves.png", "is a directory", "nothing was removed"],
    );
    assert!(dir.join("model.safetensors").exists());
    assert!(dir.join("checkpoint.safetensors").exists());
}
