// ReLU forward (in place) and backward. The trainer fuses both into the GEMM epilogues
// (forward: FLAG_RELU, backward: FLAG_MASK on dY·Wᵀ); these standalone kernels are the
// reference forms, checked against cpu.rs beside it.

struct Relu {
    n: u32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> u: Relu;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
// Backward bindings (a separate bind-group layout).
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

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
