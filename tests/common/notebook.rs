//! Pencil on notebook paper, photographed, made from MNIST *test* digits: the digit
//! redrawn along its centre line with a pencil 2–4% of its height wide, in graphite grey
//! with the grain a pencil leaves (the stroke's darkness varies and breaks here and
//! there), on off-white paper with light-blue ruled lines and a red margin line, then lit
//! unevenly, blurred a little, given sensor grain and stored as a phone's JPEG. Every
//! picture is determined by its seed.

#![allow(dead_code)]

use super::pens::pen_drawing;
use image::{Rgb, RgbImage};
use imageproc::filter::gaussian_blur_f32;
use imageproc::noise::gaussian_noise_mut;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The picture's side, in pixels, and the digit's box in it.
const SIDE: u32 = 320;
const DIGIT_BOX: u32 = 220;

/// A photo of MNIST digit `digit` written in pencil on a ruled notebook page.
pub fn pencil_on_notebook(digit: &[u8], seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // MNIST digits fill 20 of 28 pixels: the pencil is 2–4% of that height.
    let tall = DIGIT_BOX as f32 * 20.0 / 28.0;
    let width = (tall * rng.random_range(0.02..0.04)).round().max(2.0) as u32;
    let drawn = pen_drawing(digit, DIGIT_BOX, width);
    let graphite: f32 = rng.random_range(70.0..130.0);
    let paper = [
        rng.random_range(235.0..252.0),
        rng.random_range(232.0..250.0),
        rng.random_range(215.0..242.0),
    ];
    // Ruled lines every 60–80 pixels, a margin line 40–70 pixels in from the left.
    let (rule, first_rule) = (rng.random_range(60..=80), rng.random_range(10..40));
    let margin = rng.random_range(40..70);
    let (ox, oy) = (
        (SIDE - DIGIT_BOX) / 2 + rng.random_range(0..=20),
        (SIDE - DIGIT_BOX) / 2 + rng.random_range(0..=10),
    );
    let shading: f32 = rng.random_range(0.1..0.3);
    let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let mut img = RgbImage::from_fn(SIDE, SIDE, |x, y| {
        let mut colour = paper;
        if y >= first_rule && (y - first_rule) % rule < 2 {
            colour = [150.0, 185.0, 235.0];
        }
        if (margin..margin + 2).contains(&x) {
            colour = [225.0, 120.0, 120.0];
        }
        let inside = (ox..ox + DIGIT_BOX).contains(&x) && (oy..oy + DIGIT_BOX).contains(&y);
        if inside && drawn.get_pixel(x - ox, y - oy).0[0] < 128 {
            // Graphite: grey, darker or lighter grain by grain, sometimes skipping.
            let grain: f32 = rng.random_range(-25.0..25.0);
            if rng.random_bool(0.92) {
                let g = (graphite + grain).clamp(30.0, 200.0);
                colour = [g, g, g + 4.0];
            }
        }
        let (u, v) = (x as f32 / SIDE as f32, y as f32 / SIDE as f32);
        let t = 0.5 + 0.5 * ((u - 0.5) * angle.cos() + (v - 0.5) * angle.sin()) * 1.4;
        let light = 1.0 - shading * t.clamp(0.0, 1.0);
        Rgb(colour.map(|c| (c * light).clamp(0.0, 255.0) as u8))
    });
    img = gaussian_blur_f32(&img, rng.random_range(0.5..1.0));
    gaussian_noise_mut(&mut img, 0.0, rng.random_range(6.0..12.0), rng.random());
    img
}
