//! The run directory: where a training run's files go, and the rules that keep a user's
//! earlier results safe.
//!
//! - A directory that already holds a run's files is not trained into again unless the
//!   user says `--overwrite` (then that run's files are removed first, so two runs never
//!   mix) or continues that run with `--resume`.
//! - A run owns its directory for its whole life through an advisory lock on
//!   `DIR/.lock`: a second process aimed at the same directory fails at once.
//! - Automatic `runs/run-NNN` directories are claimed with an exclusive create, so two
//!   runs started together never share one; a run that fails before writing anything
//!   removes the directory it made.
//! - Once the directory is claimed, temporary files that killed runs left there
//!   (`.NAME.tmp-PID` for the run's own file names) are removed; nothing else is.

use crate::fsutil::{ensure_writable_dir, remove_stale_temp_files};
use anyhow::{bail, Context, Result};
use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

/// File names inside a run directory.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const MODEL: &str = "model.safetensors";
pub const METRICS: &str = "metrics.jsonl";
pub const PREDICTIONS: &str = "predictions.png";
pub const CURVES: &str = "curves.png";
/// The lock file a run holds for its whole life.
pub const LOCK: &str = ".lock";

/// Every file a run leaves behind.
pub const RUN_FILES: [&str; 5] = [MODEL, CHECKPOINT, METRICS, PREDICTIONS, CURVES];

/// How the directory is to be used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Claim {
    /// A new run: the directory must not hold another run's files.
    Fresh,
    /// A new run that replaces the run in the directory (`--overwrite`).
    Overwrite,
    /// Continue the run in the directory (`--resume`).
    Resume,
}

/// A run directory, locked while this value lives.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    /// Holds the advisory lock; released when dropped (or when the process ends).
    _lock: File,
    /// Whether this run created the directory (it is removed again on an early failure).
    created: bool,
}

impl RunDir {
    /// Claim `dir` (`None`: the next free `runs/run-NNN`) for a run.
    pub fn claim(dir: Option<&Path>, claim: Claim) -> Result<RunDir> {
        let (path, created) = match dir {
            Some(dir) => {
                check_directory(dir)?;
                let created = !dir.exists();
                ensure_writable_dir(dir).with_context(|| {
                    format!("output directory {} is not writable", dir.display())
                })?;
                (dir.to_path_buf(), created)
            }
            None => (claim_next_run_dir(Path::new("runs"))?, true),
        };
        let run_dir = RunDir {
            _lock: lock(&path)?,
            path,
            created,
        };
        run_dir.check_claim(claim)?;
        if claim == Claim::Overwrite {
            run_dir.remove_run_files()?;
        }
        remove_stale_temp_files(&run_dir.path, &RUN_FILES);
        Ok(run_dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `DIR/name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The run files present in the directory.
    fn run_files(&self) -> Vec<&'static str> {
        RUN_FILES
            .into_iter()
            .filter(|name| self.file(name).symlink_metadata().is_ok())
            .collect()
    }

    fn check_claim(&self, claim: Claim) -> Result<()> {
        let found = self.run_files();
        let dir = self.path.display();
        match claim {
            Claim::Fresh if !found.is_empty() => bail!(
                "{dir} already holds a run ({}); continue it with --resume {dir}, choose \
                 another --out-dir, or pass --overwrite to replace it",
                found.join(", ")
            ),
            Claim::Resume if !found.contains(&CHECKPOINT) => {
                bail!("{dir} holds no {CHECKPOINT} to resume from")
            }
            _ => Ok(()),
        }
    }

    /// Remove the run's files for `--overwrite`, after checking that each is a file (or a
    /// link), so a failure never leaves the old run half removed.
    fn remove_run_files(&self) -> Result<()> {
        for name in self.run_files() {
            let path = self.file(name);
            if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                bail!(
                    "cannot replace the run in {}: {} is a directory, not a file of a run; \
                     nothing was removed",
                    self.path.display(),
                    path.display()
                );
            }
        }
        for name in self.run_files() {
            let path = self.file(name);
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
        Ok(())
    }

    /// After a failed run: remove the directory if this run made it and wrote nothing
    /// in it, so no empty `runs/run-NNN` is left behind.
    pub fn discard_if_unused(self) {
        if !self.created || !self.run_files().is_empty() {
            return;
        }
        let path = self.path.clone();
        drop(self);
        let _ = fs::remove_file(path.join(LOCK));
        let _ = fs::remove_dir(&path);
    }
}

/// Create the first free `runs/run-NNN` (an exclusive create, so a concurrent run
/// never gets the same one).
fn claim_next_run_dir(parent: &Path) -> Result<PathBuf> {
    fs::create_dir_all(parent)
        .with_context(|| format!("cannot create the directory {}", parent.display()))?;
    for n in 1..=99_999 {
        let dir = parent.join(format!("run-{n:03}"));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => bail!("cannot create the run directory {}: {e}", dir.display()),
        }
    }
    bail!("{} holds 99999 runs; pass --out-dir DIR", parent.display())
}

/// `--out-dir` must be a directory or a new path: a file, or a symbolic link to nothing,
/// is "not a directory" (not the "File exists" that creating it would say).
fn check_directory(dir: &Path) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return Ok(());
    };
    match fs::metadata(dir) {
        Ok(target) if target.is_dir() => Ok(()),
        Ok(_) => bail!(
            "--out-dir {}: is not a directory (it is a file)",
            dir.display()
        ),
        Err(_) if meta.file_type().is_symlink() => bail!(
            "--out-dir {}: is not a directory (a symbolic link to {}, which does not exist)",
            dir.display(),
            fs::read_link(dir).map_or_else(|_| "?".into(), |t| t.display().to_string())
        ),
        Err(e) => bail!("--out-dir {}: {e}", dir.display()),
    }
}

/// Take the advisory lock on `dir/.lock`, failing at once if another process holds it.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => bail!(
            "{} is in use by another mnist-gpu run (it holds {}); wait for it to finish or \
             choose another directory",
            dir.display(),
            path.display()
        ),
        Err(TryLockError::Error(e)) => bail!("cannot lock {}: {e}", path.display()),
    }
}
