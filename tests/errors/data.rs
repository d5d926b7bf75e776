//! A data directory that is missing, incomplete, or holds broken IDX files.

use crate::common::cli::*;
use mnist_gpu::data::{self, write_idx};
use mnist_gpu::model::{ModelConfig, Params};
use mnist_gpu::modelfile;
use std::path::{Path, PathBuf};

/// A case that trains one epoch on the CPU from the data directory `dir`, writing its
/// run under `root/out`.
fn train_on(root: &Path, what: &str, dir: &Path, words: &[&str]) -> Case {
    let out = s(&root.join("out"));
    let args = [
        "train",
        "--cpu-fallback",
        "--epochs",
        "1",
        "--out-dir",
        &out,
        "--data-dir",
        &s(dir),
    ];
    case(what, &args, words)
}

/// A data directory that does not exist or is a plain file, and one that lacks a file.
fn missing_paths(root: &Path) -> Vec<Case> {
    let file = root.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let dir = broken_set(root, "missing", data::TEST_LABELS, |p| {
        std::fs::remove_file(p).unwrap()
    });
    vec![
        train_on(
            root,
            "missing directory",
            &root.join("nowhere"),
            &["nowhere", "does not exist"],
        ),
        train_on(
            root,
            "a file, not a directory",
            &file,
            &["plain-file", "is not a directory"],
        ),
        train_on(
            root,
            "missing file",
            &dir,
            &[
                &s(&dir),
                "no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz",
                data::TRAIN_IMAGES,
                data::TRAIN_LABELS,
                data::TEST_IMAGES,
            ],
        ),
    ]
}

/// Data files that are empty, a directory, unreadable, or a FIFO.
fn unreadable_files(root: &Path) -> Vec<Case> {
    let empty = broken_set(root, "empty", data::TRAIN_LABELS, |p| {
        std::fs::write(p, b"").unwrap()
    });
    let dir_as_file = broken_set(root, "dir-as-file", data::TEST_IMAGES, |p| {
        std::fs::remove_file(p).unwrap();
        std::fs::create_dir(p).unwrap();
    });
    // Unreadable: as root, permission bits do not stop reads, but /proc/self/mem is a
    // regular file whose read at offset 0 always fails (EIO), for root too.
    let unreadable = broken_set(root, "unreadable", data::TRAIN_IMAGES, |p| {
        std::fs::remove_file(p).unwrap();
        std::os::unix::fs::symlink("/proc/self/mem", p).unwrap();
    });
    // A FIFO would block the reader forever: refused as not a regular file.
    let fifo = broken_set(root, "fifo", data::TRAIN_LABELS, |p| {
        std::fs::remove_file(p).unwrap();
        mkfifo(p);
    });
    vec![
        train_on(
            root,
            "empty file",
            &empty,
            &[data::TRAIN_LABELS, "file is empty"],
        ),
        train_on(
            root,
            "a directory where a file should be",
            &dir_as_file,
            &[data::TEST_IMAGES, "is a directory"],
        ),
        train_on(
            root,
            "unreadable file",
            &unreadable,
            &[data::TRAIN_IMAGES, "cannot read", "os error"],
        ),
        train_on(
            root,
            "a FIFO",
            &fifo,
            &[data::TRAIN_LABELS, "not a regular file"],
        ),
    ]
}

/// IDX files with a wrong magic number, a truncated header or a truncated body.
fn corrupt_idx_files(root: &Path) -> Vec<Case> {
    let magic = broken_set(root, "magic", data::TRAIN_IMAGES, |p| {
        rewrite(p, |mut b| {
            b[3] = 0x01;
            b
        })
    });
    let short_header = broken_set(root, "short-header", data::TEST_IMAGES, |p| {
        rewrite(p, |b| b[..10].to_vec())
    });
    let short_body = broken_set(root, "short-body", data::TRAIN_IMAGES, |p| {
        rewrite(p, |b| b[..b.len() - 100].to_vec())
    });
    vec![
        train_on(
            root,
            "wrong IDX magic",
            &magic,
            &[data::TRAIN_IMAGES, "wrong IDX magic number 0x00000801"],
        ),
        train_on(
            root,
            "truncated header",
            &short_header,
            &[data::TEST_IMAGES, "truncated header: 10 bytes"],
        ),
        train_on(
            root,
            "truncated body",
            &short_body,
            &[data::TRAIN_IMAGES, "truncated", "expected 31376"],
        ),
    ]
}

/// Well-formed IDX files that disagree: fewer labels than images, a label above 9
/// (in `root/label`), and images of sizes that differ or are not 28×28.
fn contents_that_do_not_fit(root: &Path) -> Vec<Case> {
    let count = broken_set(root, "count", data::TRAIN_LABELS, |p| {
        write_idx(p, &[39], &[1; 39]).unwrap()
    });
    let label = broken_set(root, "label", data::TEST_LABELS, |p| {
        write_idx(p, &[8], &[1, 2, 3, 12, 4, 5, 6, 7]).unwrap()
    });
    let shapes = root.join("shapes");
    small_set(&shapes, 28, 14);
    let small_images = root.join("small-images");
    small_set(&small_images, 14, 14);
    vec![
        train_on(
            root,
            "image/label count mismatch",
            &count,
            &["holds 40 images but", data::TRAIN_LABELS, "holds 39 labels"],
        ),
        train_on(
            root,
            "label above 9",
            &label,
            &[data::TEST_LABELS, "label 12 at index 3 is not a digit 0-9"],
        ),
        train_on(
            root,
            "train/test image sizes differ",
            &shapes,
            &["training images are 28×28 but test images are 14×14"],
        ),
        train_on(
            root,
            "images of the wrong size",
            &small_images,
            &["images are 14×14", "28×28"],
        ),
    ]
}

/// A valid data set in `root/name` whose training images are gzipped, the gzip bytes
/// then passed through `damage`.
fn gzipped_set(root: &Path, name: &str, damage: fn(Vec<u8>) -> Vec<u8>) -> PathBuf {
    let dir = root.join(name);
    small_set(&dir, 28, 28);
    let plain = dir.join(data::TRAIN_IMAGES);
    let bytes = std::fs::read(&plain).unwrap();
    std::fs::remove_file(&plain).unwrap();
    std::fs::write(
        dir.join(format!("{}.gz", data::TRAIN_IMAGES)),
        damage(gzip(&bytes)),
    )
    .unwrap();
    dir
}

/// Gzipped training images with a bad CRC, and cut off halfway.
fn gzip_problems(root: &Path) -> Vec<Case> {
    let crc = gzipped_set(root, "gz-crc", |mut b| {
        let n = b.len();
        b[n - 8] ^= 0xff; // the CRC32 of the trailer
        b
    });
    let short = gzipped_set(root, "gz-short", |b| b[..b.len() / 2].to_vec());
    vec![
        train_on(
            root,
            "gzip with a bad CRC",
            &crc,
            &["train-images-idx3-ubyte.gz", "corrupt gzip data"],
        ),
        train_on(
            root,
            "truncated gzip stream",
            &short,
            &["train-images-idx3-ubyte.gz", "corrupt gzip data"],
        ),
    ]
}

/// `eval` of a fresh model on `dir`, a data directory whose test labels hold a 12.
fn eval_on_broken_data(root: &Path, dir: &Path) -> Case {
    let model = root.join("m.safetensors");
    modelfile::save_model(&Params::init(&ModelConfig::default(), 1), 0, &model).unwrap();
    let mut c = case(
        "eval with a broken data directory",
        &[
            "eval",
            "--cpu-fallback",
            "--model",
            &s(&model),
            "--data-dir",
        ],
        &[data::TEST_LABELS, "label 12"],
    );
    c.args.push(s(dir));
    c
}

#[test]
fn bad_data_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut cases = missing_paths(root);
    cases.extend(unreadable_files(root));
    cases.extend(corrupt_idx_files(root));
    cases.extend(contents_that_do_not_fit(root));
    cases.extend(gzip_problems(root));
    // `eval` reads the same directory.
    cases.push(eval_on_broken_data(root, &root.join("label")));
    check(cases);
}
