//! Lines that are not the digit: the box drawn around it on a form, the ruled lines of a
//! notebook, grid paper. Taken for ink, they join the digit or outweigh it, and the model
//! reads the box (as a 3, an 8, …). They are found as long straight runs in the ink mask
//! and removed before the digit is picked.
//!
//! A run is a line when it is straight, long (at least [`LONG`] of the picture's side) and
//! thin (at most [`THICK`] of it: a table edge or a shadow is a wide band, not a line), and
//! either crosses the whole picture (ruled and grid paper) or has a partner parallel
//! to it at least half the picture away and spanning the same stretch (the two sides of a
//! box). A digit's own long stroke (a 7's bar, a 1's stem) has no such partner, and does
//! not cross the picture.

use image::{GrayImage, Luma};

/// A straight run at least this share of the picture's side long may be a line.
pub const LONG: f32 = 0.6;
/// A line is at most this share of the picture thick.
const THICK: f32 = 0.06;
/// Two parallel lines at least this share of the picture apart …
const APART: f32 = 0.5;
/// … and overlapping over at least this share of the longer are the sides of a box.
const SAME: f32 = 0.8;

/// A stroke crosses a line when its ink goes on this many pixels beyond both of the line's
/// edges. (One pixel was not enough: a photographed line's mask has a ragged edge, a pixel
/// here and there beside the line, which passed for crossings all along it.)
const CROSSING: i64 = 3;
/// Pixels beside a line's long runs that are erased with it.
const BESIDE: i64 = 1;
/// Gaps a run of ink may have and still be one run, as a share of the picture's side:
/// grain and JPEG break a faint photographed line into dashes.
const GAP: f32 = 0.03;
/// A line crosses the picture when its runs come this close (a share of the side) to
/// both edges: blur and lens shading leave a photographed line's ends a little short.
const EDGE: f32 = 0.02;

/// One long straight run of ink: along a row (`horizontal`) or a column, at position
/// `at`, from `start` to `end` inclusive.
#[derive(Clone, Copy, Debug)]
struct Run {
    at: u32,
    start: u32,
    end: u32,
}

/// `mask` (255 = ink) without its lines, and how many lines (groups of adjacent runs)
/// were removed.
pub(super) fn remove(mask: &GrayImage) -> (GrayImage, usize) {
    let (w, h) = mask.dimensions();
    let ink = |x: u32, y: u32| mask.get_pixel(x, y).0[0] > 0;
    let rows = lines_of(&long_runs(h, w, |at, i| ink(i, at)), w, h);
    let columns = lines_of(&long_runs(w, h, ink), h, w);
    let mut clean = mask.clone();
    for line in &rows {
        erase(&mut clean, mask, line, |along, across| (along, across));
    }
    for line in &columns {
        erase(&mut clean, mask, line, |along, across| (across, along));
    }
    (clean, rows.len() + columns.len())
}

/// Erase `line` from `clean`: its runs' whole stretch, across its thickness and
/// [`BESIDE`] pixels either side (a photographed line's mask is ragged: rows of it too
/// broken to be long runs lie along it), except where a stroke of `mask` crosses it (ink
/// on both sides for [`CROSSING`] pixels beyond that, straight or diagonally), so a digit
/// written across a ruled line is not cut in two. `xy(along, across)` turns the line's
/// coordinates into the picture's.
fn erase(
    clean: &mut GrayImage,
    mask: &GrayImage,
    line: &[Run],
    xy: impl Fn(u32, u32) -> (u32, u32),
) {
    let (w, h) = mask.dimensions();
    let inside = |along: i64, across: i64| {
        let (x, y) = xy(along.max(0) as u32, across.max(0) as u32);
        (along >= 0 && across >= 0 && x < w && y < h).then_some((x, y))
    };
    let ink = |along: i64, across: i64| {
        inside(along, across).is_some_and(|(x, y)| mask.get_pixel(x, y).0[0] > 0)
    };
    let near = |along: i64, across: i64| (-1..=1).any(|d| ink(along + d, across));
    let first = line.iter().map(|r| r.at).min().unwrap_or(0) as i64 - BESIDE;
    let last = line.iter().map(|r| r.at).max().unwrap_or(0) as i64 + BESIDE;
    let (start, end) = extent(line);
    for along in (start..=end).map(i64::from) {
        let crossed = (1..=CROSSING).all(|k| near(along, first - k) && near(along, last + k));
        if crossed {
            continue;
        }
        for across in first..=last {
            if let Some((x, y)) = inside(along, across) {
                clean.put_pixel(x, y, Luma([0]));
            }
        }
    }
}

/// The stretch a line's runs cover together: (first, last) position along it.
fn extent(line: &[Run]) -> (u32, u32) {
    let start = line.iter().map(|r| r.start).min().unwrap_or(0);
    let end = line.iter().map(|r| r.end).max().unwrap_or(0);
    (start, end)
}

/// Every run of ink at least [`LONG`] × `length` long, along each of `count` lines of
/// `length` pixels (`ink(line, i)`).
fn long_runs(count: u32, length: u32, ink: impl Fn(u32, u32) -> bool) -> Vec<Run> {
    let min = (LONG * length as f32).ceil() as u32;
    let gap = ((GAP * length as f32) as u32).max(2);
    let mut runs = Vec::new();
    for at in 0..count {
        let mut i = 0;
        while i < length {
            if !ink(at, i) {
                i += 1;
                continue;
            }
            let start = i;
            // The run goes on over gaps of up to `gap` pixels.
            let mut end = i;
            while i < length && i <= end + gap {
                if ink(at, i) {
                    end = i;
                }
                i += 1;
            }
            i = end + 1;
            if i - start >= min {
                runs.push(Run {
                    at,
                    start,
                    end: i - 1,
                });
            }
        }
    }
    runs
}

/// The runs grouped into lines (adjacent, overlapping runs: one line's thickness), keeping
/// the lines that cross the whole `length` or have a parallel partner at least
/// [`APART`] × `across` away.
fn lines_of(runs: &[Run], length: u32, across: u32) -> Vec<Vec<Run>> {
    let mut lines: Vec<Vec<Run>> = Vec::new();
    for &run in runs {
        let joins = |line: &Vec<Run>| {
            let last = line[line.len() - 1];
            run.at <= last.at + 1 && run.start <= last.end && run.end >= last.start
        };
        match lines.iter_mut().find(|line| joins(line)) {
            Some(line) => line.push(run),
            None => lines.push(vec![run]),
        }
    }
    let edge = (EDGE * length as f32) as u32;
    let crosses = |line: &Vec<Run>| {
        let (start, end) = extent(line);
        start <= edge && end + 1 + edge >= length
    };
    let centre =
        |line: &Vec<Run>| line.iter().map(|r| r.at as f32).sum::<f32>() / line.len() as f32;
    // Partners: far apart, and spanning nearly the same stretch (a box's opposite sides);
    // a 7's bar inside a box spans less than the box's side, so it is no partner.
    let partners = |a: &Vec<Run>, b: &Vec<Run>| {
        let ((a0, a1), (b0, b1)) = (extent(a), extent(b));
        let overlap = (a1.min(b1) + 1).saturating_sub(a0.max(b0)) as f32;
        let longer = (a1 - a0).max(b1 - b0) as f32 + 1.0;
        (centre(a) - centre(b)).abs() >= APART * across as f32 && overlap >= SAME * longer
    };
    // A line is thin: a wide dark band (a table edge, a shadow) is not one.
    let thin = |line: &Vec<Run>| line.len() as f32 <= THICK * across as f32;
    let keep: Vec<bool> = lines
        .iter()
        .map(|line| {
            thin(line) && (crosses(line) || lines.iter().any(|other| partners(line, other)))
        })
        .collect();
    lines
        .into_iter()
        .zip(keep)
        .filter_map(|(line, keep)| keep.then_some(line))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(w: u32, h: u32, ink: impl Fn(u32, u32) -> bool) -> GrayImage {
        GrayImage::from_fn(w, h, |x, y| Luma([if ink(x, y) { 255 } else { 0 }]))
    }

    fn ink_count(img: &GrayImage) -> usize {
        img.pixels().filter(|p| p.0[0] > 0).count()
    }

    /// A box's four sides go; the 7 inside (a long bar, a long stem) stays whole.
    #[test]
    fn a_box_goes_and_the_digit_in_it_stays() {
        let seven = |x: u32, y: u32| {
            ((40..160).contains(&x) && (40..46).contains(&y))
                || ((150..156).contains(&x) && (40..170).contains(&y))
        };
        let side = |v: u32| (5..9).contains(&v) || (191..195).contains(&v);
        let boxed = |x: u32, y: u32| {
            ((5..195).contains(&x) && side(y)) || ((5..195).contains(&y) && side(x))
        };
        let (clean, lines) = remove(&page(200, 200, |x, y| seven(x, y) || boxed(x, y)));
        assert_eq!(lines, 4);
        assert_eq!(clean, page(200, 200, seven));
    }

    /// Without a box, nothing is removed, however long the digit's strokes.
    #[test]
    fn a_digits_long_strokes_are_not_lines() {
        let one_and_bar = |x: u32, y: u32| {
            ((10..190).contains(&x) && (20..26).contains(&y))
                || ((97..103).contains(&x) && (20..195).contains(&y))
        };
        let img = page(200, 200, one_and_bar);
        let (clean, lines) = remove(&img);
        assert_eq!((lines, ink_count(&clean)), (0, ink_count(&img)));
    }

    /// A photographed ruled line: broken into dashes, stopping a few pixels short of one
    /// edge, with stray pixels along its edges. It goes, stray pixels and all, while the
    /// stroke written across it stays whole (with the line's pixel on either side of it,
    /// as a slanted stroke's crossing is kept).
    #[test]
    fn a_dashed_ragged_line_goes_and_the_stroke_across_it_stays() {
        let line = |x: u32, y: u32| {
            let dashed = (60..62).contains(&y) && x >= 3 && x % 40 >= 4;
            let ragged = (y == 59 || y == 62) && x % 13 == 6;
            dashed || ragged
        };
        let stroke = |x: u32, y: u32| (100..104).contains(&x) && (20..100).contains(&y);
        let (clean, lines) = remove(&page(200, 100, |x, y| line(x, y) || stroke(x, y)));
        let kept = |x: u32, y: u32| line(x, y) && (99..=104).contains(&x);
        let want = page(200, 100, |x, y| stroke(x, y) || kept(x, y));
        let differ = clean
            .pixels()
            .zip(want.pixels())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!((lines, differ), (1, 0));
    }

    /// A ruled line across the page goes, even alone.
    #[test]
    fn a_line_across_the_page_goes() {
        let (clean, lines) = remove(&page(200, 100, |_, y| (60..63).contains(&y)));
        assert_eq!((lines, ink_count(&clean)), (1, 0));
    }
}
