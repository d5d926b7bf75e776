//! Data augmentation, the CPU reference (`train --augment`): each training image, each
//! epoch, moved by its own small random affine change and made a pixel thinner or
//! thicker, as torchvision's `RandomAffine` or Keras' `RandomRotation`/`RandomZoom`/
//! `RandomTranslation` do. GPU twin: `augment.wgsl` beside it.
//!
//! What each image gets is not drawn from a random stream but computed from a hash of
//! (the run's seed, the epoch, the image's index in the training set), and the image is
//! resampled in integer arithmetic only. So the CPU and every GPU make the same bytes, the
//! order the images are visited in does not matter, and a resumed run trains on what the
//! uninterrupted one would have.
//!
//! Per image, each choice uniform over its steps:
//! - rotation by −12° … 12°, in steps of 0.1°;
//! - scale 0.90 … 1.10, in steps of 0.01;
//! - shift −3 … 3 pixels on each axis, in steps of 1/16 pixel;
//! - stroke: one pixel thinner (the minimum of each 2×2 window), kept (half the images),
//!   or one pixel thicker (the maximum of each 2×2 window). The window runs right and
//!   down from its pixel, so a changed stroke also moves half a pixel up and left, small
//!   beside the shifts.
//!
//! The stroke change is applied to the 28×28 source, then the affine map: output pixel q
//! is the source bilinearly sampled at p = R(−θ)·(q − c − t)/s + c, with c the image's
//! centre and t the shift. Out-of-image samples read 0 (the background).

use crate::layers::dropout::cpu::pcg;
use rayon::prelude::*;

/// Side of the images augmented (MNIST's).
pub const SIDE: usize = 28;
/// Pixels of one image.
pub const PIXELS: usize = SIDE * SIDE;
/// Rotation steps: −12.0° … 12.0° in tenths of a degree.
pub const ROTATIONS: u32 = 241;
/// Scale steps: 0.90 … 1.10 in hundredths.
pub const SCALES: u32 = 21;
/// Shift steps on each axis: −3 … 3 pixels in sixteenths.
pub const SHIFTS: u32 = 97;
/// Stroke choices: thinner, kept, kept, thicker.
pub const STROKES: u32 = 4;
/// Mixed into the seed, so the augmentation's hashes differ from dropout's.
pub const SALT: u32 = 0x6175_6731;
/// The fixed-point unit of the matrix entries: 2¹⁶.
const MATRIX_ONE: f64 = 65_536.0;
/// The image's centre c in pixel indices (14 less half a pixel, since pixel i's centre
/// is at i + ½): 13.5, in units of 2⁻²¹ pixel.
const CENTRE_Q21: i32 = 27 << 20;

/// Whose augmentation: the run's seed (32 bits) and the 0-based epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AugmentKey {
    pub seed: u32,
    pub epoch: u32,
}

impl AugmentKey {
    /// The key of epoch `epoch` (0-based) of a run seeded `seed` (both halves count).
    pub fn new(seed: u64, epoch: usize) -> Self {
        AugmentKey {
            seed: (seed ^ (seed >> 32)) as u32,
            epoch: epoch as u32,
        }
    }
}

/// What one image gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Warp {
    /// Index into [`warp_table`]: rotation step · [`SCALES`] + scale step.
    pub matrix: u32,
    /// Shift in sixteenths of a pixel, x then y.
    pub shift: [i32; 2],
    /// −1 thinner, 0 kept, 1 thicker.
    pub stroke: i32,
}

impl Warp {
    /// No change at all (for tests): 0°, scale 1, no shift, the stroke kept.
    pub const IDENTITY: Warp = Warp {
        matrix: (ROTATIONS / 2) * SCALES + SCALES / 2,
        shift: [0, 0],
        stroke: 0,
    };
}

/// The warp of training image `sample` under `key`: a chain of PCG hashes, one per
/// choice (the WGSL kernel computes the same chain).
pub fn sample_warp(key: AugmentKey, sample: u32) -> Warp {
    let mut hash = pcg(sample.wrapping_add(pcg(key.epoch.wrapping_add(pcg(key.seed ^ SALT)))));
    let mut next = |steps: u32| {
        hash = pcg(hash);
        hash % steps
    };
    let rotation = next(ROTATIONS);
    let scale = next(SCALES);
    let centred = |step: u32| step as i32 - (SHIFTS / 2) as i32;
    let shift = [centred(next(SHIFTS)), centred(next(SHIFTS))];
    let stroke = match next(STROKES) {
        0 => -1,
        3 => 1,
        _ => 0,
    };
    Warp {
        matrix: rotation * SCALES + scale,
        shift,
        stroke,
    }
}

/// The inverse map's matrix entries for each (rotation, scale): `[cos θ / s, sin θ / s]`
/// in units of 2⁻¹⁶, rotation-major. The sine and cosine are Taylor series in +, × and ÷
/// only, which IEEE 754 rounds the same everywhere (a platform's `cos` may differ in the
/// last bit), so every build of the program makes the same table.
pub fn warp_table() -> Vec<[i32; 2]> {
    let mut table = Vec::with_capacity((ROTATIONS * SCALES) as usize);
    for rotation in 0..ROTATIONS {
        let tenths = rotation as f64 - (ROTATIONS / 2) as f64;
        let theta = tenths / 10.0 * std::f64::consts::PI / 180.0;
        let (sin, cos) = taylor_sin_cos(theta);
        for scale in 0..SCALES {
            let s = (90.0 + scale as f64) / 100.0;
            let entry = |v: f64| (v / s * MATRIX_ONE).round() as i32;
            table.push([entry(cos), entry(sin)]);
        }
    }
    table
}

/// sin x and cos x for |x| ≤ 0.25 by their Taylor series to the 16th power (the first
/// term left out is below 10⁻²⁰).
fn taylor_sin_cos(x: f64) -> (f64, f64) {
    let (mut sin, mut cos) = (0.0, 0.0);
    let mut term = 1.0; // xⁿ/n!
    for n in 0..=16 {
        match n % 4 {
            0 => cos += term,
            1 => sin += term,
            2 => cos -= term,
            _ => sin -= term,
        }
        term = term * x / (n + 1) as f64;
    }
    (sin, cos)
}

/// Every image of `images` (28×28 each) augmented under `key` into `out`: image i with
/// [`sample_warp`]`(key, i)`.
pub fn augment_set(images: &[u8], key: AugmentKey, table: &[[i32; 2]], out: &mut [u8]) {
    augment_part(images, (key, 0), table, out);
}

/// [`augment_set`] of a part of a set, whose first image is image `first` of the set.
pub fn augment_part(
    images: &[u8],
    (key, first): (AugmentKey, usize),
    table: &[[i32; 2]],
    out: &mut [u8],
) {
    assert_eq!(images.len(), out.len());
    assert_eq!(images.len() % PIXELS, 0, "images are not 28×28");
    out.par_chunks_mut(PIXELS)
        .zip(images.par_chunks(PIXELS))
        .enumerate()
        .for_each(|(i, (image_out, image))| {
            let warp = sample_warp(key, (first + i) as u32);
            augment_image(image, &warp, table, image_out)
        });
}

/// Zero pixels around the image in [`augment_image`]'s working copy: more than any
/// sample reaches (|q − c − t| ≤ 13.5·√2 + 3·√2 = 23.3 pixels, over a scale of at least
/// 0.9: 25.9 from the centre; with the rotation at most 12° the taps reach indices −9 to
/// 36, which a unit test checks over every warp), so no sample needs a bounds check of
/// its own.
const PAD: usize = 13;
/// Side of the working copy.
const PADDED: usize = SIDE + 2 * PAD;

/// One 28×28 image under `warp`.
pub fn augment_image(image: &[u8], warp: &Warp, table: &[[i32; 2]], out: &mut [u8]) {
    let stroked = stroked_padded(image, warp.stroke);
    let [cos, sin] = table[warp.matrix as usize];
    for (p, value) in out.iter_mut().enumerate() {
        let (x, y) = ((p % SIDE) as i32, (p / SIDE) as i32);
        // q − c − t in units of 1/32 pixel: pixel centres are at halves.
        let vx = 16 * (2 * x + 1 - SIDE as i32) - 2 * warp.shift[0];
        let vy = 16 * (2 * y + 1 - SIDE as i32) - 2 * warp.shift[1];
        // A 2⁻¹⁶ matrix entry times 1/32 pixel is 2⁻²¹ pixel; |each sum| < 2²⁷.
        let ux = cos * vx + sin * vy + CENTRE_Q21;
        let uy = -sin * vx + cos * vy + CENTRE_Q21;
        *value = bilinear(&stroked, ux, uy);
    }
}

/// `image` after the stroke change, in the middle of a [`PADDED`]² copy whose border is
/// 0: thinner (−1), each pixel the minimum of the 2×2 window from it right and down
/// (pixels outside the image 0); thicker (1), its maximum; else the pixel.
fn stroked_padded(image: &[u8], stroke: i32) -> [u8; PADDED * PADDED] {
    let mut source = [0u8; PADDED * PADDED];
    for (row, pixels) in image.chunks_exact(SIDE).enumerate() {
        let start = (row + PAD) * PADDED + PAD;
        source[start..start + SIDE].copy_from_slice(pixels);
    }
    if stroke == 0 {
        return source;
    }
    let mut stroked = [0u8; PADDED * PADDED];
    for y in PAD..PAD + SIDE {
        for x in PAD..PAD + SIDE {
            let i = y * PADDED + x;
            let window = [
                source[i],
                source[i + 1],
                source[i + PADDED],
                source[i + PADDED + 1],
            ];
            let (min, max) = (window.iter().min(), window.iter().max());
            stroked[i] = *if stroke < 0 { min } else { max }.unwrap_or(&0);
        }
    }
    stroked
}

/// `image` (a [`PADDED`]² copy) sampled at (ux, uy), pixel indices of the 28×28 image in
/// units of 2⁻²¹, between its four nearest pixels with weights in 256ths, rounded to the
/// nearest byte.
fn bilinear(image: &[u8; PADDED * PADDED], ux: i32, uy: i32) -> u8 {
    let (x, y) = ((ux >> 21) + PAD as i32, (uy >> 21) + PAD as i32);
    let (fx, fy) = ((ux >> 13) & 255, (uy >> 13) & 255);
    let inside = |v: i32| (0..PADDED as i32 - 1).contains(&v);
    if !(inside(x) && inside(y)) {
        // Never reached (see PAD and its test); the GPU would read each tap on its own.
        debug_assert!(false, "a sample at ({ux}, {uy}) is outside the padding");
        return 0;
    }
    let i = y as usize * PADDED + x as usize;
    let at = |i: usize| image[i] as i32;
    let top = at(i) * (256 - fx) + at(i + 1) * fx;
    let bottom = at(i + PADDED) * (256 - fx) + at(i + PADDED + 1) * fx;
    ((top * (256 - fy) + bottom * fy + (1 << 15)) >> 16) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 28×28 test image: a filled square of `value` from (x0, y0), w × h.
    fn square(x0: usize, y0: usize, (w, h): (usize, usize), value: u8) -> Vec<u8> {
        let mut image = vec![0u8; PIXELS];
        for y in y0..y0 + h {
            image[y * SIDE + x0..y * SIDE + x0 + w].fill(value);
        }
        image
    }

    fn warped(image: &[u8], warp: Warp) -> Vec<u8> {
        let mut out = vec![0; PIXELS];
        augment_image(image, &warp, &warp_table(), &mut out);
        out
    }

    #[test]
    fn the_identity_warp_returns_the_image_unchanged() {
        let image: Vec<u8> = (0..PIXELS).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(warped(&image, Warp::IDENTITY), image);
    }

    #[test]
    fn a_whole_pixel_shift_moves_the_image_by_that_pixel() {
        let image = square(10, 8, (5, 7), 200);
        let right_down = Warp {
            shift: [16, 32],
            ..Warp::IDENTITY
        };
        assert_eq!(warped(&image, right_down), square(11, 10, (5, 7), 200));
        let half = Warp {
            shift: [8, 0],
            ..Warp::IDENTITY
        };
        // Half a pixel to the right: each edge column half covered.
        let out = warped(&image, half);
        assert_eq!(out[8 * SIDE + 10], 100);
        assert_eq!(out[8 * SIDE + 11], 200);
        assert_eq!(out[8 * SIDE + 15], 100);
    }

    #[test]
    fn the_stroke_change_removes_or_adds_one_pixel_of_width() {
        let bar = square(10, 4, (3, 20), 255);
        let ink = |image: &[u8]| image.iter().filter(|&&v| v > 0).count();
        let thinner = warped(
            &bar,
            Warp {
                stroke: -1,
                ..Warp::IDENTITY
            },
        );
        let thicker = warped(
            &bar,
            Warp {
                stroke: 1,
                ..Warp::IDENTITY
            },
        );
        assert_eq!(ink(&thinner), 2 * 19);
        assert_eq!(ink(&thicker), 4 * 21);
    }

    #[test]
    fn a_rotation_turns_the_image_about_its_centre() {
        // A centred square stays centred and keeps about its ink.
        let image = square(9, 9, (10, 10), 255);
        let sum = |image: &[u8]| image.iter().map(|&v| v as u32).sum::<u32>();
        let turned = Warp {
            matrix: (ROTATIONS - 1) * SCALES + SCALES / 2, // 12°, scale 1
            ..Warp::IDENTITY
        };
        let out = warped(&image, turned);
        assert!(sum(&out).abs_diff(sum(&image)) < sum(&image) / 50);
        assert_eq!(out[14 * SIDE + 14], 255);
        // Point-symmetric, up to the rounding of the sampling weights.
        let opposite = |x: usize, y: usize| out[(27 - y) * SIDE + 27 - x];
        let symmetric = |x: usize, y: usize| out[y * SIDE + x].abs_diff(opposite(x, y)) <= 2;
        assert!((0..SIDE).all(|x| (0..SIDE).all(|y| symmetric(x, y))));
    }

    #[test]
    fn the_table_matches_the_platforms_sine_and_cosine() {
        let table = warp_table();
        for (i, [cos, sin]) in table.iter().enumerate() {
            let (rotation, scale) = (i as u32 / SCALES, i as u32 % SCALES);
            let theta = ((rotation as f64 - 120.0) / 10.0).to_radians();
            let s = 0.9 + scale as f64 / 100.0;
            assert!((*cos as f64 - theta.cos() / s * MATRIX_ONE).abs() <= 0.5 + 1e-6);
            assert!((*sin as f64 - theta.sin() / s * MATRIX_ONE).abs() <= 0.5 + 1e-6);
        }
        assert_eq!(table[Warp::IDENTITY.matrix as usize], [65_536, 0]);
    }

    /// Every matrix of the table with the extreme shifts, at the four corner pixels (the
    /// map is affine, so the corners bound the rest): the bilinear taps stay inside the
    /// padded copy.
    #[test]
    fn every_warp_samples_inside_the_padding() {
        let table = warp_table();
        let (mut lowest, mut highest) = (i32::MAX, i32::MIN);
        for [cos, sin] in &table {
            for shift in [[-48, -48], [-48, 48], [48, -48], [48, 48]] {
                for (x, y) in [(0, 0), (27, 0), (0, 27), (27, 27)] {
                    let vx = 16 * (2 * x + 1 - SIDE as i32) - 2 * shift[0];
                    let vy = 16 * (2 * y + 1 - SIDE as i32) - 2 * shift[1];
                    for u in [cos * vx + sin * vy, -sin * vx + cos * vy] {
                        let tap = (u + CENTRE_Q21) >> 21;
                        (lowest, highest) = (lowest.min(tap), highest.max(tap + 1));
                    }
                }
            }
        }
        assert!(
            lowest >= -(PAD as i32) && highest < (SIDE + PAD) as i32,
            "{lowest}..={highest}"
        );
    }

    #[test]
    fn warps_cover_their_ranges_and_depend_on_seed_epoch_and_sample() {
        let key = AugmentKey::new(42, 0);
        let warps: Vec<Warp> = (0..20_000).map(|i| sample_warp(key, i)).collect();
        let shifts: Vec<i32> = warps.iter().map(|w| w.shift[0]).collect();
        assert_eq!(shifts.iter().min(), Some(&-48));
        assert_eq!(shifts.iter().max(), Some(&48));
        let thinner = warps.iter().filter(|w| w.stroke == -1).count();
        assert!((4_500..5_500).contains(&thinner), "{thinner}");
        assert!(warps.iter().any(|w| w.matrix == 0));
        assert!(warps.iter().any(|w| w.matrix == ROTATIONS * SCALES - 1));
        let other_epoch = sample_warp(AugmentKey::new(42, 1), 0);
        let other_seed = sample_warp(AugmentKey::new(43, 0), 0);
        assert!(warps[0] != other_epoch && warps[0] != other_seed && warps[0] != warps[1]);
        assert_eq!(sample_warp(key, 0), warps[0]);
    }
}
