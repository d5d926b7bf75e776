//! Finding the digit in a picture that may be a photo, the way document scanners do:
//! shrink to a working size, smooth away sensor grain (only when there is some), remove
//! the background (paper tint, uneven lighting) by subtracting a morphological opening,
//! threshold with Otsu's method, and keep the digit's connected component(s), ignoring
//! marks that touch the picture's edge (a table edge, a shadow) and specks.
//!
//! The image processing itself is `imageproc`'s (Gaussian blur, grey-level opening,
//! Otsu level, connected components, dilation); this module only chooses and combines.

use image::imageops::{self, FilterType};
use image::{GrayImage, ImageBuffer, Luma};
use imageproc::contrast::otsu_level;
use imageproc::distance_transform::Norm;
use imageproc::filter::gaussian_blur_f32;
use imageproc::morphology::{dilate, grayscale_open, Mask};
use imageproc::region_labelling::{connected_components, Connectivity};

/// A grey picture, 0..=1 per pixel.
pub(super) type Grey = ImageBuffer<Luma<f32>, Vec<f32>>;

/// Longest side the search works at; larger pictures are shrunk first (the digit ends up
/// 20 pixels tall anyway, and shrinking averages grain away).
pub const WORK_SIDE: u32 = 256;
/// Longest side of the copy the background is estimated on (the background is smooth).
const BACKGROUND_SIDE: u32 = 64;
/// Estimated grain (σ, 0–1 scale) above which the picture is smoothed before the ink is
/// looked for. Clean scans and drawings measure 0 and keep their exact grey levels.
pub const NOISE_FLOOR: f32 = 2.0 / 255.0;
/// Ink must be at least this much stronger than the background (0–1 scale).
pub const MIN_CONTRAST: f32 = 0.15;
/// After normalising (ink level → 1), pixels above this near the digit belong to its box.
pub const INK_THRESHOLD: f32 = 0.15;
/// A mark is part of the digit when its ink mass is at least this share of the largest's.
const PIECE_SHARE: f32 = 0.05;
/// … and it lies within this share of the largest mark's size from its box.
const PIECE_REACH: f32 = 0.2;
/// Another mark with at least this share of the largest's ink suggests a second digit.
const RIVAL_SHARE: f32 = 0.5;

/// The digit found: its cleaned grey levels and where it was.
pub(super) struct Found {
    /// 0 = background, 1 = ink, cropped to the digit's box; zero outside the digit's marks.
    pub crop: Grey,
    /// The box in the source picture's pixels: (x, y, width, height).
    pub source_box: (u32, u32, u32, u32),
    /// Whether the background was light (the picture was inverted).
    pub inverted: bool,
    /// Why the picture may not be one digit (empty when it looks like one).
    pub warnings: Vec<String>,
}

/// One connected mark of ink (in working pixels).
#[derive(Clone, Copy, Debug)]
struct Blob {
    area: u32,
    mass: f32,
    /// x0, y0, x1, y1 inclusive.
    bbox: (u32, u32, u32, u32),
    touches_edge: bool,
}

/// Find the digit in `grey` (source resolution); `None` when there is no ink at all.
pub(super) fn find_digit(grey: &Grey) -> Option<Found> {
    let (work, scale) = shrink(grey);
    let (mut work, inverted) = ink_bright(work);
    let noise = noise_sigma(&work);
    if noise > NOISE_FLOOR {
        // Stronger grain, wider blur; either keeps a 2–3 pixel stroke.
        work = gaussian_blur_f32(&work, if noise > 0.04 { 1.5 } else { 1.0 });
    }
    let flat = flatten(&work, &background(&work));
    let peak = flat.pixels().map(|p| p.0[0]).fold(0.0, f32::max);
    if peak < MIN_CONTRAST {
        return None;
    }
    let threshold = (otsu_level(&to_u8(&flat)) as f32 / 255.0).max(0.2 * peak);
    let mask = GrayImage::from_fn(flat.width(), flat.height(), |x, y| {
        Luma([if flat.get_pixel(x, y).0[0] > threshold {
            255
        } else {
            0
        }])
    });
    let (mask, lines) = super::lines::remove(&mask);
    let labels = connected_components(&mask, Connectivity::Eight, Luma([0u8]));
    let blobs = measure(&labels, &flat);
    let (kept, mut warnings) = choose(&blobs);
    if lines > 0 {
        warnings.push(format!(
            "{lines} long straight line{} (a box, ruled or grid paper) removed before reading the digit",
            if lines == 1 { "" } else { "s" }
        ));
    }
    let (crop, work_box) = cut_out(&flat, &labels, &kept)?;
    if let Some(note) = little_ink(&blobs, &kept, work_box, flat.dimensions(), scale) {
        warnings.insert(0, note);
    }
    let to_source = |v: u32| (v as f32 * scale).round() as u32;
    let (bx, by, bw, bh) = work_box;
    let source_box = (
        to_source(bx),
        to_source(by),
        to_source(bw).max(1),
        to_source(bh).max(1),
    );
    Some(Found {
        crop,
        source_box,
        inverted,
        warnings,
    })
}

/// Shrink to at most [`WORK_SIDE`] a side; returns the copy and source pixels per working pixel.
fn shrink(grey: &Grey) -> (Grey, f32) {
    let (w, h) = grey.dimensions();
    let longest = w.max(h);
    if longest <= WORK_SIDE {
        return (grey.clone(), 1.0);
    }
    let factor = WORK_SIDE as f32 / longest as f32;
    let nw = ((w as f32 * factor).round() as u32).max(1);
    let nh = ((h as f32 * factor).round() as u32).max(1);
    let small = imageops::resize(grey, nw, nh, FilterType::Triangle);
    (small, w as f32 / nw as f32)
}

/// Invert a picture whose background is light, so ink is bright on dark as in MNIST.
/// The background is the median of the whole picture: the digit covers less than half
/// of it, and unlike the border this is not fooled by a dark edge along one side.
fn ink_bright(mut work: Grey) -> (Grey, bool) {
    let mut values = work.as_raw().clone();
    let middle = values.len() / 2;
    let (_, median, _) = values.select_nth_unstable_by(middle, f32::total_cmp);
    let inverted = *median > 0.5;
    if inverted {
        work.pixels_mut().for_each(|p| p.0[0] = 1.0 - p.0[0]);
    }
    (work, inverted)
}

/// Sensor grain as σ on the 0–1 scale: the median absolute difference of horizontal
/// neighbours, which flat background dominates (0 for a clean drawing), scaled so that
/// Gaussian noise of σ gives σ.
pub fn noise_sigma(work: &Grey) -> f32 {
    let (w, h) = work.dimensions();
    if w < 2 {
        return 0.0;
    }
    let mut diffs: Vec<f32> = Vec::with_capacity(((w - 1) * h) as usize);
    for y in 0..h {
        for x in 0..w - 1 {
            diffs.push((work.get_pixel(x + 1, y).0[0] - work.get_pixel(x, y).0[0]).abs());
        }
    }
    let middle = diffs.len() / 2;
    let (_, median, _) = diffs.select_nth_unstable_by(middle, f32::total_cmp);
    // |a − b| of two N(0, σ²) samples has median 0.6745·√2·σ.
    *median / (0.6745 * std::f32::consts::SQRT_2)
}

/// The background under the (bright) ink: a grey-level opening with a disc wider than any
/// stroke removes the strokes and keeps the paper and its lighting, computed on a small
/// copy (the background is smooth) and blurred so the disc leaves no edges.
fn background(work: &Grey) -> Grey {
    let (w, h) = work.dimensions();
    let factor = (BACKGROUND_SIDE as f32 / w.max(h) as f32).min(1.0);
    let (sw, sh) = (
        ((w as f32 * factor).round() as u32).max(1),
        ((h as f32 * factor).round() as u32).max(1),
    );
    let small = if factor < 1.0 {
        imageops::resize(work, sw, sh, FilterType::Triangle)
    } else {
        work.clone()
    };
    let radius = (sw.max(sh) / 8).clamp(2, 16) as u8;
    let opened = grayscale_open(&to_u8(&small), &Mask::disk(radius));
    let opened: Grey = Grey::from_fn(sw, sh, |x, y| {
        Luma([opened.get_pixel(x, y).0[0] as f32 / 255.0])
    });
    let smooth = gaussian_blur_f32(&opened, radius as f32 / 2.0);
    if factor < 1.0 {
        imageops::resize(&smooth, w, h, FilterType::Triangle)
    } else {
        smooth
    }
}

/// Ink strength relative to the local background: (v − b) / (1 − b). On an inverted
/// picture 1 − b is the paper's brightness, so this divides the lighting out.
fn flatten(work: &Grey, background: &Grey) -> Grey {
    Grey::from_fn(work.width(), work.height(), |x, y| {
        let v = work.get_pixel(x, y).0[0];
        let b = background.get_pixel(x, y).0[0].min(v);
        Luma([((v - b) / (1.0 - b).max(0.05)).clamp(0.0, 1.0)])
    })
}

fn to_u8(img: &Grey) -> GrayImage {
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        Luma([(img.get_pixel(x, y).0[0].clamp(0.0, 1.0) * 255.0).round() as u8])
    })
}

/// Area, ink mass, box and edge contact of every labelled mark (index = label − 1).
fn measure(labels: &ImageBuffer<Luma<u32>, Vec<u32>>, flat: &Grey) -> Vec<Blob> {
    let (w, h) = labels.dimensions();
    let mut blobs: Vec<Blob> = Vec::new();
    for (x, y, label) in labels.enumerate_pixels() {
        let label = label.0[0] as usize;
        if label == 0 {
            continue;
        }
        if blobs.len() < label {
            blobs.resize(
                label,
                Blob {
                    area: 0,
                    mass: 0.0,
                    bbox: (u32::MAX, u32::MAX, 0, 0),
                    touches_edge: false,
                },
            );
        }
        let b = &mut blobs[label - 1];
        b.area += 1;
        b.mass += flat.get_pixel(x, y).0[0];
        b.bbox = (
            b.bbox.0.min(x),
            b.bbox.1.min(y),
            b.bbox.2.max(x),
            b.bbox.3.max(y),
        );
        b.touches_edge |= x == 0 || y == 0 || x == w - 1 || y == h - 1;
    }
    blobs
}

/// Which marks make the digit (indices into `blobs`), and a warning when another mark of
/// similar size lies apart from it (a second digit?).
fn choose(blobs: &[Blob]) -> (Vec<usize>, Vec<String>) {
    let inner: Vec<usize> = (0..blobs.len())
        .filter(|&i| blobs[i].area > 0 && !blobs[i].touches_edge)
        .collect();
    // Only marks touching the edge: the digit itself runs off the picture.
    let pool = if inner.is_empty() {
        (0..blobs.len()).filter(|&i| blobs[i].area > 0).collect()
    } else {
        inner
    };
    let Some(&main) = pool
        .iter()
        .max_by(|&&a, &&b| blobs[a].mass.total_cmp(&blobs[b].mass))
    else {
        return (Vec::new(), Vec::new());
    };
    let m = blobs[main];
    let size = (m.bbox.2 - m.bbox.0).max(m.bbox.3 - m.bbox.1) as f32 + 1.0;
    let reach = (size * PIECE_REACH).ceil() as i64;
    let near = |b: &Blob| {
        let (x0, y0, x1, y1) = m.bbox;
        b.bbox.0 as i64 <= x1 as i64 + reach
            && b.bbox.2 as i64 >= x0 as i64 - reach
            && b.bbox.1 as i64 <= y1 as i64 + reach
            && b.bbox.3 as i64 >= y0 as i64 - reach
    };
    let kept: Vec<usize> = pool
        .iter()
        .copied()
        .filter(|&i| i == main || (blobs[i].mass >= PIECE_SHARE * m.mass && near(&blobs[i])))
        .collect();
    let rivals = pool
        .iter()
        .filter(|&&i| !kept.contains(&i) && blobs[i].mass >= RIVAL_SHARE * m.mass)
        .count();
    let mut warnings = Vec::new();
    if rivals > 0 {
        warnings.push(format!(
            "{} separate marks of similar size: the picture may hold more than one digit (only the largest is read)",
            rivals + 1
        ));
    }
    (kept, warnings)
}

/// The kept marks (and the faint pixels right around them, their anti-aliased edges),
/// normalised so the ink's typical strength is 1, cropped to their box; `None` if empty.
fn cut_out(
    flat: &Grey,
    labels: &ImageBuffer<Luma<u32>, Vec<u32>>,
    kept: &[usize],
) -> Option<(Grey, (u32, u32, u32, u32))> {
    let (w, h) = flat.dimensions();
    let is_kept = |l: u32| l > 0 && kept.contains(&(l as usize - 1));
    let core = GrayImage::from_fn(w, h, |x, y| {
        Luma([if is_kept(labels.get_pixel(x, y).0[0]) {
            255
        } else {
            0
        }])
    });
    let near = dilate(&core, Norm::LInf, 1);
    let mut strengths: Vec<f32> = core
        .enumerate_pixels()
        .filter(|(_, _, c)| c.0[0] > 0)
        .map(|(x, y, _)| flat.get_pixel(x, y).0[0])
        .collect();
    if strengths.is_empty() {
        return None;
    }
    // A high percentile, not the maximum: one bright grain must not dim the whole digit.
    let index = (strengths.len() - 1) * 95 / 100;
    let (_, level, _) = strengths.select_nth_unstable_by(index, f32::total_cmp);
    let level = level.max(MIN_CONTRAST);
    let ink = Grey::from_fn(w, h, |x, y| {
        let keep = near.get_pixel(x, y).0[0] > 0;
        Luma([if keep {
            (flat.get_pixel(x, y).0[0] / level).min(1.0)
        } else {
            0.0
        }])
    });
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in ink.enumerate_pixels() {
        if p.0[0] > INK_THRESHOLD {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    if x0 == u32::MAX {
        return None;
    }
    let (bw, bh) = (x1 - x0 + 1, y1 - y0 + 1);
    let crop = imageops::crop_imm(&ink, x0, y0, bw, bh).to_image();
    Some((crop, (x0, y0, bw, bh)))
}

/// A warning when the digit found is a tiny speck of the picture.
fn little_ink(
    blobs: &[Blob],
    kept: &[usize],
    (_, _, bw, bh): (u32, u32, u32, u32),
    (w, h): (u32, u32),
    scale: f32,
) -> Option<String> {
    let area: u32 = kept.iter().map(|&i| blobs[i].area).sum();
    let tiny = bw.max(bh) * 16 < w.max(h) || area < 12;
    tiny.then(|| {
        let px = |v: u32| (v as f32 * scale).round() as u32;
        format!(
            "very little ink: one mark of about {}×{} pixels in a {}×{} picture; it may not show a digit",
            px(bw),
            px(bh),
            px(w),
            px(h)
        )
    })
}
