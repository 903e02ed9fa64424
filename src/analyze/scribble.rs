//! `scribble`: the classical synthesized scribble of ControlNet 1.1. An XDoG edge map (the
//! `scribble_xdog` preprocessor: where a pixel is darker than its wide neighbourhood in every
//! channel) is thinned by ControlNet's 4-direction non-maximum suppression (`annotator/util.py`
//! `nms`), then blurred and thresholded into strokes as `gradio_scribble.py` does. Everything
//! runs at the input's own resolution; the output is white strokes on black.
//!
//! One deliberate difference: `scribble_xdog` computes `2 * (255 - dog)` in uint8, which wraps
//! for differences above 127 and drops the strongest edges; here the product does not wrap.

use super::{blur, check, lines, Operation};
use crate::{Error, Result};
use image::{GrayImage, RgbImage};
use serde::Serialize;

/// Parameters of [`Scribble`]; the defaults are ControlNet 1.1's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Params {
    /// Sigma of the narrow Gaussian of the difference of Gaussians.
    pub sigma_small: f64,
    /// Sigma of the wide Gaussian of the difference of Gaussians.
    pub sigma_large: f64,
    /// An edge where twice the darkest-channel difference exceeds this (0..=510).
    pub xdog_threshold: f64,
    /// Sigma of the blur before non-maximum suppression.
    pub nms_sigma: f64,
    /// Ridges kept by non-maximum suppression must exceed this (0..=255).
    pub nms_threshold: f64,
    /// Sigma of the blur that widens the thinned ridges into strokes.
    pub stroke_sigma: f64,
    /// A stroke where the widened ridges exceed this (0..=254).
    pub stroke_threshold: u8,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            sigma_small: 0.5,
            sigma_large: 5.0,
            xdog_threshold: 32.0,
            nms_sigma: 3.0,
            nms_threshold: 127.0,
            stroke_sigma: 3.0,
            stroke_threshold: 4,
        }
    }
}

impl Params {
    /// Checks every field's range.
    pub(crate) fn validate(&self) -> Result<()> {
        check::within("sigma_small", self.sigma_small, 0.1, 50.0)?;
        check::within("sigma_large", self.sigma_large, self.sigma_small, 100.0)?;
        check::within("xdog_threshold", self.xdog_threshold, 0.0, 510.0)?;
        check::within("nms_sigma", self.nms_sigma, 0.1, 50.0)?;
        check::within("nms_threshold", self.nms_threshold, 0.0, 255.0)?;
        check::within("stroke_sigma", self.stroke_sigma, 0.1, 50.0)?;
        check::within("stroke_threshold", self.stroke_threshold.into(), 0.0, 254.0)
    }
}

/// The scribble operation.
#[derive(Debug, Clone)]
pub struct Scribble {
    params: Params,
}

impl Scribble {
    /// A scribble operation; fails on a parameter out of range.
    pub fn new(params: Params) -> Result<Self> {
        params.validate()?;
        Ok(Scribble { params })
    }
}

impl Operation for Scribble {
    fn name(&self) -> &'static str {
        "scribble"
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }

    fn apply(&self, image: &RgbImage) -> Result<RgbImage> {
        let p = &self.params;
        let edges = xdog(image, p.sigma_small, p.sigma_large, p.xdog_threshold)?;
        let ridges = nms(&edges, p.nms_threshold, p.nms_sigma)?;
        Ok(gray_to_rgb(&widen(
            &ridges,
            p.stroke_sigma,
            p.stroke_threshold,
        )?))
    }
}

/// XDoG edges: 255 where `2 * (255 - dog) > threshold`, `dog` being
/// `255 - min over channels (G_large - G_small)` clipped to 0..=255 and truncated to 8 bits.
pub(crate) fn xdog(
    img: &RgbImage,
    sigma_small: f64,
    sigma_large: f64,
    threshold: f64,
) -> Result<GrayImage> {
    let values = lines::darkness(img, sigma_small, sigma_large)?
        .into_iter()
        .map(|d| {
            let dog = (255.0 - d) as u8;
            if 2.0 * f64::from(255 - dog) > threshold {
                255
            } else {
                0
            }
        })
        .collect();
    gray(img.width(), img.height(), values)
}

/// ControlNet's non-maximum suppression: blur with `sigma`, keep a pixel where it is a maximum
/// along at least one of the four directions (horizontal, vertical, both diagonals), then
/// 255 where the kept value exceeds `threshold`.
pub(crate) fn nms(map: &GrayImage, threshold: f64, sigma: f64) -> Result<GrayImage> {
    let (w, h) = map.dimensions();
    let plane: Vec<f32> = map.as_raw().iter().map(|&v| f32::from(v)).collect();
    peaks(&blur::plane_f32(&plane, w, h, sigma)?, w, h, threshold)
}

/// 255 where a value of the `w` x `h` plane exceeds `threshold` and is not below either
/// neighbour along at least one of the four directions (neighbours off the image ignored).
fn peaks(x: &[f32], w: u32, h: u32, threshold: f64) -> Result<GrayImage> {
    let (wi, hi) = (i64::from(w), i64::from(h));
    let at =
        |c: i64, r: i64| (c >= 0 && r >= 0 && c < wi && r < hi).then(|| x[(r * wi + c) as usize]);
    const DIRECTIONS: [(i64, i64); 4] = [(1, 0), (0, 1), (1, 1), (1, -1)];
    let values = (0..hi)
        .flat_map(|r| (0..wi).map(move |c| (c, r)))
        .map(|(c, r)| {
            let v = x[(r * wi + c) as usize];
            let peak = DIRECTIONS.iter().any(|&(dc, dr)| {
                [at(c + dc, r + dr), at(c - dc, r - dr)]
                    .iter()
                    .all(|n| n.is_none_or(|n| n <= v))
            });
            if peak && f64::from(v) > threshold {
                255
            } else {
                0
            }
        });
    gray(w, h, values.collect())
}

/// Widens thin ridges into strokes: an 8-bit blur with `sigma`, then 255 above `threshold`.
pub(crate) fn widen(ridges: &GrayImage, sigma: f64, threshold: u8) -> Result<GrayImage> {
    let mut out = blur::gray_u8(ridges, sigma)?;
    for p in out.pixels_mut() {
        p.0[0] = if p.0[0] > threshold { 255 } else { 0 };
    }
    Ok(out)
}

/// A grey image from one value per pixel.
pub(crate) fn gray(width: u32, height: u32, values: Vec<u8>) -> Result<GrayImage> {
    GrayImage::from_raw(width, height, values)
        .ok_or_else(|| Error::invalid("grey map", "buffer size does not match its shape"))
}

/// A grey map as RGB (each channel the same).
pub(crate) fn gray_to_rgb(map: &GrayImage) -> RgbImage {
    image::DynamicImage::ImageLuma8(map.clone()).to_rgb8()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::testing;

    #[test]
    fn matches_the_controlnet_math_on_photographs() {
        let op = Scribble::new(Params::default()).unwrap();
        for name in testing::PHOTOS {
            let out = op.apply(&testing::photo(name)).unwrap();
            testing::assert_matches(&out, &format!("scribble_{name}"), 0, 0);
        }
    }

    #[test]
    fn peaks_are_those_of_the_annotators_dilate_comparison() {
        // Expected from ControlNet's nms without its blur (cv2.dilate with the four line
        // kernels, `dilate == x`): (3, 1) is below 10 horizontally, 9 vertically, 6 or 10
        // diagonally; (1, 2) is below a neighbour in every direction too; corners keep
        // directions that leave the image.
        #[rustfmt::skip]
        let x = [
            6.0, 3.0, 2.0, 2.0,
            3.0, 10.0, 4.0, 1.0,
            2.0, 3.0, 9.0, 5.0,
            1.0, 2.0, 8.0, 7.0,
        ];
        #[rustfmt::skip]
        let expected = vec![
            255, 255, 255, 255,
            255, 255, 255, 0,
            255, 0, 255, 255,
            255, 255, 255, 255,
        ];
        assert_eq!(peaks(&x, 4, 4, 0.0).unwrap().into_raw(), expected);
        let high = peaks(&x, 4, 4, 9.5).unwrap().into_raw();
        assert_eq!(high.iter().filter(|&&v| v == 255).count(), 1);
    }

    #[test]
    fn xdog_marks_dark_lines_not_flat_areas() {
        let img = RgbImage::from_fn(21, 21, |c, _| {
            image::Rgb(if c == 10 { [0, 0, 0] } else { [200, 200, 200] })
        });
        let out = xdog(&img, 0.5, 5.0, 32.0).unwrap();
        assert_eq!(out.get_pixel(10, 10).0[0], 255);
        assert_eq!(out.get_pixel(2, 10).0[0], 0);
    }

    #[test]
    fn properties_and_regional() {
        let op = Scribble::new(Params::default()).unwrap();
        testing::check_properties(&op);
    }

    #[test]
    fn rejects_out_of_range_parameters() {
        let bad = Params {
            sigma_large: 0.2,
            ..Params::default()
        };
        let e = Scribble::new(bad).unwrap_err().to_string();
        assert!(e.contains("sigma_large"), "{e}");
        assert!(Scribble::new(Params {
            nms_threshold: 300.0,
            ..Params::default()
        })
        .is_err());
    }
}
