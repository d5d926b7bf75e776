//! A user's picture of a digit → the model's 28×28 input, prepared the way MNIST was.
//!
//! Steps ([`preprocess`]):
//! 1. Grey: luma (0.299 R + 0.587 G + 0.114 B) at full precision (8-, 16-bit or float),
//!    with any alpha channel composited over white. (If that leaves no ink but the picture
//!    has transparency — light ink on a transparent background — it is composited over
//!    black instead.)
//! 2. Background: the median of the one-pixel border. A light background (median above
//!    half) is inverted, so ink is bright on black as in MNIST.
//! 3. Contrast: the background level maps to 0 and the brightest ink to 255; a picture
//!    whose ink is less than [`MIN_CONTRAST`] brighter than its background is blank.
//! 4. Crop to the bounding box of the pixels above [`INK_THRESHOLD`] (a little above the
//!    background, so paper grain and JPEG noise do not count).
//! 5. Scale the box to fit [`INK_BOX`]×[`INK_BOX`] (20×20), keeping the aspect ratio,
//!    with a triangle (linear) filter that widens when shrinking, so it anti-aliases.
//! 6. Paste into 28×28 so that the ink's centre of mass lands on pixel (14, 14), the
//!    MNIST convention (rounded to whole pixels; the box is kept inside the frame).
//!
//! Input files ([`load_digit`]) may be PNG or JPEG of any size up to [`MAX_SIDE`] pixels a
//! side and [`MAX_PIXELS`] pixels in all; the size is checked from the header before
//! anything is decoded, and the decoder runs under the same [`image::Limits`].
//! **Animated images:** of an animated PNG (APNG) only the default image is used (the
//! picture that non-animating viewers show, normally the first frame). GIF, WebP and other
//! formats are refused with [`PreprocessError::Unsupported`].

use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageBuffer, ImageFormat, ImageReader, Limits, Luma};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Side of the model's input image.
pub const SIDE: usize = 28;
/// The ink is scaled to fit a box of this side, as in MNIST.
pub const INK_BOX: u32 = 20;
/// Pixel (x, y) where the ink's centre of mass is placed.
pub const CENTRE: (f32, f32) = (14.0, 14.0);
/// Largest accepted width or height.
pub const MAX_SIDE: u32 = 8192;
/// Largest accepted width × height.
pub const MAX_PIXELS: u64 = 40_000_000;
/// Ink must be at least this much brighter than the background (on a 0–1 scale).
pub const MIN_CONTRAST: f32 = 0.15;
/// After contrast stretching (background 0, ink 1), pixels above this count as ink for
/// the bounding box.
pub const INK_THRESHOLD: f32 = 0.15;

/// Name used in errors from [`preprocess`], which has no file.
const IN_MEMORY: &str = "<image>";

#[derive(Debug, Error)]
pub enum PreprocessError {
    #[error("{path}: no such file")]
    Missing { path: PathBuf },
    #[error("{path}: cannot read: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path}: the file is empty (0 bytes)")]
    EmptyFile { path: PathBuf },
    #[error("{path}: unsupported image format {format} (PNG and JPEG are supported)")]
    Unsupported { path: PathBuf, format: String },
    #[error("{path}: not a PNG or JPEG image, or corrupt: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{path}: the image is {width}×{height} pixels, which is empty")]
    ZeroSize {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    #[error(
        "{path}: the image is {width}×{height} pixels; at most {MAX_SIDE} pixels a side and {MAX_PIXELS} pixels in all are accepted"
    )]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    #[error("{path}: no ink found: the image is blank (one flat shade, or too little contrast)")]
    Blank { path: PathBuf },
}

impl PreprocessError {
    /// The file (or `<image>` for [`preprocess`]) the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Missing { path }
            | Self::Io { path, .. }
            | Self::EmptyFile { path }
            | Self::Unsupported { path, .. }
            | Self::Decode { path, .. }
            | Self::ZeroSize { path, .. }
            | Self::TooLarge { path, .. }
            | Self::Blank { path } => path,
        }
    }
}

/// The prepared input and what was found on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocessed {
    /// 28×28, row-major, 0 = background, 255 = ink.
    pub pixels: [u8; SIDE * SIDE],
    /// Whether the picture had a light background and was inverted.
    pub inverted: bool,
    /// The ink's bounding box in the source picture: (x, y, width, height).
    pub ink_box: (u32, u32, u32, u32),
}

/// Read a PNG or JPEG file and prepare it as an MNIST-like 28×28 input (see the module
/// documentation). Every error names `path`.
pub fn load_digit(path: &Path) -> Result<[u8; SIDE * SIDE], PreprocessError> {
    load_digit_detailed(path).map(|p| p.pixels)
}

/// [`load_digit`], also telling whether the picture was inverted and where the ink was.
pub fn load_digit_detailed(path: &Path) -> Result<Preprocessed, PreprocessError> {
    let img = read_image(path)?;
    prepare(&img, path)
}

/// Prepare an already decoded picture as an MNIST-like 28×28 input. Errors name `<image>`.
pub fn preprocess(img: &DynamicImage) -> Result<[u8; SIDE * SIDE], PreprocessError> {
    preprocess_detailed(img).map(|p| p.pixels)
}

/// [`preprocess`], also telling whether the picture was inverted and where the ink was.
pub fn preprocess_detailed(img: &DynamicImage) -> Result<Preprocessed, PreprocessError> {
    prepare(img, Path::new(IN_MEMORY))
}

/// Open, check the format and size from the header, then decode under limits.
fn read_image(path: &Path) -> Result<DynamicImage, PreprocessError> {
    let p = || path.to_path_buf();
    let io_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            PreprocessError::Missing { path: p() }
        } else {
            PreprocessError::Io {
                path: p(),
                error: source,
            }
        }
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if meta.is_dir() {
        return Err(PreprocessError::Decode {
            path: p(),
            message: "is a directory".into(),
        });
    }
    if !meta.is_file() {
        return Err(PreprocessError::Decode {
            path: p(),
            message: "is not a regular file (a FIFO, socket or device?)".into(),
        });
    }
    if meta.len() == 0 {
        return Err(PreprocessError::EmptyFile { path: p() });
    }
    let mut head = Vec::with_capacity(24);
    std::fs::File::open(path)
        .and_then(|f| f.take(24).read_to_end(&mut head))
        .map_err(io_err)?;
    decode_checked(|| ImageReader::open(path).map_err(io_err), &head, path)
}

/// Width and height from a PNG's IHDR chunk (the first 24 bytes of the file), so an
/// empty or oversized picture is named as such even where the decoder would only call
/// the header invalid.
fn png_dimensions(head: &[u8]) -> Option<(u32, u32)> {
    if head.len() < 24 || !head.starts_with(b"\x89PNG\r\n\x1a\n") || &head[12..16] != b"IHDR" {
        return None;
    }
    let word = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    Some((word(16), word(20)))
}

/// Read PNG or JPEG bytes and prepare them as [`load_digit`] does; errors name `<image>`.
/// For fuzzing and callers that hold the file in memory.
pub fn from_bytes(bytes: &[u8]) -> Result<Preprocessed, PreprocessError> {
    let path = Path::new(IN_MEMORY);
    if bytes.is_empty() {
        return Err(PreprocessError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    let img = decode_checked(
        || Ok(ImageReader::new(io::Cursor::new(bytes))),
        &bytes[..bytes.len().min(24)],
        path,
    )?;
    prepare(&img, path)
}

/// Check the format and the size from the header, then decode under limits.
fn decode_checked<R: io::BufRead + io::Seek>(
    make: impl Fn() -> Result<ImageReader<R>, PreprocessError>,
    head: &[u8],
    path: &Path,
) -> Result<DynamicImage, PreprocessError> {
    if let Some((width, height)) = png_dimensions(head) {
        check_size(width, height, path)?;
    }
    let p = || path.to_path_buf();
    let io_err = |source: io::Error| PreprocessError::Io {
        path: p(),
        error: source,
    };
    let open = || -> Result<ImageReader<R>, PreprocessError> {
        let reader = make()?.with_guessed_format().map_err(io_err)?;
        match reader.format() {
            Some(ImageFormat::Png | ImageFormat::Jpeg) => Ok(reader),
            Some(other) => Err(PreprocessError::Unsupported {
                path: p(),
                format: format!("{other:?}").to_uppercase(),
            }),
            None => Err(PreprocessError::Decode {
                path: p(),
                message: "unrecognised file contents".into(),
            }),
        }
    };
    let decode_err = |e: image::ImageError| match e {
        image::ImageError::IoError(source) if source.kind() == io::ErrorKind::UnexpectedEof => {
            PreprocessError::Decode {
                path: p(),
                message: "the file is truncated".into(),
            }
        }
        image::ImageError::IoError(source) => PreprocessError::Io {
            path: p(),
            error: source,
        },
        other => PreprocessError::Decode {
            path: p(),
            message: other.to_string(),
        },
    };
    let (width, height) = open()?.into_dimensions().map_err(decode_err)?;
    check_size(width, height, path)?;
    if open()?.format() == Some(ImageFormat::Jpeg) {
        let mut bytes = Vec::new();
        make()?
            .into_inner()
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        check_jpeg_whole(&bytes)
            .map_err(|message| PreprocessError::Decode { path: p(), message })?;
    }

    let mut reader = open()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    // The largest accepted picture as 16-bit RGBA, plus room for the decoder's buffers.
    limits.max_alloc = Some(MAX_PIXELS * 8 + (64 << 20));
    reader.limits(limits);
    reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => PreprocessError::TooLarge {
            path: p(),
            width,
            height,
        },
        other => decode_err(other),
    })
}

/// Decode a JPEG strictly, as a check: the `image` crate's decoder fills what a
/// truncated or damaged file lacks with grey and reports success, which would classify
/// a broken picture.
fn check_jpeg_whole(bytes: &[u8]) -> Result<(), String> {
    let options = zune_core::options::DecoderOptions::default().set_strict_mode(true);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(
        zune_core::bytestream::ZCursor::new(bytes),
        options,
    );
    decoder
        .decode()
        .map(|_| ())
        .map_err(|e| format!("the JPEG data is truncated or corrupt ({e})"))
}

fn check_size(width: u32, height: u32, path: &Path) -> Result<(), PreprocessError> {
    if width == 0 || height == 0 {
        return Err(PreprocessError::ZeroSize {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    if width > MAX_SIDE || height > MAX_SIDE || width as u64 * height as u64 > MAX_PIXELS {
        return Err(PreprocessError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    Ok(())
}

fn prepare(img: &DynamicImage, path: &Path) -> Result<Preprocessed, PreprocessError> {
    let (width, height) = (img.width(), img.height());
    check_size(width, height, path)?;
    match prepare_over(img, 1.0) {
        Some(done) => Ok(done),
        None if img.color().has_alpha() => {
            prepare_over(img, 0.0).ok_or_else(|| PreprocessError::Blank {
                path: path.to_path_buf(),
            })
        }
        None => Err(PreprocessError::Blank {
            path: path.to_path_buf(),
        }),
    }
}

/// Steps 1–6 with alpha composited over `backdrop` (1 = white, 0 = black); `None` if blank.
fn prepare_over(img: &DynamicImage, backdrop: f32) -> Option<Preprocessed> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut grey = to_grey(img, backdrop);

    // Background from the border; invert a light one.
    let mut border: Vec<f32> = Vec::with_capacity(2 * (w + h));
    for x in 0..w {
        border.push(grey[x]);
        border.push(grey[(h - 1) * w + x]);
    }
    for y in 0..h {
        border.push(grey[y * w]);
        border.push(grey[y * w + w - 1]);
    }
    border.sort_by(f32::total_cmp);
    let mut background = border[border.len() / 2];
    let inverted = background > 0.5;
    if inverted {
        grey.iter_mut().for_each(|v| *v = 1.0 - *v);
        background = 1.0 - background;
    }

    // Contrast: background → 0, brightest ink → 1.
    let peak = grey.iter().copied().fold(0.0f32, f32::max);
    let contrast = peak - background;
    if contrast < MIN_CONTRAST {
        return None;
    }
    grey.iter_mut()
        .for_each(|v| *v = ((*v - background) / contrast).clamp(0.0, 1.0));

    // Bounding box of the ink.
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..h {
        for x in 0..w {
            if grey[y * w + x] > INK_THRESHOLD {
                x0 = x0.min(x);
                x1 = x1.max(x);
                y0 = y0.min(y);
                y1 = y1.max(y);
            }
        }
    }
    if x0 == usize::MAX {
        return None;
    }
    let (bw, bh) = (x1 - x0 + 1, y1 - y0 + 1);
    let mut crop = Vec::with_capacity(bw * bh);
    for y in y0..=y1 {
        crop.extend_from_slice(&grey[y * w + x0..=y * w + x1]);
    }
    drop(grey);
    let crop: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(bw as u32, bh as u32, crop).expect("crop has bw×bh pixels");

    // Fit into 20×20, keeping the aspect ratio.
    let scale = INK_BOX as f32 / bw.max(bh) as f32;
    let nw = ((bw as f32 * scale).round() as u32).clamp(1, INK_BOX);
    let nh = ((bh as f32 * scale).round() as u32).clamp(1, INK_BOX);
    let small = imageops::resize(&crop, nw, nh, FilterType::Triangle);

    // Centre of mass → (14, 14).
    let (mut mass, mut mx, mut my) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y, p) in small.enumerate_pixels() {
        let v = p.0[0].clamp(0.0, 1.0) as f64;
        mass += v;
        mx += x as f64 * v;
        my += y as f64 * v;
    }
    if mass <= 0.0 {
        return None;
    }
    let (cx, cy) = (mx / mass, my / mass);
    let side = SIDE as i64;
    let ox = ((CENTRE.0 as f64 - cx).round() as i64).clamp(0, side - nw as i64);
    let oy = ((CENTRE.1 as f64 - cy).round() as i64).clamp(0, side - nh as i64);

    let mut pixels = [0u8; SIDE * SIDE];
    for (x, y, p) in small.enumerate_pixels() {
        let (tx, ty) = (ox + x as i64, oy + y as i64);
        pixels[(ty * side + tx) as usize] = (p.0[0].clamp(0.0, 1.0) * 255.0).round() as u8;
    }
    Some(Preprocessed {
        pixels,
        inverted,
        ink_box: (x0 as u32, y0 as u32, bw as u32, bh as u32),
    })
}

/// Luma in 0..=1 per pixel, alpha composited over `backdrop`.
fn to_grey(img: &DynamicImage, backdrop: f32) -> Vec<f32> {
    fn convert<T: Copy>(
        samples: &[T],
        channels: usize,
        alpha: bool,
        backdrop: f32,
        norm: impl Fn(T) -> f32,
    ) -> Vec<f32> {
        samples
            .chunks_exact(channels)
            .map(|px| {
                let luma = if channels >= 3 {
                    0.299 * norm(px[0]) + 0.587 * norm(px[1]) + 0.114 * norm(px[2])
                } else {
                    norm(px[0])
                };
                if alpha {
                    let a = norm(px[channels - 1]).clamp(0.0, 1.0);
                    luma * a + backdrop * (1.0 - a)
                } else {
                    luma
                }
            })
            .collect()
    }
    let u8n = |v: u8| v as f32 / 255.0;
    let u16n = |v: u16| v as f32 / 65535.0;
    let f32n = |v: f32| v.clamp(0.0, 1.0);
    match img {
        DynamicImage::ImageLuma8(b) => convert(b.as_raw(), 1, false, backdrop, u8n),
        DynamicImage::ImageLumaA8(b) => convert(b.as_raw(), 2, true, backdrop, u8n),
        DynamicImage::ImageRgb8(b) => convert(b.as_raw(), 3, false, backdrop, u8n),
        DynamicImage::ImageRgba8(b) => convert(b.as_raw(), 4, true, backdrop, u8n),
        DynamicImage::ImageLuma16(b) => convert(b.as_raw(), 1, false, backdrop, u16n),
        DynamicImage::ImageLumaA16(b) => convert(b.as_raw(), 2, true, backdrop, u16n),
        DynamicImage::ImageRgb16(b) => convert(b.as_raw(), 3, false, backdrop, u16n),
        DynamicImage::ImageRgba16(b) => convert(b.as_raw(), 4, true, backdrop, u16n),
        DynamicImage::ImageRgb32F(b) => convert(b.as_raw(), 3, false, backdrop, f32n),
        other => convert(other.to_rgba32f().as_raw(), 4, true, backdrop, f32n),
    }
}
