// Inverted dropout: out = x · factor, factor = 1/(1 − rate) where a value is kept and 0
// where it is dropped. The forward (x the input) and the backward (x the output gradient)
// are the same product with the same mask.
//
// The mask is a counter-based hash, not a random stream: value i of global step s in a
// run seeded `seed` is kept when pcg(i + pcg(s + pcg(seed))) ≥ threshold (= rate · 2³²),
// with PCG's hash (Jarzynski and Olano, JCGT 2020) in wrapping 32-bit integers, exactly
// as cpu.rs computes it. So every device drops the same values, the backward needs no
// stored mask, and a resumed run continues bit for bit.
//
// The step is u.step_base + state[0] + state[1] (wrapping): state[0] is the trainer's
// count of the epoch's steps and state[1] the global number of the epoch's first step
// (see GpuBackend::state). softmax_xent advances state[0] between a step's forward and
// its backward, so the backward's base is one less than the forward's (2³² − 1).
//
// The uniform block `u: Dropout` and the buffers are declared once, in mod.rs
// (`uniform!`, `bindings!`), and put before this source when it is compiled.

fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

@compute @workgroup_size(256, 1, 1)
fn apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let step_key = pcg(u.step_base + state[0] + state[1] + pcg(u.seed));
    for (var i = gid.x; i < u.n; i += groups.x * 256u) {
        let kept = pcg(i + step_key) >= u.threshold;
        out[i] = select(0.0, x[i] * u.scale, kept);
    }
}
