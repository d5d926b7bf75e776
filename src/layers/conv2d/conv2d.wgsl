// Conv2D (stride 1, valid padding, PyTorch layouts: activations [batch, channels, h, w],
// kernel [out, in, k, k]) as three implicit GEMMs, C[M,N] = A[M,K] · B[K,N], whose
// operands are read straight from the activations: no im2col buffer is ever written.
// One entry point, `conv`, does all three; `u.op` says which (the branches on it are
// uniform, so every thread of a dispatch takes the same one):
//
//   OP_FORWARD      per sample b:  y_b[o, (oy,ox)] = Σ_(c,ky,kx) W[o, c,ky,kx] · x_b[c, oy+ky, ox+kx]
//                               + bias[o], then ReLU (FLAG_RELU)
//                   M = out, N = out_h·out_w, K = in·k·k; workgroup z = the sample
//   OP_WEIGHT_GRAD  dW[o, (c,ky,kx)] = Σ_(b,oy,ox) dy[b, o, oy,ox] · x[b, c, oy+ky, ox+kx]
//                   M = out, N = in·k·k + 1, K = batch·out_h·out_w: a virtual column of ones
//                   ends B, so the last output column is the bias gradient Σ dy. The
//                   batch is split (workgroup z = the split, u.split_samples samples
//                   each), each split's sums go to `out` as [split][M][N], and
//                   `reduce_splits` adds them in split order into dW and db
//   OP_INPUT_GRAD   per sample b:  dx_b[c, (iy,ix)] = Σ_(o,ky,kx) W[o, c,ky,kx] · dy_b[o, iy−ky, ix−kx]
//                   (terms outside the output dropped); M = in, N = h·w, K = out·k·k
//
// The buffers, as LinearOp::operands in mod.rs binds them: `lhs` is x (forward, weight
// gradient) or dy (input gradient); `rhs` the parameters (forward, input gradient) or dy
// (weight gradient). So A always comes from rhs and B from lhs.
//
// With FLAG_MASK the input gradient is zeroed where y_mask (the ReLU output of the layer
// below, this layer's input) is ≤ 0: that ReLU's backward, fused as in gemm.wgsl.
//
// Each workgroup computes a 32×32 tile of C with 8×8 threads, each thread a 4×4 block
// (rows 4·ty.., columns 4·tx..) in four vec4s; the K dimension is walked in slices of 16
// through workgroup memory. Every output sums its K terms in order p = 0..K, one slice
// after another, so results do not depend on the tiling, and the CPU reference (cpu.rs,
// im2col + GEMM) agrees to rounding. The weight gradient's output is small (32 × 10 for a
// first layer of 32 3×3 filters: one tile), so its batch is split, about 2,048 terms a
// split (mod.rs: weight_grad_splits), to give the grid more workgroups: on lavapipe's 2
// threads that halved the first layer's weight gradient (benches/RESULTS.md).
//
// The uniform block `u: Conv` and the buffers are declared once, in mod.rs (`uniform!`,
// `bindings!`), and put before this source when it is compiled.

const OP_FORWARD: u32 = 0u;
const OP_WEIGHT_GRAD: u32 = 1u;
const OP_INPUT_GRAD: u32 = 2u;

const FLAG_RELU: u32 = 1u;
const FLAG_MASK: u32 = 2u;

const T: u32 = 32u;  // output tile edge
const TK: u32 = 16u; // K slice per barrier

// The tiles as vec4s of 4 rows (columns), so the inner loop reads two vec4s for its 16
// multiply-adds: [TK][T / 4], sa[p·8 + i/4][i%4] = A[row0 + i, k0 + p], sb likewise
// for B[k0 + p, col0 + j].
var<workgroup> sa: array<vec4<f32>, 128>;
var<workgroup> sb: array<vec4<f32>, 128>;

fn patch_len() -> u32 {
    return u.in_ch * u.ks * u.ks;
}

fn out_pixels() -> u32 {
    return u.out_h * u.out_w;
}

// (M, N, K) of the product `u.op` forms.
fn dims() -> vec3<u32> {
    switch u.op {
        case OP_FORWARD: { return vec3<u32>(u.out_ch, out_pixels(), patch_len()); }
        case OP_WEIGHT_GRAD: { return vec3<u32>(u.out_ch, patch_len() + 1u, u.batch * out_pixels()); }
        default: { return vec3<u32>(u.in_ch, u.h * u.w, u.out_ch * u.ks * u.ks); } // OP_INPUT_GRAD
    }
}

// Where patch element p = (c, ky, kx) lies from its window's corner in a sample of x:
// c·h·w + ky·w + kx.
fn patch_offset(p: u32) -> u32 {
    let kk = u.ks * u.ks;
    let r = p % kk;
    return (p / kk) * u.h * u.w + (r / u.ks) * u.w + r % u.ks;
}

// Where output pixel q = (oy, ox)'s window corner lies in a sample of x: oy·w + ox.
fn corner_offset(q: u32) -> u32 {
    return (q / u.out_w) * u.w + q % u.out_w;
}

// What every load of B's column j reuses, worked out once per thread (each thread loads
// one column of B) rather than once per load, which saves integer divisions: the window
// corner of output pixel j (forward), the patch offset of j and whether j is the column
// of ones (weight gradient), or input pixel j's (iy, ix) (input gradient).
fn column_key(j: u32) -> vec2<u32> {
    switch u.op {
        case OP_FORWARD: { return vec2<u32>(corner_offset(j), 0u); }
        case OP_WEIGHT_GRAD: {
            if (j == patch_len()) {
                return vec2<u32>(0u, 1u);
            }
            return vec2<u32>(patch_offset(j), 0u);
        }
        default: { return vec2<u32>(j / u.w, j % u.w); }
    }
}

// dy_b[o, iy − ky, ix − kx] for p = (o, ky, kx) and input pixel (iy, ix); 0 where that
// output pixel does not exist.
fn dy_shifted(b: u32, p: u32, iy: u32, ix: u32) -> f32 {
    let kk = u.ks * u.ks;
    let r = p % kk;
    let ky = r / u.ks;
    let kx = r % u.ks;
    if (iy < ky || ix < kx || iy - ky >= u.out_h || ix - kx >= u.out_w) {
        return 0.0;
    }
    return lhs[(b * u.out_ch + p / kk) * out_pixels() + (iy - ky) * u.out_w + ix - kx];
}

// A[i, p] of sample b (inside the product's bounds).
fn load_a(b: u32, i: u32, p: u32) -> f32 {
    switch u.op {
        case OP_FORWARD: { return rhs[u.kernel_off + i * patch_len() + p]; }
        case OP_WEIGHT_GRAD: {
            // dy[b, i, q] for p = (b, q)
            return rhs[(p / out_pixels() * u.out_ch + i) * out_pixels() + p % out_pixels()];
        }
        default: {
            let kk = u.ks * u.ks;
            return rhs[u.kernel_off + ((p / kk) * u.in_ch + i) * kk + p % kk];
        }
    }
}

// B[p, j] of sample b (inside the product's bounds), `key` being column_key(j).
fn load_b(b: u32, p: u32, key: vec2<u32>) -> f32 {
    let sample = u.in_ch * u.h * u.w;
    switch u.op {
        case OP_FORWARD: { return lhs[b * sample + key.x + patch_offset(p)]; }
        case OP_WEIGHT_GRAD: {
            if (key.y == 1u) {
                return 1.0;
            }
            // x[b', c, oy + ky, ox + kx] for p = (b', (oy, ox)) and j = (c, ky, kx)
            return lhs[p / out_pixels() * sample + corner_offset(p % out_pixels()) + key.x];
        }
        default: { return dy_shifted(b, p, key.x, key.y); }
    }
}

// C[i, j] of sample b = v, with the forward's epilogue (bias, ReLU) and the weight
// gradient's bias column.
fn store(b: u32, i: u32, j: u32, v: f32) {
    switch u.op {
        case OP_FORWARD: {
            var y = v + rhs[u.bias_off + i];
            if ((u.flags & FLAG_RELU) != 0u) {
                y = max(y, 0.0);
            }
            out[(b * u.out_ch + i) * out_pixels() + j] = y;
        }
        case OP_WEIGHT_GRAD: { out[(b * u.out_ch + i) * (patch_len() + 1u) + j] = v; } // b: the split
        default: {
            let at = (b * u.in_ch + i) * u.h * u.w + j;
            let masked = (u.flags & FLAG_MASK) != 0u && y_mask[at] <= 0.0;
            out[at] = select(v, 0.0, masked);
        }
    }
}

@compute @workgroup_size(8, 8, 1)
fn conv(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let mnk = dims();
    let flat = lid.y * 8u + lid.x;
    let row0 = wid.y * T;
    let col0 = wid.x * T;
    let b = wid.z;
    var acc = array<vec4<f32>, 4>(); // this thread's rows, each 4 columns
    // This thread's share of each tile: row i of A's and column i of B's, at k-offsets
    // p0, p0 + 2, …, p0 + 14 (neighbouring threads take neighbouring rows and columns).
    let i = flat % T;
    let p0 = flat / T;
    let row_in = row0 + i < mnk.x;
    let col_in = col0 + i < mnk.y;
    var key = vec2<u32>(0u);
    if (col_in) {
        key = column_key(col0 + i);
    }
    // The K range: all of it, or the weight gradient's split z.
    var k_begin = 0u;
    var k_end = mnk.z;
    if (u.op == OP_WEIGHT_GRAD) {
        k_begin = b * u.split_samples * out_pixels();
        k_end = min(k_begin + u.split_samples * out_pixels(), mnk.z);
    }
    for (var k0 = k_begin; k0 < k_end; k0 += TK) {
        for (var p = p0; p < TK; p += 2u) {
            let k_in = k0 + p < k_end;
            var a = 0.0;
            var bv = 0.0;
            if (k_in && row_in) {
                a = load_a(b, row0 + i, k0 + p);
            }
            if (k_in && col_in) {
                bv = load_b(b, k0 + p, key);
            }
            sa[p * 8u + i / 4u][i % 4u] = a;
            sb[p * 8u + i / 4u][i % 4u] = bv;
        }
        workgroupBarrier();
        for (var p = 0u; p < TK; p++) {
            let a = sa[p * 8u + lid.y];
            let bv = sb[p * 8u + lid.x];
            acc[0] = acc[0] + a.x * bv;
            acc[1] = acc[1] + a.y * bv;
            acc[2] = acc[2] + a.z * bv;
            acc[3] = acc[3] + a.w * bv;
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let i = row0 + 4u * lid.y + r;
        for (var c = 0u; c < 4u; c++) {
            let j = col0 + 4u * lid.x + c;
            if (i < mnk.x && j < mnk.y) {
                store(b, i, j, acc[r][c]);
            }
        }
    }
}

// The weight gradient's second pass: each output (o, j) of dW and db is the sum of the
// splits' partial sums in `lhs` ([split][M][N]), in split order, into `out` at the
// kernel's and the bias's offsets.
@compute @workgroup_size(256, 1, 1)
fn reduce_splits(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let n = patch_len() + 1u;
    let outputs = u.out_ch * n;
    let splits = (u.batch + u.split_samples - 1u) / u.split_samples;
    for (var e = gid.x; e < outputs; e += groups.x * 256u) {
        var v = 0.0;
        for (var z = 0u; z < splits; z++) {
            v = v + lhs[z * outputs + e];
        }
        let i = e / n;
        let j = e % n;
        if (j == patch_len()) {
            out[u.bias_off + i] = v;
        } else {
            out[u.kernel_off + i * patch_len() + j] = v;
        }
    }
}
