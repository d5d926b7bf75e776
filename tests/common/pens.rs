//! Digits drawn with pens of every width, made from MNIST *test* digits: each digit is
//! enlarged, thinned to its centre line (Zhang–Suen thinning), and the line redrawn with a
//! round pen of the asked width, dark on a white canvas, as a drawing program or a
//! fine-liner on paper would leave it.

#![allow(dead_code)]

use image::imageops::{self, FilterType};
use image::{GrayImage, Luma};
use imageproc::distance_transform::Norm;
use imageproc::morphology::dilate;

/// MNIST digit `digit` (28×28, 255 = ink) redrawn on a white `side`×`side` canvas with a
/// pen `width` pixels wide (at least 1). The digit spans about 5/7 of the canvas, as in
/// MNIST's 20-of-28 frame.
pub fn pen_drawing(digit: &[u8], side: u32, width: u32) -> GrayImage {
    let small = GrayImage::from_raw(28, 28, digit.to_vec()).expect("28×28");
    let big = imageops::resize(&small, side, side, FilterType::Triangle);
    let (w, h) = (side as usize, side as usize);
    let mut ink: Vec<bool> = big.pixels().map(|p| p.0[0] >= 128).collect();
    thin(&mut ink, w, h);
    let line = GrayImage::from_fn(side, side, |x, y| {
        Luma([if ink[y as usize * w + x as usize] {
            255
        } else {
            0
        }])
    });
    let radius = (width.max(1) - 1) / 2;
    let pen = if radius == 0 {
        line
    } else {
        dilate(&line, Norm::L2, radius.min(255) as u8)
    };
    GrayImage::from_fn(side, side, |x, y| Luma([255 - pen.get_pixel(x, y).0[0]]))
}

/// Zhang–Suen thinning (Zhang and Suen, 1984) of the `w`×`h` mask `ink`, in place: strokes
/// become 8-connected lines one pixel wide along their middle.
fn thin(ink: &mut [bool], w: usize, h: usize) {
    loop {
        let mut changed = false;
        for pass in 0..2 {
            let remove: Vec<usize> = (1..h - 1)
                .flat_map(|y| (1..w - 1).map(move |x| (x, y)))
                .filter(|&(x, y)| ink[y * w + x] && removable(ink, w, x, y, pass))
                .map(|(x, y)| y * w + x)
                .collect();
            changed |= !remove.is_empty();
            for i in remove {
                ink[i] = false;
            }
        }
        if !changed {
            return;
        }
    }
}

/// Zhang–Suen's test for the ink pixel at (x, y) in pass 0 or 1.
fn removable(ink: &[bool], w: usize, x: usize, y: usize, pass: usize) -> bool {
    let at = |dx: isize, dy: isize| {
        ink[(y as isize + dy) as usize * w + (x as isize + dx) as usize] as u8
    };
    // P2 … P9: north, then clockwise.
    let p = [
        at(0, -1),
        at(1, -1),
        at(1, 0),
        at(1, 1),
        at(0, 1),
        at(-1, 1),
        at(-1, 0),
        at(-1, -1),
    ];
    let neighbours: u8 = p.iter().sum();
    let transitions = (0..8).filter(|&i| p[i] == 0 && p[(i + 1) % 8] == 1).count();
    let (p2, p4, p6, p8) = (p[0], p[2], p[4], p[6]);
    let sides = if pass == 0 {
        p2 * p4 * p6 == 0 && p4 * p6 * p8 == 0
    } else {
        p2 * p4 * p8 == 0 && p2 * p6 * p8 == 0
    };
    (2..=6).contains(&neighbours) && transitions == 1 && sides
}
