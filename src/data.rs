//! MNIST IDX files (gzipped or plain) → [`Dataset`], with every malformed input reported
//! as a [`DataError`] that names the file and what is wrong.

use crate::fsutil::{open_regular, InputFileError};
use flate2::bufread::MultiGzDecoder;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use thiserror::Error;

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
    #[error("{path}: {error}")]
    Read {
        path: PathBuf,
        error: InputFileError,
    },
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

/// How [`Dataset::digest`] begins: the hash function's name.
pub const DIGEST_PREFIX: &str = "fnv1a64:";

/// Whether `text` is a digest as [`Dataset::digest`] writes it.
pub fn is_digest(text: &str) -> bool {
    text.strip_prefix(DIGEST_PREFIX).is_some_and(|hex| {
        hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
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
    /// A fingerprint of the split (its shape, images and labels as decoded, so a
    /// re-compressed or moved copy has the same one), stored in a checkpoint so that
    /// `--resume` notices a data directory that holds other data. FNV-1a, 64 bits: no
    /// dependency, the same on every platform and version (std's `DefaultHasher` is
    /// not), and cheap (one multiply per byte). It guards against mistakes, not against data
    /// crafted to collide, so a cryptographic hash would buy nothing here.
    pub fn digest(&self) -> String {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let shape = [self.len(), self.rows, self.cols].map(|n| (n as u64).to_le_bytes());
        let bytes = shape
            .iter()
            .flatten()
            .chain(&self.images)
            .chain(&self.labels);
        let hash = bytes.fold(OFFSET, |hash, &byte| {
            (hash ^ byte as u64).wrapping_mul(PRIME)
        });
        format!("{DIGEST_PREFIX}{hash:016x}")
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
        Mnist::load_limited(dir, None, None)
    }

    /// [`Mnist::load`], decoding and keeping only the first `train_limit` training and
    /// `test_limit` test samples (`None`: all). A plain file's size is still checked
    /// against its header; the part of a gzip stream past the limit is not decoded.
    pub fn load_limited(
        dir: &Path,
        train_limit: Option<usize>,
        test_limit: Option<usize>,
    ) -> Result<Mnist, DataError> {
        if is_embedded(dir) {
            return Mnist::embedded(train_limit, test_limit);
        }
        check_dir(dir)?;
        let train = load_split(dir, TRAIN_IMAGES, TRAIN_LABELS, train_limit)?;
        let test = load_split(dir, TEST_IMAGES, TEST_LABELS, test_limit)?;
        Mnist::checked(train, test)
    }

    /// Only the test split of `dir` (its first `test_limit` samples), as evaluation
    /// needs; the training set it comes with is empty.
    pub fn load_test(dir: &Path, test_limit: Option<usize>) -> Result<Mnist, DataError> {
        let test = if is_embedded(dir) {
            split_from_bytes(EMBEDDED[2], EMBEDDED[3], test_limit)?
        } else {
            check_dir(dir)?;
            load_split(dir, TEST_IMAGES, TEST_LABELS, test_limit)?
        };
        let train = Dataset {
            images: Vec::new(),
            labels: Vec::new(),
            rows: test.rows,
            cols: test.cols,
        };
        Mnist::checked(train, test)
    }

    /// Both splits, checked to hold 28×28 images of the same shape.
    fn checked(train: Dataset, test: Dataset) -> Result<Mnist, DataError> {
        if (train.rows, train.cols) != (test.rows, test.cols) {
            return Err(DataError::ShapeMismatch {
                train_rows: train.rows,
                train_cols: train.cols,
                test_rows: test.rows,
                test_cols: test.cols,
            });
        }
        if (train.rows, train.cols) != (SIDE, SIDE) {
            return Err(DataError::WrongImageSize {
                rows: train.rows,
                cols: train.cols,
            });
        }
        Ok(Mnist { train, test })
    }

    /// The built-in MNIST from the copy compiled into the binary.
    pub fn embedded(
        train_limit: Option<usize>,
        test_limit: Option<usize>,
    ) -> Result<Mnist, DataError> {
        Mnist::from_bytes(EMBEDDED, train_limit, test_limit)
    }

    /// MNIST from the four files' bytes (each plain or `.gz`), in the order train
    /// images, train labels, test images, test labels: what a web page downloaded.
    pub fn from_bytes(
        files: [&[u8]; 4],
        train_limit: Option<usize>,
        test_limit: Option<usize>,
    ) -> Result<Mnist, DataError> {
        Mnist::checked(
            split_from_bytes(files[0], files[1], train_limit)?,
            split_from_bytes(files[2], files[3], test_limit)?,
        )
    }
}

/// The built-in data directory, when it is not on disk: read the copy in the binary.
fn is_embedded(dir: &Path) -> bool {
    !dir.exists() && dir == builtin_dir()
}

/// A data directory must exist and be a directory.
fn check_dir(dir: &Path) -> Result<(), DataError> {
    if !dir.exists() {
        Err(DataError::MissingDir(dir.to_path_buf()))
    } else if !dir.is_dir() {
        Err(DataError::NotADir(dir.to_path_buf()))
    } else {
        Ok(())
    }
}

/// One split from the bytes of its image and label files (each plain or `.gz`).
fn split_from_bytes(
    images: &[u8],
    labels: &[u8],
    limit: Option<usize>,
) -> Result<Dataset, DataError> {
    let path = Path::new(IN_MEMORY);
    let (shape, images) = read_idx(path, images, None, IMAGES, limit)?;
    let (_, labels) = read_idx(path, labels, None, LABELS, limit)?;
    Ok(Dataset {
        images,
        labels,
        rows: shape[1],
        cols: shape[2],
    })
}

/// Side of the square images the model takes.
const SIDE: usize = 28;

fn load_split(
    dir: &Path,
    images_name: &str,
    labels_name: &str,
    limit: Option<usize>,
) -> Result<Dataset, DataError> {
    let images_path = find_file(dir, images_name)?;
    let labels_path = find_file(dir, labels_name)?;
    let (shape, images) = read_idx_file(&images_path, IMAGES, limit)?;
    let (label_shape, labels) = read_idx_file(&labels_path, LABELS, limit)?;
    if label_shape[0] != shape[0] {
        return Err(DataError::CountMismatch {
            images: images_path,
            labels: labels_path,
            image_count: shape[0],
            label_count: label_shape[0],
        });
    }
    if shape[0] == 0 {
        return Err(invalid(&images_path, "holds no images"));
    }
    Ok(Dataset {
        images,
        labels,
        rows: shape[1],
        cols: shape[2],
    })
}

/// `dir/name`, else `dir/name.gz`.
pub fn find_file(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let plain = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    [plain, gz]
        .into_iter()
        .find(|p| p.symlink_metadata().is_ok())
        .ok_or_else(|| DataError::MissingFile {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        })
}

/// Read a whole file, gunzipping it when it starts with the gzip magic bytes (every
/// member of a multi-member gzip file).
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let (file, _) = open_input(path)?;
    let mut out = Vec::new();
    decoder(BufReader::new(file))
        .map_err(|e| io_error(path, e))?
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| io_error(path, e))?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(invalid(
            path,
            format!("decompresses to more than {MAX_DECOMPRESSED} bytes"),
        ));
    }
    Ok(out)
}

/// Largest IDX data accepted (the MNIST training images are 47 MB).
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

/// Open a data file, which must be a regular file (a FIFO would block forever).
fn open_input(path: &Path) -> Result<(File, u64), DataError> {
    open_regular(path).map_err(|error| match error {
        InputFileError::Directory => invalid(path, "is a directory, expected an IDX file"),
        InputFileError::NotRegular => invalid(
            path,
            "is not a regular file (a FIFO, socket or device?), expected an IDX file",
        ),
        other => DataError::Read {
            path: path.to_path_buf(),
            error: other,
        },
    })
}

/// A reader of the decompressed bytes: a gzip decoder over every member when the
/// stream starts with the gzip magic bytes, else the bytes themselves. The error marks
/// gzip data as `InvalidData`, so it can be told from a read error.
fn decoder<'a, R: BufRead + 'a>(mut input: R) -> io::Result<Box<dyn Read + 'a>> {
    let is_gz = input.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if is_gz {
        Box::new(GzipErrors(MultiGzDecoder::new(input)))
    } else {
        Box::new(input)
    })
}

/// Wraps a gzip decoder so that every error it returns reads "corrupt gzip data (…)".
struct GzipErrors<R>(R);

impl<R: Read> Read for GzipErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("corrupt gzip data ({e})"),
            )
        })
    }
}

/// An error while reading `path`: gzip damage is a problem with the file's contents,
/// anything else a read error.
fn io_error(path: &Path, error: io::Error) -> DataError {
    if error.kind() == io::ErrorKind::InvalidData {
        invalid(path, error.to_string())
    } else {
        DataError::Read {
            path: path.to_path_buf(),
            error: InputFileError::from_io(error),
        }
    }
}

fn invalid(path: &Path, problem: impl Into<String>) -> DataError {
    DataError::Invalid {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// What an IDX file must hold: its magic number and number of dimensions.
#[derive(Clone, Copy)]
struct IdxKind {
    magic: u32,
    dims: usize,
}

/// IDX magic for unsigned-byte data with 3 dimensions (images) and 1 dimension (labels).
const IMAGES: IdxKind = IdxKind {
    magic: 0x0000_0803,
    dims: 3,
};
const LABELS: IdxKind = IdxKind {
    magic: 0x0000_0801,
    dims: 1,
};

/// Read an IDX file: its shape and the data of its first `limit` items (all: `None`).
fn read_idx_file(
    path: &Path,
    kind: IdxKind,
    limit: Option<usize>,
) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let (file, len) = open_input(path)?;
    let mut input = BufReader::new(file);
    let is_gz = input
        .fill_buf()
        .map_err(|e| io_error(path, e))?
        .starts_with(&[0x1f, 0x8b]);
    read_idx(path, input, (!is_gz).then_some(len), kind, limit)
}

/// Read IDX data (plain or gzipped) from `input`, streaming: the header is checked
/// first, a plain file's size (`plain_len`) is checked against it before its data is
/// read, and no more data than the header declares (up to `limit` items) is decoded.
fn read_idx(
    path: &Path,
    input: impl BufRead,
    plain_len: Option<u64>,
    kind: IdxKind,
    limit: Option<usize>,
) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let mut reader = decoder(input).map_err(|e| io_error(path, e))?;
    let header_len = 4 + 4 * kind.dims;
    let mut header = Vec::with_capacity(header_len);
    (&mut reader)
        .take(header_len as u64)
        .read_to_end(&mut header)
        .map_err(|e| io_error(path, e))?;
    let shape = parse_header(path, &header, kind)?;
    let item: usize = shape[1..].iter().product();
    let expected = (header_len + shape[0] * item) as u64;
    let size_problem = |got: u64| {
        let what = if got < expected {
            "truncated"
        } else {
            "trailing data"
        };
        invalid(
            path,
            format!("{what}: {got} bytes, expected {expected} for shape {shape:?}"),
        )
    };
    if let Some(len) = plain_len.filter(|&len| len != expected) {
        return Err(size_problem(len));
    }
    let keep = limit.map_or(shape[0], |n| n.min(shape[0])) * item;
    let mut data = Vec::with_capacity(if plain_len.is_some() { keep } else { 0 });
    (&mut reader)
        .take(keep as u64)
        .read_to_end(&mut data)
        .map_err(|e| io_error(path, e))?;
    if data.len() < keep {
        return Err(size_problem((header_len + data.len()) as u64));
    }
    // With every item read, a decompressed stream must end here.
    if keep == shape[0] * item && plain_len.is_none() {
        let mut probe = [0u8; 1];
        if reader.read(&mut probe).map_err(|e| io_error(path, e))? > 0 {
            return Err(size_problem(expected + 1));
        }
    }
    if kind.magic == LABELS.magic {
        check_labels(path, &data)?;
    }
    Ok((shape, data))
}

/// Parse the IDX header: magic, then one big-endian u32 per dimension; the data it
/// declares must fit [`MAX_DECOMPRESSED`].
fn parse_header(path: &Path, bytes: &[u8], kind: IdxKind) -> Result<Vec<usize>, DataError> {
    if bytes.is_empty() {
        return Err(invalid(path, "file is empty"));
    }
    let header_len = 4 + 4 * kind.dims;
    if bytes.len() < header_len {
        return Err(invalid(
            path,
            format!(
                "truncated header: {} bytes, expected at least {header_len}",
                bytes.len()
            ),
        ));
    }
    let word = |i: usize| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    let found = word(0);
    if found != kind.magic {
        return Err(invalid(
            path,
            format!(
                "wrong IDX magic number 0x{found:08x}, expected 0x{:08x} (u8 data, {} dimension(s))",
                kind.magic, kind.dims
            ),
        ));
    }
    let shape: Vec<usize> = (1..=kind.dims).map(|i| word(i) as usize).collect();
    let body = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    match body {
        Some(body) if body <= MAX_DECOMPRESSED => {}
        _ => {
            return Err(invalid(
                path,
                format!("dimensions {shape:?} are too large (at most {MAX_DECOMPRESSED} bytes of data are read)"),
            ))
        }
    }
    if kind.dims == 3 && (shape[1] == 0 || shape[2] == 0) {
        return Err(invalid(
            path,
            format!("images have zero size ({}×{})", shape[1], shape[2]),
        ));
    }
    Ok(shape)
}

/// Every label must be a digit.
fn check_labels(path: &Path, labels: &[u8]) -> Result<(), DataError> {
    match labels.iter().enumerate().find(|(_, &l)| l > 9) {
        Some((index, label)) => Err(invalid(
            path,
            format!("label {label} at index {index} is not a digit 0-9"),
        )),
        None => Ok(()),
    }
}

/// Images: (pixels, count, rows, cols).
pub fn read_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize), DataError> {
    let (shape, images) = read_idx_file(path, IMAGES, None)?;
    Ok((images, shape[0], shape[1], shape[2]))
}

/// Labels, each checked to be a digit 0..=9.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    read_idx_file(path, LABELS, None).map(|(_, labels)| labels)
}

/// Parse the bytes of an IDX image file (plain or gzipped) as [`read_images`] does;
/// errors name `<bytes>`. For fuzzing and callers that hold the file in memory.
pub fn parse_images(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize, usize), DataError> {
    let (shape, images) = read_idx(Path::new(IN_MEMORY), bytes, None, IMAGES, None)?;
    Ok((images, shape[0], shape[1], shape[2]))
}

/// Parse the bytes of an IDX label file (plain or gzipped) as [`read_labels`] does.
pub fn parse_labels(bytes: &[u8]) -> Result<Vec<u8>, DataError> {
    let path = Path::new(IN_MEMORY);
    let (_, labels) = read_idx(path, bytes, None, LABELS, None)?;
    Ok(labels)
}

/// Name used in errors from [`parse_images`] and [`parse_labels`], which have no file.
const IN_MEMORY: &str = "<bytes>";

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
