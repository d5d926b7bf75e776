//! The pictures a run leaves behind: they decode, have the documented layout and size,
//! show the right digits and mark the wrong predictions; the confusion matrix counts;
//! files are replaced atomically.

mod common;

use image::RgbImage;
use mnist_gpu::backend::EpochRecord;
use mnist_gpu::data::Dataset;
use mnist_gpu::report::{
    confusion_matrix, digit_origin, digit_shade, draw_confusion, draw_curves, draw_predictions,
    format_confusion, label_rect, predictions_size, tick_label, tile_origin, write_atomic, x_range,
    ReportError, CONFUSION_SIZE, CURVES_SIZE, DIGIT_PX, DIGIT_SIZE, LABEL_HEIGHT, TILE_HEIGHT,
    TILE_SCALE, TILE_WIDTH,
};
use std::path::Path;
use std::sync::OnceLock;

/// The first 150 MNIST test images.
fn test_set() -> &'static Dataset {
    static TEST: OnceLock<Dataset> = OnceLock::new();
    TEST.get_or_init(|| common::data::test_set().clone().truncated(150))
}

fn read_png(path: &Path) -> RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

fn is_red(p: &image::Rgb<u8>) -> bool {
    p.0[0] > 150 && p.0[1] < 90 && p.0[2] < 90
}

fn is_dark(p: &image::Rgb<u8>) -> bool {
    p.0.iter().all(|&c| c < 100)
}

/// Pixels of the label strip of tile `k`.
fn label_pixels(img: &RgbImage, k: usize) -> Vec<image::Rgb<u8>> {
    let (x, y, w, h) = label_rect(k);
    (y..y + h)
        .flat_map(|yy| (x..x + w).map(move |xx| (xx, yy)))
        .map(|(xx, yy)| *img.get_pixel(xx, yy))
        .collect()
}

/// Every source pixel of test image `index` is a TILE_SCALE² block of its shade in tile `k`.
fn assert_tile_shows(img: &RgbImage, k: usize, digit: &[u8], what: &str) {
    let (dx, dy) = digit_origin(k);
    for y in 0..DIGIT_SIZE {
        for x in 0..DIGIT_SIZE {
            let want = digit_shade(digit[(y * DIGIT_SIZE + x) as usize]);
            for sy in 0..TILE_SCALE {
                for sx in 0..TILE_SCALE {
                    let got = img.get_pixel(dx + x * TILE_SCALE + sx, dy + y * TILE_SCALE + sy);
                    assert_eq!(*got, want, "{what}: tile {k}, source pixel ({x}, {y})");
                }
            }
        }
    }
}

#[test]
fn layout_constants_are_consistent() {
    assert_eq!(DIGIT_PX, DIGIT_SIZE * TILE_SCALE);
    assert_eq!(tile_origin(1).0 - tile_origin(0).0, TILE_WIDTH);
    assert_eq!(tile_origin(10).1 - tile_origin(0).1, TILE_HEIGHT);
    assert_eq!(tile_origin(10).0, tile_origin(0).0);
    let (x, y) = tile_origin(37);
    let (dx, dy) = digit_origin(37);
    assert_eq!(dy, y + LABEL_HEIGHT);
    assert!(dx > x && dx + DIGIT_PX < x + TILE_WIDTH);
    let (w, h) = predictions_size(100);
    let (lx, ly) = tile_origin(99);
    assert!(lx + TILE_WIDTH <= w && ly + TILE_HEIGHT <= h);
    assert_eq!(predictions_size(30).1, predictions_size(21).1);
    assert!(predictions_size(30).1 < predictions_size(31).1);
}

#[test]
fn predictions_grid_shows_the_test_images_and_marks_mistakes() {
    let test = test_set();
    let mut predictions = test.labels.clone();
    let wrong = [3usize, 42, 99];
    for &i in &wrong {
        predictions[i] = (predictions[i] + 1) % 10;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("predictions.png");
    draw_predictions(test, 0, &predictions, &path).unwrap();
    let img = read_png(&path);
    assert_eq!(img.dimensions(), predictions_size(100));

    for k in [0usize, 3, 7, 42, 55, 99] {
        assert_tile_shows(&img, k, test.image(k), "offset 0");
    }
    for k in 0..100 {
        let label = label_pixels(&img, k);
        let red = label.iter().filter(|p| is_red(p)).count();
        if wrong.contains(&k) {
            assert!(
                red > 20,
                "tile {k} is a wrong prediction: its label must be red ({red} red pixels)"
            );
        } else {
            assert_eq!(red, 0, "tile {k} is correct: no red in its label");
            let dark = label.iter().filter(|p| is_dark(p)).count();
            assert!(dark > 5, "tile {k}: its label must be written in black");
        }
    }
    // "p (true t)" is wider than a lone digit.
    let width_of_ink = |k: usize| {
        let (x, y, w, h) = label_rect(k);
        let cols: Vec<u32> = (x..x + w)
            .filter(|&xx| {
                (y..y + h).any(|yy| *img.get_pixel(xx, yy) != image::Rgb([255, 255, 255]))
            })
            .collect();
        cols.last().unwrap() - cols.first().unwrap()
    };
    assert!(
        width_of_ink(42) > 3 * width_of_ink(41),
        "wrong labels also name the true label"
    );
}

#[test]
fn predictions_grid_with_an_offset_and_a_short_tail() {
    let test = test_set();
    let dir = tempfile::tempdir().unwrap();
    // 150 images, offset 120: 30 drawn, in 3 rows; predictions given for the drawn ones only.
    let shown: Vec<u8> = test.labels[120..].iter().map(|l| (l + 1) % 10).collect();
    let path = dir.path().join("tail.png");
    draw_predictions(test, 120, &shown, &path).unwrap();
    let img = read_png(&path);
    assert_eq!(img.dimensions(), predictions_size(30));
    for k in [0usize, 9, 10, 29] {
        assert_tile_shows(&img, k, test.image(120 + k), "offset 120");
        assert!(
            label_pixels(&img, k).iter().any(is_red),
            "tile {k} is wrong: red label"
        );
    }
    // Same with predictions for the whole set.
    let path = dir.path().join("tail-full.png");
    draw_predictions(test, 120, &test.labels, &path).unwrap();
    let img = read_png(&path);
    assert_tile_shows(&img, 5, test.image(125), "offset 120, full predictions");
    assert!(!label_pixels(&img, 5).iter().any(is_red));
}

#[test]
fn predictions_grid_rejects_bad_arguments() {
    let test = test_set();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.png");
    for (offset, predictions) in [(150, test.labels.clone()), (0, vec![1u8; 7])] {
        let err = draw_predictions(test, offset, &predictions, &path).unwrap_err();
        assert!(matches!(err, ReportError::Invalid { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
    let err = draw_predictions(test, 0, &test.labels, &dir.path().join("p.bmp")).unwrap_err();
    assert!(
        matches!(err, ReportError::UnsupportedFormat { .. }),
        "{err:?}"
    );
    let missing_dir = dir.path().join("no-such-dir").join("p.png");
    let err = draw_predictions(test, 0, &test.labels, &missing_dir).unwrap_err();
    assert!(matches!(err, ReportError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-dir"), "{err}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing left behind"
    );
}

fn history(epochs: usize) -> Vec<EpochRecord> {
    (1..=epochs)
        .map(|e| {
            let t = e as f64;
            EpochRecord {
                epoch: e,
                loss: 0.5 / t,
                accuracy: 1.0 - 0.1 / t,
                val_loss: 0.45 / t + 0.01 * t,
                val_accuracy: 0.98 - 0.08 / t,
                seconds: 1.0,
                samples_per_second: 60_000.0,
            }
        })
        .collect()
}

#[test]
fn curves_for_one_and_many_epochs() {
    let dir = tempfile::tempdir().unwrap();
    for epochs in [1usize, 2, 10] {
        let path = dir.path().join(format!("curves-{epochs}.png"));
        draw_curves(&history(epochs), &path).unwrap();
        let img = read_png(&path);
        assert_eq!(img.dimensions(), CURVES_SIZE, "{epochs} epochs");
        // Both colours (train blue, validation orange) are drawn in both halves.
        let half = CURVES_SIZE.0 / 2;
        for (side, xs) in [("loss", 0..half), ("accuracy", half..CURVES_SIZE.0)] {
            let has = |want: [u8; 3]| {
                xs.clone().any(|x| {
                    (0..CURVES_SIZE.1).any(|y| {
                        let p = img.get_pixel(x, y).0;
                        (0..3).all(|c| (p[c] as i32 - want[c] as i32).abs() < 12)
                    })
                })
            };
            assert!(
                has([31, 119, 180]),
                "{epochs} epochs, {side}: train series missing"
            );
            assert!(
                has([255, 127, 14]),
                "{epochs} epochs, {side}: validation series missing"
            );
            let dark = xs
                .clone()
                .flat_map(|x| (0..CURVES_SIZE.1).map(move |y| (x, y)))
                .filter(|&(x, y)| is_dark(img.get_pixel(x, y)))
                .count();
            assert!(dark > 500, "{epochs} epochs, {side}: axes and text missing");
        }
    }
}

#[test]
fn curves_survive_a_diverged_run_and_refuse_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = history(3);
    h[2].loss = f64::NAN;
    h[2].val_loss = f64::INFINITY;
    let path = dir.path().join("nan.png");
    draw_curves(&h, &path).unwrap();
    assert_eq!(read_png(&path).dimensions(), CURVES_SIZE);
    let err = draw_curves(&[], &path).unwrap_err();
    assert!(matches!(err, ReportError::Invalid { .. }), "{err:?}");
}

#[test]
fn tick_labels_stay_short_and_readable() {
    assert_eq!(tick_label(0.25, 0.3), "0.25");
    assert_eq!(tick_label(0.0, 0.3), "0");
    assert_eq!(tick_label(0.9712, 0.02), "0.971");
    assert_eq!(tick_label(3.0, 10.0), "3");
    assert_eq!(tick_label(2.5e9, 3e9), "2.5e9");
    assert_eq!(tick_label(120_000.0, 2e5), "1.2e5");
    for span in [1e-4, 0.01, 0.3, 2.0, 80.0, 5e3, 7e8, 4e15] {
        for k in 0..=5 {
            let label = tick_label(span * k as f64 / 5.0, span);
            assert!(label.len() <= 8, "{label} (span {span})");
        }
    }
    // Neither end tick of the epoch axis sits on the plot's edge.
    let (lo, hi) = x_range(1.0, 10.0);
    assert!(lo < 1.0 && hi > 10.0 && hi - 10.0 >= 0.3, "{lo}..{hi}");
    let (lo, hi) = x_range(3.0, 3.0);
    assert!(lo < 3.0 && hi > 3.0);
}

#[test]
fn curves_stay_readable_when_the_loss_is_huge() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = history(10);
    h[6].loss = 3.7e9;
    h[7].val_loss = 8.1e11;
    let path = dir.path().join("huge.png");
    draw_curves(&h, &path).unwrap();
    let img = read_png(&path);
    // Nothing cut off at either panel's left edge (a label wider than its area would be).
    for x0 in [0, CURVES_SIZE.0 / 2] {
        let cut = (x0..x0 + 3)
            .flat_map(|x| (0..CURVES_SIZE.1).map(move |y| (x, y)))
            .filter(|&(x, y)| is_dark(img.get_pixel(x, y)))
            .count();
        assert_eq!(cut, 0, "dark pixels at the panel's left edge (x = {x0})");
    }
}

#[test]
fn confusion_matrix_counts_and_formats() {
    let labels = [0u8, 0, 1, 1, 1, 2, 9, 9, 3, 3];
    let predictions = [0u8, 6, 1, 1, 7, 2, 9, 4, 3, 3];
    let m = confusion_matrix(&labels, &predictions);
    assert_eq!(m[0][0], 1);
    assert_eq!(m[0][6], 1);
    assert_eq!(m[1][1], 2);
    assert_eq!(m[1][7], 1);
    assert_eq!(m[2][2], 1);
    assert_eq!(m[9][9], 1);
    assert_eq!(m[9][4], 1);
    assert_eq!(m[3][3], 2);
    assert_eq!(m.iter().flatten().sum::<u32>(), 10);
    for (t, row) in m.iter().enumerate() {
        let n = labels.iter().filter(|&&l| l as usize == t).count() as u32;
        assert_eq!(
            row.iter().sum::<u32>(),
            n,
            "row {t} sums to the count of label {t}"
        );
    }

    // Realistic sizes: the diagonal values appear in their rows, columns align.
    let test = test_set();
    let predictions: Vec<u8> = test
        .labels
        .iter()
        .enumerate()
        .map(|(i, &l)| if i % 7 == 0 { (l + 3) % 10 } else { l })
        .collect();
    let m = confusion_matrix(&test.labels, &predictions);
    let text = format_confusion(&m);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 11, "{text}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        &header[1..],
        ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
        "{text}"
    );
    for (t, line) in lines[1..].iter().enumerate() {
        let cells: Vec<u32> = line
            .split_whitespace()
            .map(|c| c.parse().unwrap())
            .collect();
        assert_eq!(cells[0], t as u32, "{text}");
        assert_eq!(&cells[1..], &m[t], "{text}");
        assert_eq!(cells[1 + t], m[t][t]);
    }
    let width = lines[0].len();
    assert!(lines.iter().all(|l| l.len() == width), "aligned:\n{text}");
}

#[test]
#[should_panic(expected = "labels but")]
fn confusion_matrix_refuses_mismatched_lengths() {
    confusion_matrix(&[1, 2, 3], &[1, 2]);
}

#[test]
fn confusion_picture_decodes() {
    let test = test_set();
    let predictions: Vec<u8> = test
        .labels
        .iter()
        .map(|&l| if l == 4 { 9 } else { l })
        .collect();
    let m = confusion_matrix(&test.labels, &predictions);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confusion.png");
    draw_confusion(&m, &path).unwrap();
    let img = read_png(&path);
    assert_eq!(img.dimensions(), CONFUSION_SIZE);
    assert!(
        img.pixels().filter(|p| is_dark(p)).count() > 1000,
        "cells and text drawn"
    );
    // An empty matrix draws too.
    draw_confusion(&[[0; 10]; 10], &path).unwrap();
    assert_eq!(read_png(&path).dimensions(), CONFUSION_SIZE);
}

#[test]
fn write_atomic_replaces_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.bin");
    write_atomic(&path, b"first").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"first");
    write_atomic(&path, b"second, longer").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["model.bin"], "no temp file left");

    // A picture over an existing file replaces it; a failed write keeps the old one.
    let pic = dir.path().join("confusion.png");
    std::fs::write(&pic, b"old").unwrap();
    draw_confusion(&[[1; 10]; 10], &pic).unwrap();
    assert_eq!(read_png(&pic).dimensions(), CONFUSION_SIZE);
    let err = draw_curves(&[], &pic).unwrap_err();
    assert!(matches!(err, ReportError::Invalid { .. }));
    assert_eq!(
        read_png(&pic).dimensions(),
        CONFUSION_SIZE,
        "previous picture intact"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}
