//! Photo-like pictures of MNIST digits, as a phone would take them of a digit written on
//! paper: tinted paper, pen or pencil ink, ±12° rotation, a lighting gradient, sometimes
//! a dark table edge along one side, lens blur, sensor grain (σ 12–20 grey levels) and
//! JPEG compression. Every picture is determined by its seed.

#![allow(dead_code)]

use image::codecs::jpeg::JpegEncoder;
use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage, Rgb, RgbImage};
use imageproc::filter::gaussian_blur_f32;
use imageproc::geometric_transformations::{rotate_about_center, Border, Interpolation};
use imageproc::noise::gaussian_noise_mut;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How one picture was made (for messages and the README's captions).
#[derive(Clone, Debug)]
pub struct PhotoStyle {
    pub width: u32,
    pub height: u32,
    pub degrees: f32,
    pub grain: f64,
    pub blur: f32,
    /// Brightness lost across the picture by the lighting gradient (0–1).
    pub shading: f32,
    /// Which edge has a dark strip (a table edge), if any.
    pub edge: Option<&'static str>,
}

/// A photo-like RGB picture of `digit` (28×28 MNIST pixels) and how it was made.
pub fn photo(digit: &[u8], seed: u64) -> (RgbImage, PhotoStyle) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (width, height) = (rng.random_range(160..=320), rng.random_range(160..=320));
    let degrees: f32 = rng.random_range(-12.0..=12.0);
    let ink = ink_layer(digit, width.min(height), degrees, &mut rng);
    let (paper, pen) = colours(&mut rng);
    let edge = rng
        .random_bool(0.4)
        .then(|| ["left", "right", "top", "bottom"][rng.random_range(0..4)]);
    let strip = rng.random_range(0.06..0.14);
    let table: f32 = rng.random_range(25.0..75.0);
    let shading: f32 = rng.random_range(0.2..0.45);
    let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let (ox, oy) = place(&ink, width, height, edge, strip, &mut rng);
    let mut img = RgbImage::from_fn(width, height, |x, y| {
        let (u, v) = (x as f32 / width as f32, y as f32 / height as f32);
        let a = ink_at(&ink, x as i64 - ox, y as i64 - oy);
        let on_table = match edge {
            Some("left") => u < strip,
            Some("right") => u > 1.0 - strip,
            Some("top") => v < strip,
            Some("bottom") => v > 1.0 - strip,
            _ => false,
        };
        // Light falls off along a random direction across the picture.
        let t = 0.5 + 0.5 * ((u - 0.5) * angle.cos() + (v - 0.5) * angle.sin()) * 1.4;
        let light = 1.0 - shading * t.clamp(0.0, 1.0);
        let c = |i: usize| {
            let surface = if on_table {
                table
            } else {
                paper[i] * (1.0 - a) + pen[i] * a
            };
            (surface * light).clamp(0.0, 255.0) as u8
        };
        Rgb([c(0), c(1), c(2)])
    });
    let blur: f32 = rng.random_range(0.6..1.4);
    img = gaussian_blur_f32(&img, blur);
    let grain = rng.random_range(12.0..=20.0);
    gaussian_noise_mut(&mut img, 0.0, grain, rng.random());
    let style = PhotoStyle {
        width,
        height,
        degrees,
        grain,
        blur,
        shading,
        edge,
    };
    (img, style)
}

/// Tinted paper, and blue pen or grey pencil.
fn colours(rng: &mut ChaCha8Rng) -> ([f32; 3], [f32; 3]) {
    let paper = [
        rng.random_range(205.0..250.0),
        rng.random_range(195.0..245.0),
        rng.random_range(160.0..235.0),
    ];
    let pen = if rng.random_bool(0.5) {
        [
            rng.random_range(15.0..50.0),
            rng.random_range(25.0..60.0),
            rng.random_range(90.0..160.0),
        ]
    } else {
        let g = rng.random_range(20.0..70.0);
        [g, g, g]
    };
    (paper, pen)
}

/// The digit as ink coverage (0–255), enlarged so it is 35–60% of the picture's shorter
/// side tall, and rotated by `degrees`.
fn ink_layer(digit: &[u8], shorter: u32, degrees: f32, rng: &mut ChaCha8Rng) -> GrayImage {
    let small = GrayImage::from_raw(28, 28, digit.to_vec()).expect("28×28 digit");
    // MNIST digits are 20 of the 28 pixels tall.
    let tall = shorter as f32 * rng.random_range(0.35..0.6);
    let side = ((tall / 20.0) * 28.0).round() as u32;
    let big = imageops::resize(&small, side, side, FilterType::Triangle);
    rotate_about_center(
        &big,
        degrees.to_radians(),
        Interpolation::Bilinear,
        Border::Constant(image::Luma([0])),
    )
}

/// Where the ink layer's corner goes: near the middle, off centre by up to 10% of the
/// picture, and clear of the table strip.
fn place(
    ink: &GrayImage,
    width: u32,
    height: u32,
    edge: Option<&str>,
    strip: f32,
    rng: &mut ChaCha8Rng,
) -> (i64, i64) {
    let jitter = |size: u32, rng: &mut ChaCha8Rng| {
        let spread = (size as f32 * 0.1) as i64;
        rng.random_range(-spread..=spread)
    };
    let mut ox = (width as i64 - ink.width() as i64) / 2 + jitter(width, rng);
    let mut oy = (height as i64 - ink.height() as i64) / 2 + jitter(height, rng);
    // Push the digit away from the strip by the strip's width.
    let (sw, sh) = (
        (strip * width as f32) as i64,
        (strip * height as f32) as i64,
    );
    match edge {
        Some("left") => ox += sw,
        Some("right") => ox -= sw,
        Some("top") => oy += sh,
        Some("bottom") => oy -= sh,
        _ => {}
    }
    (ox, oy)
}

fn ink_at(ink: &GrayImage, x: i64, y: i64) -> f32 {
    if x < 0 || y < 0 || x >= ink.width() as i64 || y >= ink.height() as i64 {
        return 0.0;
    }
    ink.get_pixel(x as u32, y as u32).0[0] as f32 / 255.0
}

/// The picture as a phone would store it: JPEG, quality 85.
pub fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb8(img.clone())
        .write_with_encoder(JpegEncoder::new_with_quality(&mut bytes, 85))
        .expect("JPEG encoding");
    bytes
}

/// Photos in the test set: MNIST test images 0, 50, 100, … (every class many times).
pub const PHOTOS: usize = 200;
pub const STRIDE: usize = 50;

/// How the model read the photo set.
pub struct PhotoScore {
    pub correct: usize,
    pub total: usize,
    /// Photos read as the wrong digit, described.
    pub wrong: Vec<String>,
    /// Photos that could not be prepared at all.
    pub failures: Vec<String>,
}

/// Make the [`PHOTOS`] photos (test image `n·STRIDE`, seeded with its index), prepare
/// each as `predict` does (from its JPEG bytes) and classify it with `model`.
pub fn read_photo_set(model: &std::path::Path) -> PhotoScore {
    let test = mnist_gpu::data::Mnist::load(&mnist_gpu::data::builtin_dir())
        .expect("built-in MNIST")
        .test;
    let photos = (0..PHOTOS).map(|n| n * STRIDE).map(|index| {
        let (img, style) = photo(test.image(index), index as u64);
        (index, jpeg(&img), format!("{style:?}"))
    });
    read_jpegs(model, photos)
}

/// How `model` reads `pictures` (MNIST test index, JPEG bytes, how it was made), each
/// prepared as `predict` prepares a file.
pub fn read_jpegs(
    model: &std::path::Path,
    pictures: impl IntoIterator<Item = (usize, Vec<u8>, String)>,
) -> PhotoScore {
    use mnist_gpu::data::{builtin_dir, Mnist};
    use mnist_gpu::{cpu, model::Hyper, modelfile, preprocess};
    let test = Mnist::load(&builtin_dir()).expect("built-in MNIST").test;
    let params = modelfile::load_model(model).expect("the model loads");
    let (mut pixels, mut read, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    for (index, bytes, how) in pictures {
        match preprocess::from_bytes(&bytes) {
            Ok(done) => {
                pixels.extend_from_slice(&done.pixels);
                read.push((index, test.labels[index], how));
            }
            Err(e) => failures.push(format!("test image {index} ({how}): {e}")),
        }
    }
    let probabilities = cpu::infer(&params, Hyper::default().bn_eps, &pixels);
    let mut wrong = Vec::new();
    for ((index, label, how), p) in read.iter().zip(&probabilities) {
        let digit = (0..10).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        if digit != *label as usize {
            wrong.push(format!(
                "test image {index}: {label} read as {digit} ({how})"
            ));
        }
    }
    PhotoScore {
        correct: read.len() - wrong.len(),
        total: read.len() + failures.len(),
        wrong,
        failures,
    }
}
