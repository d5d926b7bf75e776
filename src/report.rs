//! The pictures a training run leaves behind: the Keras tutorial's grid of test digits
//! with their predicted labels ([`draw_predictions`]), the loss/accuracy curves
//! ([`draw_curves`]) and the confusion matrix ([`confusion_matrix`], [`format_confusion`],
//! [`draw_confusion`]).
//!
//! Text is rendered with the bundled DejaVu Sans font (`assets/fonts/`, compiled into the
//! binary), so nothing depends on system font libraries or the working directory. Every
//! picture is encoded in memory and written with [`write_atomic`]: a crash never leaves a
//! half-written file and never destroys the previous one.
//!
//! The output format follows the file extension: `.png` (recommended) or `.jpg`/`.jpeg`.

use crate::backend::EpochRecord;
use crate::data::Dataset;
use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use image::{ImageFormat, Rgb, RgbImage};
use plotters::style::{BLACK as BLACK_PLOT, WHITE as WHITE_PLOT};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use thiserror::Error;

pub use crate::fsutil::write_atomic;

/// DejaVu Sans (Bitstream Vera licence, see `assets/fonts/DejaVuSans-LICENSE.txt`).
pub const FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("{path}: cannot write: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: cannot encode the picture: {message}")]
    Encode { path: PathBuf, message: String },
    #[error("{path}: unsupported picture format (use a .png, .jpg or .jpeg file name)")]
    UnsupportedFormat { path: PathBuf },
    #[error("{path}: cannot draw: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("{path}: plotting failed: {message}")]
    Plot { path: PathBuf, message: String },
}

// ---------------------------------------------------------------------------------------
// Predictions grid
// ---------------------------------------------------------------------------------------

/// Side of an MNIST image in source pixels.
pub const DIGIT_SIZE: u32 = 28;
/// Each source pixel is drawn as a `TILE_SCALE × TILE_SCALE` block.
pub const TILE_SCALE: u32 = 3;
/// Side of a drawn digit in picture pixels (`DIGIT_SIZE * TILE_SCALE`).
pub const DIGIT_PX: u32 = DIGIT_SIZE * TILE_SCALE;
/// Tiles per row (and at most this many rows: 100 images).
pub const GRID_COLUMNS: u32 = 10;
/// Most images drawn by [`draw_predictions`].
pub const GRID_IMAGES: usize = 100;
/// Width of one tile: the digit plus 8 px of white on each side.
pub const TILE_WIDTH: u32 = DIGIT_PX + 16;
/// Height of the label strip at the top of each tile, above the digit.
pub const LABEL_HEIGHT: u32 = 22;
/// Height of one tile: label strip, digit and 8 px of space below.
pub const TILE_HEIGHT: u32 = LABEL_HEIGHT + DIGIT_PX + 8;
/// White margin left and right of the grid, and below it.
pub const MARGIN: u32 = 10;
/// Height of the title strip above the grid.
pub const TITLE_HEIGHT: u32 = 40;
/// Pixel size of the tile labels.
const LABEL_FONT_PX: f32 = 16.0;
const TITLE_FONT_PX: f32 = 20.0;

/// Colour of a correct prediction's label.
pub const CORRECT_COLOR: Rgb<u8> = Rgb([0, 0, 0]);
/// Colour of a wrong prediction's label (`"3 (true 5)"`).
pub const WRONG_COLOR: Rgb<u8> = Rgb([210, 0, 0]);
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const FRAME_COLOR: Rgb<u8> = Rgb([200, 200, 200]);

/// Top-left corner of tile `i` (0-based position in the grid, row-major, 10 per row).
/// The tile is `TILE_WIDTH × TILE_HEIGHT`; its top `LABEL_HEIGHT` rows hold the label.
pub fn tile_origin(i: usize) -> (u32, u32) {
    let (col, row) = (i as u32 % GRID_COLUMNS, i as u32 / GRID_COLUMNS);
    (MARGIN + col * TILE_WIDTH, TITLE_HEIGHT + row * TILE_HEIGHT)
}

/// Top-left corner of the digit of tile `i`: source pixel `(x, y)` of the image covers
/// picture pixels `digit_origin(i) + (x·TILE_SCALE .. (x+1)·TILE_SCALE, same for y)`,
/// drawn as grey `255 − value` (dark ink on white), see [`digit_shade`].
pub fn digit_origin(i: usize) -> (u32, u32) {
    let (x, y) = tile_origin(i);
    (x + (TILE_WIDTH - DIGIT_PX) / 2, y + LABEL_HEIGHT)
}

/// Rectangle `(x, y, width, height)` holding the label text of tile `i`: the top
/// `LABEL_HEIGHT − 2` rows of the tile (the row just above the digit is its grey frame).
pub fn label_rect(i: usize) -> (u32, u32, u32, u32) {
    let (x, y) = tile_origin(i);
    (x, y, TILE_WIDTH, LABEL_HEIGHT - 2)
}

/// The colour a source pixel value (0 = background, 255 = ink) is drawn with.
pub fn digit_shade(value: u8) -> Rgb<u8> {
    let v = 255 - value;
    Rgb([v, v, v])
}

/// Size `(width, height)` of the picture [`draw_predictions`] makes for `count` images:
/// 10 tiles wide, `ceil(count / 10)` tiles high.
pub fn predictions_size(count: usize) -> (u32, u32) {
    let rows = (count.clamp(1, GRID_IMAGES) as u32).div_ceil(GRID_COLUMNS);
    (
        2 * MARGIN + GRID_COLUMNS * TILE_WIDTH,
        TITLE_HEIGHT + rows * TILE_HEIGHT + MARGIN,
    )
}

/// The Keras tutorial's figure: the (up to) 100 test images starting at `offset` in a
/// 10-wide grid, each with its predicted label above it. A wrong prediction's label is
/// red and names the true label (`"3 (true 5)"`); correct ones are black.
///
/// `predictions` holds either one prediction per test image (`predictions[i]` for
/// `test.image(i)`, length `test.len()`), or exactly one per drawn image (the slice that
/// starts at `offset`). Layout: see [`tile_origin`], [`digit_origin`], [`label_rect`].
pub fn draw_predictions(
    test: &Dataset,
    offset: usize,
    predictions: &[u8],
    path: &Path,
) -> Result<(), ReportError> {
    let count = drawn_count(test, offset, predictions).map_err(|problem| ReportError::Invalid {
        path: path.to_path_buf(),
        problem,
    })?;
    let prediction = |k: usize| -> u8 {
        if predictions.len() == test.len() {
            predictions[offset + k]
        } else {
            predictions[k]
        }
    };
    let (width, height) = predictions_size(count);
    let mut img = RgbImage::from_pixel(width, height, WHITE);
    let correct = (0..count)
        .filter(|&k| prediction(k) == test.labels[offset + k])
        .count();
    draw_predictions_title(&mut img, offset, count, correct);
    for k in 0..count {
        let i = offset + k;
        draw_digit_tile(&mut img, k, test.image(i));
        draw_tile_label(&mut img, k, prediction(k), test.labels[i]);
    }
    save(&img, path)
}

/// How many images [`draw_predictions`] draws from `offset` on, or why it cannot.
fn drawn_count(test: &Dataset, offset: usize, predictions: &[u8]) -> Result<usize, String> {
    if (test.rows, test.cols) != (DIGIT_SIZE as usize, DIGIT_SIZE as usize) {
        return Err(format!(
            "images are {}×{}, expected {DIGIT_SIZE}×{DIGIT_SIZE}",
            test.rows, test.cols
        ));
    }
    if test.is_empty() {
        return Err("the test set is empty".into());
    }
    if offset >= test.len() {
        return Err(format!(
            "offset {offset} is past the end of the test set ({} images)",
            test.len()
        ));
    }
    let count = (test.len() - offset).min(GRID_IMAGES);
    if predictions.len() != test.len() && predictions.len() != count {
        return Err(format!(
            "{} predictions: expected one per test image ({}) or one per drawn image ({count})",
            predictions.len(),
            test.len()
        ));
    }
    Ok(count)
}

/// The title strip above the grid: which test images it shows and how many of their
/// predictions are right.
fn draw_predictions_title(img: &mut RgbImage, offset: usize, count: usize, correct: usize) {
    let title = format!(
        "Test images {}–{}: {correct} of {count} predicted correctly",
        offset,
        offset + count - 1
    );
    let title_y = (TITLE_HEIGHT as f32 - TITLE_FONT_PX) / 2.0;
    let centre = img.width() as f32 / 2.0;
    draw_text_centered(img, &title, TITLE_FONT_PX, centre, title_y, CORRECT_COLOR);
}

/// Tile `k`'s digit, scaled up, inside a light frame that shows the white background's
/// extent.
fn draw_digit_tile(img: &mut RgbImage, k: usize, pixels: &[u8]) {
    let (dx, dy) = digit_origin(k);
    draw_rect_outline(img, dx - 1, dy - 1, DIGIT_PX + 2, DIGIT_PX + 2, FRAME_COLOR);
    for y in 0..DIGIT_SIZE {
        for x in 0..DIGIT_SIZE {
            let shade = digit_shade(pixels[(y * DIGIT_SIZE + x) as usize]);
            for sy in 0..TILE_SCALE {
                for sx in 0..TILE_SCALE {
                    img.put_pixel(dx + x * TILE_SCALE + sx, dy + y * TILE_SCALE + sy, shade);
                }
            }
        }
    }
}

/// Tile `k`'s label: the prediction, or in red the prediction and the true digit.
fn draw_tile_label(img: &mut RgbImage, k: usize, predicted: u8, truth: u8) {
    let (text, color) = if predicted == truth {
        (predicted.to_string(), CORRECT_COLOR)
    } else {
        (format!("{predicted} (true {truth})"), WRONG_COLOR)
    };
    let (lx, ly, lw, lh) = label_rect(k);
    let px = fit_font_px(&text, LABEL_FONT_PX, lw as f32 - 4.0);
    let top = ly as f32 + (lh as f32 - px) / 2.0;
    draw_text_centered(img, &text, px, lx as f32 + lw as f32 / 2.0, top, color);
}

// ---------------------------------------------------------------------------------------
// Training curves (plotters)
// ---------------------------------------------------------------------------------------

/// Size `(width, height)` of the picture [`draw_curves`] makes.
pub const CURVES_SIZE: (u32, u32) = (1200, 480);

const TRAIN_COLOR: plotters::style::RGBColor = plotters::style::RGBColor(31, 119, 180);
const VAL_COLOR: plotters::style::RGBColor = plotters::style::RGBColor(255, 127, 14);

/// Register the bundled font with plotters as "sans-serif" (once per process).
fn register_plotters_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            // plotters draws text through the browser's canvas on wasm32 and offers no
            // font registry there; the page draws its own curves, so none is needed.
            #[cfg(target_arch = "wasm32")]
            return Err("plotters has no font registry in a browser".to_string());
            #[cfg(not(target_arch = "wasm32"))]
            plotters::style::register_font(
                "sans-serif",
                plotters::style::FontStyle::Normal,
                FONT_BYTES,
            )
            .map_err(|_| "the bundled font cannot be loaded".to_string())
        })
        .clone()
}

/// Loss and accuracy per epoch, training and validation: two panels side by side
/// (loss | accuracy), x axis "epoch", with a legend. Works for a single epoch (drawn as
/// points); non-finite values (a diverged run) are left out of the lines.
pub fn draw_curves(history: &[EpochRecord], path: &Path) -> Result<(), ReportError> {
    use plotters::prelude::*;

    if history.is_empty() {
        return Err(ReportError::Invalid {
            path: path.to_path_buf(),
            problem: "no epochs to plot".into(),
        });
    }
    let plot_err = |message: String| ReportError::Plot {
        path: path.to_path_buf(),
        message,
    };
    register_plotters_font().map_err(|e| plot_err(e.to_string()))?;
    let (width, height) = CURVES_SIZE;
    let mut buffer = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE_PLOT)
            .map_err(|e| plot_err(e.to_string()))?;
        let panels = root.split_evenly((1, 2));
        let specs: [CurveSpec; 2] = [
            ("Loss", "loss", |r| r.loss, |r| r.val_loss),
            ("Accuracy", "accuracy", |r| r.accuracy, |r| r.val_accuracy),
        ];
        for (panel, spec) in panels.iter().zip(specs) {
            draw_curve_panel(panel, history, spec).map_err(plot_err)?;
        }
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    let img = RgbImage::from_raw(width, height, buffer).expect("buffer has width×height×3 bytes");
    save(&img, path)
}

/// One panel of `curves.png`: (caption, y-axis name, training value, validation value).
type CurveSpec = (
    &'static str,
    &'static str,
    fn(&EpochRecord) -> f64,
    fn(&EpochRecord) -> f64,
);

type Panel<'a> =
    plotters::drawing::DrawingArea<plotters::prelude::BitMapBackend<'a>, plotters::coord::Shift>;

/// A panel's chart: epochs across, the values of one [`CurveSpec`] up.
type Chart<'c, 'b> = plotters::chart::ChartContext<
    'c,
    plotters::prelude::BitMapBackend<'b>,
    plotters::coord::cartesian::Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::types::RangedCoordf64,
    >,
>;

/// Draw one panel: the training and validation curves of `spec` over the epochs, with
/// readable ticks (integer epochs; scientific y labels when the values are huge).
fn draw_curve_panel(panel: &Panel, history: &[EpochRecord], spec: CurveSpec) -> Result<(), String> {
    let (_, y_desc, train, val) = spec;
    let mut chart = curve_axes(panel, history, spec)?;
    for (name, get, color) in [
        ("train", train, TRAIN_COLOR),
        ("validation", val, VAL_COLOR),
    ] {
        draw_curve(&mut chart, history, name, get, color)?;
    }
    draw_curve_legend(&mut chart, y_desc)
}

/// The panel's caption, axes and mesh, the y range fitted to the finite values of `spec`.
fn curve_axes<'c, 'b>(
    panel: &Panel<'b>,
    history: &[EpochRecord],
    spec: CurveSpec,
) -> Result<Chart<'c, 'b>, String> {
    use plotters::prelude::*;
    let (caption, y_desc, train, val) = spec;
    let (x_lo, x_hi) = x_range(
        history[0].epoch as f64,
        history[history.len() - 1].epoch as f64,
    );
    let values: Vec<f64> = history
        .iter()
        .flat_map(|r| [train(r), val(r)])
        .filter(|v| v.is_finite())
        .collect();
    let (y_lo, y_hi) = y_range(&values, y_desc == "accuracy");
    let y_span = y_hi - y_lo;
    let mut chart = ChartBuilder::on(panel)
        .caption(caption, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_labels(history.len().clamp(1, 10) + 2)
        .x_label_formatter(&epoch_tick_label)
        .y_label_formatter(&|y| tick_label(*y, y_span))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(WHITE_PLOT.mix(0.0))
        .bold_line_style(BLACK_PLOT.mix(0.12))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(chart)
}

/// An x tick's label: the epoch at whole epochs, nothing between them.
fn epoch_tick_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{}", x.round() as i64)
    } else {
        String::new()
    }
}

/// One curve, `get` of each epoch, as a line through dots; non-finite values are left out.
fn draw_curve(
    chart: &mut Chart,
    history: &[EpochRecord],
    name: &str,
    get: fn(&EpochRecord) -> f64,
    color: plotters::style::RGBColor,
) -> Result<(), String> {
    use plotters::prelude::*;
    let points: Vec<(f64, f64)> = history
        .iter()
        .map(|r| (r.epoch as f64, get(r)))
        .filter(|(_, v)| v.is_finite())
        .collect();
    chart
        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The legend, in the corner the curves usually leave free: a falling loss's upper
/// right, a rising accuracy's lower right.
fn draw_curve_legend<'c, 'b: 'c>(chart: &mut Chart<'c, 'b>, y_desc: &str) -> Result<(), String> {
    use plotters::prelude::*;
    let corner = if y_desc == "loss" {
        SeriesLabelPosition::UpperRight
    } else {
        SeriesLabelPosition::LowerRight
    };
    chart
        .configure_series_labels()
        .position(corner)
        .background_style(WHITE_PLOT.mix(0.85))
        .border_style(BLACK_PLOT.mix(0.4))
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())
}

/// The epoch axis: the first and last epoch with a margin, so neither tick sits on the
/// plot's edge (a single epoch gets a unit-wide axis).
pub fn x_range(first: f64, last: f64) -> (f64, f64) {
    let pad = ((last - first) * 0.04).max(0.3);
    (first - pad, last + pad)
}

/// A y tick label of at most 8 characters: scientific notation for huge or tiny values
/// (a diverging loss), otherwise as many decimals as the axis' `span` needs.
pub fn tick_label(y: f64, span: f64) -> String {
    let magnitude = y.abs();
    if magnitude >= 1e5 || (magnitude > 0.0 && magnitude < 1e-3 && span < 1e-2) {
        return format!("{y:.1e}");
    }
    if magnitude < span * 1e-9 {
        return "0".into();
    }
    // About five ticks: a tick step of span/5 needs this many decimals.
    let decimals = (-(span / 5.0).log10()).ceil().clamp(0.0, 4.0) as usize;
    format!("{y:.decimals$}")
}

/// A y range that shows all `values` with a little headroom; loss starts at 0,
/// accuracy ends at 1 (when the values allow it).
fn y_range(values: &[f64], accuracy: bool) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let (lo, hi) = if accuracy && (0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi) {
        let pad = ((hi - lo) * 0.1).max(0.005);
        ((lo - pad).max(0.0), (hi + pad).min(1.0))
    } else if !accuracy && lo >= 0.0 {
        (0.0, hi * 1.08)
    } else {
        let pad = ((hi - lo) * 0.08).max(1e-3);
        (lo - pad, hi + pad)
    };
    if hi - lo < 1e-9 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

// ---------------------------------------------------------------------------------------
// Confusion matrix
// ---------------------------------------------------------------------------------------

/// Counts of (true label, predicted label): `m[t][p]`, rows = true, columns = predicted.
///
/// # Panics
/// If the slices differ in length or hold a value above 9.
pub fn confusion_matrix(labels: &[u8], predictions: &[u8]) -> [[u32; 10]; 10] {
    assert_eq!(
        labels.len(),
        predictions.len(),
        "confusion_matrix: {} labels but {} predictions",
        labels.len(),
        predictions.len()
    );
    let mut m = [[0u32; 10]; 10];
    for (&t, &p) in labels.iter().zip(predictions) {
        assert!(
            t < 10 && p < 10,
            "confusion_matrix: class out of range (true {t}, predicted {p})"
        );
        m[t as usize][p as usize] += 1;
    }
    m
}

/// The matrix as an aligned text table: a header line (`true\pred 0 1 … 9`) and one line
/// per true label, 11 lines in all, each ending in a newline.
pub fn format_confusion(m: &[[u32; 10]; 10]) -> String {
    let max = m.iter().flatten().copied().max().unwrap_or(0);
    let width = max.to_string().len().max(1) + 2;
    let corner = "true\\pred";
    let mut out = corner.to_string();
    for p in 0..10 {
        out.push_str(&format!("{p:>width$}"));
    }
    out.push('\n');
    for (t, row) in m.iter().enumerate() {
        out.push_str(&format!("{t:>w$}", w = corner.len()));
        for count in row {
            out.push_str(&format!("{count:>width$}"));
        }
        out.push('\n');
    }
    out
}

/// Side of one heat-map cell in [`draw_confusion`].
pub const CELL_PX: u32 = 52;
/// Left and top offset of the cell grid in [`draw_confusion`]; cell (t, p) has its
/// top-left corner at `(CONFUSION_LEFT + p·CELL_PX, CONFUSION_TOP + t·CELL_PX)`.
pub const CONFUSION_LEFT: u32 = 80;
pub const CONFUSION_TOP: u32 = 90;
/// Size `(width, height)` of the picture [`draw_confusion`] makes.
pub const CONFUSION_SIZE: (u32, u32) = (
    CONFUSION_LEFT + 10 * CELL_PX + 20,
    CONFUSION_TOP + 10 * CELL_PX + 20,
);

/// A heat map of the matrix: rows = true label (axis "true"), columns = predicted label
/// (axis "predicted"), each cell shaded by its share of its row (white → dark blue) and
/// showing its count.
pub fn draw_confusion(m: &[[u32; 10]; 10], path: &Path) -> Result<(), ReportError> {
    let (width, height) = CONFUSION_SIZE;
    let mut img = RgbImage::from_pixel(width, height, WHITE);
    draw_confusion_titles(&mut img, m);
    for t in 0..10u32 {
        let row = &m[t as usize];
        let row_total: u32 = row.iter().sum();
        let y = CONFUSION_TOP + t * CELL_PX;
        let label_top = y as f32 + (CELL_PX as f32 - 16.0) / 2.0;
        let label_x = CONFUSION_LEFT as f32 - 18.0;
        draw_text_centered(&mut img, &t.to_string(), 16.0, label_x, label_top, BLACK);
        for p in 0..10u32 {
            let x = CONFUSION_LEFT + p * CELL_PX;
            if t == 0 {
                let centre = x as f32 + CELL_PX as f32 / 2.0;
                let top = CONFUSION_TOP as f32 - 24.0;
                draw_text_centered(&mut img, &p.to_string(), 16.0, centre, top, BLACK);
            }
            draw_confusion_cell(&mut img, (x, y), row[p as usize], row_total);
        }
    }
    save(&img, path)
}

/// The heat map's title (how many predictions are right) and its axis names.
fn draw_confusion_titles(img: &mut RgbImage, m: &[[u32; 10]; 10]) {
    let total: u64 = m.iter().flatten().map(|&c| c as u64).sum();
    let correct: u64 = (0..10).map(|i| m[i][i] as u64).sum();
    let title = if total > 0 {
        format!(
            "Confusion matrix: {correct} of {total} correct ({:.2}%)",
            100.0 * correct as f64 / total as f64
        )
    } else {
        "Confusion matrix (no samples)".to_string()
    };
    draw_text_centered(img, &title, 20.0, img.width() as f32 / 2.0, 10.0, BLACK);
    let grid_cx = CONFUSION_LEFT as f32 + 5.0 * CELL_PX as f32;
    let grid_cy = CONFUSION_TOP as f32 + 5.0 * CELL_PX as f32;
    draw_text_centered(img, "predicted", 17.0, grid_cx, 42.0, BLACK);
    draw_text_vertical(img, "true", 17.0, 12, grid_cy, BLACK);
}

/// The cell with top-left corner `(x, y)`: shaded by `count`'s share of its row's
/// `row_total`, framed, with the count written in it.
fn draw_confusion_cell(img: &mut RgbImage, (x, y): (u32, u32), count: u32, row_total: u32) {
    let share = if row_total > 0 {
        count as f32 / row_total as f32
    } else {
        0.0
    };
    // sqrt so that small off-diagonal shares are still visible.
    let shade = share.sqrt();
    let lerp = |a: u8, b: u8| (a as f32 + (b as f32 - a as f32) * shade).round() as u8;
    let fill = Rgb([lerp(255, 8), lerp(255, 48), lerp(255, 107)]);
    fill_rect(img, x, y, CELL_PX, CELL_PX, fill);
    draw_rect_outline(img, x, y, CELL_PX + 1, CELL_PX + 1, FRAME_COLOR);
    let text_color = if shade > 0.55 { WHITE } else { BLACK };
    let text = count.to_string();
    let px = fit_font_px(&text, 14.0, CELL_PX as f32 - 4.0);
    let centre = x as f32 + CELL_PX as f32 / 2.0;
    let top = y as f32 + (CELL_PX as f32 - px) / 2.0;
    draw_text_centered(img, &text, px, centre, top, text_color);
}

// ---------------------------------------------------------------------------------------
// Text and shapes on an RgbImage
// ---------------------------------------------------------------------------------------

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| {
        FontRef::try_from_slice(FONT_BYTES).expect("the bundled font is a valid TrueType file")
    })
}

/// Advance width of `text` at `px` pixels.
fn text_width(text: &str, px: f32) -> f32 {
    let font = font().as_scaled(PxScale::from(px));
    let mut width = 0.0;
    let mut prev = None;
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(p) = prev {
            width += font.kern(p, id);
        }
        width += font.h_advance(id);
        prev = Some(id);
    }
    width
}

/// The largest size up to `px` at which `text` fits in `max_width`.
fn fit_font_px(text: &str, px: f32, max_width: f32) -> f32 {
    let w = text_width(text, px);
    if w <= max_width {
        px
    } else {
        (px * max_width / w).max(6.0)
    }
}

/// Draw `text` with its left edge at `x` and the top of its line box at `top`
/// (anti-aliased, blended over what is there; clipped to the picture).
fn draw_text(img: &mut RgbImage, text: &str, px: f32, x: f32, top: f32, color: Rgb<u8>) {
    let font = font().as_scaled(PxScale::from(px));
    let baseline = top + font.ascent();
    let mut caret = x;
    let mut prev = None;
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(p) = prev {
            caret += font.kern(p, id);
        }
        let glyph = id.with_scale_and_position(px, point(caret, baseline));
        caret += font.h_advance(id);
        prev = Some(id);
        if let Some(outlined) = font.outline_glyph(glyph) {
            let bounds = outlined.px_bounds();
            outlined.draw(|gx, gy, coverage| {
                let px_x = bounds.min.x as i64 + gx as i64;
                let px_y = bounds.min.y as i64 + gy as i64;
                blend(img, px_x, px_y, color, coverage);
            });
        }
    }
}

fn draw_text_centered(
    img: &mut RgbImage,
    text: &str,
    px: f32,
    center_x: f32,
    top: f32,
    color: Rgb<u8>,
) {
    let w = text_width(text, px);
    draw_text(img, text, px, center_x - w / 2.0, top, color);
}

/// `text` rotated a quarter turn counter-clockwise (reading bottom to top), its line box
/// starting at column `left` and centred vertically on `center_y`.
fn draw_text_vertical(
    img: &mut RgbImage,
    text: &str,
    px: f32,
    left: u32,
    center_y: f32,
    color: Rgb<u8>,
) {
    let w = text_width(text, px).ceil() as u32 + 2;
    let h = (px * 1.3).ceil() as u32;
    let mut strip = RgbImage::from_pixel(w, h, WHITE);
    draw_text(&mut strip, text, px, 1.0, 0.0, color);
    let rotated = image::imageops::rotate270(&strip);
    let top = (center_y - w as f32 / 2.0).max(0.0) as i64;
    for (x, y, p) in rotated.enumerate_pixels() {
        let (tx, ty) = (left as i64 + x as i64, top + y as i64);
        if tx < img.width() as i64 && ty < img.height() as i64 && *p != WHITE {
            img.put_pixel(tx as u32, ty as u32, *p);
        }
    }
}

fn blend(img: &mut RgbImage, x: i64, y: i64, color: Rgb<u8>, coverage: f32) {
    if x < 0 || y < 0 || x >= img.width() as i64 || y >= img.height() as i64 {
        return;
    }
    let a = coverage.clamp(0.0, 1.0);
    let dst = img.get_pixel_mut(x as u32, y as u32);
    for c in 0..3 {
        dst.0[c] = (dst.0[c] as f32 * (1.0 - a) + color.0[c] as f32 * a).round() as u8;
    }
}

fn fill_rect(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, color: Rgb<u8>) {
    for yy in y..(y + h).min(img.height()) {
        for xx in x..(x + w).min(img.width()) {
            img.put_pixel(xx, yy, color);
        }
    }
}

fn draw_rect_outline(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, color: Rgb<u8>) {
    let (x1, y1) = (
        (x + w - 1).min(img.width() - 1),
        (y + h - 1).min(img.height() - 1),
    );
    for xx in x..=x1 {
        img.put_pixel(xx, y, color);
        img.put_pixel(xx, y1, color);
    }
    for yy in y..=y1 {
        img.put_pixel(x, yy, color);
        img.put_pixel(x1, yy, color);
    }
}

// ---------------------------------------------------------------------------------------
// Encoding and writing
// ---------------------------------------------------------------------------------------

/// Encode `img` in the format named by `path`'s extension and write it atomically.
fn save(img: &RgbImage, path: &Path) -> Result<(), ReportError> {
    let format = match ImageFormat::from_path(path) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg)) => f,
        _ => {
            return Err(ReportError::UnsupportedFormat {
                path: path.to_path_buf(),
            })
        }
    };
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), format)
        .map_err(|e| ReportError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_atomic(path, &bytes).map_err(|error| ReportError::Io {
        path: path.to_path_buf(),
        error,
    })
}
