//! Writing files so that a crash never leaves a half-written one behind.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Write `bytes` to `path` atomically: write a temporary file in the same directory,
/// flush it to disk, then rename it over `path`. Readers see the old file or the new
/// one, never a mix; a failure leaves the old file untouched and no temp file behind.
///
/// When `path` is a symbolic link, the file it points to is replaced and the link kept.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let path = &follow_links(path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `path` with symbolic links followed to the file they name (which need not exist yet);
/// `path` itself when it is no link.
fn follow_links(path: &Path) -> io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&path)?;
                path = match path.parent() {
                    Some(parent) => parent.join(target),
                    None => target,
                };
            }
            _ => return Ok(path),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// Remove the temporary files (`.NAME.tmp-PID`) that [`write_atomic`] left in `dir` when
/// its process was killed mid-write; files of processes still running are kept.
pub fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix('.')
            .and_then(|rest| rest.rsplit_once(".tmp-"))
            .and_then(|(_, pid)| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !process_alive(pid)) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether process `pid` still exists (on non-Unix systems: assume it does).
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let result = unsafe { libc::kill(pid, 0) };
        result == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Create `dir` if needed and check that files can be written in it.
pub fn ensure_writable_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    File::create(&probe)?.write_all(b"ok")?;
    fs::remove_file(&probe)
}

/// Why an input path cannot be read as a file.
#[derive(Debug, thiserror::Error)]
pub enum InputFileError {
    #[error("does not exist")]
    Missing,
    #[error("is a symbolic link loop")]
    SymlinkLoop,
    #[error("is a directory, expected a file")]
    Directory,
    #[error("is not a regular file (a FIFO, socket or device?)")]
    NotRegular,
    #[error("cannot read: {0}")]
    Io(io::Error),
}

impl InputFileError {
    /// The error of a failed open or read, in the same words as [`regular_file`] uses.
    pub fn from_io(error: io::Error) -> Self {
        #[cfg(unix)]
        if error.raw_os_error() == Some(libc::ELOOP) {
            return InputFileError::SymlinkLoop;
        }
        match error.kind() {
            io::ErrorKind::NotFound => InputFileError::Missing,
            _ => InputFileError::Io(error),
        }
    }
}

/// Check that `path` is a regular file (links followed) and return its size. FIFOs,
/// sockets and devices are refused: reading one could block forever or never end.
pub fn regular_file(path: &Path) -> Result<u64, InputFileError> {
    let meta = fs::metadata(path).map_err(InputFileError::from_io)?;
    if meta.is_dir() {
        Err(InputFileError::Directory)
    } else if !meta.is_file() {
        Err(InputFileError::NotRegular)
    } else {
        Ok(meta.len())
    }
}

/// Open `path` for reading after [`regular_file`]'s checks; returns the file and its size.
pub fn open_regular(path: &Path) -> Result<(File, u64), InputFileError> {
    let len = regular_file(path)?;
    let file = File::open(path).map_err(InputFileError::from_io)?;
    Ok((file, len))
}
