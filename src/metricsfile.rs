//! What `--metrics FILE` may name. Checked before training, so a run never replaces
//! something that is not a metrics file of its own making:
//!
//! - a regular file (links followed) or a new name in an existing, writable directory;
//!   never a directory, device, FIFO or socket, nor a process's stream (`/dev/stdout`,
//!   `/proc/self/fd/1`, or the file this program's stdout or stderr is redirected to);
//! - never one of the run's own files (its lock, model, checkpoint, pictures or
//!   `metrics.jsonl`), by name or by identity;
//! - an existing file that holds text other than epoch records is never replaced; one
//!   that holds another run's metrics only with `--overwrite`. A resumed run recognises
//!   its own file by content: the epochs it holds are those of the checkpoint.

use crate::backend::EpochRecord;
use crate::fsutil;
use crate::rundir::{LOCK, RUN_FILES};
use anyhow::{bail, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// What the file at `--metrics` holds now.
#[derive(Debug, PartialEq)]
enum Contents {
    /// Nothing (no file yet, or an empty one).
    Empty,
    /// The metrics of the run being resumed (its checkpoint's epochs, give or take the
    /// one written just before or after an interruption).
    OwnRun,
    /// Epoch records of another run.
    OtherRun,
    /// Something else (notes, a picture).
    NotMetrics,
}

/// Check `--metrics path` for a run into `out_dir` (`None`: a directory not chosen yet),
/// resuming a run with `history` (`None`: a new run). Returns the file that will be
/// written (links followed).
pub fn check(
    path: &Path,
    out_dir: Option<&Path>,
    history: Option<&[EpochRecord]>,
    overwrite: bool,
) -> Result<PathBuf> {
    let flag = format!("--metrics {}", path.display());
    if path.as_os_str() == "-" {
        bail!(
            "{flag}: writing the metrics to standard output is not supported; give a file \
             (the run directory's metrics.jsonl is always written)"
        );
    }
    let target = fsutil::replaceable_target(path).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    check_directory(&flag, &target)?;
    check_not_output_stream(&flag, &target)?;
    if let Some(dir) = out_dir {
        check_not_run_file(path, &target, dir)?;
    }
    match contents(&target, history) {
        Contents::Empty | Contents::OwnRun => Ok(target),
        Contents::OtherRun if overwrite && history.is_none() => Ok(target),
        Contents::OtherRun if history.is_some() => bail!(
            "{flag}: the file holds metrics of another run, not this one's; choose another \
             file with --metrics"
        ),
        Contents::OtherRun => bail!(
            "{flag}: the file already holds metrics; choose another file or pass --overwrite \
             to replace it"
        ),
        Contents::NotMetrics => bail!(
            "{flag}: the file holds something other than metrics (its lines are not epoch \
             records); it is never replaced, so choose another file"
        ),
    }
}

/// The directory `target` goes in must exist and take new files; an existing `target`
/// must be writable.
fn check_directory(flag: &str, target: &Path) -> Result<()> {
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!("{flag}: the directory {} does not exist", parent.display());
    }
    if target.exists() {
        if let Err(e) = fs::File::options().append(true).open(target) {
            bail!("{flag}: cannot write {}: {e}", target.display());
        }
    }
    if let Err(e) = fsutil::ensure_writable_dir(parent) {
        bail!(
            "{flag}: cannot write in the directory {}: {e}",
            parent.display()
        );
    }
    Ok(())
}

/// The (device, inode) of a file, to tell whether two paths name the same file.
#[cfg(unix)]
fn identity(meta: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// `target` must not be the file this process's stdout or stderr writes to
/// (`--metrics train.log > train.log`).
fn check_not_output_stream(flag: &str, target: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        let Ok(meta) = fs::metadata(target) else {
            return Ok(());
        };
        let streams = [
            ("output", std::io::stdout().as_fd().try_clone_to_owned()),
            ("error", std::io::stderr().as_fd().try_clone_to_owned()),
        ];
        for (stream, fd) in streams {
            let same = fd
                .ok()
                .and_then(|fd| fs::File::from(fd).metadata().ok())
                .is_some_and(|m| identity(&m) == identity(&meta));
            if same {
                bail!(
                    "{flag}: is where this program's standard {stream} goes; choose another file"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (flag, target);
    Ok(())
}

/// `--metrics path` (leading to `target`) must not name one of the files of the run in
/// `dir`: its lock, model, checkpoint, pictures or metrics.jsonl.
pub fn check_not_run_file(path: &Path, target: &Path, dir: &Path) -> Result<()> {
    let target_meta = fs::metadata(target).ok();
    let canonical_parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .canonicalize()
        .ok();
    let canonical_dir = dir.canonicalize().ok();
    for name in RUN_FILES.iter().chain([&LOCK]) {
        let by_name = canonical_dir.is_some()
            && canonical_parent == canonical_dir
            && target.file_name().is_some_and(|n| n == *name);
        let by_identity = match (&target_meta, fs::metadata(dir.join(name))) {
            #[cfg(unix)]
            (Some(a), Ok(b)) => identity(a) == identity(&b),
            _ => false,
        };
        if by_name || by_identity {
            bail!(
                "--metrics {}: is the run's own {name} in {}; choose a file outside the run's \
                 files (the run always writes its metrics.jsonl)",
                path.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// What `target` holds, compared with the resumed run's `history`.
fn contents(target: &Path, history: Option<&[EpochRecord]>) -> Contents {
    let Ok(bytes) = fs::read(target) else {
        return Contents::Empty;
    };
    if bytes.is_empty() {
        return Contents::Empty;
    }
    let Ok(text) = String::from_utf8(bytes) else {
        return Contents::NotMetrics;
    };
    let is_record = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.get("epoch").is_some())
    };
    if !text.lines().all(is_record) {
        return Contents::NotMetrics;
    }
    let records: Vec<EpochRecord> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let own = history.is_some_and(|history| {
        // The metrics files are written just after the checkpoint (and rewritten from
        // it on resume): an interruption between leaves one epoch fewer; a file from an
        // older build, which wrote metrics.jsonl first, may hold one more.
        let shared = records.len().min(history.len());
        shared > 0
            && records.len() == text.lines().count()
            && records.len().abs_diff(history.len()) <= 1
            && records[..shared] == history[..shared]
    });
    if own {
        Contents::OwnRun
    } else {
        Contents::OtherRun
    }
}
