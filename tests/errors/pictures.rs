//! Pictures `predict` cannot read, and odd ones it must handle.

use crate::common::cli::*;
use crate::common::png::*;
use mnist_gpu::data;
use std::path::Path;

/// An MNIST test digit as a `scale`× larger grey picture, dark ink on white.
fn digit_picture(index: usize, scale: u32) -> image::GrayImage {
    let m = data::Mnist::load(&data::builtin_dir()).unwrap();
    let src = m.test.image(index);
    image::GrayImage::from_fn(28 * scale, 28 * scale, |x, y| {
        image::Luma([255 - src[(y / scale * 28 + x / scale) as usize]])
    })
}

/// A model that knows digits: trained briefly on the CPU into `root/run`.
fn trained_model(root: &Path) -> String {
    let run = root.join("run");
    let out = mnist_gpu(&train_with(
        &[
            "--train-limit",
            "6000",
            "--test-limit",
            "100",
            "--batch-size",
            "64",
        ],
        &s(&run),
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    s(&run.join("model.safetensors"))
}

/// Write `bytes` to `root/name`; its path.
fn write(root: &Path, name: &str, bytes: &[u8]) -> String {
    let p = root.join(name);
    std::fs::write(&p, bytes).unwrap();
    s(&p)
}

/// A case that predicts the digit in `file` with `model`; the error must also name
/// `file`.
fn predict(model: &str, what: &str, file: &str, words: &[&str]) -> Case {
    let mut words = words.to_vec();
    words.push(file);
    case(what, &["predict", "--model", model, file], &words)
}

/// Files that are not pictures: missing, text, empty, a GIF, a FIFO, a directory.
fn not_pictures(root: &Path, model: &str) -> Vec<Case> {
    let text_file = write(root, "notes.png", b"these are not pixels\n");
    let empty = write(root, "empty.png", b"");
    let gif = write(root, "anim.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;");
    let fifo = root.join("pipe.png");
    mkfifo(&fifo);
    vec![
        predict(model, "missing", "/no/such/digit.png", &["no such file"]),
        predict(model, "not an image", &text_file, &["not a PNG or JPEG"]),
        predict(model, "empty", &empty, &["empty (0 bytes)"]),
        predict(
            model,
            "GIF (animated formats)",
            &gif,
            &["unsupported image format GIF"],
        ),
        predict(model, "a FIFO", &s(&fifo), &["not a regular file"]),
        predict(model, "a directory", &s(root), &["is a directory"]),
    ]
}

/// PNGs that cannot be used: of no pixels or too many, cut off, or with no ink.
fn unusable_pictures(root: &Path, model: &str) -> Vec<Case> {
    let zero = write(root, "zero.png", &png_header_only(0, 10));
    let huge = write(root, "huge.png", &png_header_only(100_000, 100_000));
    let tall = write(root, "tall.png", &png_header_only(10, 9000));
    let mut broken = png_bytes(&image::DynamicImage::ImageLuma8(digit_picture(0, 2)));
    broken.truncate(broken.len() / 2);
    let truncated = write(root, "truncated.png", &broken);
    let blank = write(
        root,
        "blank.png",
        &png_bytes(&image::DynamicImage::ImageLuma8(
            image::GrayImage::from_pixel(40, 40, image::Luma([255])),
        )),
    );
    vec![
        predict(model, "zero-sized", &zero, &["0×10 pixels, which is empty"]),
        predict(
            model,
            "huge",
            &huge,
            &["100000×100000", "at most 8192 pixels a side"],
        ),
        predict(model, "too tall", &tall, &["10×9000", "at most 8192"]),
        predict(model, "truncated", &truncated, &["truncated"]),
        predict(model, "blank", &blank, &["no ink found"]),
    ]
}

/// Odd pictures `predict` must handle, each with the digit it shows: 16-bit grey, RGBA
/// with alpha, and an APNG (its default image is used).
fn odd_pictures(root: &Path) -> [(String, i32); 3] {
    // Test digits 0, 1, 2 of MNIST are a 7, a 2 and a 1.
    let seven = digit_picture(0, 3);
    let sixteen = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(84, 84, |x, y| {
        image::Luma([seven.get_pixel(x, y).0[0] as u16 * 257])
    });
    let two = digit_picture(1, 3);
    let alpha = image::RgbaImage::from_fn(84, 84, |x, y| {
        // Ink opaque black, background fully transparent.
        let ink = 255 - two.get_pixel(x, y).0[0];
        image::Rgba([0, 0, 0, ink])
    });
    let one = digit_picture(2, 3);
    let sixteen = png_bytes(&image::DynamicImage::ImageLuma16(sixteen));
    let alpha = png_bytes(&image::DynamicImage::ImageRgba8(alpha));
    let animated = apng(
        &png_bytes(&image::DynamicImage::ImageLuma8(one)),
        &png_bytes(&image::DynamicImage::ImageLuma8(seven.clone())),
    );
    [
        (write(root, "sixteen.png", &sixteen), 7),
        (write(root, "alpha.png", &alpha), 2),
        (write(root, "animated.png", &animated), 1),
    ]
}

#[test]
fn predict_refuses_bad_pictures_and_handles_odd_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = trained_model(root);
    let mut cases = not_pictures(root, &model);
    cases.extend(unusable_pictures(root, &model));
    check(cases);

    let files = odd_pictures(root);
    let mut args = vec![
        "predict".to_string(),
        "--model".into(),
        model.clone(),
        "--json".into(),
    ];
    args.extend(files.iter().map(|(f, _)| f.clone()));
    let out = mnist_gpu(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let predictions: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for ((file, digit), p) in files.iter().zip(&predictions) {
        assert_eq!(p["file"], *file);
        assert_eq!(p["digit"], *digit, "{file}: {p}");
    }
}
