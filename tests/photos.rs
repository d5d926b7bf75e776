//! `predict` on phone photos, made from MNIST *test* digits, read by the model of the
//! default training run: a photo-like set (tinted paper, lighting gradient, grain σ 12–20,
//! blur, ±12° rotation, a dark table edge on some; see `common::photo`), the same photos
//! from 100 to 4000 pixels a side, and pencil on ruled notebook paper
//! (`common::notebook`). At least 95% of each must be read right.

mod common;

use common::notebook::pencil_on_notebook;
use common::photo::{jpeg, photo, read_jpegs, read_photo_set, PhotoScore, STRIDE};
use common::run::{default_run, readme_models};
use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage, Rgb, RgbImage};
use mnist_gpu::data::{builtin_dir, Mnist};
use mnist_gpu::preprocess;

/// Asserts that at least 95% of `score`'s pictures were read right, saying which were not.
fn at_least_95_percent(what: &str, score: &PhotoScore) {
    eprintln!(
        "{what}: {} of {} read right; not prepared: {:#?}; wrong: {:#?}",
        score.correct, score.total, score.failures, score.wrong
    );
    assert!(
        score.correct * 20 >= score.total * 19,
        "{what}: only {} of {} read right",
        score.correct,
        score.total
    );
}

#[test]
fn photos_of_test_digits_are_read_right_at_least_95_percent_of_the_time() {
    at_least_95_percent("photos", &read_photo_set(&default_run().model()));
}

/// Pictures in each of the sets below.
const SET: usize = 60;

/// The first [`SET`] photos of the set again, resized (triangle filter) so that their
/// longer side is 100, 1000 and 4000 pixels: a thumbnail, a scan, a 12-megapixel phone.
#[test]
fn photos_from_100_to_4000_pixels_a_side_are_read() {
    let test = Mnist::load(&builtin_dir()).expect("built-in MNIST").test;
    for side in [100, 1000, 4000] {
        let score = read_jpegs(&default_run().model(), photo_set(&test, Some(side)));
        at_least_95_percent(&format!("photos {side} px a side"), &score);
    }
}

/// The first [`SET`] photos of the set, as made or resized (triangle filter) so that
/// their longer side is `side` pixels.
fn photo_set(
    test: &mnist_gpu::data::Dataset,
    side: Option<u32>,
) -> impl Iterator<Item = (usize, Vec<u8>, String)> + '_ {
    (0..SET).map(|n| n * STRIDE).map(move |index| {
        let (mut img, style) = photo(test.image(index), index as u64);
        if let Some(side) = side {
            let fit = side as f32 / img.width().max(img.height()) as f32;
            let (w, h) = (img.width() as f32 * fit, img.height() as f32 * fit);
            img = imageops::resize(
                &img,
                w.round() as u32,
                h.round() as u32,
                FilterType::Triangle,
            );
        }
        (index, jpeg(&img), format!("{style:?}"))
    })
}

/// Test digits written in pencil on ruled notebook paper and photographed (see
/// `common::notebook`). Before the ruled lines' ragged edges and dashes were removed
/// with them, 41 of these 60 were read right.
#[test]
fn pencil_on_notebook_paper_is_read() {
    let score = read_jpegs(&default_run().model(), notebook_pictures());
    at_least_95_percent("pencil on notebook paper", &score);
}

/// Every README model's scores on the same sets, for the README's table (it trains the
/// convnet's and the augmented runs first, a few minutes):
/// `cargo test --release --test photos -- --ignored every_readme_model --nocapture`.
#[test]
#[ignore = "trains the convnet and the augmented models"]
fn every_readme_model_reads_the_same_sets() {
    let test = Mnist::load(&builtin_dir()).expect("built-in MNIST").test;
    for (name, run) in readme_models() {
        let model = run().model();
        let mut scores = vec![("photos".to_string(), read_photo_set(&model))];
        for side in [100, 1000, 4000] {
            let score = read_jpegs(&model, photo_set(&test, Some(side)));
            scores.push((format!("photos {side} px a side"), score));
        }
        scores.push((
            "pencil on notebook paper".into(),
            read_jpegs(&model, notebook_pictures()),
        ));
        for (what, score) in &scores {
            eprintln!("{name}, {what}: {} of {}", score.correct, score.total);
        }
    }
}

/// The [`SET`] notebook pictures: test image `163·n + 11`, seeded with its index.
fn notebook_pictures() -> impl Iterator<Item = (usize, Vec<u8>, String)> {
    let test = Mnist::load(&builtin_dir()).expect("built-in MNIST").test;
    (0..SET).map(move |n| {
        let index = 163 * n + 11;
        let img = pencil_on_notebook(test.image(index), index as u64);
        (index, jpeg(&img), "pencil on notebook paper".to_string())
    })
}

/// The photos shown in the README (`docs/photos/`), in the order of their file names: a
/// plain one, the first of the set that is read wrong, a dark table edge (the 9).
pub const README_PHOTOS: [usize; 5] = [4450, 1050, 2900, 1100, 150];

#[test]
#[ignore = "regenerates the committed docs/photos files"]
fn generate_readme_photos() {
    let test = Mnist::load(&builtin_dir()).expect("built-in MNIST").test;
    let pictures = README_PHOTOS.map(|index| {
        let (img, style) = photo(test.image(index), index as u64);
        eprintln!("photo {index}: {style:?}");
        (
            format!("photo-{}-{index}.jpg", test.labels[index]),
            jpeg(&img),
        )
    });
    write_readme_pictures("docs/photos", &pictures);
}

/// The notebook pictures shown in the README (`docs/notebook/`), in the order of their
/// file names: test images `163·n + 11` for n = 3, 10 (the 5, which the default run's
/// model reads wrong), 0 and 2.
pub const README_NOTEBOOK: [usize; 4] = [500, 1641, 11, 337];

#[test]
#[ignore = "regenerates the committed docs/notebook files"]
fn generate_readme_notebook() {
    let test = Mnist::load(&builtin_dir()).expect("built-in MNIST").test;
    let pictures = README_NOTEBOOK.map(|index| {
        let img = pencil_on_notebook(test.image(index), index as u64);
        (
            format!("notebook-{}-{index}.jpg", test.labels[index]),
            jpeg(&img),
        )
    });
    write_readme_pictures("docs/notebook", &pictures);
}

/// Writes `pictures` (file name, JPEG bytes) into `dir` of the checkout, and
/// `sheet.png` beside them for the README: each picture above the 28×28 input `predict`
/// makes of it.
fn write_readme_pictures(dir: &str, pictures: &[(String, Vec<u8>)]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cell = 150u32;
    let mut sheet = RgbImage::from_pixel(cell * pictures.len() as u32, 2 * cell, Rgb([255; 3]));
    for (n, (name, bytes)) in pictures.iter().enumerate() {
        std::fs::write(dir.join(name), bytes).unwrap();
        let shown = image::load_from_memory(bytes).unwrap().to_rgb8();
        let fit = (cell - 10) as f32 / shown.width().max(shown.height()) as f32;
        let (w, h) = (
            (shown.width() as f32 * fit) as u32,
            (shown.height() as f32 * fit) as u32,
        );
        let shown = imageops::resize(&shown, w, h, FilterType::Triangle);
        let x = n as u32 * cell;
        let (left, top) = ((x + (cell - w) / 2) as i64, ((cell - h) / 2) as i64);
        imageops::replace(&mut sheet, &shown, left, top);
        let input = preprocess::from_bytes(bytes).unwrap().pixels;
        let input = GrayImage::from_raw(28, 28, input.to_vec()).unwrap();
        let input = imageops::resize(&input, 140, 140, FilterType::Nearest);
        let input = DynamicImage::ImageLuma8(input).to_rgb8();
        imageops::replace(&mut sheet, &input, (x + 5) as i64, (cell + 5) as i64);
    }
    sheet.save(dir.join("sheet.png")).unwrap();
}
