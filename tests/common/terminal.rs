//! Running the binary on a pseudo-terminal (`portable-pty`), as in a real terminal.

#![allow(dead_code)]

use portable_pty::{native_pty_system, Child, CommandBuilder, MasterPty, PtySize};

/// Start the binary with `args` (and the variables `env`) on a new pseudo-terminal of 120
/// columns, as the session leader with the terminal as its controlling terminal (so
/// closing the terminal sends it SIGHUP). Returns the child and the terminal's master
/// side: dropping every handle on the master (and its readers) closes the terminal.
pub fn spawn_in_terminal(
    args: &[String],
    env: &[(&str, &str)],
) -> (Box<dyn Child + Send + Sync>, Box<dyn MasterPty + Send>) {
    let pty = native_pty_system()
        .openpty(PtySize {
            rows: 40,
            cols: 120,
            pixel_width: 0,
            pixel_height: 0,
        })
        .expect("a pseudo-terminal");
    let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_mnist-gpu"));
    cmd.args(args);
    cmd.cwd(super::cli::scratch_dir());
    cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    cmd.env("TERM", "xterm-256color");
    cmd.env_remove("MNIST_GPU_INTERRUPT_AT");
    for (name, value) in env {
        cmd.env(name, value);
    }
    let child = pty.slave.spawn_command(cmd).expect("spawn in the pty");
    drop(pty.slave);
    (child, pty.master)
}
