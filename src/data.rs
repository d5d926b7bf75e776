//! MNIST IDX files (gzipped or plain) → [`Dataset`], with every malformed input reported
//! as a [`DataError`] that names the file and what is wrong.

use flate2::read::GzDecoder;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// IDX magic for unsigned-byte data with 3 dimensions (images) and 1 dimension (labels).
const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// The four standard file names (each may also carry a `.gz` suffix).
pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// The built-in MNIST, compiled into the binary, so that `train` works with no flags from
/// any directory and for an installed binary whose source tree is gone.
const EMBEDDED: [&[u8]; 4] = [
    include_bytes!("../assets/mnist/train-images-idx3-ubyte.gz"),
    include_bytes!("../assets/mnist/train-labels-idx1-ubyte.gz"),
    include_bytes!("../assets/mnist/t10k-images-idx3-ubyte.gz"),
    include_bytes!("../assets/mnist/t10k-labels-idx1-ubyte.gz"),
];

/// The data set shipped with the program (`assets/mnist`, relative to the crate root).
/// [`Mnist::load`] of this path reads the copy compiled into the binary when the
/// directory is not there.
pub fn builtin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join("mnist")
}

#[derive(Debug, Error)]
pub enum DataError {
    #[error("data directory {0} does not exist")]
    MissingDir(PathBuf),
    #[error("{0} is not a directory")]
    NotADir(PathBuf),
    #[error(
        "{dir}: no {name} or {name}.gz (a data directory must hold {TRAIN_IMAGES}, {TRAIN_LABELS}, {TEST_IMAGES} and {TEST_LABELS}, each optionally gzipped)"
    )]
    MissingFile { dir: PathBuf, name: String },
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("{images} holds {image_count} images but {labels} holds {label_count} labels")]
    CountMismatch {
        images: PathBuf,
        labels: PathBuf,
        image_count: usize,
        label_count: usize,
    },
    #[error(
        "training images are {train_rows}×{train_cols} but test images are {test_rows}×{test_cols}"
    )]
    ShapeMismatch {
        train_rows: usize,
        train_cols: usize,
        test_rows: usize,
        test_cols: usize,
    },
    #[error("images are {rows}×{cols}, but the model takes 28×28 (784) pixels")]
    WrongImageSize { rows: usize, cols: usize },
}

/// Images and labels of one split.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `len × rows × cols` pixels, row-major, 0 = background.
    pub images: Vec<u8>,
    /// `len` labels in 0..=9.
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn pixels_per_image(&self) -> usize {
        self.rows * self.cols
    }
    pub fn image(&self, index: usize) -> &[u8] {
        let n = self.pixels_per_image();
        &self.images[index * n..(index + 1) * n]
    }
    /// The first `count` samples (all of them if `count` is larger).
    pub fn truncated(mut self, count: usize) -> Self {
        let count = count.min(self.len());
        self.images.truncate(count * self.pixels_per_image());
        self.labels.truncate(count);
        self
    }
}

/// The training and test splits.
#[derive(Clone, Debug)]
pub struct Mnist {
    pub train: Dataset,
    pub test: Dataset,
}

impl Mnist {
    /// Load the four standard files from `dir` (plain or `.gz`), validated and cross-checked.
    pub fn load(dir: &Path) -> Result<Mnist, DataError> {
        if !dir.exists() && dir == builtin_dir() {
            return Mnist::embedded();
        }
        if !dir.exists() {
            return Err(DataError::MissingDir(dir.to_path_buf()));
        }
        if !dir.is_dir() {
            return Err(DataError::NotADir(dir.to_path_buf()));
        }
        let train = load_split(dir, TRAIN_IMAGES, TRAIN_LABELS)?;
        let test = load_split(dir, TEST_IMAGES, TEST_LABELS)?;
        if (train.rows, train.cols) != (test.rows, test.cols) {
            return Err(DataError::ShapeMismatch {
                train_rows: train.rows,
                train_cols: train.cols,
                test_rows: test.rows,
                test_cols: test.cols,
            });
        }
        if train.pixels_per_image() != crate::model::INPUT {
            return Err(DataError::WrongImageSize {
                rows: train.rows,
                cols: train.cols,
            });
        }
        Ok(Mnist { train, test })
    }
}

impl Mnist {
    /// The built-in MNIST from the copy compiled into the binary.
    pub fn embedded() -> Result<Mnist, DataError> {
        let split = |images: &[u8], labels: &[u8]| -> Result<Dataset, DataError> {
            let (images, _, rows, cols) = parse_images(images)?;
            Ok(Dataset {
                images,
                labels: parse_labels(labels)?,
                rows,
                cols,
            })
        };
        Ok(Mnist {
            train: split(EMBEDDED[0], EMBEDDED[1])?,
            test: split(EMBEDDED[2], EMBEDDED[3])?,
        })
    }
}

fn load_split(dir: &Path, images_name: &str, labels_name: &str) -> Result<Dataset, DataError> {
    let images_path = find_file(dir, images_name)?;
    let labels_path = find_file(dir, labels_name)?;
    let (images, count, rows, cols) = read_images(&images_path)?;
    let labels = read_labels(&labels_path)?;
    if labels.len() != count {
        return Err(DataError::CountMismatch {
            images: images_path,
            labels: labels_path,
            image_count: count,
            label_count: labels.len(),
        });
    }
    Ok(Dataset {
        images,
        labels,
        rows,
        cols,
    })
}

/// `dir/name`, else `dir/name.gz`.
pub fn find_file(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let plain = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    [plain, gz]
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| DataError::MissingFile {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        })
}

/// Read a whole file, gunzipping it when it starts with the gzip magic bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let io_err = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        return Err(DataError::Invalid {
            path: path.to_path_buf(),
            problem: "is a directory, expected an IDX file".into(),
        });
    }
    // A FIFO, socket or device would block or never end: only regular files are read.
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if !meta.is_file() {
        return Err(DataError::Invalid {
            path: path.to_path_buf(),
            problem: "is not a regular file (a FIFO, socket or device?), expected an IDX file"
                .into(),
        });
    }
    let mut raw = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut raw))
        .map_err(io_err)?;
    gunzip_if_gz(raw).map_err(|problem| invalid(path, problem))
}

/// Largest decompressed IDX file accepted (the MNIST training images are 47 MB).
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

/// `raw` itself, or its gunzipped contents when it starts with the gzip magic bytes
/// (the error is the problem, without a file name).
pub fn gunzip_if_gz(raw: Vec<u8>) -> Result<Vec<u8>, String> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    GzDecoder::new(&raw[..])
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("corrupt gzip data ({e})"))?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(format!(
            "gzip data decompresses to more than {MAX_DECOMPRESSED} bytes"
        ));
    }
    Ok(out)
}

fn invalid(path: &Path, problem: impl Into<String>) -> DataError {
    DataError::Invalid {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Parse the IDX header: magic, then one big-endian u32 per dimension.
fn parse_header(
    path: &Path,
    bytes: &[u8],
    magic: u32,
    dims: usize,
) -> Result<Vec<usize>, DataError> {
    if bytes.is_empty() {
        return Err(invalid(path, "file is empty"));
    }
    let header_len = 4 + 4 * dims;
    if bytes.len() < header_len {
        return Err(invalid(
            path,
            format!(
                "truncated header: {} bytes, expected at least {header_len}",
                bytes.len()
            ),
        ));
    }
    let word = |i: usize| {
        u32::from_be_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    };
    let found = word(0);
    if found != magic {
        return Err(invalid(
            path,
            format!("wrong IDX magic number 0x{found:08x}, expected 0x{magic:08x} (u8 data, {dims} dimension(s))"),
        ));
    }
    let shape: Vec<usize> = (1..=dims).map(|i| word(i) as usize).collect();
    let body: usize = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| invalid(path, format!("dimensions {shape:?} are too large")))?;
    let expected = header_len + body;
    if bytes.len() != expected {
        let what = if bytes.len() < expected {
            "truncated"
        } else {
            "trailing data"
        };
        return Err(invalid(
            path,
            format!(
                "{what}: {} bytes, expected {expected} for shape {shape:?}",
                bytes.len()
            ),
        ));
    }
    Ok(shape)
}

/// Images: (pixels, count, rows, cols).
pub fn read_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize), DataError> {
    images_from(path, read_maybe_gz(path)?)
}

/// Labels, each checked to be a digit 0..=9.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    labels_from(path, read_maybe_gz(path)?)
}

/// Parse the bytes of an IDX image file (plain or gzipped) as [`read_images`] does;
/// errors name `<bytes>`. For fuzzing and callers that hold the file in memory.
pub fn parse_images(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize, usize), DataError> {
    let path = Path::new(IN_MEMORY);
    let bytes = gunzip_if_gz(bytes.to_vec()).map_err(|problem| invalid(path, problem))?;
    images_from(path, bytes)
}

/// Parse the bytes of an IDX label file (plain or gzipped) as [`read_labels`] does.
pub fn parse_labels(bytes: &[u8]) -> Result<Vec<u8>, DataError> {
    let path = Path::new(IN_MEMORY);
    let bytes = gunzip_if_gz(bytes.to_vec()).map_err(|problem| invalid(path, problem))?;
    labels_from(path, bytes)
}

/// Name used in errors from [`parse_images`] and [`parse_labels`], which have no file.
const IN_MEMORY: &str = "<bytes>";

fn images_from(
    path: &Path,
    mut bytes: Vec<u8>,
) -> Result<(Vec<u8>, usize, usize, usize), DataError> {
    let shape = parse_header(path, &bytes, IMAGES_MAGIC, 3)?;
    if shape[1] == 0 || shape[2] == 0 {
        return Err(invalid(
            path,
            format!("images have zero size ({}×{})", shape[1], shape[2]),
        ));
    }
    bytes.drain(..16);
    Ok((bytes, shape[0], shape[1], shape[2]))
}

fn labels_from(path: &Path, mut bytes: Vec<u8>) -> Result<Vec<u8>, DataError> {
    parse_header(path, &bytes, LABELS_MAGIC, 1)?;
    bytes.drain(..8);
    if let Some((index, label)) = bytes.iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(invalid(
            path,
            format!("label {label} at index {index} is not a digit 0-9"),
        ));
    }
    Ok(bytes)
}

/// Write an IDX file (u8 data) — used by tests and tools to make small data sets.
pub fn write_idx(path: &Path, shape: &[u32], data: &[u8]) -> io::Result<()> {
    let magic: u32 = 0x0800 | shape.len() as u32;
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in shape {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes)
}
