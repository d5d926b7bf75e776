// Register-blocked tiled GEMM for the three forms a dense layer needs:
//   forward      C[m,n] = A[m,k] · W[k,n] (+ bias) (ReLU)
//   weight grad  C[k,n] = Xᵀ · dY, with a virtual row of ones appended to Xᵀ so the
//                last output row is the bias gradient (column sums of dY), written elsewhere
//   input grad   C[m,k] = dY · Wᵀ, optionally masked by the layer's ReLU output
// Operands are addressed through offsets and (row, column) strides from the uniform, so
// transposes are just strides and sub-ranges of the flat parameter buffer need no binding
// offset. Each workgroup computes a 64×64 tile with 8×8 threads, each thread an 8×8 block
// (rows 8·ty.., columns 8·tx..) held in 16 vec4 registers — written out by hand, since
// private arrays indexed in loops stay in memory on some drivers (lavapipe). The
// reduction runs in order p = 0..k for every output.
//
// Split-K (`u.splits` > 1, for products with few output tiles and a long k, such as the
// first layer's forward at batch 32: 2 tiles, k = 784): workgroup z sums only its
// k-range [z·k_split, (z+1)·k_split) (k_split a multiple of TK) and writes the raw sums
// to `partial[z][i][j]`; `reduce` then adds the splits in order z = 0, 1, … and applies
// the epilogue. So the result is the same on every run and device, and there are
// `splits` times as many workgroups to spread over a GPU's cores.
//
// Wide tiles (`gemm_wide`, at the end of this file): 128×128 tiles with 16×16 threads and
// double-buffered k-slices, for large products on hardware GPUs.
//
// The uniform block `u: Gemm` and the buffers are declared once, in mod.rs (`uniform!`,
// `bindings!`), and put before this source when it is compiled. `a4` and `b4` are `a`
// and `b` again, read as vec4 (bound to the same buffers).

const FLAG_BIAS: u32 = 1u;     // add e[e_off + j]
const FLAG_RELU: u32 = 2u;     // max(·, 0)
const FLAG_MASK: u32 = 4u;     // zero where e[e_off + i·lde + j] <= 0 (ReLU backward)
const FLAG_ONES_ROW: u32 = 8u; // row m−1 of A is all ones; its output row goes to c[c2_off + j]

const TM: u32 = 64u;
const TN: u32 = 64u;
// k-slice per shared tile: 32 halves the barriers of 16 (2-3% faster on lavapipe); the
// two tiles then fill the 16 KiB of workgroup memory WebGPU guarantees.
const TK: u32 = 32u;

// `gemm_wide` uses the same memory as two buffers of [WK][WIDE / 4] each (see below).
var<workgroup> sa: array<vec4<f32>, 512>; // [TK][TM / 4]
var<workgroup> sb: array<vec4<f32>, 512>; // [TK][TN / 4]

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

// Rows i..i+3 of A at column p, and row p of B at columns j..j+3.
fn load_a4(i: u32, p: u32) -> vec4<f32> {
    return vec4<f32>(load_a(i, p), load_a(i + 1u, p), load_a(i + 2u, p), load_a(i + 3u, p));
}

fn load_b4(p: u32, j: u32) -> vec4<f32> {
    return vec4<f32>(load_b(p, j), load_b(p, j + 1u), load_b(p, j + 2u), load_b(p, j + 3u));
}

// Tile slot `idx` (each tile holds 512 vec4 slots, slot = p·16 + quad, covering rows or
// columns 4·quad..4·quad+3 at k-offset p) as (p, quad). With k contiguous in the
// operand's memory consecutive threads walk p, so their loads are adjacent; otherwise
// they walk the quads.
fn slot(idx: u32, k_fast: bool) -> vec2<u32> {
    if (k_fast) {
        return vec2<u32>(idx % TK, idx / TK);
    }
    return vec2<u32>(idx / 16u, idx % 16u);
}

// Epilogue for one output: bias, ReLU, mask, then the store (bias-gradient row aside).
fn store(i: u32, j: u32, value: f32) {
    if (i >= u.m || j >= u.n) {
        return;
    }
    var v = value;
    if ((u.flags & FLAG_BIAS) != 0u) {
        v = v + e[u.e_off + j];
    }
    if ((u.flags & FLAG_RELU) != 0u) {
        v = max(v, 0.0);
    }
    if ((u.flags & FLAG_MASK) != 0u) {
        if (e[u.e_off + i * u.lde + j] <= 0.0) {
            v = 0.0;
        }
    }
    if ((u.flags & FLAG_ONES_ROW) != 0u && i == u.m - 1u) {
        c[u.c2_off + j] = v;
    } else {
        c[u.c_off + i * u.ldc + j] = v;
    }
}

// A thread's 8×8 block of sums: entry 2r + h holds row 8·ty + r, columns 8·tx + 4h..+3.
alias Block = array<vec4<f32>, 16>;

fn store4(i: u32, j: u32, v: vec4<f32>) {
    store(i, j, v.x);
    store(i, j + 1u, v.y);
    store(i, j + 2u, v.z);
    store(i, j + 3u, v.w);
}

// Split z's raw sums for outputs (i, j..j+3), before the epilogue.
fn store4_partial(z: u32, i: u32, j: u32, v: vec4<f32>) {
    if (i >= u.m) {
        return;
    }
    let row = (z * u.m + i) * u.n;
    for (var q = 0u; q < 4u; q++) {
        if (j + q < u.n) {
            partial[row + j + q] = v[q];
        }
    }
}

// The splits' sums of each output, added in order, then the epilogue: a thread per output.
@compute @workgroup_size(256, 1, 1)
fn reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let outputs = u.m * u.n;
    for (var o = gid.x; o < outputs; o += groups.x * 256u) {
        var sum = 0.0;
        for (var z = 0u; z < u.splits; z++) {
            sum = sum + partial[z * outputs + o];
        }
        store(o / u.n, o % u.n, sum);
    }
}

// The thread's block of sums (`c{r}{h}`, kept in 16 registers while they run) over the
// workgroup's k-range.
fn accumulate(lid: vec3<u32>, wid: vec3<u32>) -> Block {
    let tx = lid.x;
    let ty = lid.y;
    let flat = ty * 8u + tx;
    let row0 = wid.y * TM;
    let col0 = wid.x * TN;
    // Tile loads: each thread fills 8 vec4 slots of each tile (see `slot`); k is
    // contiguous in A's memory when a_cs == 1, in B's when b_rs == 1.
    let a_k_fast = u.a_cs == 1u;
    let b_k_fast = u.b_rs == 1u;

    var c00 = vec4<f32>(0.0);
    var c01 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0);
    var c11 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0);
    var c21 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0);
    var c31 = vec4<f32>(0.0);
    var c40 = vec4<f32>(0.0);
    var c41 = vec4<f32>(0.0);
    var c50 = vec4<f32>(0.0);
    var c51 = vec4<f32>(0.0);
    var c60 = vec4<f32>(0.0);
    var c61 = vec4<f32>(0.0);
    var c70 = vec4<f32>(0.0);
    var c71 = vec4<f32>(0.0);

    // This workgroup's k-range: all of k, or split z's.
    let k_begin = wid.z * u.k_split;
    let k_end = min(u.k, k_begin + u.k_split);
    for (var kt = k_begin; kt < k_end; kt += TK) {
        for (var q = 0u; q < 8u; q++) {
            let idx = flat + q * 64u;
            let sa_at = slot(idx, a_k_fast);
            sa[sa_at.x * 16u + sa_at.y] = load_a4(row0 + 4u * sa_at.y, kt + sa_at.x);
            let sb_at = slot(idx, b_k_fast);
            sb[sb_at.x * 16u + sb_at.y] = load_b4(kt + sb_at.x, col0 + 4u * sb_at.y);
        }
        workgroupBarrier();
        for (var p = 0u; p < TK; p++) {
            let a0 = sa[p * 16u + 2u * ty];
            let a1 = sa[p * 16u + 2u * ty + 1u];
            let b0 = sb[p * 16u + 2u * tx];
            let b1 = sb[p * 16u + 2u * tx + 1u];
            c00 = c00 + a0.x * b0;
            c01 = c01 + a0.x * b1;
            c10 = c10 + a0.y * b0;
            c11 = c11 + a0.y * b1;
            c20 = c20 + a0.z * b0;
            c21 = c21 + a0.z * b1;
            c30 = c30 + a0.w * b0;
            c31 = c31 + a0.w * b1;
            c40 = c40 + a1.x * b0;
            c41 = c41 + a1.x * b1;
            c50 = c50 + a1.y * b0;
            c51 = c51 + a1.y * b1;
            c60 = c60 + a1.z * b0;
            c61 = c61 + a1.z * b1;
            c70 = c70 + a1.w * b0;
            c71 = c71 + a1.w * b1;
        }
        workgroupBarrier();
    }

    return Block(c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71);
}

@compute @workgroup_size(8, 8, 1)
fn gemm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    var b = accumulate(lid, wid);
    for (var q = 0u; q < 16u; q++) {
        store4(wid.y * TM + 8u * lid.y + q / 2u, wid.x * TN + 8u * lid.x + 4u * (q % 2u), b[q]);
    }
}

// Split-K: split wid.z's raw sums, to be added by `reduce`.
@compute @workgroup_size(8, 8, 1)
fn gemm_split(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    var b = accumulate(lid, wid);
    for (var q = 0u; q < 16u; q++) {
        let i = wid.y * TM + 8u * lid.y + q / 2u;
        store4_partial(wid.z, i, wid.x * TN + 8u * lid.x + 4u * (q % 2u), b[q]);
    }
}

// ---------------------------------------------------------------------------------------
// Wide tiles (`gemm_wide`): the same three forms and epilogue (`store`) for large
// products on hardware GPUs. The 64×64 `gemm` above reaches 11.5 TFLOP/s on an H200 at
// 4096³; this is the usual design for large products, not yet measured on a GPU (on
// lavapipe, 1024³: 12.7 GFLOP/s against `gemm`'s 11.3).
//
// Maths: as `gemm`, C[i,j] = Σ_p A[i,p]·B[p,j] with p = 0, 1, …, k−1 in order
// (`acc = acc + a * b`; the k-slices run in order and so do the p inside each), so each
// output is summed as `gemm` sums it. No split-K: the whole k-range in one workgroup.
//
// Layout: a workgroup of 16×16 threads computes a 128×128 tile of C (rows 128·wid.y..,
// columns 128·wid.x..). Thread (tx, ty) holds an 8×8 block in 16 vec4 registers
// (`w{r}{h}`): rows 4·ty + r (r < 4) and 64 + 4·ty + r − 4 (r ≥ 4), columns 4·tx.. (h = 0)
// and 64 + 4·tx.. (h = 1). Split in halves 64 apart, a row of 16 threads reads 16
// consecutive vec4 of B's slice (no bank conflicts) and one vec4 of A's (a broadcast).
// The k-loop runs slices of WK = 8: A's slice (128 rows × 8) and B's (8 × 128) live in
// workgroup memory as [k][quad] vec4 slots, slot p·32 + q holding rows (or columns)
// 4q..4q+3 at k-offset p, 256 slots a buffer, two buffers each: `sa` and `sb` are
// shared with `gemm` (2 × 2 × 8 × 128 × 4 = 16 KiB, WebGPU's guaranteed workgroup
// memory, which is why the slice is 8 and not 16). Double buffering, one barrier per slice: each thread loads its one vec4 of
// the next slice of each operand from global memory into registers, computes the
// current slice, then stores the loaded values into the other buffer and waits; the
// barrier also makes the current buffer free to be written in the next iteration.
//
// Global loads: each thread fetches one vec4 of each operand per slice. Where k is
// contiguous in the operand (A with a_cs = 1, B with b_rs = 1; the same choice as
// `slot`), the vec4 holds 4 consecutive k of one row (or column), two threads covering
// a row's 8, and is scattered over 4 slots; otherwise it holds 4 consecutive rows (or
// columns) at one k and fills one slot. It is read through the vec4 views `a4`/`b4`
// (the same buffers as `a`/`b`) when the operand is contiguous along it, 16-byte
// aligned (offset and the other stride multiples of 4) and the 4 values lie inside the
// matrix (not the ones row); otherwise through the bounds-checked `load_a`/`load_b`.

const WIDE: u32 = 128u;        // output tile edge
const WK: u32 = 8u;            // k-slice
const WQ: u32 = 32u;           // vec4 slots per k-row of a slice (WIDE / 4)
const WBUF: u32 = 256u;        // vec4 slots per buffer (WK · WQ)
const WHALF: u32 = 16u;        // quads between a thread's two halves (64 rows / columns)

// Rows of A read from memory: all but the appended ones row.
fn stored_rows() -> u32 {
    if ((u.flags & FLAG_ONES_ROW) != 0u) {
        return u.m - 1u;
    }
    return u.m;
}

// Thread `flat`'s vec4 of A's slice at k-offset kt, for rows from row0 (see the header).
fn wide_fetch_a(flat: u32, row0: u32, kt: u32) -> vec4<f32> {
    if (u.a_cs == 1u) {
        let i = row0 + flat / 2u;
        let p = kt + 4u * (flat % 2u);
        let aligned = u.a_off % 4u == 0u && u.a_rs % 4u == 0u;
        if (aligned && i < stored_rows() && p + 4u <= u.k) {
            return a4[(u.a_off + i * u.a_rs + p) / 4u];
        }
        return vec4<f32>(load_a(i, p), load_a(i, p + 1u), load_a(i, p + 2u), load_a(i, p + 3u));
    }
    let i = row0 + 4u * (flat % WQ);
    let p = kt + flat / WQ;
    let aligned = u.a_rs == 1u && u.a_off % 4u == 0u && u.a_cs % 4u == 0u;
    if (aligned && i + 4u <= stored_rows() && p < u.k) {
        return a4[(u.a_off + i + p * u.a_cs) / 4u];
    }
    return load_a4(i, p);
}

// Thread `flat`'s vec4 of B's slice at k-offset kt, for columns from col0.
fn wide_fetch_b(flat: u32, col0: u32, kt: u32) -> vec4<f32> {
    if (u.b_rs == 1u) {
        let j = col0 + flat / 2u;
        let p = kt + 4u * (flat % 2u);
        let aligned = u.b_off % 4u == 0u && u.b_cs % 4u == 0u;
        if (aligned && j < u.n && p + 4u <= u.k) {
            return b4[(u.b_off + p + j * u.b_cs) / 4u];
        }
        return vec4<f32>(load_b(p, j), load_b(p + 1u, j), load_b(p + 2u, j), load_b(p + 3u, j));
    }
    let j = col0 + 4u * (flat % WQ);
    let p = kt + flat / WQ;
    let aligned = u.b_cs == 1u && u.b_off % 4u == 0u && u.b_rs % 4u == 0u;
    if (aligned && j + 4u <= u.n && p < u.k) {
        return b4[(u.b_off + p * u.b_rs + j) / 4u];
    }
    return load_b4(p, j);
}

// Store thread `flat`'s fetched vec4 of A into the buffer at slot `base`: 4 k of one row
// go to lane row % 4 of 4 slots; 4 rows at one k are slot `flat` itself.
fn wide_stash_a(v: vec4<f32>, flat: u32, base: u32) {
    if (u.a_cs == 1u) {
        let row = flat / 2u;
        let at = base + 4u * (flat % 2u) * WQ + row / 4u;
        let lane = row % 4u;
        sa[at][lane] = v.x;
        sa[at + WQ][lane] = v.y;
        sa[at + 2u * WQ][lane] = v.z;
        sa[at + 3u * WQ][lane] = v.w;
        return;
    }
    sa[base + flat] = v;
}

// The same for B's vec4.
fn wide_stash_b(v: vec4<f32>, flat: u32, base: u32) {
    if (u.b_rs == 1u) {
        let col = flat / 2u;
        let at = base + 4u * (flat % 2u) * WQ + col / 4u;
        let lane = col % 4u;
        sb[at][lane] = v.x;
        sb[at + WQ][lane] = v.y;
        sb[at + 2u * WQ][lane] = v.z;
        sb[at + 3u * WQ][lane] = v.w;
        return;
    }
    sb[base + flat] = v;
}

// The thread's 8×8 block of sums over all of k (entry 2r + h as in the header).
fn wide_accumulate(lid: vec3<u32>, wid: vec3<u32>) -> Block {
    let tx = lid.x;
    let ty = lid.y;
    let flat = ty * 16u + tx;
    let row0 = wid.y * WIDE;
    let col0 = wid.x * WIDE;

    var w00 = vec4<f32>(0.0);
    var w01 = vec4<f32>(0.0);
    var w10 = vec4<f32>(0.0);
    var w11 = vec4<f32>(0.0);
    var w20 = vec4<f32>(0.0);
    var w21 = vec4<f32>(0.0);
    var w30 = vec4<f32>(0.0);
    var w31 = vec4<f32>(0.0);
    var w40 = vec4<f32>(0.0);
    var w41 = vec4<f32>(0.0);
    var w50 = vec4<f32>(0.0);
    var w51 = vec4<f32>(0.0);
    var w60 = vec4<f32>(0.0);
    var w61 = vec4<f32>(0.0);
    var w70 = vec4<f32>(0.0);
    var w71 = vec4<f32>(0.0);

    // Slice 0 into buffer 0; then slice t is read from buffer t % 2.
    wide_stash_a(wide_fetch_a(flat, row0, 0u), flat, 0u);
    wide_stash_b(wide_fetch_b(flat, col0, 0u), flat, 0u);
    workgroupBarrier();
    let slices = (u.k + WK - 1u) / WK;
    for (var t = 0u; t < slices; t++) {
        let current = (t % 2u) * WBUF;
        let more = t + 1u < slices;
        var next_a = vec4<f32>(0.0);
        var next_b = vec4<f32>(0.0);
        if (more) {
            next_a = wide_fetch_a(flat, row0, (t + 1u) * WK);
            next_b = wide_fetch_b(flat, col0, (t + 1u) * WK);
        }
        for (var p = 0u; p < WK; p++) {
            let at = current + p * WQ;
            let a0 = sa[at + ty];
            let a1 = sa[at + WHALF + ty];
            let b0 = sb[at + tx];
            let b1 = sb[at + WHALF + tx];
            w00 = w00 + a0.x * b0;
            w01 = w01 + a0.x * b1;
            w10 = w10 + a0.y * b0;
            w11 = w11 + a0.y * b1;
            w20 = w20 + a0.z * b0;
            w21 = w21 + a0.z * b1;
            w30 = w30 + a0.w * b0;
            w31 = w31 + a0.w * b1;
            w40 = w40 + a1.x * b0;
            w41 = w41 + a1.x * b1;
            w50 = w50 + a1.y * b0;
            w51 = w51 + a1.y * b1;
            w60 = w60 + a1.z * b0;
            w61 = w61 + a1.z * b1;
            w70 = w70 + a1.w * b0;
            w71 = w71 + a1.w * b1;
        }
        if (more) {
            wide_stash_a(next_a, flat, WBUF - current);
            wide_stash_b(next_b, flat, WBUF - current);
        }
        workgroupBarrier();
    }

    return Block(w00, w01, w10, w11, w20, w21, w30, w31, w40, w41, w50, w51, w60, w61, w70, w71);
}

@compute @workgroup_size(16, 16, 1)
fn gemm_wide(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    var b = wide_accumulate(lid, wid);
    for (var q = 0u; q < 16u; q++) {
        let r = q / 2u;
        let i = wid.y * WIDE + 4u * lid.y + 64u * (r / 4u) + r % 4u;
        store4(i, wid.x * WIDE + 4u * lid.x + 64u * (q % 2u), b[q]);
    }
}
