// MaxPool2D: size×size windows with stride size ('valid': rows and columns past the last
// whole window are dropped) over [batch, channels, h, w] activations.
//
//   forward   y[plane, oy, ox] = max over the window of x   (a thread per output)
//   backward  dx[i] = dy[the window's output] if i is its window's arg-max, else 0;
//             with FLAG_MASK also 0 where x[i] <= 0, x being the ReLU output of the
//             layer below (that ReLU's backward, fused)   (a thread per input)
//
// The arg-max is the first maximum in the window's row-major order (a later value wins
// only if strictly greater), as in cpu.rs, so ties resolve the same on every device. The
// backward finds it again from x instead of storing indices: windows do not overlap, so
// each input has one window and one writer, and no atomics are needed.
//
// The uniform block `u: Pool` and the buffers are declared once, in mod.rs (`uniform!`,
// `bindings!`), and put before this source when it is compiled.

const FLAG_MASK: u32 = 1u;

// The flat index in x of the largest value of output (plane, oy, ox)'s window.
fn window_argmax(plane: u32, oy: u32, ox: u32) -> u32 {
    let first = (plane * u.h + oy * u.size) * u.w + ox * u.size;
    var best = first;
    for (var wy = 0u; wy < u.size; wy++) {
        for (var wx = 0u; wx < u.size; wx++) {
            let at = first + wy * u.w + wx;
            if (x[at] > x[best]) {
                best = at;
            }
        }
    }
    return best;
}

@compute @workgroup_size(256, 1, 1)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let n = u.planes * u.out_h * u.out_w;
    for (var i = gid.x; i < n; i += groups.x * 256u) {
        let plane = i / (u.out_h * u.out_w);
        out[i] = x[window_argmax(plane, i / u.out_w % u.out_h, i % u.out_w)];
    }
}

@compute @workgroup_size(256, 1, 1)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let n = u.planes * u.h * u.w;
    for (var i = gid.x; i < n; i += groups.x * 256u) {
        let plane = i / (u.h * u.w);
        let oy = i / u.w % u.h / u.size;
        let ox = i % u.w / u.size;
        var g = 0.0;
        if (oy < u.out_h && ox < u.out_w && window_argmax(plane, oy, ox) == i) {
            let masked = (u.flags & FLAG_MASK) != 0u && x[i] <= 0.0;
            g = select(dy[(plane * u.out_h + oy) * u.out_w + ox], 0.0, masked);
        }
        out[i] = g;
    }
}
