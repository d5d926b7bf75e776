//! `predict` on phone photos: a photo-like set made from MNIST *test* digits (tinted
//! paper, lighting gradient, grain σ 12–20, blur, ±12° rotation, a dark table edge on
//! some; see `common::photo`) must be read right at least 90% of the time by the model of
//! the default training run.

mod common;

use common::photo::{jpeg, photo};
use common::run::default_run;
use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage, Rgb, RgbImage};
use mnist_gpu::data::{builtin_dir, Mnist};
use mnist_gpu::model::Hyper;
use mnist_gpu::{cpu, modelfile, preprocess};

/// Photos in the set: test images 0, 50, 100, … (every digit class many times).
const PHOTOS: usize = 200;
const STRIDE: usize = 50;

#[test]
fn photos_of_test_digits_are_read_right_at_least_90_percent_of_the_time() {
    let test = Mnist::load(&builtin_dir()).expect("built-in MNIST").test;
    let params = modelfile::load_model(&default_run().model()).expect("default model");
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut failures = Vec::new();
    for n in 0..PHOTOS {
        let index = n * STRIDE;
        let (img, style) = photo(test.image(index), index as u64);
        match preprocess::from_bytes(&jpeg(&img)) {
            Ok(done) => {
                pixels.extend_from_slice(&done.pixels);
                labels.push((index, test.labels[index], style));
            }
            Err(e) => failures.push(format!("test image {index} ({style:?}): {e}")),
        }
    }
    let probabilities = cpu::infer(&params, Hyper::default().bn_eps, &pixels);
    let mut wrong = Vec::new();
    for ((index, label, style), p) in labels.iter().zip(&probabilities) {
        let digit = (0..10).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        if digit != *label as usize {
            wrong.push(format!(
                "test image {index}: {label} read as {digit} ({style:?})"
            ));
        }
    }
    let correct = PHOTOS - failures.len() - wrong.len();
    eprintln!(
        "{correct} of {PHOTOS} photos read right; not prepared: {failures:#?}; wrong: {wrong:#?}"
    );
    assert!(
        correct * 10 >= PHOTOS * 9,
        "only {correct} of {PHOTOS} photos read right"
    );
}

/// The photos shown in the README (`docs/photos/`), chosen to show each difficulty.
pub const README_PHOTOS: [usize; 4] = [150, 1050 + 50, 2850 + 50, 4450];

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
