// Register-blocked tiled GEMM for the three forms a dense layer needs:
//   forward      C[m,n] = A[m,k] · W[k,n] (+ bias) (ReLU)
//   weight grad  C[k,n] = Xᵀ · dY, with a virtual row of ones appended to Xᵀ so the
//                last output row is the bias gradient (column sums of dY), written elsewhere
//   input grad   C[m,k] = dY · Wᵀ, optionally masked by the layer's ReLU output
// Operands are addressed through offsets and (row, column) strides from the uniform, so
// transposes are just strides and sub-ranges of the flat parameter buffer need no binding
// offset. Each workgroup computes a 64×64 tile with 8×8 threads, each thread 8×8 outputs
// (rows ty + 8r, columns tx + 8c); the reduction runs in order p = 0..k for every output.

struct Gemm {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    c_off: u32,
    ldc: u32,
    e_off: u32,
    lde: u32,
    c2_off: u32,
    pad: u32,
}

const FLAG_BIAS: u32 = 1u;     // add e[e_off + j]
const FLAG_RELU: u32 = 2u;     // max(·, 0)
const FLAG_MASK: u32 = 4u;     // zero where e[e_off + i·lde + j] <= 0 (ReLU backward)
const FLAG_ONES_ROW: u32 = 8u; // row m−1 of A is all ones; its output row goes to c[c2_off + j]

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

@group(0) @binding(0) var<uniform> u: Gemm;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> e: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

var<workgroup> sa: array<f32, 1024>; // [TK][TM]
var<workgroup> sb: array<f32, 1024>; // [TK][TN]

fn load_a(i: u32, p: u32) -> f32 {
    if (i >= u.m || p >= u.k) {
        return 0.0;
    }
    if ((u.flags & FLAG_ONES_ROW) != 0u && i == u.m - 1u) {
        return 1.0;
    }
    return a[u.a_off + i * u.a_rs + p * u.a_cs];
}

fn load_b(p: u32, j: u32) -> f32 {
    if (p >= u.k || j >= u.n) {
        return 0.0;
    }
    return b[u.b_off + p * u.b_rs + j * u.b_cs];
}

@compute @workgroup_size(8, 8, 1)
fn gemm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let flat = ty * 8u + tx;
    let row0 = wid.y * TM;
    let col0 = wid.x * TN;
    // Load mappings chosen so that consecutive threads read consecutive addresses.
    let a_k_fast = u.a_cs == 1u;
    let b_k_fast = u.b_rs == 1u;

    var acc: array<f32, 64>;
    for (var i = 0u; i < 64u; i++) {
        acc[i] = 0.0;
    }

    for (var kt = 0u; kt < u.k; kt += TK) {
        for (var q = 0u; q < 16u; q++) {
            let idx = flat + q * 64u;
            var il: u32;
            var pl: u32;
            if (a_k_fast) {
                pl = idx % TK;
                il = idx / TK;
            } else {
                il = idx % TM;
                pl = idx / TM;
            }
            sa[pl * TM + il] = load_a(row0 + il, kt + pl);
            var jl: u32;
            var pb: u32;
            if (b_k_fast) {
                pb = idx % TK;
                jl = idx / TK;
            } else {
                jl = idx % TN;
                pb = idx / TN;
            }
            sb[pb * TN + jl] = load_b(kt + pb, col0 + jl);
        }
        workgroupBarrier();
        for (var p = 0u; p < TK; p++) {
            var ar: array<f32, 8>;
            var br: array<f32, 8>;
            for (var r = 0u; r < 8u; r++) {
                ar[r] = sa[p * TM + ty + 8u * r];
                br[r] = sb[p * TN + tx + 8u * r];
            }
            for (var r = 0u; r < 8u; r++) {
                for (var cc = 0u; cc < 8u; cc++) {
                    acc[r * 8u + cc] = acc[r * 8u + cc] + ar[r] * br[cc];
                }
            }
        }
        workgroupBarrier();
    }

    for (var r = 0u; r < 8u; r++) {
        let i = row0 + ty + 8u * r;
        if (i >= u.m) {
            continue;
        }
        for (var cc = 0u; cc < 8u; cc++) {
            let j = col0 + tx + 8u * cc;
            if (j >= u.n) {
                continue;
            }
            var v = acc[r * 8u + cc];
            if ((u.flags & FLAG_BIAS) != 0u) {
                v = v + e[u.e_off + j];
            }
            if ((u.flags & FLAG_RELU) != 0u) {
                v = max(v, 0.0);
            }
            if ((u.flags & FLAG_MASK) != 0u && e[u.e_off + i * u.lde + j] <= 0.0) {
                v = 0.0;
            }
            if ((u.flags & FLAG_ONES_ROW) != 0u && i == u.m - 1u) {
                c[u.c2_off + j] = v;
            } else {
                c[u.c_off + i * u.ldc + j] = v;
            }
        }
    }
}
