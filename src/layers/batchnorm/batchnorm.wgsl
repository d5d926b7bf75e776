// BatchNormalization over the 784 input features, fused with the batch gather: each
// thread owns one feature and walks the batch rows in order 0..batch (the CPU's order).
// Pixels come from the resident u8 data set (4 per u32, little-endian), scaled by
// `scale`; in training the sample of row r is order[state[0]·stride + r] (state[0] is
// the step index inside the epoch), in evaluation it is base + r.
//
// stats buffer: [0, F) moving mean, [F, 2F) moving variance, [2F, 3F) inv_std of the
// last training batch (kept for backward).
//
// The uniform block `u: Bn` and the buffers are declared once, in mod.rs (`uniform!`,
// `bindings!`), and put before this source when it is compiled.

fn sample_of(row: u32) -> u32 {
    if (u.use_order != 0u) {
        return order[state[0] * u.stride + row];
    }
    return u.base + row;
}

fn pixel(row: u32, j: u32) -> f32 {
    let word = pixels[sample_of(row) * (u.features / 4u) + j / 4u];
    return f32((word >> (8u * (j % 4u))) & 255u) * u.scale;
}

// Training: batch mean, biased batch variance, xhat, y = gamma·xhat + beta, inv_std,
// and the moving-average update moving = moving·momentum + batch·(1 − momentum).
@compute @workgroup_size(64, 1, 1)
fn forward_train(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let f = u.features;
    if (j >= f) {
        return;
    }
    let inv_batch = 1.0 / f32(u.batch);
    var mean = 0.0;
    for (var r = 0u; r < u.batch; r++) {
        mean = mean + pixel(r, j);
    }
    mean = mean * inv_batch;
    var v = 0.0;
    for (var r = 0u; r < u.batch; r++) {
        let d = pixel(r, j) - mean;
        v = v + d * d;
    }
    v = v * inv_batch;
    let inv_std = 1.0 / sqrt(v + u.eps);
    stats[2u * f + j] = inv_std;
    stats[j] = stats[j] * u.momentum + mean * (1.0 - u.momentum);
    stats[f + j] = stats[f + j] * u.momentum + v * (1.0 - u.momentum);
    let g = params[u.gamma_off + j];
    let b = params[u.beta_off + j];
    for (var r = 0u; r < u.batch; r++) {
        let n = (pixel(r, j) - mean) * inv_std;
        xhat[r * f + j] = n;
        y[r * f + j] = g * n + b;
    }
}

// Training, for hardware GPUs: forward_train's values, with a workgroup for each 4
// features (one u32 of pixels) instead of a thread per feature. Its 64 threads take
// every 64th row, and a fixed-order tree sums their partials, so the sums (in another
// order than the CPU's) are the same on every run and device. 196 workgroups of 64
// threads at 784 features instead of 13: on an H200 forward_train was 44% of a
// batch-512 step, each of its 784 threads walking the whole batch alone.
var<workgroup> partial4: array<vec4<f32>, 64>;

// The scaled pixels of features 4·word … 4·word + 3 of batch row `row`.
fn pixels4(row: u32, word: u32) -> vec4<f32> {
    let w = pixels[sample_of(row) * (u.features / 4u) + word];
    let bytes = vec4<u32>(w & 255u, (w >> 8u) & 255u, (w >> 16u) & 255u, w >> 24u);
    return vec4<f32>(bytes) * u.scale;
}

// The workgroup's sum of every thread's `value`, in a fixed tree order.
fn workgroup_sum(t: u32, value: vec4<f32>) -> vec4<f32> {
    partial4[t] = value;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (t < s) {
            partial4[t] += partial4[t + s];
        }
        workgroupBarrier();
    }
    let total = partial4[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(64, 1, 1)
fn forward_train_wide(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let word = group.x;
    let f = u.features;
    let j = 4u * word;
    let inv_batch = 1.0 / f32(u.batch);
    var sum = vec4<f32>(0.0);
    for (var r = t; r < u.batch; r += 64u) {
        sum += pixels4(r, word);
    }
    let mean = workgroup_sum(t, sum) * inv_batch;
    var squares = vec4<f32>(0.0);
    for (var r = t; r < u.batch; r += 64u) {
        let d = pixels4(r, word) - mean;
        squares += d * d;
    }
    let v = workgroup_sum(t, squares) * inv_batch;
    let inv_std = 1.0 / sqrt(v + u.eps);
    if (t < 4u) {
        stats[2u * f + j + t] = inv_std[t];
        stats[j + t] = stats[j + t] * u.momentum + mean[t] * (1.0 - u.momentum);
        stats[f + j + t] = stats[f + j + t] * u.momentum + v[t] * (1.0 - u.momentum);
    }
    let g = vec4<f32>(params[u.gamma_off + j], params[u.gamma_off + j + 1u],
                      params[u.gamma_off + j + 2u], params[u.gamma_off + j + 3u]);
    let b = vec4<f32>(params[u.beta_off + j], params[u.beta_off + j + 1u],
                      params[u.beta_off + j + 2u], params[u.beta_off + j + 3u]);
    for (var r = t; r < u.batch; r += 64u) {
        let n = (pixels4(r, word) - mean) * inv_std;
        let out = g * n + b;
        for (var k = 0u; k < 4u; k++) {
            xhat[r * f + j + k] = n[k];
            y[r * f + j + k] = out[k];
        }
    }
}

// A model whose first layer is not BatchNorm: the batch's scaled pixels alone, into y
// (a thread per feature, as above; xhat and stats are not touched).
@compute @workgroup_size(64, 1, 1)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let f = u.features;
    if (j >= f) {
        return;
    }
    for (var r = 0u; r < u.batch; r++) {
        y[r * f + j] = pixel(r, j);
    }
}

// Inference: normalise with the moving statistics.
@compute @workgroup_size(64, 1, 1)
fn forward_eval(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let f = u.features;
    if (j >= f) {
        return;
    }
    let mm = stats[j];
    let scale = params[u.gamma_off + j] / sqrt(stats[f + j] + u.eps);
    let b = params[u.beta_off + j];
    for (var r = 0u; r < u.batch; r++) {
        y[r * f + j] = (pixel(r, j) - mm) * scale + b;
    }
}

// Backward through BatchNorm and the dense layer it feeds (CPU twin and derivation:
// `batchnorm_dense_backward` in cpu.rs beside it). On entry layer 0's kernel slot of
// `grads` holds G = xhatᵀ·δ and its bias slot db; this writes dW = gamma ⊗ G + beta ⊗ db,
// dgamma_j = Σ_k W_jk·G_jk and dbeta_j = Σ_k W_jk·db_k. So BatchNorm needs neither dy
// nor the input-grad GEMM that would make it. One workgroup per feature j: its threads
// stride over the row (coalesced), then a fixed-order tree sums their partials
// (`workgroup_sum`).
@compute @workgroup_size(64, 1, 1)
fn dense_backward(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let j = group.x;
    let n = u.width;
    let row = u.kernel_off + j * n;
    let gamma = params[u.gamma_off + j];
    let beta = params[u.beta_off + j];
    var acc = vec2<f32>(0.0, 0.0);
    for (var k = t; k < n; k += 64u) {
        let w = params[row + k];
        let g = grads[row + k];
        let db = grads[u.bias_off + k];
        acc += w * vec2<f32>(g, db);
        grads[row + k] = gamma * g + beta * db;
    }
    let total = workgroup_sum(t, vec4<f32>(acc, 0.0, 0.0));
    if (t == 0u) {
        grads[u.gamma_off + j] = total.x;
        grads[u.beta_off + j] = total.y;
    }
}

// The same with one thread per feature and no barriers, for CPU adapters (lavapipe,
// llvmpipe): there a workgroup's invocations are SIMD lanes of one thread, and every
// barrier of the tree above switches between them (measured: 6 ms per step against
// about 1). Each thread sums its row in order k = 0..n.
@compute @workgroup_size(64, 1, 1)
fn dense_backward_per_feature(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= u.features) {
        return;
    }
    let n = u.width;
    let row = u.kernel_off + j * n;
    let gamma = params[u.gamma_off + j];
    let beta = params[u.beta_off + j];
    var dg = 0.0;
    var db = 0.0;
    for (var k = 0u; k < n; k++) {
        let w = params[row + k];
        let g = grads[row + k];
        let d = grads[u.bias_off + k];
        dg = dg + w * g;
        db = db + w * d;
        grads[row + k] = gamma * g + beta * d;
    }
    grads[u.gamma_off + j] = dg;
    grads[u.beta_off + j] = db;
}

// BatchNorm's own backward, for the trainer without the fused dense_backward above:
// dgamma_j = Σ_r dy[r,j]·xhat[r,j] and dbeta_j = Σ_r dy[r,j], summed over the rows in
// order 0..batch (the CPU's order), one thread per feature. BatchNorm is on the pixels,
// so no input gradient is needed.
@compute @workgroup_size(64, 1, 1)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let f = u.features;
    if (j >= f) {
        return;
    }
    var dg = 0.0;
    var db = 0.0;
    for (var r = 0u; r < u.batch; r++) {
        let g = dy[r * f + j];
        dg = dg + g * xhat_in[r * f + j];
        db = db + g;
    }
    grads[u.gamma_off + j] = dg;
    grads[u.beta_off + j] = db;
}
