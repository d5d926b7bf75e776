//! The code's layers point down: each module of `src/` may use only the modules of the
//! layers listed before its own in [`TOP`] (data and model → the CPU and GPU trainers →
//! the training loop → what watches a run → the commands and the page). A `use` that
//! points up, or sideways within a layer, fails with the file, the line and the two
//! modules named.
//!
//! The check reads the sources as text: every `crate::a::…` and `super::a::…` path
//! outside comments and `#[cfg(test)]` modules. Within `device/`, `layers/`, `cpu/` and
//! `gpu/` the submodules are ordered the same way, so that, say, `gpu/epoch.rs` and
//! `gpu/backend.rs` cannot use each other.

use std::fs;
use std::path::{Path, PathBuf};

/// The crate's top-level modules in layers, lowest first: a module may use the modules
/// of lower layers only (two modules in one layer, such as the CPU and GPU trainers, may
/// not use each other). Macros exported at the crate root (`outln!`, `errln!`) count as
/// the module that defines them.
const TOP: &[&[&str]] = &[
    // The platform: files, the host's event loop, signals, cache-line-aligned arrays,
    // the console.
    &["fsutil", "host", "interrupt", "aligned"],
    &["output"],
    // Data and model.
    &["data", "model"],
    &["preprocess", "settings"],
    // The GPU device, then the layer families (each a WGSL kernel, its CPU reference and
    // its host side) built on it.
    &["device"],
    &["layers"],
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

/// Submodules of `device/`, lowest first (`mod.rs` may use them all).
const DEVICE: &[&str] = &["error", "adapters", "context", "kernel"];

/// Submodules of `layers/` below the families: the test helpers and the agreement cases'
/// framework. The families follow in the order of their registry, `families!` in
/// `src/layers/mod.rs` (a family may use the ones registered before it), so a new family
/// is listed here by its registry line; above them the planner, which describes a model's
/// layers in the families' shapes. The registry (`mod.rs`) may use them all.
const LAYERS_BELOW_FAMILIES: &[&str] = &["gradcheck", "check"];
const LAYERS_ABOVE_FAMILIES: &[&str] = &["plan"];

/// `layers/`'s submodules, lowest first: [`LAYERS_BELOW_FAMILIES`], each `folder: Type,`
/// line of the `families!` registry, then [`LAYERS_ABOVE_FAMILIES`].
fn layers_table() -> &'static [&'static str] {
    static TABLE: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let registry = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/layers/mod.rs");
        let text = fs::read_to_string(registry).unwrap();
        let block = text
            .split("\nfamilies! {")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .expect("src/layers/mod.rs invokes families! { … }");
        let families = block
            .lines()
            .filter_map(|line| line.trim().split_once(':'))
            .map(|(folder, _)| &*String::leak(folder.trim().to_string()));
        let mut table = LAYERS_BELOW_FAMILIES.to_vec();
        table.extend(families);
        table.extend(LAYERS_ABOVE_FAMILIES);
        assert!(table.len() > 4, "families! registers {:?}", table);
        table
    })
}

/// Submodules of `cpu/`, lowest first.
const CPU: &[&str] = &["awake", "profile", "sparse", "stack", "forward", "backend"];

/// Submodules of `gpu/`, lowest first.
const GPU: &[&str] = &["epoch", "backend"];

/// The ordered submodules of the top-level module `name`, if it has a table.
fn inner_table(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "device" => Some(DEVICE),
        "layers" => Some(layers_table()),
        "cpu" => Some(CPU),
        "gpu" => Some(GPU),
        _ => None,
    }
}

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

/// The file's code: comments blanked out (outside string literals), and every
/// `#[cfg(test)]` item (an inline `mod tests { … }`, a `mod gradcheck;`) removed. Line
/// breaks are kept, so offsets still give line numbers.
fn code_of(text: &str) -> String {
    let stripped = without_comments(text);
    let lines: Vec<&str> = stripped.split('\n').collect();
    let mut kept = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        if !lines[i].trim_start().starts_with("#[cfg(test)]") {
            kept.push(lines[i].to_string());
            i += 1;
            continue;
        }
        // The attribute and the item after it, to its balanced closing brace or `;`.
        let mut depth = 0i32;
        let mut end = i;
        for (j, line) in lines.iter().enumerate().skip(i + 1) {
            depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
            end = j;
            if depth <= 0 && (line.contains('}') || line.trim_end().ends_with(';')) {
                break;
            }
        }
        kept.extend((i..=end).map(|_| String::new()));
        i = end + 1;
    }
    kept.join("\n")
}

/// `text` with every `//` comment blanked, leaving string literals alone.
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut in_comment, mut escaped) = (false, false, false);
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '\n' {
            in_comment = false;
        } else if in_comment {
            continue;
        } else if in_string {
            in_string = c != '"' || escaped;
            escaped = c == '\\' && !escaped;
        } else if c == '"' && !(i > 0 && chars[i - 1] == '\'' && chars.get(i + 1) == Some(&'\'')) {
            in_string = true;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            in_comment = true;
            continue;
        }
        out.push(c);
    }
    out
}

/// Every module path `code` refers to (`crate::a::b`, `super::a`, `super::super::a`,
/// and each name of a `use` group, nested or over several lines), with the line it is
/// on, resolved from the file's module `here`.
fn references(code: &str, here: &[String]) -> Vec<(usize, Vec<String>)> {
    let chars: Vec<char> = code.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let after_ident = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        let base = if after_ident {
            None
        } else if starts_with(&chars, i, "crate::") {
            i += "crate::".len();
            Some(Vec::new())
        } else if starts_with(&chars, i, "super::") {
            let mut up = here.to_vec();
            while starts_with(&chars, i, "super::") {
                i += "super::".len();
                up.pop();
            }
            Some(up)
        } else {
            None
        };
        let Some(base) = base else {
            i += 1;
            continue;
        };
        let line = chars[..i].iter().filter(|&&c| c == '\n').count() + 1;
        let mut paths = Vec::new();
        use_tree(&chars, &mut i, base.clone(), &mut paths);
        found.extend(
            paths
                .into_iter()
                .filter(|p| p.len() > base.len())
                .map(|p| (line, p)),
        );
    }
    found
}

fn starts_with(chars: &[char], at: usize, text: &str) -> bool {
    text.chars()
        .enumerate()
        .all(|(k, c)| chars.get(at + k) == Some(&c))
}

/// Reads a path or `use` tree at `*i` (`a::b`, `a::{b, c::{d}}`), pushing each path
/// it names onto `out` with `path` before it.
fn use_tree(chars: &[char], i: &mut usize, mut path: Vec<String>, out: &mut Vec<Vec<String>>) {
    loop {
        skip_space(chars, i);
        if chars.get(*i) == Some(&'{') {
            *i += 1;
            loop {
                skip_space(chars, i);
                match chars.get(*i) {
                    Some('}') | None => {
                        *i += 1;
                        return;
                    }
                    Some(',') => *i += 1,
                    _ => use_tree(chars, i, path.clone(), out),
                }
            }
        }
        let start = *i;
        while chars
            .get(*i)
            .is_some_and(|c| c.is_alphanumeric() || *c == '_')
        {
            *i += 1;
        }
        let name: String = chars[start..*i].iter().collect();
        let empty = name.is_empty();
        if !empty && name != "self" {
            path.push(name);
        }
        if empty || !starts_with(chars, *i, "::") {
            out.push(path);
            return;
        }
        *i += 2;
    }
}

fn skip_space(chars: &[char], i: &mut usize) {
    while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
        *i += 1;
    }
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
    let Some(inner) = inner_table(&here[0]) else {
        return Ok(());
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
        let inner_listed = match here.first().and_then(|top| inner_table(top)) {
            Some(table) => here.len() < 2 || rank(table, &here, 1).is_some(),
            None => true,
        };
        assert!(
            inner_listed,
            "{}: not in its folder's table of tests/layering.rs",
            file.display()
        );
        let code = code_of(&fs::read_to_string(file).unwrap());
        for (line, target) in references(&code, &here) {
            seen += 1;
            if let Err(why) = check(&here, &target) {
                wrong.push(format!("{}:{line}: {why}", file.display()));
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
    assert!(check(&path("device::context"), &path("web::sleep_ms")).is_err());
    assert!(check(&path("gpu::backend"), &path("cpu::forward")).is_err());
    assert!(check(&path("layers::dense"), &path("gpu::GpuBackend")).is_err());
    assert!(check(
        &path("layers::batchnorm"),
        &path("layers::dense::DenseShape")
    )
    .is_ok());
    assert!(check(&path("layers::dense"), &path("layers::batchnorm::cpu")).is_err());
    assert!(check(&path("device::kernel"), &path("layers::Pipelines")).is_err());
    assert!(check(&path("train"), &path("backend::Backend")).is_ok());
    assert!(check(&path("modelfile"), &path("train::EpochRecord")).is_err());
    let paths = |code: &str, here: &str| -> Vec<String> {
        references(code, &path(here))
            .into_iter()
            .map(|(line, p)| format!("{line}:{}", p.join("::")))
            .collect()
    };
    assert_eq!(
        paths("use super::kernels::{record, Dispatch};", "gpu::epoch"),
        ["1:gpu::kernels::record", "1:gpu::kernels::Dispatch"]
    );
    // Groups nested and over several lines, `self` in a group, two levels up.
    let code = "use crate::{\n    data,\n    report::{self, draw},\n};\nuse super::super::web;";
    assert_eq!(
        paths(code, "gpu::backend::profile"),
        ["1:data", "1:report", "1:report::draw", "5:gpu::web"]
    );
    // A `//` inside a string is no comment; one outside is.
    let code = "let url = \"https://x\"; crate::web::go(); // crate::run";
    assert_eq!(paths(&code_of(code), "gpu::context"), ["1:web::go"]);
    // Test modules are not the code's layers: skipped, inline or from a file.
    let code = "#[cfg(test)]\nmod gradcheck;\nuse crate::data;\n#[cfg(test)]\nmod tests {\n    use crate::run;\n}\n";
    assert_eq!(paths(&code_of(code), "cpu"), ["3:data"]);
}
