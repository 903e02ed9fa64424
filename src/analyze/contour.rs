//! `contour`: a classical line drawing, ControlNet 1.1's `lineart_standard` preprocessor. Lines
//! are where a pixel is darker than its Gaussian-blurred surroundings in every channel
//! (`min over channels (blur - pixel)`); the result is normalised by the median of the clearly
//! dark values so that photographs of any contrast give lines of similar strength. It runs at
//! the input's own resolution; the output is white lines on black.

use super::{check, lines, scribble, Operation};
use crate::Result;
use image::RgbImage;
use serde::Serialize;

/// Parameters of [`Contour`]; the defaults are `lineart_standard`'s.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Params {
    /// Sigma of the Gaussian the pixels are compared with.
    pub sigma: f64,
    /// Only differences above this enter the median (0..=255).
    pub intensity_threshold: f64,
    /// The median used for normalising is at least this (1..=255).
    pub median_floor: f64,
    /// The median difference maps to this grey level (1..=255).
    pub gain: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            sigma: 6.0,
            intensity_threshold: 8.0,
            median_floor: 16.0,
            gain: 127.0,
        }
    }
}

/// The contour (line drawing) operation.
#[derive(Debug, Clone)]
pub struct Contour {
    params: Params,
}

impl Contour {
    /// A contour operation; fails on a parameter out of range.
    pub fn new(params: Params) -> Result<Self> {
        check::within("sigma", params.sigma, 0.1, 100.0)?;
        check::within(
            "intensity_threshold",
            params.intensity_threshold,
            0.0,
            255.0,
        )?;
        check::within("median_floor", params.median_floor, 1.0, 255.0)?;
        check::within("gain", params.gain, 1.0, 255.0)?;
        Ok(Contour { params })
    }
}

impl Operation for Contour {
    fn name(&self) -> &'static str {
        "contour"
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }

    fn apply(&self, image: &RgbImage) -> Result<RgbImage> {
        let p = &self.params;
        let intensity = lines::darkness(image, 0.0, p.sigma)?;
        let map = lines::normalise(&intensity, p.intensity_threshold, p.median_floor, p.gain);
        Ok(scribble::gray_to_rgb(&scribble::gray(
            image.width(),
            image.height(),
            map,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::testing;

    #[test]
    fn matches_lineart_standard_on_photographs() {
        let op = Contour::new(Params::default()).unwrap();
        for name in testing::PHOTOS {
            let out = op.apply(&testing::photo(name)).unwrap();
            testing::assert_matches(&out, &format!("contour_{name}"), 0, 0);
        }
    }

    #[test]
    fn a_flat_image_has_no_lines() {
        let img = RgbImage::from_pixel(16, 12, image::Rgb([90, 120, 30]));
        let out = Contour::new(Params::default())
            .unwrap()
            .apply(&img)
            .unwrap();
        assert!(out.pixels().all(|p| p.0 == [0, 0, 0]));
    }

    #[test]
    fn properties_and_regional() {
        testing::check_properties(&Contour::new(Params::default()).unwrap());
    }

    #[test]
    fn rejects_out_of_range_parameters() {
        let e = Contour::new(Params {
            sigma: 0.0,
            ..Params::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("sigma"), "{e}");
    }
}
