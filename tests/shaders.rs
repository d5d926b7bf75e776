//! Every `shaders/*.wgsl` parses and validates with naga (no device needed), and every
//! Rust uniform struct matches the layout of the WGSL struct it is uploaded as.

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

/// A Rust uniform struct and the WGSL struct it is uploaded as.
struct UniformPair {
    rust: &'static str,
    shader: &'static str,
    wgsl: &'static str,
    size: usize,
    /// Every field but the padding, with its byte offset in the Rust struct.
    fields: Vec<(&'static str, usize)>,
}

macro_rules! uniform_pair {
    ($ty:ty, $shader:literal, $wgsl:literal, [$($field:ident),* $(,)?]) => {
        UniformPair {
            rust: stringify!($ty),
            shader: $shader,
            wgsl: $wgsl,
            size: std::mem::size_of::<$ty>(),
            fields: vec![$((stringify!($field), std::mem::offset_of!($ty, $field))),*],
        }
    };
}

/// Each Rust uniform struct has the size of its WGSL struct and every (non-padding)
/// WGSL member at the same byte offset under the same name: a field added, moved or
/// renamed on one side only fails here, not as garbage on the GPU.
#[test]
fn uniform_structs_match_their_wgsl_layout() {
    use mnist_gpu::gpu::kernels::*;
    let pairs = vec![
        uniform_pair!(
            GemmUniform,
            "gemm",
            "Gemm",
            [
                m, n, k, flags, a_off, a_rs, a_cs, b_off, b_rs, b_cs, c_off, ldc, e_off, lde,
                c2_off
            ]
        ),
        uniform_pair!(
            BnUniform,
            "batchnorm",
            "Bn",
            [
                batch, stride, use_order, base, gamma_off, beta_off, features, scale, eps,
                momentum, kernel_off, bias_off, width
            ]
        ),
        uniform_pair!(
            SoftmaxUniform,
            "softmax_xent",
            "Sx",
            [batch, classes, stride, use_order, base, training, slot, pred_base]
        ),
        uniform_pair!(
            AdamUniform,
            "adam",
            "Adam",
            [n, one_minus_b1, one_minus_b2, eps]
        ),
        uniform_pair!(ReluUniform, "relu", "Relu", [n]),
    ];
    let mut failures = Vec::new();
    for pair in &pairs {
        failures.extend(layout_problems(pair));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn layout_problems(pair: &UniformPair) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("shaders")
        .join(format!("{}.wgsl", pair.shader));
    let source = std::fs::read_to_string(&path).unwrap();
    let module = naga::front::wgsl::parse_str(&source).unwrap();
    let Some((members, span)) = module.types.iter().find_map(|(_, ty)| match &ty.inner {
        naga::TypeInner::Struct { members, span } if ty.name.as_deref() == Some(pair.wgsl) => {
            Some((members.clone(), *span))
        }
        _ => None,
    }) else {
        return vec![format!("{}: no struct {}", path.display(), pair.wgsl)];
    };
    let mut problems = Vec::new();
    let at = format!("{} vs {}.wgsl's {}", pair.rust, pair.shader, pair.wgsl);
    if span as usize != pair.size {
        problems.push(format!("{at}: {} bytes vs {span}", pair.size));
    }
    for member in members
        .iter()
        .filter(|m| !m.name.as_deref().unwrap_or("").starts_with("pad"))
    {
        let name = member.name.as_deref().unwrap_or("?");
        match pair.fields.iter().find(|(field, _)| *field == name) {
            Some((_, offset)) if *offset == member.offset as usize => {}
            Some((_, offset)) => problems.push(format!(
                "{at}: '{name}' at byte {offset} in Rust, {} in WGSL",
                member.offset
            )),
            None => problems.push(format!("{at}: WGSL member '{name}' has no Rust field")),
        }
    }
    for (field, _) in &pair.fields {
        if !members.iter().any(|m| m.name.as_deref() == Some(field)) {
            problems.push(format!("{at}: Rust field '{field}' is not in WGSL"));
        }
    }
    problems
}

/// Each kernel's bindings declaration (`src/gpu/bindings.rs`) names the shader's own
/// variables, with their binding numbers and access, and covers every binding its entry
/// points use: the bind groups are built from it, so a buffer can never be bound to
/// the wrong variable.
#[test]
fn bindings_match_each_entry_point() {
    use mnist_gpu::gpu::bindings::{Access, ALL};
    let mut failures = Vec::new();
    for &(shader, entries, slots) in ALL {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("shaders")
            .join(format!("{shader}.wgsl"));
        let source = std::fs::read_to_string(&path).unwrap();
        let module = naga::front::wgsl::parse_str(&source).unwrap();
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap();
        let declared = |handle| {
            let var: &naga::GlobalVariable = &module.global_variables[handle];
            let binding = var.binding.as_ref()?.binding;
            let access = match var.space {
                naga::AddressSpace::Uniform => Access::Uniform,
                naga::AddressSpace::Storage { access }
                    if access.contains(naga::StorageAccess::STORE) =>
                {
                    Access::ReadWrite
                }
                naga::AddressSpace::Storage { .. } => Access::Read,
                _ => return None,
            };
            Some((var.name.clone().unwrap_or_default(), binding, access))
        };
        for &entry in entries {
            let Some(index) = module.entry_points.iter().position(|e| e.name == entry) else {
                failures.push(format!("{shader}.wgsl has no entry point {entry}"));
                continue;
            };
            let uses = info.get_entry_point(index);
            for (handle, _) in module.global_variables.iter() {
                let Some((name, binding, access)) = declared(handle) else {
                    continue;
                };
                let slot = slots.iter().find(|s| s.1 == binding);
                let used = !uses[handle].is_empty();
                match slot {
                    Some(&(n, _, a)) if n == name && a == access => {}
                    Some(&(n, _, a)) => failures.push(format!(
                        "{shader}.wgsl {entry}: binding {binding} is '{name}' ({access:?}), declared '{n}' ({a:?})"
                    )),
                    None if used => failures.push(format!(
                        "{shader}.wgsl {entry}: uses binding {binding} '{name}', not declared"
                    )),
                    None => {}
                }
            }
        }
        for &(name, binding, _) in slots {
            let exists = module
                .global_variables
                .iter()
                .any(|(h, _)| declared(h).is_some_and(|(n, b, _)| n == name && b == binding));
            if !exists {
                failures.push(format!("{shader}.wgsl has no binding {binding} '{name}'"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
