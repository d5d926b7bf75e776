// Data augmentation (`train --augment`): every training image of the epoch, 28×28 u8
// pixels packed 4 to a u32 (pixel p in bits 8·(p % 4) of word p / 4), resampled into
// `out` in the same layout. The maths, step for step as cpu.rs does it:
//
//   warp     a chain of PCG hashes of (seed, epoch, image index) picks a rotation
//            (−12°…12° by 0.1°), a scale (0.90…1.10 by 0.01), a shift t (−3…3 px by
//            1/16 px on each axis) and a stroke change (thinner, kept, kept, thicker)
//   stroke   thinner: the minimum of each 2×2 window from (x, y) right and down;
//            thicker: its maximum (pixels outside the image are 0)
//   affine   out(q) = stroked sampled bilinearly at p = R(−θ)·(q − c − t)/s + c,
//            with the matrix [cos θ/s, sin θ/s] from `warps` (2⁻¹⁶ units, made on the host
//            with the same table as the CPU's), coordinates in 2⁻²¹ pixel and weights in
//            256ths: integers only, so every device makes the bytes the CPU makes (float
//            rounding, and a driver's freedom to fuse a·b + c, would not).
//
// Layout: a thread per output word (4 pixels), grid-stride, each reading its taps from
// the packed source and changing their stroke on the way (up to 16 reads a pixel, all in
// the one image's 784 bytes, so from cache), no workgroup memory and no barrier. On
// 4096 images (`cargo bench --bench kernels -- other`, a round trip with upload and
// readback) it takes 44 ms on lavapipe and 46 ms on llvmpipe's GL, where a workgroup per
// image, with the image and its stroke change in workgroup memory, took 58 and 731 ms
// (llvmpipe's barriers cost most). The whole set runs once an epoch, not once a step.
//
// The uniform block `u: Augment` and the buffers are declared once, in mod.rs
// (`uniform!`, `bindings!`), and put before this source when it is compiled.

const SIDE: i32 = 28;
const WORDS: u32 = 196u;
const ROTATIONS: u32 = 241u;
const SCALES: u32 = 21u;
const SHIFTS: u32 = 97u;
const SALT: u32 = 0x61756731u;
const CENTRE_Q21: i32 = 28311552; // 13.5 · 2²¹

fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

struct Warp {
    matrix: u32,
    shift: vec2<i32>,
    stroke: i32,
}

// The warp of image `sample`: the hash chain of cpu.rs's sample_warp.
fn sample_warp(sample: u32) -> Warp {
    var hash = pcg(sample + pcg(u.epoch + pcg(u.seed ^ SALT)));
    hash = pcg(hash);
    let rotation = hash % ROTATIONS;
    hash = pcg(hash);
    let scale = hash % SCALES;
    hash = pcg(hash);
    let dx = i32(hash % SHIFTS) - i32(SHIFTS / 2u);
    hash = pcg(hash);
    let dy = i32(hash % SHIFTS) - i32(SHIFTS / 2u);
    hash = pcg(hash);
    let choice = hash % 4u;
    let stroke = select(select(0, 1, choice == 3u), -1, choice == 0u);
    return Warp(rotation * SCALES + scale, vec2<i32>(dx, dy), stroke);
}

// Pixel (x, y) of the image whose first word is `base`, 0 outside.
fn source_at(base: u32, x: i32, y: i32) -> i32 {
    if x < 0 || y < 0 || x >= SIDE || y >= SIDE {
        return 0;
    }
    let p = u32(y * SIDE + x);
    return i32((images[base + p / 4u] >> (8u * (p % 4u))) & 255u);
}

// Pixel (x, y) after the stroke change, 0 outside.
fn stroked_at(base: u32, x: i32, y: i32, stroke: i32) -> i32 {
    if x < 0 || y < 0 || x >= SIDE || y >= SIDE {
        return 0;
    }
    let a = source_at(base, x, y);
    if stroke == 0 {
        return a;
    }
    let b = source_at(base, x + 1, y);
    let c = source_at(base, x, y + 1);
    let d = source_at(base, x + 1, y + 1);
    if stroke < 0 {
        return min(min(a, b), min(c, d));
    }
    return max(max(a, b), max(c, d));
}

// Output pixel p of the image whose first word is `base`, under `warp`.
fn warped_pixel(base: u32, p: i32, warp: Warp) -> u32 {
    let m = vec2<i32>(warps[2u * warp.matrix], warps[2u * warp.matrix + 1u]);
    let x = p % SIDE;
    let y = p / SIDE;
    let vx = 16 * (2 * x + 1 - SIDE) - 2 * warp.shift.x;
    let vy = 16 * (2 * y + 1 - SIDE) - 2 * warp.shift.y;
    let ux = m.x * vx + m.y * vy + CENTRE_Q21;
    let uy = -m.y * vx + m.x * vy + CENTRE_Q21;
    let ix = ux >> 21u;
    let iy = uy >> 21u;
    let fx = (ux >> 13u) & 255;
    let fy = (uy >> 13u) & 255;
    let s = warp.stroke;
    let top = stroked_at(base, ix, iy, s) * (256 - fx) + stroked_at(base, ix + 1, iy, s) * fx;
    let bottom =
        stroked_at(base, ix, iy + 1, s) * (256 - fx) + stroked_at(base, ix + 1, iy + 1, s) * fx;
    return u32((top * (256 - fy) + bottom * fy + 32768) >> 16u);
}

@compute @workgroup_size(256, 1, 1)
fn augment(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    for (var w = gid.x; w < u.count * WORDS; w += groups.x * 256u) {
        let sample = w / WORDS;
        let warp = sample_warp(sample);
        let base = sample * WORDS;
        let first = i32(4u * (w % WORDS));
        var word = 0u;
        for (var k = 0; k < 4; k++) {
            word |= warped_pixel(base, first + k, warp) << (8u * u32(k));
        }
        out[w] = word;
    }
}
