//! Pictures `predict` cannot read, and odd ones it must handle.

use crate::common::cli::*;
use crate::common::png::*;
use mnist_gpu::data;

/// An MNIST test digit as a `scale`× larger grey picture, dark ink on white.
fn digit_picture(index: usize, scale: u32) -> image::GrayImage {
    let m = data::Mnist::load(&data::builtin_dir()).unwrap();
    let src = m.test.image(index);
    image::GrayImage::from_fn(28 * scale, 28 * scale, |x, y| {
        image::Luma([255 - src[(y / scale * 28 + x / scale) as usize]])
    })
}

#[test]
fn predict_refuses_bad_pictures_and_handles_odd_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // A model that knows digits: trained briefly on the CPU.
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
    let model = s(&run.join("model.safetensors"));
    let write = |name: &str, bytes: &[u8]| -> String {
        let p = root.join(name);
        std::fs::write(&p, bytes).unwrap();
        s(&p)
    };
    let predict = |what: &str, file: &str, words: &[&str]| {
        let mut words = words.to_vec();
        words.push(file);
        case(what, &["predict", "--model", &model, file], &words)
    };
    let text_file = write("notes.png", b"these are not pixels\n");
    let empty = write("empty.png", b"");
    let zero = write("zero.png", &png_header_only(0, 10));
    let huge = write("huge.png", &png_header_only(100_000, 100_000));
    let tall = write("tall.png", &png_header_only(10, 9000));
    let gif = write("anim.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;");
    let fifo = root.join("pipe.png");
    mkfifo(&fifo);
    let mut broken = png_bytes(&image::DynamicImage::ImageLuma8(digit_picture(0, 2)));
    broken.truncate(broken.len() / 2);
    let truncated = write("truncated.png", &broken);
    let blank = write(
        "blank.png",
        &png_bytes(&image::DynamicImage::ImageLuma8(
            image::GrayImage::from_pixel(40, 40, image::Luma([255])),
        )),
    );
    check(vec![
        predict("missing", "/no/such/digit.png", &["no such file"]),
        predict("not an image", &text_file, &["not a PNG or JPEG"]),
        predict("empty", &empty, &["empty (0 bytes)"]),
        predict("zero-sized", &zero, &["0×10 pixels, which is empty"]),
        predict(
            "huge",
            &huge,
            &["100000×100000", "at most 8192 pixels a side"],
        ),
        predict("too tall", &tall, &["10×9000", "at most 8192"]),
        predict(
            "GIF (animated formats)",
            &gif,
            &["unsupported image format GIF"],
        ),
        predict("a FIFO", &s(&fifo), &["not a regular file"]),
        predict("a directory", &s(root), &["is a directory"]),
        predict("truncated", &truncated, &["truncated"]),
        predict("blank", &blank, &["no ink found"]),
    ]);

    // Handled: 16-bit grey, RGBA with alpha, and an APNG (its default image is used).
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
    let files = [
        (
            write(
                "sixteen.png",
                &png_bytes(&image::DynamicImage::ImageLuma16(sixteen)),
            ),
            7,
        ),
        (
            write(
                "alpha.png",
                &png_bytes(&image::DynamicImage::ImageRgba8(alpha)),
            ),
            2,
        ),
        (
            write(
                "animated.png",
                &apng(
                    &png_bytes(&image::DynamicImage::ImageLuma8(one)),
                    &png_bytes(&image::DynamicImage::ImageLuma8(seven.clone())),
                ),
            ),
            1,
        ),
    ];
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
