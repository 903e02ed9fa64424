//! Image resizing exactly as Pillow does it, because the reference prepares its inputs with
//! `PIL.Image.resize`: the antialiased bicubic of `ImagingResample` for 8-bit images (separable
//! passes, filter support widened by the downscale factor, coefficients in 22-bit fixed point)
//! and the nearest-neighbour scaling of `ImagingScaleAffine` for masks.

use image::{GrayImage, RgbImage};

/// Bits of the fixed-point coefficients in Pillow's 8-bit path (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bicubic kernel (a = -0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The taps of one output pixel: first input index and fixed-point weights.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for a resize of `in_size` to `out_size`.
fn taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let inv_filterscale = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C casts truncate toward zero; a negative start clamps to 0 either way.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let count = xmax.saturating_sub(xmin);
            let raw: Vec<f64> = (0..count)
                .map(|x| bicubic((x as f64 + xmin as f64 - center + 0.5) * inv_filterscale))
                .collect();
            let sum: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if sum != 0.0 { w / sum } else { w };
                    let fixed = w * f64::from(1u32 << PRECISION_BITS);
                    if w < 0.0 {
                        (fixed - 0.5) as i32
                    } else {
                        (fixed + 0.5) as i32
                    }
                })
                .collect();
            Taps {
                start: xmin,
                weights,
            }
        })
        .collect()
}

/// Pillow's `clip8`: rounds the fixed-point sum down to 8 bits and clamps.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Applies the taps along one axis; `get(i)` reads input sample `i` of the current line.
fn convolve(taps: &Taps, get: impl Fn(usize) -> u8) -> u8 {
    let mut acc: i32 = 1 << (PRECISION_BITS - 1);
    for (i, &w) in taps.weights.iter().enumerate() {
        acc = acc.wrapping_add(i32::from(get(taps.start + i)).wrapping_mul(w));
    }
    clip8(acc)
}

/// `Image.resize((width, height), Image.BICUBIC)` for an 8-bit RGB image. As in Pillow 13's
/// `ImagingResampleInner`, the horizontal pass runs first (only over the rows the vertical pass
/// reads) unless the height shrinks by more than twice as many pixels as the width, in which
/// case the vertical pass runs first; a pass whose size does not change is skipped, and an
/// unchanged size returns a copy. The order matters: each pass rounds to 8 bits.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (img.width() as i64, img.height() as i64);
    let (dw, dh) = (in_w - i64::from(width), in_h - i64::from(height));
    let need_horizontal = dw != 0;
    let need_vertical = dh != 0;
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    let full_h = img.height() as usize;
    let mut src = img.clone();
    if horizontal_first {
        // The horizontal pass only covers the rows the vertical pass reads.
        let mut offset = 0;
        if need_horizontal {
            let rows = if need_vertical {
                let vert = taps(full_h, height as usize);
                let first = vert.first().map_or(0, |t| t.start);
                let last = vert.last().map_or(full_h, |t| t.start + t.weights.len());
                first..last
            } else {
                0..full_h
            };
            offset = rows.start;
            src = horizontal_pass(&src, width, rows);
        }
        if need_vertical {
            src = vertical_pass(&src, full_h, height, offset);
        }
    } else {
        src = vertical_pass(&src, full_h, height, 0);
        if need_horizontal {
            let rows = 0..src.height() as usize;
            src = horizontal_pass(&src, width, rows);
        }
    }
    src
}

/// Pillow's horizontal pass over the rows `rows` of `img`, to `width` columns.
fn horizontal_pass(img: &RgbImage, width: u32, rows: std::ops::Range<usize>) -> RgbImage {
    let horiz = taps(img.width() as usize, width as usize);
    let in_w = img.width() as usize;
    let raw = img.as_raw();
    let first = rows.start;
    let mut out = RgbImage::new(width, rows.len() as u32);
    for (y, line) in out.chunks_exact_mut(width as usize * 3).enumerate() {
        let row = &raw[(first + y) * in_w * 3..(first + y + 1) * in_w * 3];
        for (xx, t) in horiz.iter().enumerate() {
            for c in 0..3 {
                line[xx * 3 + c] = convolve(t, |x| row[x * 3 + c]);
            }
        }
    }
    out
}

/// Pillow's vertical pass from an image of `full_height` rows (of which `img` holds the rows
/// from `offset` on) to `height` rows.
fn vertical_pass(img: &RgbImage, full_height: usize, height: u32, offset: usize) -> RgbImage {
    let vert = taps(full_height, height as usize);
    let w = img.width() as usize;
    let raw = img.as_raw();
    let mut out = RgbImage::new(img.width(), height);
    for (yy, line) in out.chunks_exact_mut(w * 3).enumerate() {
        let t = &vert[yy];
        for (i, v) in line.iter_mut().enumerate() {
            *v = convolve(t, |y| raw[(y - offset) * w * 3 + i]);
        }
    }
    out
}

/// Source indices of Pillow's nearest-neighbour scaling along one axis: positions start at
/// half a step and advance by `in/out` in double precision, truncated.
fn nearest_indices(in_size: usize, out_size: usize) -> Vec<usize> {
    let step = in_size as f64 / out_size as f64;
    let mut pos = step * 0.5;
    (0..out_size)
        .map(|_| {
            let i = (pos as usize).min(in_size - 1);
            pos += step;
            i
        })
        .collect()
}

/// `Image.resize((width, height), Image.NEAREST)` for an 8-bit greyscale image (torchvision's
/// NEAREST_EXACT on a PIL image is this).
pub fn resize_nearest(img: &GrayImage, width: u32, height: u32) -> GrayImage {
    if (width, height) == img.dimensions() {
        return img.clone();
    }
    let xs = nearest_indices(img.width() as usize, width as usize);
    let ys = nearest_indices(img.height() as usize, height as usize);
    GrayImage::from_fn(width, height, |x, y| {
        *img.get_pixel(xs[x as usize] as u32, ys[y as usize] as u32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_kernel_matches_known_values() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(0.5), 0.5625);
        assert_eq!(bicubic(1.5), -0.0625);
        assert_eq!(bicubic(2.5), 0.0);
    }

    #[test]
    fn taps_sum_to_one_in_fixed_point() {
        for (i, o) in [(100, 37), (37, 100), (64, 64), (5, 1)] {
            for t in taps(i, o) {
                let s: i32 = t.weights.iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= t.weights.len() as i32,
                    "{i}->{o}"
                );
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(31, 17, image::Rgb([200, 3, 77]));
        let out = resize_bicubic(&img, 12, 40);
        assert!(out.pixels().all(|p| p.0 == [200, 3, 77]));
    }

    #[test]
    fn nearest_picks_centres() {
        let img = GrayImage::from_fn(4, 1, |x, _| image::Luma([x as u8 * 10]));
        let out = resize_nearest(&img, 2, 1);
        assert_eq!(out.as_raw(), &vec![10, 30]);
        let up = resize_nearest(&img, 8, 1);
        assert_eq!(up.as_raw(), &vec![0, 0, 10, 10, 20, 20, 30, 30]);
    }
}

#[cfg(test)]
mod pillow_parity {
    //! Comparison with the files `scripts/make_resize_expected.py` made with Pillow 13: every
    //! resize, one axis or two (with Pillow 13's choice of pass order), must match exactly.
    use super::*;
    use std::path::Path;

    #[test]
    fn matches_pillow() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let listing: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("resize/cases.json")).unwrap())
                .unwrap();
        let cases = listing["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 10);
        for case in cases {
            let input = root
                .join("ace-tiny/inputs")
                .join(case["input"].as_str().unwrap());
            let expected = root.join("resize").join(case["expected"].as_str().unwrap());
            let (w, h) = (
                case["width"].as_u64().unwrap() as u32,
                case["height"].as_u64().unwrap() as u32,
            );
            let img = image::open(&input).unwrap();
            let want = image::open(&expected).unwrap();
            let (got, want) = match case["filter"].as_str().unwrap() {
                "bicubic" => (
                    resize_bicubic(&img.to_rgb8(), w, h).into_raw(),
                    want.to_rgb8().into_raw(),
                ),
                _ => (
                    resize_nearest(&img.to_luma8(), w, h).into_raw(),
                    want.to_luma8().into_raw(),
                ),
            };
            assert_eq!(got.len(), want.len());
            let max = got
                .iter()
                .zip(&want)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert_eq!(max, 0, "{}: max diff {max}", expected.display());
        }
    }
}
