//! Stroke width: MNIST's digits were written with pens whose strokes are about a tenth of
//! the digit's height. A digit drawn much thinner (a drawing program's 1-pixel pencil, a
//! fine-liner on a large photo) fades, once shrunk to 20×20, to a faint trace that the
//! model reads as a 1 or a 5. So a thin digit is thickened to MNIST's proportion first.
//!
//! The width is estimated from the distance transform (`imageproc`): across a stroke `w`
//! pixels wide, an ink pixel's chessboard distance to the nearest background pixel
//! averages about `w/4 + 1/2`. Thickening is a grey-level dilation with a disc, which keeps
//! the anti-aliased edges. Digits of ordinary width are returned untouched.

use super::ink::Grey;
use image::{GrayImage, Luma};
use imageproc::distance_transform::{distance_transform, Norm};
use imageproc::morphology::{grayscale_dilate, Mask};

/// Strokes thinner than this share of the digit's height are thickened … (MNIST's own
/// test digits, enlarged, measure 0.065–0.16 of their height with [`stroke_width`], the
/// median 0.10; a test below holds these constants to that.)
pub const THIN_SHARE: f32 = 0.05;
/// … to this share.
pub const STROKE_SHARE: f32 = 0.09;
/// An ink pixel of the cropped digit (normalised so the ink's typical strength is 1).
const INK: f32 = 0.5;

/// `crop` (the digit cut to its box, ink 1 on 0) with its strokes thickened to
/// [`STROKE_SHARE`] of its height when they are thinner than [`THIN_SHARE`] of it.
pub(super) fn normalise(crop: Grey) -> Grey {
    let height = crop.width().max(crop.height()) as f32;
    let width = stroke_width(&crop);
    if width >= THIN_SHARE * height {
        return crop;
    }
    let radius = ((STROKE_SHARE * height - width) / 2.0)
        .round()
        .clamp(1.0, 255.0) as u32;
    thicken(&crop, radius)
}

/// The mean width of the strokes in `crop`, in pixels (see the module documentation).
pub(super) fn stroke_width(crop: &Grey) -> f32 {
    let (w, h) = crop.dimensions();
    // Background is the non-zero "foreground" the transform measures distances to; a
    // one-pixel frame of it, since the crop is cut to the ink's own box.
    let background = GrayImage::from_fn(w + 2, h + 2, |x, y| {
        let inside = (1..=w).contains(&x) && (1..=h).contains(&y);
        let ink = inside && crop.get_pixel(x - 1, y - 1).0[0] > INK;
        Luma([if ink { 0 } else { 255 }])
    });
    let distance = distance_transform(&background, Norm::LInf);
    let (sum, count) = background
        .pixels()
        .zip(distance.pixels())
        .filter(|(b, _)| b.0[0] == 0)
        .fold((0.0f32, 0u32), |(s, n), (_, d)| (s + d.0[0] as f32, n + 1));
    if count == 0 {
        return 0.0;
    }
    (4.0 * (sum / count as f32 - 0.5)).max(1.0)
}

/// `crop` on a frame `radius` wide, dilated with a disc of that radius.
fn thicken(crop: &Grey, radius: u32) -> Grey {
    let (w, h) = crop.dimensions();
    let r = radius;
    let padded = GrayImage::from_fn(w + 2 * r, h + 2 * r, |x, y| {
        let inside = (r..r + w).contains(&x) && (r..r + h).contains(&y);
        let v = if inside {
            crop.get_pixel(x - r, y - r).0[0]
        } else {
            0.0
        };
        Luma([(v.clamp(0.0, 1.0) * 255.0).round() as u8])
    });
    let thick = grayscale_dilate(&padded, &Mask::disk(r as u8));
    Grey::from_fn(thick.width(), thick.height(), |x, y| {
        Luma([thick.get_pixel(x, y).0[0] as f32 / 255.0])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test digit `index` of the built-in MNIST, enlarged `scale` times, as a crop.
    fn mnist_crop(index: usize, scale: u32) -> Grey {
        let test = crate::data::Mnist::embedded(Some(1), Some(index + 1))
            .expect("built-in MNIST")
            .test;
        let small = Grey::from_fn(28, 28, |x, y| {
            Luma([test.image(index)[(y * 28 + x) as usize] as f32 / 255.0])
        });
        let big = image::imageops::resize(
            &small,
            28 * scale,
            28 * scale,
            image::imageops::FilterType::Triangle,
        );
        // Cut to the ink's box, as the preparation does.
        let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
        for (x, y, p) in big.enumerate_pixels() {
            if p.0[0] > 0.15 {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
        image::imageops::crop_imm(&big, x0, y0, x1 - x0 + 1, y1 - y0 + 1).to_image()
    }

    /// The width shares that THIN_SHARE and STROKE_SHARE are set against: no MNIST digit
    /// (enlarged, as a photo would show it) is thin enough to be thickened, and the median
    /// is at least the share thin digits are thickened to.
    #[test]
    fn mnist_digits_measure_as_the_constants_say_and_stay_untouched() {
        let mut shares = Vec::new();
        for index in (0..40).map(|n| n * 97) {
            let crop = mnist_crop(index, 8);
            shares.push(stroke_width(&crop) / crop.width().max(crop.height()) as f32);
            assert!(
                normalise(crop.clone()) == crop,
                "test digit {index} was changed"
            );
        }
        shares.sort_by(f32::total_cmp);
        let (low, median) = (shares[0], shares[shares.len() / 2]);
        assert!(
            low >= THIN_SHARE,
            "MNIST digits as thin as {low}: {shares:?}"
        );
        assert!(median >= STROKE_SHARE, "median {median}: {shares:?}");
    }

    /// A one-pixel ring is thickened to about STROKE_SHARE of its height, keeping its box
    /// centred (the frame grows by the same radius on every side).
    #[test]
    fn a_thin_ring_is_thickened_to_the_mnist_share() {
        let ring = Grey::from_fn(101, 101, |x, y| {
            let d = ((x as f32 - 50.0).powi(2) + (y as f32 - 50.0).powi(2)).sqrt();
            Luma([if (d - 48.0).abs() < 0.6 { 1.0 } else { 0.0 }])
        });
        assert!(stroke_width(&ring) < 3.0, "{}", stroke_width(&ring));
        let thick = normalise(ring.clone());
        let grown = thick.width() - ring.width();
        assert_eq!(thick.height() - ring.height(), grown);
        let share = stroke_width(&thick) / thick.width() as f32;
        assert!((0.05..0.12).contains(&share), "{share}");
    }
}
