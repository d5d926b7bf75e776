//! Every bad input of the binary, table-driven, one module per kind of input: a broken
//! data directory ([`data`]), bad flags, unwritable outputs and GPU limits ([`flags`]),
//! bad model files for each command that reads one ([`models`]), bad pictures for
//! `predict` ([`pictures`]). Each must end with a clear error that names the file or
//! flag and the problem, a non-zero exit code, and never a panic (the tests run the
//! binary with RUST_BACKTRACE=1, so a panic would also print a backtrace). The runner
//! and the table check are `tests/common/cli.rs`.

#[path = "../common/mod.rs"]
mod common;

mod data;
mod flags;
mod models;
mod pictures;
