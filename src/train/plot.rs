//! The loss plot written at the end of a run (`WORK_DIR/loss.png`): training loss per step as
//! a blue line, validation loss as red squares, on a white canvas with the axes drawn; the value
//! range is in the log file, the plot shows the shape of the curve.

use crate::Result;
use image::{Rgb, RgbImage};
use std::path::Path;

const WIDTH: u32 = 640;
const HEIGHT: u32 = 400;
const MARGIN: f64 = 40.0;

const BLUE: Rgb<u8> = Rgb([31, 119, 180]);
const RED: Rgb<u8> = Rgb([214, 39, 40]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);

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
        f64::from(WIDTH) - 2.0 * MARGIN,
        f64::from(HEIGHT) - 2.0 * MARGIN,
    );
    for i in 0..=4 {
        let y = MARGIN + h * f64::from(i) / 4.0;
        line(&mut img, (MARGIN, y), (MARGIN + w, y), GRID);
    }
    line(&mut img, (MARGIN, MARGIN), (MARGIN, MARGIN + h), BLACK);
    line(
        &mut img,
        (MARGIN, MARGIN + h),
        (MARGIN + w, MARGIN + h),
        BLACK,
    );
    if s0 > s1 {
        return img;
    }
    let span_s = (s1 - s0).max(1) as f64;
    let span_l = if l1 > l0 { l1 - l0 } else { 1.0 };
    let at = |(s, l): (u64, f64)| {
        (
            MARGIN + w * (s - s0) as f64 / span_s,
            MARGIN + h * (1.0 - (l - l0) / span_l),
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
        // First point top-left of the area, last point at the bottom right.
        assert_eq!(*img.get_pixel(40, 40), BLUE);
        assert_eq!(*img.get_pixel(600, 360), BLUE);
        // Validation square at step 3, loss 1.5 of the range [0.5, 2]: 2/3 up the 320 rows.
        assert_eq!(*img.get_pixel(600, 147), RED);
        // No data: just the axes.
        let empty = render(&[], &[]);
        assert_eq!(*empty.get_pixel(40, 200), BLACK);
    }
}
