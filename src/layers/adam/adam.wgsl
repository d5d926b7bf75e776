// Adam over the whole flat parameter buffer in one dispatch (grid-stride loop), exactly
// as cpu.rs beside it: m += (g − m)(1 − β1), v += (g² − v)(1 − β2),
// p −= alpha·m/(sqrt(v) + ε). alpha = lr·sqrt(1 − β2^t)/(1 − β1^t) is computed on the
// host (the CPU's own function) for every step of the epoch and uploaded once per epoch;
// this step's entry is alphas[state[0] − 1] (the softmax kernel already advanced state[0]).
//
// The uniform block `u: Adam` and the buffers are declared once, in mod.rs (`uniform!`,
// `bindings!`), and put before this source when it is compiled.

@compute @workgroup_size(256, 1, 1)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let alpha = alphas[state[0] - 1u];
    let stride = groups.x * 256u;
    for (var i = gid.x; i < u.n; i += stride) {
        let g = grads[i];
        let mi = m[i] + (g - m[i]) * u.one_minus_b1;
        let vi = v[i] + (g * g - v[i]) * u.one_minus_b2;
        m[i] = mi;
        v[i] = vi;
        params[i] = params[i] - alpha * mi / (sqrt(vi) + u.eps);
    }
}
