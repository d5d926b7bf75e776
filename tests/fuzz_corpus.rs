//! Every file of `tests/fuzz_corpus/{idx,model,image}` — seeds, odd inputs and anything a
//! fuzz target (`fuzz/`) ever found — through the parser it was made for: an error is
//! fine, a panic is not. New fuzzer findings go in the matching directory.

use std::path::{Path, PathBuf};

fn corpus(kind: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fuzz_corpus")
        .join(kind);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{}: too few files", dir.display());
    files
}

/// Run `parse` on every file of the corpus `kind`, each under catch_unwind, and report
/// every panic at once. Returns how many parsed without error.
fn each(kind: &str, parse: impl Fn(&[u8]) -> bool + std::panic::RefUnwindSafe) -> usize {
    let mut panics = Vec::new();
    let mut ok = 0;
    for (path, bytes) in corpus(kind) {
        match std::panic::catch_unwind(|| parse(&bytes)) {
            Ok(true) => ok += 1,
            Ok(false) => {}
            Err(_) => panics.push(path.display().to_string()),
        }
    }
    assert!(panics.is_empty(), "panicked on: {panics:?}");
    ok
}

#[test]
fn idx_corpus_never_panics() {
    let ok = each("idx", |b| {
        let images = mnist_gpu::data::parse_images(b);
        let labels = mnist_gpu::data::parse_labels(b);
        images.is_ok() || labels.is_ok()
    });
    assert!(ok >= 3, "the valid seeds parse ({ok})");
}

#[test]
fn model_corpus_never_panics() {
    let ok = each("model", |b| {
        let _ = mnist_gpu::modelfile::parse_checkpoint(b);
        mnist_gpu::modelfile::parse_model(b).is_ok()
    });
    assert!(ok >= 1, "the valid seed parses ({ok})");
}

#[test]
fn image_corpus_never_panics() {
    let ok = each("image", |b| mnist_gpu::preprocess::from_bytes(b).is_ok());
    assert!(ok >= 2, "the valid seeds parse ({ok})");
}

/// The checkpoint-metadata mutations in the corpus (`checkpoint-*`, made from
/// `checkpoint-valid`) are each refused by the checkpoint parser, and the seed is not.
#[test]
fn checkpoint_mutations_are_refused() {
    let mut accepted = Vec::new();
    for (path, bytes) in corpus("model") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("checkpoint-") && mnist_gpu::modelfile::parse_checkpoint(&bytes).is_ok()
        {
            accepted.push(name);
        }
    }
    assert_eq!(accepted, ["checkpoint-valid.safetensors"]);
}

/// The layer-list seeds in the corpus (`layers-*`, made from `hidden-1` with a `layers`
/// entry): the valid list parses to its model, the others are refused in one line.
#[test]
fn layer_list_seeds() {
    let mut results = Vec::new();
    for (path, bytes) in corpus("model") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("layers-") {
            let result = mnist_gpu::modelfile::parse_model(&bytes);
            results.push((name, result.map(|p| p.config).map_err(|e| e.to_string())));
        }
    }
    let refused = |words: &str| Err(format!("<bytes>: metadata 'layers': {words}"));
    let expected = [
        (
            "layers-1.safetensors",
            Ok(mnist_gpu::model::ModelConfig::mlp(&[1], false)),
        ),
        (
            "layers-garbage.safetensors",
            refused("layer 2 ('dense(1,relu,dense(10)'): unbalanced parentheses"),
        ),
        (
            // Once refused, now a model the layer stack trains: without the ReLU module
            // the second dense layer's tensors have another name than the file's.
            "layers-unsupported.safetensors",
            Err("<bytes>: tensor '3.weight' is missing".to_string()),
        ),
    ];
    let expected: Vec<_> = expected
        .into_iter()
        .map(|(n, r)| (n.to_string(), r))
        .collect();
    assert_eq!(results, expected);
}
