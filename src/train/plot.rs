//! The loss plot written at the end of a run (`WORK_DIR/loss.png`): training loss per step as
//! a blue line, validation loss as red squares, on a white canvas with labelled axes (step,
//! loss, tick values) and a legend, so the plot reads on its own; the exact values are in the
//! log file.

use super::font;
use crate::Result;
use image::{Rgb, RgbImage};
use std::path::Path;

const WIDTH: u32 = 640;
const HEIGHT: u32 = 400;
/// Plot area margins: left (tick values and the y title), right, top (legend), bottom (tick
/// values and the x title).
const LEFT: f64 = 72.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 48.0;
/// Ticks on each axis (intervals).
const TICKS: u32 = 4;

const BLUE: Rgb<u8> = Rgb([31, 119, 180]);
const RED: Rgb<u8> = Rgb([214, 39, 40]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);

/// A tick value in at most 4 significant digits, scientific when very small or large.
fn tick_label(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e5) {
        return format!("{v:.2e}");
    }
    let text = format!("{v:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.to_string()
    }
}

/// Renders the curves: `train` and `val` are (step, loss) points.
pub fn render(train: &[(u64, f64)], val: &[(u64, f64)]) -> RgbImage {
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, Rgb([255, 255, 255]));
    let all = train.iter().chain(val).filter(|(_, l)| l.is_finite());
    let (mut s0, mut s1, mut l0, mut l1) = (u64::MAX, 0u64, f64::INFINITY, f64::NEG_INFINITY);
    for &(s, l) in all {
        s0 = s0.min(s);
        s1 = s1.max(s);
        l0 = l0.min(l);
        l1 = l1.max(l);
    }
    let (w, h) = (
        f64::from(WIDTH) - LEFT - RIGHT,
        f64::from(HEIGHT) - TOP - BOTTOM,
    );
    for i in 0..=TICKS {
        let y = TOP + h * f64::from(i) / f64::from(TICKS);
        line(&mut img, (LEFT, y), (LEFT + w, y), GRID);
    }
    line(&mut img, (LEFT, TOP), (LEFT, TOP + h), BLACK);
    line(&mut img, (LEFT, TOP + h), (LEFT + w, TOP + h), BLACK);
    label_axes(&mut img, w, h);
    legend(&mut img, !val.is_empty());
    if s0 > s1 {
        return img;
    }
    let span_s = (s1 - s0).max(1) as f64;
    let span_l = if l1 > l0 { l1 - l0 } else { 1.0 };
    ticks(&mut img, (s0, span_s), (l0, span_l), w, h);
    let at = |(s, l): (u64, f64)| {
        (
            LEFT + w * (s - s0) as f64 / span_s,
            TOP + h * (1.0 - (l - l0) / span_l),
        )
    };
    let finite: Vec<(f64, f64)> = train
        .iter()
        .filter(|(_, l)| l.is_finite())
        .map(|&p| at(p))
        .collect();
    for pair in finite.windows(2) {
        line(&mut img, pair[0], pair[1], BLUE);
    }
    if let [only] = finite.as_slice() {
        square(&mut img, *only, BLUE);
    }
    for &p in val.iter().filter(|(_, l)| l.is_finite()) {
        square(&mut img, at(p), RED);
    }
    img
}

/// The axis titles: "step" under the x axis, "loss" along the y axis.
fn label_axes(img: &mut RgbImage, w: f64, h: f64) {
    let x_title = "step";
    let x = LEFT + w / 2.0 - f64::from(font::text_width(x_title)) / 2.0;
    font::draw(img, x_title, x as i64, (TOP + h + 28.0) as i64, BLACK);
    let y_title = "loss";
    let y = TOP + h / 2.0 - f64::from(font::text_width(y_title)) / 2.0;
    font::draw_vertical(img, y_title, 6, y as i64, BLACK);
}

/// The legend above the plot: a blue line for the training loss, a red square for validation.
fn legend(img: &mut RgbImage, with_val: bool) {
    let y = (TOP / 2.0) as i64 - 3;
    line(
        img,
        (LEFT, y as f64 + 3.0),
        (LEFT + 16.0, y as f64 + 3.0),
        BLUE,
    );
    font::draw(img, "train loss", LEFT as i64 + 22, y, BLACK);
    if with_val {
        let x = LEFT + 22.0 + f64::from(font::text_width("train loss")) + 20.0;
        square(img, (x + 8.0, y as f64 + 3.0), RED);
        font::draw(img, "validation loss", x as i64 + 16, y, BLACK);
    }
}

/// Tick marks and values: steps along x from `s0` over `span_s`, losses along y from `l0` over
/// `span_l`.
fn ticks(img: &mut RgbImage, (s0, span_s): (u64, f64), (l0, span_l): (f64, f64), w: f64, h: f64) {
    for i in 0..=TICKS {
        let t = f64::from(i) / f64::from(TICKS);
        let x = LEFT + w * t;
        line(img, (x, TOP + h), (x, TOP + h + 4.0), BLACK);
        let step = (s0 as f64 + span_s * t).round() as u64;
        let text = step.to_string();
        let tx = x - f64::from(font::text_width(&text)) / 2.0;
        font::draw(img, &text, tx as i64, (TOP + h + 8.0) as i64, BLACK);

        let y = TOP + h * (1.0 - t);
        line(img, (LEFT - 4.0, y), (LEFT, y), BLACK);
        let text = tick_label(l0 + span_l * t);
        let tx = LEFT - 7.0 - f64::from(font::text_width(&text));
        font::draw(img, &text, tx as i64, y as i64 - 3, BLACK);
    }
}

/// Writes the plot (atomically).
pub fn save(train: &[(u64, f64)], val: &[(u64, f64)], path: &Path) -> Result<()> {
    let img = image::DynamicImage::ImageRgb8(render(train, val));
    crate::imageio::save(&img, path, None)
}

fn put(img: &mut RgbImage, x: f64, y: f64, c: Rgb<u8>) {
    let (x, y) = (x.round(), y.round());
    if x >= 0.0 && y >= 0.0 && x < f64::from(img.width()) && y < f64::from(img.height()) {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb<u8>) {
    let n = (x1 - x0).abs().max((y1 - y0).abs()).ceil().max(1.0) as usize;
    for i in 0..=n {
        let t = i as f64 / n as f64;
        put(img, x0 + t * (x1 - x0), y0 + t * (y1 - y0), c);
    }
}

fn square(img: &mut RgbImage, (x, y): (f64, f64), c: Rgb<u8>) {
    for dy in -2..=2 {
        for dx in -2..=2 {
            put(img, x + f64::from(dx), y + f64::from(dy), c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_spans_the_plot_area() {
        let img = render(&[(1, 2.0), (2, 1.0), (3, 0.5)], &[(3, 1.5)]);
        let (left, top) = (LEFT as u32, TOP as u32);
        let (right, bottom) = (WIDTH - RIGHT as u32, HEIGHT - BOTTOM as u32);
        // First point top-left of the area, last point at the bottom right.
        assert_eq!(*img.get_pixel(left, top), BLUE);
        assert_eq!(*img.get_pixel(right, bottom), BLUE);
        // Validation square at step 3, loss 1.5 of the range [0.5, 2]: 2/3 up the area.
        let y = TOP + (f64::from(HEIGHT) - TOP - BOTTOM) / 3.0;
        assert_eq!(*img.get_pixel(right, y.round() as u32), RED);
        // No data: the axes and their titles.
        let empty = render(&[], &[]);
        assert_eq!(*empty.get_pixel(left, 200), BLACK);
    }

    #[test]
    fn axes_carry_titles_and_tick_values() {
        let img = render(&[(1, 2.0), (40, 0.25)], &[]);
        let ink = |x0: u32, x1: u32, y0: u32, y1: u32| {
            (x0..x1)
                .flat_map(|x| (y0..y1).map(move |y| (x, y)))
                .filter(|&(x, y)| *img.get_pixel(x, y) == BLACK)
                .count()
        };
        let bottom = HEIGHT - BOTTOM as u32;
        // Tick values under the x axis and left of the y axis, titles beyond them.
        assert!(ink(LEFT as u32, WIDTH, bottom + 6, bottom + 18) > 20);
        assert!(ink(0, LEFT as u32 - 6, TOP as u32, bottom) > 40);
        assert!(ink(0, 16, TOP as u32, bottom) > 10);
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(1.0), "1");
        assert_eq!(tick_label(0.000_12), "1.20e-4");
    }
}
