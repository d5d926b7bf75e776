//! Every `shaders/*.wgsl` parses and validates with naga (no device needed).

use mnist_gpu::gpu::context::WORKGROUP_STORAGE_BYTES;
use std::path::Path;

#[test]
fn every_shader_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("shaders/ exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    paths.sort();
    let expected = ["adam", "batchnorm", "gemm", "relu", "softmax_xent"];
    for name in expected {
        assert!(
            paths
                .iter()
                .any(|p| p.file_stem().is_some_and(|s| s == name)),
            "shaders/{name}.wgsl is missing"
        );
    }
    let mut failures = Vec::new();
    for path in &paths {
        let source = std::fs::read_to_string(path).expect("readable shader");
        let module = match naga::front::wgsl::parse_str(&source) {
            Ok(module) => module,
            Err(e) => {
                failures.push(format!(
                    "{}: parse error:\n{}",
                    path.display(),
                    e.emit_to_string(&source)
                ));
                continue;
            }
        };
        let mut validator = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        );
        if let Err(e) = validator.validate(&module) {
            failures.push(format!(
                "{}: validation error:\n{}",
                path.display(),
                e.emit_to_string(&source)
            ));
            continue;
        }
        assert!(
            !module.entry_points.is_empty(),
            "{} has no entry point",
            path.display()
        );
        // The device is opened with exactly the workgroup memory the trainer asks for, and
        // not every wgpu backend checks a shader against it: check here.
        let workgroup_bytes: u32 = module
            .global_variables
            .iter()
            .filter(|(_, var)| var.space == naga::AddressSpace::WorkGroup)
            .map(|(_, var)| module.types[var.ty].inner.size(module.to_ctx()))
            .sum();
        if workgroup_bytes > WORKGROUP_STORAGE_BYTES {
            failures.push(format!(
                "{}: {workgroup_bytes} bytes of workgroup memory, more than the {WORKGROUP_STORAGE_BYTES} requested",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
