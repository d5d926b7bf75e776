//! The code's layers point down: each module of `src/` may use only the modules of the
//! layers listed before its own in [`TOP`] (data and model → the CPU and GPU trainers →
//! the training loop → what watches a run → the commands and the page). A `use` that
//! points up, or sideways within a layer, fails with the file, the line and the two
//! modules named.
//!
//! The check reads the sources as text: every `crate::a::…` and `super::a::…` path
//! outside comments and `#[cfg(test)]` modules. Within `cpu/` and `gpu/` the submodules
//! are ordered the same way, so that, say, `gpu/epoch.rs` and `gpu/backend.rs` cannot
//! use each other.

use std::fs;
use std::path::{Path, PathBuf};

/// The crate's top-level modules in layers, lowest first: a module may use the modules
/// of lower layers only (two modules in one layer, such as the CPU and GPU trainers, may
/// not use each other). Macros exported at the crate root (`outln!`, `errln!`) count as
/// the module that defines them.
const TOP: &[&[&str]] = &[
    // The platform: files, the host's event loop, signals, the console.
    &["fsutil", "host", "interrupt"],
    &["output"],
    // Data and model.
    &["data", "model"],
    &["preprocess", "settings"],
    // The seam: what a trainer takes and returns.
    &["backend"],
    // The two trainers behind it; beside them the files and pictures a run writes, which
    // hold the seam's records and need no trainer.
    &["cpu", "gpu", "modelfile", "report", "rundir"],
    // The training loop.
    &["train"],
    // What watches a run: the progress line, the `--metrics` copy.
    &["progress", "metricsfile"],
    // The commands, and the two front ends (`main.rs` is outside the library).
    &["app"],
    &["run", "web"],
];

/// Submodules of `cpu/`, lowest first (`mod.rs` may use them all).
const CPU: &[&str] = &[
    "profile",
    "adam",
    "relu",
    "gemm",
    "batchnorm",
    "softmax_xent",
    "forward",
    "sparse",
    "backend",
];

/// Submodules of `gpu/`, lowest first.
const GPU: &[&str] = &[
    "error", "adapters", "context", "bindings", "kernels", "twins", "epoch", "backend",
];

/// Where a source file sits: its module path below `src/` (`["gpu", "epoch"]`).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's lines that are code: comments removed, and nothing from a
/// `#[cfg(test)]` module on (every such module sits at a file's end).
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        lines.push((i + 1, code.to_string()));
    }
    lines
}

/// Every module path a line refers to, resolved from the file's module `here`.
fn references(line: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent(here))] {
        for (at, _) in line.match_indices(prefix) {
            let before = line[..at].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // `super::` inside `crate::a::super::`, never in this code
            }
            let rest = &line[at + prefix.len()..];
            // `crate::{a, b::c}`: one reference per name in the group.
            let group = rest
                .strip_prefix('{')
                .map(|g| g.split('}').next().unwrap_or(""));
            let items: Vec<&str> = match group {
                Some(group) => group.split(',').collect(),
                None => vec![rest],
            };
            for item in items {
                let mut path = base.clone();
                path.extend(segments(item.trim()));
                if path.len() > base.len() {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// The leading `a::b::c` of a path's text, as names.
fn segments(text: &str) -> Vec<String> {
    text.split("::")
        .map(|p| {
            p.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|p| !p.is_empty())
        .collect()
}

/// The module `super` names from a file's module: its parent (a file's module is its
/// own path; `mod.rs` was folded into its folder's name).
fn parent(here: &[String]) -> Vec<String> {
    here[..here.len().saturating_sub(1)].to_vec()
}

/// The rank of `path`'s unit among `order` (the first segment after `depth`), if listed.
fn rank(order: &[&str], path: &[String], depth: usize) -> Option<usize> {
    let name = path.get(depth)?;
    order.iter().position(|m| m == name)
}

/// The top-level module `path` is in.
fn top(path: &[String]) -> &str {
    match path.first().map_or("", |p| p.as_str()) {
        "outln" | "errln" => "output",
        other => other,
    }
}

/// The layer of `path`'s top-level module in [`TOP`], if listed.
fn layer(path: &[String]) -> Option<usize> {
    let name = top(path);
    TOP.iter().position(|layer| layer.contains(&name))
}

/// Whether the file at `here` may refer to `target`; an error naming both when not.
fn check(here: &[String], target: &[String]) -> Result<(), String> {
    let Some(own) = layer(here) else {
        return Ok(()); // lib.rs
    };
    let Some(other) = layer(target) else {
        return Err(format!("{} is not in the layer table", target.join("::")));
    };
    if top(here) != top(target) {
        return if other < own {
            Ok(())
        } else {
            Err(format!(
                "{} uses {}, in the same or a later layer",
                here[0], target[0]
            ))
        };
    }
    let inner = match here[0].as_str() {
        "cpu" => CPU,
        "gpu" => GPU,
        _ => return Ok(()),
    };
    match (rank(inner, here, 1), rank(inner, target, 1)) {
        // `mod.rs`, or the module itself: anything inside its own family.
        (None, _) | (_, None) => Ok(()),
        (Some(a), Some(b)) if b < a || (b == a && target.len() > 1) => Ok(()),
        _ => Err(format!(
            "{}/{} uses {}/{}, listed after it",
            here[0], here[1], target[0], target[1]
        )),
    }
}

#[test]
fn every_use_in_src_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| !f.ends_with("main.rs"));
    let mut wrong = Vec::new();
    let mut seen = 0;
    for file in &files {
        let here = module_path(&src, file);
        assert!(
            here.is_empty() || layer(&here).is_some(),
            "{}: module {} is not in the layer table of tests/layering.rs",
            file.display(),
            here[0]
        );
        let text = fs::read_to_string(file).unwrap();
        for (line, code) in code_lines(&text) {
            for target in references(&code, &here) {
                seen += 1;
                if let Err(why) = check(&here, &target) {
                    wrong.push(format!("{}:{line}: {why}", file.display()));
                }
            }
        }
    }
    assert!(
        seen > 100,
        "only {seen} references found: the scan is broken"
    );
    assert!(
        wrong.is_empty(),
        "uses that point up:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_refuses_an_upward_use() {
    let path = |p: &str| p.split("::").map(String::from).collect::<Vec<_>>();
    assert!(check(&path("gpu::backend"), &path("gpu::epoch::EpochRun")).is_ok());
    assert!(check(&path("gpu::epoch"), &path("gpu::backend::GpuBackend")).is_err());
    assert!(check(&path("gpu::context"), &path("web::sleep_ms")).is_err());
    assert!(check(&path("gpu::backend"), &path("cpu::adam")).is_err());
    assert!(check(&path("train"), &path("backend::Backend")).is_ok());
    assert!(check(&path("modelfile"), &path("train::EpochRecord")).is_err());
    let found = references(
        "use super::kernels::{record, Dispatch};",
        &path("gpu::epoch"),
    );
    assert_eq!(found, vec![path("gpu::kernels")]);
    let found = references("use crate::{preprocess, report::draw};", &path("app"));
    assert_eq!(found, vec![path("preprocess"), path("report::draw")]);
}
