//! A user's picture of a digit → the model's 28×28 input, prepared the way MNIST was.
//!
//! Steps ([`preprocess`]), robust to phone photos of a digit on paper as well as to clean
//! scans and drawings:
//! 0. Orientation (files only): a picture whose EXIF data (JPEG's APP1, PNG's eXIf) says
//!    it is stored rotated or mirrored, as phones store portrait shots, is turned the way
//!    a viewer shows it.
//! 1. Grey: luma (0.299 R + 0.587 G + 0.114 B) at full precision (8-, 16-bit or float),
//!    with any alpha channel composited over white. (If that leaves no ink but the picture
//!    has transparency — light ink on a transparent background — it is composited over
//!    black instead.)
//! 2. Working copy: shrunk to at most [`WORK_SIDE`] pixels a side; inverted when its
//!    median is light, so ink is bright on dark as in MNIST.
//! 3. Grain: estimated from neighbouring pixels; above [`NOISE_FLOOR`] the copy is
//!    smoothed with a Gaussian (clean pictures are left exactly as they are).
//! 4. Background: a grey-level opening with a disc wider than the strokes (on a 64-pixel
//!    copy, then blurred and enlarged) estimates the paper and its lighting; the ink is
//!    measured against it, `(v − b) / (1 − b)`, which divides uneven lighting out. Ink
//!    less than [`MIN_CONTRAST`] above the background everywhere means a blank picture.
//! 5. Ink: Otsu's threshold, then connected components; marks touching the picture's
//!    edge (a table edge, a shadow) and specks are dropped, and the largest mark plus the
//!    pieces near it (a broken stroke) make the digit. A picture with almost no ink, or
//!    with a second mark of similar size, gets a warning.
//! 6. The digit's grey levels (not a binary mask), scaled so typical ink is 1, are cropped
//!    to its box (pixels above [`INK_THRESHOLD`]), fitted into [`INK_BOX`]×[`INK_BOX`]
//!    (20×20) keeping the aspect ratio with a triangle filter that anti-aliases, and
//!    pasted into 28×28 so that the ink's centre of mass lands on pixel (14, 14), the
//!    MNIST convention (rounded to whole pixels; the box is kept inside the frame).
//!
//! Input files ([`load_digit`]) may be PNG or JPEG of any size up to [`MAX_SIDE`] pixels a
//! side and [`MAX_PIXELS`] pixels in all; the size is checked from the header before
//! anything is decoded, and the decoder runs under the same [`image::Limits`].
//! **Animated images:** of an animated PNG (APNG) only the default image is used (the
//! picture that non-animating viewers show, normally the first frame). GIF, WebP and other
//! formats are refused with [`PreprocessError::Unsupported`].

mod ink;
mod lines;
mod stroke;

use crate::fsutil::InputFileError;
use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
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
pub use ink::{INK_THRESHOLD, MIN_CONTRAST, NOISE_FLOOR, WORK_SIDE};

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
    /// Why the picture may not be one digit: almost no ink, or several marks of similar
    /// size (empty when it looks like one digit).
    pub warnings: Vec<String>,
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
            io_error(source, path)
        }
    };
    let len = crate::fsutil::regular_file(path).map_err(|e| match e {
        InputFileError::Missing => PreprocessError::Missing { path: p() },
        InputFileError::Io(error) => io_error(error, path),
        other => PreprocessError::Decode {
            path: p(),
            message: other.to_string(),
        },
    })?;
    if len == 0 {
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
    // Each step consumes its reader, so each opens the picture afresh.
    let open = || open_png_or_jpeg(&make, path);
    let (width, height) = open()?
        .into_dimensions()
        .map_err(|e| decode_error(e, path))?;
    check_size(width, height, path)?;
    if open()?.format() == Some(ImageFormat::Jpeg) {
        check_jpeg_file(&make, path)?;
    }
    decode_under_limits(open()?).map_err(|e| match e {
        DecodeFailure::TooLarge => PreprocessError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
        },
        DecodeFailure::Other(other) => decode_error(other, path),
    })
}

/// A reader from `make` with its format guessed from the contents; only PNG and JPEG
/// are accepted.
fn open_png_or_jpeg<R: io::BufRead + io::Seek>(
    make: &impl Fn() -> Result<ImageReader<R>, PreprocessError>,
    path: &Path,
) -> Result<ImageReader<R>, PreprocessError> {
    let reader = make()?
        .with_guessed_format()
        .map_err(|error| io_error(error, path))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg) => Ok(reader),
        Some(other) => Err(PreprocessError::Unsupported {
            path: path.to_path_buf(),
            format: format!("{other:?}").to_uppercase(),
        }),
        None => Err(PreprocessError::Decode {
            path: path.to_path_buf(),
            message: "unrecognised file contents".into(),
        }),
    }
}

/// Reads the whole JPEG file from `make` and decodes it strictly ([`check_jpeg_whole`]).
fn check_jpeg_file<R: io::BufRead + io::Seek>(
    make: &impl Fn() -> Result<ImageReader<R>, PreprocessError>,
    path: &Path,
) -> Result<(), PreprocessError> {
    let mut bytes = Vec::new();
    make()?
        .into_inner()
        .read_to_end(&mut bytes)
        .map_err(|error| io_error(error, path))?;
    check_jpeg_whole(&bytes).map_err(|message| PreprocessError::Decode {
        path: path.to_path_buf(),
        message,
    })
}

fn io_error(error: io::Error, path: &Path) -> PreprocessError {
    PreprocessError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// The decoder's error in the words of [`PreprocessError`]: a file that ends early is
/// truncated, any other I/O error stays one.
fn decode_error(e: image::ImageError, path: &Path) -> PreprocessError {
    match e {
        image::ImageError::IoError(source) if source.kind() == io::ErrorKind::UnexpectedEof => {
            PreprocessError::Decode {
                path: path.to_path_buf(),
                message: "the file is truncated".into(),
            }
        }
        image::ImageError::IoError(error) => io_error(error, path),
        other => PreprocessError::Decode {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    }
}

/// Why [`decode_under_limits`] failed.
enum DecodeFailure {
    TooLarge,
    Other(image::ImageError),
}

/// Decode `reader` (its size already checked from the header) under [`MAX_SIDE`] and
/// [`MAX_PIXELS`], in case the header lied, turned as its EXIF orientation says: phones
/// store a portrait shot as the sensor saw it and say in EXIF how to turn it for display,
/// and the digit must be read the way the picture is shown. (What `ImageReader::decode`
/// does, with the decoder kept to ask it the orientation.)
fn decode_under_limits<R: io::BufRead + io::Seek>(
    reader: ImageReader<R>,
) -> Result<DynamicImage, DecodeFailure> {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    // The largest accepted picture as 16-bit RGBA, plus room for the decoder's buffers.
    limits.max_alloc = Some(MAX_PIXELS * 8 + (64 << 20));
    let decode = || -> image::ImageResult<DynamicImage> {
        let mut decoder = reader.into_decoder()?;
        limits.reserve(decoder.total_bytes())?;
        decoder.set_limits(limits)?;
        let orientation = decoder.orientation()?;
        let mut img = DynamicImage::from_decoder(decoder)?;
        img.apply_orientation(orientation);
        Ok(img)
    };
    decode().map_err(|e| match e {
        image::ImageError::Limits(_) => DecodeFailure::TooLarge,
        other => DecodeFailure::Other(other),
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

/// The whole preparation with alpha composited over `backdrop` (1 = white, 0 = black);
/// `None` if there is no ink.
fn prepare_over(img: &DynamicImage, backdrop: f32) -> Option<Preprocessed> {
    let (w, h) = (img.width(), img.height());
    let grey = ink::Grey::from_raw(w, h, to_grey(img, backdrop)).expect("w×h grey values");
    let found = ink::find_digit(&grey)?;
    Some(Preprocessed {
        pixels: place(&stroke::normalise(found.crop))?,
        inverted: found.inverted,
        ink_box: found.source_box,
        warnings: found.warnings,
    })
}

/// Fit the cropped ink into [`INK_BOX`]×[`INK_BOX`] keeping the aspect ratio, and paste it
/// into 28×28 with its centre of mass on [`CENTRE`]; `None` if no ink is left.
fn place(crop: &ink::Grey) -> Option<[u8; SIDE * SIDE]> {
    let (bw, bh) = crop.dimensions();
    let scale = INK_BOX as f32 / bw.max(bh) as f32;
    let nw = ((bw as f32 * scale).round() as u32).clamp(1, INK_BOX);
    let nh = ((bh as f32 * scale).round() as u32).clamp(1, INK_BOX);
    let small = imageops::resize(crop, nw, nh, FilterType::Triangle);

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
    Some(pixels)
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
