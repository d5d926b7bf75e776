// ReLU forward (in place) and backward. The trainer fuses both into the GEMM epilogues
// (forward: FLAG_RELU, backward: FLAG_MASK on dY·Wᵀ); these standalone kernels are the
// reference forms, checked against cpu.rs beside it.
//
// The uniform block `u: Relu` and the buffers are declared once, in mod.rs (`uniform!`,
// `bindings!`), and put before this source when it is compiled.

@compute @workgroup_size(256, 1, 1)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    for (var i = gid.x; i < u.n; i += groups.x * 256u) {
        x[i] = max(x[i], 0.0);
    }
}

// dx = dy where the ReLU output y > 0, else 0.
@compute @workgroup_size(256, 1, 1)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    for (var i = gid.x; i < u.n; i += groups.x * 256u) {
        dx[i] = select(0.0, dy[i], y[i] > 0.0);
    }
}
