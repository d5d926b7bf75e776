//! `predict` on phone photos: a photo-like set made from MNIST *test* digits (tinted
//! paper, lighting gradient, grain σ 12–20, blur, ±12° rotation, a dark table edge on
//! some; see `common::photo`) must be read right at least 90% of the time by the model of
//! the default training run.

mod common;

use common::photo::{jpeg, photo, read_photo_set};
use common::run::default_run;
use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage, Rgb, RgbImage};
use mnist_gpu::data::{builtin_dir, Mnist};
use mnist_gpu::preprocess;

#[test]
fn photos_of_test_digits_are_read_right_at_least_90_percent_of_the_time() {
    let score = read_photo_set(&default_run().model());
    eprintln!(
        "{} of {} photos read right; not prepared: {:#?}; wrong: {:#?}",
        score.correct, score.total, score.failures, score.wrong
    );
    assert!(
        score.correct * 10 >= score.total * 9,
        "only {} of {} photos read right",
        score.correct,
        score.total
    );
}

/// The photos shown in the README (`docs/photos/`), in the order of their file names: a
/// plain one, the first of the set that is read wrong, a dark table edge (the 9).
pub const README_PHOTOS: [usize; 5] = [4450, 1050, 2900, 1100, 150];

#[test]
#[ignore = "regenerates the committed docs/photos files"]
fn generate_readme_photos() {
    let test = Mnist::load(&builtin_dir()).expect("built-in MNIST").test;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/photos");
    std::fs::create_dir_all(&dir).unwrap();
    // A sheet for the README: each photo above the 28×28 input prepared from it.
    let cell = 150u32;
    let mut sheet =
        RgbImage::from_pixel(cell * README_PHOTOS.len() as u32, 2 * cell, Rgb([255; 3]));
    for (n, index) in README_PHOTOS.into_iter().enumerate() {
        let (img, style) = photo(test.image(index), index as u64);
        let name = format!("photo-{}-{index}.jpg", test.labels[index]);
        let bytes = jpeg(&img);
        std::fs::write(dir.join(&name), &bytes).unwrap();
        eprintln!("{name}: {style:?}");
        let shown = image::load_from_memory(&bytes).unwrap().to_rgb8();
        let fit = (cell - 10) as f32 / shown.width().max(shown.height()) as f32;
        let (w, h) = (
            (shown.width() as f32 * fit) as u32,
            (shown.height() as f32 * fit) as u32,
        );
        let shown = imageops::resize(&shown, w, h, FilterType::Triangle);
        let x = n as u32 * cell;
        imageops::replace(
            &mut sheet,
            &shown,
            (x + (cell - w) / 2) as i64,
            ((cell - h) / 2) as i64,
        );
        let input = preprocess::from_bytes(&bytes).unwrap().pixels;
        let input = GrayImage::from_raw(28, 28, input.to_vec()).unwrap();
        let input = imageops::resize(&input, 140, 140, FilterType::Nearest);
        let input = DynamicImage::ImageLuma8(input).to_rgb8();
        imageops::replace(&mut sheet, &input, (x + 5) as i64, (cell + 5) as i64);
    }
    sheet.save(dir.join("sheet.png")).unwrap();
}
