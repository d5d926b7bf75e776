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
//                   ends B, so the last output column is the bias gradient Σ dy
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
// (rows 4·ty.., columns 4·tx..) in four vec4s; the K dimension is walked in
// slices of 16 through workgroup memory. Every output sums its K terms in order
// p = 0..K, one slice after another, so results do not depend on the tiling and the CPU
// reference (cpu.rs, im2col + GEMM) agrees to rounding.
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

var<workgroup> sa: array<f32, 512>; // [TK][T]: sa[p·T + i] = A[row0 + i, k0 + p]
var<workgroup> sb: array<f32, 512>; // [TK][T]: sb[p·T + j] = B[k0 + p, col0 + j]

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

// x[b, c, oy + ky, ox + kx] for patch row p = (c, ky, kx) and output pixel q = (oy, ox).
fn x_at(b: u32, p: u32, q: u32) -> f32 {
    let kk = u.ks * u.ks;
    let c = p / kk;
    let ky = p % kk / u.ks;
    let kx = p % u.ks;
    let oy = q / u.out_w;
    let ox = q % u.out_w;
    return lhs[((b * u.in_ch + c) * u.h + oy + ky) * u.w + ox + kx];
}

// dy_b[o, iy − ky, ix − kx] for p = (o, ky, kx) and input pixel j = (iy, ix); 0 where
// that output pixel does not exist.
fn dy_shifted(b: u32, p: u32, j: u32) -> f32 {
    let kk = u.ks * u.ks;
    let ky = p % kk / u.ks;
    let kx = p % u.ks;
    let iy = j / u.w;
    let ix = j % u.w;
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

// B[p, j] of sample b (inside the product's bounds).
fn load_b(b: u32, p: u32, j: u32) -> f32 {
    switch u.op {
        case OP_FORWARD: { return x_at(b, p, j); }
        case OP_WEIGHT_GRAD: {
            if (j == patch_len()) {
                return 1.0;
            }
            return x_at(p / out_pixels(), j, p % out_pixels());
        }
        default: { return dy_shifted(b, p, j); }
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
        case OP_WEIGHT_GRAD: {
            if (j == patch_len()) {
                out[u.bias_off + i] = v;
            } else {
                out[u.kernel_off + i * patch_len() + j] = v;
            }
        }
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
    for (var k0 = 0u; k0 < mnk.z; k0 += TK) {
        // This thread's 8 values of each tile: (p, i) with i fastest, so neighbouring
        // threads read neighbouring rows of A and columns of B.
        for (var q = 0u; q < 8u; q++) {
            let idx = flat + q * 64u;
            let p = idx / T;
            let i = idx % T;
            var a = 0.0;
            var bv = 0.0;
            if (k0 + p < mnk.z && row0 + i < mnk.x) {
                a = load_a(b, row0 + i, k0 + p);
            }
            if (k0 + p < mnk.z && col0 + i < mnk.y) {
                bv = load_b(b, k0 + p, col0 + i);
            }
            sa[p * T + i] = a;
            sb[p * T + i] = bv;
        }
        workgroupBarrier();
        for (var p = 0u; p < TK; p++) {
            let at = p * T;
            let a = vec4<f32>(sa[at + 4u * lid.y], sa[at + 4u * lid.y + 1u], sa[at + 4u * lid.y + 2u], sa[at + 4u * lid.y + 3u]);
            let bv = vec4<f32>(sb[at + 4u * lid.x], sb[at + 4u * lid.x + 1u], sb[at + 4u * lid.x + 2u], sb[at + 4u * lid.x + 3u]);
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
