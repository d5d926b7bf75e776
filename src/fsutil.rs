//! Writing files so that a crash never leaves a half-written one behind.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Write `bytes` to `path` atomically: write a temporary file in the same directory,
/// flush it to disk, then rename it over `path`. Readers see the old file or the new
/// one, never a mix; a failure leaves the old file untouched and no temp file behind.
///
/// When `path` is a symbolic link, the file it points to is replaced and the link kept.
/// Only a regular file is ever replaced: a directory, device, FIFO or socket, or a path
/// that leads through `/dev` or `/proc` (`/dev/stdout`), is refused.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let path = &replaceable_target(path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = temp_path(dir, path)?;
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

/// The temporary file [`write_atomic`] writes in `dir` before it becomes `path`.
fn temp_path(dir: &Path, path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    Ok(dir.join(temp_name(&name.to_string_lossy(), std::process::id())))
}

/// The name of [`write_atomic`]'s temporary file for the file `name`, made by process `pid`.
fn temp_name(name: &str, pid: u32) -> String {
    format!(".{name}.tmp-{pid}")
}

/// The file that writing `path` replaces (links followed), if that may be done: it does
/// not exist yet or is a regular file, and no link on the way leads into `/dev` or
/// `/proc` (`/dev/stdout` names whatever this process's stdout is).
pub fn replaceable_target(path: &Path) -> io::Result<PathBuf> {
    let chain = link_chain(path)?;
    if let Some(special) = chain.iter().find(|p| is_special_path(p)) {
        return Err(io::Error::other(format!(
            "{} is a device or process stream, not a regular file; it is not replaced",
            special.display()
        )));
    }
    let target = chain.last().cloned().unwrap_or_else(|| path.to_path_buf());
    match fs::metadata(&target) {
        Ok(meta) if meta.is_dir() => Err(io::Error::other("is a directory")),
        Ok(meta) if !meta.is_file() => Err(io::Error::other(
            "is not a regular file (a device, FIFO or socket); it is not replaced",
        )),
        _ => Ok(target),
    }
}

/// Whether `path` (made absolute) names a process's stream rather than a file: under
/// `/proc` or `/dev/fd`, or `/dev/stdin`, `/dev/stdout`, `/dev/stderr`.
fn is_special_path(path: &Path) -> bool {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    [
        "/proc",
        "/dev/fd",
        "/dev/stdin",
        "/dev/stdout",
        "/dev/stderr",
    ]
    .iter()
    .any(|special| path.starts_with(special))
}

/// `path`, then each file its symbolic links lead to, in turn (the last is no link, or
/// does not exist yet).
fn link_chain(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut chain = vec![path.to_path_buf()];
    for _ in 0..40 {
        let path = chain.last().expect("never empty");
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(path)?;
                let next = match path.parent() {
                    Some(parent) => parent.join(target),
                    None => target,
                };
                chain.push(next);
            }
            _ => return Ok(chain),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// Remove the temporary files that [`write_atomic`] left in `dir` for the files named
/// `names` when its process was killed mid-write (`.NAME.tmp-PID` of a process that no
/// longer runs). Any other file, whatever its name, is kept.
#[cfg(not(target_arch = "wasm32"))]
pub fn remove_stale_temp_files(dir: &Path, names: &[&str]) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let pid = names.iter().find_map(|name| {
            let pid = file_name.strip_prefix(&format!(".{name}.tmp-"))?;
            let pid = pid.parse::<u32>().ok()?;
            (temp_name(name, pid) == file_name).then_some(pid)
        });
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && pid.is_some_and(|pid| !process_alive(pid)) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether process `pid` still exists (on non-Unix systems: assume it does).
#[cfg(not(target_arch = "wasm32"))]
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
#[cfg(not(target_arch = "wasm32"))]
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
