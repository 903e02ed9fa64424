//! `doodle`: a rough hand-drawn look, a coarse relative of [`scribble`](super::scribble) with
//! fewer, longer, smoother strokes. The recipe (all at the input's resolution; white strokes
//! on black):
//!
//! 1. line strength: how much darker each pixel is than its surroundings at a coarse scale
//!    (`min over channels (G_8 - G_1)`, Gaussians of sigma 1 and 8 by default, wider than
//!    scribble's 0.5 and 5), normalised by its median as `lineart_standard` does (values above
//!    8, median at least 16, mapped to 127);
//! 2. ControlNet's 4-direction non-maximum suppression (blur sigma 1.5, threshold 90) turns it
//!    into thin ridges along the main dark lines;
//! 3. ridges whose 8-connected component has fewer pixels than `min_stroke` times the longer
//!    image side (10 % by default) are dropped, as a quick drawing leaves out details;
//! 4. the remaining ridges are widened into strokes by an 8-bit blur (sigma 2) thresholded
//!    above 4.

use super::scribble::{gray, gray_to_rgb, nms, widen};
use super::{check, components, lines, Operation};
use crate::Result;
use image::RgbImage;
use serde::Serialize;

/// Parameters of [`Doodle`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Params {
    /// Sigma of the narrow Gaussian of the difference of Gaussians (0 = the image itself).
    pub sigma_small: f64,
    /// Sigma of the wide Gaussian of the difference of Gaussians.
    pub sigma_large: f64,
    /// Sigma of the blur before non-maximum suppression.
    pub nms_sigma: f64,
    /// Ridges kept by non-maximum suppression must exceed this (0..=255).
    pub nms_threshold: f64,
    /// Strokes shorter than this fraction of the longer image side are dropped (0..=1).
    pub min_stroke: f64,
    /// Sigma of the blur that widens the ridges into strokes.
    pub stroke_sigma: f64,
    /// A stroke where the widened ridges exceed this (0..=254).
    pub stroke_threshold: u8,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            sigma_small: 1.0,
            sigma_large: 8.0,
            nms_sigma: 1.5,
            nms_threshold: 90.0,
            min_stroke: 0.1,
            stroke_sigma: 2.0,
            stroke_threshold: 4,
        }
    }
}

/// The doodle operation.
#[derive(Debug, Clone)]
pub struct Doodle {
    params: Params,
}

impl Doodle {
    /// A doodle operation; fails on a parameter out of range.
    pub fn new(params: Params) -> Result<Self> {
        check::within("sigma_small", params.sigma_small, 0.0, 50.0)?;
        check::within("sigma_large", params.sigma_large, params.sigma_small, 100.0)?;
        check::within("nms_sigma", params.nms_sigma, 0.1, 50.0)?;
        check::within("nms_threshold", params.nms_threshold, 0.0, 255.0)?;
        check::within("min_stroke", params.min_stroke, 0.0, 1.0)?;
        check::within("stroke_sigma", params.stroke_sigma, 0.1, 50.0)?;
        check::within(
            "stroke_threshold",
            params.stroke_threshold.into(),
            0.0,
            254.0,
        )?;
        Ok(Doodle { params })
    }
}

impl Operation for Doodle {
    fn name(&self) -> &'static str {
        "doodle"
    }

    fn parameters(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }

    fn apply(&self, image: &RgbImage) -> Result<RgbImage> {
        let p = &self.params;
        let (w, h) = image.dimensions();
        let darkness = lines::darkness(image, p.sigma_small, p.sigma_large)?;
        let strength = gray(w, h, lines::normalise(&darkness, 8.0, 16.0, 127.0))?;
        let ridges = nms(&strength, p.nms_threshold, p.nms_sigma)?;
        let min_len = (p.min_stroke * f64::from(w.max(h))).round() as usize;
        let (ids, sizes) = components::label(ridges.as_raw(), w, h);
        let kept = ridges
            .as_raw()
            .iter()
            .zip(&ids)
            .map(|(&v, &id)| {
                if v == 255 && sizes[id as usize] >= min_len {
                    255
                } else {
                    0
                }
            })
            .collect();
        let kept = gray(w, h, kept)?;
        Ok(gray_to_rgb(&widen(
            &kept,
            p.stroke_sigma,
            p.stroke_threshold,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::testing;

    #[test]
    fn matches_the_recipe_run_in_python_on_photographs() {
        let op = Doodle::new(Params::default()).unwrap();
        for name in testing::PHOTOS {
            let out = op.apply(&testing::photo(name)).unwrap();
            testing::assert_matches(&out, &format!("doodle_{name}"), 0, 0);
        }
    }

    #[test]
    fn short_strokes_are_dropped() {
        // A long dark line and a dark dot on grey: only the line is drawn.
        let img = RgbImage::from_fn(64, 48, |x, y| {
            let dark = (y == 12 && (4..60).contains(&x)) || (x == 40 && y == 36);
            image::Rgb(if dark { [0, 0, 0] } else { [200, 200, 200] })
        });
        let op = Doodle::new(Params {
            sigma_small: 0.5,
            sigma_large: 3.0,
            nms_sigma: 1.0,
            nms_threshold: 32.0,
            min_stroke: 0.3,
            stroke_sigma: 1.0,
            ..Params::default()
        })
        .unwrap();
        let out = op.apply(&img).unwrap();
        assert_eq!(out.get_pixel(30, 12).0, [255; 3]);
        assert!((28..44).all(|y| (34..46).all(|x| out.get_pixel(x, y).0 == [0; 3])));
    }

    #[test]
    fn properties_and_regional() {
        testing::check_properties(&Doodle::new(Params::default()).unwrap());
    }

    #[test]
    fn rejects_out_of_range_parameters() {
        let e = Doodle::new(Params {
            min_stroke: 2.0,
            ..Params::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("min_stroke"), "{e}");
    }
}
