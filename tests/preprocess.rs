//! User image → MNIST-like 28×28 input: the shipped sample digits round-trip to their
//! MNIST originals, inversion follows the background, and bad files give errors that
//! name the file.

mod common;

use image::codecs::jpeg::JpegEncoder;
use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use mnist_gpu::data::Dataset;
use mnist_gpu::preprocess::{
    load_digit, load_digit_detailed, preprocess, preprocess_detailed, PreprocessError, MAX_SIDE,
};
use std::path::{Path, PathBuf};

fn test_set() -> &'static Dataset {
    common::data::test_set()
}

fn digits_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join("digits")
}

/// (file, MNIST test index it was made from, whether its background is light).
const SAMPLES: [(&str, usize, bool); 6] = [
    ("digit-7-large-light.png", 0, true),
    ("digit-2-offcentre-dark.jpg", 1, false),
    ("digit-1-transparent.png", 2, true),
    ("digit-0-blue-on-yellow.png", 3, true),
    ("digit-4-grey16.png", 4, true),
    ("digit-9-small-light.jpg", 7, true),
];

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

fn centre_of_mass(p: &[u8]) -> (f64, f64) {
    let (mut m, mut x, mut y) = (0.0, 0.0, 0.0);
    for (i, &v) in p.iter().enumerate() {
        let v = v as f64;
        m += v;
        x += (i % 28) as f64 * v;
        y += (i / 28) as f64 * v;
    }
    (x / m, y / m)
}

/// Share of the ink mass inside the central 20×20 box (rows and columns 4..24).
fn central_share(p: &[u8]) -> f64 {
    let total: f64 = p.iter().map(|&v| v as f64).sum();
    let inside: f64 = p
        .iter()
        .enumerate()
        .filter(|(i, _)| (4..24).contains(&(i % 28)) && (4..24).contains(&(i / 28)))
        .map(|(_, &v)| v as f64)
        .sum();
    inside / total
}

fn assert_mnist_like(name: &str, pixels: &[u8], original: &[u8], max_mad: f64) {
    let mad = mean_abs_diff(pixels, original);
    let original_mad_vs_blank = mean_abs_diff(original, &[0u8; 784]);
    assert!(
        mad < max_mad,
        "{name}: mean |Δ| = {mad:.1} vs the MNIST original (limit {max_mad}; a blank image would give {original_mad_vs_blank:.1})"
    );
    let (cx, cy) = centre_of_mass(pixels);
    eprintln!("{name}: mean |Δ| {mad:.1}, centre of mass ({cx:.2}, {cy:.2})");
    assert!(
        (cx - 14.0).abs() <= 1.0 && (cy - 14.0).abs() <= 1.0,
        "{name}: centre of mass ({cx:.2}, {cy:.2}) is not within 1 px of (14, 14)"
    );
    // Ink inside the central 20×20 box: most of it, and about as much as in the original
    // (MNIST itself centres the mass, not the box, so e.g. a 7 sits a little high).
    let share = central_share(pixels);
    let original_share = central_share(original);
    assert!(
        share > original_share - 0.05,
        "{name}: {:.1}% of the ink is inside the central 20×20 box, {:.1}% in the original",
        share * 100.0,
        original_share * 100.0
    );
    assert!(
        share > 0.8,
        "{name}: only {:.1}% of the ink is inside the central 20×20 box",
        share * 100.0
    );
    let peak = pixels.iter().copied().max().unwrap();
    assert!(
        peak >= 200,
        "{name}: brightest pixel is {peak}, ink should be bright (MNIST peaks at 255)"
    );
    let corners = [0usize, 27, 27 * 28, 783];
    assert!(
        corners.iter().all(|&i| pixels[i] == 0),
        "{name}: background must be black"
    );
}

#[test]
fn sample_digits_match_their_mnist_originals() {
    let test = test_set();
    for (name, index, light) in SAMPLES {
        let path = digits_dir().join(name);
        let label: u8 = name.split('-').nth(1).unwrap().parse().unwrap();
        assert_eq!(
            test.labels[index], label,
            "{name}: test image {index} has another label"
        );
        let done = load_digit_detailed(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(done.inverted, light, "{name}: inverted should be {light}");
        assert_mnist_like(name, &done.pixels, test.image(index), 20.0);
        assert!(done.warnings.is_empty(), "{name}: {:?}", done.warnings);
        assert_eq!(load_digit(&path).unwrap(), done.pixels);
    }
}

#[test]
fn mnist_images_themselves_are_nearly_unchanged() {
    // An MNIST image is already prepared: preprocessing it again must change little.
    let test = test_set();
    for index in [0, 1, 2, 3, 4, 5, 100, 1234, 9999] {
        let img = GrayImage::from_raw(28, 28, test.image(index).to_vec()).unwrap();
        let done = preprocess_detailed(&DynamicImage::ImageLuma8(img)).unwrap();
        assert!(
            !done.inverted,
            "test image {index}: dark background must not be inverted"
        );
        assert_mnist_like(
            &format!("test image {index}"),
            &done.pixels,
            test.image(index),
            12.0,
        );
    }
}

#[test]
fn inversion_follows_the_background() {
    let test = test_set();
    let digit = test.image(5);
    let dark = GrayImage::from_fn(60, 60, |x, y| {
        let (sx, sy) = (x as i64 - 16, y as i64 - 16);
        if (0..28).contains(&sx) && (0..28).contains(&sy) {
            Luma([digit[(sy * 28 + sx) as usize]])
        } else {
            Luma([0])
        }
    });
    let mut light = dark.clone();
    imageops::invert(&mut light);
    let from_dark = preprocess_detailed(&DynamicImage::ImageLuma8(dark)).unwrap();
    let from_light = preprocess_detailed(&DynamicImage::ImageLuma8(light)).unwrap();
    assert!(!from_dark.inverted);
    assert!(from_light.inverted);
    assert_eq!(
        from_dark.pixels, from_light.pixels,
        "the same digit on either background"
    );
    assert_eq!(
        from_dark.ink_box.2.max(from_dark.ink_box.3),
        20,
        "MNIST digits span 20 px"
    );
}

#[test]
fn light_ink_on_transparent_background_is_found() {
    let digit = test_set().image(0);
    let img = RgbaImage::from_fn(28, 28, |x, y| {
        Rgba([255, 255, 255, digit[(y * 28 + x) as usize]])
    });
    let pixels = preprocess(&DynamicImage::ImageRgba8(img)).unwrap();
    assert_mnist_like("white ink on transparent", &pixels, digit, 12.0);
}

#[test]
fn huge_downscale_keeps_the_digit() {
    // A 2000×1500 photo-sized picture with the digit drawn large in one corner.
    let digit = test_set().image(1);
    let src = GrayImage::from_raw(28, 28, digit.iter().map(|v| 255 - v).collect()).unwrap();
    let big = imageops::resize(&src, 700, 700, FilterType::Triangle);
    let mut canvas = GrayImage::from_pixel(2000, 1500, Luma([255]));
    imageops::replace(&mut canvas, &big, 1200, 100);
    let pixels = preprocess(&DynamicImage::ImageLuma8(canvas)).unwrap();
    assert_mnist_like("2000×1500", &pixels, digit, 20.0);
}

/// Dark ink (MNIST test image `index`, ×`scale`) pasted on white at (x, y).
fn paste_digit(canvas: &mut GrayImage, index: usize, scale: u32, x: i64, y: i64) {
    let mut ink = upscaled(index, scale);
    imageops::invert(&mut ink);
    imageops::replace(canvas, &ink, x, y);
}

#[test]
fn two_digits_side_by_side_read_the_larger_with_a_warning() {
    let mut canvas = GrayImage::from_pixel(300, 150, Luma([255]));
    paste_digit(&mut canvas, 4, 4, 20, 20); // a 4, 80 px tall
    paste_digit(&mut canvas, 1, 4, 160, 20); // a 2 of the same size
    let done = preprocess_detailed(&DynamicImage::ImageLuma8(canvas)).unwrap();
    assert_eq!(done.warnings.len(), 1, "{:?}", done.warnings);
    assert!(
        done.warnings[0].contains("more than one digit"),
        "{:?}",
        done.warnings
    );
    let (x, _, w, _) = done.ink_box;
    assert!(
        x + w <= 160 || x >= 160,
        "one digit read, not both: {:?}",
        done.ink_box
    );
}

#[test]
fn a_speck_in_a_large_picture_is_read_with_a_warning() {
    let mut canvas = GrayImage::from_pixel(800, 600, Luma([250]));
    for (x, y) in [(400, 300), (401, 300), (400, 301), (401, 301), (402, 302)] {
        canvas.put_pixel(x, y, Luma([20]));
    }
    let done = preprocess_detailed(&DynamicImage::ImageLuma8(canvas)).unwrap();
    assert!(
        done.warnings.iter().any(|w| w.contains("very little ink")),
        "{:?}",
        done.warnings
    );
}

#[test]
fn a_dark_edge_and_uneven_light_do_not_move_the_digit() {
    // Test image 3 (a 0) ×5 on paper lit from the left, with a dark table edge on the right.
    let mut canvas = GrayImage::from_pixel(260, 200, Luma([235]));
    paste_digit(&mut canvas, 3, 5, 40, 30);
    let lit = GrayImage::from_fn(260, 200, |x, y| {
        let light = 1.0 - 0.5 * x as f32 / 260.0;
        let v = if x >= 230 {
            40.0
        } else {
            canvas.get_pixel(x, y).0[0] as f32
        };
        Luma([(v * light) as u8])
    });
    let done = preprocess_detailed(&DynamicImage::ImageLuma8(lit)).unwrap();
    assert!(done.inverted);
    assert!(done.warnings.is_empty(), "{:?}", done.warnings);
    assert!(
        done.ink_box.0 + done.ink_box.2 < 230,
        "the table edge is not ink: {:?}",
        done.ink_box
    );
    assert_mnist_like(
        "lit unevenly, table edge",
        &done.pixels,
        test_set().image(3),
        20.0,
    );
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn assert_names(err: &PreprocessError, path: &Path) {
    assert_eq!(err.path(), path);
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "message {err:?} does not name {}",
        path.display()
    );
}

#[test]
fn blank_images_are_refused() {
    let dir = scratch();
    for (name, img) in [
        (
            "white.png",
            DynamicImage::ImageLuma8(GrayImage::from_pixel(50, 40, Luma([255]))),
        ),
        (
            "black.png",
            DynamicImage::ImageLuma8(GrayImage::from_pixel(50, 40, Luma([0]))),
        ),
        (
            "grey.png",
            DynamicImage::ImageRgb8(RgbImage::from_pixel(9, 9, Rgb([120, 130, 140]))),
        ),
        (
            "clear.png",
            DynamicImage::ImageRgba8(RgbaImage::from_pixel(30, 30, Rgba([0, 0, 0, 0]))),
        ),
    ] {
        let path = dir.path().join(name);
        img.save(&path).unwrap();
        let err = load_digit(&path).unwrap_err();
        assert!(
            matches!(err, PreprocessError::Blank { .. }),
            "{name}: {err:?}"
        );
        assert_names(&err, &path);
        assert!(err.to_string().contains("blank"), "{err}");
    }
    // Faint noise (a few grey levels) is not ink either.
    let noisy = GrayImage::from_fn(40, 40, |x, y| Luma([240 + ((x * 7 + y * 13) % 9) as u8]));
    let err = preprocess(&DynamicImage::ImageLuma8(noisy)).unwrap_err();
    assert!(matches!(err, PreprocessError::Blank { .. }), "{err:?}");
    assert_eq!(err.path(), Path::new("<image>"));
}

#[test]
fn zero_sized_inputs_are_refused() {
    let err = preprocess(&DynamicImage::new_luma8(0, 0)).unwrap_err();
    assert!(
        matches!(
            err,
            PreprocessError::ZeroSize {
                width: 0,
                height: 0,
                ..
            }
        ),
        "{err:?}"
    );
    let err = preprocess(&DynamicImage::new_luma8(5, 0)).unwrap_err();
    assert!(matches!(err, PreprocessError::ZeroSize { .. }), "{err:?}");

    let dir = scratch();
    let path = dir.path().join("empty.png");
    std::fs::write(&path, b"").unwrap();
    let err = load_digit(&path).unwrap_err();
    assert!(matches!(err, PreprocessError::EmptyFile { .. }), "{err:?}");
    assert_names(&err, &path);

    // A PNG header that claims a width of 0.
    let path = dir.path().join("zero-width.png");
    std::fs::write(&path, png_header(0, 10)).unwrap();
    let err = load_digit(&path).unwrap_err();
    assert!(
        matches!(
            err,
            PreprocessError::ZeroSize { .. } | PreprocessError::Decode { .. }
        ),
        "{err:?}"
    );
    assert_names(&err, &path);
}

/// CRC-32 (IEEE), as PNG chunks need.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn push_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let mut chunk = kind.to_vec();
    chunk.extend_from_slice(data);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&crc32(&chunk).to_be_bytes());
}

/// A PNG whose valid IHDR claims `width × height` grey 8-bit pixels, followed by a tiny
/// bogus IDAT: enough to read the dimensions, not to decode.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    push_chunk(&mut out, b"IHDR", &ihdr);
    push_chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    push_chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn huge_dimensions_are_refused_before_decoding() {
    let dir = scratch();
    for (w, h) in [
        (100_000, 100_000),
        (MAX_SIDE + 1, 10),
        (10, MAX_SIDE + 1),
        (7000, 7000),
    ] {
        let path = dir.path().join(format!("huge-{w}x{h}.png"));
        std::fs::write(&path, png_header(w, h)).unwrap();
        let err = load_digit(&path).unwrap_err();
        assert!(
            matches!(err, PreprocessError::TooLarge { width, height, .. } if (width, height) == (w, h)),
            "{w}×{h}: {err:?}"
        );
        assert_names(&err, &path);
    }
    let wide = DynamicImage::new_luma8(MAX_SIDE + 1, 1);
    let err = preprocess(&wide).unwrap_err();
    assert!(matches!(err, PreprocessError::TooLarge { .. }), "{err:?}");
}

#[test]
fn garbage_missing_and_unsupported_files_are_refused() {
    let dir = scratch();
    let garbage = b"this is not an image, just some text\n".repeat(20);
    for name in ["garbage.png", "garbage.jpg", "garbage.txt", "garbage"] {
        let path = dir.path().join(name);
        std::fs::write(&path, &garbage).unwrap();
        let err = load_digit(&path).unwrap_err();
        assert!(
            matches!(err, PreprocessError::Decode { .. }),
            "{name}: {err:?}"
        );
        assert_names(&err, &path);
    }
    // A PNG cut off after its header.
    let mut bytes = Vec::new();
    DynamicImage::ImageLuma8(GrayImage::from_pixel(40, 40, Luma([9])))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    let path = dir.path().join("truncated.png");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_digit(&path).unwrap_err();
    assert!(matches!(err, PreprocessError::Decode { .. }), "{err:?}");
    assert_names(&err, &path);

    // A GIF (animated or not) is refused by name.
    let path = dir.path().join("anim.gif");
    std::fs::write(&path, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
    let err = load_digit(&path).unwrap_err();
    assert!(
        matches!(&err, PreprocessError::Unsupported { format, .. } if format == "GIF"),
        "{err:?}"
    );
    assert_names(&err, &path);

    let path = dir.path().join("no-such-file.png");
    let err = load_digit(&path).unwrap_err();
    assert!(matches!(err, PreprocessError::Missing { .. }), "{err:?}");
    assert_names(&err, &path);

    let err = load_digit(dir.path()).unwrap_err();
    assert!(matches!(err, PreprocessError::Decode { .. }), "{err:?}");
    assert_names(&err, dir.path());
}

/// EXIF data holding one Orientation tag (0x0112) of `value`: a little-endian TIFF header
/// and one IFD with one SHORT entry, as a phone writes it (without the other tags).
fn exif_orientation(value: u16) -> Vec<u8> {
    let mut tiff = b"II\x2a\x00\x08\x00\x00\x00".to_vec();
    tiff.extend(1u16.to_le_bytes()); // one entry
    tiff.extend(0x0112u16.to_le_bytes()); // Orientation
    tiff.extend(3u16.to_le_bytes()); // SHORT
    tiff.extend(1u32.to_le_bytes()); // one value
    tiff.extend(value.to_le_bytes());
    tiff.extend([0, 0]); // the value field's padding
    tiff.extend(0u32.to_le_bytes()); // no next IFD
    tiff
}

/// The pixels a camera stores for a picture that a viewer shows as `upright` after
/// turning it as EXIF orientation `value` says (EXIF 2.32, tag 0x0112): 1 as is, 2
/// mirrored left-right, 3 upside down, 4 mirrored top-bottom, 5 transposed, 6 to be
/// turned 90° clockwise, 7 transversed, 8 to be turned 90° anticlockwise.
fn stored_as(value: u16, upright: &GrayImage) -> GrayImage {
    let (w, h) = upright.dimensions();
    let at = |x: u32, y: u32| *upright.get_pixel(x, y);
    match value {
        1 => upright.clone(),
        2 => imageops::flip_horizontal(upright),
        3 => imageops::rotate180(upright),
        4 => imageops::flip_vertical(upright),
        5 => GrayImage::from_fn(h, w, |x, y| at(y, x)),
        6 => imageops::rotate270(upright),
        7 => GrayImage::from_fn(h, w, |x, y| at(w - 1 - y, h - 1 - x)),
        8 => imageops::rotate90(upright),
        _ => unreachable!("EXIF orientations are 1 to 8"),
    }
}

/// `img` as a PNG (with an eXIf chunk) or a JPEG (with an APP1 Exif segment) holding
/// `exif`.
fn encode_with_exif(img: &GrayImage, exif: Vec<u8>, jpeg: bool) -> Vec<u8> {
    use image::ImageEncoder;
    let mut bytes = Vec::new();
    let (w, h) = img.dimensions();
    let colour = image::ExtendedColorType::L8;
    if jpeg {
        let mut encoder = JpegEncoder::new_with_quality(&mut bytes, 95);
        encoder.set_exif_metadata(exif).unwrap();
        encoder.write_image(img.as_raw(), w, h, colour).unwrap();
    } else {
        let mut encoder = image::codecs::png::PngEncoder::new(&mut bytes);
        encoder.set_exif_metadata(exif).unwrap();
        encoder.write_image(img.as_raw(), w, h, colour).unwrap();
    }
    bytes
}

/// A picture as phones store portrait shots: pixels rotated or mirrored, with an EXIF tag
/// saying how to show them. Each of the eight orientations, as PNG and as JPEG, is read as
/// the upright picture is: the same 28×28 input exactly for PNG, nearly for JPEG (whose
/// blocks fall differently on turned pixels). Dark ink on a light 300×220 page, the digit
/// off-centre, so a picture read unturned gives another input.
#[test]
fn phone_orientations_are_read_as_shown() {
    let dir = scratch();
    let mut wrong_unturned = 0;
    for index in 0..12 {
        let ink = upscaled(index, 6);
        let upright = GrayImage::from_fn(300, 220, |x, y| {
            let inside = (40..40 + 168).contains(&x) && (20..20 + 168).contains(&y);
            let ink = if inside {
                ink.get_pixel(x - 40, y - 20).0[0]
            } else {
                0
            };
            Luma([255 - ink])
        });
        for jpeg in [false, true] {
            let read = |value: u16| {
                let bytes =
                    encode_with_exif(&stored_as(value, &upright), exif_orientation(value), jpeg);
                let path = dir.path().join(format!(
                    "{index}-{value}.{}",
                    if jpeg { "jpg" } else { "png" }
                ));
                std::fs::write(&path, bytes).unwrap();
                load_digit(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            };
            let expected = read(1);
            for value in 2..=8 {
                let got = read(value);
                let mad = mean_abs_diff(&got, &expected);
                let limit = if jpeg { 3.0 } else { 0.0 };
                assert!(
                    mad <= limit,
                    "digit {index}, orientation {value}, jpeg {jpeg}: mean |Δ| {mad:.2}"
                );
                let unturned =
                    preprocess(&DynamicImage::ImageLuma8(stored_as(value, &upright))).unwrap();
                if mean_abs_diff(&unturned, &expected) > 10.0 {
                    wrong_unturned += 1;
                }
            }
        }
    }
    // The check has teeth: most pictures read without turning give another input (a few
    // digits, such as a 1 or a 0 mirrored, look alike either way).
    assert!(
        wrong_unturned >= 12 * 2 * 7 * 3 / 4,
        "only {wrong_unturned} of 168 differ unturned"
    );
}

// ---------------------------------------------------------------------------------------
// The generator of assets/digits (run once; the files are committed):
//   cargo test --test preprocess -- --ignored generate_sample_digits
// ---------------------------------------------------------------------------------------

/// Test image `index` scaled ×`scale` (triangle filter), 0 = background, 255 = ink.
fn upscaled(index: usize, scale: u32) -> GrayImage {
    let src = GrayImage::from_raw(28, 28, test_set().image(index).to_vec()).unwrap();
    imageops::resize(&src, 28 * scale, 28 * scale, FilterType::Triangle)
}

fn save_jpeg(img: &DynamicImage, path: &Path, quality: u8) {
    let mut file = std::fs::File::create(path).unwrap();
    img.write_with_encoder(JpegEncoder::new_with_quality(&mut file, quality))
        .unwrap();
}

#[test]
#[ignore = "regenerates the committed assets/digits files"]
fn generate_sample_digits() {
    let dir = digits_dir();
    std::fs::create_dir_all(&dir).unwrap();
    write_large_light_seven(&dir);
    write_offcentre_dark_two(&dir);
    write_transparent_one(&dir);
    write_blue_on_yellow_zero(&dir);
    write_grey16_four(&dir);
    write_small_light_nine(&dir);
}

/// Writes `digit-7-large-light.png`, made from test image 0.
fn write_large_light_seven(dir: &Path) {
    // 0 → 7: 200×200 black ink on white, ×7.
    let ink = upscaled(0, 7);
    let img = GrayImage::from_fn(200, 200, |x, y| {
        let v = if (2..198).contains(&x) && (2..198).contains(&y) {
            ink.get_pixel(x - 2, y - 2).0[0]
        } else {
            0
        };
        Luma([255 - v])
    });
    img.save(dir.join(SAMPLES[0].0)).unwrap();
}

/// Writes `digit-2-offcentre-dark.jpg`, made from test image 1.
fn write_offcentre_dark_two(dir: &Path) {
    // 1 → 2: white on black JPEG, 180×130, ×3, off-centre with wide margins.
    let ink = upscaled(1, 3);
    let img = RgbImage::from_fn(180, 130, |x, y| {
        let (sx, sy) = (x as i64 - 14, y as i64 - 34);
        let v = if (0..84).contains(&sx) && (0..84).contains(&sy) {
            ink.get_pixel(sx as u32, sy as u32).0[0]
        } else {
            0
        };
        Rgb([v, v, v])
    });
    save_jpeg(&DynamicImage::ImageRgb8(img), &dir.join(SAMPLES[1].0), 85);
}

/// Writes `digit-1-transparent.png`, made from test image 2.
fn write_transparent_one(dir: &Path) {
    // 2 → 1: RGBA, dark ink whose alpha is the MNIST value, transparent elsewhere
    // (transparent pixels are black with alpha 0: ignoring alpha would give all black).
    let ink = upscaled(2, 4);
    let img = RgbaImage::from_fn(112, 112, |x, y| {
        let a = ink.get_pixel(x, y).0[0];
        if a == 0 {
            Rgba([0, 0, 0, 0])
        } else {
            Rgba([25, 25, 25, a])
        }
    });
    img.save(dir.join(SAMPLES[2].0)).unwrap();
}

/// Writes `digit-0-blue-on-yellow.png`, made from test image 3.
fn write_blue_on_yellow_zero(dir: &Path) {
    // 3 → 0: blue ink on yellow paper with a little grain, 150×190, ×5.
    let ink = upscaled(3, 5);
    let paper = [250.0f32, 232.0, 120.0];
    let pen = [25.0f32, 45.0, 170.0];
    let img = RgbImage::from_fn(150, 190, |x, y| {
        let (sx, sy) = (x as i64 - 5, y as i64 - 30);
        let a = if (0..140).contains(&sx) && (0..140).contains(&sy) {
            ink.get_pixel(sx as u32, sy as u32).0[0] as f32 / 255.0
        } else {
            0.0
        };
        let hash =
            (x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663)).wrapping_mul(2_654_435_761);
        let grain = (hash >> 28) as f32 - 8.0;
        let c =
            |i: usize| (paper[i] * (1.0 - a) + pen[i] * a + grain * 0.6).clamp(0.0, 255.0) as u8;
        Rgb([c(0), c(1), c(2)])
    });
    img.save(dir.join(SAMPLES[3].0)).unwrap();
}

/// Writes `digit-4-grey16.png`, made from test image 4.
fn write_grey16_four(dir: &Path) {
    // 4 → 4: 16-bit grey, dark ink on light grey, 120×120, ×4.
    let ink = upscaled(4, 4);
    let img: ImageBuffer<Luma<u16>, Vec<u16>> = ImageBuffer::from_fn(120, 120, |x, y| {
        let (sx, sy) = (x as i64 - 4, y as i64 - 4);
        let a = if (0..112).contains(&sx) && (0..112).contains(&sy) {
            ink.get_pixel(sx as u32, sy as u32).0[0] as f32 / 255.0
        } else {
            0.0
        };
        Luma([(50_000.0 * (1.0 - a) + 6_000.0 * a) as u16])
    });
    DynamicImage::ImageLuma16(img)
        .save(dir.join(SAMPLES[4].0))
        .unwrap();
}

/// Writes `digit-9-small-light.jpg`, made from test image 7.
fn write_small_light_nine(dir: &Path) {
    // 7 → 9: small (36×36) dark on light JPEG at the original size.
    let digit = test_set().image(7);
    let img = GrayImage::from_fn(36, 36, |x, y| {
        let (sx, sy) = (x as i64 - 4, y as i64 - 4);
        let v = if (0..28).contains(&sx) && (0..28).contains(&sy) {
            digit[(sy * 28 + sx) as usize] as f32 / 255.0
        } else {
            0.0
        };
        Luma([(235.0 * (1.0 - v) + 20.0 * v) as u8])
    });
    save_jpeg(&DynamicImage::ImageLuma8(img), &dir.join(SAMPLES[5].0), 90);
}
