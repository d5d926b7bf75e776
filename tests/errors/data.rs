//! A data directory that is missing, incomplete, or holds broken IDX files.

use crate::common::cli::*;
use mnist_gpu::data::{self, write_idx};
use mnist_gpu::model::{ModelConfig, Params};
use mnist_gpu::modelfile;
use std::path::Path;

#[test]
fn bad_data_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let out = s(&root.join("out"));
    let train = |dir: &Path| -> Vec<String> {
        [
            "train",
            "--cpu-fallback",
            "--epochs",
            "1",
            "--out-dir",
            &out,
            "--data-dir",
            &s(dir),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut cases = Vec::new();
    let mut add = |what: &str, dir: &Path, words: &[&str]| {
        let mut c = case(what, &[], words);
        c.args = train(dir);
        cases.push(c);
    };

    add(
        "missing directory",
        &root.join("nowhere"),
        &["nowhere", "does not exist"],
    );
    let file = root.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    add(
        "a file, not a directory",
        &file,
        &["plain-file", "is not a directory"],
    );

    let dir = broken_set(root, "missing", data::TEST_LABELS, |p| {
        std::fs::remove_file(p).unwrap()
    });
    add(
        "missing file",
        &dir,
        &[
            &s(&dir),
            "no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz",
            data::TRAIN_IMAGES,
            data::TRAIN_LABELS,
            data::TEST_IMAGES,
        ],
    );
    let dir = broken_set(root, "empty", data::TRAIN_LABELS, |p| {
        std::fs::write(p, b"").unwrap()
    });
    add("empty file", &dir, &[data::TRAIN_LABELS, "file is empty"]);
    let dir = broken_set(root, "dir-as-file", data::TEST_IMAGES, |p| {
        std::fs::remove_file(p).unwrap();
        std::fs::create_dir(p).unwrap();
    });
    add(
        "a directory where a file should be",
        &dir,
        &[data::TEST_IMAGES, "is a directory"],
    );
    // Unreadable: as root, permission bits do not stop reads, but /proc/self/mem is a
    // regular file whose read at offset 0 always fails (EIO), for root too.
    let dir = broken_set(root, "unreadable", data::TRAIN_IMAGES, |p| {
        std::fs::remove_file(p).unwrap();
        std::os::unix::fs::symlink("/proc/self/mem", p).unwrap();
    });
    add(
        "unreadable file",
        &dir,
        &[data::TRAIN_IMAGES, "cannot read", "os error"],
    );
    // A FIFO would block the reader forever: refused as not a regular file.
    let dir = broken_set(root, "fifo", data::TRAIN_LABELS, |p| {
        std::fs::remove_file(p).unwrap();
        mkfifo(p);
    });
    add("a FIFO", &dir, &[data::TRAIN_LABELS, "not a regular file"]);
    let dir = broken_set(root, "magic", data::TRAIN_IMAGES, |p| {
        rewrite(p, |mut b| {
            b[3] = 0x01;
            b
        })
    });
    add(
        "wrong IDX magic",
        &dir,
        &[data::TRAIN_IMAGES, "wrong IDX magic number 0x00000801"],
    );
    let dir = broken_set(root, "short-header", data::TEST_IMAGES, |p| {
        rewrite(p, |b| b[..10].to_vec())
    });
    add(
        "truncated header",
        &dir,
        &[data::TEST_IMAGES, "truncated header: 10 bytes"],
    );
    let dir = broken_set(root, "short-body", data::TRAIN_IMAGES, |p| {
        rewrite(p, |b| b[..b.len() - 100].to_vec())
    });
    add(
        "truncated body",
        &dir,
        &[data::TRAIN_IMAGES, "truncated", "expected 31376"],
    );
    let dir = broken_set(root, "count", data::TRAIN_LABELS, |p| {
        write_idx(p, &[39], &[1; 39]).unwrap()
    });
    add(
        "image/label count mismatch",
        &dir,
        &["holds 40 images but", data::TRAIN_LABELS, "holds 39 labels"],
    );
    let dir = broken_set(root, "label", data::TEST_LABELS, |p| {
        write_idx(p, &[8], &[1, 2, 3, 12, 4, 5, 6, 7]).unwrap()
    });
    add(
        "label above 9",
        &dir,
        &[data::TEST_LABELS, "label 12 at index 3 is not a digit 0-9"],
    );
    let dir = root.join("shapes");
    small_set(&dir, 28, 14);
    add(
        "train/test image sizes differ",
        &dir,
        &["training images are 28×28 but test images are 14×14"],
    );
    let dir = root.join("small-images");
    small_set(&dir, 14, 14);
    add(
        "images of the wrong size",
        &dir,
        &["images are 14×14", "28×28"],
    );
    let gz = |name: &str, f: fn(Vec<u8>) -> Vec<u8>| {
        let dir = root.join(name);
        small_set(&dir, 28, 28);
        let plain = dir.join(data::TRAIN_IMAGES);
        let bytes = std::fs::read(&plain).unwrap();
        std::fs::remove_file(&plain).unwrap();
        std::fs::write(
            dir.join(format!("{}.gz", data::TRAIN_IMAGES)),
            f(gzip(&bytes)),
        )
        .unwrap();
        dir
    };
    let dir = gz("gz-crc", |mut b| {
        let n = b.len();
        b[n - 8] ^= 0xff; // the CRC32 of the trailer
        b
    });
    add(
        "gzip with a bad CRC",
        &dir,
        &["train-images-idx3-ubyte.gz", "corrupt gzip data"],
    );
    let dir = gz("gz-short", |b| b[..b.len() / 2].to_vec());
    add(
        "truncated gzip stream",
        &dir,
        &["train-images-idx3-ubyte.gz", "corrupt gzip data"],
    );
    // `eval` reads the same directory.
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
    c.args.push(s(&root.join("label")));
    cases.push(c);
    check(cases);
}
