//! Console output that never panics. A write to stdout or stderr can fail: a closed pipe
//! (`| head`), a full disk under `> log`, `/dev/full`, a terminal that hung up. Such a
//! failure is remembered, never a panic. A failed stdout write also asks a training run
//! to stop after the step under way, so it writes a resumable checkpoint; the program
//! then ends with status 1 and says why on stderr (when stderr can still be written).

use std::fmt;
use std::io::{self, Write};
use std::sync::Mutex;

/// The first error writing to stdout; nothing more is written there after it.
static STDOUT_ERROR: Mutex<Option<io::Error>> = Mutex::new(None);

/// Write one line to stdout (what `println!` does, without its panic).
pub fn stdout_line(args: fmt::Arguments) {
    stdout_text(format_args!("{args}\n"));
}

/// Write `args` to stdout as they are (no newline added).
pub fn stdout_text(args: fmt::Arguments) {
    let mut failed = STDOUT_ERROR.lock().unwrap_or_else(|e| e.into_inner());
    if failed.is_some() {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(error) = out.write_fmt(args).and_then(|()| out.flush()) {
        *failed = Some(error);
        crate::interrupt::request();
    }
}

/// Write one line to stderr; a failure is ignored (there is nowhere left to report it).
pub fn stderr_line(args: fmt::Arguments) {
    let _ = writeln!(io::stderr().lock(), "{args}");
}

/// The error that stopped stdout, in words (`None`: every write succeeded).
pub fn stdout_error() -> Option<String> {
    let failed = STDOUT_ERROR.lock().unwrap_or_else(|e| e.into_inner());
    failed.as_ref().map(|error| match error.kind() {
        io::ErrorKind::BrokenPipe => "the reader closed it (broken pipe)".to_string(),
        _ => error.to_string(),
    })
}

/// `println!` that never panics (see the module documentation).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::stdout_line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics: a failed write to stderr is ignored.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::stderr_line(format_args!($($arg)*))
    };
}
