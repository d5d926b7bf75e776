//! Data loading: the real MNIST facts, agreement with the independent `mnist` crate, and
//! every kind of malformed input reported as a clear error.

mod common;

use common::cli::gzip;
use mnist_gpu::data::{self, write_idx, DataError, Mnist};
use std::path::Path;

fn builtin() -> Mnist {
    Mnist::load(&data::builtin_dir()).expect("the built-in MNIST loads")
}

#[test]
fn builtin_mnist_has_the_known_facts() {
    let m = builtin();
    assert_eq!(
        (m.train.len(), m.train.rows, m.train.cols),
        (60_000, 28, 28)
    );
    assert_eq!((m.test.len(), m.test.rows, m.test.cols), (10_000, 28, 28));
    assert_eq!(&m.train.labels[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    assert_eq!(&m.test.labels[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    let counts = |labels: &[u8]| {
        let mut c = [0usize; 10];
        labels.iter().for_each(|&l| c[l as usize] += 1);
        c
    };
    assert_eq!(
        counts(&m.train.labels),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        counts(&m.test.labels),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    let mean = m.train.images.iter().map(|&p| p as f64).sum::<f64>() / m.train.images.len() as f64;
    assert!((mean - 33.318).abs() < 0.01, "pixel mean {mean}");
}

#[test]
fn the_copy_compiled_into_the_binary_equals_the_assets() {
    let embedded = Mnist::embedded(None, None).unwrap();
    let files = builtin();
    assert!(embedded.train == files.train && embedded.test == files.test);
}

/// Gunzip the built-in files into a temp dir and read them with the `mnist` crate.
#[test]
fn agrees_with_the_mnist_crate_on_uncompressed_files() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        data::TRAIN_IMAGES,
        data::TRAIN_LABELS,
        data::TEST_IMAGES,
        data::TEST_LABELS,
    ] {
        let bytes = data::read_maybe_gz(&data::builtin_dir().join(format!("{name}.gz"))).unwrap();
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let ours = Mnist::load(dir.path()).unwrap();
    let base = format!("{}/", dir.path().display());
    let theirs = mnist::MnistBuilder::new()
        .base_path(&base)
        .label_format_digit()
        .training_set_length(60_000)
        .validation_set_length(0)
        .test_set_length(10_000)
        .finalize();
    assert!(ours.train.images == theirs.trn_img);
    assert!(ours.train.labels == theirs.trn_lbl);
    assert!(ours.test.images == theirs.tst_img);
    assert!(ours.test.labels == theirs.tst_lbl);
    // And the plain files give exactly what the gzipped ones give.
    let gz = builtin();
    assert!(gz.train.images == ours.train.images && gz.test.labels == ours.test.labels);
}

/// A small valid data set: 6 training and 3 test images of 28×28.
fn write_small_set(dir: &Path) {
    let image =
        |i: usize| -> Vec<u8> { (0..784).map(|p| ((p * 7 + i * 13) % 256) as u8).collect() };
    let images = |n: usize| (0..n).flat_map(image).collect::<Vec<u8>>();
    write_idx(&dir.join(data::TRAIN_IMAGES), &[6, 28, 28], &images(6)).unwrap();
    write_idx(&dir.join(data::TRAIN_LABELS), &[6], &[0, 1, 2, 3, 4, 9]).unwrap();
    write_idx(&dir.join(data::TEST_IMAGES), &[3, 28, 28], &images(3)).unwrap();
    write_idx(&dir.join(data::TEST_LABELS), &[3], &[5, 6, 7]).unwrap();
}

#[test]
fn reads_plain_and_gzipped_small_sets() {
    let dir = tempfile::tempdir().unwrap();
    write_small_set(dir.path());
    let plain = Mnist::load(dir.path()).unwrap();
    assert_eq!(plain.train.labels, vec![0, 1, 2, 3, 4, 9]);
    assert_eq!(plain.test.image(2)[..3], [26, 33, 40]);
    // Gzip one file in place of its plain twin.
    let path = dir.path().join(data::TEST_IMAGES);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(
        dir.path().join(format!("{}.gz", data::TEST_IMAGES)),
        gzip(&bytes),
    )
    .unwrap();
    assert_eq!(Mnist::load(dir.path()).unwrap().test, plain.test);
    assert_eq!(plain.train.clone().truncated(2).labels, vec![0, 1]);
}

/// Build a valid small set, break one file with `damage`, and check the error message
/// names that file and contains `expect`.
fn assert_broken(file: &str, damage: impl FnOnce(&Path), expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    write_small_set(dir.path());
    damage(&dir.path().join(file));
    let error = Mnist::load(dir.path())
        .expect_err("a broken file must be an error")
        .to_string();
    assert!(error.contains(file), "error does not name {file}: {error}");
    assert!(error.contains(expect), "error lacks '{expect}': {error}");
}

/// A damage for [`assert_broken`]: replaces the file's bytes with `f` of them.
fn rewrite(f: fn(Vec<u8>) -> Vec<u8>) -> impl FnOnce(&Path) {
    move |p: &Path| std::fs::write(p, f(std::fs::read(p).unwrap())).unwrap()
}

#[test]
fn malformed_files_are_clear_errors() {
    assert_wrong_lengths_are_refused();
    assert_wrong_magic_and_labels_are_refused();
    assert_corrupt_gzip_is_refused();
    assert_broken(
        data::TRAIN_IMAGES,
        |p| {
            std::fs::remove_file(p).unwrap();
            std::fs::create_dir(p).unwrap()
        },
        "directory",
    );
}

/// Empty, cut-short and overlong files are refused.
fn assert_wrong_lengths_are_refused() {
    assert_broken(data::TRAIN_IMAGES, rewrite(|_| Vec::new()), "empty");
    assert_broken(
        data::TRAIN_IMAGES,
        rewrite(|b| b[..10].to_vec()),
        "truncated header",
    );
    assert_broken(
        data::TRAIN_IMAGES,
        rewrite(|b| b[..b.len() - 1].to_vec()),
        "truncated",
    );
    assert_broken(
        data::TRAIN_IMAGES,
        rewrite(|mut b| {
            b.push(0);
            b
        }),
        "trailing data",
    );
}

/// Wrong magic numbers in image and label files, and an out-of-range label, are refused.
fn assert_wrong_magic_and_labels_are_refused() {
    assert_broken(
        data::TRAIN_IMAGES,
        rewrite(|mut b| {
            b[3] = 0x01;
            b
        }),
        "magic",
    );
    assert_broken(
        data::TEST_LABELS,
        rewrite(|mut b| {
            b[3] = 0x03;
            b
        }),
        "magic",
    );
    assert_broken(
        data::TRAIN_LABELS,
        rewrite(|mut b| {
            b[9] = 10;
            b
        }),
        "label 10 at index 1",
    );
}

/// Damaged gzip streams are refused as corrupt.
fn assert_corrupt_gzip_is_refused() {
    // Gzip with a broken CRC, and a truncated gzip stream.
    assert_broken(
        data::TRAIN_LABELS,
        rewrite(|b| {
            let mut g = gzip(&b);
            let n = g.len();
            g[n - 6] ^= 0xff;
            g
        }),
        "corrupt gzip",
    );
    assert_broken(
        data::TRAIN_LABELS,
        rewrite(|b| {
            let g = gzip(&b);
            g[..g.len() / 2].to_vec()
        }),
        "corrupt gzip",
    );
}

#[test]
fn inconsistent_sets_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_small_set(dir.path());
    write_idx(&dir.path().join(data::TRAIN_LABELS), &[5], &[0, 1, 2, 3, 4]).unwrap();
    let e = Mnist::load(dir.path()).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::CountMismatch {
                image_count: 6,
                label_count: 5,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("6 images but"), "{e}");

    write_small_set(dir.path());
    write_idx(
        &dir.path().join(data::TEST_IMAGES),
        &[3, 14, 56],
        &vec![0; 3 * 784],
    )
    .unwrap();
    let e = Mnist::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("28×28") && e.contains("14×56"), "{e}");

    write_small_set(dir.path());
    write_idx(
        &dir.path().join(data::TRAIN_IMAGES),
        &[6, 14, 14],
        &vec![0; 6 * 196],
    )
    .unwrap();
    write_idx(
        &dir.path().join(data::TEST_IMAGES),
        &[3, 14, 14],
        &vec![0; 3 * 196],
    )
    .unwrap();
    let e = Mnist::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("28×28"), "{e}");
}

#[test]
fn missing_things_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let e = Mnist::load(&missing).unwrap_err().to_string();
    assert!(e.contains("does not exist") && e.contains("nope"), "{e}");

    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(Mnist::load(&file)
        .unwrap_err()
        .to_string()
        .contains("not a directory"));

    write_small_set(dir.path());
    std::fs::remove_file(dir.path().join(data::TEST_LABELS)).unwrap();
    let e = Mnist::load(dir.path()).unwrap_err().to_string();
    for name in [
        data::TRAIN_IMAGES,
        data::TRAIN_LABELS,
        data::TEST_IMAGES,
        data::TEST_LABELS,
    ] {
        assert!(e.contains(name), "the message should list {name}: {e}");
    }
}
