//! Every layer family's shader (`src/layers/*/*.wgsl`, registered in `src/layers/mod.rs`,
//! with the declarations generated from its Rust side put before it) parses and validates
//! with naga (no device needed), naga lays out its uniform struct at the Rust struct's
//! offsets, and each entry point uses only the bindings its declaration names.

use mnist_gpu::device::context::WORKGROUP_STORAGE_BYTES;
use mnist_gpu::device::kernel::{Access, BindingsDecl, UniformDecl};
use mnist_gpu::layers::{Shader, SHADERS};
use std::path::Path;

/// The shader of `family` as it is compiled, parsed.
fn parse(shader: &Shader) -> naga::Module {
    naga::front::wgsl::parse_str(&shader.source().unwrap()).unwrap()
}

/// Every `.wgsl` file under `src/layers/`, by name.
fn wgsl_files() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/layers");
    let mut names = Vec::new();
    for folder in std::fs::read_dir(&dir).expect("src/layers exists") {
        let folder = folder.expect("readable entry").path();
        if !folder.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&folder).expect("readable folder") {
            let path = file.expect("readable entry").path();
            if path.extension().is_some_and(|e| e == "wgsl") {
                names.push(path.file_stem().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    names.sort();
    names
}

/// No shader file is left out of the registry, and no family is registered twice.
#[test]
fn every_shader_file_is_registered() {
    let mut registered: Vec<String> = SHADERS.iter().map(|s| s.family.to_string()).collect();
    registered.sort();
    assert_eq!(
        wgsl_files(),
        registered,
        "shader files vs the families! registry"
    );
}

#[test]
fn every_shader_parses_and_validates() {
    assert!(
        SHADERS.len() >= 5,
        "the registry lists {} shaders",
        SHADERS.len()
    );
    let mut failures = Vec::new();
    for shader in SHADERS {
        let path = format!("{}.wgsl", shader.family);
        let source = match shader.source() {
            Ok(source) => source,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let source = &source;
        let module = match naga::front::wgsl::parse_str(source) {
            Ok(module) => module,
            Err(e) => {
                failures.push(format!(
                    "{path}: parse error:\n{}",
                    e.emit_to_string(source)
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
                "{path}: validation error:\n{}",
                e.emit_to_string(source)
            ));
            continue;
        }
        assert!(!module.entry_points.is_empty(), "{path} has no entry point");
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
                "{path}: {workgroup_bytes} bytes of workgroup memory, more than the {WORKGROUP_STORAGE_BYTES} requested"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The padding words `uniform!` adds (`padN` in WGSL): a field named `padding` is not one.
fn is_padding(name: &str) -> bool {
    name.strip_prefix("pad")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Each family's uniform struct has the size naga gives the WGSL struct generated from
/// it, and every (non-padding) member at the same byte offset: WGSL's layout rules and
/// `#[repr(C)]`'s agree, or this fails here rather than as garbage on the GPU.
#[test]
fn uniform_structs_match_their_wgsl_layout() {
    let mut failures = Vec::new();
    for shader in SHADERS {
        failures.extend(layout_problems(shader, &shader.uniform));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn layout_problems(shader: &Shader, decl: &UniformDecl) -> Vec<String> {
    let module = parse(shader);
    let Some((members, span)) = module.types.iter().find_map(|(_, ty)| match &ty.inner {
        naga::TypeInner::Struct { members, span } if ty.name.as_deref() == Some(decl.wgsl) => {
            Some((members.clone(), *span))
        }
        _ => None,
    }) else {
        return vec![format!("{}.wgsl: no struct {}", shader.family, decl.wgsl)];
    };
    let mut problems = Vec::new();
    let at = format!("{} vs {}.wgsl's {}", decl.rust, shader.family, decl.wgsl);
    if span as usize != decl.size {
        problems.push(format!("{at}: {} bytes vs {span}", decl.size));
    }
    let fields: Vec<_> = decl
        .fields
        .iter()
        .map(|&(name, offset, _)| (name, offset))
        .filter(|(f, _)| !is_padding(f))
        .collect();
    for member in members
        .iter()
        .filter(|m| !is_padding(m.name.as_deref().unwrap_or("")))
    {
        let name = member.name.as_deref().unwrap_or("?");
        match fields.iter().find(|(field, _)| *field == name) {
            Some((_, offset)) if *offset == member.offset as usize => {}
            Some((_, offset)) => problems.push(format!(
                "{at}: '{name}' at byte {offset} in Rust, {} in WGSL",
                member.offset
            )),
            None => problems.push(format!("{at}: WGSL member '{name}' has no Rust field")),
        }
    }
    for (field, _) in &fields {
        if !members.iter().any(|m| m.name.as_deref() == Some(field)) {
            problems.push(format!("{at}: Rust field '{field}' is not in WGSL"));
        }
    }
    problems
}

/// Each family's bindings declarations (`bindings!` in its `mod.rs`) name the shader's own
/// variables, with their binding numbers and access, and covers every binding its entry
/// points use: the bind groups are built from it, so a buffer can never be bound to
/// the wrong variable.
#[test]
fn bindings_match_each_entry_point() {
    let mut failures = Vec::new();
    for family in SHADERS {
        for decl in family.bindings {
            failures.extend(bindings_problems(family, decl));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every way `decl` and the shader of `family` disagree, one message each.
fn bindings_problems(family: &Shader, decl: &BindingsDecl) -> Vec<String> {
    let (shader, slots) = (family.family, decl.slots);
    let mut failures = Vec::new();
    let module = parse(family);
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap();
    for &entry in decl.entry_points {
        failures.extend(entry_point_problems(shader, &module, &info, entry, decl));
    }
    for &(name, binding, _, _) in slots {
        let exists = module
            .global_variables
            .iter()
            .any(|(h, _)| declared(&module, h).is_some_and(|(n, b, _)| n == name && b == binding));
        if !exists {
            failures.push(format!("{shader}.wgsl has no binding {binding} '{name}'"));
        }
    }
    failures
}

/// A global variable's name, binding number and access, if it is a uniform or storage
/// buffer bound in a group.
fn declared(
    module: &naga::Module,
    handle: naga::Handle<naga::GlobalVariable>,
) -> Option<(String, u32, Access)> {
    let var: &naga::GlobalVariable = &module.global_variables[handle];
    let binding = var.binding.as_ref()?.binding;
    let access = match var.space {
        naga::AddressSpace::Uniform => Access::Uniform,
        naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE) => {
            Access::ReadWrite
        }
        naga::AddressSpace::Storage { .. } => Access::Read,
        _ => return None,
    };
    Some((var.name.clone().unwrap_or_default(), binding, access))
}

/// Entry point `entry` of `shader`: it exists, each of its buffers matches the declared
/// slot of that binding number, and every binding it uses is declared.
fn entry_point_problems(
    shader: &str,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    entry: &str,
    decl: &BindingsDecl,
) -> Vec<String> {
    let Some(index) = module.entry_points.iter().position(|e| e.name == entry) else {
        return vec![format!("{shader}.wgsl has no entry point {entry}")];
    };
    let mut failures = Vec::new();
    let uses = info.get_entry_point(index);
    for (handle, _) in module.global_variables.iter() {
        let Some((name, binding, access)) = declared(module, handle) else {
            continue;
        };
        let slot = decl.slots.iter().find(|s| s.1 == binding);
        let used = !uses[handle].is_empty();
        match slot {
            Some(&(n, _, a, _)) if n == name && a == access => {}
            Some(&(n, _, a, _)) => failures.push(format!(
                "{shader}.wgsl {entry}: binding {binding} is '{name}' ({access:?}), declared '{n}' ({a:?})"
            )),
            None if used => failures.push(format!(
                "{shader}.wgsl {entry}: uses binding {binding} '{name}', not declared"
            )),
            None => {}
        }
    }
    failures
}
