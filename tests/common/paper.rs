//! Digits on forms and stationery, made from MNIST *test* digits: written inside a drawn
//! box, on a ruled notebook line, or on grid paper. The lines are drawn as a pen or a
//! printer would (about as thick as the digit's strokes, or thinner), dark on white.

#![allow(dead_code)]

use super::pens::pen_drawing;
use image::{GrayImage, Luma};

/// Where the digit is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paper {
    /// A square box drawn around the digit, leaving a margin, lines `line` pixels wide.
    Box { line: u32 },
    /// Ruled lines across the whole page every 100 pixels; the digit sits on one.
    Ruled,
    /// Grid paper: lines every 50 pixels both ways.
    Grid,
}

/// Canvas side, in pixels.
pub const SIDE: u32 = 300;
/// The pen the digit is written with (pixels).
const PEN: u32 = 14;

/// MNIST digit `digit` written with a 14-pixel pen on `paper`, a 300×300 picture.
pub fn on_paper(digit: &[u8], paper: Paper) -> GrayImage {
    // The digit in a 240×240 box, drawn 30 px in from each side.
    let written = pen_drawing(digit, 240, PEN);
    let mut page = GrayImage::from_pixel(SIDE, SIDE, Luma([255]));
    let dark = |x: u32, y: u32| -> bool {
        match paper {
            Paper::Box { line } => {
                let (a, b) = (12, SIDE - 12);
                let on_side = |v: u32| (a..a + line).contains(&v) || (b - line..b).contains(&v);
                ((a..b).contains(&x) && on_side(y)) || ((a..b).contains(&y) && on_side(x))
            }
            Paper::Ruled => y % 100 >= 96,
            Paper::Grid => x % 50 >= 48 || y % 50 >= 48,
        }
    };
    for (x, y, p) in page.enumerate_pixels_mut() {
        let inside = (30..270).contains(&x) && (30..270).contains(&y);
        let ink = inside && written.get_pixel(x - 30, y - 30).0[0] < 128;
        if ink || dark(x, y) {
            *p = Luma([if ink { 20 } else { 60 }]);
        }
    }
    page
}
